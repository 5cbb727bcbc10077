package itest

import (
	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/moby/client"
	"github.com/stretchr/testify/require"
)

// The Docker engine restarts (an upgrade, a crash, or a reboot as Docker
// lives it: every container stopped, then started again by dockerd in its
// own order). The live release comes back on its address and serves,
// through Caddy and through handoff proxy, with nobody's help; a retired
// release does not come back, even with `restart: always`.
//
// It restarts the engine every other test uses, so it runs only when
// HANDOFF_TEST_DOCKERD_RESTART is set: scripts/test.sh runs it alone,
// after the others.
func TestFaultDockerdRestart(t *testing.T) {
	if os.Getenv("HANDOFF_TEST_DOCKERD_RESTART") == "" {
		t.Skip("restarts the Docker engine under every other test: set HANDOFF_TEST_DOCKERD_RESTART=1 (scripts/test.sh runs it alone, after the other tests)")
	}
	var scenarios []*Scenario
	var loads []*Load
	for _, viaProxy := range []bool{false, true} {
		s := NewScenario(t, ScenarioOptions{HandoffProxy: viaProxy})
		cfg := func(rel string) Config {
			return Config{Release: rel, NoCaddyfile: viaProxy, Extra: "restart: always\n"}
		}
		s.Deploy(cfg("v1"))
		s.Deploy(cfg("v2"))
		require.Equal(t, []string{s.Service + "-2"}, s.Running())
		scenarios = append(scenarios, s)
		loads = append(loads, StartLoad(t, s.Caddy.URL, SiteHost, LoadOptions{Workers: 2, FrontNeverReloads: viaProxy}))
	}
	took := restartDockerd(t)
	for i, s := range scenarios {
		s.waitServing("v2")
		s.settled()
		require.False(t, Containers(t, s.API, s.Service)[s.Service+"-1"], "the retired release stays stopped")
		got := loads[i].Stop()
		via := map[bool]string{false: "caddy", true: "handoff proxy"}[s.Proxy != nil]
		t.Logf("matrix: dockerd restarted (%s) via %s: serving again without help; %d requests, %d failed while the app was down (%v); longest gap %s",
			took.Round(time.Millisecond), via, got.Requests(), got.Failures(), got.Errors, got.LongestGap.Round(time.Millisecond))
	}
}

// restartDockerd restarts the Docker engine the way this machine runs it:
// through systemd where it does, else by stopping the process and starting
// it again with the same arguments and log. It returns how long it took.
func restartDockerd(t *testing.T) time.Duration {
	t.Helper()
	start := time.Now()
	if exec.Command("systemctl", "is-active", "--quiet", "docker").Run() == nil {
		require.NoError(t, exec.Command("systemctl", "restart", "docker").Run())
		waitDocker(t)
		return time.Since(start)
	}
	out, err := exec.Command("pidof", "dockerd").Output()
	need(t, "a dockerd process to restart", err)
	pid, err := strconv.Atoi(strings.Fields(string(out))[0])
	require.NoError(t, err)
	cmdline, err := os.ReadFile("/proc/" + Itoa(pid) + "/cmdline")
	need(t, "dockerd's command line (root)", err)
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	logPath, _ := os.Readlink("/proc/" + Itoa(pid) + "/fd/1")
	if !strings.HasPrefix(logPath, "/") {
		logPath = os.DevNull
	}

	require.NoError(t, syscall.Kill(pid, syscall.SIGTERM))
	WaitFor(t, 2*time.Minute, "dockerd to stop", func() bool { return !alive(pid) })
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	require.NoError(t, err)
	defer logf.Close()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // it outlives the test, as it did before
	require.NoError(t, cmd.Start(), "start %v again", args)
	go func() { _ = cmd.Wait() }()
	waitDocker(t)
	return time.Since(start)
}

func waitDocker(t *testing.T) {
	t.Helper()
	api, err := client.New(client.FromEnv)
	require.NoError(t, err)
	defer api.Close()
	WaitFor(t, 2*time.Minute, "the Docker engine to answer again", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := api.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true})
		return err == nil
	})
}
