package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// An upstream that does not answer gets a short plain-text 502, and the
// proxy logs which request, which service, which upstream and why.
func TestUpstreamErrorsAreExplainedAndLogged(t *testing.T) {
	logs := &syncWriter{w: &bytes.Buffer{}}
	p := NewServer(net.Listen, slog.New(slog.NewTextHandler(logs, nil)), Options{DialRetry: 10 * time.Millisecond})
	t.Cleanup(func() { _ = p.Delete("web") })
	listen, dead := freeAddr(t), freeAddr(t)
	_, err := p.Put("web", listen, dead)
	require.NoError(t, err)

	resp, err := http.Post("http://"+listen+"/orders?x=1", "text/plain", bytes.NewReader([]byte("hi")))
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusBadGateway, resp.StatusCode)
	require.Equal(t, "text/plain; charset=utf-8", resp.Header.Get("Content-Type"))
	require.Equal(t, "502 Bad Gateway: the app behind service web did not answer (handoff proxy)\n", string(body))
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "502: upstream error") }, time.Second, time.Millisecond)
	line := logs.String()
	for _, want := range []string{"service=web", "upstream=" + dead, "method=POST", "uri=\"/orders?x=1\"", "connection refused"} {
		require.Contains(t, line, want)
	}
}

// Behind a trusted front proxy (loopback by default) the app sees the
// client and scheme the front saw, with the front appended to the chain;
// from an untrusted peer the headers are replaced, not believed.
func TestForwardingHeadersFromTrustedFrontsAreKept(t *testing.T) {
	seen := make(chan http.Header, 1)
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { seen <- r.Header.Clone() }))
	t.Cleanup(app.Close)
	send := func(p *Server) http.Header {
		listen := freeAddr(t)
		_, err := p.Put("web", listen, app.Listener.Addr().String())
		require.NoError(t, err)
		t.Cleanup(func() { _ = p.Delete("web") })
		req, _ := http.NewRequest(http.MethodGet, "http://"+listen+"/", nil)
		req.Header.Set("X-Forwarded-For", "203.0.113.7")
		req.Header.Set("X-Forwarded-Proto", "https")
		req.Header.Set("X-Forwarded-Host", "shop.example.com")
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return <-seen
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))

	h := send(NewServer(net.Listen, quiet, Options{Trusted: DefaultTrusted}))
	require.Equal(t, "203.0.113.7, 127.0.0.1", h.Get("X-Forwarded-For"))
	require.Equal(t, "https", h.Get("X-Forwarded-Proto"), "an app behind TLS must not redirect forever")
	require.Equal(t, "shop.example.com", h.Get("X-Forwarded-Host"))

	h = send(NewServer(net.Listen, quiet, Options{Trusted: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}))
	require.Equal(t, "127.0.0.1", h.Get("X-Forwarded-For"), "an untrusted peer's claim is dropped")
	require.Equal(t, "http", h.Get("X-Forwarded-Proto"))
}

// An app that refuses connections for a moment (restarting) is waited for,
// as Caddy's lb_try_duration does, instead of answering 502 at once; one
// that stays away gets its 502 after DialRetry.
func TestRefusedConnectionsAreTriedAgain(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	p := NewServer(net.Listen, quiet, Options{DialRetry: 2 * time.Second})
	t.Cleanup(func() { _ = p.Delete("web") })
	listen, app := freeAddr(t), freeAddr(t)
	_, err := p.Put("web", listen, app)
	require.NoError(t, err)
	go func() {
		time.Sleep(300 * time.Millisecond) // the app comes back
		ln, err := net.Listen("tcp", app)
		if err != nil {
			return
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			fmt.Fprintf(w, "got %s", b)
		})}
		t.Cleanup(func() { srv.Close() })
		_ = srv.Serve(ln)
	}()
	resp, err := http.Post("http://"+listen+"/", "text/plain", bytes.NewReader([]byte("order 42")))
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode)
	require.Equal(t, "got order 42", string(body), "the POST's body went through whole")

	dead := NewServer(net.Listen, quiet, Options{DialRetry: 300 * time.Millisecond})
	t.Cleanup(func() { _ = dead.Delete("api") })
	listen2 := freeAddr(t)
	_, err = dead.Put("api", listen2, freeAddr(t))
	require.NoError(t, err)
	start := time.Now()
	resp, err = http.Get("http://" + listen2 + "/")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusBadGateway, resp.StatusCode)
	require.GreaterOrEqual(t, time.Since(start), 200*time.Millisecond)
}

// Docker's port proxy accepts a connection while the app restarts and then
// closes it. A GET is tried again; a POST is not (the app may have seen it).
func TestLostConnectionsAreRetriedOnlyForRequestsThatMayBeSentTwice(t *testing.T) {
	app, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var dropping atomic.Int64
	dropping.Store(3)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "served") })}
	go func() { _ = srv.Serve(&droppingListener{Listener: app, drop: &dropping}) }()
	t.Cleanup(func() { srv.Close() })

	p := NewServer(net.Listen, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{DialRetry: 2 * time.Second})
	t.Cleanup(func() { _ = p.Delete("web") })
	listen := freeAddr(t)
	_, err = p.Put("web", listen, app.Addr().String())
	require.NoError(t, err)

	resp, err := http.Get("http://" + listen + "/")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, "served", string(body), "the GET was tried again")
	require.Zero(t, dropping.Load())

	dropping.Store(1)
	p.services["web"].route.Load().single.transport.CloseIdleConnections() // a new connection, dropped
	resp, err = http.Post("http://"+listen+"/", "text/plain", bytes.NewReader([]byte("x")))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusBadGateway, resp.StatusCode, "a POST is never sent twice")
}

// droppingListener closes the first connections it accepts, as Docker's
// port proxy does while the container behind it is down.
type droppingListener struct {
	net.Listener
	drop *atomic.Int64
}

func (l *droppingListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil || l.drop.Add(-1) < 0 {
			if err == nil {
				l.drop.Store(0)
			}
			return c, err
		}
		c.Close()
	}
}

// A request still waiting for its answer at the drain deadline is cut:
// its client connection is aborted at once (never an empty 200), and a
// GET is not tried again against the retired target for the dial-retry
// window.
func TestARequestCutAtTheDrainDeadlineEndsAtOnce(t *testing.T) {
	p := NewServer(net.Listen, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{DialRetry: time.Minute})
	t.Cleanup(func() { _ = p.Delete("web") })
	a, b := newBackend(t, "a"), newBackend(t, "b")
	listen := freeAddr(t)
	_, err := p.Put("web", listen, a.addr())
	require.NoError(t, err)

	done := make(chan error, 1)
	go func() {
		c := &http.Client{Timeout: 20 * time.Second}
		resp, err := c.Get("http://" + listen + "/slow")
		if err == nil {
			resp.Body.Close()
			err = fmt.Errorf("answered %d", resp.StatusCode)
		}
		done <- err
	}()
	require.Eventually(t, func() bool { st, _ := p.Get("web"); return st.InFlight == 1 }, 5*time.Second, time.Millisecond)
	_, err = p.Switch("web", a.addr(), b.addr())
	require.NoError(t, err)
	_, err = p.Retire("web", a.addr())
	require.NoError(t, err)
	err = <-done
	require.Error(t, err, "the cut request has no answer")
	var ne net.Error
	require.False(t, errors.As(err, &ne) && ne.Timeout(), "it ended at the cut, not at the client's timeout: %v", err)
}
