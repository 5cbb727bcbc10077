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
	Socket  string
	PIDFile string
	Listen  string // the service's stable address (set by the scenario)
	logPath string
	t       testing.TB
}

// StartProxy runs `handoff proxy` with its files in a temporary directory
// and waits until its control socket answers. Whatever process serves at
// the end (a restart replaces it) is stopped when the test ends.
func StartProxy(t testing.TB, bin string, handover time.Duration) *ProxyDaemon {
	t.Helper()
	dir := t.TempDir()
	d := &ProxyDaemon{Socket: filepath.Join(dir, "proxy.sock"), PIDFile: filepath.Join(dir, "proxy.pid"), logPath: filepath.Join(dir, "proxy.log"), t: t}
	// A file, not a pipe: a restarted process inherits it, and nobody waits on a pipe.
	logf, err := os.Create(d.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, "proxy", "--socket", d.Socket, "--state-file", filepath.Join(dir, "state.json"),
		"--pid-file", d.PIDFile, "--handover-timeout", handover.String())
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = cmd.Wait() }()
	t.Cleanup(d.stop)
	WaitFor(t, 20*time.Second, "handoff proxy's socket", func() bool { return d.PID() != 0 && d.answers() })
	return d
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
