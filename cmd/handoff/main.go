// Command handoff deploys a new version of a Dockerized web app behind
// Caddy with zero failed requests.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/handoff-dev/handoff/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), endSignals(os.Args[1:])...)
	code := cli.Main(ctx, os.Args[1:], cli.System())
	stop()
	os.Exit(code)
}

// endSignals are the signals that end a run as Ctrl-C does: what it holds
// is let go and its record says interrupted. SIGHUP is one (an SSH session
// that drops, a terminal closed), but for `handoff proxy` itself, which
// takes SIGHUP as a restart that hands its sockets over.
func endSignals(args []string) []os.Signal {
	sigs := []os.Signal{os.Interrupt, syscall.SIGTERM}
	if !runsProxyDaemon(args) {
		sigs = append(sigs, syscall.SIGHUP)
	}
	return sigs
}

// runsProxyDaemon says whether args run `handoff proxy` (not one of its
// subcommands, such as `handoff proxy status`).
func runsProxyDaemon(args []string) bool {
	root := cli.NewRoot(cli.System())
	cmd, _, err := root.Find(args)
	return err == nil && cmd.Name() == "proxy" && cmd.Parent() == root
}
