package proxy

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/proxy/wire"
)

// slowFor is how long the app's /slow takes: the one request whose
// latency the test knows a lower bound of.
const slowFor = 50 * time.Millisecond

// statsApp answers 200 on /, 500 on /fail, 200 after slowFor on /slow,
// upgrades /ws, closes the connection without an answer on /break, and
// on /hang waits until its client leaves (arrived says it got there).
func statsApp(t *testing.T) (addr string, arrived chan struct{}) {
	arrived = make(chan struct{}, 1)
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })
	mux.HandleFunc("/fail", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "boom", http.StatusInternalServerError) })
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) { time.Sleep(slowFor); _, _ = io.WriteString(w, "slow") })
	mux.HandleFunc("/break", func(w http.ResponseWriter, r *http.Request) {
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close()
		}
	})
	mux.HandleFunc("/hang", func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-r.Context().Done()
	})
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		_, _, _ = c.Read(r.Context())
	})
	app := httptest.NewServer(mux)
	t.Cleanup(app.Close)
	return strings.TrimPrefix(app.URL, "http://"), arrived
}

// endpointStats is the stats of endpoint in p's service name.
func endpointStatsOf(t *testing.T, p *Server, name, endpoint string) wire.EndpointStats {
	t.Helper()
	st, err := p.Stats(name)
	require.NoError(t, err)
	for _, e := range st.Endpoints {
		if e.Endpoint == endpoint {
			return e
		}
	}
	t.Fatalf("%s is not in %s's stats: %+v", endpoint, name, st)
	return wire.EndpointStats{}
}

// statusOf is the status of an answer, read whole.
func statusOf(t *testing.T) func(*http.Response, error) int {
	return func(resp *http.Response, err error) int {
		t.Helper()
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
}

// Every answer is counted on the endpoint that gave it, a 5xx apart, the
// proxy's own 502 apart from the app's answers, an upgrade once, a
// client that left apart; latency is the time to response headers.
func TestStatsCountAnswersErrorsAndLatency(t *testing.T) {
	app, arrived := statsApp(t)
	old := newBackend(t, "old")
	p := NewServer(net.Listen, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{DialRetry: time.Second, Clock: newJumpingClock()})
	t.Cleanup(func() { _ = p.Delete("web") })
	listen := serveRoute(t, p, []wire.Backend{{Release: "new", Endpoints: []string{app}, Weight: 100}, {Release: "old", Endpoints: []string{old.addr()}, Weight: 0}})
	url := "http://" + listen
	c := &http.Client{}
	status := statusOf(t)

	for range 3 {
		require.Equal(t, 200, status(c.Get(url+"/")))
	}
	for range 2 {
		require.Equal(t, 500, status(c.Get(url+"/fail")))
	}
	require.Equal(t, 200, status(c.Get(url+"/slow")))
	require.Equal(t, 502, status(c.Post(url+"/break", "text/plain", strings.NewReader("x"))), "the app closed the connection: the proxy's 502")
	ws, _, err := websocket.Dial(context.Background(), "ws://"+listen+"/ws", nil)
	require.NoError(t, err)
	ws.Close(websocket.StatusNormalClosure, "")

	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"/hang", nil)
	left := make(chan error, 1)
	go func() { _, err := c.Do(req); left <- err }()
	<-arrived
	cancel()
	require.Error(t, <-left)
	require.Eventually(t, func() bool { return endpointStatsOf(t, p, "web", app).ClientLeft == 1 }, 5*time.Second, 5*time.Millisecond, "the request its client gave up is counted")

	got := endpointStatsOf(t, p, "web", app)
	require.Equal(t, "new", got.Release)
	require.Equal(t, 100, got.Weight)
	require.Equal(t, uint64(3+2+1+1), got.Answered, "200s, 500s, the slow one and the upgrade")
	require.Equal(t, uint64(2), got.Status5xx, "the app's 500s, not the proxy's 502")
	require.Equal(t, uint64(1), got.ConnFailures, "the proxy's 502")
	require.Zero(t, got.Moved)
	require.Equal(t, uint64(1), got.ClientLeft)
	require.Len(t, got.Latency.Bounds, 49)
	require.Len(t, got.Latency.Counts, 50)
	require.Equal(t, got.Answered, got.Latency.Total(), "every answer has its latency")
	require.InDelta(t, 0.001, got.Latency.Bounds[0], 1e-12)
	require.InDelta(t, 63.0957, got.Latency.Bounds[48], 1e-4)
	var slow uint64 // answers in a bucket reaching past slowFor: the slow one at least
	for i, b := range got.Latency.Bounds {
		if b >= slowFor.Seconds() {
			slow += got.Latency.Counts[i]
		}
	}
	slow += got.Latency.Counts[49]
	require.GreaterOrEqual(t, slow, uint64(1), "the slow answer took at least %v: %v", slowFor, got.Latency.Counts)

	drained := endpointStatsOf(t, p, "web", old.addr())
	require.Equal(t, wire.EndpointStats{Release: "old", Endpoint: old.addr(), Generation: drained.Generation, Latency: wire.Histogram{Bounds: got.Latency.Bounds, Counts: make([]uint64, 50)}}, drained, "weight 0 is listed, with nothing counted")
	require.NotEqual(t, got.Generation, drained.Generation)

	w := wire.Between(wire.ServiceStats{}, wire.ServiceStats{Endpoints: []wire.EndpointStats{got}}, "new")
	require.Equal(t, uint64(8), w.Requests)
	require.Equal(t, uint64(3), w.Errors)
}

// A request its endpoint refused is counted where it was answered; the
// refusing endpoint counts it as moved, not as a failure. The route's only
// endpoint refusing until the dial retry ends is a connection failure.
func TestStatsCountARefusedRequestWhereItWasAnswered(t *testing.T) {
	app, _ := statsApp(t)
	refusing, alone := freeAddr(t), freeAddr(t)
	p := NewServer(net.Listen, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{DialRetry: time.Second, Clock: newJumpingClock()})
	t.Cleanup(func() { _ = p.Delete("web"); _ = p.Delete("solo") })
	listen := serveRoute(t, p, []wire.Backend{{Release: "a", Endpoints: []string{refusing}, Weight: 50}, {Release: "b", Endpoints: []string{app}, Weight: 50}})
	status := statusOf(t)
	c := keyedClient(t, listen, keyOn(t, []int{50, 50}, 0)) // a client of the refusing release: a split sticks to a client
	for range 10 {
		require.Equal(t, 200, status(c.Get("http://"+listen+"/")))
	}
	r := endpointStatsOf(t, p, "web", refusing)
	require.Equal(t, [5]uint64{0, 0, 0, 1, 0}, [5]uint64{r.Answered, r.Status5xx, r.ConnFailures, r.Moved, r.Latency.Total()}, "answered, 5xx, failures, moved, latencies of the refusing endpoint")
	a := endpointStatsOf(t, p, "web", app)
	require.Equal(t, [5]uint64{10, 0, 0, 0, 10}, [5]uint64{a.Answered, a.Status5xx, a.ConnFailures, a.Moved, a.Latency.Total()}, "of the one that answered")

	soloListen := freeAddr(t)
	_, err := p.Put("solo", soloListen, alone)
	require.NoError(t, err)
	require.Equal(t, 502, status(http.Get("http://"+soloListen+"/")))
	s := endpointStatsOf(t, p, "solo", alone)
	require.Equal(t, [5]uint64{0, 0, 1, 0, 0}, [5]uint64{s.Answered, s.Status5xx, s.ConnFailures, s.Moved, s.Latency.Total()}, "the only endpoint refused until the dial retry ended")
}

// Counts begin at 0 when an endpoint enters the route again after it
// drained, under a new generation.
func TestStatsBeginAgainWhenAnEndpointReentersTheRoute(t *testing.T) {
	a, b := newBackend(t, "a"), newBackend(t, "b")
	p := newTestServer(t)
	listen := serveRoute(t, p, []wire.Backend{{Release: "a", Endpoints: []string{a.addr()}, Weight: 100}})
	get(t, &http.Client{}, "http://"+listen+"/")
	first := endpointStatsOf(t, p, "web", a.addr())
	require.Equal(t, uint64(1), first.Answered)

	_, err := p.Switch("web", "", b.addr())
	require.NoError(t, err)
	_, err = p.Switch("web", "", a.addr())
	require.NoError(t, err)
	again := endpointStatsOf(t, p, "web", a.addr())
	require.Zero(t, again.Answered)
	require.NotEqual(t, first.Generation, again.Generation)
	_, err = p.Stats("nope")
	require.ErrorIs(t, err, ErrNoService)
}

// GET .../stats answers the wire shape.
func TestStatsControlAPI(t *testing.T) {
	p, a, listen := serveOne(t)
	get(t, &http.Client{}, "http://"+listen+"/")
	srv := httptest.NewServer(ControlHandler(p))
	t.Cleanup(srv.Close)
	resp, err := http.Get(srv.URL + wire.ServicesPath + "/web/stats")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode)
	var st wire.ServiceStats
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&st))
	require.Equal(t, "web", st.Name)
	require.Len(t, st.Endpoints, 1)
	require.Equal(t, a.addr(), st.Endpoints[0].Endpoint)
	require.Equal(t, uint64(1), st.Endpoints[0].Answered)

	resp, err = http.Get(srv.URL + wire.ServicesPath + "/nope/stats")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, 404, resp.StatusCode)
}

func TestLatencyBuckets(t *testing.T) {
	require.Equal(t, 0, latencyBucket(0))
	require.Equal(t, 0, latencyBucket(time.Millisecond), "a bound is in its own bucket")
	require.Equal(t, 1, latencyBucket(time.Millisecond+1))
	require.Equal(t, 10, latencyBucket(10*time.Millisecond))
	require.Equal(t, 48, latencyBucket(latencyBounds[48]))
	require.Equal(t, 49, latencyBucket(time.Hour), "above every bound")
}
