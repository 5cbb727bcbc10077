package cli

import (
	"context"
	"encoding/json"
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
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/proxy"
	"github.com/handoff-dev/handoff/internal/proxy/wire"
)

// tableResolver answers every name from a fixed table.
type tableResolver map[string][]netip.Addr

func (r tableResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	return r[host], nil
}

// ctlProxy is a real proxy Server with its control API on a unix socket
// of a temporary directory; it serves service web on listen.
func ctlProxy(t *testing.T, res proxy.Resolver, upstream string) (p *proxy.Server, socket, listen string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "ctl") // short: a socket's path has at most 107 bytes
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket = filepath.Join(dir, "proxy.sock")
	p = proxy.NewServer(net.Listen, slog.New(slog.NewTextHandler(io.Discard, nil)), proxy.Options{Resolver: res})
	ln, err := net.Listen("unix", socket)
	require.NoError(t, err)
	srv := &http.Server{Handler: proxy.ControlHandler(p)}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		_ = p.Delete("web")
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	listen = l.Addr().String()
	l.Close()
	_, err = p.Put("web", listen, upstream)
	require.NoError(t, err)
	return p, socket, listen
}

// app is a release's server: it answers with its name; /slow waits until
// the client leaves or the connection is cut, /hold answers after 300 ms.
func app(t *testing.T, name string) *httptest.Server {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-r.Context().Done()
			return
		}
		if r.URL.Path == "/hold" {
			time.Sleep(300 * time.Millisecond)
		}
		fmt.Fprint(w, name)
	}))
	t.Cleanup(s.Close)
	return s
}

func hostPort(s *httptest.Server) string { return strings.TrimPrefix(s.URL, "http://") }

// ctl switch end to end: each outcome's exit status and JSON lines.
func TestProxyCtlSwitch(t *testing.T) {
	blue, green := app(t, "blue"), app(t, "green")
	_, port, _ := net.SplitHostPort(hostPort(green))
	res := tableResolver{"tasks.web-green": {netip.MustParseAddr("127.0.0.1")}, "tasks.web-blue": {netip.MustParseAddr("127.0.0.1")}}
	p, socket, listen := ctlProxy(t, res, hostPort(blue))
	named := "tasks.web-green:" + port
	body := func() string {
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + listen + "/")
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	ctl := func(args ...string) (string, string, int) {
		return run(t, append([]string{"proxy", "ctl", "--socket", socket, "--service", "web"}, args...)...)
	}

	t.Run("switched and drained: 0", func(t *testing.T) {
		out, stderr, code := ctl("switch", "--to", named, "--release", "web-green", "--expect", "127.0.0.1", "--generation", "8", "--drain", "5s")
		require.Equal(t, 0, code, stderr)
		require.Equal(t, `{"phase":"switch","service":"web","from":[{"release":"","endpoints":["`+hostPort(blue)+`"],"weight":100}],"to":"`+named+`","generation":8}
{"phase":"drain","in_flight":0}
{"phase":"done","service":"web","to":"`+named+`","generation":8,"in_flight":0,"drained":true,"retired":["`+hostPort(blue)+`"]}
`, out)
		require.Equal(t, "green", body())
	})

	t.Run("an old generation: 4", func(t *testing.T) {
		out, stderr, code := ctl("switch", "--to", hostPort(blue), "--generation", "7")
		require.Equal(t, 4, code, stderr)
		require.Empty(t, out)
		require.Equal(t, "handoff: switch web to "+hostPort(blue)+": refused: an old generation: web holds generation 8, this change has 7; its route was left as it is ("+named+")\n", stderr)
		require.Equal(t, "green", body())
	})

	t.Run("not converged: 3", func(t *testing.T) {
		out, stderr, code := ctl("switch", "--to", "tasks.web-blue:"+port, "--expect", "10.9.9.9", "--generation", "9", "--converge", "1500ms")
		require.Equal(t, 3, code, stderr)
		require.Empty(t, out)
		require.Equal(t, "handoff: switch web to tasks.web-blue:"+port+": not converged: tasks.web-blue resolves to [127.0.0.1], expected [10.9.9.9]; the route was left as it is\n", stderr)
		require.Equal(t, "green", body())
	})

	t.Run("drain timed out: 5", func(t *testing.T) {
		slow := make(chan error, 1)
		go func() {
			// A connection of its own: a GET cut on a kept connection
			// the client would send again by itself (to blue).
			fresh := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
			resp, err := fresh.Get("http://" + listen + "/slow")
			if err == nil {
				_, err = io.ReadAll(resp.Body)
				resp.Body.Close()
			}
			slow <- err
		}()
		require.Eventually(t, func() bool { st, _ := p.Get("web"); return st.InFlight == 1 }, 5*time.Second, time.Millisecond)
		out, stderr, code := ctl("switch", "--to", hostPort(blue), "--generation", "10", "--drain", "300ms")
		require.Equal(t, 5, code, stderr)
		require.Equal(t, `{"phase":"switch","service":"web","from":[{"release":"web-green","endpoints":["`+named+`"],"weight":100}],"to":"`+hostPort(blue)+`","generation":10}
{"phase":"drain","in_flight":1}
{"phase":"done","service":"web","to":"`+hostPort(blue)+`","generation":10,"in_flight":1,"drained":false,"retired":["`+named+`"]}
`, out)
		require.Equal(t, "handoff: drain timed out: 1 requests still ran on ["+named+"] of web after --drain 300ms; they were cut, and "+hostPort(blue)+" serves\n", stderr)
		require.Error(t, <-slow, "the slow request was cut at the drain deadline")
		require.Equal(t, "blue", body())
	})

	t.Run("drained after a wait: 0", func(t *testing.T) {
		held := holdOne(t, p, listen)
		out, stderr, code := ctl("switch", "--to", named, "--generation", "11", "--drain", "5s")
		require.Equal(t, 0, code, stderr)
		require.Equal(t, `{"phase":"switch","service":"web","from":[{"release":"","endpoints":["`+hostPort(blue)+`"],"weight":100}],"to":"`+named+`","generation":11}
{"phase":"drain","in_flight":1}
{"phase":"drain","in_flight":0}
{"phase":"done","service":"web","to":"`+named+`","generation":11,"in_flight":0,"drained":true,"retired":["`+hostPort(blue)+`"]}
`, out)
		require.Equal(t, "blue", <-held, "the request on the old endpoint finished")
	})

	t.Run("run again after a lost answer: waits for what the first run left draining", func(t *testing.T) {
		held := holdOne(t, p, listen)
		// The first run's change went through, and the job was killed before its drain.
		cur, err := p.Get("web")
		require.NoError(t, err)
		_, err = p.ChangeRoute(context.Background(), "web", wire.RouteRequest{From: wire.Spec(cur.Route), To: []wire.Backend{{Endpoints: []string{hostPort(blue)}, Weight: 100}}, Generation: 12})
		require.NoError(t, err)
		out, stderr, code := ctl("switch", "--to", hostPort(blue), "--generation", "12", "--drain", "5s")
		require.Equal(t, 0, code, stderr)
		require.Contains(t, out, `{"phase":"drain","in_flight":1}`, "the repeat waits for the request the first run left on "+named)
		require.Contains(t, out, `"drained":true,"retired":["`+named+`"]`)
		require.Equal(t, "green", <-held, "the request on the old endpoint finished")
	})

	t.Run("status", func(t *testing.T) {
		out, stderr, code := ctl("status")
		require.Equal(t, 0, code, stderr)
		var st wire.ServiceState
		require.NoError(t, json.Unmarshal([]byte(out), &st))
		require.EqualValues(t, 12, st.Generation)
		require.Equal(t, hostPort(blue), st.Upstream)
		require.Zero(t, st.InFlight)
	})

	t.Run("a node's first switch: made with --listen", func(t *testing.T) {
		first := func(args ...string) (string, string, int) {
			return run(t, append([]string{"proxy", "ctl", "--socket", socket, "--service", "api"}, args...)...)
		}
		out, stderr, code := first("status")
		require.Equal(t, 0, code, stderr)
		require.Equal(t, "null\n", out, "no such service yet: one line, null")
		_, stderr, code = first("switch", "--to", named, "--generation", "1")
		require.NotEqual(t, 0, code, "without --listen, a service the proxy lacks is an error")
		require.Contains(t, stderr, "has no service api")

		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		apiListen := l.Addr().String()
		l.Close()
		t.Cleanup(func() { _ = p.Delete("api") })
		out, stderr, code = first("switch", "--listen", apiListen, "--to", named, "--release", "api-green", "--expect", "127.0.0.1", "--generation", "3")
		require.Equal(t, 0, code, stderr)
		require.True(t, strings.HasPrefix(out, `{"phase":"create","service":"api","to":"`+named+`"}`+"\n"), out)
		st, err := p.Get("api")
		require.NoError(t, err)
		require.EqualValues(t, 3, st.Generation, "the generation is held from the first switch on")
		require.Equal(t, named, st.Upstream)
		out, stderr, code = first("status")
		require.Equal(t, 0, code, stderr)
		require.Equal(t, 1, strings.Count(out, "\n"), "one line: %s", out)
	})

	t.Run("anything else: 1", func(t *testing.T) {
		_, stderr, code := run(t, "proxy", "ctl", "--socket", filepath.Join(filepath.Dir(socket), "none.sock"), "--service", "web", "switch", "--to", hostPort(blue), "--generation", "13")
		require.Equal(t, 1, code, stderr)
		require.Equal(t, 1, strings.Count(stderr, "\n"), stderr)
	})
}

// holdOne sends GET /hold through listen on a connection of its own (the app answers
// after 300 ms) once it is in flight on web, and gives its answer, or its error.
func holdOne(t *testing.T, p *proxy.Server, listen string) <-chan string {
	t.Helper()
	held := make(chan string, 1)
	go func() {
		fresh := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
		resp, err := fresh.Get("http://" + listen + "/hold")
		if err != nil {
			held <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		held <- string(b)
	}()
	require.Eventually(t, func() bool { st, _ := p.Get("web"); return st.InFlight == 1 }, 5*time.Second, time.Millisecond)
	return held
}
