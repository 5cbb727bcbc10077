// Package hostcmd runs commands on the host (hooks, docker build, docker
// compose config) in a process group of their own, so that a command
// ended by its context ends everything it started: a script's children
// would otherwise outlive it, and hold its output open.
package hostcmd

import (
	"context"
	"errors"
	"os/exec"
	"syscall"
	"time"
)

// WaitDelay is how long Wait waits, once the command's context is done or
// the command has exited, for the output its processes still hold open.
const WaitDelay = 5 * time.Second

// CommandContext is exec.CommandContext whose cancellation kills the
// command's whole process group, not only its first process.
func CommandContext(ctx context.Context, name string, args ...string) *exec.Cmd {
	c := exec.CommandContext(ctx, name, args...)
	Group(c)
	return c
}

// Group makes c, made by exec.CommandContext and not started yet, run in
// a process group of its own that its context's end kills (SIGKILL: a
// command past its deadline is being given up on, and a group that
// ignored SIGTERM would outlive it).
func Group(c *exec.Cmd) {
	if c.SysProcAttr == nil {
		c.SysProcAttr = &syscall.SysProcAttr{}
	}
	c.SysProcAttr.Setpgid = true
	c.Cancel = func() error {
		err := syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
		if errors.Is(err, syscall.ESRCH) {
			return nil // the group is gone already
		}
		return err
	}
	if c.WaitDelay == 0 {
		c.WaitDelay = WaitDelay
	}
}
