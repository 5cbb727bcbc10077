package testhost

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/moby/moby/client"
)

// DockerdPath is Debian's docker.io engine.
const DockerdPath = "/usr/sbin/dockerd"

// dockerdStopTimeout is how long a server's dockerd has to stop on SIGTERM before it is
// killed.
const dockerdStopTimeout = 20 * time.Second

// Dockerd is a Docker engine of a test server's own: its own data root (under the test's
// temporary directory), exec root, pidfile, socket, config file and cgroup parent, vfs
// storage, and a private containerd it starts itself under its exec root (no --containerd:
// the host's serves the host's engine). It runs in the server's network namespace, so its
// bridge and iptables rules are the server's; the filesystem is the host's, which is why
// every path is the test's own.
type Dockerd struct {
	// Host is the engine's address for DOCKER_HOST, "unix:///run/hoXXXX-1.sock".
	Host                     string
	DataRoot, ExecRoot       string
	PidFile, Socket, LogPath string
	CgroupParent, ConfigFile string
	// ReadyIn is how long it took to answer _ping; StoppedIn how long its cleanup took.
	ReadyIn, StoppedIn time.Duration
	cmd                *exec.Cmd
	exited             chan struct{}
	client             *client.Client
	stopOnce           sync.Once
}

// dockerdOptions say where a server's dockerd runs and what it is called.
type dockerdOptions struct {
	netns string   // namespace to run in
	name  string   // "hoXXXX-1": exec root /run/<name>, socket /run/<name>.sock (≤ 27 chars)
	dir   string   // the test's directory for its data root, config and log
	group string   // owner group of the socket
	flags []string // more dockerd flags
	// hostname is the engine's own (a UTS namespace of its own): what Swarm names its
	// node. Empty: the host's.
	hostname string
}

// startDockerd starts the engine and waits until it answers _ping on its socket. Its
// cleanup, registered before the wait, stops it and removes all it left.
func startDockerd(t testing.TB, o dockerdOptions) (*Dockerd, error) {
	t.Helper()
	if _, err := os.Stat("/run/containerd/containerd.sock"); err == nil {
		// dockerd would use that containerd instead of starting its own.
		return nil, errors.New("a system containerd listens on /run/containerd/containerd.sock: stop it, test servers need a private one each")
	}
	d := &Dockerd{
		ExecRoot: "/run/" + o.name, PidFile: "/run/" + o.name + ".pid", Socket: "/run/" + o.name + ".sock",
		DataRoot: filepath.Join(o.dir, "docker"), LogPath: filepath.Join(o.dir, "dockerd.log"),
		ConfigFile: filepath.Join(o.dir, "daemon.json"), CgroupParent: "/" + o.name, exited: make(chan struct{}),
	}
	d.Host = "unix://" + d.Socket
	if len(d.ExecRoot) > 27 {
		return nil, fmt.Errorf("exec root %s longer than 27 characters: containerd's socket path would pass the 108-byte limit", d.ExecRoot)
	}
	// Its own config file: /etc/docker/daemon.json names the host's data root.
	if err := os.WriteFile(d.ConfigFile, []byte("{}\n"), 0o644); err != nil {
		return nil, err
	}
	logf, err := os.Create(d.LogPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	args := append([]string{
		"--config-file", d.ConfigFile,
		"--data-root", d.DataRoot,
		"--exec-root", d.ExecRoot,
		"--pidfile", d.PidFile,
		"-H", d.Host,
		"--group", o.group,
		"--cgroup-parent", d.CgroupParent,
		"--storage-driver", "vfs",
	}, o.flags...)
	if o.hostname != "" {
		// unshare and sh exec, so the pid started is dockerd's.
		args = append([]string{"--uts", "--", "sh", "-c", `hostname "$0" && exec "$@"`, o.hostname, DockerdPath}, args...)
		d.cmd = inNetNS(o.netns, "unshare", args...)
	} else {
		d.cmd = inNetNS(o.netns, DockerdPath, args...)
	}
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	start := time.Now()
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start dockerd: %w", err)
	}
	go func() { d.cmd.Wait(); close(d.exited) }()
	t.Cleanup(d.stop)
	if d.client, err = client.New(client.WithHost(d.Host)); err != nil {
		return nil, err
	}
	if err := d.waitReady(60 * time.Second); err != nil {
		return nil, err
	}
	d.ReadyIn = time.Since(start)
	return d, nil
}

// waitReady polls _ping until the engine answers, negotiating the API version.
func (d *Dockerd) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := d.client.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true})
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-d.exited:
			return fmt.Errorf("dockerd exited at start (%v): %s", d.cmd.ProcessState, tail(d.LogPath, 5))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("dockerd did not answer on %s within %s: %v: %s", d.Host, timeout, err, tail(d.LogPath, 5))
		}
	}
}

// stop removes the engine's containers, stops it (SIGTERM, SIGKILL after
// dockerdStopTimeout), kills what it left running (its containerd, shims, container
// processes), unmounts what it left mounted, and removes its files and cgroups. Only its
// first call does anything: a swarm stops its engines together, before their own cleanups.
func (d *Dockerd) stop() { d.stopOnce.Do(d.stopNow) }

func (d *Dockerd) stopNow() {
	start := time.Now()
	if d.client != nil {
		ctx, cancel := context.WithTimeout(context.Background(), dockerdStopTimeout)
		if list, err := d.client.ContainerList(ctx, client.ContainerListOptions{All: true}); err == nil {
			for _, c := range list.Items {
				d.client.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
			}
		}
		cancel()
		d.client.Close()
	}
	syscall.Kill(d.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(dockerdStopTimeout):
		syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
		<-d.exited
	}
	killAll(func(pid int) bool {
		return strings.Contains(cmdline(pid), d.ExecRoot+"/") || inCgroup(pid, d.CgroupParent)
	})
	unmountUnder(d.DataRoot, d.ExecRoot)
	for _, p := range []string{d.ExecRoot, d.PidFile, d.Socket, d.DataRoot} {
		os.RemoveAll(p)
	}
	removeCgroups(d.CgroupParent)
	d.StoppedIn = time.Since(start)
}

// RSS is the resident memory of the engine and its containerd, in bytes.
func (d *Dockerd) RSS() int64 {
	var sum int64
	for _, pid := range append([]int{d.cmd.Process.Pid}, processes(func(pid int) bool {
		return strings.Contains(cmdline(pid), d.ExecRoot+"/containerd/")
	})...) {
		sum += rss(pid)
	}
	return sum
}

// processes lists the pids for which match holds.
func processes(match func(pid int) bool) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscan(e.Name(), &pid); err == nil && pid != os.Getpid() && match(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// killAll SIGKILLs the processes match selects and waits up to 5 s for them to go.
func killAll(match func(pid int) bool) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		pids := processes(match)
		if len(pids) == 0 || time.Now().After(deadline) {
			return
		}
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// cmdline is pid's command line, its arguments joined by spaces.
func cmdline(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return strings.ReplaceAll(string(b), "\x00", " ")
}

// inCgroup says whether pid is in cgroup parent or below it, in any hierarchy.
func inCgroup(pid int, parent string) bool {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	for _, line := range strings.Split(string(b), "\n") {
		// hierarchy-ID:controllers:path
		if f := strings.SplitN(line, ":", 3); len(f) == 3 && (f[2] == parent || strings.HasPrefix(f[2], parent+"/")) {
			return true
		}
	}
	return false
}

// rss is pid's resident set size in bytes (0 once it is gone).
func rss(pid int) int64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(b), "\n") {
		var kb int64
		if _, err := fmt.Sscanf(line, "VmRSS: %d kB", &kb); err == nil {
			return kb * 1024
		}
	}
	return 0
}

// mountsUnder lists the mount points at or below any of dirs, deepest first.
func mountsUnder(dirs ...string) []string {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	var points []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		p := unescapeMount(f[4])
		for _, d := range dirs {
			if p == d || strings.HasPrefix(p, d+"/") {
				points = append(points, p)
			}
		}
	}
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	return points
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var c int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%o", &c); err == nil {
				b.WriteByte(byte(c))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// unmountUnder detaches every mount at or below dirs (containers' rootfs, shm, netns
// files), deepest first.
func unmountUnder(dirs ...string) {
	for _, p := range mountsUnder(dirs...) {
		syscall.Unmount(p, syscall.MNT_DETACH)
	}
}

// removeCgroups removes cgroup parent and the groups below it in every hierarchy,
// deepest first (rmdir is how cgroups go; their files cannot be removed).
func removeCgroups(parent string) {
	roots, _ := filepath.Glob("/sys/fs/cgroup/*" + parent)
	for _, root := range roots {
		var dirs []string
		filepath.WalkDir(root, func(p string, e os.DirEntry, err error) error {
			if err == nil && e.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			syscall.Rmdir(dirs[i])
		}
	}
}

// tail is the last n lines of file path, for an error.
func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
