package remote_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/handoff-dev/handoff/internal/remote"
	"github.com/handoff-dev/handoff/internal/testhost"
)

func TestRunOnKnownHost(t *testing.T) {
	s := newServer(t)
	c := s.dial(t)
	var out, errb strings.Builder
	exit, err := c.Run(context.Background(), "cat; echo to-stderr >&2; exit 3", strings.NewReader("from stdin\n"), &out, &errb)
	if err != nil || exit != 3 {
		t.Fatalf("Run = %d, %v; want exit 3", exit, err)
	}
	if out.String() != "from stdin\n" || errb.String() != "to-stderr\n" {
		t.Errorf("stdout %q, stderr %q; want stdin echoed and to-stderr", out.String(), errb.String())
	}
	if exit, _, _ := run(t, c, "true"); exit != 0 {
		t.Errorf("true exited %d", exit)
	}
	// Killed by a signal: 128 + its number, as a local shell says.
	if exit, _, _ := run(t, c, "kill -TERM $$"); exit != 128+15 {
		t.Errorf("a command killed by SIGTERM exited %d; want 143", exit)
	}
}

func TestUnknownHostRefused(t *testing.T) {
	s := newServer(t)
	os.Remove(s.knownHosts)
	_, err := remote.Dial(context.Background(), s.target, s.opts)
	if !errors.Is(err, remote.ErrUnknownHost) {
		t.Fatalf("Dial to a host not in known_hosts: %v; want ErrUnknownHost", err)
	}
	oneLine(t, err)
	line := fmt.Sprintf("ssh-keyscan -p %d %s >> %s", s.sshd.Port, s.sshd.Host, s.knownHosts)
	for _, want := range []string{line, ssh.FingerprintSHA256(s.sshd.HostKey), "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if n := s.sshd.Logins(); n != 0 {
		t.Errorf("sshd saw %d logins; the client must stop before it logs in", n)
	}
	// The line it gives is the one that works.
	if out, err := exec.Command("sh", "-c", line).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", line, err, out)
	}
	s.dial(t)
}

func TestChangedHostKeyRefused(t *testing.T) {
	s := newServer(t)
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	other, _ := ssh.NewPublicKey(pub)
	s.writeKnownHosts(t, testhost.KnownHostsLine(s.sshd.Host, s.sshd.Port, other))
	_, err := remote.Dial(context.Background(), s.target, s.opts)
	if !errors.Is(err, remote.ErrHostKeyChanged) {
		t.Fatalf("Dial to a host whose key changed: %v; want ErrHostKeyChanged", err)
	}
	oneLine(t, err)
	for _, want := range []string{"man-in-the-middle", ssh.FingerprintSHA256(s.sshd.HostKey), ssh.FingerprintSHA256(other), s.knownHosts + ":1", "ssh-keygen -R"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if n := s.sshd.Logins(); n != 0 {
		t.Errorf("sshd saw %d logins; the client must stop before it logs in", n)
	}
}

// A server with several host keys, of which known_hosts has one: that one is asked for,
// not taken for a changed key.
func TestOneOfSeveralHostKeysKnown(t *testing.T) {
	s := newServer(t)
	sshd := testhost.StartSSHD(t, testhost.SSHDOptions{AuthorizedKeys: []ssh.PublicKey{s.key.Signer.PublicKey()}, ECDSAHostKey: true})
	s.target = remote.Target{Host: sshd.Host, Port: sshd.Port}
	for _, known := range sshd.HostKeys {
		s.writeKnownHosts(t, testhost.KnownHostsLine(sshd.Host, sshd.Port, known))
		c, err := remote.Dial(context.Background(), s.target, s.opts)
		if err != nil {
			t.Fatalf("Dial with only the %s key known: %v", known.Type(), err)
		}
		c.Close()
	}
}

// The agent's key is the one that logs in, with no key file at all.
func TestAgentAuth(t *testing.T) {
	s := newServer(t)
	os.Remove(s.key.Path)
	s.opts.AgentSocket = serveAgent(t, s.key)
	c := s.dial(t)
	if exit, out, _ := run(t, c, "echo hi"); exit != 0 || out != "hi\n" {
		t.Errorf("Run = %d %q", exit, out)
	}
	if want := "ED25519 " + ssh.FingerprintSHA256(s.key.Signer.PublicKey()); !strings.Contains(s.sshd.Log(), want) {
		t.Errorf("sshd log does not show the agent's key %s accepted:\n%s", want, s.sshd.Log())
	}
}

func TestKeyFileAuth(t *testing.T) {
	s := newServer(t)
	s.dial(t)
	if want := "ED25519 " + ssh.FingerprintSHA256(s.key.Signer.PublicKey()); !strings.Contains(s.sshd.Log(), "Accepted publickey") || !strings.Contains(s.sshd.Log(), want) {
		t.Errorf("sshd log does not show the key file's key %s accepted:\n%s", want, s.sshd.Log())
	}
}

// A passphrase-protected key is used through the agent; without one, Dial says to ssh-add it.
func TestLockedKey(t *testing.T) {
	s := newServer(t)
	locked := testhost.NewKey(t, filepath.Join(s.home, ".ssh"), "id_ed25519", "correct horse")
	os.WriteFile(filepath.Join(s.sshd.Dir, "authorized_keys"), ssh.MarshalAuthorizedKey(locked.Signer.PublicKey()), 0o644)

	_, err := remote.Dial(context.Background(), s.target, s.opts)
	if !errors.Is(err, remote.ErrKeyLocked) || !strings.Contains(err.Error(), "ssh-add "+locked.Path) {
		t.Fatalf("Dial with only a locked key: %v; want ErrKeyLocked saying ssh-add %s", err, locked.Path)
	}
	oneLine(t, err)

	s.opts.AgentSocket = serveAgent(t, locked)
	s.dial(t)
}

func TestKeyNotAuthorized(t *testing.T) {
	s := newServer(t)
	os.WriteFile(filepath.Join(s.sshd.Dir, "authorized_keys"), nil, 0o644)
	_, err := remote.Dial(context.Background(), s.target, s.opts)
	if !errors.Is(err, remote.ErrAuth) || !strings.Contains(err.Error(), "authorized_keys") {
		t.Fatalf("Dial with a key the server does not know: %v; want ErrAuth", err)
	}
	oneLine(t, err)
}

// An alias from ~/.ssh/config brings its own host name, port, user and key.
func TestSSHConfigAlias(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("logs in as nobody, which only root's sshd can")
	}
	s := newServer(t)
	os.Rename(s.key.Path, filepath.Join(s.home, ".ssh", "prod_key"))
	s.writeConfig(t, fmt.Sprintf("Host prod\n  HostName %s\n  Port %d\n  User nobody\n  IdentityFile ~/.ssh/prod_key\n", s.sshd.Host, s.sshd.Port))
	s.target = remote.Target{Host: "prod"}
	c := s.dial(t)
	if !strings.Contains(s.sshd.Log(), "Accepted publickey for nobody") {
		t.Errorf("sshd log shows no login as nobody:\n%s", s.sshd.Log())
	}
	if got := c.String(); got != fmt.Sprintf("nobody@%s (prod)", s.sshd.Addr()) {
		t.Errorf("Conn names itself %q", got)
	}
}

// The server is reached through the jump host's connection: with forwarding off there, it is not.
func TestProxyJump(t *testing.T) {
	s := newServer(t)
	jump := testhost.StartSSHD(t, testhost.SSHDOptions{AuthorizedKeys: []ssh.PublicKey{s.key.Signer.PublicKey()}})
	closed := testhost.StartSSHD(t, testhost.SSHDOptions{AuthorizedKeys: []ssh.PublicKey{s.key.Signer.PublicKey()}, Config: []string{"AllowTcpForwarding no"}})
	s.writeKnownHosts(t, s.sshd.KnownHostsLine(), jump.KnownHostsLine(), closed.KnownHostsLine())
	s.writeConfig(t, fmt.Sprintf(`Host app
  HostName %s
  Port %d
  ProxyJump jump
Host app-via-closed
  HostName %s
  Port %d
  ProxyJump %s:%d
Host jump
  HostName %s
  Port %d
`, s.sshd.Host, s.sshd.Port, s.sshd.Host, s.sshd.Port, closed.Host, closed.Port, jump.Host, jump.Port))

	s.target = remote.Target{Host: "app"}
	c := s.dial(t)
	_, out, _ := run(t, c, "echo $SSH_CONNECTION")
	if jump.Logins() != 1 || s.sshd.Logins() != 1 {
		t.Errorf("logins: jump host %d, server %d; want 1 and 1", jump.Logins(), s.sshd.Logins())
	}
	if !strings.Contains(out, fmt.Sprintf(" %s %d", s.sshd.Host, s.sshd.Port)) {
		t.Errorf("SSH_CONNECTION on the server = %q", out)
	}

	_, err := remote.Dial(context.Background(), remote.Target{Host: "app-via-closed"}, s.opts)
	if !errors.Is(err, remote.ErrUnreachable) || !strings.Contains(err.Error(), "through jump host") {
		t.Fatalf("Dial through a jump host that forwards nothing: %v; want ErrUnreachable through jump host", err)
	}
	oneLine(t, err)
	if s.sshd.Logins() != 1 {
		t.Errorf("server logins %d; want still 1", s.sshd.Logins())
	}
}

// A server that takes the TCP connection and never speaks SSH: one line naming it, when ctx ends.
func TestNoAnswer(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	home := t.TempDir()
	testhost.NewKey(t, filepath.Join(home, ".ssh"), "id_ed25519", "")
	opts := remote.Options{Home: home, SystemConfigPath: os.DevNull, AgentSocket: "none"}
	port := l.Addr().(*net.TCPAddr).Port

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err = remote.Dial(ctx, remote.Target{Host: "127.0.0.1", Port: port}, opts)
	if !errors.Is(err, remote.ErrUnreachable) || !strings.Contains(err.Error(), fmt.Sprintf("127.0.0.1:%d", port)) {
		t.Fatalf("Dial to a silent server: %v; want ErrUnreachable naming 127.0.0.1:%d", err, port)
	}
	oneLine(t, err)

	l.Close()
	_, err = remote.Dial(context.Background(), remote.Target{Host: "127.0.0.1", Port: port}, opts)
	if !errors.Is(err, remote.ErrUnreachable) || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("Dial to a closed port: %v; want ErrUnreachable, connection refused", err)
	}
	oneLine(t, err)
}
