package testhost

import (
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
)

// The harness's sshd listens, logs verbosely, and is gone with its files when the test ends.
func TestSSHDStartsAndStops(t *testing.T) {
	var s *SSHD
	t.Run("run", func(t *testing.T) {
		s = StartSSHD(t, SSHDOptions{Config: []string{"MaxStartups 3"}})
		c, err := net.Dial("tcp", s.Addr())
		if err != nil {
			t.Fatal(err)
		}
		banner := make([]byte, 8)
		if _, err := c.Read(banner); err != nil || !strings.HasPrefix(string(banner), "SSH-2.0-") {
			t.Errorf("banner %q, %v", banner, err)
		}
		c.Close()
		conf, _ := os.ReadFile(s.Dir + "/sshd_config")
		if !strings.HasPrefix(string(conf), "MaxStartups 3\n") {
			t.Errorf("the test's own lines must come first (sshd takes a keyword's first value):\n%s", conf)
		}
		if !strings.Contains(s.Log(), "Server listening on "+s.Host+" port") {
			t.Errorf("log: %s", s.Log())
		}
	})
	if s == nil || s.cmd == nil {
		t.Fatal("no sshd started")
	}
	if err := syscall.Kill(s.cmd.Process.Pid, 0); err != syscall.ESRCH {
		t.Errorf("sshd %d still there after its test: %v", s.cmd.Process.Pid, err)
	}
	if _, err := os.Stat(s.Dir); !os.IsNotExist(err) {
		t.Errorf("sshd's directory %s still there: %v", s.Dir, err)
	}
	if _, err := net.Dial("tcp", s.Addr()); err == nil {
		t.Errorf("%s still accepts connections", s.Addr())
	}
}
