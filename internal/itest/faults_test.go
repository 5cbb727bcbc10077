package itest

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/moby/client"
	"github.com/stretchr/testify/require"
)

// The fault matrix: each scenario runs under a steady load through Caddy
// and, where it applies, through handoff proxy, and checks that no request
// fails (through Caddy: none that a client retrying as HTTP allows would
// see), that the old or the new release serves at every moment, that the
// next command leaves no orphan container, and that the message is clear.
// Every scenario logs a line starting "matrix:" with its counts.

// faultRuns is how often each kill is repeated: 1 in scripts/test.sh, 5
// under `make test-faults` (HANDOFF_FAULT_RUNS).
func faultRuns(t *testing.T) int {
	if v := os.Getenv("HANDOFF_FAULT_RUNS"); v != "" {
		n, err := strconv.Atoi(v)
		require.NoError(t, err)
		return n
	}
	return 1
}

// matrixLoad is the steady load of every scenario: keep-alive GET and POST,
// a slow request, and a WebSocket.
func matrixLoad(t *testing.T, s *Scenario) *Load {
	t.Helper()
	load := StartLoad(t, s.Caddy.URL, SiteHost, LoadOptions{Workers: 2, Posts: 1, Slow: 1, SlowFor: 1500 * time.Millisecond, WebSockets: 1, WSFor: time.Second})
	WaitFor(t, 10*time.Second, "load to flow", func() bool { return load.Snapshot().OK > 20 })
	return load
}

// report logs the scenario's counts and checks them: no failure, and
// through handoff proxy not even a POST reset.
func report(t *testing.T, s *Scenario, scenario string, got LoadStats) {
	t.Helper()
	via := "caddy"
	if s.Proxy != nil {
		via = "handoff proxy"
	}
	t.Logf("matrix: %s via %s: %d requests (%d GET/h2, %d POST, %d slow, %d WebSockets), %d failed, %d requests cut by a Caddy reload; longest gap %s",
		scenario, via, got.Requests(), got.OK, got.PostOK+got.Post5xx+got.ReloadCuts(), got.SlowOK+got.SlowCut, got.WSOK+got.WSGoingAway+got.WSCut,
		got.Failures(), got.ReloadCuts(), got.LongestGap.Round(time.Millisecond))
	require.Zero(t, got.Failures(), "%s via %s: %s", scenario, via, got)
	if s.Proxy != nil {
		require.Zero(t, got.ReloadCuts(), "%s via handoff proxy: %s", scenario, got)
	}
}

// settled checks what the next command must leave: one running container,
// the proxy pointing at it, a Caddyfile in step.
func (s *Scenario) settled() {
	s.T.Helper()
	st := s.status()
	require.True(s.T, st.Agree, "status: %s", st.Problem)
	require.Empty(s.T, st.Problem)
	require.Equal(s.T, []string{st.Live.Name}, s.Running(), "only the live release runs")
	for _, a := range st.Advice {
		require.NotContains(s.T, a, "out of step")
	}
}

// kill -9 of `handoff deploy` at each phase; the next deploy repairs what
// it left and says what it did, and status says what happened meanwhile.
func TestFaultKillDeployAtEachPhase(t *testing.T) {
	kills := []struct {
		name  string
		phase string        // the recorded phase to wait for
		after time.Duration // then wait this long
	}{
		{"after start", "start", 300 * time.Millisecond},
		{"during the health wait", "health", 200 * time.Millisecond},
		{"right after the switch", "drain", 0},
		{"during the drain", "drain", 500 * time.Millisecond},
		{"during retire", "retire", 300 * time.Millisecond},
	}
	for _, via := range []string{"caddy", "handoff proxy"} {
		t.Run(via, func(t *testing.T) {
			s := NewScenario(t, ScenarioOptions{HandoffProxy: via == "handoff proxy"})
			env := map[string]string{"BOOT_DELAY": "700ms", "STOP_DELAY": "1s", "DRAIN_GRACE": "0s"}
			cfg := func(rel string) Config { return Config{Release: rel, Env: env, NoCaddyfile: s.Proxy != nil} }
			s.Deploy(cfg("r0"))
			load := matrixLoad(t, s)
			n := 0
			for _, k := range kills {
				for range faultRuns(t) {
					n++
					s.WriteConfig(cfg("k" + Itoa(n)))
					s.KillDeployAt(k.phase, k.after)
					st := s.Run("status")
					require.Equal(t, 0, st.Code, st.String())
					if p, o := s.historyPhase(); o == "running" {
						require.Contains(t, st.Stdout, "was interrupted in phase "+p, "%s: status says what happened", k.name)
					}
					n++
					r := s.Deploy(cfg("k" + Itoa(n)))
					require.Equal(t, "k"+Itoa(n), s.Serving())
					if strings.Contains(r.Stderr, "was interrupted in phase") {
						require.Regexp(t, `(removing|stopping) `+s.Service+`-\d+|leaving`, r.Stderr, "%s: the repair says what it did", k.name)
					}
					s.settled()
				}
			}
			report(t, s, "kill -9 of handoff deploy at each phase ×"+Itoa(faultRuns(t)), load.Stop())
		})
	}
}

// The live container crashes (its restart policy brings it back) or is
// restarted by hand: it comes back on the same address and serves with
// nobody's help.
func TestFaultLiveContainerRestarts(t *testing.T) {
	for _, via := range []string{"caddy", "handoff proxy"} {
		t.Run(via, func(t *testing.T) {
			s := NewScenario(t, ScenarioOptions{HandoffProxy: via == "handoff proxy"})
			s.Deploy(Config{Release: "v1", NoCaddyfile: s.Proxy != nil})
			s.Deploy(Config{Release: "v2", NoCaddyfile: s.Proxy != nil})
			name := s.status().Live.Name
			load := StartLoad(t, s.Caddy.URL, SiteHost, LoadOptions{Workers: 2})
			WaitFor(t, 10*time.Second, "load to flow", func() bool { return load.Snapshot().OK > 20 })

			KillContainerProcess(t, s.API, name)
			WaitFor(t, 30*time.Second, "the restart policy to bring it back", func() bool {
				res, err := s.API.ContainerInspect(context.Background(), name, client.ContainerInspectOptions{})
				return err == nil && res.Container.RestartCount > 0 && res.Container.State.Running
			})
			s.waitServing("v2")
			s.settled()
			_, err := s.API.ContainerRestart(context.Background(), name, client.ContainerRestartOptions{})
			require.NoError(t, err)
			s.waitServing("v2")
			s.settled()
			report(t, s, "live container killed (restart policy) and docker restart", load.Stop())
		})
	}
}

// Caddy misbehaves: it answers errors, rejects the new config, restarts in
// the middle of a deploy, or its reply is held while handoff is killed.
func TestFaultCaddy(t *testing.T) {
	s := NewScenario(t, ScenarioOptions{})
	s.Deploy(Config{Release: "v1"})
	fa := NewFaultyAdmin(t, s.Caddy)
	load := matrixLoad(t, s)
	caddyfile, _ := os.ReadFile(s.Caddy.File)

	t.Run("unreachable", func(t *testing.T) {
		s.WriteConfig(Config{Release: "x", Admin: "127.0.0.1:" + Itoa(FreePort(t))})
		r := s.Run("deploy")
		require.Equal(t, 5, r.Code, r.String())
		require.Contains(t, r.Stderr, "proxy admin API unreachable")
		require.Equal(t, []string{s.Service + "-1"}, s.Running(), "nothing started")
	})
	t.Run("answering errors", func(t *testing.T) {
		fa.Set(FaultError)
		defer fa.Set(FaultNone)
		s.WriteConfig(Config{Release: "x", Admin: fa.Addr})
		r := s.Run("deploy")
		require.Equal(t, 5, r.Code, r.String())
		require.Contains(t, r.Stderr, "500 injected: internal error")
		require.Equal(t, []string{s.Service + "-1"}, s.Running(), "nothing started")
	})
	t.Run("rejecting the new config", func(t *testing.T) {
		fa.Set(FaultRejectPatch)
		defer fa.Set(FaultNone)
		s.WriteConfig(Config{Release: "x", Admin: fa.Addr})
		r := s.Run("deploy")
		require.Equal(t, 5, r.Code, r.String())
		require.Contains(t, r.Stderr, "400 loading new config: injected: the new config was rejected")
		require.Contains(t, r.Stderr, s.Service+"-1 still serving")
		require.Equal(t, "v1", s.Serving())
		s.settled()
		now, _ := os.ReadFile(s.Caddy.File)
		require.Equal(t, string(caddyfile), string(now), "the Caddyfile is untouched")
	})
	t.Run("killed while Caddy's reply is held", func(t *testing.T) {
		fa.Set(FaultHoldReply)
		s.WriteConfig(Config{Release: "v3", Admin: fa.Addr})
		cmd, _ := s.Start("deploy")
		WaitFor(t, 30*time.Second, "the PATCH to reach Caddy", func() bool { return fa.Patched() == 1 })
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		fa.Release()
		fa.Set(FaultNone)
		require.Equal(t, "v3", s.Serving(), "Caddy switched; the Caddyfile did not follow")
		r := s.Deploy(Config{Release: "v4"})
		require.Contains(t, r.Stderr, "an interrupted switch); it now names")
		require.Contains(t, r.Stderr, "an earlier release left running after its switch")
		s.settled()
	})
	report(t, s, "Caddy unreachable, answering errors, rejecting the config, killed while its reply is held", load.Stop())

	// Caddy's own restart refuses connections while no Caddy runs: those
	// failures are Caddy's, not the deploy's, and counted apart.
	t.Run("restarted in the middle of a deploy", func(t *testing.T) {
		load := StartLoad(t, s.Caddy.URL, SiteHost, LoadOptions{Workers: 2})
		s.WriteConfig(Config{Release: "v5", Env: map[string]string{"BOOT_DELAY": "2s"}})
		cmd, out := s.Start("deploy")
		WaitFor(t, 30*time.Second, "the health wait", func() bool { p, _ := s.historyPhase(); return p == "health" })
		before, start := load.Snapshot(), time.Now()
		s.Caddy.Restart()
		down := time.Since(start)
		// Back once the load's own requests succeed again, every loop's:
		// one loop may still be on a refused dial of its own as another's
		// first answers come (seen once: 57 refused, the last one after 20
		// answers). The deploy's switch comes seconds later.
		WaitFor(t, 10*time.Second, "the load to get answers again", func() bool { return load.Snapshot().OK > before.OK+20 })
		time.Sleep(200 * time.Millisecond)
		during := load.Snapshot()
		require.NoError(t, cmd.Wait(), out.String())
		require.Equal(t, "v5", s.Serving())
		s.settled()
		got := load.Stop()
		require.Equal(t, during.Failures(), got.Failures(), "no failure after Caddy came back: %s", got)
		t.Logf("matrix: Caddy restarted during a deploy's health wait: the deploy went on; %d of %d GETs failed while Caddy itself was down (%s), none after", during.Failures()-before.Failures(), got.Requests(), down.Round(time.Millisecond))
	})
}

// Docker refuses: the image is missing, a container of the name exists,
// no port is free, the state directory's disk is full. Each is one clear
// line, a non-zero exit, and the old release serving untouched.
func TestFaultDocker(t *testing.T) {
	s := NewScenario(t, ScenarioOptions{})
	s.Deploy(Config{Release: "v1"})
	load := matrixLoad(t, s)
	check := func(t *testing.T, r Result, code int, msg string) {
		t.Helper()
		require.Equal(t, code, r.Code, r.String())
		require.Contains(t, r.Stderr, msg)
		require.Equal(t, "v1", s.Serving())
		require.Equal(t, []string{s.Service + "-1"}, s.Running())
	}
	t.Run("image missing", func(t *testing.T) {
		s.WriteConfig(Config{Release: "x", Image: "handoff-no-such-image:1"})
		check(t, s.Run("deploy"), 6, `"handoff-no-such-image:1" is not on this Docker host`)
	})
	t.Run("name conflict", func(t *testing.T) {
		AppContainer(t, s.API, s.Service+"-2", 0, "RELEASE=foreign")
		s.WriteConfig(Config{Release: "x"})
		check(t, s.Run("deploy"), 1, "create "+s.Service+"-2: a container of that name exists and handoff did not expect it")
	})
	t.Run("no free port", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		defer ln.Close()
		port := Itoa(ln.Addr().(*net.TCPAddr).Port)
		s.WriteConfig(Config{Release: "x", Extra: "host_ports: " + port + "-" + port + "\n"})
		check(t, s.Run("deploy"), 1, "no free host port in "+port+"-"+port+" (host_ports)")
	})
	t.Run("disk full for the state directory", func(t *testing.T) {
		full := t.TempDir()
		need(t, "mount a small tmpfs (root)", exec.Command("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", full).Run())
		t.Cleanup(func() { _ = exec.Command("umount", full).Run() })
		for _, name := range []string{s.Service + ".history.json", s.Service + ".lock", s.Service + ".lock.owner"} {
			data, _ := os.ReadFile(filepath.Join(s.State, name))
			require.NoError(t, os.WriteFile(filepath.Join(full, name), data, 0o644))
		}
		filler, _ := os.Create(filepath.Join(full, "filler"))
		_, _ = filler.Write(make([]byte, 1<<20)) // until ENOSPC
		filler.Close()
		s.WriteConfig(Config{Release: "x"})
		check(t, Handoff(t, s.Bin, s.Dir, full, "deploy"), 1, "no space left on device (nothing was changed for it)")
	})
	s.settled()
	report(t, s, "Docker errors (image missing, name conflict, no free port, disk full)", load.Stop())
}

// The new container says it is ready before the app can serve: with a
// health check of the page users get, nobody sees it warm up; with a
// health path that lies, users see the warm-up (the README says so).
// The other ways a new container fails are rows of
// TestFailedDeployLeavesOldServing.
func TestFaultReadyBeforeItServes(t *testing.T) {
	s := NewScenario(t, ScenarioOptions{})
	s.Deploy(Config{Release: "v1"})
	load := matrixLoad(t, s)
	s.Deploy(Config{Release: "v2", HealthPath: "/", Env: map[string]string{"READY_DELAY": "1500ms"}})
	require.Equal(t, "v2", s.Serving())
	report(t, s, "new container ready before it serves, checked on /", load.Stop())

	// handoff can only trust the check it is given.
	lying := StartLoad(t, s.Caddy.URL, SiteHost, LoadOptions{Workers: 2})
	s.Deploy(Config{Release: "v3", Env: map[string]string{"READY_DELAY": "1500ms"}})
	WaitFor(t, 10*time.Second, "the warm-up to end", func() bool {
		code, _, err := Get(s.Client, s.Caddy.URL+"/", SiteHost)
		return err == nil && code == 200
	})
	got := lying.Stop()
	t.Logf("matrix: a health path that answers before the app can serve: %d of %d GETs got 503 during the app's 1.5 s warm-up", got.Status5xx, got.Requests())
	require.Positive(t, got.Status5xx, "the lying check let the warm-up through: %s", got)
}

// handoff proxy killed with kill -9 under load and started again as
// systemd's Restart=on-failure would (after 100 ms); and restarted with
// SIGHUP in the middle of deploys.
func TestFaultHandoffProxy(t *testing.T) {
	s := NewScenario(t, ScenarioOptions{HandoffProxy: true})
	s.Deploy(Config{Release: "v1", NoCaddyfile: true})

	t.Run("SIGHUP during a deploy", func(t *testing.T) {
		load := matrixLoad(t, s)
		for i, phase := range []string{"health", "drain"} {
			s.WriteConfig(Config{Release: "h" + Itoa(i), NoCaddyfile: true, Env: map[string]string{"BOOT_DELAY": "700ms"}})
			cmd, out := s.Start("deploy")
			WaitFor(t, 30*time.Second, "phase "+phase, func() bool { p, _ := s.historyPhase(); return p == phase })
			s.Proxy.Restart()
			require.NoError(t, cmd.Wait(), out.String())
			require.Equal(t, "h"+Itoa(i), s.Serving())
			s.settled()
		}
		report(t, s, "SIGHUP of handoff proxy during a deploy's health wait and drain", load.Stop())
	})
	t.Run("kill -9", func(t *testing.T) {
		load := StartLoad(t, s.Caddy.URL, SiteHost, LoadOptions{Workers: 2, Posts: 1})
		WaitFor(t, 10*time.Second, "load to flow", func() bool { return load.Snapshot().OK > 20 })
		before := s.status()
		killed := time.Now()
		s.Proxy.Kill()
		time.Sleep(100 * time.Millisecond) // systemd's RestartSec default
		s.Proxy.StartAgain()
		s.waitServing("h1")
		back := time.Since(killed)
		after := s.status()
		require.True(t, after.Agree, after.Problem)
		require.Equal(t, before.Upstream, after.Upstream, "the state file brought the service back where it was")
		got := load.Stop()
		t.Logf("matrix: handoff proxy killed with kill -9 and restarted 100 ms later: serving again after %s; %d requests, %d failed (%s)", back.Round(time.Millisecond), got.Requests(), got.Failures()+got.ReloadCuts(), got.Errors)
	})
}
