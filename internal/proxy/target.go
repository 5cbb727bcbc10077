// Package proxy is `handoff proxy`: a small long-running switch between the
// front proxy (Caddy, nginx, or nothing) and the containers. The front
// points at one stable loopback port per service and is never reloaded by
// a deploy; a deploy switches the service's target here, per request, and
// no client connection is closed by it.
//
// server.go is the switch (one listener per service), target.go one
// upstream and what is in flight on it, control.go the control API on a
// unix socket, state.go the state file, client.go the deploy.Proxy that
// `handoff deploy` uses to drive it.
package proxy

import (
	"context"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// target is one upstream: its reverse proxy, its own connection pool (so
// that its idle connections can be closed when it is drained), and the
// requests in flight on it, WebSockets and streams included.
type target struct {
	upstream  string
	proxy     *httputil.ReverseProxy
	transport *http.Transport
	inFlight  atomic.Int64
	draining  atomic.Bool

	// cut is cancelled at the drain deadline: every request still running
	// on this target, streams and upgraded connections included, ends.
	cut     context.Context
	cutNow  context.CancelFunc
	cutting atomic.Bool

	mu       sync.Mutex
	upgraded map[*upgradedConn]struct{}
}

func newTarget(upstream string) *target {
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     90 * time.Second,
	}
	u := &url.URL{Scheme: "http", Host: upstream}
	t := &target{upstream: upstream, transport: tr, upgraded: map[*upgradedConn]struct{}{}}
	t.cut, t.cutNow = context.WithCancel(context.Background())
	t.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(u)
			pr.Out.Host = pr.In.Host // the app sees the Host the client asked for
			pr.SetXForwarded()
		},
		// FlushInterval 0: a response of known length goes out in as few
		// writes as possible; ReverseProxy itself flushes every write of SSE
		// and of responses of unknown length (streams, long polls).
		Transport: tr,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if r.Context().Err() != nil {
				return // the client left, or the drain deadline cut it: nothing to answer
			}
			w.WriteHeader(http.StatusBadGateway)
		},
	}
	return t
}

// serve proxies one request on t, counting it in flight until it ends.
func (t *target) serve(w http.ResponseWriter, r *http.Request) {
	t.inFlight.Add(1)
	defer t.done()
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stop := context.AfterFunc(t.cut, cancel)
	defer stop()
	t.proxy.ServeHTTP(&trackingWriter{ResponseWriter: w, t: t, websocket: isWebSocket(r)}, r.WithContext(ctx))
}

func (t *target) done() {
	if t.inFlight.Add(-1) == 0 && t.draining.Load() {
		t.transport.CloseIdleConnections()
	}
}

// drain marks t as no longer taking new requests; once nothing is in
// flight its idle connections to the app are closed.
func (t *target) drain() {
	t.draining.Store(true)
	if t.inFlight.Load() == 0 {
		t.transport.CloseIdleConnections()
	}
}

// retire ends whatever still runs on t: WebSockets get a close frame
// ("going away"), streams and requests are cancelled, idle connections closed.
func (t *target) retire() {
	t.cutting.Store(true)
	t.cutNow()
	t.transport.CloseIdleConnections()
}

func isWebSocket(r *http.Request) bool {
	return headerHas(r.Header, "Connection", "upgrade") && headerHas(r.Header, "Upgrade", "websocket")
}

// headerHas says whether a comma-separated header holds token.
func headerHas(h http.Header, key, token string) bool {
	for _, v := range h.Values(key) {
		for part := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(part), token) {
				return true
			}
		}
	}
	return false
}
