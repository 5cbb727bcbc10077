package testhost

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moby/moby/client"
	"golang.org/x/crypto/ssh"
)

// A test server is a host of its own on this machine, as far as handoff can tell: its own
// address (a network namespace on the test's switch), its own Docker engine, and Debian's
// sshd letting in a user of its own whose home is a fresh directory. An image built here
// is not on it, nor is a handoff binary put in a home here.
//
// Why a user of its own and not root with another HOME: the filesystem is the host's, and
// root's state would be too: handoff keeps root's history in /var/lib/handoff, and Go's
// os/user reads /root from /etc/passwd whatever HOME says. A user made for the test, with
// its home in the test's directory and its socket group the engine's, shares nothing.

// ServerOptions say how a test's servers differ from the default ones.
type ServerOptions struct {
	// SSHDConfig lines come before the harness's own, so they win: "MaxStartups 3".
	SSHDConfig []string
	// NoDocker starts no engine (the server has sshd only, and no DOCKER_HOST).
	NoDocker bool
	// DockerdFlags are more flags for each server's dockerd.
	DockerdFlags []string
}

// Server is one test server. StartServers makes them; they are gone when the test ends.
type Server struct {
	// Index is the server's number, from 1; IP is Network.Prefix.1<Index>.
	Index int
	IP    string
	// NS is its network namespace (ip netns); Net the switch it is plugged into.
	NS  string
	Net *Network
	// User logs in over SSH; Home is its home directory, empty at the start.
	User, Home string
	// SSH is its sshd on IP:22; Key is the client key it lets in (the same for every
	// server of one StartServers).
	SSH *SSHD
	Key Key
	// DockerHost is its engine's address ("unix:///run/hoXXXX-1.sock"), set for the SSH
	// sessions too; empty with NoDocker.
	DockerHost string
	Dockerd    *Dockerd
	// cgroup is the server's cgroup ("/hoXXXX-1", its engine's cgroup parent, where
	// Freeze moves its processes); cut and frozen say what was done to it.
	cgroup      string
	cut, frozen atomic.Bool
}

// StartServer starts one test server.
func StartServer(t testing.TB, opts ServerOptions) *Server {
	t.Helper()
	return StartServers(t, 1, opts)[0]
}

// StartServers starts n test servers on one switch, the host joined to it as .254. They
// reach each other and the host by address; each has its own engine and sshd. Everything
// is removed when t ends, also when a start fails halfway; the host's engine, iptables and
// links are left as they were.
func StartServers(t testing.TB, n int, opts ServerOptions) []*Server {
	t.Helper()
	requireServerTools(t, !opts.NoDocker)
	servers, err := startServers(t, n, opts)
	if err != nil {
		t.Fatal(err)
	}
	return servers
}

// startServers is StartServers returning what failed; what it started is removed when t
// ends all the same.
func startServers(t testing.TB, n int, opts ServerOptions) ([]*Server, error) {
	t.Helper()
	if n < 1 || n > 9 {
		return nil, fmt.Errorf("test servers: %d asked, 1 to 9 can be had", n)
	}
	dir := t.TempDir()
	readableByAll(dir)
	network := startNetwork(t)
	key := NewKey(t, dir, "id_ed25519", "")
	servers := make([]*Server, n)
	for i := range servers {
		s, err := startServer(t, network, i+1, dir, key, opts)
		if err != nil {
			return nil, fmt.Errorf("test server %d: %w", i+1, err)
		}
		servers[i] = s
	}
	return servers, nil
}

func startServer(t testing.TB, network *Network, i int, dir string, key Key, opts ServerOptions) (*Server, error) {
	t.Helper()
	name := network.id + "-" + strconv.Itoa(i)
	s := &Server{Index: i, NS: "hoff-" + name, Net: network, User: "hoff" + name, Key: key, cgroup: "/ho" + name}
	t.Cleanup(func() {
		removeNetNS(s.NS)
		// A frozen server's processes, moved to its cgroup: gone with the namespace.
		killAll(func(pid int) bool { return inCgroup(pid, s.cgroup) })
		removeCgroups(s.cgroup)
	})
	var err error
	if s.IP, err = network.plug(s.NS, i); err != nil {
		return nil, err
	}
	sdir := filepath.Join(dir, "server"+strconv.Itoa(i))
	if err := os.Mkdir(sdir, 0o755); err != nil {
		return nil, err
	}
	s.Home = filepath.Join(sdir, "home")
	if err := addUser(t, s.User, s.Home); err != nil {
		return nil, err
	}
	config := append([]string{}, opts.SSHDConfig...)
	if !opts.NoDocker {
		flags := append([]string{"--insecure-registry", net.JoinHostPort(network.HostIP, strconv.Itoa(RegistryPort))}, opts.DockerdFlags...)
		s.Dockerd, err = startDockerd(t, dockerdOptions{netns: s.NS, name: "ho" + name, dir: sdir, group: s.User, flags: flags, hostname: s.NS})
		if err != nil {
			return nil, err
		}
		s.DockerHost = s.Dockerd.Host
		config = append(config, "SetEnv DOCKER_HOST="+s.DockerHost)
	}
	s.SSH = StartSSHD(t, SSHDOptions{AuthorizedKeys: []ssh.PublicKey{key.Signer.PublicKey()},
		Config: config, ListenIP: s.IP, NetNS: s.NS})
	return s, nil
}

// requireServerTools skips t (fails it under HANDOFF_REQUIRE_INTEGRATION=1) when test
// servers cannot be had here.
func requireServerTools(t testing.TB, docker bool) {
	t.Helper()
	if os.Geteuid() != 0 {
		unavailable(t, "test servers: network namespaces need root")
	}
	tools := []string{"ip", "nsenter", "unshare", "useradd", "userdel"}
	if docker {
		tools = append(tools, DockerdPath, "containerd", "runc")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			unavailable(t, "test servers: %s missing (apt-get install iproute2 util-linux passwd docker.io)", tool)
		}
	}
	RequireSSHD(t)
}

// addUser makes a login user with home as its home (and a group of its name), removed
// with its home and processes when t ends. Its password is "*", not "!": sshd without
// PAM refuses a locked account even a key.
func addUser(t testing.TB, name, home string) error {
	t.Helper()
	t.Cleanup(func() {
		if u, err := user.Lookup(name); err == nil {
			if uid, err := strconv.Atoi(u.Uid); err == nil {
				killAll(func(pid int) bool { return owner(pid) == uid })
			}
			retryPasswd("userdel", "-f", "-r", name)
		}
	})
	return retryPasswd("useradd", "-m", "-d", home, "-s", "/bin/sh", "-U", "-p", "*", name)
}

// retryPasswd runs useradd or userdel, again while another test binary holds
// /etc/passwd's lock.
func retryPasswd(name string, args ...string) error {
	var out []byte
	var err error
	for try := 0; try < 20; try++ {
		if out, err = exec.Command(name, args...).CombinedOutput(); err == nil {
			return nil
		}
		if !strings.Contains(string(out), "lock") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
}

// owner is the uid pid runs as (-1 once it is gone).
func owner(pid int) int {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(b), "\n") {
		var uid int
		if _, err := fmt.Sscanf(line, "Uid: %d", &uid); err == nil {
			return uid
		}
	}
	return -1
}

// Docker is a client of the server's engine, its API version negotiated.
func (s *Server) Docker() *client.Client {
	if s.Dockerd == nil {
		return nil
	}
	return s.Dockerd.client
}

// URL is the server's address for handoff's --host.
func (s *Server) URL() string { return "ssh://" + s.User + "@" + s.IP }

// Command is name run in the server's network namespace (the filesystem is the host's).
func (s *Server) Command(name string, args ...string) *exec.Cmd { return inNetNS(s.NS, name, args...) }

// Exec runs args in the server's network namespace and returns its output; t fails if
// it fails.
func (s *Server) Exec(t testing.TB, args ...string) string {
	t.Helper()
	out, err := s.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("server %d: %s: %v: %s", s.Index, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Cut unplugs the server from the switch: its packets go nowhere, to the host and to
// the other servers, and its connections hang instead of being reset, as when a cable is
// pulled. Restore plugs it back.
func (s *Server) Cut(t testing.TB) {
	t.Helper()
	if err := s.Net.setPort(s.Index, false); err != nil {
		t.Fatal(err)
	}
	s.cut.Store(true)
}

// Restore plugs the server back after Cut.
func (s *Server) Restore(t testing.TB) {
	t.Helper()
	if err := s.Net.setPort(s.Index, true); err != nil {
		t.Fatal(err)
	}
	s.cut.Store(false)
}

// DialSSH logs in to the server as its user with its key, checking its host key.
func (s *Server) DialSSH(t testing.TB) *ssh.Client {
	t.Helper()
	c, err := ssh.Dial("tcp", s.SSH.Addr(), &ssh.ClientConfig{User: s.User, Auth: []ssh.AuthMethod{ssh.PublicKeys(s.Key.Signer)},
		HostKeyCallback: ssh.FixedHostKey(s.SSH.HostKey), Timeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("server %d: ssh %s: %v", s.Index, s.URL(), err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// SSHFiles are an ssh_config and a known_hosts through which handoff reaches test
// servers: the servers' key, no agent, their host keys known.
type SSHFiles struct {
	Config, KnownHosts string
}

// Env points handoff at the files (HANDOFF_SSH_CONFIG, HANDOFF_SSH_KNOWN_HOSTS).
func (f SSHFiles) Env() []string {
	return []string{"HANDOFF_SSH_CONFIG=" + f.Config, "HANDOFF_SSH_KNOWN_HOSTS=" + f.KnownHosts}
}

// WriteSSHFiles writes an ssh_config and a known_hosts for servers in a directory of t's.
func WriteSSHFiles(t testing.TB, servers ...*Server) SSHFiles {
	t.Helper()
	dir := t.TempDir()
	f := SSHFiles{Config: filepath.Join(dir, "ssh_config"), KnownHosts: filepath.Join(dir, "known_hosts")}
	var config, known strings.Builder
	config.WriteString("Host *\n  IdentityAgent none\n")
	for _, s := range servers {
		fmt.Fprintf(&config, "  IdentityFile %s\n", s.Key.Path)
		for _, k := range s.SSH.HostKeys {
			known.WriteString(KnownHostsLine(s.SSH.Host, s.SSH.Port, k) + "\n")
		}
	}
	if err := os.WriteFile(f.Config, []byte(config.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.KnownHosts, []byte(known.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// Addr is the server's address with port.
func (s *Server) Addr(port int) string { return net.JoinHostPort(s.IP, strconv.Itoa(port)) }
