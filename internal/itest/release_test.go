package itest

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/moby/moby/client"

	"github.com/handoff-dev/handoff/internal/deploy"
)

// The release job runs once per deploy, in a one-off container of the new
// image with the service's environment and volumes, before the new
// release starts; one that fails leaves the old release serving, with no
// failed request, and says why with the job's own output. Hooks run on
// the host with the deploy's facts.
func TestReleaseJobAndHooks(t *testing.T) {
	s := NewScenario(t, ScenarioOptions{})
	data := sharedDir(t)
	hooksLog := filepath.Join(s.Dir, "hooks.log")
	extra := `volumes:
  - ` + data + `:/data
release: migrate
release_timeout: 1m
hooks:
  pre_deploy: echo "pre $HANDOFF_SERVICE $HANDOFF_IMAGE" >> hooks.log
  post_deploy: echo "post $HANDOFF_OUTCOME $HANDOFF_CONTAINER" >> hooks.log
  on_failure: echo "failure $HANDOFF_OUTCOME $HANDOFF_PHASE" >> hooks.log
`
	env := map[string]string{"MIGRATIONS": "/data/migrations.log"}
	migrations := func() string {
		b, _ := os.ReadFile(filepath.Join(data, "migrations.log"))
		return string(b)
	}

	r := s.Deploy(Config{Release: "v1", Env: env, Extra: extra})
	require.Contains(t, r.Stderr, "migrating to v1", "the job's output streams to the user")
	require.Equal(t, "v1\n", migrations())
	require.Equal(t, "v1", s.Serving())

	load := StartLoad(t, s.Caddy.URL, SiteHost, LoadOptions{Workers: 2, Posts: 1})
	WaitFor(t, 10*time.Second, "load to flow", func() bool { return load.Snapshot().OK > 20 })
	env["MIGRATE_EXIT"] = "3"
	env["MIGRATE_DELAY"] = "1s"
	s.WriteConfig(Config{Release: "v2", Env: env, Extra: extra})
	r = s.Run("deploy")
	require.Equal(t, 8, r.Code, r.String())
	require.Contains(t, r.Stderr, `"migrate" exited with 3`)
	require.Contains(t, r.Stderr, "migration to v2 done, exit 3", "its output is shown")
	require.Contains(t, r.Stderr, "still serving, nothing was started")
	require.Equal(t, "v1", s.Serving())
	require.Equal(t, "v1\nv2\n", migrations())
	for name := range Containers(t, s.API, s.Service) {
		require.NotContains(t, name, "-2", "no release was started for the failed job")
	}
	delete(env, "MIGRATE_EXIT")
	r = s.Deploy(Config{Release: "v3", Env: env, Extra: extra})
	require.Equal(t, "v3", s.Serving())
	got := load.Stop()
	t.Logf("load through the failed and the good release job: %s", got)
	require.Zero(t, got.Failures(), "%s", got)
	require.Equal(t, "v1\nv2\nv3\n", migrations(), "exactly one run per deploy")

	jobs, err := s.API.ContainerList(t.Context(), listAllWithLabel("handoff.job="+s.Service))
	require.NoError(t, err)
	require.Empty(t, jobs.Items, "every job container is removed")

	hist := s.history()
	failed := hist[1]
	require.Equal(t, deploy.OutcomeFailed, failed.Outcome)
	require.Equal(t, deploy.PhaseRelease, failed.Phase)
	p := failed.Phases[len(failed.Phases)-1]
	require.NotNil(t, p.ExitCode)
	require.Equal(t, 3, *p.ExitCode)
	require.GreaterOrEqual(t, p.Duration, time.Second, "the job's duration is recorded")

	hooks, err := os.ReadFile(hooksLog)
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSpace(string(hooks)), "\n")
	require.Equal(t, []string{
		"pre " + s.Service + " " + TestImage, "post succeeded " + s.Service + "-1",
		"pre " + s.Service + " " + TestImage, "failure failed release",
		"pre " + s.Service + " " + TestImage, "post succeeded " + hist[0].To,
	}, lines)

	// A pre_deploy hook that fails stops the deploy before the job.
	s.WriteConfig(Config{Release: "v4", Env: env, Extra: strings.Replace(extra, "pre_deploy: echo", "pre_deploy: exit 4; echo", 1)})
	r = s.Run("deploy")
	require.Equal(t, 8, r.Code, r.String())
	require.Contains(t, r.Stderr, "pre_deploy hook exited with 4")
	require.Equal(t, "v1\nv2\nv3\n", migrations())
	require.Equal(t, "v3", s.Serving())
}

// With handoff proxy, release_pause holds the service's requests while
// the job runs (a migration the old code must not see half done): they
// are answered once it is done, none fails.
func TestReleasePauseHoldsRequestsDuringTheJob(t *testing.T) {
	s := NewScenario(t, ScenarioOptions{HandoffProxy: true})
	data := sharedDir(t)
	s.Deploy(Config{Release: "v1"})

	load := StartLoad(t, s.Caddy.URL, SiteHost, LoadOptions{Workers: 2, Posts: 1, FrontNeverReloads: true})
	WaitFor(t, 10*time.Second, "load to flow", func() bool { return load.Snapshot().OK > 20 })
	s.WriteConfig(Config{Release: "v2", Env: map[string]string{"MIGRATIONS": "/data/m.log", "MIGRATE_DELAY": "2s"},
		Extra: "volumes: [\"" + data + ":/data\"]\nrelease: migrate\nrelease_pause: true\n"})
	cmd, out := s.Start("deploy")
	WaitFor(t, 30*time.Second, "the release job to start", func() bool {
		_, err := os.Stat(filepath.Join(data, "m.log"))
		return err == nil
	})
	held := &http.Client{Timeout: 500 * time.Millisecond}
	_, _, err := Get(held, s.Caddy.URL+"/", SiteHost)
	require.Error(t, err, "a request during the job is held, not answered")
	require.NoError(t, cmd.Wait(), out.String())
	require.Equal(t, "v2", s.Serving())
	got := load.Stop()
	t.Logf("load through a paused release job: %s", got)
	require.Zero(t, got.Failures(), "%s", got)
	require.GreaterOrEqual(t, got.LongestGap, time.Second, "requests were held while the job ran")
	require.Contains(t, out.String(), "requests held while the release job runs")
}

// maintenance on answers the site with a 503 page and Retry-After, but
// the health path; a deploy still switches underneath; off takes away
// exactly what on added.
func TestMaintenanceWithCaddy(t *testing.T) {
	s := NewScenario(t, ScenarioOptions{})
	s.Deploy(Config{Release: "v1"})
	before := caddyConfig(t, s)

	r := s.Run("maintenance", "on", "--message", "Back at 10", "--retry-after", "2m")
	require.Equal(t, 0, r.Code, r.String())
	code, h, body := getSite(t, s, "/orders")
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Equal(t, "120", h.Get("Retry-After"))
	require.Contains(t, body, "Back at 10")
	code, _, _ = getSite(t, s, "/health")
	require.Equal(t, http.StatusOK, code, "a front load balancer's health check still passes")

	r = s.Run("maintenance", "off")
	require.Equal(t, 0, r.Code, r.String())
	require.Equal(t, before, caddyConfig(t, s), "off restores Caddy's config exactly")
	require.Equal(t, "v1", s.Serving())
	r = s.Run("maintenance", "off")
	require.Equal(t, 0, r.Code, r.String())
	require.Contains(t, r.Stdout, "was not in maintenance")

	page := filepath.Join(s.Dir, "page.html")
	require.NoError(t, os.WriteFile(page, []byte("<h1>our own page {not a placeholder}</h1>"), 0o644))
	r = s.Run("maintenance", "on", "--page", page)
	require.Equal(t, 0, r.Code, r.String())
	s.Deploy(Config{Release: "v2"})
	code, _, body = getSite(t, s, "/")
	require.Equal(t, http.StatusServiceUnavailable, code, "the page stays through a deploy")
	require.Equal(t, "<h1>our own page {not a placeholder}</h1>", body)
	r = s.Run("maintenance", "off")
	require.Equal(t, 0, r.Code, r.String())
	require.Equal(t, "v2", s.Serving())
}

// The same through handoff proxy, which keeps the page across its restart.
func TestMaintenanceWithHandoffProxy(t *testing.T) {
	s := NewScenario(t, ScenarioOptions{HandoffProxy: true})
	s.Deploy(Config{Release: "v1"})
	r := s.Run("maintenance", "on")
	require.Equal(t, 0, r.Code, r.String())
	code, h, body := getSite(t, s, "/")
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Equal(t, "300", h.Get("Retry-After"))
	require.Contains(t, body, "Down for maintenance")
	code, _, _ = getSite(t, s, "/health")
	require.Equal(t, http.StatusOK, code)
	r = s.Run("maintenance", "off")
	require.Equal(t, 0, r.Code, r.String())
	require.Equal(t, "v1", s.Serving())
}

// sharedDir is a host directory a container may write to (bind-mounted
// as a volume), removed when the test ends.
func sharedDir(t *testing.T) string {
	data, err := os.MkdirTemp("", "handoff-it-data-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(data) })
	require.NoError(t, os.Chmod(data, 0o777))
	return data
}

func getSite(t *testing.T, s *Scenario, path string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, s.Caddy.URL+path, nil)
	require.NoError(t, err)
	req.Host = SiteHost
	resp, err := s.Client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

func caddyConfig(t *testing.T, s *Scenario) any {
	t.Helper()
	resp, err := s.Caddy.AdminClient().Get(s.Caddy.AdminURL() + "/config/")
	require.NoError(t, err)
	defer resp.Body.Close()
	var cfg any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&cfg))
	return cfg
}

func listAllWithLabel(label string) client.ContainerListOptions {
	return client.ContainerListOptions{All: true, Filters: make(client.Filters).Add("label", label)}
}
