package itest

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/caddy"
	"github.com/handoff-dev/handoff/internal/deploy"
)

// The first deploy adopts the container started by hand; later deploys and
// a rollback each switch Caddy, keep the Caddyfile in step and keep the old
// release stopped for rollback.
func TestDeployAdoptSwitchAndRollback(t *testing.T) {
	s := NewScenario(t, ScenarioOptions{})
	require.Equal(t, "v0", s.Serving())

	r := s.Deploy(Config{Release: "v1"})
	require.Equal(t, "v1", s.Serving())
	t.Logf("first deploy:\n%s", r)
	require.Contains(t, r.Stderr, "adopting "+s.Service+"-byhand")
	require.Contains(t, r.Stdout, "deployed "+s.Service+"-1")

	byHand, err := s.API.ContainerInspect(t.Context(), s.Service+"-byhand", clientInspect)
	require.NoError(t, err)
	require.False(t, byHand.Container.State.Running, "the adopted container is stopped")

	file, err := os.ReadFile(s.Caddy.File)
	require.NoError(t, err)
	live := s.status().Live
	require.NotNil(t, live)
	require.Contains(t, string(file), "reverse_proxy "+live.Upstream+" {", "Caddyfile follows the switch")
	require.True(t, strings.HasPrefix(live.Upstream, "127.0.0.1:"), "published on loopback only: %s", live.Upstream)
	prev, err := os.ReadFile(caddy.BackupPath(s.State, s.Caddy.File))
	require.NoError(t, err, "the previous Caddyfile is kept in the state directory")
	_, err = os.Stat(s.Caddy.File + ".handoff-previous")
	require.ErrorIs(t, err, os.ErrNotExist, "nothing beside the Caddyfile, where an import glob would read it")
	require.Contains(t, string(prev), "127.0.0.1:"+Itoa(s.UserPort))

	s.Deploy(Config{Release: "v2"})
	require.Equal(t, "v2", s.Serving())
	require.Equal(t, map[string]bool{s.Service + "-1": false, s.Service + "-2": true}, Containers(t, s.API, s.Service))

	r = s.Run("rollback")
	require.Equal(t, 0, r.Code, r.String())
	require.Equal(t, "v1", s.Serving())
	require.Equal(t, map[string]bool{s.Service + "-1": true, s.Service + "-2": false}, Containers(t, s.API, s.Service))

	st := s.status()
	require.True(t, st.Agree, "%+v", st)
	require.Equal(t, s.Service+"-1", st.Live.Name)
	require.Regexp(t, `^passing: GET http://127\.0\.0\.1:\d+/health$`, st.Check)
	require.Empty(t, st.Advice[:len(st.Advice)-1], "the test Caddy has every recommended setting but the unix socket")

	hist := s.history()
	require.Len(t, hist, 3)
	for _, h := range hist {
		require.Equal(t, deploy.OutcomeSucceeded, h.Outcome)
	}
	require.Equal(t, deploy.KindRollback, hist[0].Kind)
	var phases []string
	for _, p := range hist[1].Phases {
		phases = append(phases, p.Name)
	}
	require.Equal(t, []string{"image", "start", "health", "switch", "drain", "retire"}, phases)
}

func (s *Scenario) status() deploy.Status {
	s.T.Helper()
	r := s.Run("status", "--json")
	if r.Code != 0 {
		s.T.Fatalf("status: %s", r)
	}
	var st deploy.Status
	if err := json.Unmarshal([]byte(r.Stdout), &st); err != nil {
		s.T.Fatalf("status json: %v\n%s", err, r.Stdout)
	}
	return st
}

func (s *Scenario) history() []deploy.Record {
	s.T.Helper()
	r := s.Run("history", "--json")
	if r.Code != 0 {
		s.T.Fatalf("history: %s", r)
	}
	var hist []deploy.Record
	if err := json.Unmarshal([]byte(r.Stdout), &hist); err != nil {
		s.T.Fatalf("history json: %v\n%s", err, r.Stdout)
	}
	return hist
}

// A route named by the upstream Caddy proxied to before handoff (a site
// with no host name) is found by every command, after any number of
// switches and rollbacks.
func TestRouteNamedByItsOriginalUpstream(t *testing.T) {
	s := NewScenario(t, ScenarioOptions{})
	route := "127.0.0.1:" + Itoa(s.UserPort)
	check := func(want string) {
		t.Helper()
		require.Equal(t, want, s.Serving())
		st := s.status()
		require.True(t, st.Agree, st.Problem)
	}
	s.Deploy(Config{Release: "v1", Route: route})
	check("v1")
	r := s.Run("rollback")
	require.Equal(t, 0, r.Code, r.String())
	check("v0")
	s.Deploy(Config{Release: "v2", Route: route})
	check("v2")
	s.Deploy(Config{Release: "v3", Route: route})
	r = s.Run("rollback")
	require.Equal(t, 0, r.Code, r.String())
	check("v2")
	r = s.Run("history")
	require.Equal(t, 0, r.Code, r.String())
}

// handoff init writes down what runs (a container behind a Caddy route) as
// a handoff.yml; the first deploy with it adopts the container, and no
// request fails.
func TestInitThenFirstDeployAdoptsWithoutAFailure(t *testing.T) {
	s := NewScenario(t, ScenarioOptions{})
	RemoveService(t, s.API, s.Service+"-byhand") // init names the service after the container
	r := s.Run("init", "--caddy-admin", s.Caddy.Admin, "--caddyfile", s.Caddy.File, "--write")
	require.Equal(t, 0, r.Code, r.String())
	data, err := os.ReadFile(filepath.Join(s.Dir, "handoff.yml"))
	require.NoError(t, err)
	text := string(data)
	require.Contains(t, text, "image: "+TestImage)
	require.Contains(t, text, "port: 8000")
	require.Contains(t, text, "route: "+SiteHost)
	require.Contains(t, text, "RELEASE", "the environment's names are listed")
	require.NotContains(t, text, "v0", "its values are not written")
	r = s.Run("init", "--caddy-admin", s.Caddy.Admin, "--write")
	require.Equal(t, 2, r.Code, "an existing handoff.yml is never overwritten: %s", r)

	load := StartLoad(t, s.Caddy.URL, SiteHost, LoadOptions{Workers: 2, Posts: 1})
	WaitFor(t, 10*time.Second, "load to flow", func() bool { return load.Snapshot().OK > 20 })
	r = s.Run("deploy")
	require.Equal(t, 0, r.Code, r.String())
	require.Contains(t, r.Stderr, "adopting "+s.Service+"-byhand")
	got := load.Stop()
	require.Zero(t, got.Failures(), "%s", got)
}
