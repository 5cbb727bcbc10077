package proxytest

import (
	"context"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/deploy"
)

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// requireAt checks that the route points at b every way it can be seen:
// read back, its saved configuration (which names none of left), and a
// request through the front.
func requireAt(t *testing.T, in Instance, b *backend, left ...*backend) {
	t.Helper()
	requireRoute(t, in, b.route(), left...)
	require.Equal(t, b.name, get(t, in.Front), "a request through the front")
}

// requireRoute checks that the route reads back as want (Same), and that
// its saved configuration names each of want's endpoints, none of left,
// and what the harness says it must keep.
func requireRoute(t *testing.T, in Instance, want deploy.Route, left ...*backend) {
	t.Helper()
	got, err := in.Proxy.Route(ctx(t), want.Endpoints())
	require.NoError(t, err)
	require.True(t, deploy.Same(got, want), "Route reads back %s, not %s", got, want)
	if in.Saved == nil {
		return
	}
	saved := in.Saved()
	for _, e := range want.Endpoints() {
		require.True(t, names(saved, e), "the saved configuration names the route's endpoint %s:\n%s", e, saved)
	}
	for _, b := range left {
		require.False(t, names(saved, b.addr), "the saved configuration names %s (%s), which the route left:\n%s", b.addr, b.name, saved)
	}
	if in.Kept != "" {
		require.Contains(t, saved, in.Kept, "the saved configuration keeps the user's own setting")
	}
}

// names says whether text names addr (127.0.0.1:4001 is not in 127.0.0.1:40012).
func names(text, addr string) bool {
	return regexp.MustCompile(regexp.QuoteMeta(addr) + `(\D|$)`).MatchString(text)
}

// requireSplit sends n requests through the front and checks how they
// split by weight: each backend of want gets its count within a tenth of
// n (weights are split deterministically, a share of 9:1 exactly), and
// none of never gets any.
func requireSplit(t *testing.T, in Instance, n int, want map[string]int, never ...*backend) {
	t.Helper()
	got := map[string]int{}
	for range n {
		got[get(t, in.Front)]++
	}
	t.Logf("%d requests through the front: %v", n, got)
	for name, w := range want {
		require.InDelta(t, w, got[name], float64(n)/10, "requests to %s of %d: %v", name, n, got)
	}
	for _, b := range never {
		require.Zero(t, got[b.name], "none to %s", b.name)
	}
}

// requireEven sends n requests through the front and checks that they
// spread over the endpoints of r: each gets between half and one and a
// half times its even share, bounds loose enough for a proxy that picks
// at random (Caddy's default policy: over 4 standard deviations at n =
// 150 over three), and none of never gets any.
func requireEven(t *testing.T, in Instance, n int, r release, never ...*backend) {
	t.Helper()
	got := map[string]int{}
	for range n {
		got[get(t, in.Front)]++
	}
	t.Logf("%d requests through the front: %v", n, got)
	share := float64(n) / float64(len(r))
	for _, b := range r {
		require.True(t, float64(got[b.name]) >= share/2 && float64(got[b.name]) <= share*3/2,
			"requests to %s of %d: %d, not about %.0f (%v)", b.name, n, got[b.name], share, got)
	}
	for _, b := range never {
		require.Zero(t, got[b.name], "none to %s", b.name)
	}
}

func requirePointsAt(t *testing.T, in Instance, b *backend, at bool) {
	t.Helper()
	names, err := in.Proxy.PointsAt(ctx(t), b.addr)
	require.NoError(t, err)
	if !at {
		require.Empty(t, names, "nothing points at %s", b.name)
		return
	}
	require.Len(t, names, 1, "the route, and no other, points at %s", b.name)
	require.Contains(t, names[0], in.Route)
}

// requireInFlight checks InFlight's count for b; mayNotCount allows an
// answer of "cannot tell", or of 0.
func requireInFlight(t *testing.T, in Instance, b *backend, want int, mayNotCount bool) {
	t.Helper()
	got, err := in.Proxy.InFlight(ctx(t), b.addr)
	require.NoError(t, err)
	if mayNotCount && (!got.Reported || got.Requests == 0) && want != 0 {
		t.Logf("%s counts %+v on %s, where %d run%s, as its harness allows", in.Proxy.Describe(), got, b.name, want, plural(want))
		return
	}
	if mayNotCount && !got.Reported {
		t.Logf("%s cannot tell what runs on %s, as its harness allows", in.Proxy.Describe(), b.name)
		return
	}
	require.True(t, got.Reported, "InFlight on %s is reported", b.name)
	require.Equal(t, want, got.Requests, "requests in flight on %s", b.name)
}

func plural(n int) string {
	if n == 1 {
		return "s"
	}
	return ""
}

// requireDrained waits until InFlight counts nothing on b.
func requireDrained(t *testing.T, in Instance, b *backend, mayNotCount bool) {
	t.Helper()
	var last deploy.InFlight
	require.Eventually(t, func() bool {
		got, err := in.Proxy.InFlight(ctx(t), b.addr)
		last = got
		return err == nil && got.Requests == 0 && (got.Reported || mayNotCount)
	}, 10*time.Second, 20*time.Millisecond, "InFlight on %s falls to 0 (last: %+v)", b.name, last)
}
