package deploy

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors; each is wrapped with the detail a user needs to act.
// The CLI maps them to exit codes in one place (internal/cli/exit.go).
var (
	ErrConfig         = errors.New("invalid configuration")
	ErrLocked         = errors.New("another handoff is running for this service")
	ErrUnhealthy      = errors.New("new container did not become healthy")
	ErrImageNotFound  = errors.New("image not found")
	ErrNoRoute        = errors.New("no Caddy route for the service")
	ErrProxy          = errors.New("proxy switch failed")
	ErrNothingToRoll  = errors.New("no earlier release to roll back to")
	ErrConflict       = errors.New("proxy config changed concurrently")
	ErrProxyUnreached = errors.New("proxy admin API unreachable")
	ErrUnclear        = errors.New("could not tell whether the proxy switched")
	ErrPull           = errors.New("image pull failed")
	ErrReleaseJob     = errors.New("release job failed")
	ErrHook           = errors.New("hook failed")
	ErrRolledBack     = errors.New("rolled back by analysis")
)

// HealthError says why a new container was refused, with its last log lines.
type HealthError struct {
	Container string
	Reason    string
	Logs      string
}

func (e *HealthError) Error() string {
	return fmt.Sprintf("%s: %s", e.Container, e.Reason)
}

func (e *HealthError) Unwrap() error { return ErrUnhealthy }

// Detail is the multi-line text shown under the one-line error.
func (e *HealthError) Detail() string {
	logs := strings.TrimRight(e.Logs, "\n")
	if logs == "" {
		return "(the container wrote no logs)"
	}
	return "last log lines of " + e.Container + ":\n" + logs
}
