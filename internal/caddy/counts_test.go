package caddy

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/deploy"
	"github.com/handoff-dev/handoff/internal/itest"
)

// testdata/metrics-*.txt are the /metrics of real Caddy processes (2.11.9,
// Debian's 2.6.2) serving this Caddyfile ("recordedCaddyfile" in their
// first lines), its global options turning metrics on as each file's
// first line says, after the requests it names,
// then after a switch of app.test's upstream by one PATCH of the admin
// API (a reload, as handoff's), then after a switch to an upstream that
// is down. The configs below are what those Caddies adapted it to.
//
//	{
//		admin 127.0.0.1:22019
//		auto_https off
//		servers {
//			protocols h1 h2c
//		}
//		# metrics on, as each file says
//	}
//
//	http://app.test:28080, http://127.0.0.1:28080 {
//		bind 127.0.0.1
//		reverse_proxy 127.0.0.1:28090
//	}
//
//	http://other.test:28080 {    # 28081 in metrics-2.6.2.txt and its -switched and -down
//		bind 127.0.0.1
//		reverse_proxy 127.0.0.1:28090
//	}
//
//	http://:28090, http://:28091 {
//		bind 127.0.0.1
//		@fail path /fail
//		respond @fail "boom" 500
//		respond "ok" 200
//	}

// sharedPort is recordedCaddyfile adapted, metrics off: both sites on srv0.
const sharedPort = `{"admin":{"listen":"127.0.0.1:22019"},"apps":{"http":{"servers":{"srv0":{"automatic_https":{"disable":true,"skip":["other.test","app.test","127.0.0.1"]},"listen":["127.0.0.1:28080"],"protocols":["h1","h2c"],"routes":[{"handle":[{"handler":"subroute","routes":[{"handle":[{"handler":"reverse_proxy","upstreams":[{"dial":"127.0.0.1:28090"}]}]}]}],"match":[{"host":["other.test"]}],"terminal":true},{"handle":[{"handler":"subroute","routes":[{"handle":[{"handler":"reverse_proxy","upstreams":[{"dial":"127.0.0.1:28090"}]}]}]}],"match":[{"host":["app.test","127.0.0.1"]}],"terminal":true}]},"srv1":{"automatic_https":{"disable":true},"listen":["127.0.0.1:28090"],"protocols":["h1","h2c"],"routes":[{"handle":[{"body":"boom","handler":"static_response","status_code":500}],"match":[{"path":["/fail"]}]},{"handle":[{"body":"ok","handler":"static_response","status_code":200}]}]},"srv2":{"automatic_https":{"disable":true},"listen":["127.0.0.1:28091"],"protocols":["h1","h2c"],"routes":[{"handle":[{"body":"boom","handler":"static_response","status_code":500}],"match":[{"path":["/fail"]}]},{"handle":[{"body":"ok","handler":"static_response","status_code":200}]}]}}}}}`

// ownPort is the same with other.test on port 28081: app.test is alone on srv0.
const ownPort = `{"admin":{"listen":"127.0.0.1:22019"},"apps":{"http":{"servers":{"srv0":{"automatic_https":{"disable":true,"skip":["app.test","127.0.0.1"]},"listen":["127.0.0.1:28080"],"protocols":["h1","h2c"],"routes":[{"handle":[{"handler":"subroute","routes":[{"handle":[{"handler":"reverse_proxy","upstreams":[{"dial":"127.0.0.1:28090"}]}]}]}],"match":[{"host":["app.test","127.0.0.1"]}],"terminal":true}]},"srv1":{"automatic_https":{"disable":true,"skip":["other.test"]},"listen":["127.0.0.1:28081"],"protocols":["h1","h2c"],"routes":[{"handle":[{"handler":"subroute","routes":[{"handle":[{"handler":"reverse_proxy","upstreams":[{"dial":"127.0.0.1:28090"}]}]}]}],"match":[{"host":["other.test"]}],"terminal":true}]},"srv2":{"automatic_https":{"disable":true},"listen":["127.0.0.1:28090"],"protocols":["h1","h2c"],"routes":[{"handle":[{"body":"boom","handler":"static_response","status_code":500}],"match":[{"path":["/fail"]}]},{"handle":[{"body":"ok","handler":"static_response","status_code":200}]}]},"srv3":{"automatic_https":{"disable":true},"listen":["127.0.0.1:28091"],"protocols":["h1","h2c"],"routes":[{"handle":[{"body":"boom","handler":"static_response","status_code":500}],"match":[{"path":["/fail"]}]},{"handle":[{"body":"ok","handler":"static_response","status_code":200}]}]}}}}}`

// How each recording's Caddy turned metrics on, in its JSON.
const (
	metricsOff     = ""
	metricsPerHost = `{"per_host":true}` // 2.11: metrics { per_host }
	metricsApp     = `{}`                // 2.11: metrics
	metricsServers = "servers"           // 2.6: servers { metrics }
)

// withMetrics is cfg with metrics turned on as how says.
func withMetrics(t *testing.T, cfg, how string) string {
	t.Helper()
	var c map[string]any
	require.NoError(t, json.Unmarshal([]byte(cfg), &c))
	app := c["apps"].(map[string]any)["http"].(map[string]any)
	switch how {
	case metricsOff:
	case metricsServers:
		for _, srv := range app["servers"].(map[string]any) {
			srv.(map[string]any)["metrics"] = map[string]any{}
		}
	default:
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(how), &m))
		app["metrics"] = m
	}
	b, err := json.Marshal(c)
	require.NoError(t, err)
	return string(b)
}

// metricsAdmin is Caddy's admin API as Counts reads it: GET /config/
// answers a config, GET /metrics the text of a recording.
type metricsAdmin struct {
	url string

	mu      sync.Mutex
	config  string
	metrics string
}

func startMetricsAdmin(t *testing.T, config string) *metricsAdmin {
	t.Helper()
	ma := &metricsAdmin{config: config}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ma.mu.Lock()
		defer ma.mu.Unlock()
		switch {
		case r.Method == http.MethodGet && r.URL.Path == "/config/":
			io.WriteString(w, ma.config)
		case r.Method == http.MethodGet && r.URL.Path == "/metrics":
			w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
			io.WriteString(w, ma.metrics)
		default:
			http.Error(w, `{"error":"not in this fake"}`, http.StatusNotFound)
		}
	}))
	t.Cleanup(srv.Close)
	ma.url = srv.URL
	return ma
}

// serve makes /metrics answer the recording testdata/metrics-<name>.txt.
func (ma *metricsAdmin) serve(t *testing.T, name string) {
	t.Helper()
	ma.serveText(recording(t, name))
}

func (ma *metricsAdmin) serveText(text string) {
	ma.mu.Lock()
	defer ma.mu.Unlock()
	ma.metrics = text
}

func recording(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "metrics-"+name+".txt"))
	require.NoError(t, err)
	return string(b)
}

func counterFor(t *testing.T, ma *metricsAdmin, route string) *Proxy {
	t.Helper()
	p, err := New(ma.url, route, "", t.TempDir())
	require.NoError(t, err)
	return p
}

func countsNow(t *testing.T, p *Proxy) deploy.Counts {
	t.Helper()
	c, err := p.Counts(context.Background())
	require.NoError(t, err)
	return c
}

// Each recorded request of 2.11.9 took under 5 ms: the first bucket
// (0–5 ms) holds them all, read by interpolation.
const p50, p99 = 2500 * time.Microsecond, 4950 * time.Microsecond

// Caddy 2.11 with per_host: the route's site is told from the other site
// of its server by host. Its switch is a reload that starts every count
// again; so is the switch to a dead upstream, whose 502s Caddy records
// with their code (but not in the time to headers: it wrote none).
func TestCountsOfCaddy2_11AcrossSwitches(t *testing.T) {
	ma := startMetricsAdmin(t, withMetrics(t, sharedPort, metricsPerHost))
	p := counterFor(t, ma, "app.test")
	require.False(t, p.PerEndpoint())

	ma.serve(t, "2.11.9")
	before := countsNow(t, p)
	require.Equal(t, deploy.Window{Requests: 20, Errors: 5, P50: p50, P99: p99}, before.Since(nil, nil),
		"app.test's 15 and 5; not other.test's 3, nor the 2 Caddy counted under host _other (their Host had a port)")
	require.NoError(t, p.CanCount(context.Background()))

	ma.serve(t, "2.11.9-switched")
	switched := countsNow(t, p)
	require.Equal(t, deploy.Window{Requests: 10, Errors: 2, P50: p50, P99: p99}, switched.Since(before, []string{"127.0.0.1:28091"}),
		"the reload began the counts again: all 10 came after the reading before it")

	ma.serve(t, "2.11.9-down")
	down := countsNow(t, p)
	require.Equal(t, deploy.Window{Requests: 3, Errors: 3}, down.Since(switched, nil))

	// The config names the counts: after a reload they are all new, even
	// when each has grown past the earlier reading's (as if Caddy reloaded
	// after the 10 and then counted the 20).
	require.Equal(t, deploy.Window{Requests: 20, Errors: 5, P50: p50, P99: p99}, before.Since(switched, nil))
}

// Caddy 2.6 counts on across a reload: a window is the difference of two
// readings. It records no status for a request that ended in a handler's
// error, such as its own 502 for an upstream that is down: each is an
// error. app.test is alone on its server, which has no per_host.
func TestCountsOfCaddy2_6AcrossSwitches(t *testing.T) {
	ma := startMetricsAdmin(t, withMetrics(t, ownPort, metricsServers))
	p := counterFor(t, ma, "app.test")

	ma.serve(t, "2.6.2")
	before := countsNow(t, p)
	require.Equal(t, deploy.Window{Requests: 22, Errors: 5, P50: p50, P99: p99}, before.Since(nil, nil),
		"the site's, whatever the Host: 15+5 for app.test, 2 with a port; not other.test's on its own server")
	require.NoError(t, p.CanCount(context.Background()))

	ma.serve(t, "2.6.2-switched")
	switched := countsNow(t, p)
	require.Equal(t, deploy.Window{Requests: 10, Errors: 2, P50: p50, P99: p99}, switched.Since(before, nil))

	ma.serve(t, "2.6.2-down")
	down := countsNow(t, p)
	require.Equal(t, deploy.Window{Requests: 3, Errors: 3}, down.Since(switched, nil))
	require.Equal(t, deploy.Window{Requests: 13, Errors: 5, P50: p50, P99: p99}, down.Since(before, nil))

	// Counts lower than earlier's began again (a Caddy 2.6 restarted).
	require.Equal(t, 22, before.Since(down, nil).Requests)
}

// Without HTTP metrics there is nothing to count by: Counts and CanCount
// say what to add to the Caddyfile, in the words of the running version.
func TestCountsSayHowToTurnMetricsOn(t *testing.T) {
	for _, c := range []struct {
		recording, want string
	}{
		{"2.11.9-off", "add `metrics { per_host }` to the Caddyfile's global options and reload Caddy"},
		{"2.6.2-off", "add `metrics` to the `servers { }` block of the Caddyfile's global options (this Caddy, like 2.6, has no global `metrics` option; newer ones take `metrics { per_host }`) and reload Caddy"},
	} {
		t.Run(c.recording, func(t *testing.T) {
			ma := startMetricsAdmin(t, sharedPort)
			ma.serve(t, c.recording)
			p := counterFor(t, ma, "app.test")
			_, err := p.Counts(context.Background())
			require.ErrorIs(t, err, deploy.ErrConfig)
			require.ErrorContains(t, err, "watch: judges the new release by Caddy's HTTP metrics, and Caddy at "+ma.url+" (route app.test) has them off: "+c.want)
			require.EqualError(t, p.CanCount(context.Background()), err.Error())
		})
	}
}

// Without a host label, the counts of a server's sites are one: a route
// that shares its server with another site is refused, with the way to
// tell them apart in that version.
func TestCountsRefuseSitesCountedTogether(t *testing.T) {
	for _, c := range []struct {
		recording, how, want string
	}{
		{"2.11.9-no-per-host", metricsApp, "add `per_host` to the Caddyfile's global `metrics` option (`metrics { per_host }`) and reload Caddy"},
		{"2.6.2-shared", metricsServers, "this Caddy, like 2.6, has no per_host: give the site a port of its own, or upgrade Caddy"},
	} {
		t.Run(c.recording, func(t *testing.T) {
			ma := startMetricsAdmin(t, withMetrics(t, sharedPort, c.how))
			ma.serve(t, c.recording)
			p := counterFor(t, ma, "app.test")
			_, err := p.Counts(context.Background())
			require.ErrorIs(t, err, deploy.ErrConfig)
			require.ErrorContains(t, err, "Caddy's metrics count the requests of app.test together with those of site other.test (one server, and no host to tell them apart); "+c.want)
			require.ErrorIs(t, p.CanCount(context.Background()), deploy.ErrConfig)
		})
	}
}

// per_host names a request's host only when its Host header is exactly
// one of a site's; with observe_catchall_hosts any Host is its own label,
// port and all, and the site's hosts are found without the port. When
// every request of the site went to "_other", CanCount says how to fix it.
func TestCountsFindTheSitesHosts(t *testing.T) {
	ma := startMetricsAdmin(t, withMetrics(t, sharedPort, metricsPerHost))
	p := counterFor(t, ma, "app.test")
	text := recording(t, "2.11.9")

	ma.serveText(strings.ReplaceAll(text, `host="_other"`, `host="127.0.0.1:28080"`))
	require.Equal(t, 22, countsNow(t, p).Since(nil, nil).Requests, "127.0.0.1 is a host of the site")

	var lines []string
	for _, l := range strings.Split(text, "\n") {
		if !strings.Contains(l, `host="app.test"`) {
			lines = append(lines, l)
		}
	}
	ma.serveText(strings.Join(lines, "\n"))
	require.Equal(t, 0, countsNow(t, p).Since(nil, nil).Requests)
	err := p.CanCount(context.Background())
	require.ErrorIs(t, err, deploy.ErrConfig)
	require.ErrorContains(t, err, `Caddy counts every request of app.test under host "_other": per_host names a request's host only when its Host header is exactly one of the site's (app.test, 127.0.0.1), without a port; add `+"`observe_catchall_hosts`")
}

// A route named by its upstream is every site that dials it; once the
// service's containers took its place, Caddy's counts cannot be found
// without its host.
func TestCountsOfARouteByUpstream(t *testing.T) {
	ma := startMetricsAdmin(t, withMetrics(t, sharedPort, metricsPerHost))
	ma.serve(t, "2.11.9")
	require.Equal(t, 23, countsNow(t, counterFor(t, ma, "127.0.0.1:28090")).Since(nil, nil).Requests, "app.test's 20 and other.test's 3")

	_, err := counterFor(t, ma, "localhost:8000").Counts(context.Background())
	require.ErrorIs(t, err, deploy.ErrConfig)
	require.ErrorContains(t, err, "watch: Caddy's counts are found through the reverse_proxy that dials localhost:8000, and none does now (the service's containers took its place); set caddy.route to the site's host")
}

// The quantiles are read off Caddy's buckets as handoff proxy reads its own.
func TestBucketsQuantile(t *testing.T) {
	b := buckets{bounds: []float64{0.005, 0.01, 0.025}, cumulative: []float64{50, 90, 99}, count: 100}
	require.Equal(t, 5*time.Millisecond, b.quantile(0.50))
	require.Equal(t, 7500*time.Microsecond, b.quantile(0.70))
	require.Equal(t, 25*time.Millisecond, b.quantile(0.99))
	require.Equal(t, 25*time.Millisecond, b.quantile(1), "above every bound: the last bound")
	require.Equal(t, time.Duration(0), buckets{}.quantile(0.99))
}

// Against a real Caddy: 200 requests, 20 of them 500s, counted; a switch
// by SetRoute, after which the counting goes on (Caddy 2.11 from 0, 2.6
// on from where it was); a dead upstream's 502s counted as errors; and
// metrics off refused first, in the version's words. Debian's 2.6.2 too,
// where HANDOFF_TEST_CADDY_OLD names it.
func TestCountsOfARealCaddy(t *testing.T) {
	run := func(t *testing.T, bin string, old bool) {
		ctx := context.Background()
		app := func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/fail" {
				http.Error(w, "boom", http.StatusInternalServerError)
			}
		}
		blue, green := httptest.NewServer(http.HandlerFunc(app)), httptest.NewServer(http.HandlerFunc(app))
		t.Cleanup(blue.Close)
		t.Cleanup(green.Close)
		up := func(s *httptest.Server) string { return strings.TrimPrefix(s.URL, "http://") }
		o := itest.CaddyOptions{Upstream: up(blue), Binary: bin, Plain: true}
		if !old {
			o.Sites = []itest.Site{{Host: "other.test", Upstream: up(blue)}} // per_host tells it apart
		}
		c := itest.StartCaddy(t, o)
		p, err := New(c.Admin, itest.SiteHost, "", t.TempDir())
		require.NoError(t, err)

		err = p.CanCount(ctx)
		require.ErrorIs(t, err, deploy.ErrConfig)
		if old {
			require.ErrorContains(t, err, "add `metrics` to the `servers { }` block")
			// servers { metrics }, as the admin API takes it
			_, err = p.admin.call(ctx, http.MethodPut, "/config/apps/http/servers/srv0/metrics", map[string]any{}, nil, nil)
		} else {
			require.ErrorContains(t, err, "add `metrics { per_host }` to the Caddyfile's global options")
			_, err = p.admin.call(ctx, http.MethodPut, "/config/apps/http/metrics", map[string]any{"per_host": true}, nil, nil)
		}
		require.NoError(t, err)
		require.NoError(t, p.CanCount(ctx))

		// A new connection each: a config load (the switch) closes the idle
		// ones, and a request sent on one as it closes is reset (2.6.2).
		client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		send := func(n int, host string) {
			t.Helper()
			for i := range n {
				path := "/"
				if i%10 == 9 {
					path = "/fail"
				}
				_, _, err := itest.Get(client, c.URL+path, host)
				require.NoError(t, err)
			}
		}
		start := countsNow(t, p)
		send(200, itest.SiteHost)
		if !old {
			send(7, "other.test")
		}
		before := countsNow(t, p)
		w := before.Since(start, nil)
		require.Equal(t, 200, w.Requests)
		require.Equal(t, 20, w.Errors)
		require.Positive(t, w.P99)
		require.Equal(t, w, countsNow(t, p).Since(start, nil), "a reading again, nothing new")

		require.NoError(t, p.SetRoute(ctx, deploy.Only("", up(blue)), deploy.Only("", up(green))))
		switched := countsNow(t, p)
		send(100, itest.SiteHost)
		after := countsNow(t, p)
		w = after.Since(switched, nil)
		require.Equal(t, 100, w.Requests)
		require.Equal(t, 10, w.Errors)
		require.Positive(t, w.P99)
		require.Equal(t, 100, after.Since(before, nil).Requests)
		if old {
			require.Equal(t, 300, after.Since(start, nil).Requests, "2.6 counts on across the reload")
		} else {
			require.Equal(t, 100, after.Since(start, nil).Requests, "2.11 began again at the reload: what came before it is gone")
		}

		dead := closedPort(t)
		require.NoError(t, p.SetRoute(ctx, deploy.Only("", up(green)), deploy.Only("", dead)))
		switched = countsNow(t, p)
		for range 5 {
			code, _, err := itest.Get(client, c.URL+"/", itest.SiteHost)
			require.NoError(t, err)
			require.Equal(t, http.StatusBadGateway, code)
		}
		w = countsNow(t, p).Since(switched, nil)
		require.Equal(t, 5, w.Requests)
		require.Equal(t, 5, w.Errors, "Caddy's own 502s")
	}
	t.Run(itest.CaddyVersion, func(t *testing.T) { run(t, itest.CaddyBinary(t), false) })
	t.Run("2.6.2", func(t *testing.T) {
		bin := os.Getenv("HANDOFF_TEST_CADDY_OLD")
		if bin == "" {
			t.Skip("HANDOFF_TEST_CADDY_OLD not set (scripts/test.sh sets it to Debian's caddy 2.6.2)")
		}
		run(t, bin, true)
	})
}

// closedPort is a loopback address where nothing listens.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return addr
}
