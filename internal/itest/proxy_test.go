package itest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/deploy"
	"github.com/handoff-dev/handoff/internal/proxy/proxyclient"
)

// Through `handoff proxy`, Caddy is never reloaded: consecutive deploys
// and restarts of the proxy itself fail no request of any kind, POSTs on
// kept-alive connections included.
func TestHandoffProxyDeploysAndRestartsWithoutAFailure(t *testing.T) {
	s := NewScenario(t, ScenarioOptions{HandoffProxy: true})
	appEnv := map[string]string{"DRAIN_GRACE": "0s"}
	r := s.Deploy(Config{Release: "r0", Env: appEnv, NoCaddyfile: true})
	require.Contains(t, r.Stderr, "first deploy through handoff proxy")
	require.Equal(t, "r0", s.Serving())

	load := StartLoad(t, s.Caddy.URL, SiteHost, LoadOptions{Workers: 4, H2: 2, Posts: 2, Slow: 3, SlowFor: 1500 * time.Millisecond})
	WaitFor(t, 10*time.Second, "load to flow", func() bool { return load.Snapshot().OK > 100 })
	n := deploysUnderLoad(t) / 2
	for i := 1; i <= n; i++ {
		s.Deploy(Config{Release: "r" + strconv.Itoa(i), Env: appEnv, NoCaddyfile: true})
		got := load.Snapshot()
		require.Zero(t, got.Failures()+got.ReloadCuts(), "after deploy %d: %s", i, got)
	}
	for range 2 {
		s.Proxy.Restart()
		got := load.Snapshot()
		require.Zero(t, got.Failures()+got.ReloadCuts(), "after a proxy restart: %s", got)
	}
	s.Deploy(Config{Release: "last", Env: appEnv, NoCaddyfile: true})
	got := load.Stop()
	t.Logf("%d deploys and 2 proxy restarts under load: %s", n+1, got)
	require.Zero(t, got.Failures()+got.ReloadCuts(), "%s", got)
	require.Positive(t, got.PostOK)
	require.Equal(t, "last", s.Serving())
}

// A WebSocket stays open through a deploy until the drain deadline, then
// gets a close frame ("going away") instead of a broken connection.
func TestHandoffProxyClosesWebSocketsProperlyAtTheDrainDeadline(t *testing.T) {
	s := NewScenario(t, ScenarioOptions{HandoffProxy: true})
	s.Deploy(Config{Release: "v1", NoCaddyfile: true})
	ctx := context.Background()
	ws, _, err := websocket.Dial(ctx, "ws://"+s.Caddy.Addr+"/ws", &websocket.DialOptions{Host: SiteHost})
	require.NoError(t, err)
	defer ws.CloseNow()
	_, msg, err := ws.Read(ctx)
	require.NoError(t, err)
	require.Contains(t, string(msg), "v1")

	s.WriteConfig(Config{Release: "v2", DrainTimeout: "2s", NoCaddyfile: true})
	r := s.Run("deploy")
	require.Equal(t, 0, r.Code, r.String())
	require.Contains(t, r.Stderr, "drain timeout 2s reached with 1 request(s) still in flight")
	for {
		_, _, err = ws.Read(ctx)
		if err != nil {
			break
		}
	}
	require.Equal(t, websocket.StatusGoingAway, websocket.CloseStatus(err), "%v", err)
	require.Equal(t, "v2", s.Serving())
}

// pause holds requests during, say, a migration; resume lets them through.
func TestHandoffProxyPauseAndResume(t *testing.T) {
	s := NewScenario(t, ScenarioOptions{HandoffProxy: true})
	s.Deploy(Config{Release: "v1", NoCaddyfile: true})
	r := s.Run("proxy", "pause", "--socket", s.Proxy.Socket, "--max-wait", "1m")
	require.Equal(t, 0, r.Code, r.String())
	require.Contains(t, r.Stdout, "paused: true")
	answered := make(chan string)
	go func() {
		_, release, _ := Get(s.Client, s.Caddy.URL+"/", SiteHost)
		answered <- release
	}()
	WaitFor(t, 10*time.Second, "the request to be held", func() bool {
		st := s.Run("proxy", "status", "--socket", s.Proxy.Socket, "--json")
		return st.Code == 0 && strings.Contains(st.Stdout, `"held": 1`)
	})
	select {
	case got := <-answered:
		t.Fatalf("a paused service answered: %q", got)
	default:
	}
	r = s.Run("proxy", "resume", "--socket", s.Proxy.Socket)
	require.Equal(t, 0, r.Code, r.String())
	require.Equal(t, "v1", <-answered)
}

// handoff proxy started while a service's port is still taken (by another
// process, as at boot) keeps the service: status says it is not
// listening and why, a change to another service leaves it in the state
// file, and once the port is free it is served again, as it was.
func TestHandoffProxyStartedWhileAServicesPortIsTaken(t *testing.T) {
	bin := Build(t)
	app := func(name string) string {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, name) }))
		t.Cleanup(srv.Close)
		return srv.Listener.Addr().String()
	}
	a, b := app("a"), app("b")
	held, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer held.Close()
	web, api := held.Addr().String(), "127.0.0.1:"+Itoa(FreePort(t))
	d := StartProxyWithState(t, bin, 5*time.Second, fmt.Sprintf(`{"services": [
		{"name": "web", "listen": %q, "upstream": %q},
		{"name": "api", "listen": %q, "upstream": %q}]}`, web, a, api, a))

	status := Handoff(t, bin, t.TempDir(), t.TempDir(), "proxy", "status", "--socket", d.Socket)
	require.Equal(t, 0, status.Code, status.String())
	require.Contains(t, status.Stdout, "web: not listening on "+web)
	require.Contains(t, status.Stdout, "address already in use")

	ctx := context.Background()
	cl, err := proxyclient.New(proxyclient.NewControl(d.Socket, "api"), api)
	require.NoError(t, err)
	require.NoError(t, cl.SetRoute(ctx, deploy.Only("api-1", a), deploy.Only("api-2", b)), "another service is changed meanwhile")
	require.Equal(t, "b", fetchBody(t, "http://"+api+"/"))
	state, err := os.ReadFile(d.StateFile)
	require.NoError(t, err)
	require.Contains(t, string(state), web, "web is still in the state file")
	up, err := proxyclient.NewControl(d.Socket, "web").Upstream(ctx, nil)
	require.NoError(t, err)
	require.Equal(t, a, up, "the deploy side sees web's route")

	held.Close()
	WaitFor(t, 20*time.Second, "web to be served again", func() bool {
		resp, err := http.Get("http://" + web + "/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	require.Equal(t, "a", fetchBody(t, "http://"+web+"/"))
	status = Handoff(t, bin, t.TempDir(), t.TempDir(), "proxy", "status", "--socket", d.Socket)
	require.NotContains(t, status.Stdout, "not listening", status.String())
	state, err = os.ReadFile(d.StateFile)
	require.NoError(t, err)
	require.Contains(t, string(state), web)
	require.Equal(t, 1, strings.Count(d.Log(), "cannot listen for the service"), "logged once, not at every attempt:\n%s", d.Log())
	require.Contains(t, d.Log(), "listening for the service at last")
}

// A pause no one resumes ends with its lease: the held request is
// answered by the release, not with a 503, and the proxy says why.
func TestHandoffProxyPauseEndsWithItsLease(t *testing.T) {
	s := NewScenario(t, ScenarioOptions{HandoffProxy: true})
	s.Deploy(Config{Release: "v1", NoCaddyfile: true})
	r := s.Run("proxy", "pause", "--socket", s.Proxy.Socket, "--max-wait", "1m", "--lease", "3s")
	require.Equal(t, 0, r.Code, r.String())
	require.Contains(t, r.Stdout, "unless resumed")
	start := time.Now()
	code, release, err := Get(s.Client, s.Caddy.URL+"/", SiteHost)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "v1", release)
	require.GreaterOrEqual(t, time.Since(start), 2*time.Second, "it was held until the lease ended")
	require.Contains(t, s.Proxy.Log(), "pause lease ended")
	st := s.Run("proxy", "status", "--socket", s.Proxy.Socket, "--json")
	require.NotContains(t, st.Stdout, `"paused": true`)
}

func fetchBody(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return string(body)
}
