package remote_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"

	"github.com/handoff-dev/handoff/internal/remote"
	"github.com/handoff-dev/handoff/internal/testhost"
)

// server is a real sshd and a home directory whose ~/.ssh knows it and holds a key it accepts.
type server struct {
	sshd       *testhost.SSHD
	home       string
	key        testhost.Key
	knownHosts string
	opts       remote.Options
	target     remote.Target
}

func newServer(t *testing.T, sshdConfig ...string) *server {
	t.Helper()
	home := t.TempDir()
	key := testhost.NewKey(t, filepath.Join(home, ".ssh"), "id_ed25519", "")
	sshd := testhost.StartSSHD(t, testhost.SSHDOptions{AuthorizedKeys: []ssh.PublicKey{key.Signer.PublicKey()}, Config: sshdConfig})
	s := &server{sshd: sshd, home: home, key: key, knownHosts: filepath.Join(home, ".ssh", "known_hosts")}
	s.writeKnownHosts(t, sshd.KnownHostsLine())
	s.opts = remote.Options{Home: home, SystemConfigPath: os.DevNull, AgentSocket: "none"}
	s.target = remote.Target{Host: sshd.Host, Port: sshd.Port}
	return s
}

func (s *server) writeKnownHosts(t *testing.T, lines ...string) {
	t.Helper()
	if err := os.WriteFile(s.knownHosts, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

func (s *server) writeConfig(t *testing.T, text string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(s.home, ".ssh", "config"), []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

func (s *server) dial(t *testing.T) *remote.Conn {
	t.Helper()
	c, err := remote.Dial(context.Background(), s.target, s.opts)
	if err != nil {
		t.Fatalf("Dial %s: %v\nsshd log:\n%s", s.target, err, s.sshd.Log())
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// run runs cmd and fails t unless it could be run.
func run(t *testing.T, c *remote.Conn, cmd string) (exit int, stdout, stderr string) {
	t.Helper()
	var out, errb strings.Builder
	exit, err := c.Run(context.Background(), cmd, nil, &out, &errb)
	if err != nil {
		t.Fatalf("Run %q: %v", cmd, err)
	}
	return exit, out.String(), errb.String()
}

// serveAgent serves an SSH agent holding keys on a unix socket, as ssh-agent would.
func serveAgent(t *testing.T, keys ...testhost.Key) string {
	t.Helper()
	kr := agent.NewKeyring()
	for _, k := range keys {
		if err := kr.Add(agent.AddedKey{PrivateKey: k.Private}); err != nil {
			t.Fatal(err)
		}
	}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", sock)
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
			go func() {
				defer c.Close()
				agent.ServeAgent(kr, c)
			}()
		}
	}()
	return sock
}

// oneLine fails t when err's message is not a single line.
func oneLine(t *testing.T, err error) {
	t.Helper()
	t.Log(err)
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("error is more than one line:\n%v", err)
	}
}
