package proxyclient

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/deploy"
	"github.com/handoff-dev/handoff/internal/proxy"
	"github.com/handoff-dev/handoff/internal/proxy/wire"
)

// The client is tested against the real data plane: a proxy.Server whose
// control API is served on a unix socket.

// controlSocket serves p's control API on a unix socket.
func controlSocket(t *testing.T, p *proxy.Server) string {
	t.Helper()
	socket := filepath.Join(t.TempDir(), "c.sock")
	ln, err := net.Listen("unix", socket)
	require.NoError(t, err)
	srv := &http.Server{Handler: proxy.ControlHandler(p)}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return socket
}

// newServer is a data plane with nothing saved; its "web" is deleted
// (its listener closed) when the test ends.
func newServer(t *testing.T) *proxy.Server {
	p := proxy.NewServer(net.Listen, slog.New(slog.NewTextHandler(io.Discard, nil)), proxy.Options{})
	t.Cleanup(func() { _ = p.Delete("web") })
	return p
}

// serveOne has service "web" on a free address, sent to an app that
// answers "ok"; it returns the server, its control socket and web's address.
func serveOne(t *testing.T) (*proxy.Server, string, string) {
	t.Helper()
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "ok") }))
	t.Cleanup(app.Close)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	listen := l.Addr().String()
	l.Close()
	p := newServer(t)
	_, err = p.Put("web", listen, strings.TrimPrefix(app.URL, "http://"))
	require.NoError(t, err)
	return p, controlSocket(t, p), listen
}

func newProxy(t *testing.T, socket, service, listen string) *Proxy {
	t.Helper()
	p, err := New(NewControl(socket, service), listen)
	require.NoError(t, err)
	return p
}

// The deploy side never takes a service the proxy knows but does not
// serve for one it has no route for: a service it cannot listen for has
// its upstream, and an entry it could not restore is an error, not "".
func TestTheClientTellsAKnownServiceFromNoRoute(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { held.Close() })
	path := filepath.Join(t.TempDir(), "proxy.json")
	data := fmt.Sprintf(`{"services": [{"name": "web", "listen": %q, "upstream": "127.0.0.1:7001"}, {"name": "api", "listen": "127.0.0.1:9002", "upstream": 7002}]}`, held.Addr().String())
	require.NoError(t, os.WriteFile(path, []byte(data), 0o600))
	p := newServer(t)
	require.NoError(t, p.Restore(path))
	socket := controlSocket(t, p)
	ctx := context.Background()

	web := newProxy(t, socket, "web", held.Addr().String())
	route, err := web.Route(ctx, nil)
	require.NoError(t, err)
	require.Equal(t, []string{"127.0.0.1:7001"}, route.Endpoints())
	notes, err := web.Preflight(ctx, route, nil)
	require.NoError(t, err)
	require.Len(t, notes, 1)
	require.Contains(t, notes[0], "cannot listen on "+held.Addr().String())

	api := newProxy(t, socket, "api", "127.0.0.1:9002")
	_, err = api.Route(ctx, nil)
	require.ErrorIs(t, err, wire.ErrUnrestored)
	require.ErrorIs(t, err, deploy.ErrProxy)
	require.ErrorContains(t, err, "handoff proxy could not restore api from its state file")
	require.ErrorIs(t, api.SetRoute(ctx, nil, deploy.Only("web-1", "127.0.0.1:7003")), deploy.ErrProxy, "a first deploy does not overwrite the entry")

	shop := newProxy(t, socket, "shop", "127.0.0.1:9003")
	route, err = shop.Route(ctx, nil)
	require.NoError(t, err, "a named entry is not shop's")
	require.Empty(t, route)

	require.NoError(t, p.Delete("api"), "an entry kept is deleted by its name")
	_, err = api.Route(ctx, nil)
	require.NoError(t, err)
}

// An entry without a name may be any service's: none is taken for a
// first deploy while it is there.
func TestAnUnnamedEntryStopsFirstDeploys(t *testing.T) {
	path := filepath.Join(t.TempDir(), "proxy.json")
	require.NoError(t, os.WriteFile(path, []byte(`{"services": [{"name": 7}]}`), 0o600))
	p := newServer(t)
	require.NoError(t, p.Restore(path))
	shop := newProxy(t, controlSocket(t, p), "shop", "127.0.0.1:9003")
	_, err := shop.Route(context.Background(), nil)
	require.ErrorIs(t, err, wire.ErrUnrestored)
	require.ErrorContains(t, err, "which may be shop's")
}

// A change to a name the proxy holds only an unrestored entry for says
// so, not "no such service".
func TestAChangeToAnUnrestoredEntrySaysWhy(t *testing.T) {
	path := filepath.Join(t.TempDir(), "proxy.json")
	require.NoError(t, os.WriteFile(path, []byte(`{"services": [{"name": "api", "listen": "127.0.0.1:9002", "upstream": 7002}]}`), 0o600))
	p := newServer(t)
	require.NoError(t, p.Restore(path))
	_, err := NewControl(controlSocket(t, p), "api").Pause(context.Background(), 0, 0)
	require.ErrorContains(t, err, "422")
	require.ErrorContains(t, err, "could not be restored")
}

// The deploy side asks for a listen address it can be served on.
func TestNewNeedsAListenAddress(t *testing.T) {
	for _, listen := range []string{"", "9001"} {
		_, err := New(NewControl("", "web"), listen)
		require.ErrorIs(t, err, deploy.ErrConfig, "listen %q", listen)
	}
}

// Through the control socket, as `handoff maintenance` uses it.
func TestMaintenanceThroughTheClient(t *testing.T) {
	_, socket, listen := serveOne(t)
	cl := newProxy(t, socket, "web", listen)
	was, err := cl.MaintenanceOff(context.Background(), "web")
	require.NoError(t, err)
	require.False(t, was)
	require.NoError(t, cl.MaintenanceOn(context.Background(), deploy.Maintenance{Service: "web"}, nil))
	resp, body := fetch(t, "http://"+listen+"/")
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	require.Equal(t, "300", resp.Header.Get("Retry-After"))
	require.Contains(t, body, "Down for maintenance")
	was, err = cl.MaintenanceOff(context.Background(), "web")
	require.NoError(t, err)
	require.True(t, was)
	resp, _ = fetch(t, "http://"+listen+"/")
	require.Equal(t, http.StatusOK, resp.StatusCode)
}

// fetch is url's answer and its body.
func fetch(t *testing.T, url string) (*http.Response, string) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	return resp, string(b)
}

// A deploy's pause lasts its release job's timeout plus a margin; each
// request is held at most wire.MaxPauseWait.
func TestADeploysPauseHasTheJobsTimeoutAsItsLease(t *testing.T) {
	for _, c := range []struct{ hold, wait, lease time.Duration }{
		{2 * time.Minute, 2 * time.Minute, 2*time.Minute + wire.PauseLeaseMargin},
		{time.Hour, wire.MaxPauseWait, time.Hour + wire.PauseLeaseMargin},
		{0, wire.MaxPauseWait, 0},
		{48 * time.Hour, wire.MaxPauseWait, wire.MaxPauseLease},
	} {
		wait, lease := pauseWaits(c.hold)
		require.Equal(t, c.wait, wait, "hold %s", c.hold)
		require.Equal(t, c.lease, lease, "hold %s", c.hold)
	}

	p, socket, listen := serveOne(t)
	before := time.Now()
	require.NoError(t, newProxy(t, socket, "web", listen).Pauser().Pause(context.Background(), 10*time.Minute))
	st, _ := p.Get("web")
	require.Equal(t, wire.Duration(wire.MaxPauseWait), st.MaxWait)
	require.WithinDuration(t, before.Add(10*time.Minute+wire.PauseLeaseMargin), st.PauseUntil, 5*time.Second)
}

// A release of weight 0 drains: its endpoint's requests in flight are
// counted, and retired, as those of one that left the route.
func TestInFlightAndRetireOnAnEndpointOfWeightZero(t *testing.T) {
	held, release := make(chan struct{}), make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		held <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(slow.Close)
	t.Cleanup(func() { close(release) })
	_, socket, listen := serveOne(t)
	ctx := context.Background()
	cl := newProxy(t, socket, "web", listen)
	a, b := strings.TrimPrefix(slow.URL, "http://"), "127.0.0.1:7002"
	cur, err := cl.Route(ctx, nil)
	require.NoError(t, err)
	require.NoError(t, cl.SetRoute(ctx, cur, deploy.Only("web-1", a)))
	done := make(chan error, 1)
	go func() {
		resp, err := http.Get("http://" + listen + "/")
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	<-held
	drain := deploy.Route{{Release: "web-2", Endpoints: []string{b}, Weight: 100}, {Release: "web-1", Endpoints: []string{a}, Weight: 0}}
	require.NoError(t, cl.SetRoute(ctx, deploy.Only("web-1", a), drain))
	got, err := cl.Route(ctx, nil)
	require.NoError(t, err)
	require.Equal(t, drain, got)
	in, err := cl.InFlight(ctx, a)
	require.NoError(t, err)
	require.Equal(t, 1, in.Requests, "counted once, under draining")
	in, err = cl.InFlight(ctx, b)
	require.NoError(t, err)
	require.Zero(t, in.Requests)
	pointing, err := cl.PointsAt(ctx, a)
	require.NoError(t, err)
	require.Len(t, pointing, 1, "a release of weight 0 is still in the route")

	require.NoError(t, cl.Retire(ctx, a))
	<-done
	in, err = cl.InFlight(ctx, a)
	require.NoError(t, err)
	require.Zero(t, in.Requests)
}

// A route the proxy runs now but from names by other release names is
// from all the same (deploy.Same); one that is neither is a conflict.
func TestSetRouteComparesAsSameDoesAndConflicts(t *testing.T) {
	_, socket, listen := serveOne(t)
	ctx := context.Background()
	cl := newProxy(t, socket, "web", listen)
	cur, err := cl.Route(ctx, nil)
	require.NoError(t, err)
	require.Equal(t, "", cur[0].Release, "Put made it without a release name")
	up := cur[0].Endpoints[0]
	require.NoError(t, cl.SetRoute(ctx, deploy.Only("web-1", up), deploy.Only("web-2", "127.0.0.1:7002")))
	err = cl.SetRoute(ctx, deploy.Only("web-1", up), deploy.Only("web-3", "127.0.0.1:7003"))
	require.ErrorIs(t, err, deploy.ErrConflict)
	got, err := cl.Route(ctx, nil)
	require.NoError(t, err)
	require.True(t, deploy.Same(deploy.Only("web-2", "127.0.0.1:7002"), got), "%s", got)
}

// A handoff proxy from before routes answers its upstream alone.
func TestARouteFromAProxyBeforeRoutes(t *testing.T) {
	require.Equal(t, deploy.Only("", "127.0.0.1:7001"), routeOf(wire.ServiceState{Upstream: "127.0.0.1:7001"}))
	require.Empty(t, routeOf(wire.ServiceState{}))
}

// After handoff is upgraded, the handoff proxy running may still be one
// from before routes until it is restarted: it answers no route and has no
// route API. A route of one endpoint is set through what it has (its Put
// and switch); a route it cannot serve is refused saying to restart it.
func TestARouteOfOneEndpointReachesAProxyFromBeforeRoutes(t *testing.T) {
	p := newServer(t)
	socket := filepath.Join(t.TempDir(), "old.sock")
	ln, err := net.Listen("unix", socket)
	require.NoError(t, err)
	current := proxy.ControlHandler(p)
	old := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var put map[string]any
		if r.Method == http.MethodPut && (strings.HasSuffix(r.URL.Path, "/route") || json.Unmarshal(body, &put) == nil && put["route"] != nil) {
			http.Error(w, `{"error":"404 page not found"}`, http.StatusNotFound) // no such API then
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		rec := httptest.NewRecorder()
		current.ServeHTTP(rec, r)
		var st map[string]any
		if json.Unmarshal(rec.Body.Bytes(), &st) == nil {
			delete(st, "route") // it answered no route
			out, _ := json.Marshal(st)
			rec.Body = bytes.NewBuffer(out)
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
	})
	srv := &http.Server{Handler: old}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	listen := l.Addr().String()
	l.Close()
	ctx := context.Background()
	cl := newProxy(t, socket, "web", listen)
	require.NoError(t, cl.SetRoute(ctx, nil, deploy.Only("web-1", "127.0.0.1:7001")), "a first deploy")
	require.NoError(t, cl.SetRoute(ctx, deploy.Only("web-1", "127.0.0.1:7001"), deploy.Only("web-2", "127.0.0.1:7002")), "a switch")
	got, err := cl.Route(ctx, nil)
	require.NoError(t, err)
	require.True(t, deploy.Same(deploy.Only("web-2", "127.0.0.1:7002"), got), "%s", got)

	err = cl.SetRoute(ctx, got, deploy.Only("web-3", "127.0.0.1:7003", "127.0.0.1:7004"))
	require.ErrorIs(t, err, deploy.ErrProxy)
	require.ErrorContains(t, err, "from before routes")
	require.ErrorContains(t, err, "restart it")
}

// A handoff proxy handing over to its next process (SIGHUP) can cut a
// change's connection before the change is made: the read-back shows the
// route unchanged, and the change is sent again rather than failing the
// deploy. One whose change took is not sent twice.
func TestAChangeCutBeforeItWasMadeIsSentAgain(t *testing.T) {
	for _, c := range []struct {
		name  string
		apply bool // the cut change was made before the cut
	}{{"not made", false}, {"made", true}} {
		t.Run(c.name, func(t *testing.T) {
			p, _, listen := serveOne(t) // its control served again below, cut once
			socket := filepath.Join(t.TempDir(), "cut.sock")
			ln, err := net.Listen("unix", socket)
			require.NoError(t, err)
			control := proxy.ControlHandler(p)
			var changes, cut atomic.Int32
			srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method != http.MethodGet && changes.Add(1) == 1 {
					if c.apply {
						control.ServeHTTP(httptest.NewRecorder(), r)
					}
					cut.Add(1)
					conn, _, err := w.(http.Hijacker).Hijack()
					if err != nil {
						t.Error(err)
						return
					}
					conn.Close()
					return
				}
				control.ServeHTTP(w, r)
			})}
			go func() { _ = srv.Serve(ln) }()
			t.Cleanup(func() { _ = srv.Close() })

			ctx := context.Background()
			cl := newProxy(t, socket, "web", listen)
			cur, err := cl.Route(ctx, nil)
			require.NoError(t, err)
			to := deploy.Only("web-2", "127.0.0.1:7002")
			require.NoError(t, cl.SetRoute(ctx, cur, to))
			require.Equal(t, int32(1), cut.Load(), "the first change was cut")
			want := int32(2)
			if c.apply {
				want = 1 // read back as made: not sent again
			}
			require.Equal(t, want, changes.Load())
			got, err := cl.Route(ctx, nil)
			require.NoError(t, err)
			require.True(t, deploy.Same(to, got), "%s", got)
		})
	}
}

// A handoff proxy handing over (SIGHUP) stops listening on the control
// socket, and its next process listens there, but the old one still
// answers "restarting" (503) on connections it already has, until it
// exits, up to its handover timeout (long with a WebSocket open). Every
// call dials afresh, so a change after the handover goes to the new
// process, not to the old one for as long as the client retries.
func TestACallAfterAHandoverReachesTheNextProcess(t *testing.T) {
	p, _, listen := serveOne(t)
	socket := filepath.Join(t.TempDir(), "c.sock")
	oldLn, err := net.Listen("unix", socket)
	require.NoError(t, err)
	control := proxy.ControlHandler(p)
	var frozen atomic.Bool
	var toOld atomic.Int32
	old := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if frozen.Load() {
			toOld.Add(1)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprint(w, `{"error":"handoff proxy is restarting"}`)
			return
		}
		control.ServeHTTP(w, r)
	})}
	go func() { _ = old.Serve(oldLn) }()
	t.Cleanup(func() { _ = old.Close() })

	ctx := context.Background()
	cl := newProxy(t, socket, "web", listen)
	cur, err := cl.Route(ctx, nil) // a connection to the old process
	require.NoError(t, err)

	frozen.Store(true)
	oldLn.Close() // the old process stops listening; the socket is the next one's
	_ = os.Remove(socket)
	nextLn, err := net.Listen("unix", socket)
	require.NoError(t, err)
	next := &http.Server{Handler: control}
	go func() { _ = next.Serve(nextLn) }()
	t.Cleanup(func() { _ = next.Close() })

	to := deploy.Only("web-2", "127.0.0.1:7002")
	require.NoError(t, cl.SetRoute(ctx, cur, to))
	require.Zero(t, toOld.Load(), "a call went to the old process after its handover")
}
