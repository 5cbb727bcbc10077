// Package proxytest is one contract test suite for every deploy.Proxy, as
// litestream runs one suite over every replica backend: Caddy's adapter
// against a real Caddy, handoff proxy's client against a real `handoff
// proxy`, and the unit tests' fake each run it, so that what the deploy
// procedure assumes of a proxy is checked on all of them alike. Only tests
// import it.
package proxytest

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/deploy"
)

// Harness makes fresh instances of one implementation of deploy.Proxy.
type Harness struct {
	// New starts a proxy whose route points at upstream (the host:port of
	// a loopback HTTP server) and ends it when t ends.
	New func(t *testing.T, upstream string) Instance
	// MayNotCount: InFlight may not count requests at all. Caddy before
	// 2.11.2 forgets an upstream the route left at once (Reported false),
	// and 2.6.2 counts 0 on the one it routes to while a request runs there
	// (the procedure asks Caddy only about upstreams the route left).
	MayNotCount bool
	// NoWeights, when set, says why this proxy cannot split by weight (Caddy
	// before 2.7): a route whose weights differ is refused with
	// deploy.ErrProxy and changes nothing.
	NoWeights string
}

// Instance is one proxy as the suite drives it.
type Instance struct {
	Proxy deploy.Proxy
	// Front is the base URL ("http://127.0.0.1:port") that requests to
	// the route are sent to.
	Front string
	// Route is what PointsAt's name of the route contains.
	Route string
	// Saved reads the configuration the proxy keeps of its own (its
	// Caddyfile, its state file), which must name the upstream the route
	// points at and no other; nil when it keeps none.
	Saved func() string
	// LoseReply makes the reply to the next change get lost after the
	// change took; lost says whether one was. nil when the implementation
	// has no seam for it: NoLoseReply says why.
	LoseReply   func() (lost func() bool)
	NoLoseReply string
}

// Run runs every case of the contract against fresh instances from h.
func Run(t *testing.T, h Harness) {
	t.Run("upstream reads back", func(t *testing.T) {
		a := newBackend(t, "a")
		in := h.New(t, a.addr)
		requireAt(t, in, a)
		require.NotEmpty(t, in.Proxy.Describe())
	})

	t.Run("preflight is clean", func(t *testing.T) {
		a := newBackend(t, "a")
		in := h.New(t, a.addr)
		notes, err := in.Proxy.Preflight(ctx(t), a.route(), []string{a.addr})
		require.NoError(t, err)
		require.Empty(t, notes, "a proxy in step with itself has nothing to bring in step, so names nothing it did")
		_, err = in.Proxy.Advice(ctx(t), a.addr)
		require.NoError(t, err)
		requireAt(t, in, a)
	})

	t.Run("switch reads back and serves", func(t *testing.T) {
		a, b := newBackend(t, "a"), newBackend(t, "b")
		in := h.New(t, a.addr)
		require.NoError(t, in.Proxy.SetRoute(ctx(t), a.route(), b.route()))
		requireAt(t, in, b, a)
	})

	t.Run("switch again is done already", func(t *testing.T) {
		a, b := newBackend(t, "a"), newBackend(t, "b")
		in := h.New(t, a.addr)
		require.NoError(t, in.Proxy.SetRoute(ctx(t), a.route(), b.route()))
		require.NoError(t, in.Proxy.SetRoute(ctx(t), a.route(), b.route()), "a route already at to: the switch finishes and succeeds")
		requireAt(t, in, b, a)
	})

	t.Run("switch from a stale route", func(t *testing.T) {
		a, b, c := newBackend(t, "a"), newBackend(t, "b"), newBackend(t, "c")
		in := h.New(t, a.addr)
		require.NoError(t, in.Proxy.SetRoute(ctx(t), a.route(), c.route()), "someone else's switch")
		err := in.Proxy.SetRoute(ctx(t), a.route(), b.route())
		require.ErrorIs(t, err, deploy.ErrConflict, "the route is neither from nor to")
		requireAt(t, in, c, a, b)
	})

	t.Run("points at", func(t *testing.T) {
		a, b := newBackend(t, "a"), newBackend(t, "b")
		in := h.New(t, a.addr)
		requirePointsAt(t, in, a, true)
		requirePointsAt(t, in, b, false)
		require.NoError(t, in.Proxy.SetRoute(ctx(t), a.route(), b.route()))
		requirePointsAt(t, in, b, true)
		requirePointsAt(t, in, a, false)
	})

	t.Run("in flight on the old upstream", func(t *testing.T) {
		a, b := newBackend(t, "a"), newBackend(t, "b")
		in := h.New(t, a.addr)
		slow := a.slowThrough(t, in)
		requireInFlight(t, in, a, 1, h.MayNotCount)
		require.NoError(t, in.Proxy.SetRoute(ctx(t), a.route(), b.route()))
		requireInFlight(t, in, a, 1, h.MayNotCount)
		requireInFlight(t, in, b, 0, false)
		require.Equal(t, "b", get(t, in.Front), "new requests go to the new upstream meanwhile")
		require.Equal(t, "a", slow.end(t), "the request in flight ends on the upstream it began on")
		requireDrained(t, in, a, h.MayNotCount)
	})

	t.Run("retire after the drain", func(t *testing.T) {
		a, b := newBackend(t, "a"), newBackend(t, "b")
		in := h.New(t, a.addr)
		slow := a.slowThrough(t, in)
		require.NoError(t, in.Proxy.SetRoute(ctx(t), a.route(), b.route()))
		require.Equal(t, "a", slow.end(t))
		requireDrained(t, in, a, h.MayNotCount)
		require.NoError(t, in.Proxy.Retire(ctx(t), a.addr))
		requireInFlight(t, in, a, 0, h.MayNotCount)
		requirePointsAt(t, in, a, false)
		requireAt(t, in, b, a)
	})

	t.Run("lost reply then read back", func(t *testing.T) {
		a, b := newBackend(t, "a"), newBackend(t, "b")
		in := h.New(t, a.addr)
		if in.LoseReply == nil {
			t.Skip(cmp.Or(in.NoLoseReply, "the harness has no way to lose a reply"))
		}
		lost := in.LoseReply()
		err := in.Proxy.SetRoute(ctx(t), a.route(), b.route())
		require.True(t, lost(), "the reply to the switch was lost")
		t.Logf("the switch whose reply was lost: %v", err)
		got, err := in.Proxy.Route(ctx(t), []string{a.addr, b.addr})
		require.NoError(t, err)
		require.True(t, deploy.Same(got, b.route()), "read back: the switch took (%s, not %s)", got, b.route())
		// What the procedure does next: the same switch, which finishes
		// what the lost reply left undone.
		require.NoError(t, in.Proxy.SetRoute(ctx(t), a.route(), b.route()))
		requireAt(t, in, b, a)
	})

	t.Run("one release of two endpoints", func(t *testing.T) {
		a, b, c := newBackend(t, "a"), newBackend(t, "b"), newBackend(t, "c")
		in := h.New(t, a.addr)
		two := deploy.Only("web-2", b.addr, c.addr)
		require.NoError(t, in.Proxy.SetRoute(ctx(t), a.route(), two))
		requireRoute(t, in, two, b, c)
		requireSplit(t, in, 100, map[string]int{"b": 50, "c": 50}, a)
		requirePointsAt(t, in, b, true)
		requirePointsAt(t, in, c, true)
		requirePointsAt(t, in, a, false)
		require.NoError(t, in.Proxy.SetRoute(ctx(t), two, a.route()), "and back to one")
		requireAt(t, in, a, b, c)
	})

	t.Run("weights", func(t *testing.T) {
		a, b := newBackend(t, "a"), newBackend(t, "b")
		in := h.New(t, a.addr)
		canary := deploy.Route{{Release: "web-1", Endpoints: []string{a.addr}, Weight: 90}, {Release: "web-2", Endpoints: []string{b.addr}, Weight: 10}}
		err := in.Proxy.SetRoute(ctx(t), a.route(), canary)
		if h.NoWeights != "" {
			require.ErrorIs(t, err, deploy.ErrProxy, "weights: %s", h.NoWeights)
			t.Logf("refused: %v", err)
			requireAt(t, in, a)
			return
		}
		require.NoError(t, err)
		requireRoute(t, in, canary, a, b)
		requireSplit(t, in, 100, map[string]int{"a": 90, "b": 10})
		require.NoError(t, in.Proxy.SetRoute(ctx(t), canary, canary), "a route already set is done already")
		require.ErrorIs(t, in.Proxy.SetRoute(ctx(t), a.route(), b.route()), deploy.ErrConflict, "the route is neither from nor to")
		require.NoError(t, in.Proxy.SetRoute(ctx(t), canary, b.route()), "the whole way to the new release")
		requireAt(t, in, b, a)
	})
}

// requireRoute checks that the route reads back as want (Same), that its
// saved configuration names each of at, and that each serves.
func requireRoute(t *testing.T, in Instance, want deploy.Route, at ...*backend) {
	t.Helper()
	got, err := in.Proxy.Route(ctx(t), want.Endpoints())
	require.NoError(t, err)
	require.True(t, deploy.Same(got, want), "Route reads back %s, not %s", got, want)
	if in.Saved != nil {
		saved := in.Saved()
		for _, b := range at {
			require.True(t, names(saved, b.addr), "the saved configuration names %s:\n%s", b.addr, saved)
		}
	}
}

// requireSplit sends n requests through the front and checks how they
// split: each backend of want gets its count within a tenth of n (the
// proxies here split deterministically, a share of 9:1 exactly), and none
// of never gets any.
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
	got, err := in.Proxy.Route(ctx(t), []string{b.addr})
	require.NoError(t, err)
	require.True(t, deploy.Same(got, b.route()), "Route reads back %s, not %s", got, b.route())
	if in.Saved != nil {
		saved := in.Saved()
		require.True(t, names(saved, b.addr), "the saved configuration names the route's upstream %s:\n%s", b.addr, saved)
		for _, other := range left {
			require.False(t, names(saved, other.addr), "the saved configuration names %s, which the route left:\n%s", other.addr, saved)
		}
	}
	require.Equal(t, b.name, get(t, in.Front), "a request through the front")
}

// names says whether text names addr (127.0.0.1:4001 is not in 127.0.0.1:40012).
func names(text, addr string) bool {
	return regexp.MustCompile(regexp.QuoteMeta(addr) + `(\D|$)`).MatchString(text)
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

var client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// get is the name of the backend that answered a request through front.
func get(t *testing.T, front string) string {
	t.Helper()
	body, err := fetch(t.Context(), front+"/")
	require.NoError(t, err)
	return body
}

func fetch(ctx context.Context, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("%s: %d %s", url, resp.StatusCode, strings.TrimSpace(string(body)))
	}
	return string(body), err
}

// backend is an upstream on loopback that answers with its name; on
// /slow it answers only once released.
type backend struct {
	name, addr string
	started    chan struct{}
	release    chan struct{}
	once       sync.Once
}

func newBackend(t *testing.T, name string) *backend {
	b := &backend{name: name, started: make(chan struct{}, 16), release: make(chan struct{})}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			b.started <- struct{}{}
			select {
			case <-b.release:
			case <-r.Context().Done():
			}
		}
		io.WriteString(w, name)
	}))
	t.Cleanup(func() { b.end(); srv.Close() })
	b.addr = strings.TrimPrefix(srv.URL, "http://")
	return b
}

// route is the route that sends everything to b.
func (b *backend) route() deploy.Route { return deploy.Only(b.name, b.addr) }

func (b *backend) end() { b.once.Do(func() { close(b.release) }) }

// slow is a request through the front that b holds until released.
type slow struct {
	b    *backend
	body chan string
}

// slowThrough starts a request through in's front and waits until b runs it.
func (b *backend) slowThrough(t *testing.T, in Instance) *slow {
	t.Helper()
	s := &slow{b: b, body: make(chan string, 1)}
	t.Cleanup(b.end) // before the proxy's own cleanup, which may wait for it
	go func() {
		body, err := fetch(context.WithoutCancel(t.Context()), in.Front+"/slow")
		if err != nil {
			body = err.Error()
		}
		s.body <- body
	}()
	select {
	case <-b.started:
	case <-time.After(10 * time.Second):
		t.Fatalf("the slow request did not reach %s", b.name)
	}
	return s
}

// end releases the request and returns what answered it.
func (s *slow) end(t *testing.T) string {
	t.Helper()
	s.b.end()
	select {
	case body := <-s.body:
		return body
	case <-time.After(10 * time.Second):
		t.Fatalf("the slow request on %s did not end once released", s.b.name)
		return ""
	}
}
