package itest

import (
	"fmt"
	"io"
	"net/http"
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
	inFlight := s.slowRequest(6 * time.Second)
	out, code := s.RunTTY("deploy")
	require.NoError(t, <-inFlight)
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "\x1b[K  … GET /health: ", "the health checks' answers while the app boots")
	require.Contains(t, out, " · check ")
	require.Contains(t, out, "\x1b[K✓ health ", "the live line is cleared before the phase's result")
	require.Regexp(t, `… \d request\(s\) still in flight on 127\.0\.0\.1:\d+ · up to 10s`, out, "the drain counts down")

	s.WriteConfig(Config{Release: "v3", Env: map[string]string{"BOOT_DELAY": "1s"}})
	inFlight = s.slowRequest(6 * time.Second)
	r := s.Run("deploy")
	require.NoError(t, <-inFlight)
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

// slowRequest sends one GET /slow of d through Caddy and returns once the
// app has answered its headers (the body comes after d), so that it is in
// flight on the live release and a deploy begun now has a request to
// drain, whatever the load's own slow loops are doing (two loops in step
// can be between requests at the switch); the channel gives its outcome.
func (s *Scenario) slowRequest(d time.Duration) <-chan error {
	s.T.Helper()
	arrived, done := make(chan struct{}), make(chan error, 1)
	go func() {
		req, err := http.NewRequest(http.MethodGet, s.Caddy.URL+"/slow?early&d="+d.String(), nil)
		if err != nil {
			close(arrived)
			done <- err
			return
		}
		req.Host = SiteHost
		resp, err := s.Client.Do(req)
		close(arrived)
		if err != nil {
			done <- err
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err == nil && (resp.StatusCode != 200 || !strings.HasPrefix(string(body), "slow ")) {
			err = fmt.Errorf("GET /slow: %d %q", resp.StatusCode, body)
		}
		done <- err
	}()
	select {
	case <-arrived:
	case <-time.After(10 * time.Second):
		s.T.Fatal("GET /slow: no headers after 10s")
	}
	return done
}
