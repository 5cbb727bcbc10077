package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// target is one endpoint of a route (an upstream): its reverse proxy, its
// own connection pool (so that its idle connections can be closed when it
// is drained), and the requests in flight on it, WebSockets and streams
// included.
type target struct {
	upstream  string
	proxy     *httputil.ReverseProxy
	transport appPool
	named     *named // its host is a DNS name (named.go); nil for an IP
	inFlight  atomic.Int64
	draining  atomic.Bool

	// down: it refused a connection and has not answered since; it gets
	// no new requests while another endpoint of weight > 0 is up, and is
	// probed (route.go) until it answers.
	down    atomic.Bool
	alone   atomic.Bool // the only endpoint of weight > 0 of its route: never marked down
	gone    atomic.Bool // forgotten: its service was deleted; no more probes
	service string
	log     *slog.Logger
	// probeFirst is probeFirst as it was when t was made, so that a probe
	// that outlives its test does not read what the next test sets.
	probeFirst time.Duration

	// cutting: the drain deadline came; every connection to the app is
	// closed, so what still runs on this target, streams and upgraded
	// connections included, ends. No per-request context is needed for it.
	cutting atomic.Bool

	mu       sync.Mutex
	upgraded map[*upgradedConn]struct{}
	conns    map[*appConn]struct{} // every open connection to the app

	metrics *targetMetrics // nil: no --metrics
	stats   *endpointStats
}

// appPool is a target's connections to its app: one *http.Transport for
// an IP, one per address for a name (named).
type appPool interface {
	http.RoundTripper
	CloseIdleConnections()
}

// newTarget makes the target for upstream: its own connection pool, and a
// reverse proxy that forwards as the service's trust settings say and
// logs every upstream error it answers for.
func (s *service) newTarget(upstream string) *target {
	t := &target{upstream: upstream, service: s.name, log: s.log, upgraded: map[*upgradedConn]struct{}{}, conns: map[*appConn]struct{}{}, metrics: s.metrics.forTarget(s.name, upstream), stats: newEndpointStats(), probeFirst: probeFirst}
	d := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	t.transport = appTransport(func(ctx context.Context, network, addr string) (net.Conn, error) {
		return t.track(t.dialRetrying(ctx, d, s.clock, s.dialRetry, network, addr))
	})
	if isNamed(upstream) {
		t.named = newNamed(t, s.resolver, s.clock, s.dialRetry)
		t.transport = t.named
	}
	u := &url.URL{Scheme: "http", Host: upstream}
	t.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(u)
			pr.Out.Host = pr.In.Host // the app sees the Host the client asked for
			forward(pr, trusts(s.trusted, pr.In.RemoteAddr))
		},
		// FlushInterval 0: a response of known length goes out in as few
		// writes as possible; ReverseProxy itself flushes every write of SSE
		// and of responses of unknown length (streams, long polls).
		Transport:  retrying{t.transport, s.dialRetry, s.clock, &t.cutting},
		BufferPool: copyBuffers, // else every response allocates (and zeroes) 32 KiB
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			tw, _ := w.(*trackingWriter)
			if tw != nil && errors.Is(err, errElsewhere) {
				tw.refused = err // nothing written: the request goes to another endpoint
				t.stats.moved.Add(1)
				return
			}
			if r.Context().Err() != nil {
				// The client left: nothing to answer, but say so.
				t.stats.clientLeft.Add(1)
				s.log.Info("request ended early", "service", s.name, "upstream", upstream, "method", r.Method, "uri", r.RequestURI, "why", "the client left")
				return
			}
			if t.cutting.Load() {
				// The drain deadline closed its connection to the app: the
				// client's connection is cut too, so that it cannot take
				// an empty answer for one.
				s.log.Info("request ended early", "service", s.name, "upstream", upstream, "method", r.Method, "uri", r.RequestURI, "why", "cut at the drain deadline")
				panic(http.ErrAbortHandler)
			}
			t.metrics.upstreamError()
			t.stats.failed.Add(1)
			if tw != nil {
				tw.failed = true // the 502 below is the proxy's, not the app's answer
			}
			s.log.Error("502: upstream error", "service", s.name, "upstream", upstream, "method", r.Method, "uri", r.RequestURI, "client", r.RemoteAddr, "err", err)
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(http.StatusBadGateway)
			_, _ = fmt.Fprintf(w, "502 Bad Gateway: the app behind service %s did not answer (handoff proxy)\n", s.name)
		},
	}
	return t
}

// appTransport is a pool of connections to an app, dialed by dial.
func appTransport(dial func(ctx context.Context, network, addr string) (net.Conn, error)) *http.Transport {
	return &http.Transport{
		Proxy:               nil,
		DialContext:         dial,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true, // pass the app's encoding through, never decode it here
		ReadBufferSize:      16 << 10,
	}
}

// copyBuffers are the buffers responses are copied through, shared by
// every target.
var copyBuffers = &bufferPool{}

type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		return *v
	}
	return make([]byte, 32<<10)
}

func (b *bufferPool) Put(buf []byte) { b.p.Put(&buf) }

// DefaultDialRetry is how long a request waits for an app that refuses
// connections (it is restarting: a crash its restart policy recovers, a
// docker restart) before it gets a 502, as Caddy's lb_try_duration does.
const DefaultDialRetry = 5 * time.Second

// dialRetryInterval is how often a refused connection is tried again.
const dialRetryInterval = 100 * time.Millisecond

// refusedConn says whether err is a connection the endpoint refused (it
// is not listening: restarting, or gone). Nothing of the request was sent.
func refusedConn(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// errElsewhere is a refused dial of a request that another endpoint of its
// route takes instead.
var errElsewhere = errors.New("refused, and another endpoint of the route is up")

// movableKey is the context key of a request's service, set when the
// request may go to another endpoint of its route if its own refuses it.
// The dial sees it: the transport dials with the request's context values.
type movableKey struct{}

// dialRetrying dials like d, but tries a refused connection again for up
// to wait. Nothing of the request has been sent when a dial fails, so a
// retry is safe for every method, and the request body is left untouched.
// A refused dial of a movable request (movableKey) fails at once with
// errElsewhere instead while another endpoint of the route is up; t was
// marked down by it (dialed), unless it is the route's only endpoint.
func (t *target) dialRetrying(ctx context.Context, d *net.Dialer, clock Clock, wait time.Duration, network, addr string) (net.Conn, error) {
	deadline := clock.Now().Add(wait)
	for {
		conn, err := d.DialContext(ctx, network, addr)
		t.dialed(err)
		if err == nil || !refusedConn(err) {
			return conn, err
		}
		if s, _ := ctx.Value(movableKey{}).(*service); s != nil && !t.alone.Load() && s.route.Load().upBesides(t) {
			return nil, fmt.Errorf("%w: %w", errElsewhere, err)
		}
		if clock.Now().Add(dialRetryInterval).After(deadline) || !sleep(ctx, clock, dialRetryInterval) {
			return nil, err
		}
	}
}

// sleep waits d on clock; false when ctx ends first.
func sleep(ctx context.Context, clock Clock, d time.Duration) bool {
	done := make(chan struct{})
	stop := clock.AfterFunc(d, func() { close(done) })
	select {
	case <-ctx.Done():
		stop()
		return false
	case <-done:
		return true
	}
}

// retrying is the target's transport: a request that may be sent twice
// (GET, HEAD or OPTIONS without a body) and got no answer is tried again
// for up to wait. Docker's port proxy accepts a connection while the app
// restarts and then closes it (an EOF, a reset, a "closed idle
// connection" here): a request HTTP lets us retry need not fail for it.
type retrying struct {
	rt    http.RoundTripper
	wait  time.Duration
	clock Clock
	cut   *atomic.Bool // the target's: once it is retired nothing is tried again
}

func (t retrying) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.rt.RoundTrip(req)
	if err == nil || !mayRetry(req) || t.cut.Load() {
		return resp, err
	}
	deadline := t.clock.Now().Add(t.wait)
	for err != nil && !errors.Is(err, errElsewhere) && req.Context().Err() == nil && !t.cut.Load() && t.clock.Now().Add(dialRetryInterval).Before(deadline) {
		if !sleep(req.Context(), t.clock, dialRetryInterval) {
			return nil, err
		}
		resp, err = t.rt.RoundTrip(req)
	}
	return resp, err
}

func mayRetry(req *http.Request) bool {
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return (req.Body == nil || req.Body == http.NoBody) && req.Header.Get("Upgrade") == ""
	}
	return false
}

// forward sets the X-Forwarded-* headers the app sees. From a trusted front
// proxy the client it names is kept and the front added to the chain, and
// the scheme and host it saw are kept (an app behind TLS must see https);
// from anyone else those headers are replaced.
func forward(pr *httputil.ProxyRequest, trusted bool) {
	if !trusted {
		pr.SetXForwarded()
		return
	}
	if v := pr.In.Header["X-Forwarded-For"]; len(v) > 0 {
		pr.Out.Header["X-Forwarded-For"] = v
	}
	pr.SetXForwarded() // appends the front's address
	for _, h := range []string{"X-Forwarded-Proto", "X-Forwarded-Host"} {
		if v := pr.In.Header.Get(h); v != "" {
			pr.Out.Header.Set(h, v)
		}
	}
}

// trusts says whether remoteAddr is in one of the trusted prefixes.
func trusts(trusted []netip.Prefix, remoteAddr string) bool {
	if len(trusted) == 0 {
		return false
	}
	ap, err := netip.ParseAddrPort(remoteAddr)
	if err != nil {
		return false
	}
	return trustsAddr(trusted, ap.Addr())
}

// trustsAddr says whether ip is in one of the trusted prefixes.
func trustsAddr(trusted []netip.Prefix, ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, p := range trusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// serve proxies one request on t; the caller counted it in flight
// (service.acquire) and ends the count. A movable request that t refused
// is not answered: serve returns the refusal (errElsewhere), for the
// caller to send it to another endpoint.
func (t *target) serve(w http.ResponseWriter, r *http.Request) (refused error) {
	start := time.Now()
	tw := &trackingWriter{ResponseWriter: w, t: t, websocket: isWebSocket(r), start: start}
	t.proxy.ServeHTTP(tw, r)
	if tw.refused != nil {
		return tw.refused
	}
	if t.metrics != nil {
		t.metrics.observe(tw.status, time.Since(start).Seconds())
	}
	return nil
}

// keptBody is a request body that the reverse proxy's Close (and the
// transport's, after a failed dial) leaves open, so that a request its
// endpoint refused goes to another one whole. The server closes the body
// itself once the handler returns.
type keptBody struct{ io.ReadCloser }

func (keptBody) Close() error { return nil }

// appConn is a connection to the app, known to its target until it closes.
type appConn struct {
	net.Conn
	t    *target
	once sync.Once
}

func (c *appConn) Close() error {
	c.once.Do(func() {
		c.t.mu.Lock()
		delete(c.t.conns, c)
		c.t.mu.Unlock()
	})
	return c.Conn.Close()
}

// track keeps the connection dialed for t, so that retire can close it; a
// connection dialed after the cut is closed at once.
func (t *target) track(conn net.Conn, err error) (net.Conn, error) {
	if err != nil {
		return nil, err
	}
	c := &appConn{Conn: conn, t: t}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.cutting.Load() {
		conn.Close()
		return nil, errors.New("the target was retired")
	}
	t.conns[c] = struct{}{}
	return c, nil
}

// dialed is told each dial's outcome: a refusal marks t down, a
// connection up.
func (t *target) dialed(err error) {
	if err == nil {
		if t.down.Load() {
			t.answered()
		}
		return
	}
	t.refused(err)
}

// forget lets go of what t holds beyond its connections: its metrics, its
// probe.
func (t *target) forget() {
	t.gone.Store(true)
	if t.named != nil {
		t.named.stop()
	}
	t.metrics.forget()
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
	t.mu.Lock()
	t.cutting.Store(true)
	conns := make([]*appConn, 0, len(t.conns))
	for c := range t.conns {
		conns = append(conns, c)
	}
	t.mu.Unlock()
	for _, c := range conns {
		c.Close() // what runs on it ends: a request, a stream, an upgraded connection
	}
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
