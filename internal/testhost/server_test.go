package testhost

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
	"github.com/stretchr/testify/require"
)

// A test server is a host of its own: an engine that has none of the host's images and
// keeps its data in the test's directory, an sshd on its own address that lets its own
// user in, with a home of its own and DOCKER_HOST its engine; and when its test ends,
// nothing of it is left, and the host's iptables, links, namespaces, mounts and engine
// are as they were.
func TestServerIsAHostOfItsOwn(t *testing.T) {
	requireServerTools(t, true)
	before := hostState(t)
	sysctls := hostSysctls()
	var s *Server
	var started time.Duration
	t.Run("server", func(t *testing.T) {
		start := time.Now()
		s = StartServer(t, ServerOptions{SSHDConfig: []string{"MaxStartups 3"}})
		started = time.Since(start)
		rss := s.Dockerd.RSS()
		ctx := context.Background()
		// Its engine, containerd and sshd live in its namespace, so their links and
		// iptables rules are its own.
		ns, err := os.Stat(netnsPath(s.NS))
		require.NoError(t, err)
		d := s.Dockerd
		for _, pid := range append(processes(func(pid int) bool { return strings.Contains(cmdline(pid), d.ExecRoot+"/") }),
			d.cmd.Process.Pid, s.SSH.cmd.Process.Pid) {
			link, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/ns/net")
			require.NoError(t, err)
			require.Equal(t, "net:["+strconv.FormatUint(ns.Sys().(*syscall.Stat_t).Ino, 10)+"]", link, "%d %s", pid, cmdline(pid))
		}
		images, err := s.Docker().ImageList(ctx, client.ImageListOptions{All: true})
		require.NoError(t, err)
		require.Empty(t, images.Items, "the host's images are not on the server")
		info, err := s.Docker().Info(ctx, client.InfoOptions{})
		require.NoError(t, err)
		require.Equal(t, s.Dockerd.DataRoot, info.Info.DockerRootDir)
		require.Equal(t, "vfs", info.Info.Driver)

		session, err := s.DialSSH(t).NewSession()
		require.NoError(t, err)
		out, err := session.CombinedOutput(`echo $HOME $DOCKER_HOST; id -un; ls -A "$HOME" | grep -v '^\.' | wc -l`)
		require.NoError(t, err, string(out))
		require.Equal(t, s.Home+" "+s.DockerHost+"\n"+s.User+"\n0\n", string(out),
			"the login user's home is the server's own, empty; DOCKER_HOST its engine")
		require.True(t, strings.HasPrefix(s.URL(), "ssh://"+s.User+"@192.168."), s.URL())
		require.Equal(t, "0\n", s.Exec(t, "cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"), "the user may listen on :80 there")

		// What the login user runs reaches the server's engine through its socket.
		s.BuildImage(t, "hoff-probe:1", "FROM scratch\nCOPY probe /probe\n", map[string][]byte{"probe": []byte("x")})
		images, err = s.Docker().ImageList(ctx, client.ImageListOptions{})
		require.NoError(t, err)
		require.Len(t, images.Items, 1)
		require.Equal(t, []string{"hoff-probe:1"}, images.Items[0].RepoTags)
		session, err = s.DialSSH(t).NewSession()
		require.NoError(t, err)
		out, err = session.CombinedOutput(`docker image ls --format '{{.Repository}}:{{.Tag}}'`)
		require.NoError(t, err, string(out))
		require.Equal(t, "hoff-probe:1\n", string(out), "the login user uses the server's engine")

		// A container of the test app, published on the server's address, answers the
		// host; it is left running for the cleanup to remove.
		s.BuildTestImage(t, "hoff-testapp:it")
		p := network.MustParsePort("8000/tcp")
		created, err := s.Docker().ContainerCreate(ctx, client.ContainerCreateOptions{
			Config:     &container.Config{Image: "hoff-testapp:it", Env: []string{"RELEASE=on-server"}, ExposedPorts: network.PortSet{p: {}}},
			HostConfig: &container.HostConfig{PortBindings: network.PortMap{p: {{HostIP: netip.MustParseAddr(s.IP), HostPort: "8000"}}}},
		})
		require.NoError(t, err)
		_, err = s.Docker().ContainerStart(ctx, created.ID, client.ContainerStartOptions{})
		require.NoError(t, err)
		var body []byte
		require.Eventually(t, func() bool {
			res, err := http.Get("http://" + s.Addr(8000) + "/")
			if err != nil {
				return false
			}
			defer res.Body.Close()
			body, _ = io.ReadAll(res.Body)
			return res.StatusCode == 200
		}, 10*time.Second, 50*time.Millisecond)
		require.Contains(t, string(body), "on-server")

		files := WriteSSHFiles(t, s)
		known, err := os.ReadFile(files.KnownHosts)
		require.NoError(t, err)
		require.Equal(t, s.SSH.KnownHostsLine()+"\n", string(known))
		t.Logf("one server: dockerd answered in %s, the whole server (netns, user, dockerd, sshd) in %s; dockerd+containerd RSS %d MB idle, %d MB with one container's shim",
			s.Dockerd.ReadyIn.Round(time.Millisecond), started.Round(time.Millisecond), rss>>20, s.Dockerd.RSS()>>20)
	})
	if s == nil || s.Dockerd == nil {
		t.Fatal("no server started")
	}
	t.Logf("cleanup of the server's dockerd took %s", s.Dockerd.StoppedIn.Round(time.Millisecond))
	requireHostAsBefore(t, before, tokens(s.Net.id, s.Net.Prefix+".", filepath.Dir(s.SSH.Dir))...)
	require.Equal(t, sysctls, hostSysctls(), "the host's sysctls are as before")
	d := s.Dockerd
	require.Empty(t, processes(func(pid int) bool { return strings.Contains(cmdline(pid), d.ExecRoot) }), "no dockerd, containerd or shim left")
	require.Empty(t, mountsUnder(d.DataRoot, d.ExecRoot), "no mount left")
	for _, p := range []string{d.ExecRoot, d.Socket, d.PidFile, d.DataRoot, s.Home, netnsPath(s.NS), netnsPath(s.Net.NS)} {
		_, err := os.Stat(p)
		require.ErrorIs(t, err, os.ErrNotExist, "%s left", p)
	}
	cgroups, _ := filepath.Glob("/sys/fs/cgroup/*" + d.CgroupParent)
	require.Empty(t, cgroups, "no cgroup left")
	_, err := user.Lookup(s.User)
	require.Error(t, err, "the login user is removed")
}

// A start that fails halfway (server 1 up, server 2's engine failing) leaves nothing
// behind either, and says why.
func TestServerFailingHalfwayLeavesNothing(t *testing.T) {
	requireServerTools(t, true)
	before := hostState(t)
	// Server 2's exec root taken by a file: its dockerd cannot start.
	next := strconv.FormatInt(int64(os.Getpid())*1000+(networkSeq.Load()+1)%1000, 36)
	taken := "/run/ho" + next + "-2"
	require.NoError(t, os.WriteFile(taken, nil, 0o600))
	defer os.Remove(taken)
	var servers []*Server
	var err error
	t.Run("start", func(t *testing.T) {
		servers, err = startServers(t, 2, ServerOptions{})
	})
	t.Logf("the start failed: %v", err)
	require.ErrorContains(t, err, "test server 2: dockerd exited at start")
	require.ErrorContains(t, err, taken, "the error says why, from dockerd's log")
	require.Nil(t, servers)
	requireHostAsBefore(t, before, tokens(next)...)
	require.Empty(t, processes(func(pid int) bool { return strings.Contains(cmdline(pid), "/run/ho"+next+"-") }), "no dockerd or containerd left")
}

// Servers reach each other and the host by address, and a cut server reaches no one
// until it is restored.
func TestServersReachEachOther(t *testing.T) {
	servers := StartServers(t, 2, ServerOptions{NoDocker: true})
	a, b := servers[0], servers[1]
	l, err := net.Listen("tcp", net.JoinHostPort(a.Net.HostIP, "0"))
	require.NoError(t, err)
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("host\n"))
			c.Close()
		}
	}()
	host := l.Addr().String()
	require.Equal(t, "SSH-2.0-", banner(t, a, b.SSH.Addr()), "server 1 reaches server 2's sshd")
	require.Equal(t, "SSH-2.0-", banner(t, b, a.SSH.Addr()), "server 2 reaches server 1's sshd")
	require.Equal(t, "host\n", banner(t, b, host), "a server reaches the host")
	c, err := net.DialTimeout("tcp", b.SSH.Addr(), 2*time.Second)
	require.NoError(t, err, "the host reaches a server")
	c.Close()

	b.Cut(t)
	require.Equal(t, "", banner(t, a, b.SSH.Addr()), "a cut server is out of reach")
	require.Equal(t, "", banner(t, b, host), "a cut server reaches no one")
	b.Restore(t)
	require.Equal(t, "SSH-2.0-", banner(t, a, b.SSH.Addr()), "a restored server is back")
}

// banner is the first 8 bytes (or the first line) a TCP server at addr sends to a
// client in s's namespace, "" when it cannot be reached within a second.
func banner(t *testing.T, s *Server, addr string) string {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	out, _ := s.Command("timeout", "1", "bash", "-c", "exec 3<>/dev/tcp/"+host+"/"+port+" && head -c 8 <&3").Output()
	return string(out)
}

// requireHostAsBefore fails t unless the host is as in state before, as far as the test
// servers named by tokens go: every line added or removed since is checked for them. Other
// tests run beside this one (go test runs packages in parallel) and change the host's
// iptables, links, routes and mounts through its own engine; those changes are logged.
func requireHostAsBefore(t *testing.T, before map[string][]string, ours ...string) {
	t.Helper()
	after := hostState(t)
	others := map[string]int{}
	for k := range before {
	lines:
		for _, line := range append(missing(before[k], after[k]), missing(after[k], before[k])...) {
			for _, tok := range ours {
				if strings.Contains(line, tok) {
					t.Errorf("%s is not as before the test servers: %q", k, line)
					continue lines
				}
			}
			others[k]++
		}
	}
	if len(others) > 0 {
		t.Logf("lines of the host's state changed meanwhile, none the test servers': %v", others)
	}
}

// missing is the lines of a not in b (as multisets).
func missing(a, b []string) []string {
	count := map[string]int{}
	for _, l := range b {
		count[l]++
	}
	var out []string
	for _, l := range a {
		if count[l] > 0 {
			count[l]--
		} else {
			out = append(out, l)
		}
	}
	return out
}

// tokens name what test servers make on the host, from their network's id: namespaces
// hoff-<id>-N, links ho<id>, exec roots /run/ho<id>-N, cgroups /ho<id>-N, users hoff<id>-N.
func tokens(id string, more ...string) []string {
	return append([]string{"hoff-" + id, "ho" + id, "hoff" + id}, more...)
}

// hostSysctls are the host's settings a server's namespace has its own of.
func hostSysctls() map[string]string {
	m := map[string]string{}
	for _, k := range []string{"ipv4/ip_unprivileged_port_start", "ipv4/ip_forward", "bridge/bridge-nf-call-iptables"} {
		b, _ := os.ReadFile("/proc/sys/net/" + k)
		m[k] = string(b)
	}
	return m
}

// hostState is what test servers must leave as it was on the host: iptables (all tables,
// both backends, counters stripped), links, namespaces, routes, mounts, users and
// processes, each a list of lines.
func hostState(t *testing.T) map[string][]string {
	t.Helper()
	counters := regexp.MustCompile(`\[[0-9:]*\]`)
	state := map[string][]string{}
	for _, cmd := range [][]string{{"iptables-save"}, {"ip6tables-save"}, {"iptables-legacy-save"},
		{"ip", "-o", "link"}, {"ip", "-o", "addr"}, {"ip", "netns", "list"}, {"ip", "route", "show", "table", "all"}} {
		if _, err := exec.LookPath(cmd[0]); err != nil {
			continue
		}
		out, _ := exec.Command(cmd[0], cmd[1:]...).Output()
		var lines []string
		for _, line := range strings.Split(string(out), "\n") {
			if !strings.HasPrefix(line, "#") {
				lines = append(lines, counters.ReplaceAllString(line, ""))
			}
		}
		state[strings.Join(cmd, " ")] = lines
	}
	for _, f := range []string{"/proc/self/mountinfo", "/etc/passwd", "/etc/group"} {
		b, _ := os.ReadFile(f)
		state[f] = strings.Split(string(b), "\n")
	}
	cgroups, _ := filepath.Glob("/sys/fs/cgroup/*/*")
	state["cgroups"] = cgroups
	for _, pid := range processes(func(int) bool { return true }) {
		state["processes"] = append(state["processes"], cmdline(pid))
	}
	return state
}
