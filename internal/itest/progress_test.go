package itest

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A deploy says what it waits for: on a terminal one live line (each
// health check's answer while the app boots, then the requests still in
// flight on the old release), without one a line each time that changes.
func TestDeployShowsWhatItWaitsFor(t *testing.T) {
	s := NewScenario(t, ScenarioOptions{})
	s.Deploy(Config{Release: "v1"})
	load := StartLoad(t, s.Caddy.URL, SiteHost, LoadOptions{Workers: 1, Slow: 2, SlowFor: 2 * time.Second})
	WaitFor(t, 10*time.Second, "load to flow", func() bool { return load.Snapshot().OK > 5 })

	s.WriteConfig(Config{Release: "v2", Env: map[string]string{"BOOT_DELAY": "1s"}})
	out, code := s.RunTTY("deploy")
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "\x1b[K  … GET /health: ", "the health checks' answers while the app boots")
	require.Contains(t, out, " · check ")
	require.Contains(t, out, "\x1b[K✓ health ", "the live line is cleared before the phase's result")
	require.Regexp(t, `… \d request\(s\) still in flight on 127\.0\.0\.1:\d+ · up to 10s`, out, "the drain counts down")

	s.WriteConfig(Config{Release: "v3", Env: map[string]string{"BOOT_DELAY": "1s"}})
	r := s.Run("deploy")
	require.Equal(t, 0, r.Code, r.String())
	require.NotContains(t, r.Stderr, "\x1b[", "no terminal: plain lines")
	require.Contains(t, r.Stderr, " health  wait   GET /health: ")
	require.Contains(t, r.Stderr, " health  wait   passing (1 of 2 in a row)")
	require.Regexp(t, ` drain   wait   \d request\(s\) still in flight on`, r.Stderr)
	waits := strings.Count(r.Stderr, " health  wait   ")
	require.Less(t, waits, 10, "a line per change, not per check:\n%s", r.Stderr)

	got := load.Stop()
	require.Zero(t, got.Failures(), "%s", got)
}
