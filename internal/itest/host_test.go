package itest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/ssh"

	"github.com/handoff-dev/handoff/internal/deploy"
	"github.com/handoff-dev/handoff/internal/testhost"
)

// viaSSH is a scenario's "server" reached over SSH: a real sshd on a loopback port that
// logs in to this same machine (its Docker engine, its Caddy), and the local SSH setup
// that reaches it: its own key, known_hosts and ssh config, no agent.
type viaSSH struct {
	*Scenario
	sshd  *testhost.SSHD
	URL   string
	env   []string
	trace string // every command handoff sent to the server
	work  string // the service's working directory on the server
}

func newViaSSH(t *testing.T, s *Scenario) *viaSSH {
	t.Helper()
	dir := t.TempDir()
	key := testhost.NewKey(t, dir, "id_ed25519", "")
	// Tight limits: one connection a command, and few sessions on it at once.
	sshd := testhost.StartSSHD(t, testhost.SSHDOptions{AuthorizedKeys: []ssh.PublicKey{key.Signer.PublicKey()},
		Config: []string{"MaxStartups 3", "MaxSessions 3"}})
	knownHosts := filepath.Join(dir, "known_hosts")
	require.NoError(t, os.WriteFile(knownHosts, []byte(sshd.KnownHostsLine()+"\n"), 0o600))
	config := filepath.Join(dir, "ssh_config")
	require.NoError(t, os.WriteFile(config, []byte("Host *\n  IdentityFile "+key.Path+"\n  IdentityAgent none\n"), 0o600))
	root, err := user.Lookup("root")
	require.NoError(t, err)
	v := &viaSSH{Scenario: s, sshd: sshd, URL: fmt.Sprintf("ssh://root@%s:%d", sshd.Host, sshd.Port),
		trace: filepath.Join(dir, "trace"), work: filepath.Join(root.HomeDir, ".cache", "handoff", "work", s.Service)}
	v.env = []string{"HANDOFF_SSH_CONFIG=" + config, "HANDOFF_SSH_KNOWN_HOSTS=" + knownHosts, "HANDOFF_SSH_TRACE=" + v.trace, "HANDOFF_HOST="}
	// The binary the test puts on the server.
	var out strings.Builder
	cmd := exec.Command(s.Bin, "version", "--json")
	cmd.Stdout = &out
	require.NoError(t, cmd.Run())
	var ver struct{ Version string }
	require.NoError(t, json.Unmarshal([]byte(out.String()), &ver))
	// As cli.serverBinary names it.
	name := strings.Trim(regexp.MustCompile(`[^A-Za-z0-9._-]+`).ReplaceAllString(ver.Version, "_"), ".")
	bin := filepath.Join(root.HomeDir, ".cache", "handoff", "bin", "handoff-"+name)
	// A cache: the first command puts it back.
	os.Remove(bin)
	t.Cleanup(func() { os.Remove(bin) })
	t.Cleanup(func() {
		os.RemoveAll(v.work)
		// A command with no handoff.yml yet names its working directory after the local one.
		os.RemoveAll(filepath.Join(filepath.Dir(v.work), filepath.Base(s.Dir)))
	})
	return v
}

// startDeploy starts `handoff deploy --host` in the scenario's directory
// and returns it running, its output gathered; a test that does not wait
// for it has it killed at its end.
func (v *viaSSH) startDeploy(t *testing.T, s *Scenario) (*exec.Cmd, *syncBuffer) {
	t.Helper()
	return startHandoff(t, s.Bin, s.Dir, v.env, "deploy", "--host", v.URL, "--state-dir", s.State)
}

// startHandoff starts bin with args in dir, env added, and returns it running, its output
// gathered; a test that does not wait for it has it killed at its end.
func startHandoff(t *testing.T, bin, dir string, env []string, args ...string) (*exec.Cmd, *syncBuffer) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir, cmd.Env = dir, append(os.Environ(), env...)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return cmd, out
}

// Run runs handoff with args through --host, with the server's state dir given.
func (v *viaSSH) Run(args ...string) Result {
	v.T.Helper()
	return HandoffEnv(v.T, v.Bin, v.Dir, v.State, v.env, append(args, "--host", v.URL, "--state-dir", v.State)...)
}

// A deploy from "a laptop" through --host does on the server what a deploy there does,
// over one SSH connection per command; status, history and rollback through --host act on
// the server's; the remote --json and exit status come back as they are; and an env file's
// value is never on a command line sent to the server nor in sshd's log, and is gone from
// the server when the command ends.
func TestHostDeployStatusHistory(t *testing.T) {
	s := NewScenario(t, ScenarioOptions{})
	v := newViaSSH(t, s)
	first := v.Run("version")
	require.Equal(t, 0, first.Code, first.String())
	secret := "tok-" + randomHex(12)
	require.NoError(t, os.WriteFile(filepath.Join(s.Dir, "secret.env"), []byte("SECRET_TOKEN="+secret+"\n"), 0o600))
	s.WriteConfig(Config{Release: "v1", Extra: "env_file: secret.env\n"})

	require.Contains(t, first.Stderr, "put handoff ", "the first command puts this build on the server")
	require.Contains(t, first.Stdout, "handoff ", "the server's handoff says its version")
	r := v.Run("deploy", "--json")
	t.Logf("deploy --host:\n%s", r)
	require.Equal(t, 0, r.Code, r.String())
	var rec deploy.Record
	require.NoError(t, json.Unmarshal([]byte(r.Stdout), &rec), "stdout is the server's --json, nothing else: %q", r.Stdout)
	require.Equal(t, s.Service+"-1", rec.To)
	require.Equal(t, deploy.OutcomeSucceeded, rec.Outcome)
	require.Equal(t, "v1", s.Serving())
	require.Equal(t, 2, v.sshd.Connections(), "one SSH connection a command")
	c, err := s.API.ContainerInspect(t.Context(), s.Service+"-1", clientInspect)
	require.NoError(t, err)
	require.Contains(t, c.Container.Config.Env, "SECRET_TOKEN="+secret, "the env file reached the server's handoff")
	_, err = os.Stat(filepath.Join(v.work, "secret.env"))
	require.ErrorIs(t, err, os.ErrNotExist, "the env file is removed from the server when the command ends")
	_, err = os.Stat(filepath.Join(v.work, "handoff.yml"))
	require.NoError(t, err, "handoff.yml stays in the service's working directory")

	r = v.Run("status", "--json")
	require.Equal(t, 0, r.Code, r.String())
	require.NotContains(t, r.Stderr, "put handoff", "the server has this build now")
	var st deploy.Status
	require.NoError(t, json.Unmarshal([]byte(r.Stdout), &st), r.Stdout)
	require.Equal(t, s.Service+"-1", st.Live.Name)

	r = v.Run("history", "--json")
	require.Equal(t, 0, r.Code, r.String())
	var hist []deploy.Record
	require.NoError(t, json.Unmarshal([]byte(r.Stdout), &hist), r.Stdout)
	require.Len(t, hist, 1)
	require.Equal(t, deploy.OutcomeSucceeded, hist[0].Outcome)
	require.Equal(t, 4, v.sshd.Connections(), "one SSH connection a command")

	// A failing command: the same exit status and message as run on the server itself.
	args := []string{"deploy", "--image", "handoff-no-such-image:" + randomHex(4), "--pull", "never"}
	local := Handoff(t, s.Bin, s.Dir, s.State, args...)
	require.NotEqual(t, 0, local.Code, local.String())
	r = v.Run(args...)
	require.Equal(t, local.Code, r.Code, "remote:\n%s\nlocal:\n%s", r, local)
	require.Contains(t, r.Stderr, lastLine(local.Stderr))

	// What the SSH hop costs a deploy, the binary already there: over --host, then here.
	s.WriteConfig(Config{Release: "v2", Extra: "env_file: secret.env\n"})
	viaHost := v.Run("deploy")
	require.Equal(t, 0, viaHost.Code, viaHost.String())
	s.WriteConfig(Config{Release: "v3", Extra: "env_file: secret.env\n"})
	here := Handoff(t, s.Bin, s.Dir, s.State, "deploy")
	require.Equal(t, 0, here.Code, here.String())
	require.Equal(t, "v3", s.Serving())
	r = v.Run("rollback")
	require.Equal(t, 0, r.Code, r.String())
	require.Equal(t, "v2", s.Serving(), "rollback through --host")
	t.Logf("deploy through --host %s, on the server itself %s; handoff version through --host, putting the binary there, %s", viaHost.Took, here.Took, first.Took)

	trace, err := os.ReadFile(v.trace)
	require.NoError(t, err)
	if os.Getenv("HOSTTRACE") != "" {
		t.Logf("trace:\n%s", trace)
	}
	require.Contains(t, string(trace), "deploy", "the trace holds the commands sent")
	require.NotContains(t, string(trace), secret, "the secret is on no command line sent to the server")
	require.NotContains(t, v.sshd.Log(), secret, "nor in sshd's log")
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// A deploy whose SSH connection drops in the health wait goes on on the server to its
// end; the local command says so, and history through --host shows the outcome.
func TestHostDeployOutlivesADroppedConnection(t *testing.T) {
	s := NewScenario(t, ScenarioOptions{})
	v := newViaSSH(t, s)
	s.Deploy(Config{Release: "v1"})
	s.WriteConfig(Config{Release: "v2", Env: map[string]string{"BOOT_DELAY": "4s"}})

	cmd, out := v.startDeploy(t, s)
	s.waitForPhase("health")
	for _, pid := range v.sshd.Sessions() {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	err := cmd.Wait()
	t.Logf("deploy --host cut off:\n%s", out.String())
	require.Error(t, err, out.String())
	require.Contains(t, out.String(), "the command goes on on the server; see handoff status --host "+v.URL)

	WaitFor(t, time.Minute, "the deploy to end on the server", func() bool {
		h := s.history()
		return len(h) > 0 && h[0].Outcome != deploy.OutcomeRunning
	})
	r := v.Run("history", "--json")
	require.Equal(t, 0, r.Code, r.String())
	var hist []deploy.Record
	require.NoError(t, json.Unmarshal([]byte(r.Stdout), &hist), r.Stdout)
	require.Equal(t, deploy.OutcomeSucceeded, hist[0].Outcome, "the deploy cut off from its connection finished")
	require.Equal(t, s.Service+"-2", hist[0].To)
	require.Equal(t, "v2", s.Serving())
}

// Ctrl-C of a deploy through --host interrupts the server's handoff as Ctrl-C there would:
// the new container is removed, the old one serves, the history says interrupted, and the
// local command exits 130 with the server's last lines.
func TestHostCtrlCInterruptsTheServersDeploy(t *testing.T) {
	s := NewScenario(t, ScenarioOptions{})
	v := newViaSSH(t, s)
	s.Deploy(Config{Release: "v1"})
	s.WriteConfig(Config{Release: "v2", Env: map[string]string{"BOOT_DELAY": "1m"}, StartTimeout: "5m"})
	cmd, out := v.startDeploy(t, s)
	s.waitForPhase("health")
	require.NoError(t, cmd.Process.Signal(syscall.SIGINT))
	_ = cmd.Wait()
	t.Logf("interrupted deploy --host:\n%s", out.String())
	require.Equal(t, 130, cmd.ProcessState.ExitCode(), out.String())
	require.Contains(t, out.String(), "health  failed", "the server's own account of the interrupt is streamed")

	h := s.history()
	require.Equal(t, "interrupted", h[0].Outcome)
	require.Equal(t, map[string]bool{s.Service + "-1": true}, Containers(t, s.API, s.Service))
	require.Equal(t, "v1", s.Serving())
}

// A server whose host key is not in known_hosts is refused before anything is sent, with
// the line to run to add it.
func TestHostUnknownHostKeyIsRefused(t *testing.T) {
	bin := Build(t)
	dir := t.TempDir()
	key := testhost.NewKey(t, dir, "id_ed25519", "")
	sshd := testhost.StartSSHD(t, testhost.SSHDOptions{AuthorizedKeys: []ssh.PublicKey{key.Signer.PublicKey()}})
	knownHosts := filepath.Join(dir, "known_hosts")
	require.NoError(t, os.WriteFile(knownHosts, nil, 0o600))
	config := filepath.Join(dir, "ssh_config")
	require.NoError(t, os.WriteFile(config, []byte("Host *\n  IdentityFile "+key.Path+"\n  IdentityAgent none\n"), 0o600))
	trace := filepath.Join(dir, "trace")
	env := []string{"HANDOFF_SSH_CONFIG=" + config, "HANDOFF_SSH_KNOWN_HOSTS=" + knownHosts, "HANDOFF_SSH_TRACE=" + trace, "HANDOFF_HOST="}
	r := HandoffEnv(t, bin, dir, t.TempDir(), env, "status", "--host", fmt.Sprintf("ssh://root@%s:%d", sshd.Host, sshd.Port))
	t.Log(r)
	require.Equal(t, 1, r.Code, r.String())
	require.Contains(t, r.Stderr, "ssh-keyscan")
	require.Equal(t, 1, strings.Count(r.Stderr, "\n"), "one line: %q", r.Stderr)
	require.Zero(t, sshd.Logins(), "not logged in")
	_, err := os.Stat(trace)
	require.ErrorIs(t, err, os.ErrNotExist, "no command sent")
}

// Five deploys from "a laptop" through --host under the usual load through the server's
// Caddy fail no request; the third one's SSH connection is cut in the drain (a request
// still in flight on the old release) and the deploy still finishes on the server, which
// status through --host then says. Each command opened one connection.
func TestHostDeploysUnderLoad(t *testing.T) {
	s := NewScenario(t, ScenarioOptions{})
	v := newViaSSH(t, s)
	s.Deploy(Config{Release: "v0"})
	load := StartLoad(t, s.Caddy.URL, SiteHost, LoadOptions{Workers: 4, H2: 2, Posts: 2, Slow: 2, SlowFor: time.Second})
	WaitFor(t, 10*time.Second, "load to flow", func() bool { return load.Snapshot().OK > 100 })
	before := v.sshd.Connections()
	var took []time.Duration
	for i := 1; i <= 5; i++ {
		release := fmt.Sprintf("v%d", i)
		s.WriteConfig(Config{Release: release})
		if i != 3 {
			r := v.Run("deploy")
			require.Equal(t, 0, r.Code, r.String())
			took = append(took, r.Took)
		} else {
			// A request of its own keeps the old release draining.
			held := holdSlowRequest(t, s.Client, s.Caddy.URL+"/slow?early&d=4s")
			cmd, out := v.startDeploy(t, s)
			s.waitForPhase(deploy.PhaseDrain)
			for _, pid := range v.sshd.Sessions() {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			require.Error(t, cmd.Wait(), out.String())
			require.Contains(t, out.String(), "the command goes on on the server; see handoff status --host "+v.URL)
			require.NoError(t, <-held, "the request the drain waited for was answered")
			WaitFor(t, time.Minute, "the cut deploy to end on the server", func() bool {
				h := s.history()
				return len(h) > 0 && h[0].Outcome != deploy.OutcomeRunning
			})
			st := v.Run("status")
			require.Equal(t, 0, st.Code, st.String())
			require.Contains(t, st.Stdout, s.Service+"-4", "status through --host names the release the cut deploy put live:\n%s", st.Stdout)
		}
		require.Equal(t, release, s.Serving())
		got := load.Snapshot()
		require.Zero(t, got.Failures(), "after deploy %d: %s", i, got)
	}
	got := load.Stop()
	conns := v.sshd.Connections() - before
	t.Logf("5 deploys through --host under load (one cut in the drain): %d requests, %d failed, %d cut by Caddy's reloads; deploys took %v; %d SSH connections for %d commands", got.Requests(), got.Failures(), got.ReloadCuts(), took, conns, 6)
	require.Zero(t, got.Failures(), "%s", got)
	require.Equal(t, 6, conns, "one SSH connection a command: 5 deploys and a status")
}

// holdSlowRequest starts a GET of url (the test app's /slow?early, whose headers come at
// once) and returns when it is in flight; the channel says how it ended.
func holdSlowRequest(t *testing.T, c *http.Client, url string) <-chan error {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	require.NoError(t, err)
	req.Host = SiteHost
	resp, err := c.Do(req)
	require.NoError(t, err)
	held := make(chan error, 1)
	go func() {
		defer resp.Body.Close()
		_, err := io.Copy(io.Discard, resp.Body)
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		held <- err
	}()
	return held
}
