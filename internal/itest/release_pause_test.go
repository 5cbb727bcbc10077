package itest

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/deploy"
	"github.com/handoff-dev/handoff/internal/proxy/proxyclient"
)

// pausedDeploy has v1 live through handoff proxy and handoff.yml for v2,
// whose release job (with release_pause) runs for a minute; jobRuns waits,
// once the deploy is started, until the job runs and requests are held.
func pausedDeploy(t *testing.T, timeout string) (s *Scenario, ctl *proxyclient.Control, jobRuns func()) {
	s = NewScenario(t, ScenarioOptions{HandoffProxy: true})
	data := sharedDir(t)
	s.Deploy(Config{Release: "v1"})
	s.WriteConfig(Config{Release: "v2", Env: map[string]string{"MIGRATIONS": "/data/m.log", "MIGRATE_DELAY": "1m"},
		Extra: "volumes: [\"" + data + ":/data\"]\nrelease: migrate\nrelease_pause: true\nrelease_timeout: " + timeout + "\n"})
	ctl = proxyclient.NewControl(s.Proxy.Socket, s.Service)
	return s, ctl, func() {
		WaitFor(t, 30*time.Second, "the release job to start", func() bool {
			_, err := os.Stat(filepath.Join(data, "m.log"))
			return err == nil
		})
		WaitFor(t, 10*time.Second, "the proxy to hold requests", func() bool { return paused(t, ctl) })
	}
}

func paused(t *testing.T, ctl *proxyclient.Control) bool {
	t.Helper()
	list, err := ctl.List(t.Context())
	require.NoError(t, err)
	for _, st := range list {
		if st.Paused {
			return true
		}
	}
	return false
}

// An SSH session that drops sends SIGHUP: a deploy holding requests for its
// release job lets them go, as on SIGTERM, and its record says interrupted.
func TestAPausedDeployKilledBySIGHUPLetsRequestsGo(t *testing.T) {
	s, ctl, jobRuns := pausedDeploy(t, "5m")
	cmd, out := s.Start("deploy")
	jobRuns()

	require.NoError(t, cmd.Process.Signal(syscall.SIGHUP))
	_ = cmd.Wait()
	require.Equal(t, 130, cmd.ProcessState.ExitCode(), "ended by SIGHUP as by SIGTERM: %s", out.String())
	require.False(t, paused(t, ctl), "the requests are let go")
	require.Equal(t, "v1", s.Serving())
	h := s.history()
	require.Equal(t, deploy.OutcomeInterrupted, h[0].Outcome)
	require.Equal(t, deploy.PhaseRelease, h[0].Phase)
	require.False(t, h[0].Held)
}

// A deploy killed outright (SIGKILL, the OOM killer) cannot let its
// requests go: the proxy's lease on the pause does, on its own.
func TestAPausedDeployKilledBySIGKILLLetsRequestsGoAtItsLease(t *testing.T) {
	s, ctl, jobRuns := pausedDeploy(t, "2s")
	cmd, _ := s.Start("deploy")
	jobRuns()

	require.NoError(t, cmd.Process.Kill())
	_ = cmd.Wait()
	killed := time.Now()
	require.True(t, paused(t, ctl), "nobody resumed it")
	WaitFor(t, time.Minute, "the proxy to end the pause at its lease", func() bool { return !paused(t, ctl) })
	t.Logf("the pause ended %s after the deploy was killed", time.Since(killed).Round(100*time.Millisecond))
	require.Equal(t, "v1", s.Serving())
	require.Contains(t, s.Proxy.Log(), "pause lease ended")

	r := s.Run("status")
	require.Contains(t, r.Stdout, "was interrupted in phase release", r.String())
}

// A request the old release still runs when release_pause starts (a slow
// POST) finishes before the release job runs: the job's write comes after
// the request's answer.
func TestAReleasePauseWaitsForTheRequestInFlight(t *testing.T) {
	s := NewScenario(t, ScenarioOptions{HandoffProxy: true})
	data := sharedDir(t)
	s.Deploy(Config{Release: "v1"})
	ctl := proxyclient.NewControl(s.Proxy.Socket, s.Service)

	type answer struct {
		code    int
		release string
		err     error
		at      time.Time
	}
	done := make(chan answer, 1)
	sent := time.Now()
	go func() {
		code, body, err := Get(s.Client, s.Caddy.URL+"/slow?d=3s", SiteHost)
		done <- answer{code, body, err, time.Now()}
	}()
	WaitFor(t, 10*time.Second, "the slow request to be in flight", func() bool {
		list, err := ctl.List(t.Context())
		require.NoError(t, err)
		return len(list) == 1 && list[0].InFlight > 0
	})

	s.WriteConfig(Config{Release: "v2", Env: map[string]string{"MIGRATIONS": "/data/m.log"},
		Extra: "volumes: [\"" + data + ":/data\"]\nrelease: migrate\nrelease_pause: true\nrelease_timeout: 1m\n"})
	r := s.Run("deploy")
	require.Equal(t, 0, r.Code, r.String())
	require.Equal(t, "v2", s.Serving())

	got := <-done
	require.NoError(t, got.err)
	require.Equal(t, 200, got.code)
	require.Equal(t, "v1", got.release, "answered by the old release")
	info, err := os.Stat(filepath.Join(data, "m.log"))
	require.NoError(t, err)
	jobRan := info.ModTime()
	t.Logf("slow request sent %s, answered %s after; the job wrote %s after it was sent",
		sent.Format(time.TimeOnly), got.at.Sub(sent).Round(time.Millisecond), jobRan.Sub(sent).Round(time.Millisecond))
	require.True(t, jobRan.After(sent.Add(3*time.Second)), "the job ran %s after the slow request was sent, before the app could answer it (3s)", jobRan.Sub(sent))
	require.Contains(t, r.Stderr, "for the requests in flight on")
}
