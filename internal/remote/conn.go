package remote

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"path"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// Run runs cmd on the server in a new session of the connection, with stdin, stdout and
// stderr connected (nil: none), and returns its exit status. sshd runs cmd with the
// user's login shell (a POSIX shell is assumed), in the user's home directory.
//
// cmd is visible in the server's process list and may reach its logs: never put a secret
// in it. Send secrets on stdin.
//
// When ctx ends first, the command's process group is sent SIGTERM, the session is
// closed and Run returns ctx's error. (sshd's own signal request is refused for root
// logins, so the group is killed from a second session.) A command meant to outlive the
// connection must detach itself (setsid); it then keeps running when ctx ends or the
// connection drops.
//
// err is non-nil only when the command could not be run or its end was not seen (the
// connection dropped); a command that failed is a non-zero exit with a nil err.
func (c *Conn) Run(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) (exit int, err error) {
	select {
	case c.sessions <- struct{}{}:
		defer func() { <-c.sessions }()
	case <-ctx.Done():
		return -1, ctx.Err()
	case <-c.done:
		return -1, c.err
	}
	if err := ctx.Err(); err != nil {
		return -1, err
	}
	s, err := c.session()
	if err != nil {
		return -1, err
	}
	defer s.Close()
	errw := newPgidWriter(stderr)
	s.Stdout, s.Stderr = stdout, errw
	var in io.WriteCloser
	if stdin != nil {
		// Copied outside Wait: ssh.Session.Wait would wait for a stdin that never ends
		// (a terminal) even after the command exited.
		if in, err = s.StdinPipe(); err != nil {
			return -1, fmt.Errorf("ssh: run on %s: %w", c.server, err)
		}
	}
	// The shell's pid is its process group (sshd makes it a session leader): it is what
	// a cancel kills. It comes first on stderr and is taken off it again.
	if err := s.Start("printf '" + pgidMarker + "%s\\n' \"$$\" >&2\n" + cmd); err != nil {
		return -1, fmt.Errorf("ssh: run on %s: %v", c.server, err)
	}
	if in != nil {
		go func() {
			io.Copy(in, stdin)
			in.Close()
		}()
	}
	done := make(chan error, 1)
	go func() { done <- s.Wait() }()
	select {
	case err = <-done:
		errw.flush()
	case <-ctx.Done():
		// The pgid line may still be on its way (stderr and stdout are separate streams).
		t := time.NewTimer(killWait)
		defer t.Stop()
		ended := false
		select {
		case <-errw.known:
		case <-done:
			ended = true
		case <-t.C:
		}
		switch pgid := errw.pgid(); {
		case ended:
		case pgid > 0:
			c.kill(pgid)
		default:
			s.Signal(ssh.SIGTERM)
		}
		s.Close()
		return -1, ctx.Err()
	case <-c.done:
		return -1, c.err
	}
	var ee *ssh.ExitError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &ee):
		return ee.ExitStatus(), nil
	case c.Err() != nil:
		return -1, c.Err()
	default:
		return -1, fmt.Errorf("ssh: run on %s: %v (connection lost?)", c.server, err)
	}
}

// kill sends SIGTERM to a remote process group, from a session of its own.
func (c *Conn) kill(pgid int) {
	s, err := c.session()
	if err != nil {
		return
	}
	defer s.Close()
	s.Run(fmt.Sprintf("kill -TERM -- -%d", pgid))
}

func (c *Conn) session() (*ssh.Session, error) {
	if err := c.Err(); err != nil {
		return nil, err
	}
	s, err := c.clients[len(c.clients)-1].NewSession()
	if err != nil {
		if c.Err() != nil {
			return nil, c.Err()
		}
		// Most often sshd's MaxSessions: too many Runs at once on one connection.
		return nil, fmt.Errorf("ssh: open a session on %s: %v (is the server's MaxSessions below %d?)",
			c.server, strings.TrimPrefix(err.Error(), "ssh: "), cap(c.sessions)+1)
	}
	return s, nil
}

// DialUnix connects to the unix socket at path on the server, through the connection
// (OpenSSH's direct-streamlocal; sshd's AllowStreamLocalForwarding must allow it, as it
// does by default). This is how the server's Docker socket is reached.
func (c *Conn) DialUnix(path string) (net.Conn, error) {
	if err := c.Err(); err != nil {
		return nil, err
	}
	nc, err := c.clients[len(c.clients)-1].Dial("unix", path)
	if err != nil {
		return nil, fmt.Errorf("ssh: connect to %s on %s: %v", path, c.server, err)
	}
	return nc, nil
}

// Upload writes r to path on the server with the given permissions. It writes a temporary
// file beside path and renames it over path only once all of r has arrived, so path is
// either the old file or the whole new one, never part of it; the directory is made if
// missing. A relative path is from the user's home directory.
func (c *Conn) Upload(ctx context.Context, r io.Reader, file string, mode fs.FileMode) error {
	if file == "" || strings.ContainsRune(file, 0) || strings.HasSuffix(file, "/") {
		return fmt.Errorf("upload to %s: %q is not a file name", c.server, file)
	}
	var suffix [6]byte
	rand.Read(suffix[:])
	dir := path.Dir(file)
	tmp := path.Join(dir, "."+path.Base(file)+".upload-"+hex.EncodeToString(suffix[:]))
	fail := func(err error) error {
		// Best effort: the temporary file is hidden, and named as an upload's.
		c.Run(context.WithoutCancel(ctx), "rm -f "+Quote(tmp), nil, nil, nil)
		return fmt.Errorf("upload %s to %s: %w", file, c.server, err)
	}
	// Two steps, two sessions: a read error must stop the file before the rename, and
	// the end of stdin alone cannot tell a finished r from a failed one.
	readCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	src := &cancelOnError{r: r, cancel: cancel}
	if err := c.runScript(readCtx, fmt.Sprintf("mkdir -p %s && (umask 077 && cat > %s)", Quote(dir), Quote(tmp)), src); err != nil {
		if rerr := src.readErr(); rerr != nil {
			err = fmt.Errorf("read: %w", rerr)
		}
		return fail(err)
	}
	if rerr := src.readErr(); rerr != nil {
		return fail(fmt.Errorf("read: %w", rerr))
	}
	if err := c.runScript(ctx, fmt.Sprintf("chmod %04o %s && mv -f %s %s", mode.Perm(), Quote(tmp), Quote(tmp), Quote(file)), nil); err != nil {
		return fail(err)
	}
	return nil
}

// runScript runs a short command whose failure is told by its first line on stderr.
func (c *Conn) runScript(ctx context.Context, cmd string, stdin io.Reader) error {
	var stderr bytes.Buffer
	exit, err := c.Run(ctx, cmd, stdin, nil, &stderr)
	if err != nil {
		return err
	}
	if exit != 0 {
		return fmt.Errorf("exit %d: %s", exit, firstLine(strings.TrimSpace(stderr.String())))
	}
	return nil
}

// cancelOnError cancels the command reading it before its reader's error ends the input,
// so that the command is stopped rather than seeing a normal end of input.
type cancelOnError struct {
	r      io.Reader
	cancel context.CancelCauseFunc
	mu     sync.Mutex
	err    error
}

func (c *cancelOnError) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if err != nil && err != io.EOF {
		c.mu.Lock()
		c.err = err
		c.mu.Unlock()
		c.cancel(err)
	}
	return n, err
}

func (c *cancelOnError) readErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}
