package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A switch that lands between a request's reading of the current target
// and its counting there must not let the request reach the old target
// after a drain saw nothing in flight on it: the deploy would stop that
// container under it. The hook runs exactly in that window.
func TestRequestNeverReachesATargetItWasNotCountedOn(t *testing.T) {
	p, a, listen := serveOne(t)
	b := newBackend(t, "b")
	var hitsA atomic.Int64
	a.Config.Handler = countingHandler(a.Config.Handler, &hitsA)

	var sawInFlightOnA int64 = -1
	var once sync.Once
	acquireHook = func() {
		once.Do(func() {
			_, err := p.Switch("web", a.addr(), b.addr())
			require.NoError(t, err)
			st, _ := p.Get("web")
			sawInFlightOnA = st.Draining[0].InFlight // what a deploy's drain would see now
		})
	}
	t.Cleanup(func() { acquireHook = nil })

	rel, _ := get(t, http.DefaultClient, "http://"+listen+"/")
	require.Zero(t, sawInFlightOnA, "the drain saw nothing in flight on a")
	require.Equal(t, "b", rel, "so the request went to b")
	require.Zero(t, hitsA.Load(), "and a never saw it")
	st, _ := p.Get("web")
	require.Zero(t, st.Draining[0].InFlight)
	require.Zero(t, st.InFlight)
}

func countingHandler(h http.Handler, n *atomic.Int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { n.Add(1); h.ServeHTTP(w, r) })
}

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

type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(b)
}

func (s *syncWriter) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.String()
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

// Saves are one at a time and in order: after switching two services at
// once, the file holds both new upstreams, every round.
func TestConcurrentSwitchesAllReachTheStateFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "proxy.json")
	p := NewServer(net.Listen, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{Save: func(st []ServiceState) error { return SaveState(path, st) }})
	t.Cleanup(func() {
		for _, s := range p.List() {
			_ = p.Delete(s.Name)
		}
	})
	for _, name := range []string{"web", "api"} {
		_, err := p.Put(name, freeAddr(t), "127.0.0.1:1")
		require.NoError(t, err)
	}
	for round := range 200 {
		to := fmt.Sprintf("127.0.0.1:%d", 2000+round)
		var wg sync.WaitGroup
		for _, name := range []string{"web", "api"} {
			wg.Go(func() {
				_, err := p.Switch(name, "", to)
				require.NoError(t, err)
			})
		}
		wg.Wait()
		for _, st := range readState(t, path) {
			require.Equal(t, to, st.Upstream, "round %d: %s", round, st.Name)
		}
	}
}

func readState(t *testing.T, path string) []ServiceState {
	t.Helper()
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	var f stateFile
	require.NoError(t, json.Unmarshal(raw, &f))
	var out []ServiceState
	for _, e := range f.Services {
		var st ServiceState
		require.NoError(t, json.Unmarshal(e, &st))
		out = append(out, st)
	}
	return out
}

// A change that cannot be saved is not made, and the caller is told: a
// deploy must never believe a switch that a restart would undo.
func TestAChangeThatCannotBeSavedIsNotMade(t *testing.T) {
	failing := false
	p := NewServer(net.Listen, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{Save: func([]ServiceState) error {
		if failing {
			return errors.New("no space left on device")
		}
		return nil
	}})
	t.Cleanup(func() { failing = false; _ = p.Delete("web") })
	a, b := newBackend(t, "a"), newBackend(t, "b")
	listen := freeAddr(t)
	_, err := p.Put("web", listen, a.addr())
	require.NoError(t, err)

	failing = true
	_, err = p.Switch("web", a.addr(), b.addr())
	require.ErrorIs(t, err, ErrNotSaved)
	require.ErrorContains(t, err, "no space left on device")
	st, _ := p.Get("web")
	require.Equal(t, a.addr(), st.Upstream, "still on a")
	rel, _ := get(t, http.DefaultClient, "http://"+listen+"/")
	require.Equal(t, "a", rel)
	_, err = p.Pause("web", time.Second, 0)
	require.ErrorIs(t, err, ErrNotSaved)
	st, _ = p.Get("web")
	require.False(t, st.Paused)

	srv := httptest.NewServer(ControlHandler(p))
	defer srv.Close()
	resp, err := http.Post(srv.URL+"/v1/services/web/switch", "application/json", bytes.NewReader([]byte(fmt.Sprintf(`{"from": %q, "to": %q}`, a.addr(), b.addr()))))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusInternalServerError, resp.StatusCode, "the control call fails")
}

// A pause is kept across a restart, and both its wait and the number of
// requests it holds are bounded.
func TestPauseIsSavedAndBounded(t *testing.T) {
	p, path, a, listen := savingOne(t)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	_, err := p.Pause("web", time.Hour, 0)
	require.ErrorIs(t, err, ErrBadInput, "a wait beyond MaxPauseWait is refused")
	_, err = p.Pause("web", 2*time.Minute, 0)
	require.NoError(t, err)
	require.NoError(t, p.Delete("web"))

	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Contains(t, string(raw), `"services": []`)

	// As a restarted process finds it: paused, with its wait.
	require.NoError(t, SaveState(path, []ServiceState{{Name: "web", Listen: listen, Upstream: a.addr(), Paused: true, MaxWait: Duration(2 * time.Minute)}}))
	q := NewServer(net.Listen, quiet, Options{})
	t.Cleanup(func() { _ = q.Delete("web") })
	require.NoError(t, q.Restore(path))
	st, err := q.Get("web")
	require.NoError(t, err)
	require.True(t, st.Paused)
	require.Equal(t, Duration(2*time.Minute), st.MaxWait)

	s, _ := q.get("web")
	s.gate.waiting.Store(MaxHeld)
	resp, err := http.Get("http://" + listen + "/")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "beyond MaxHeld a request is answered at once")
	require.Contains(t, string(body), "too many requests held")
	s.gate.waiting.Store(0)
}

// While a restart hands over, changes are refused with ErrRestarting (the
// client tries again and reaches the new process), so none is lost.
func TestFrozenServerRefusesChanges(t *testing.T) {
	p, a, _ := serveOne(t)
	p.Freeze()
	_, err := p.Switch("web", a.addr(), "127.0.0.1:2")
	require.ErrorIs(t, err, ErrRestarting)
	_, err = p.Pause("web", time.Second, 0)
	require.ErrorIs(t, err, ErrRestarting)
	p.Thaw()
	_, err = p.Switch("web", a.addr(), "127.0.0.1:2")
	require.NoError(t, err)
}

// --socket never deletes what is not a stale socket, and the socket it
// makes is private from its first moment, whatever the umask.
func TestControlSocketPathIsHandledSafely(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "important.txt")
	require.NoError(t, os.WriteFile(file, []byte("keep me"), 0o644))
	err := clearStaleSocket(file)
	require.ErrorContains(t, err, "not a socket is there (a regular file)")
	data, _ := os.ReadFile(file)
	require.Equal(t, "keep me", string(data))

	sock := filepath.Join(dir, "live.sock")
	ln, err := net.Listen("unix", sock)
	require.NoError(t, err)
	require.ErrorContains(t, clearStaleSocket(sock), "another handoff proxy answers")
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	require.NoError(t, clearStaleSocket(sock), "a stale socket is removed")
	_, err = os.Lstat(sock)
	require.ErrorIs(t, err, os.ErrNotExist)

	old := syscall.Umask(0)
	defer syscall.Umask(old)
	priv := filepath.Join(dir, "private.sock")
	ln, err = listenPrivate("unix", priv)
	require.NoError(t, err)
	defer ln.Close()
	info, err := os.Stat(priv)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), info.Mode().Perm(), "0600 as created, before any chmod")
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
	p.services["web"].current.Load().transport.CloseIdleConnections() // a new connection, dropped
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

// savingOne has service "web" on a free address, sent to backend "a", in a
// server that saves its state to path.
func savingOne(t *testing.T) (p *Server, path string, a *backend, listen string) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "proxy.json")
	p = NewServer(net.Listen, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{Save: func(st []ServiceState) error { return SaveState(path, st) }})
	a = newBackend(t, "a")
	listen = freeAddr(t)
	_, err := p.Put("web", listen, a.addr())
	require.NoError(t, err)
	return p, path, a, listen
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
