package cli

import (
	"context"
	"errors"

	"github.com/handoff-dev/handoff/internal/deploy"
)

// Exit codes, documented in the README. This is the only place errors
// become exit codes.
const (
	ExitOK          = 0
	ExitFailed      = 1 // anything not listed below
	ExitUsage       = 2 // bad flags or handoff.yml
	ExitUnhealthy   = 3 // the new container failed; the old one still serves
	ExitLocked      = 4 // another handoff of the service is running
	ExitProxy       = 5 // Caddy unreachable, route not found, changed meanwhile, or a switch's outcome unknown
	ExitImage       = 6 // the image is missing
	ExitVerify      = 7 // deployed, but --verify=strict saw failed requests
	ExitRelease     = 8 // the release job or the pre_deploy hook failed; the old release still serves
	ExitRolledBack  = 9 // a canary step or the watch judged the new release worse (or could not judge a step), or a person aborted: every request is back on the old release
	ExitInterrupted = 130
)

// ExitCode maps an error to the process's exit status.
func ExitCode(err error) int {
	switch {
	case err == nil:
		return ExitOK
	case errors.Is(err, context.Canceled):
		return ExitInterrupted
	case errors.Is(err, deploy.ErrRolledBack):
		return ExitRolledBack
	case errors.Is(err, deploy.ErrConfig), errors.Is(err, errUsage):
		return ExitUsage
	case errors.Is(err, deploy.ErrUnhealthy):
		return ExitUnhealthy
	case errors.Is(err, deploy.ErrLocked):
		return ExitLocked
	case errors.Is(err, deploy.ErrProxyUnreached), errors.Is(err, deploy.ErrNoRoute),
		errors.Is(err, deploy.ErrConflict), errors.Is(err, deploy.ErrProxy), errors.Is(err, deploy.ErrUnclear):
		return ExitProxy
	case errors.Is(err, deploy.ErrImageNotFound), errors.Is(err, deploy.ErrPull):
		return ExitImage
	case errors.Is(err, deploy.ErrReleaseJob), errors.Is(err, deploy.ErrHook):
		return ExitRelease
	case errors.Is(err, errVerifyFailed):
		return ExitVerify
	}
	return ExitFailed
}

var (
	errUsage        = errors.New("usage")
	errVerifyFailed = errors.New("verify failed")
)
