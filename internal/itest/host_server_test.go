package itest

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/deploy"
	"github.com/handoff-dev/handoff/internal/testhost"
)

// serverCaddy is the site's Caddy on a test server: a process in the server's network
// namespace, its admin API on the namespace's loopback (only the server's handoff
// reaches it), its site on the server's address, its Caddyfile in a directory the
// server's user owns, since the server's handoff keeps it in step.
type serverCaddy struct {
	Admin string // 127.0.0.1:port inside the namespace, for handoff.yml
	File  string // the Caddyfile
	URL   string // http://<server IP>:port, from the host
	cmd   *exec.Cmd
	done  chan struct{}
	logs  *syncBuffer
}

// Inside a fresh namespace any port is free but sshd's and the engine's published ones
// (32768 and up).
const serverCaddyAdminPort, serverCaddySitePort = 2019, 8080

// startServerCaddy starts Caddy in srv's namespace, proxying the site to nothing yet (the
// first deploy puts its release there), and waits until the site listens. It is stopped
// when t ends.
func startServerCaddy(t *testing.T, srv *testhost.Server) *serverCaddy {
	t.Helper()
	bin := CaddyBinary(t)
	u, err := user.Lookup(srv.User)
	require.NoError(t, err)
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	dir := filepath.Join(srv.Home, "caddy")
	require.NoError(t, os.Mkdir(dir, 0o755))
	require.NoError(t, os.Chown(dir, uid, gid))
	c := &serverCaddy{Admin: "127.0.0.1:" + Itoa(serverCaddyAdminPort), File: filepath.Join(dir, "Caddyfile"),
		URL: "http://" + srv.Addr(serverCaddySitePort), done: make(chan struct{}), logs: &syncBuffer{}}
	caddyfile := fmt.Sprintf(`{
	admin %s
	auto_https off
	servers {
		protocols h1 h2c
	}
}

http://%s:%d, http://%s {
	bind %s
	reverse_proxy 127.0.0.1:9 {
		lb_try_duration 5s
		lb_try_interval 100ms
		stream_close_delay 1m
	}
}
`, c.Admin, SiteHost, serverCaddySitePort, srv.Addr(serverCaddySitePort), srv.IP)
	require.NoError(t, os.WriteFile(c.File, []byte(caddyfile), 0o644))
	require.NoError(t, os.Chown(c.File, uid, gid))
	data := t.TempDir() // Caddy's own files, root's
	c.cmd = srv.Command(bin, "run", "--config", c.File, "--adapter", "caddyfile")
	c.cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+data, "XDG_CONFIG_HOME="+data, "HOME="+data)
	c.cmd.Stdout, c.cmd.Stderr = c.logs, c.logs
	// nsenter execs Caddy: the pid is Caddy's, and it dies with the test binary.
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(t, c.cmd.Start())
	go func() { _ = c.cmd.Wait(); close(c.done) }()
	t.Cleanup(func() {
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.done:
		case <-time.After(10 * time.Second):
			_ = c.cmd.Process.Kill()
			<-c.done
		}
		if t.Failed() {
			t.Logf("server caddy log:\n%s", lastLines(c.logs.String(), 40))
		}
	})
	WaitFor(t, 20*time.Second, "the server's caddy to listen on "+srv.Addr(serverCaddySitePort), func() bool {
		select {
		case <-c.done:
			t.Fatalf("the server's caddy exited at start:\n%s", c.logs.String())
		default:
		}
		conn, err := net.DialTimeout("tcp", srv.Addr(serverCaddySitePort), time.Second)
		if err == nil {
			conn.Close()
		}
		return err == nil
	})
	return c
}

// sshBytes counts, with two iptables rules of the server's namespace (never the host's),
// the bytes of IP packets to and from its sshd: what a command costs on the wire.
type sshBytes struct {
	srv *testhost.Server
	t   *testing.T
}

func countSSHBytes(t *testing.T, srv *testhost.Server) sshBytes {
	srv.Exec(t, "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "22")
	srv.Exec(t, "iptables", "-A", "OUTPUT", "-p", "tcp", "--sport", "22")
	return sshBytes{srv: srv, t: t}
}

// take returns the bytes counted since the last take (to the server, from it) and
// starts again from zero.
func (b sshBytes) take() (in, out int64) {
	return b.chain("INPUT", "dpt:22"), b.chain("OUTPUT", "spt:22")
}

func (b sshBytes) chain(chain, match string) int64 {
	var n int64
	for _, line := range strings.Split(b.srv.Exec(b.t, "iptables", "-L", chain, "-v", "-x", "-n", "-Z"), "\n") {
		if f := strings.Fields(line); len(f) > 2 && strings.Contains(line, match) && !strings.Contains(line, "DROP") {
			v, _ := strconv.ParseInt(f[1], 10, 64)
			n += v
		}
	}
	return n
}

// dropSSH drops every packet to and from the server's port 22 inside its namespace, as a
// network that stops carrying them would: no reset, on either side. The load, on another
// port, goes on. The returned func lets them through again.
func dropSSH(t *testing.T, srv *testhost.Server) (restore func()) {
	t.Helper()
	rules := [][]string{{"INPUT", "-p", "tcp", "--dport", "22", "-j", "DROP"}, {"OUTPUT", "-p", "tcp", "--sport", "22", "-j", "DROP"}}
	for _, r := range rules {
		srv.Exec(t, append([]string{"iptables", "-I"}, r...)...)
	}
	done := false
	restore = func() {
		if !done {
			done = true
			for _, r := range rules {
				srv.Exec(t, append([]string{"iptables", "-D"}, r...)...)
			}
		}
	}
	t.Cleanup(restore)
	return restore
}

// stepsSpan is the time from a deploy's first progress line to its last ("15:04:05.000 ..."),
// what the deploy itself took on the server, without connecting or starting handoff.
func stepsSpan(out string) time.Duration {
	var first, last time.Time
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if at, err := time.Parse("15:04:05.000", f[0]); err == nil {
			if first.IsZero() {
				first = at
			}
			last = at
		}
	}
	return last.Sub(first)
}

// serverHistory reads the server's history of service from its state directory (the
// filesystem is shared), without a command over SSH.
func serverHistory(state, service string) []deploy.Record {
	data, err := os.ReadFile(filepath.Join(state, service+".history.json"))
	if err != nil {
		return nil
	}
	var recs []deploy.Record
	if json.Unmarshal(data, &recs) != nil {
		return nil
	}
	return recs
}

// Five deploys from "a laptop" through --host to a server of its own (its address, engine,
// sshd with MaxStartups 3, and its Caddy in front of the site), under the usual load from
// the laptop through that Caddy, fail no request. The second's SSH connection is cut in
// the health wait, the fourth's in the drain, by a network that stops carrying port 22
// (the load's port still carries): the local side notices by its keepalives and says the
// command goes on on the server, the deploy ends succeeded there, and status through
// --host names the release it put live. Each command opens one SSH connection. A server
// whose host key is unknown is refused first; deploys run on the server itself, in turns
// with deploys through --host, give what the SSH hop costs.
func TestHostDeploysToAServerOfItsOwnUnderLoad(t *testing.T) {
	srv := testhost.StartServer(t, testhost.ServerOptions{SSHDConfig: []string{"MaxStartups 3", "MaxSessions 3"}})
	files := testhost.WriteSSHFiles(t, srv)
	// As a user on a flaky link would set it: a dead connection is noticed in ~3 s.
	f, err := os.OpenFile(files.Config, os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteString("  ServerAliveInterval 1\n  ServerAliveCountMax 3\n")
	require.NoError(t, err)
	require.NoError(t, f.Close())
	env := append(files.Env(), "HANDOFF_HOST=")
	bin := Build(t)
	image := "handoff-srv-app:" + randomHex(4) // on the server only: nothing to send
	srv.BuildTestImage(t, image)
	caddy := startServerCaddy(t, srv)
	wire := countSSHBytes(t, srv)

	// The laptop's side: handoff.yml naming the server's Caddy, a state dir on the server.
	work, state := t.TempDir(), filepath.Join(srv.Home, "state")
	s := &Scenario{T: t, Bin: bin, Service: UniqueName(), Dir: work, State: state,
		Caddy: &Caddy{Admin: caddy.Admin, File: caddy.File, URL: caddy.URL}, Client: &http.Client{Timeout: 30 * time.Second}}
	run := func(args ...string) Result {
		t.Helper()
		return HandoffEnv(t, bin, work, state, env, append(args, "--host", srv.URL(), "--state-dir", state)...)
	}
	start := func(args ...string) (*exec.Cmd, *syncBuffer) {
		t.Helper()
		return startHandoff(t, bin, work, env, append(args, "--host", srv.URL(), "--state-dir", state)...)
	}
	waitPhase := func(phase string) {
		t.Helper()
		WaitFor(t, 30*time.Second, "the server's deploy to reach phase "+phase, func() bool {
			h := serverHistory(state, s.Service)
			return len(h) > 0 && h[0].Outcome == deploy.OutcomeRunning && h[0].Phase == phase
		})
	}
	// cutDeploy starts deploy i, drops its SSH connection once it is in phase, and sees
	// the local command say the deploy goes on on the server.
	cutDeploy := func(i int, phase, where string) {
		t.Helper()
		cmd, out := start("deploy")
		waitPhase(phase)
		restore := dropSSH(t, srv)
		cut := time.Now()
		require.Error(t, cmd.Wait(), out.String())
		t.Logf("deploy %d, its connection dropped in %s, noticed here in %s:\n%s", i, where, time.Since(cut).Round(time.Millisecond), out)
		require.Contains(t, out.String(), "the command goes on on the server; see handoff status --host "+srv.URL())
		restore()
	}
	var sent, statusBytes []string // bytes to/from the server
	wantLive := func(name string) {
		t.Helper()
		in, out := wire.take()
		sent = append(sent, fmt.Sprintf("%d/%d", in, out))
		WaitFor(t, time.Minute, "the cut deploy to end on the server", func() bool {
			h := serverHistory(state, s.Service)
			return len(h) > 0 && h[0].Outcome != deploy.OutcomeRunning
		})
		h := serverHistory(state, s.Service)
		require.Equal(t, deploy.OutcomeSucceeded, h[0].Outcome, "the deploy cut off from its connection finished on the server")
		r := run("status", "--json")
		require.Equal(t, 0, r.Code, r.String())
		var st deploy.Status
		require.NoError(t, json.Unmarshal([]byte(r.Stdout), &st), r.Stdout)
		require.NotNil(t, st.Live, r.Stdout)
		require.Equal(t, name, st.Live.Name, "status through --host names the release the cut deploy put live")
		in, out = wire.take()
		statusBytes = append(statusBytes, fmt.Sprintf("%d/%d", in, out))
	}

	// An unknown host key: refused before logging in.
	empty := filepath.Join(t.TempDir(), "known_hosts")
	require.NoError(t, os.WriteFile(empty, nil, 0o600))
	r := HandoffEnv(t, bin, work, state, append(append([]string{}, env...), "HANDOFF_SSH_KNOWN_HOSTS="+empty), "status", "--host", srv.URL())
	require.Equal(t, 1, r.Code, r.String())
	require.Contains(t, r.Stderr, "ssh-keyscan")
	require.Zero(t, srv.SSH.Logins(), "not logged in with an unknown host key")

	s.WriteConfig(Config{Release: "v0", Image: image})
	r = run("deploy")
	require.Equal(t, 0, r.Code, r.String())
	require.Equal(t, "v0", s.Serving())
	in, out := wire.take()
	t.Logf("first deploy through --host (the binary put there): %s, %d bytes to the server, %d back", r.Took, in, out)

	load := StartLoad(t, caddy.URL, SiteHost, LoadOptions{Workers: 4, H2: 2, Posts: 2, Slow: 2, SlowFor: time.Second})
	WaitFor(t, 10*time.Second, "load to flow", func() bool { return load.Snapshot().OK > 100 })
	before := srv.SSH.Connections()
	var took []time.Duration
	for i := 1; i <= 5; i++ {
		release := fmt.Sprintf("v%d", i)
		live := s.Service + "-" + Itoa(i+1)
		switch i {
		case 2: // cut in the health wait
			s.WriteConfig(Config{Release: release, Image: image, Env: map[string]string{"BOOT_DELAY": "4s"}})
			cutDeploy(i, deploy.PhaseHealth, "the health wait")
			wantLive(live)
		case 4: // cut in the drain
			s.WriteConfig(Config{Release: release, Image: image})
			// A request of its own keeps the old release draining.
			held := holdSlowRequest(t, s.Client, caddy.URL+"/slow?early&d=6s")
			cutDeploy(i, deploy.PhaseDrain, "the drain")
			require.NoError(t, <-held, "the request the drain waited for was answered")
			wantLive(live)
		default:
			s.WriteConfig(Config{Release: release, Image: image})
			r := run("deploy")
			require.Equal(t, 0, r.Code, r.String())
			took = append(took, r.Took)
			in, out := wire.take()
			sent = append(sent, fmt.Sprintf("%d/%d", in, out))
		}
		require.Equal(t, release, s.Serving())
		got := load.Snapshot()
		require.Zero(t, got.Failures(), "after deploy %d: %s", i, got)
	}
	conns := srv.SSH.Connections() - before

	// The same deploy run on the server itself, by its user, with the binary --host put there
	// and a copy of the laptop's handoff.yml, in turns with deploys through --host.
	remoteBins, _ := filepath.Glob(filepath.Join(srv.Home, ".cache", "handoff", "bin", "handoff-*"))
	require.Len(t, remoteBins, 1, "the binary --host put on the server")
	there := filepath.Join(srv.Home, "laptop-copy")
	require.NoError(t, os.Mkdir(there, 0o755))
	var viaHost, onServer []string
	for i := 6; i < 12; i += 2 {
		s.WriteConfig(Config{Release: "v" + Itoa(i), Image: image})
		r := run("deploy")
		require.Equal(t, 0, r.Code, r.String())
		viaHost = append(viaHost, fmt.Sprintf("%s (steps %s)", r.Took.Round(time.Millisecond), stepsSpan(r.Stderr)))
		if i == 6 {
			t.Logf("a deploy through --host, as the laptop saw it (%s):\n%s", r.Took, r.Stderr)
		}
		require.Equal(t, "v"+Itoa(i), s.Serving())

		s.WriteConfig(Config{Release: "v" + Itoa(i+1), Image: image})
		yml, err := os.ReadFile(filepath.Join(work, "handoff.yml"))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(there, "handoff.yml"), yml, 0o644))
		cmd := srv.Command("runuser", "-u", srv.User, "--", "env", "-i", "PATH=/usr/bin:/bin", "HOME="+srv.Home, "USER="+srv.User,
			"DOCKER_HOST="+srv.DockerHost, remoteBins[0], "deploy", "--state-dir", state)
		cmd.Dir = there
		t0 := time.Now()
		b, err := cmd.CombinedOutput()
		onServer = append(onServer, fmt.Sprintf("%s (steps %s)", time.Since(t0).Round(time.Millisecond), stepsSpan(string(b))))
		require.NoError(t, err, "deploy on the server itself:\n%s", b)
		require.Equal(t, "v"+Itoa(i+1), s.Serving())
	}

	got := load.Stop()
	t.Logf("5 deploys through --host to a server of its own under load through its Caddy (one cut in the health wait, one in the drain): %d requests, %d failed, %d cut by Caddy's reloads (%s); uncut deploys took %v; SSH bytes to/from the server per deploy %v (the cut ones up to the cut), per status %v; %d SSH connections for %d commands",
		got.Requests(), got.Failures(), got.ReloadCuts(), got, took, sent, statusBytes, conns, 7)
	t.Logf("deploys through --host %v; the same deploys on the server itself %v (steps: its first progress line to its last; the drain waits for the load's slow requests)", viaHost, onServer)
	require.Zero(t, got.Failures(), "%s", got)
	require.Equal(t, 7, conns, "one SSH connection a command: 5 deploys and 2 status")
}
