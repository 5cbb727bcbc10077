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
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], cli.System())
	stop()
	os.Exit(code)
}
