package proxy

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/proxy/wire"
)

// A change at or below the generation the service holds is refused and
// changes nothing, but for a repeat of the change that set it; one
// without a generation changes the route and leaves the generation. The
// generation is in the state file, and a restored proxy refuses as the
// old one did.
func TestAnOldGenerationIsRefused(t *testing.T) {
	p, path, a, _ := savingOne(t)
	b := newBackend(t, "b")
	to := func(e string) []wire.Backend { return oneEndpoint(e) }
	change := func(p *Server, gen uint64, e string) (ServiceState, error) {
		return p.ChangeRoute(context.Background(), "web", wire.RouteRequest{To: to(e), Generation: gen})
	}

	st, err := change(p, 5, b.addr())
	require.NoError(t, err)
	require.EqualValues(t, 5, st.Generation)
	require.Equal(t, b.addr(), st.Upstream)
	for _, gen := range []uint64{5, 4} {
		_, err = change(p, gen, a.addr())
		require.ErrorIs(t, err, wire.ErrOldGeneration, "generation %d", gen)
		require.Contains(t, err.Error(), "web holds generation 5, this change has")
		st, _ = p.Get("web")
		require.Equal(t, b.addr(), st.Upstream, "the route was left as it is")
	}
	st, err = change(p, 5, b.addr())
	require.NoError(t, err, "a repeat of the change that set generation 5")
	st, err = change(p, 0, a.addr())
	require.NoError(t, err, "no generation: as before generations")
	require.Equal(t, a.addr(), st.Upstream)
	require.EqualValues(t, 5, st.Generation, "left as it was")
	st, err = change(p, 6, a.addr())
	require.NoError(t, err, "a newer generation to the route it has")
	require.EqualValues(t, 6, st.Generation)
	require.EqualValues(t, 6, readState(t, path)[0].Generation, "in the state file")

	// A restart: the file as the proxy left it, restored by another.
	saved := must(os.ReadFile(path))
	require.NoError(t, p.Delete("web")) // frees its address
	require.NoError(t, os.WriteFile(path, saved, 0o600))
	p2 := NewServer(net.Listen, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{Save: func(st []ServiceState) error { return SaveState(path, st) }})
	p2.probe = func(*slog.Logger, string, string) {}
	require.NoError(t, p2.Restore(path))
	t.Cleanup(func() { _ = p2.Delete("web") })
	st, err = p2.Get("web")
	require.NoError(t, err)
	require.EqualValues(t, 6, st.Generation)
	_, err = change(p2, 6, b.addr())
	require.ErrorIs(t, err, wire.ErrOldGeneration)
	_, err = change(p2, 7, b.addr())
	require.NoError(t, err)
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// waitTimers waits until clock has n timers set: what is timed by it has
// got as far as its wait.
func waitTimers(t *testing.T, clock *fakeClock, n int) {
	t.Helper()
	require.Eventually(t, func() bool {
		clock.mu.Lock()
		defer clock.mu.Unlock()
		set := 0
		for _, tm := range clock.timers {
			if !tm.stopped {
				set++
			}
		}
		return set >= n
	}, 5*time.Second, time.Millisecond)
}

// servedIP has service web sent to backend a, on a fake clock and resolver.
func servedIP(t *testing.T, res *fakeResolver) (*Server, *fakeClock, string, *backend) {
	t.Helper()
	clock := newFakeClock()
	p := NewServer(net.Listen, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{Clock: clock, Resolver: res})
	t.Cleanup(func() { _ = p.Delete("web") })
	a := newBackend(t, "a")
	listen := freeAddr(t)
	_, err := p.Put("web", listen, a.addr())
	require.NoError(t, err)
	return p, clock, listen, a
}

// A change that expects IPs of a name is made once the proxy's own lookup
// of the name holds them all, not before.
func TestExpectWaitsForTheLookupToHoldTheIPs(t *testing.T) {
	res := newFakeResolver()
	port, _ := tasks(t, "127.0.0.1", "127.0.0.2")
	p, clock, listen, a := servedIP(t, res)
	name := "tasks.api-green:" + port
	res.set("tasks.api-green", "127.0.0.1")

	done := make(chan error, 1)
	go func() {
		_, err := p.ChangeRoute(context.Background(), "web", wire.RouteRequest{To: oneEndpoint(name), Generation: 2, Expect: map[string][]string{name: {"127.0.0.1", "127.0.0.2"}}})
		done <- err
	}()
	waitTimers(t, clock, 1) // it looked, found one of the two, and waits
	st, err := p.Get("web")
	require.NoError(t, err)
	require.Equal(t, a.addr(), st.Upstream, "not switched yet")
	require.Zero(t, st.Generation)

	res.set("tasks.api-green", "127.0.0.2", "127.0.0.1")
	clock.Advance(resolveEvery)
	require.NoError(t, <-done)
	st, err = p.Get("web")
	require.NoError(t, err)
	require.Equal(t, name, st.Upstream)
	require.EqualValues(t, 2, st.Generation)
	rel, _ := get(t, quick, "http://"+listen+"/")
	require.Contains(t, []string{"127.0.0.1", "127.0.0.2"}, rel)
}

// A lookup that never holds the expected IPs: after the change's time,
// it is refused, and the route is left as it is.
func TestExpectTimesOutLeavingTheRoute(t *testing.T) {
	res := newFakeResolver()
	p, clock, _, a := servedIP(t, res)
	name := "tasks.api-blue:8000"
	res.set("tasks.api-blue", "127.0.0.1")

	done := make(chan error, 1)
	go func() {
		_, err := p.ChangeRoute(context.Background(), "web", wire.RouteRequest{To: oneEndpoint(name), Generation: 3, Expect: map[string][]string{name: {"127.0.0.9"}}, Converge: wire.Duration(3 * time.Second)})
		done <- err
	}()
	for range 3 {
		waitTimers(t, clock, 1)
		clock.Advance(resolveEvery)
	}
	err := <-done
	require.ErrorIs(t, err, wire.ErrNotConverged)
	require.EqualError(t, err, "not converged: tasks.api-blue resolves to [127.0.0.1], expected [127.0.0.9]; the route was left as it is")
	require.EqualValues(t, 4, res.lookups.Load(), "looked up at 0, 1, 2 and 3 s")
	st, err := p.Get("web")
	require.NoError(t, err)
	require.Equal(t, a.addr(), st.Upstream)
	require.Zero(t, st.Generation)

	_, err = p.ChangeRoute(context.Background(), "web", wire.RouteRequest{To: oneEndpoint(a.addr()), Expect: map[string][]string{a.addr(): {"127.0.0.1"}}})
	require.ErrorIs(t, err, ErrBadInput, "an IP endpoint has nothing to expect")
}

// The control API answers a refused generation and a change that did not
// converge with statuses of their own.
func TestControlAPIStatusesOfRefusedChanges(t *testing.T) {
	p := NewServer(net.Listen, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{Clock: newJumpingClock(), Resolver: newFakeResolver()})
	t.Cleanup(func() { _ = p.Delete("web") })
	a := newBackend(t, "a")
	_, err := p.Put("web", freeAddr(t), a.addr())
	require.NoError(t, err)
	h := ControlHandler(p)
	put := func(body string) int {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPut, "/v1/services/web/route", strings.NewReader(body)))
		return rec.Code
	}
	require.Equal(t, http.StatusOK, put(`{"to": [{"endpoints": ["`+a.addr()+`"], "weight": 100}], "generation": 4}`))
	require.Equal(t, http.StatusPreconditionFailed, put(`{"to": [{"endpoints": ["127.0.0.1:1"], "weight": 100}], "generation": 3}`))
	require.Equal(t, http.StatusFailedDependency, put(`{"to": [{"endpoints": ["tasks.x:1"], "weight": 100}], "generation": 5, "expect": {"tasks.x:1": ["10.0.0.1"]}, "converge": "3s"}`))
}
