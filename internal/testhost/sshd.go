package testhost

import (
	"cmp"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// SSHDPath is where Debian's openssh-server puts the daemon.
const SSHDPath = "/usr/sbin/sshd"

// SSHDOptions say how a test's sshd differs from the default one.
type SSHDOptions struct {
	// AuthorizedKeys may log in, as any user.
	AuthorizedKeys []ssh.PublicKey
	// Config lines come before the harness's own, so they win (sshd takes a keyword's
	// first value): "MaxStartups 3", "AllowTcpForwarding no". No Match blocks.
	Config []string
	// ListenIP is the address to listen on; default 127.0.0.1.
	ListenIP string
	// NetNS is the network namespace (ip netns) to run sshd in, ListenIP one of its
	// addresses; sshd listens on port 22 there.
	NetNS string
	// ECDSAHostKey gives the server an ECDSA host key beside its Ed25519 one, as
	// Debian's servers have.
	ECDSAHostKey bool
}

// SSHD is a running OpenSSH server, a child of the test, with its own host key, config,
// authorized_keys and log in a temporary directory. It is stopped and removed when the
// test ends.
type SSHD struct {
	Host    string // the IP it listens on
	Port    int
	Dir     string
	HostKey ssh.PublicKey // the Ed25519 one
	// HostKeys are all its host keys, HostKey first.
	HostKeys []ssh.PublicKey
	LogPath  string
	cmd      *exec.Cmd
}

// RequireSSHD makes sure sshd is installed (scripts/install-sshd.sh where it is missing)
// and returns its path; it skips t when sshd cannot be had, unless integration tests are
// required.
func RequireSSHD(t testing.TB) string {
	t.Helper()
	if _, err := os.Stat(SSHDPath); err != nil {
		if os.Geteuid() != 0 {
			unavailable(t, "sshd: %s missing and not root to install it: run scripts/install-sshd.sh", SSHDPath)
		}
		if out, err := install("install-sshd.sh"); err != nil {
			unavailable(t, "sshd: scripts/install-sshd.sh failed: %v: %s", err, strings.TrimSpace(string(out)))
		}
	}
	if _, err := os.Stat(SSHDPath); err != nil {
		unavailable(t, "sshd: %s missing after scripts/install-sshd.sh", SSHDPath)
	}
	return SSHDPath
}

// StartSSHD starts an sshd for t and waits until it listens.
func StartSSHD(t testing.TB, opts SSHDOptions) *SSHD {
	t.Helper()
	bin := RequireSSHD(t)
	if os.Geteuid() == 0 {
		// sshd refuses to start without its privilege separation directory.
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			t.Fatalf("sshd: %v", err)
		}
	}
	dir := t.TempDir()
	// Other users (the tests log in as nobody too) must read authorized_keys.
	readableByAll(dir)
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	keyPath := filepath.Join(dir, "ssh_host_ed25519_key")
	writeKey(t, keyPath, priv, "")
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	keyPaths, hostKeys := []string{keyPath}, []ssh.PublicKey{signer.PublicKey()}
	if opts.ECDSAHostKey {
		ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, "ssh_host_ecdsa_key")
		writeKey(t, p, ec, "")
		pub, err := ssh.NewPublicKey(&ec.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		keyPaths, hostKeys = append(keyPaths, p), append(hostKeys, pub)
	}
	var ak strings.Builder
	for _, k := range opts.AuthorizedKeys {
		ak.Write(ssh.MarshalAuthorizedKey(k))
	}
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), []byte(ak.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	s := &SSHD{Host: cmp.Or(opts.ListenIP, "127.0.0.1"), Dir: dir, HostKey: signer.PublicKey(), HostKeys: hostKeys,
		LogPath: filepath.Join(dir, "sshd.log")}
	var lastErr error
	for try := 0; try < 5; try++ {
		if s.Port = 22; opts.NetNS == "" {
			s.Port = freePort(t, s.Host)
		}
		if lastErr = s.start(t, bin, keyPaths, opts); lastErr == nil {
			return s
		}
	}
	t.Fatalf("sshd: %v", lastErr)
	return nil
}

func (s *SSHD) start(t testing.TB, bin string, keyPaths []string, opts SSHDOptions) error {
	t.Helper()
	lines := append([]string{}, opts.Config...)
	lines = append(lines,
		"ListenAddress "+net.JoinHostPort(s.Host, strconv.Itoa(s.Port)),
		"PidFile none",
		"AuthorizedKeysFile "+filepath.Join(s.Dir, "authorized_keys"),
		"PubkeyAuthentication yes",
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"UsePAM no",
		"StrictModes no",
		"PermitRootLogin prohibit-password",
		"AllowTcpForwarding yes",
		"AllowStreamLocalForwarding yes",
		"LogLevel VERBOSE",
	)
	for _, k := range keyPaths {
		lines = append(lines, "HostKey "+k)
	}
	conf := filepath.Join(s.Dir, "sshd_config")
	if err := os.WriteFile(conf, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Remove(s.LogPath)
	cmd := exec.Command(bin, "-D", "-f", conf, "-E", s.LogPath)
	if opts.NetNS != "" {
		cmd = inNetNS(opts.NetNS, bin, "-D", "-f", conf, "-E", s.LogPath)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if strings.Contains(s.Log(), "Server listening on") {
			break
		}
		select {
		case err := <-exited:
			return fmt.Errorf("exited at start: %v: %s %s", err, strings.TrimSpace(out.String()), strings.TrimSpace(s.Log()))
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
			return errors.New("did not listen within 10s: " + s.Log())
		}
	}
	s.cmd = cmd
	t.Cleanup(func() {
		// The children that serve connections run in sessions of their own: end them
		// too, then the listener.
		for _, pid := range children(cmd.Process.Pid) {
			syscall.Kill(pid, syscall.SIGCONT)
			syscall.Kill(pid, syscall.SIGKILL)
		}
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	})
	return nil
}

// readableByAll opens dir and its parents up to the temporary directory to every user
// (t.TempDir makes them 0700), for a login user other than root.
func readableByAll(dir string) {
	for d := dir; strings.HasPrefix(d, os.TempDir()+"/"); d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
}

// Addr is host:port.
func (s *SSHD) Addr() string { return net.JoinHostPort(s.Host, strconv.Itoa(s.Port)) }

// KnownHostsLine is the server's line for a known_hosts file.
func (s *SSHD) KnownHostsLine() string {
	return KnownHostsLine(s.Host, s.Port, s.HostKey)
}

// KnownHostsLine is a known_hosts line saying key is host:port's.
func KnownHostsLine(host string, port int, key ssh.PublicKey) string {
	name := host
	if port != 22 {
		name = "[" + host + "]:" + strconv.Itoa(port)
	}
	return name + " " + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key)))
}

// Log is what sshd has logged so far (LogLevel VERBOSE).
func (s *SSHD) Log() string {
	b, _ := os.ReadFile(s.LogPath)
	return string(b)
}

// Connections counts the TCP connections sshd has accepted ("Connection from" lines).
func (s *SSHD) Connections() int { return strings.Count(s.Log(), "Connection from ") }

// Logins counts successful logins ("Accepted publickey" lines).
func (s *SSHD) Logins() int { return strings.Count(s.Log(), "Accepted publickey for ") }

// Sessions are the processes serving connections now (sshd's children), for tests that
// stop or kill a connection's server side.
func (s *SSHD) Sessions() []int { return children(s.cmd.Process.Pid) }

// children lists pid's child processes.
func children(pid int) []int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if n, err := strconv.Atoi(f); err == nil {
			pids = append(pids, n)
			pids = append(pids, children(n)...)
		}
	}
	return pids
}

func freePort(t testing.TB, host string) int {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatalf("sshd: find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Key is a client key pair written to a file as ssh-keygen would write it.
type Key struct {
	Signer  ssh.Signer
	Private ed25519.PrivateKey
	Path    string // the private key, mode 0600; Path+".pub" the public one
}

// NewKey makes an Ed25519 key in dir, protected by passphrase when it is not "".
func NewKey(t testing.TB, dir, name, passphrase string) Key {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	writeKey(t, p, priv, passphrase)
	if err := os.WriteFile(p+".pub", ssh.MarshalAuthorizedKey(signer.PublicKey()), 0o644); err != nil {
		t.Fatal(err)
	}
	return Key{Signer: signer, Private: priv, Path: p}
}

func writeKey(t testing.TB, path string, priv crypto.PrivateKey, passphrase string) {
	t.Helper()
	var block *pem.Block
	var err error
	if passphrase == "" {
		block, err = ssh.MarshalPrivateKey(priv, "")
	} else {
		block, err = ssh.MarshalPrivateKeyWithPassphrase(priv, "", []byte(passphrase))
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
}
