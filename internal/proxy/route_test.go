package proxy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/proxy/wire"
)

// serveRoute has service "web" on a free address, sent along spec.
func serveRoute(t *testing.T, p *Server, spec []wire.Backend) string {
	t.Helper()
	listen := freeAddr(t)
	_, err := p.PutRoute("web", listen, spec)
	require.NoError(t, err)
	return listen
}

// Each client's requests go to the backend its key falls in, so over
// many clients the shares are the weights' (stickiness_test.go has the
// rest); weight 0 gets none. A client whose backend has no endpoint up
// goes to the others by a smooth weighted round robin: over any whole turn
// (the sum of the weights over their gcd) the shares are exact, and spread
// out, not in runs.
func TestWeightsSplitRequestsSmoothly(t *testing.T) {
	order := smoothOrder([]int{90, 10})
	require.Len(t, order, 10, "90:10 is one turn of 10")
	require.Equal(t, []uint8{0, 0, 0, 0, 0, 1, 0, 0, 0, 0}, order, "the canary's one in ten comes alone")
	require.Equal(t, []uint8{1, 0, 1}, smoothOrder([]int{1, 2, 0}), "weight 0 is never picked")

	old, canary, drained := newBackend(t, "old"), newBackend(t, "new"), newBackend(t, "gone")
	p := newTestServer(t)
	listen := serveRoute(t, p, []wire.Backend{
		{Release: "old", Endpoints: []string{old.addr()}, Weight: 90},
		{Release: "new", Endpoints: []string{canary.addr()}, Weight: 10},
		{Release: "gone", Endpoints: []string{drained.addr()}, Weight: 0},
	})
	const n = 1000
	counts := map[string]int{}
	keys := rand.New(rand.NewPCG(1, 2))
	for range n {
		rel, _ := ask(t, "http://"+listen+"/", withKey(keys.Uint64()))
		counts[rel]++
	}
	require.Len(t, counts, 2, "weight 0 gets none: %v", counts)
	require.InDelta(t, 100, counts["new"], 30, "90:10 over %d clients: %v", n, counts)

	st, err := p.Get("web")
	require.NoError(t, err)
	require.Empty(t, st.Upstream, "more than one endpoint takes requests: no single upstream")
	require.Len(t, st.Route, 3)
	require.Equal(t, []wire.DrainingState{{Upstream: drained.addr()}}, st.Draining, "a weight-0 release drains")
}

// Within a backend an endpoint is picked by fewest requests in flight,
// ties in turn.
func TestFewestInFlightPicksTheEndpoint(t *testing.T) {
	a1, a2 := newBackend(t, "a1"), newBackend(t, "a2")
	p := newTestServer(t)
	listen := serveRoute(t, p, []wire.Backend{{Release: "a", Endpoints: []string{a1.addr(), a2.addr()}, Weight: 100}})
	c := &http.Client{}

	var seen []string
	for range 4 {
		rel, _ := get(t, c, "http://"+listen+"/")
		seen = append(seen, rel)
	}
	require.Equal(t, []string{"a1", "a2", "a1", "a2"}, seen, "nothing in flight: in turn")

	slow := make(chan string, 1)
	go func() { rel, _ := get(t, c, "http://"+listen+"/slow"); slow <- rel }()
	var busy string
	require.Eventually(t, func() bool {
		st, _ := p.Get("web")
		for _, e := range st.Route[0].Endpoints {
			if e.InFlight == 1 {
				busy = e.Endpoint
				return true
			}
		}
		return false
	}, 5*time.Second, time.Millisecond)
	idle := "a1"
	if busy == a1.addr() {
		idle = "a2"
	}
	for range 5 {
		rel, _ := get(t, c, "http://"+listen+"/")
		require.Equal(t, idle, rel, "the endpoint with a request in flight gets none while the other has none")
	}
	close(a1.release)
	close(a2.release)
	<-slow
}

// An endpoint that refuses connections (a replica restarting) is marked
// down, logged once, and skipped while its backend has another endpoint
// up; probed, it takes requests again once it answers.
func TestARefusedEndpointIsSkippedUntilItAnswersAgain(t *testing.T) {
	defer func(f time.Duration) { probeFirst = f }(probeFirst)
	probeFirst = 20 * time.Millisecond
	a1 := newBackend(t, "a1")
	l2, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	e2 := l2.Addr().String()
	serveAs := func(l net.Listener, name string) *http.Server {
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Release", name)
			_, _ = io.WriteString(w, name)
		})}
		go func() { _ = srv.Serve(l) }()
		return srv
	}
	srv := serveAs(l2, "a2")

	logs := &syncWriter{w: &bytes.Buffer{}}
	p := NewServer(net.Listen, slog.New(slog.NewTextHandler(logs, nil)), Options{DialRetry: 300 * time.Millisecond})
	t.Cleanup(func() { _ = p.Delete("web") })
	listen := serveRoute(t, p, []wire.Backend{{Release: "a", Endpoints: []string{a1.addr(), e2}, Weight: 100}})
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	call := func() (string, int) {
		resp, err := client.Get("http://" + listen + "/")
		require.NoError(t, err)
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.Header.Get("X-Release"), resp.StatusCode
	}
	down := func() bool {
		st, _ := p.Get("web")
		return st.Route[0].Endpoints[1].Down
	}
	for range 2 {
		rel, _ := call()
		require.Contains(t, []string{"a1", "a2"}, rel)
	}

	require.NoError(t, srv.Close()) // the replica crashed: its port refuses
	for i := 0; !down(); i++ {
		require.Less(t, i, 10, "a refusal marks it down")
		call() // the request that finds it refusing goes to a1
	}
	for range 20 {
		rel, code := call()
		require.Equal(t, 200, code)
		require.Equal(t, "a1", rel, "the down endpoint gets no new requests")
	}
	require.Equal(t, 1, strings.Count(logs.String(), "endpoint down"), "logged once")

	l2, err = net.Listen("tcp", e2) // restarted on its pinned port
	require.NoError(t, err)
	srv = serveAs(l2, "a2")
	t.Cleanup(func() { srv.Close() })
	require.Eventually(t, func() bool { return !down() }, 5*time.Second, 10*time.Millisecond, "the probe finds it up")
	seen := map[string]bool{}
	for range 4 {
		rel, _ := call()
		seen[rel] = true
	}
	require.True(t, seen["a2"], "it takes requests again")
	require.Equal(t, 1, strings.Count(logs.String(), "endpoint up"), "logged once")
}

// The acquire guarantee holds for every endpoint: a route change that
// lands between a request's pick of an endpoint and its counting there
// sends it along the new route, so a drain that saw nothing in flight on
// the old endpoints is right. Both ways an endpoint stops taking
// requests: it leaves the route, or its release gets weight 0.
func TestRequestNeverReachesAnEndpointItWasNotCountedOn(t *testing.T) {
	for _, canary := range []bool{false, true} {
		t.Run(fmt.Sprint("weight0=", canary), func(t *testing.T) {
			a1, a2, b := newBackend(t, "a1"), newBackend(t, "a2"), newBackend(t, "b")
			var hitsA atomic.Int64
			a1.Config.Handler = countingHandler(a1.Config.Handler, &hitsA)
			a2.Config.Handler = countingHandler(a2.Config.Handler, &hitsA)
			p := newTestServer(t)
			from := []wire.Backend{{Release: "a", Endpoints: []string{a1.addr(), a2.addr()}, Weight: 100}}
			listen := serveRoute(t, p, from)
			to := []wire.Backend{{Release: "b", Endpoints: []string{b.addr()}, Weight: 100}}
			if canary {
				to = append(to, wire.Backend{Release: "a", Endpoints: []string{a1.addr(), a2.addr()}, Weight: 0})
			}

			var sawOnA []int64
			var once sync.Once
			acquireHook = func() {
				once.Do(func() {
					_, err := p.Route("web", from, to)
					require.NoError(t, err)
					st, _ := p.Get("web")
					for _, d := range st.Draining {
						sawOnA = append(sawOnA, d.InFlight)
					}
				})
			}
			t.Cleanup(func() { acquireHook = nil })

			rel, _ := get(t, http.DefaultClient, "http://"+listen+"/")
			require.Equal(t, []int64{0, 0}, sawOnA, "the drain saw nothing in flight on a1 and a2")
			require.Equal(t, "b", rel, "so the request went to b")
			require.Zero(t, hitsA.Load(), "and neither a endpoint saw it")
		})
	}
}

// A route change is applied only from the route named (409 otherwise),
// answered as done when it is there already (nothing switched again), and
// a one-endpoint route is what Put and Switch make and take.
func TestRouteChangeConflictAndIdempotence(t *testing.T) {
	a, b1, b2 := newBackend(t, "a"), newBackend(t, "b1"), newBackend(t, "b2")
	p := newTestServer(t)
	listen := freeAddr(t)
	_, err := p.Put("web", listen, a.addr())
	require.NoError(t, err)
	ctl := httptest.NewServer(ControlHandler(p))
	t.Cleanup(ctl.Close)
	put := func(req wire.RouteRequest) (int, wire.ServiceState) {
		body, _ := json.Marshal(req)
		r, _ := http.NewRequest(http.MethodPut, ctl.URL+wire.ServicesPath+"/web/route", bytes.NewReader(body))
		resp, err := http.DefaultClient.Do(r)
		require.NoError(t, err)
		defer resp.Body.Close()
		var st wire.ServiceState
		_ = json.NewDecoder(resp.Body).Decode(&st)
		return resp.StatusCode, st
	}
	one := []wire.Backend{{Endpoints: []string{a.addr()}, Weight: 100}}
	to := []wire.Backend{{Release: "b", Endpoints: []string{b1.addr(), b2.addr()}, Weight: 100}, {Release: "a", Endpoints: []string{a.addr()}, Weight: 0}}

	code, _ := put(wire.RouteRequest{From: to, To: one})
	require.Equal(t, http.StatusOK, code, "already there: done")
	code, _ = put(wire.RouteRequest{From: []wire.Backend{{Endpoints: []string{"127.0.0.1:2"}, Weight: 100}}, To: to})
	require.Equal(t, http.StatusConflict, code, "not from the route named")
	code, _ = put(wire.RouteRequest{From: one, To: []wire.Backend{{Release: "x", Endpoints: []string{a.addr()}, Weight: 0}}})
	require.Equal(t, http.StatusBadRequest, code, "nothing would be served")

	code, st := put(wire.RouteRequest{From: one, To: to})
	require.Equal(t, http.StatusOK, code)
	require.Empty(t, st.Upstream)
	require.Equal(t, []wire.DrainingState{{Upstream: a.addr()}}, st.Draining)
	reordered := []wire.Backend{to[1], {Release: "b", Endpoints: []string{b2.addr(), b1.addr()}, Weight: 100}}
	code, st = put(wire.RouteRequest{From: one, To: reordered})
	require.Equal(t, http.StatusOK, code, "a repeated change whose answer was lost: done, in any order")
	require.Len(t, st.Draining, 1, "and not switched again")

	_, err = p.Switch("web", a.addr(), b1.addr())
	require.ErrorIs(t, err, ErrNotFrom, "a switch from one upstream needs a one-endpoint route")
	st2, err := p.Switch("web", "", b1.addr())
	require.NoError(t, err)
	require.Equal(t, b1.addr(), st2.Upstream)
	rel, _ := get(t, http.DefaultClient, "http://"+listen+"/")
	require.Equal(t, "b1", rel)
}

// An old state file (an upstream per service) loads as a one-endpoint
// route; a route is saved and restored whole, beside the upstream of its
// one endpoint of weight > 0 when it has one; a one-endpoint route of
// weight 100 is saved as old files were (a downgrade reads it).
func TestStateFileCarriesTheRoute(t *testing.T) {
	a, b1, b2 := newBackend(t, "a"), newBackend(t, "b1"), newBackend(t, "b2")
	path := filepath.Join(t.TempDir(), "proxy.json")
	listen := freeAddr(t)
	require.NoError(t, os.WriteFile(path, fmt.Appendf(nil, `{"services": [{"name": "web", "listen": %q, "upstream": %q}]}`, listen, a.addr()), 0o600))
	start := func() *Server {
		p := NewServer(net.Listen, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{Save: func(st []ServiceState) error { return SaveState(path, st) }})
		p.probe = func(*slog.Logger, string, string) {}
		require.NoError(t, p.Restore(path))
		return p
	}
	entry := func() map[string]any {
		var f struct{ Services []map[string]any }
		data, err := os.ReadFile(path)
		require.NoError(t, err)
		require.NoError(t, json.Unmarshal(data, &f))
		require.Len(t, f.Services, 1)
		return f.Services[0]
	}

	p := start()
	st, err := p.Get("web")
	require.NoError(t, err)
	require.Equal(t, a.addr(), st.Upstream)
	require.Equal(t, []wire.Backend{{Endpoints: []string{a.addr()}, Weight: 100}}, wire.Spec(st.Route), "an old file's upstream is a one-endpoint route")

	canary := []wire.Backend{{Release: "a", Endpoints: []string{a.addr()}, Weight: 90}, {Release: "b", Endpoints: []string{b1.addr(), b2.addr()}, Weight: 10}}
	_, err = p.Route("web", nil, canary)
	require.NoError(t, err)
	require.Equal(t, "", entry()["upstream"], "no one upstream: an old binary keeps the entry unrestored")
	require.NotNil(t, entry()["route"])
	p.services["web"].ln.Close()
	p.mu.Lock()
	delete(p.services, "web")
	p.mu.Unlock()

	p = start()
	st, err = p.Get("web")
	require.NoError(t, err)
	require.Equal(t, canary, wire.Spec(st.Route), "restored whole")

	blueGreen := []wire.Backend{{Release: "b", Endpoints: []string{b1.addr()}, Weight: 100}, {Release: "a", Endpoints: []string{a.addr()}, Weight: 0}}
	_, err = p.Route("web", canary, blueGreen)
	require.NoError(t, err)
	require.Equal(t, b1.addr(), entry()["upstream"], "its one endpoint of weight > 0, for a downgrade")

	_, err = p.Switch("web", b1.addr(), b2.addr())
	require.NoError(t, err)
	require.Equal(t, map[string]any{"name": "web", "listen": listen, "upstream": b2.addr()}, entry(), "a switch's route is saved as old files were")

	_, err = p.Route("web", nil, []wire.Backend{{Release: "web-7", Endpoints: []string{b1.addr()}, Weight: 100}})
	require.NoError(t, err)
	require.Equal(t, map[string]any{"name": "web", "listen": listen, "upstream": b1.addr()}, entry(), "so is one endpoint the route API set, whatever its release is named")
	require.NoError(t, p.Delete("web"))
}

// A route's only endpoint is never marked down (there is no other to send
// to, and the dial retry waits for it as it always did): no "endpoint
// down" line, no probe, for a single app that restarts.
func TestTheOnlyEndpointIsNeverMarkedDown(t *testing.T) {
	var logs syncWriter
	logs.w = &bytes.Buffer{}
	p := NewServer(net.Listen, slog.New(slog.NewTextHandler(&logs, nil)), Options{DialRetry: 100 * time.Millisecond})
	t.Cleanup(func() { _ = p.Delete("web") })
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closed := l.Addr().String()
	l.Close()
	listen := freeAddr(t)
	_, err = p.Put("web", listen, closed)
	require.NoError(t, err)
	resp, err := http.Get("http://" + listen + "/")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusBadGateway, resp.StatusCode)
	require.NotContains(t, logs.String(), "endpoint down")
	require.False(t, p.services["web"].route.Load().single.down.Load())
}

// Series are per endpoint and go with the last target of their endpoint:
// 100 canaries and drains of three-replica releases leave as many series
// as one does, and a scrape with weight-0 endpoints in the route (and in
// the drain) has one in-flight series per endpoint.
func TestMetricsPerEndpointAreDeletedWithTheirTargets(t *testing.T) {
	m := NewMetrics()
	p := NewServer(net.Listen, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{Metrics: m})
	t.Cleanup(func() { _ = p.Delete("web") })
	release := func(i int) wire.Backend {
		return wire.Backend{Release: fmt.Sprint("web-", i), Weight: 100, Endpoints: []string{
			fmt.Sprintf("127.0.0.1:%d", 2000+3*i), fmt.Sprintf("127.0.0.1:%d", 2001+3*i), fmt.Sprintf("127.0.0.1:%d", 2002+3*i)}}
	}
	_, err := p.PutRoute("web", freeAddr(t), []wire.Backend{release(0)})
	require.NoError(t, err)
	for i := 1; i <= 100; i++ {
		old, next := release(i-1), release(i)
		old.Weight, next.Weight = 90, 10
		_, err := p.Route("web", nil, []wire.Backend{old, next})
		require.NoError(t, err)
		old.Weight, next.Weight = 0, 100
		_, err = p.Route("web", nil, []wire.Backend{next, old})
		require.NoError(t, err)
		families, err := m.reg.Gather()
		require.NoError(t, err, "one series per label set")
		for _, f := range families {
			if f.GetName() == "handoff_proxy_requests_in_flight" {
				require.Len(t, f.GetMetric(), 6, "the three endpoints of each release")
			}
		}
		_, err = p.Route("web", nil, []wire.Backend{release(i)})
		require.NoError(t, err)
	}
	require.LessOrEqual(t, targetSeries(t, m), 2*3*7, "the route's three endpoints and three draining")
}

// A request whose endpoint refuses the connection (a replica just killed,
// not yet marked down) goes at once to another endpoint up, picked as a
// new request is (a release by weight, then fewest in flight), GET or POST
// alike (nothing was sent): no request waits its dial retry, and none goes
// to a release of weight 0. The refusing endpoint is marked down, so one
// request moves and is logged; once it answers again it takes requests.
func TestARefusedRequestGoesToAnotherEndpointAtOnce(t *testing.T) {
	for _, tc := range []struct {
		name  string
		route func(refusing, up, drained string) []wire.Backend
	}{
		{"one release", func(refusing, up, drained string) []wire.Backend {
			return []wire.Backend{{Release: "a", Endpoints: []string{refusing, up}, Weight: 100}, {Release: "old", Endpoints: []string{drained}, Weight: 0}}
		}},
		{"two releases", func(refusing, up, drained string) []wire.Backend {
			return []wire.Backend{{Release: "a", Endpoints: []string{refusing}, Weight: 50}, {Release: "b", Endpoints: []string{up}, Weight: 50}, {Release: "old", Endpoints: []string{drained}, Weight: 0}}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer func(f time.Duration) { probeFirst = f }(probeFirst)
			probeFirst = 20 * time.Millisecond
			up, drained := newBackend(t, "up"), newBackend(t, "old")
			var hitsOld atomic.Int64
			drained.Config.Handler = countingHandler(drained.Config.Handler, &hitsOld)
			refusing := freeAddr(t) // nothing listens: its dials are refused
			clock := newJumpingClock()
			logs := &syncWriter{w: &bytes.Buffer{}}
			p := NewServer(net.Listen, slog.New(slog.NewTextHandler(logs, nil)), Options{DialRetry: 2 * time.Second, Clock: clock})
			t.Cleanup(func() { _ = p.Delete("web") })
			listen := serveRoute(t, p, tc.route(refusing, up.addr(), drained.addr()))
			down := func() bool { return isDown(t, p, refusing) }

			client := &http.Client{}
			if tc.name == "two releases" {
				client = keyedClient(t, listen, keyOn(t, []int{50, 50, 0}, 0)) // its requests go to the refusing release
			}
			sendGetsAndPosts(t, client, listen, 200, 1000)
			require.Zero(t, clock.Waits(), "no request waited its dial retry")
			require.Zero(t, hitsOld.Load(), "no request went to the release of weight 0")
			require.True(t, down(), "the refusing endpoint is marked down")
			require.Equal(t, 1, strings.Count(logs.String(), "sent to another endpoint"), "one request found it refusing; the others did not go to it:\n%s", logs)
			require.Contains(t, logs.String(), "refused="+refusing+" to="+up.addr())

			l, err := net.Listen("tcp", refusing) // restarted on its pinned port
			require.NoError(t, err)
			srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Header().Set("X-Release", "back") })}
			go func() { _ = srv.Serve(l) }()
			t.Cleanup(func() { srv.Close() })
			require.Eventually(t, func() bool { return !down() }, 5*time.Second, 10*time.Millisecond, "the probe finds it up")
			seen := map[string]bool{}
			for range 4 {
				rel, _ := get(t, client, "http://"+listen+"/")
				seen[rel] = true
			}
			require.True(t, seen["back"], "it takes requests again: %v", seen)
		})
	}
}

// When every endpoint of the route refuses, a request waits the dial
// retry as it does with one endpoint, GET or POST, and gets its 502 after
// it; every endpoint it tried is marked down.
func TestEveryEndpointRefusingWaitsTheDialRetry(t *testing.T) {
	clock := newJumpingClock()
	p := NewServer(net.Listen, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{DialRetry: 2 * time.Second, Clock: clock})
	t.Cleanup(func() { _ = p.Delete("web") })
	e1, e2 := freeAddr(t), freeAddr(t)
	listen := serveRoute(t, p, []wire.Backend{{Release: "a", Endpoints: []string{e1, e2}, Weight: 100}})
	for _, send := range []func() (*http.Response, error){
		func() (*http.Response, error) { return http.Get("http://" + listen + "/") },
		func() (*http.Response, error) {
			return http.Post("http://"+listen+"/upload", "text/plain", strings.NewReader("order 42"))
		},
	} {
		waits := clock.Waits()
		resp, err := send()
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusBadGateway, resp.StatusCode)
		require.Greater(t, clock.Waits(), waits, "it waited the dial retry")
	}
	st, err := p.Get("web")
	require.NoError(t, err)
	for _, e := range st.Route[0].Endpoints {
		require.True(t, e.Down, "%s is marked down", e.Endpoint)
	}
}

// A request waiting the dial retry because every endpoint refused goes to
// one as soon as it is up again, not at the end of the retry.
func TestARequestWaitingTheDialRetryGoesToAnEndpointBackUp(t *testing.T) {
	defer func(f time.Duration) { probeFirst = f }(probeFirst)
	probeFirst = 20 * time.Millisecond
	clock := newFakeClock()
	p := NewServer(net.Listen, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{DialRetry: time.Minute, Clock: clock})
	t.Cleanup(func() { _ = p.Delete("web") })
	e1, e2 := freeAddr(t), freeAddr(t)
	listen := serveRoute(t, p, []wire.Backend{{Release: "a", Endpoints: []string{e1, e2}, Weight: 100}})

	answer := make(chan string, 1)
	go func() {
		resp, err := http.Get("http://" + listen + "/")
		if err != nil {
			answer <- err.Error()
			return
		}
		resp.Body.Close()
		answer <- fmt.Sprint(resp.StatusCode, " ", resp.Header.Get("X-Release"))
	}()
	require.Eventually(t, func() bool {
		clock.mu.Lock()
		defer clock.mu.Unlock()
		return len(clock.timers) == 1 && isDown(t, p, e1) && isDown(t, p, e2)
	}, 5*time.Second, time.Millisecond, "both refused; the request waits the dial retry")

	l, err := net.Listen("tcp", e1) // e1 restarted on its pinned port
	require.NoError(t, err)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Header().Set("X-Release", "e1") })}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	require.Eventually(t, func() bool { return !isDown(t, p, e1) }, 5*time.Second, 10*time.Millisecond, "the probe finds e1 up")
	clock.Advance(dialRetryInterval) // the next dial of e2, refused again
	select {
	case got := <-answer:
		require.Equal(t, "200 e1", got, "sent to e1 after a tenth of a second of the minute's retry")
	case <-time.After(10 * time.Second):
		t.Fatal("the request still waits its dial retry on e2 while e1 is up")
	}
}

// isDown says whether endpoint is marked down in service web's route.
func isDown(t *testing.T, p *Server, endpoint string) bool {
	t.Helper()
	st, err := p.Get("web")
	require.NoError(t, err)
	for _, b := range st.Route {
		for _, e := range b.Endpoints {
			if e.Endpoint == endpoint {
				return e.Down
			}
		}
	}
	t.Fatalf("%s is not in the route", endpoint)
	return false
}

// With one endpoint of three down, the other two share its requests
// evenly: ties go in turn among the endpoints up (they went 2:1, the one
// after the down one taking its turns too).
func TestEndpointsUpShareTiesEvenly(t *testing.T) {
	a, b, c := &target{}, &target{}, &target{}
	b.down.Store(true)
	p := &pool{endpoints: []*target{a, b, c}}
	got := map[*target]int{}
	for range 60 {
		got[p.fewest(p.turn(), nil)]++
	}
	require.Equal(t, map[*target]int{a: 30, c: 30}, got)
}

// sendGetsAndPosts sends n requests through listen, GETs and POSTs in turn (POST i
// with a body of base+i bytes), and checks that each was answered 200 and each POST's
// body went whole.
func sendGetsAndPosts(t *testing.T, client *http.Client, listen string, n, base int) {
	t.Helper()
	for i := range n {
		var resp *http.Response
		var err error
		body := strings.Repeat("x", base+i)
		if i%2 == 0 {
			resp, err = client.Get("http://" + listen + "/")
		} else {
			resp, err = client.Post("http://"+listen+"/upload", "text/plain", strings.NewReader(body))
		}
		require.NoError(t, err)
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode, "request %d: %s", i, got)
		if i%2 == 1 {
			require.Equal(t, fmt.Sprint(len(body)), string(got), "request %d: the POST's body went whole", i)
		}
	}
}
