package itest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"
	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/deploy"
)

// replicaDeploys is how many deploys of a 3-replica service the test makes.
const replicaDeploys = 10

// A service of three replicas, through Caddy and through handoff proxy:
// consecutive deploys and a rollback under the usual load fail no request,
// each release runs three containers, and only the live release runs. Then
// one replica of the live release is killed (a crash: its restart policy
// brings it back on its pinned port): no GET fails meanwhile, and the
// replica gets traffic again once it is back, without anyone acting.
func TestReplicasUnderLoad(t *testing.T) {
	for _, via := range []struct {
		name  string
		proxy bool
		caddy CaddyOptions
	}{
		// As status advises for a route of several upstreams: a failed
		// request keeps Caddy off that upstream for a while.
		{"caddy", false, CaddyOptions{ExtraProxy: "\t\tfail_duration 5s\n"}},
		{"handoff proxy", true, CaddyOptions{}},
	} {
		t.Run(via.name, func(t *testing.T) {
			s := NewScenario(t, ScenarioOptions{HandoffProxy: via.proxy, Caddy: via.caddy})
			appEnv := map[string]string{"DRAIN_GRACE": "0s"}
			cfg := func(release string) Config {
				return Config{Release: release, Env: appEnv, Extra: "replicas: 3\n"}
			}
			s.Deploy(cfg("r0"))
			s.requireReplicas("r0", 3)

			load := StartLoad(t, s.Caddy.URL, SiteHost, LoadOptions{Workers: 4, H2: 2, Posts: 2, Slow: 3, SlowFor: 1500 * time.Millisecond, WebSockets: 1, FrontNeverReloads: via.proxy})
			WaitFor(t, 10*time.Second, "load to flow", func() bool { return load.Snapshot().OK > 100 })
			var took []time.Duration
			for i := 1; i <= replicaDeploys; i++ {
				release := "r" + strconv.Itoa(i)
				start := time.Now()
				r := s.Deploy(cfg(release))
				took = append(took, time.Since(start))
				require.Contains(t, r.Stdout, "deployed")
				require.Zero(t, load.Snapshot().Failures(), "after deploy %d: %s", i, load.Snapshot())
				s.requireReplicas(release, 3)
			}
			r := s.Run("rollback")
			require.Zero(t, r.Code, "rollback: %s", r)
			back := "r" + strconv.Itoa(replicaDeploys-1)
			time.Sleep(200 * time.Millisecond)
			got := load.Stop()
			require.Zero(t, got.Failures(), "%s", got)
			require.Equal(t, back, s.Serving())
			s.requireReplicas(back, 3)
			t.Logf("%d deploys of 3 replicas under load: %s each on average (%v); then a rollback", replicaDeploys, mean(took).Round(time.Millisecond), rounded(took))
			t.Logf("requests: ok=%d post_ok=%d slow_ok=%d ws_ok=%d; failures=%d; requests cut by a Caddy reload=%d", got.OK, got.PostOK, got.SlowOK, got.WSOK, got.Failures(), got.ReloadCuts())

			t.Logf("phases, mean of the %d deploys: %s", replicaDeploys, meanPhases(s.history(), replicaDeploys))

			st := s.status()
			require.True(t, st.Agree, st.Problem)
			require.Len(t, st.Replicas, 3)
			require.Len(t, st.Endpoints, 3)
			for _, a := range st.Advice {
				require.NotContains(t, a, "upstreams", "nothing missing for a route of several")
			}

			// One replica crashes between deploys.
			gets := StartLoad(t, s.Caddy.URL, SiteHost, LoadOptions{Workers: 4, H2: 2, FrontNeverReloads: via.proxy})
			WaitFor(t, 10*time.Second, "load to flow", func() bool { return gets.Snapshot().OK > 100 })
			victim := st.Replicas[1].Name
			host := s.hostname(victim)
			WaitFor(t, 10*time.Second, victim+" to serve", func() bool { return gets.Snapshot().Hosts[host] > 0 })
			KillContainerProcess(t, s.API, victim)
			killed := time.Now()
			WaitFor(t, 30*time.Second, victim+" to be restarted by its policy", func() bool { return s.restarts(victim) > 0 })
			before := gets.Snapshot().Hosts[host]
			WaitFor(t, 30*time.Second, victim+" to get traffic again", func() bool { return gets.Snapshot().Hosts[host] > before+10 })
			backAfter := time.Since(killed)
			got = gets.Stop()
			t.Logf("%s killed: traffic back on it after %s; GETs ok=%d failed=%d, longest gap %s", victim, backAfter.Round(time.Millisecond), got.OK, got.Failures(), got.LongestGap.Round(time.Millisecond))
			require.Zero(t, got.Failures(), "GETs while a replica was killed: %s", got)
		})
	}
}

// requireReplicas checks that release runs n containers and that nothing
// else of the service runs.
func (s *Scenario) requireReplicas(release string, n int) {
	s.T.Helper()
	running := s.Running()
	slices.Sort(running)
	require.Len(s.T, running, n, "running: %v", running)
	for i, name := range running {
		require.True(s.T, strings.HasSuffix(name, "-"+strconv.Itoa(i+1)), "replica %d: %s", i+1, name)
		env := s.env(name)
		require.Contains(s.T, env, "RELEASE="+release, "%s runs another release", name)
	}
}

func (s *Scenario) inspect(name string) client.ContainerInspectResult {
	s.T.Helper()
	res, err := s.API.ContainerInspect(context.Background(), name, client.ContainerInspectOptions{})
	require.NoError(s.T, err)
	return res
}

func (s *Scenario) env(name string) []string { return s.inspect(name).Container.Config.Env }

func (s *Scenario) hostname(name string) string { return s.inspect(name).Container.Config.Hostname }

func (s *Scenario) restarts(name string) int {
	c := s.inspect(name).Container
	if c.State == nil || !c.State.Running {
		return 0
	}
	return c.RestartCount
}

// meanPhases is the mean time of each phase over the n deploys before the
// newest record (a rollback), for the log.
func meanPhases(hist []deploy.Record, n int) string {
	sum, order := map[string]time.Duration{}, []string{}
	for _, h := range hist[1 : n+1] {
		for _, p := range h.Phases {
			if _, ok := sum[p.Name]; !ok {
				order = append(order, p.Name)
			}
			sum[p.Name] += p.Duration
		}
	}
	var parts []string
	for _, name := range order {
		parts = append(parts, fmt.Sprintf("%s %s", name, (sum[name]/time.Duration(n)).Round(time.Millisecond)))
	}
	return strings.Join(parts, ", ")
}

func mean(ds []time.Duration) time.Duration {
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return sum / time.Duration(max(len(ds), 1))
}

func rounded(ds []time.Duration) []string {
	out := make([]string, 0, len(ds))
	for _, d := range ds {
		out = append(out, d.Round(10*time.Millisecond).String())
	}
	return out
}

// A service someone runs as two containers behind one reverse_proxy
// (`reverse_proxy 127.0.0.1:A 127.0.0.1:B`): handoff init writes
// replicas: 2, and the first deploy adopts both as one release under load,
// retires both once its own two serve, and no request fails.
func TestInitAndFirstDeployOfTwoContainersBehindOneReverseProxy(t *testing.T) {
	api := Docker(t)
	name := UniqueName()
	RemoveService(t, api, name+"-a") // init names the service after the first container
	a := UserContainer(t, api, name+"-a", "RELEASE=v0")
	b := UserContainer(t, api, name+"-b", "RELEASE=v0")
	s := NewScenarioWith(t, ScenarioOptions{Caddy: CaddyOptions{Upstream: fmt.Sprintf("127.0.0.1:%d 127.0.0.1:%d", a, b)}}, a)
	s.Service = name + "-a"

	r := s.Run("init", "--caddy-admin", s.Caddy.Admin, "--caddyfile", s.Caddy.File, "--write")
	require.Equal(t, 0, r.Code, r.String())
	data, err := os.ReadFile(filepath.Join(s.Dir, "handoff.yml"))
	require.NoError(t, err)
	require.Contains(t, string(data), "replicas: 2")
	require.Contains(t, string(data), name+"-a, "+name+"-b behind Caddy's route "+SiteHost)

	load := StartLoad(t, s.Caddy.URL, SiteHost, LoadOptions{Workers: 2, Posts: 1})
	WaitFor(t, 10*time.Second, "load to flow", func() bool { return load.Snapshot().OK > 20 })
	r = s.Run("deploy")
	require.Equal(t, 0, r.Code, r.String())
	require.Contains(t, r.Stderr, "adopting "+name+"-a, "+name+"-b")
	got := load.Stop()
	require.Zero(t, got.Failures(), "%s", got)
	require.Len(t, s.Running(), 2, "the new release's two")
	for _, old := range []string{name + "-a", name + "-b"} {
		c := s.inspect(old).Container
		require.False(t, c.State.Running, "%s retired", old)
	}
	st := s.status()
	require.True(t, st.Agree, st.Problem)
	require.Len(t, st.Replicas, 2)
	t.Logf("two adopted containers replaced by a release of two under load: %d requests, %d failed (%d requests cut by Caddy's reload)", got.Requests(), got.Failures(), got.ReloadCuts())
}
