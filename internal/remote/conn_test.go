package remote_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/internal/remote"
)

// Everything a command does on the server rides one connection: sshd accepts one, once.
func TestOneConnectionCarriesEverything(t *testing.T) {
	// MaxStartups limits connections being opened at once, which one connection never hits.
	s := newServer(t, "MaxStartups 3")
	c := s.dial(t)
	for i := range 20 {
		exit, out, _ := run(t, c, fmt.Sprintf("echo %d", i))
		if exit != 0 || out != fmt.Sprintf("%d\n", i) {
			t.Fatalf("Run %d = %d %q", i, exit, out)
		}
	}

	sock := filepath.Join(t.TempDir(), "echo.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		if c, err := l.Accept(); err == nil {
			io.Copy(c, c)
			c.Close()
		}
	}()
	uc, err := c.DialUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(uc, "ping")
	if line, err := bufio.NewReader(uc).ReadString('\n'); err != nil || line != "ping\n" {
		t.Errorf("through DialUnix: %q, %v; want ping back", line, err)
	}
	uc.Close()

	dest := filepath.Join(t.TempDir(), "new dir", "it's handoff")
	if err := c.Upload(context.Background(), strings.NewReader("binary"), dest, 0o755); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(dest); err != nil || string(b) != "binary" {
		t.Errorf("uploaded file: %q, %v", b, err)
	}
	if fi, err := os.Stat(dest); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("uploaded file mode: %v, %v; want 0755", fi.Mode(), err)
	}

	if n, m := s.sshd.Connections(), s.sshd.Logins(); n != 1 || m != 1 {
		t.Errorf("sshd accepted %d connections and %d logins; want 1 and 1:\n%s", n, m, s.sshd.Log())
	}
}

// A failed read leaves the old file as it was, and no temporary file beside it.
func TestUploadReadErrorKeepsOldFile(t *testing.T) {
	s := newServer(t)
	c := s.dial(t)
	dir := t.TempDir()
	dest := filepath.Join(dir, "handoff")
	os.WriteFile(dest, []byte("old"), 0o755)
	broken := io.MultiReader(strings.NewReader("half of the new"), errReader{errors.New("disk on fire")})
	err := c.Upload(context.Background(), broken, dest, 0o755)
	if err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("Upload from a failing reader: %v; want its error", err)
	}
	if b, _ := os.ReadFile(dest); string(b) != "old" {
		t.Errorf("file after a failed upload: %q; want old", b)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("directory after a failed upload: %v; want the old file alone", ents)
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

// Cancelling ctx ends a long command on the server, and the connection goes on.
func TestCancelEndsRun(t *testing.T) {
	s := newServer(t)
	c := s.dial(t)
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	type result struct {
		exit int
		err  error
	}
	done := make(chan result, 1)
	go func() {
		exit, err := c.Run(ctx, "echo $$; exec sleep 600", nil, pw, nil)
		pw.Close()
		done <- result{exit, err}
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, pr)
	pid, _ := strconv.Atoi(strings.TrimSpace(line))
	if pid == 0 {
		t.Fatalf("remote pid %q", line)
	}
	cancel()
	r := <-done
	if !errors.Is(r.err, context.Canceled) {
		t.Fatalf("cancelled Run = %d, %v; want context.Canceled", r.exit, r.err)
	}
	// The remote sleep is this machine's process: it must go.
	deadline := time.Now().Add(5 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("remote command %d still running 5s after cancel", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if exit, _, _ := run(t, c, "true"); exit != 0 {
		t.Errorf("Run after a cancel exited %d", exit)
	}
}

// A server that stops answering ends the connection, and what was running on it fails.
func TestDeadPeerNoticed(t *testing.T) {
	s := newServer(t)
	s.opts.KeepAliveInterval = 50 * time.Millisecond
	s.opts.KeepAliveCountMax = 3
	c := s.dial(t)
	running := make(chan error, 1)
	go func() {
		_, err := c.Run(context.Background(), "sleep 600", nil, nil, nil)
		running <- err
	}()
	// Freeze the server side of this connection, as a host that vanished would be.
	for _, pid := range s.sshd.Sessions() {
		syscall.Kill(pid, syscall.SIGSTOP)
	}
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("connection to a frozen server still up after 10s")
	}
	if err := c.Err(); err == nil || !strings.Contains(err.Error(), "stopped answering") {
		t.Errorf("Err = %v; want stopped answering", err)
	}
	if err := <-running; err == nil {
		t.Error("Run on a dead connection returned no error")
	}
	if _, err := c.Run(context.Background(), "true", nil, nil, nil); err == nil {
		t.Error("Run after the connection ended returned no error")
	}
	_ = remote.ErrUnreachable
}

// More Runs at once than the server allows sessions: they wait their turn, none is refused.
func TestRunsBeyondMaxSessionsWait(t *testing.T) {
	s := newServer(t, "MaxSessions 3")
	s.opts.MaxSessions = 2
	c := s.dial(t)
	errs := make(chan error, 12)
	for range cap(errs) {
		go func() {
			exit, err := c.Run(context.Background(), "sleep 0.1", nil, nil, nil)
			if err == nil && exit != 0 {
				err = fmt.Errorf("exit %d", exit)
			}
			errs <- err
		}()
	}
	for range cap(errs) {
		if err := <-errs; err != nil {
			t.Errorf("one of %d Runs at once: %v", cap(errs), err)
		}
	}
}
