// Package proxytest is one contract test suite for every deploy.Proxy, as
// litestream runs one suite over every replica backend: Caddy's adapter
// against a real Caddy, handoff proxy's client against a real `handoff
// proxy`, and the unit tests' fake each run it, so that what the deploy
// procedure assumes of a proxy is checked on all of them alike. Only tests
// import it.
package proxytest

import (
	"cmp"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/deploy"
)

// Harness makes fresh instances of one implementation of deploy.Proxy.
type Harness struct {
	// New starts a proxy whose route points at upstreams (host:port of
	// loopback HTTP servers, one or more; one may refuse connections) and
	// ends it when t ends. A route of several is set up as a user who
	// wrote it would have: for Caddy, with the settings its Advice gives
	// for several upstreams (lb_try_duration, lb_try_interval,
	// fail_duration) and a policy of the user's own (Instance.Kept).
	New func(t *testing.T, upstreams ...string) Instance
	// MayNotCount: InFlight may not count requests at all. Caddy before
	// 2.11.2 forgets an upstream the route left at once (Reported false),
	// and 2.6.2 counts 0 on the one it routes to while a request runs there
	// (the procedure asks Caddy only about upstreams the route left).
	MayNotCount bool
	// NoWeights, when set, says why this proxy cannot split by weight (Caddy
	// before 2.7): a route whose weights differ is refused with
	// deploy.ErrProxy and changes nothing.
	NoWeights string
	// NoBodyRetry, when set, says why this proxy fails a request with a
	// body that it tries again on another endpoint (Caddy before 2.11.2):
	// the suite sends no POST to a route with an endpoint that refuses
	// connections.
	NoBodyRetry string
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
	// Caddyfile, its state file), which must name the upstreams the route
	// points at and no other; nil when it keeps none.
	Saved func() string
	// Kept is a setting of the user's own that Saved holds and every
	// change must keep ("lb_policy least_conn"); "" when none.
	Kept string
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
		requireRoute(t, in, two, a)
		requireEven(t, in, 100, release{b, c}, a)
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
		requireRoute(t, in, canary)
		requireSplit(t, in, 100, map[string]int{"a": 90, "b": 10})
		require.NoError(t, in.Proxy.SetRoute(ctx(t), canary, canary), "a route already set is done already")
		require.ErrorIs(t, in.Proxy.SetRoute(ctx(t), a.route(), b.route()), deploy.ErrConflict, "the route is neither from nor to")
		require.NoError(t, in.Proxy.SetRoute(ctx(t), canary, b.route()), "the whole way to the new release")
		requireAt(t, in, b, a)
	})

	t.Run("switch between releases of three", func(t *testing.T) {
		a, b := newRelease(t, "a", 3), newRelease(t, "b", 3)
		in := h.New(t, a.addrs()...)
		web1, web2 := a.route("web-1"), b.route("web-2")
		requireRoute(t, in, web1)
		slow := a.slowThrough(t, in)
		require.NoError(t, in.Proxy.SetRoute(ctx(t), web1, web2))
		requireRoute(t, in, web2, a...)
		requireInFlight(t, in, slow.b, 1, h.MayNotCount)
		requireEven(t, in, 150, b, a...)
		for _, e := range b {
			requirePointsAt(t, in, e, true)
		}
		for _, e := range a {
			requirePointsAt(t, in, e, false)
		}
		require.Equal(t, slow.b.name, slow.end(t), "the request in flight ends on the endpoint it began on")
		requireDrained(t, in, slow.b, h.MayNotCount)
		for _, e := range a {
			require.NoError(t, in.Proxy.Retire(ctx(t), e.addr))
			requireInFlight(t, in, e, 0, h.MayNotCount)
			requirePointsAt(t, in, e, false)
		}
		require.NoError(t, in.Proxy.SetRoute(ctx(t), web2, web1), "and back")
		requireRoute(t, in, web1, b...)
		requireEven(t, in, 150, a, b...)
	})

	t.Run("a route of two of the user's own", func(t *testing.T) {
		a, b := newBackend(t, "a"), newBackend(t, "b")
		in := h.New(t, a.addr, b.addr)
		users := deploy.Only("", a.addr, b.addr)
		got, err := in.Proxy.Route(ctx(t), nil)
		require.NoError(t, err)
		require.True(t, deploy.Same(got, users), "read back with no endpoint known: %s, not %s", got, users)
		requireRoute(t, in, users)
		notes, err := in.Proxy.Preflight(ctx(t), got, nil)
		require.NoError(t, err)
		require.Empty(t, notes, "a route the user wrote is in step with itself")
		c := newRelease(t, "c", 3)
		require.NoError(t, in.Proxy.SetRoute(ctx(t), got, c.route("web-1")), "the first deploy")
		requireRoute(t, in, c.route("web-1"), a, b)
		requireEven(t, in, 150, c, a, b)
	})

	// A replica that crashed (its port refuses connections) fails no
	// request: the proxy sends each one it would have taken to another.
	// Each method on a proxy of its own: the first request to meet the
	// dead endpoint is one of that method.
	t.Run("one endpoint of three refusing connections", func(t *testing.T) {
		for _, method := range []string{http.MethodGet, http.MethodPost} {
			t.Run(method, func(t *testing.T) {
				if method == http.MethodPost && h.NoBodyRetry != "" {
					t.Skip(h.NoBodyRetry)
				}
				a, b, dead := newBackend(t, "a"), newBackend(t, "b"), refusing(t)
				in := h.New(t, a.addr, b.addr, dead)
				requireRoute(t, in, deploy.Only("", a.addr, b.addr, dead))
				body := ""
				if method == http.MethodPost {
					body = postBody
				}
				const n = 60
				got := map[string]int{}
				for i := range n {
					name, err := fetch(ctx(t), method, in.Front+"/", body)
					require.NoError(t, err, "%s %d of %d through the front", method, i+1, n)
					got[name]++
				}
				t.Logf("%d %ss through the front: %v", n, method, got)
				require.Equal(t, n, got["a"]+got["b"], "every one answered by a or b: %v", got)
				require.NotZero(t, got["a"], "a gets requests: %v", got)
				require.NotZero(t, got["b"], "b gets requests: %v", got)
			})
		}
	})
}
