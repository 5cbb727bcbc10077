package config

import (
	"fmt"
	"strconv"
	"strings"
)

// Docker's restart policy names.
const (
	RestartNo            = "no"
	RestartAlways        = "always"
	RestartUnlessStopped = "unless-stopped"
	RestartOnFailure     = "on-failure"
)

// RestartPolicy is a Docker restart policy taken apart: the engine's API
// takes the name and the retry count separately, and refuses
// "on-failure:3" given whole as the name (at container create, after the
// release job has run).
type RestartPolicy struct {
	Name              string // RestartNo, RestartAlways, RestartUnlessStopped or RestartOnFailure; "" is Docker's default, no
	MaximumRetryCount int    // on-failure only; 0: no limit
}

// String is the policy as written: "on-failure:3", "always".
func (p RestartPolicy) String() string {
	if p.MaximumRetryCount > 0 {
		return p.Name + ":" + strconv.Itoa(p.MaximumRetryCount)
	}
	return p.Name
}

// ParseRestart reads a restart policy as `docker run --restart` and
// compose's `restart:` write it: no, always, unless-stopped, on-failure or
// on-failure:N with N retries (0 or more). "" is the zero policy. The error
// carries no ErrConfig and no file position: the caller adds both.
func ParseRestart(s string) (RestartPolicy, error) {
	if s == "" {
		return RestartPolicy{}, nil
	}
	name, count, hasCount := strings.Cut(s, ":")
	switch name {
	case RestartNo, RestartAlways, RestartUnlessStopped, RestartOnFailure:
	default:
		return RestartPolicy{}, restartError(s, "")
	}
	if !hasCount {
		return RestartPolicy{Name: name}, nil
	}
	if name != RestartOnFailure {
		return RestartPolicy{}, restartError(s, fmt.Sprintf(" (a retry count goes with on-failure only, not %s)", name))
	}
	n, err := strconv.Atoi(count)
	if err != nil || n < 0 || strings.HasPrefix(count, "+") {
		return RestartPolicy{}, restartError(s, " (the retry count is a whole number, 0 or more)")
	}
	return RestartPolicy{Name: name, MaximumRetryCount: n}, nil
}

func restartError(s, why string) error {
	return fmt.Errorf("restart %q%s: use no, always, unless-stopped, on-failure or on-failure:N (at most N retries)", s, why)
}
