package deploy_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/deploy"
	"github.com/handoff-dev/handoff/internal/deploy/proxytest"
)

// The unit tests' fake proxy keeps the contract the real ones keep, so
// that what the procedure's tests prove with it holds of them.
func TestProxyContractFake(t *testing.T) {
	proxytest.Run(t, proxytest.Harness{New: func(t *testing.T, upstreams ...string) proxytest.Instance {
		f := &front{running: map[string]int{}, sent: map[string]int{}}
		f.proxy = &lockedProxy{p: deploy.NewFakeProxy(upstreams[0], f.count)}
		if len(upstreams) > 1 {
			require.NoError(t, f.proxy.SetRoute(t.Context(), deploy.Only("", upstreams[0]), deploy.Only("", upstreams...)), "the user's route of several")
		}
		srv := httptest.NewServer(f)
		t.Cleanup(srv.Close)
		return proxytest.Instance{Proxy: f.proxy, Front: srv.URL, Route: "the service's route",
			LoseReply: func() func() bool {
				f.proxy.mu.Lock()
				defer f.proxy.mu.Unlock()
				return deploy.LoseNextReply(f.proxy.p)
			}}
	}})
}

// front is the fake's data plane: each request goes to the route's
// upstream of the moment, and is counted there until it ends. One that
// refuses the connection is passed over: the request, body and all, goes
// to another endpoint of the route.
type front struct {
	proxy   *lockedProxy
	mu      sync.Mutex
	running map[string]int
	sent    map[string]int // requests each endpoint was sent
}

func (f *front) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	route, err := f.proxy.Route(r.Context(), nil)
	if err != nil || len(route.Serving()) == 0 {
		http.Error(w, fmt.Sprintf("no route (%v)", err), http.StatusBadGateway)
		return
	}
	body, err := io.ReadAll(r.Body) // kept for an endpoint after one that refused
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	refused := map[string]bool{}
	for {
		up := f.pick(route, refused)
		if up == "" {
			http.Error(w, "every endpoint of the route refused the connection", http.StatusBadGateway)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		if f.send(w, r, up) {
			return
		}
		refused[up] = true
	}
}

// send proxies r to up; false when up refused the connection and nothing
// was written to w.
func (f *front) send(w http.ResponseWriter, r *http.Request, up string) (answered bool) {
	f.add(up, 1)
	defer f.add(up, -1)
	answered = true
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: up})
	rp.ErrorHandler = func(w http.ResponseWriter, _ *http.Request, err error) {
		if errors.Is(err, syscall.ECONNREFUSED) {
			answered = false
			return
		}
		http.Error(w, err.Error(), http.StatusBadGateway)
	}
	rp.ServeHTTP(w, r)
	return answered
}

// pick is the endpoint a new request goes to, of those not in refused:
// the one furthest behind its share (a release's weight split over its
// endpoints), so that the split is as exact as the weights; "" when none
// is left.
func (f *front) pick(route deploy.Route, refused map[string]bool) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	best, behind := "", 0.0
	for _, b := range route {
		for _, e := range b.Endpoints {
			if b.Weight == 0 || refused[e] {
				continue
			}
			share := float64(b.Weight) / float64(len(b.Endpoints))
			if next := float64(f.sent[e]+1) / share; best == "" || next < behind {
				best, behind = e, next
			}
		}
	}
	if best != "" {
		f.sent[best]++
	}
	return best
}

func (f *front) add(upstream string, n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.running[upstream] += n
}

func (f *front) count(upstream string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.running[upstream]
}

// lockedProxy is the fake, one call at a time: the front reads its route
// while the suite switches it.
type lockedProxy struct {
	mu sync.Mutex
	p  deploy.Proxy
}

func (l *lockedProxy) Route(ctx context.Context, known []string) (deploy.Route, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.p.Route(ctx, known)
}

func (l *lockedProxy) Preflight(ctx context.Context, current deploy.Route, known []string) ([]string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.p.Preflight(ctx, current, known)
}

func (l *lockedProxy) SetRoute(ctx context.Context, from, to deploy.Route) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.p.SetRoute(ctx, from, to)
}

func (l *lockedProxy) PointsAt(ctx context.Context, upstream string) ([]string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.p.PointsAt(ctx, upstream)
}

func (l *lockedProxy) InFlight(ctx context.Context, upstream string) (deploy.InFlight, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.p.InFlight(ctx, upstream)
}

func (l *lockedProxy) Retire(ctx context.Context, upstream string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.p.Retire(ctx, upstream)
}

func (l *lockedProxy) Advice(ctx context.Context, upstream string) ([]string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.p.Advice(ctx, upstream)
}

func (l *lockedProxy) Describe() string { return l.p.Describe() }
