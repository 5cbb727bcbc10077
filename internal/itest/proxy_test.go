package itest

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
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
		require.Zero(t, got.Failures()+got.PostConnErr, "after deploy %d: %s", i, got)
	}
	for range 2 {
		s.Proxy.Restart()
		got := load.Snapshot()
		require.Zero(t, got.Failures()+got.PostConnErr, "after a proxy restart: %s", got)
	}
	s.Deploy(Config{Release: "last", Env: appEnv, NoCaddyfile: true})
	got := load.Stop()
	t.Logf("%d deploys and 2 proxy restarts under load: %s", n+1, got)
	require.Zero(t, got.Failures()+got.PostConnErr, "%s", got)
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
