package itest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A new container that never becomes healthy, crashes, crash-loops under
// its restart policy, or whose health check redirects or hangs, changes
// nothing users see: Caddy keeps pointing at the old one, the new one is
// removed, and the command exits non-zero with the reason and the app's
// logs. (A row of the fault matrix.)
func TestFailedDeployLeavesOldServing(t *testing.T) {
	s := NewScenario(t, ScenarioOptions{})
	s.Deploy(Config{Release: "v1"})
	caddyfile, err := os.ReadFile(s.Caddy.File)
	require.NoError(t, err)

	load := matrixLoad(t, s)

	cases := []struct {
		name    string
		cfg     Config
		reason  string
		maxTook time.Duration
	}{
		{"unhealthy", Config{Release: "bad", Env: map[string]string{"HEALTH_STATUS": "503"}, StartTimeout: "2s"},
			"not healthy after 2s (health.start_timeout); last check: GET /health answered 503, want 200-299", time.Minute},
		{"crash", Config{Release: "crash", Env: map[string]string{"CRASH_AFTER": "300ms", "BOOT_DELAY": "10s"}, StartTimeout: "2m"},
			"restarted while starting (", 15 * time.Second}, // restart: unless-stopped by default; "(exit code 3)", or, when Docker had already started it again (which clears the code), "(its restart policy brought it back…"
		{"crash, no restart", Config{Release: "crash", Env: map[string]string{"CRASH_AFTER": "300ms", "BOOT_DELAY": "10s"}, StartTimeout: "2m", Extra: "restart: \"no\"\n"},
			"exited with code 3 while starting", 15 * time.Second},
		{"crash loop", Config{Release: "loop", Env: map[string]string{"CRASH_AFTER": "100ms"}, Extra: "restart: always\n"},
			"restarted while starting", 15 * time.Second},
		{"redirect", Config{Release: "redir", HealthPath: "/health?redirect=1", StartTimeout: "1s"},
			"answered 302, want 200-299 (a redirect to /login; redirects are not followed", time.Minute},
		{"health hangs", Config{Release: "hang", Env: map[string]string{"HEALTH_HANG": "1"}, Health: "health:\n  path: /health\n  timeout: 500ms\n  interval: 100ms\n  start_timeout: 3s\n"},
			"last check: GET /health: no answer within 500ms (health.timeout)", time.Minute},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s.WriteConfig(c.cfg)
			r := s.Run("deploy")
			require.Equal(t, 3, r.Code, r.String())
			require.Contains(t, r.Stderr, c.reason)
			require.Contains(t, r.Stderr, s.Service+"-1 still serving")
			require.Contains(t, r.Stderr, "last log lines of "+s.Service+"-")
			require.Contains(t, r.Stderr, "testapp "+c.cfg.Release+" starting", "the new container's logs are shown")
			require.Less(t, r.Took, c.maxTook, "a crash is noticed at once, not at the start timeout")

			require.Equal(t, "v1", s.Serving())
			require.Equal(t, map[string]bool{s.Service + "-1": true}, Containers(t, s.API, s.Service), "the new container is removed")
			now, err := os.ReadFile(s.Caddy.File)
			require.NoError(t, err)
			require.Equal(t, string(caddyfile), string(now), "the Caddyfile is untouched")
		})
	}
	got := load.Stop()
	report(t, s, "new container unhealthy, crashing, crash-looping, health redirecting or hanging", got)
	require.Positive(t, got.OK)
}

// Bad input gets one clear line, its own exit code, and changes nothing.
func TestBadInputIsRefusedClearly(t *testing.T) {
	s := NewScenario(t, ScenarioOptions{})
	s.Deploy(Config{Release: "v1"})

	t.Run("unknown key", func(t *testing.T) {
		s.WriteConfig(Config{Release: "v2", Extra: "heath:\n  path: /\n"})
		r := s.Run("deploy")
		require.Equal(t, 2, r.Code, r.String())
		require.Regexp(t, `handoff.yml:\d+: unknown key "heath" at the top level; did you mean "health"\?`, r.Stderr)
	})
	t.Run("bad duration", func(t *testing.T) {
		s.WriteConfig(Config{Release: "v2", DrainTimeout: "30"})
		r := s.Run("deploy")
		require.Equal(t, 2, r.Code, r.String())
		require.Regexp(t, `handoff.yml:\d+: "30" is not a duration; write it like 30s`, r.Stderr)
	})
	t.Run("missing image", func(t *testing.T) {
		s.WriteConfig(Config{Release: "v2"})
		r := s.Run("deploy", "--image", "handoff-no-such-image:1")
		require.Equal(t, 6, r.Code, r.String())
		require.Contains(t, r.Stderr, `"handoff-no-such-image:1" is not on this Docker host`)
	})
	t.Run("unreachable caddy", func(t *testing.T) {
		s.WriteConfig(Config{Release: "v2"})
		r := s.Run("deploy", "--caddy-admin", "127.0.0.1:"+Itoa(FreePort(t)))
		require.Equal(t, 5, r.Code, r.String())
		require.Contains(t, r.Stderr, "proxy admin API unreachable")
		require.Contains(t, r.Stderr, "connection refused")
	})
	t.Run("unknown route", func(t *testing.T) {
		s.WriteConfig(Config{Release: "v2"})
		r := s.Run("deploy", "--caddy-route", "nope.example.com")
		require.Equal(t, 5, r.Code, r.String())
		require.Contains(t, r.Stderr, "no reverse_proxy for nope.example.com in Caddy's config (it has: app.test,127.0.0.1 → 127.0.0.1:")
	})
	t.Run("caddyfile without the upstream", func(t *testing.T) {
		other := filepath.Join(t.TempDir(), "Caddyfile")
		require.NoError(t, os.WriteFile(other, []byte("app.test {\n\treverse_proxy 127.0.0.1:1\n}\n"), 0o644))
		s.WriteConfig(Config{Release: "v2"})
		r := s.Run("deploy", "--caddyfile", other)
		require.Equal(t, 5, r.Code, r.String())
		require.Contains(t, r.Stderr, "does not name upstream")
		require.Contains(t, r.Stderr, "nothing was changed")
	})
	// Every refusal above left v1 serving and no other container behind.
	require.Equal(t, "v1", s.Serving())
	require.Equal(t, map[string]bool{s.Service + "-1": true}, Containers(t, s.API, s.Service))
}

// Two deploys of one service never interleave: the second fails at once
// with who holds the lock, or waits with --wait.
func TestConcurrentDeploysAreLocked(t *testing.T) {
	s := NewScenario(t, ScenarioOptions{})
	s.WriteConfig(Config{Release: "slow", Env: map[string]string{"BOOT_DELAY": "3s"}})
	first := make(chan Result, 1)
	go func() { first <- s.Run("deploy") }()
	WaitFor(t, 20*time.Second, "the first deploy to take the lock", func() bool {
		_, err := os.Stat(filepath.Join(s.State, s.Service+".lock.owner"))
		return err == nil
	})

	r := s.Run("deploy")
	require.Equal(t, 4, r.Code, r.String())
	require.Contains(t, r.Stderr, "another handoff is running for this service: "+s.Service+" (pid ")

	r = s.Run("deploy", "--wait", "1m")
	require.Equal(t, 0, r.Code, r.String())
	require.Equal(t, 0, (<-first).Code)
	require.True(t, strings.HasPrefix(s.Serving(), "slow"))
}
