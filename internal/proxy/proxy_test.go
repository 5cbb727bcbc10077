package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/proxy/wire"
	"golang.org/x/net/http2"
)

// backend is a real HTTP server standing for one release of an app.
type backend struct {
	*httptest.Server
	name    string
	release chan struct{} // /slow waits on it
}

func newBackend(t *testing.T, name string) *backend {
	b := &backend{name: name, release: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Release", name)
		fmt.Fprintf(w, "%s %s", name, r.Host)
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-b.release:
		case <-r.Context().Done():
			return
		}
		w.Header().Set("X-Release", name)
		fmt.Fprint(w, name)
	})
	mux.HandleFunc("/sse", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	mux.HandleFunc("/upload", func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		fmt.Fprint(w, n)
	})
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			typ, msg, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if err := c.Write(r.Context(), typ, append([]byte(name+": "), msg...)); err != nil {
				return
			}
		}
	})
	b.Server = httptest.NewServer(mux)
	t.Cleanup(b.Close)
	return b
}

func (b *backend) addr() string { return strings.TrimPrefix(b.URL, "http://") }

func newTestServer(t *testing.T) *Server {
	p := NewServer(net.Listen, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{})
	t.Cleanup(func() {
		for _, s := range p.List() {
			_ = p.Delete(s.Name)
		}
	})
	return p
}

// serveOne has service "web" on a free address, sent to backend "a".
func serveOne(t *testing.T) (*Server, *backend, string) {
	t.Helper()
	a := newBackend(t, "a")
	p := newTestServer(t)
	listen := freeAddr(t)
	_, err := p.Put("web", listen, a.addr())
	require.NoError(t, err)
	return p, a, listen
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().String()
}

func get(t *testing.T, c *http.Client, url string) (string, bool) {
	t.Helper()
	reused := false
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused }})
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	require.Equal(t, 200, resp.StatusCode, string(body))
	return resp.Header.Get("X-Release"), reused
}

// After a switch the next request on the same client connection goes to
// the new target, and the connection stays open.
func TestSwitchIsPerRequestAndKeepsClientConnections(t *testing.T) {
	p, a, listen := serveOne(t)
	b := newBackend(t, "b")
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}

	rel, _ := get(t, c, "http://"+listen+"/")
	require.Equal(t, "a", rel)
	_, err := p.Switch("web", a.addr(), b.addr())
	require.NoError(t, err)
	rel, reused := get(t, c, "http://"+listen+"/")
	require.Equal(t, "b", rel)
	require.True(t, reused, "the client's kept-alive connection was not closed by the switch")

	_, err = p.Switch("web", a.addr(), "127.0.0.1:3")
	require.ErrorIs(t, err, ErrNotFrom, "a switch from a target that is no longer current is refused")
	_, err = p.Switch("web", a.addr(), b.addr())
	require.NoError(t, err, "a switch repeated (its answer was lost) finds it done")
}

// A request in flight at the switch finishes on the old target, and is
// counted there until it ends.
func TestInFlightRequestsDrainOnTheOldTarget(t *testing.T) {
	p, a, listen := serveOne(t)
	b := newBackend(t, "b")

	done := make(chan string)
	go func() {
		resp, err := http.Get("http://" + listen + "/slow")
		if err != nil {
			done <- err.Error()
			return
		}
		resp.Body.Close()
		done <- resp.Header.Get("X-Release")
	}()
	require.Eventually(t, func() bool { st, _ := p.Get("web"); return st.InFlight == 1 }, 5*time.Second, time.Millisecond)

	st, err := p.Switch("web", a.addr(), b.addr())
	require.NoError(t, err)
	require.Equal(t, []wire.DrainingState{{Upstream: a.addr(), InFlight: 1}}, st.Draining)
	close(a.release)
	require.Equal(t, "a", <-done)
	require.Eventually(t, func() bool {
		st, _ := p.Get("web")
		return st.Draining[0].InFlight == 0
	}, 5*time.Second, time.Millisecond, "the count ends with the request")
}

// A WebSocket opened before the switch stays open through it, and gets a
// close frame, "going away", when its target is retired.
func TestWebSocketSurvivesTheSwitchAndIsClosedProperlyAtRetire(t *testing.T) {
	p, a, listen := serveOne(t)
	b := newBackend(t, "b")
	ctx := context.Background()

	ws, _, err := websocket.Dial(ctx, "ws://"+listen+"/ws", nil)
	require.NoError(t, err)
	defer ws.CloseNow()
	echo := func() (string, error) {
		if err := ws.Write(ctx, websocket.MessageText, []byte("hi")); err != nil {
			return "", err
		}
		_, msg, err := ws.Read(ctx)
		return string(msg), err
	}
	require.Eventually(t, func() bool { st, _ := p.Get("web"); return st.InFlight == 1 }, 5*time.Second, time.Millisecond, "an open WebSocket counts in flight")

	_, err = p.Switch("web", a.addr(), b.addr())
	require.NoError(t, err)
	msg, err := echo()
	require.NoError(t, err)
	require.Equal(t, "a: hi", msg, "the WebSocket still talks to the release it opened on")

	_, err = p.Retire("web", a.addr())
	require.NoError(t, err)
	_, err = echo()
	require.Equal(t, websocket.StatusGoingAway, websocket.CloseStatus(err), "closed with 1001, not cut: %v", err)
}

// Streaming responses are passed on as they are written.
func TestServerSentEventsAreNotBuffered(t *testing.T) {
	_, _, listen := serveOne(t)
	resp, err := http.Get("http://" + listen + "/sse")
	require.NoError(t, err)
	defer resp.Body.Close()
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "data: first\n", line)
}

// Large request bodies go through, streamed.
func TestLargeBodies(t *testing.T) {
	_, _, listen := serveOne(t)
	const size = 64 << 20
	resp, err := http.Post("http://"+listen+"/upload", "application/octet-stream", io.LimitReader(rand.Reader, size))
	require.NoError(t, err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	require.Equal(t, fmt.Sprint(size), string(body))
}

// HTTP/2 without TLS from the front proxy.
func TestH2C(t *testing.T) {
	_, _, listen := serveOne(t)
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	resp, err := (&http.Client{Transport: tr}).Get("http://" + listen + "/")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, 2, resp.ProtoMajor)
}

// Pause holds new requests until resume; past the max wait they get 503.
func TestPauseHoldsRequests(t *testing.T) {
	p, _, listen := serveOne(t)

	_, err := p.Pause("web", time.Minute, 0)
	require.NoError(t, err)
	var answered atomic.Bool
	done := make(chan int)
	go func() {
		resp, err := http.Get("http://" + listen + "/")
		if err != nil {
			done <- 0
			return
		}
		resp.Body.Close()
		answered.Store(true)
		done <- resp.StatusCode
	}()
	require.Eventually(t, func() bool { st, _ := p.Get("web"); return st.Paused && st.Held == 1 }, 5*time.Second, time.Millisecond)
	require.False(t, answered.Load())
	_, err = p.Resume("web")
	require.NoError(t, err)
	require.Equal(t, 200, <-done)

	_, err = p.Pause("web", 50*time.Millisecond, 0)
	require.NoError(t, err)
	resp, err := http.Get("http://" + listen + "/")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
}

// The state file brings services back; a bad entry does not wipe the
// others, and is kept.
func TestStateSurvivesABadEntry(t *testing.T) {
	a := newBackend(t, "a")
	path := filepath.Join(t.TempDir(), "proxy.json")
	good := freeAddr(t)
	data := fmt.Sprintf(`{"services": [{"name": "web", "listen": %q, "upstream": %q}, {"name": 42}, {"name": "api", "listen": "not an address", "upstream": "x"}]}`, good, a.addr())
	require.NoError(t, os.WriteFile(path, []byte(data), 0o600))

	var saved []ServiceState
	p := NewServer(net.Listen, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{Save: func(s []ServiceState) error { saved = s; return nil }})
	t.Cleanup(func() { _ = p.Delete("web") })
	require.NoError(t, p.Restore(path))
	require.Equal(t, []string{"web", "", "api"}, names(p.List()), "the bad entries are listed, after the services")
	require.Nil(t, saved, "restoring does not rewrite the file entry by entry")
	rel, _ := get(t, http.DefaultClient, "http://"+good+"/")
	require.Equal(t, "a", rel)

	require.NoError(t, SaveState(path, p.List()))
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	var f stateFile
	require.NoError(t, json.Unmarshal(raw, &f))
	require.Len(t, f.Services, 3, "the bad entries are kept")
}

func names(list []ServiceState) []string {
	var out []string
	for _, s := range list {
		out = append(out, s.Name)
	}
	return out
}

// After a new process takes over, the old one answers the next request on
// each kept-alive connection with Connection: close, and ends when its
// clients have left; it never closes a connection a client may reuse.
func TestHandoverClosesNoIdleConnectionItself(t *testing.T) {
	p, _, listen := serveOne(t)
	tr := &http.Transport{MaxIdleConnsPerHost: 1}
	c := &http.Client{Transport: tr}
	get(t, c, "http://"+listen+"/")

	handedOver := make(chan struct{})
	go func() { p.Handover(context.Background()); close(handedOver) }()
	require.Eventually(t, func() bool { return p.services["web"].closing.Load() }, 5*time.Second, time.Millisecond, "the handover began")
	resp, err := c.Get("http://" + listen + "/")
	require.NoError(t, err, "the idle connection was still there to reuse")
	resp.Body.Close()
	require.True(t, resp.Close, "answered with Connection: close")
	<-handedOver
}

// A connection the old process accepted just as a handover began, its
// request not yet read, is served and not closed: its client has sent the
// request (here a POST, which nobody may retry). A handoff proxy SIGHUPed
// under load answered such a POST from Caddy with a 502 in CI.
func TestHandoverServesAConnectionAcceptedJustBefore(t *testing.T) {
	p, _, listen := serveOne(t)
	reached, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	hook := func() { once.Do(func() { close(reached); <-release }) }
	routeHook.Store(&hook)
	t.Cleanup(func() { routeHook.Store(nil) })
	answered := make(chan error, 1)
	go func() {
		c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
		resp, err := c.Post("http://"+listen+"/", "text/plain", strings.NewReader("payload"))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("status %d", resp.StatusCode)
			}
		}
		answered <- err
	}()
	<-reached
	handedOver := make(chan struct{})
	go func() { p.Handover(context.Background()); close(handedOver) }()
	p.mu.Lock()
	web := p.services["web"]
	p.mu.Unlock()
	<-web.splitListener().stopped
	select {
	case <-handedOver:
		t.Fatal("the handover ended with a connection it had accepted still unserved")
	default:
	}
	close(release)
	require.NoError(t, <-answered, "the request on the connection accepted before the handover was served")
	<-handedOver
}

func TestControlAPI(t *testing.T) {
	a := newBackend(t, "a")
	p := newTestServer(t)
	srv := httptest.NewServer(ControlHandler(p))
	defer srv.Close()
	do := func(method, path, body string) (int, string) {
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, _ := do("GET", "/v1/services/web", "")
	require.Equal(t, 404, code)
	code, body := do("PUT", "/v1/services/web", fmt.Sprintf(`{"listen": %q, "upstream": %q}`, freeAddr(t), a.addr()))
	require.Equal(t, 200, code, body)
	code, body = do("POST", "/v1/services/web/switch", `{"from": "127.0.0.1:1", "to": "127.0.0.1:2"}`)
	require.Equal(t, 409, code, body)
	code, body = do("POST", "/v1/services/web/switch", `{"too": "x"}`)
	require.Equal(t, 400, code, body)
	require.Contains(t, body, "unknown field")
	code, body = do("GET", "/v1/services", "")
	require.Equal(t, 200, code)
	require.Contains(t, body, `"name":"web"`)
}

// A handover sends GOAWAY to HTTP/2 (h2c) connections from the front.
func TestHandoverSendsGoAwayToH2C(t *testing.T) {
	p, _, listen := serveOne(t)

	conn, fr := dialH2C(t, listen)
	require.Eventually(t, func() bool { return p.services["web"].conns.count() == 1 }, 5*time.Second, time.Millisecond)

	go p.Handover(context.Background())
	require.Equal(t, http2.ErrCodeNo, readGoAway(t, conn, fr, 10*time.Second).ErrCode)
}

// dialH2C opens an HTTP/2 connection with prior knowledge to listen, its settings sent;
// it is closed when t ends.
func dialH2C(t *testing.T, listen string) (net.Conn, *http2.Framer) {
	t.Helper()
	conn, err := net.Dial("tcp", listen)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	_, err = conn.Write(h2cPreface)
	require.NoError(t, err)
	fr := http2.NewFramer(conn, conn)
	require.NoError(t, fr.WriteSettings())
	return conn, fr
}

// readGoAway reads conn's frames until a GOAWAY, acknowledging settings, for at most d.
func readGoAway(t *testing.T, conn net.Conn, fr *http2.Framer, d time.Duration) *http2.GoAwayFrame {
	t.Helper()
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(d)))
	for {
		f, err := fr.ReadFrame()
		require.NoError(t, err, "GOAWAY before the connection ends, within %s", d)
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			return ga
		}
		if sf, ok := f.(*http2.SettingsFrame); ok && !sf.IsAck() {
			require.NoError(t, fr.WriteSettingsAck())
		}
	}
}

// A connection that was accepted and says nothing does not hold back the
// GOAWAY of the HTTP/2 connections: it gets a second to speak once the
// handover begins, not the 30 s a new connection has.
func TestHandoverGoAwayIsNotHeldBackByASilentConnection(t *testing.T) {
	p, _, listen := serveOne(t)
	silent, err := net.Dial("tcp", listen)
	require.NoError(t, err)
	defer silent.Close()
	conn, fr := dialH2C(t, listen)
	require.Eventually(t, func() bool { return p.services["web"].conns.count() == 2 }, 5*time.Second, time.Millisecond)

	go p.Handover(context.Background())
	readGoAway(t, conn, fr, 5*time.Second) // the silent connection open
}

// A handover waits for open WebSockets too (they leave the connection count
// when hijacked), and at its deadline sends them a close frame.
func TestHandoverWaitsForWebSockets(t *testing.T) {
	p, _, listen := serveOne(t)
	ctx := context.Background()
	ws, _, err := websocket.Dial(ctx, "ws://"+listen+"/ws", nil)
	require.NoError(t, err)
	defer ws.CloseNow()
	require.NoError(t, ws.Write(ctx, websocket.MessageText, []byte("hi")))
	_, _, err = ws.Read(ctx)
	require.NoError(t, err)

	hctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	p.Handover(hctx)
	require.GreaterOrEqual(t, time.Since(start), 300*time.Millisecond, "the open WebSocket kept the handover waiting")
	_, _, err = ws.Read(ctx)
	require.Equal(t, websocket.StatusGoingAway, websocket.CloseStatus(err), "%v", err)
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
