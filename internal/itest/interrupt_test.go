package itest

import (
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Ctrl-C while the new container boots: it is removed, the old one keeps
// serving, the lock is free, and the history says interrupted.
func TestCtrlCDuringHealthLeavesNothingBehind(t *testing.T) {
	s, cmd, out := deployStuckInHealth(t)
	require.NoError(t, cmd.Process.Signal(syscall.SIGINT))
	err := cmd.Wait()
	require.Error(t, err)
	require.Equal(t, 130, cmd.ProcessState.ExitCode(), out.String())

	require.Equal(t, map[string]bool{s.Service + "-1": true}, Containers(t, s.API, s.Service))
	require.Equal(t, "v1", s.Serving())
	h := s.history()
	require.Equal(t, "interrupted", h[0].Outcome)
	require.Equal(t, "health", h[0].Phase)
}

// A deploy killed outright (SIGKILL, a lost SSH session, a reboot) leaves its
// new container running; the next deploy finds it, removes it, and says so.
func TestKilledDeployIsRepairedByTheNext(t *testing.T) {
	s, cmd, _ := deployStuckInHealth(t)
	require.NoError(t, cmd.Process.Kill())
	_ = cmd.Wait()
	require.True(t, Containers(t, s.API, s.Service)[s.Service+"-2"], "the orphan is there")
	require.Equal(t, "v1", s.Serving())

	r := s.Deploy(Config{Release: "v3"})
	require.Contains(t, r.Stderr, "was interrupted in phase health; repairing")
	require.Contains(t, r.Stderr, "removing "+s.Service+"-2: left running by an interrupted deploy, never in service")
	require.Equal(t, "v3", s.Serving())
	require.Equal(t, map[string]bool{s.Service + "-1": false, s.Service + "-3": true}, Containers(t, s.API, s.Service))
	h := s.history()
	require.Equal(t, "succeeded", h[0].Outcome)
	require.Equal(t, "interrupted", h[1].Outcome)
}

// deployStuckInHealth has v1 live and a deploy of v2 running, waiting for
// an app that boots for a minute.
func deployStuckInHealth(t *testing.T) (*Scenario, *exec.Cmd, *syncBuffer) {
	s := NewScenario(t, ScenarioOptions{})
	s.Deploy(Config{Release: "v1"})
	s.WriteConfig(Config{Release: "v2", Env: map[string]string{"BOOT_DELAY": "1m"}, StartTimeout: "5m"})
	cmd, out := s.Start("deploy")
	s.waitForPhase("health")
	return s, cmd, out
}

// waitForPhase waits until the running deploy has recorded phase.
func (s *Scenario) waitForPhase(phase string) {
	s.T.Helper()
	WaitFor(s.T, 20*time.Second, "the deploy to reach phase "+phase, func() bool {
		h := s.history()
		return len(h) > 0 && h[0].Outcome == "running" && h[0].Phase == phase
	})
}
