package itest

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// ProxyDaemon is a running `handoff proxy`.
type ProxyDaemon struct {
	Socket    string
	PIDFile   string
	StateFile string
	Listen    string // the service's stable address (set by the scenario)
	logPath   string
	bin       string
	args      []string
	t         testing.TB
}

// StartProxy runs `handoff proxy` with its files in a temporary directory
// and waits until its control socket answers. Whatever process serves at
// the end (a restart replaces it) is stopped when the test ends.
func StartProxy(t testing.TB, bin string, handover time.Duration) *ProxyDaemon {
	t.Helper()
	return StartProxyWithState(t, bin, handover, "")
}

// StartProxyWithState is StartProxy with a state file that holds state
// ("": none) before the proxy starts.
func StartProxyWithState(t testing.TB, bin string, handover time.Duration, state string) *ProxyDaemon {
	t.Helper()
	dir := t.TempDir()
	d := &ProxyDaemon{Socket: filepath.Join(dir, "proxy.sock"), PIDFile: filepath.Join(dir, "proxy.pid"), StateFile: filepath.Join(dir, "state.json"), logPath: filepath.Join(dir, "proxy.log"), t: t}
	if state != "" {
		if err := os.WriteFile(d.StateFile, []byte(state), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	d.args = []string{"proxy", "--socket", d.Socket, "--state-file", d.StateFile,
		"--pid-file", d.PIDFile, "--handover-timeout", handover.String()}
	d.bin = bin
	d.StartAgain()
	t.Cleanup(d.stop)
	return d
}

// StartAgain starts a new `handoff proxy` on the same files, as systemd
// does after the process died, and waits until it answers.
func (d *ProxyDaemon) StartAgain() {
	d.t.Helper()
	// A file, not a pipe: a restarted process inherits it, and nobody waits on a pipe.
	logf, err := os.OpenFile(d.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		d.t.Fatal(err)
	}
	defer logf.Close()
	_ = os.Remove(d.PIDFile)
	cmd := exec.Command(d.bin, d.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	go func() { _ = cmd.Wait() }()
	WaitFor(d.t, 20*time.Second, "handoff proxy's socket", func() bool { return d.PID() != 0 && d.answers() })
}

// Kill ends the serving process with SIGKILL and waits until it is gone.
func (d *ProxyDaemon) Kill() {
	d.t.Helper()
	pid := d.PID()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		d.t.Fatal(err)
	}
	WaitFor(d.t, 10*time.Second, "the killed proxy to be gone", func() bool { return !alive(pid) })
}

func (d *ProxyDaemon) answers() bool {
	c, err := net.DialTimeout("unix", d.Socket, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// PID is the serving process, from the pid file (0 if none yet).
func (d *ProxyDaemon) PID() int {
	b, err := os.ReadFile(d.PIDFile)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// Restart asks the serving process for an upgrade (SIGHUP) and waits until
// a new process serves and the old one has exited.
func (d *ProxyDaemon) Restart() {
	d.t.Helper()
	old := d.PID()
	if err := syscall.Kill(old, syscall.SIGHUP); err != nil {
		d.t.Fatal(err)
	}
	WaitFor(d.t, 30*time.Second, "a new proxy process", func() bool { return d.PID() != old && d.PID() != 0 })
	WaitFor(d.t, 30*time.Second, "the old proxy process to exit", func() bool { return !alive(old) })
}

// Log is what the proxy processes printed.
func (d *ProxyDaemon) Log() string {
	b, _ := os.ReadFile(d.logPath)
	return string(b)
}

func (d *ProxyDaemon) stop() {
	pid := d.PID()
	if pid == 0 {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(15 * time.Second)
	for alive(pid) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if alive(pid) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	if d.t.Failed() {
		d.t.Logf("handoff proxy log:\n%s", lastLines(d.Log(), 40))
	}
}

// alive says whether pid runs: a zombie nobody reaped yet does not.
func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	return !strings.HasPrefix(rest, "Z")
}
