package itest

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/caddy"
	"github.com/handoff-dev/handoff/internal/deploy"
	"github.com/handoff-dev/handoff/internal/deploy/proxytest"
	"github.com/handoff-dev/handoff/internal/proxy/proxyclient"
)

// Caddy's adapter keeps the contract every deploy.Proxy keeps, against a
// real Caddy with a Caddyfile on disk, its admin API behind a FaultyAdmin
// for the lost reply; and so does Debian's 2.6.2 where it is installed,
// except that it cannot count requests on an upstream it no longer routes
// to, and fails a POST it retries on another upstream.
//
// A route of several upstreams is written with what Advice asks of one
// (lb_try_duration, lb_try_interval, fail_duration) and a policy of the
// user's own, least_conn, which every switch must keep.
func TestProxyContractCaddy(t *testing.T) {
	run := func(t *testing.T, bin string, old bool) {
		var noWeights, noBodyRetry string
		if old {
			noWeights = "Caddy 2.6.2 has no weighted_round_robin (it came with 2.7)"
			noBodyRetry = "Caddy before 2.11.2 fails a request it retries with a body (invalid Read on closed Body): there, fail_duration only keeps later POSTs off a dead upstream (docs/caddy.md)"
		}
		h := proxytest.Harness{MayNotCount: old, NoWeights: noWeights, NoBodyRetry: noBodyRetry}
		h.New = func(t *testing.T, upstreams ...string) proxytest.Instance {
			o := CaddyOptions{Upstream: strings.Join(upstreams, " "), Binary: bin, Plain: old}
			var kept string
			if len(upstreams) > 1 {
				kept = "lb_policy least_conn"
				o.ExtraProxy = "\t\t" + kept + "\n\t\tfail_duration 10s\n"
				if old { // Plain leaves out the retries
					o.ExtraProxy += "\t\tlb_try_duration 5s\n\t\tlb_try_interval 100ms\n"
				}
			}
			c := StartCaddy(t, o)
			fa := NewFaultyAdmin(t, c)
			p, err := caddy.New(fa.Addr, SiteHost, c.File, t.TempDir())
			require.NoError(t, err)
			return proxytest.Instance{Proxy: p, Front: c.URL, Route: SiteHost, Kept: kept,
				Saved: func() string { return readFile(t, c.File) },
				LoseReply: func() func() bool {
					n := fa.Patched()
					fa.Set(FaultLoseReply)
					return func() bool { return fa.Patched() > n }
				}}
		}
		proxytest.Run(t, h)
	}
	t.Run(CaddyVersion, func(t *testing.T) { run(t, CaddyBinary(t), false) })
	t.Run("2.6.2", func(t *testing.T) {
		bin := os.Getenv("HANDOFF_TEST_CADDY_OLD")
		if bin == "" {
			t.Skip("HANDOFF_TEST_CADDY_OLD not set (scripts/test.sh sets it to Debian's caddy 2.6.2)")
		}
		run(t, bin, true)
	})
}

// handoff proxy's client keeps the contract against a real `handoff
// proxy`, its control socket behind a lossySocket for the lost reply.
func TestProxyContractHandoffProxy(t *testing.T) {
	bin := Build(t)
	// The client is reached only through this constructor.
	newClient := func(socket, service, listen string) (deploy.Proxy, error) {
		return proxyclient.New(proxyclient.NewControl(socket, service), listen)
	}
	proxytest.Run(t, proxytest.Harness{
		New: func(t *testing.T, upstreams ...string) proxytest.Instance {
			d := StartProxy(t, bin, 5*time.Second)
			lossy := newLossySocket(t, d.Socket)
			listen := "127.0.0.1:" + Itoa(FreePort(t))
			p, err := newClient(lossy.path, "web", listen)
			require.NoError(t, err)
			require.NoError(t, p.SetRoute(t.Context(), nil, deploy.Only("web-1", upstreams...)), "the service's first deploy")
			return proxytest.Instance{Proxy: p, Front: "http://" + listen, Route: "service web",
				Saved: func() string { return readFile(t, d.StateFile) },
				LoseReply: func() func() bool {
					lossy.arm.Store(true)
					return lossy.lost.Load
				}}
		}})
}

// lossySocket stands between a client and handoff proxy's control
// socket. Armed, it passes the next change on and drops its reply, as a
// connection lost after the proxy took the change does.
type lossySocket struct {
	path      string
	arm, lost atomic.Bool
}

func newLossySocket(t *testing.T, target string) *lossySocket {
	l := &lossySocket{path: filepath.Join(t.TempDir(), "lossy.sock")}
	ln, err := net.Listen("unix", l.path)
	require.NoError(t, err)
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) { pr.SetURL(&url.URL{Scheme: "http", Host: "proxy"}) },
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", target)
		}},
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet || !l.arm.CompareAndSwap(true, false) {
			rp.ServeHTTP(w, r)
			return
		}
		took := httptest.NewRecorder()
		rp.ServeHTTP(took, r)
		l.lost.Store(took.Code/100 == 2)
		if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
			conn.Close()
		}
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return l
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return string(b)
}
