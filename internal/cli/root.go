// Package cli is handoff's command line: one small file per command, each
// filling an options struct and calling its run function, so tests can call
// the run functions directly.
package cli

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/handoff-dev/handoff/internal/caddy"
	"github.com/handoff-dev/handoff/internal/compose"
	"github.com/handoff-dev/handoff/internal/config"
	"github.com/handoff-dev/handoff/internal/deploy"
	"github.com/handoff-dev/handoff/internal/docker"
	"github.com/handoff-dev/handoff/internal/proxy/proxyclient"
	"github.com/handoff-dev/handoff/internal/proxy/wire"
	"github.com/handoff-dev/handoff/internal/state"
)

// common holds what every command takes: the file, its overrides, where
// state lives, and how to print.
type common struct {
	io        *IO
	files     []string // -f: handoff.yml, or one or more compose files
	overrides config.Overrides
	compose   compose.Options // --env-file, --profile, -p, --project-directory
	stateDir  string
	json      bool
	lockWait  time.Duration
	host      string // --host: run the command on this server (host.go)
}

// Main runs handoff with args and returns the exit status.
func Main(ctx context.Context, args []string, streams *IO) int {
	root := NewRoot(streams)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if code, ok := remoteExitCode(err); ok {
		return code // the server's handoff has said why
	}
	if err != nil {
		printError(streams, err)
	}
	return ExitCode(err)
}

// NewRoot builds the command tree.
func NewRoot(streams *IO) *cobra.Command {
	c := &common{io: streams}
	root := &cobra.Command{
		Use:           "handoff",
		Short:         "Deploy a new version of a Dockerized web app behind Caddy with zero failed requests",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(streams.Out)
	root.SetErr(streams.Err)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return fmt.Errorf("%w: %v (see --help)", errUsage, err)
	})
	f := root.PersistentFlags()
	f.StringArrayVarP(&c.files, "file", "f", nil, "handoff.yml (default ./handoff.yml when it exists), or a compose file (repeat -f for several, as docker compose takes them)")
	f.StringArrayVar(&c.compose.EnvFiles, "env-file", nil, "compose: an environment file for interpolation, as docker compose --env-file")
	f.StringArrayVar(&c.compose.Profiles, "profile", nil, "compose: a profile to turn on, as docker compose --profile")
	f.StringVarP(&c.compose.Name, "project-name", "p", "", "compose: the project name, as docker compose -p")
	f.StringVar(&c.compose.ProjectDir, "project-directory", "", "compose: the project directory, as docker compose --project-directory")
	f.StringVar(&c.overrides.Service, "service", "", "service name (names its containers)")
	f.StringVar(&c.overrides.CaddyAdmin, "caddy-admin", "", "Caddy admin API: URL, host:port or unix:PATH (default "+caddy.DefaultAdmin+")")
	f.StringVar(&c.overrides.CaddyRoute, "caddy-route", "", "the route to switch: site host (api.example.com) or current upstream (localhost:8000)")
	f.StringVar(&c.overrides.Caddyfile, "caddyfile", "", "Caddyfile to keep in step with each switch")
	f.StringVar(&c.overrides.Proxy, "proxy", "", "what switches the service: caddy (default) or handoff (a running handoff proxy)")
	f.StringVar(&c.overrides.ProxySocket, "proxy-socket", "", "control socket of handoff proxy (default "+wire.DefaultSocket+")")
	f.StringVar(&c.overrides.ProxyListen, "proxy-listen", "", "with --proxy handoff: the stable address the service is served on, like 127.0.0.1:9001")
	f.StringVar(&c.stateDir, "state-dir", "", "where history and locks live (default $HANDOFF_STATE_DIR, else "+state.DefaultDir()+")")
	f.BoolVar(&c.json, "json", false, "print the result as JSON on stdout")
	f.StringVar(&c.host, "host", "", "run the command on this server over SSH: ssh://user@server[:port] (default $"+envHost+", else host: in handoff.yml; local: here)")
	root.PersistentPreRunE = c.viaHost

	root.AddCommand(newDeployCmd(c), newRollbackCmd(c), newRepairCmd(c), newStatusCmd(c), newInitCmd(c), newHistoryCmd(c), newVersionCmd(c), newProxyCmd(c), newMaintenanceCmd(c), newCanaryCmd(c), newImageCmd(c), newExportCmd(c), newSwarmCmd(c), newCompletionCmd())
	return root
}

// settings reads the file and merges the flags: the one service of a
// handoff.yml, or the one compose service args name.
func (c *common) settings(ctx context.Context, args []string) (config.Settings, error) {
	ts, err := c.targets(ctx, args)
	if err != nil {
		return config.Settings{}, err
	}
	if len(ts) != 1 {
		return config.Settings{}, fmt.Errorf("%w: this command takes one service; name one (of %d)", errUsage, len(ts))
	}
	return ts[0].Settings, nil
}

// open reads the settings and wires the procedure to the real Docker
// engine and Caddy; done releases the connections.
func (c *common) open(ctx context.Context, args []string) (config.Settings, *deploy.Deployer, func(), error) {
	s, err := c.settings(ctx, args)
	if err != nil {
		return s, nil, nil, err
	}
	d, done, err := c.connect(ctx, s)
	return s, d, done, err
}

// connect wires the procedure to the real Docker engine and Caddy.
func (c *common) connect(ctx context.Context, s config.Settings) (*deploy.Deployer, func(), error) {
	dir := c.stateDir
	if dir == "" {
		dir = state.DefaultDir()
	}
	if s.Engine == config.EngineSwarm {
		return c.connectSwarm(s)
	}
	var switcher deploy.Proxy
	var pauser deploy.Pauser
	var err error
	switch {
	case s.Service.Rollout != deploy.RolloutBlueGreen:
		// no route, no proxy: a worker
	case s.Proxy == config.ProxyHandoff:
		var cl *proxyclient.Proxy
		cl, err = proxyclient.New(proxyclient.NewControl(s.HandoffProxy.Socket, s.Service.Name), s.HandoffProxy.Listen)
		if err == nil {
			switcher, pauser = cl, cl.Pauser()
		}
	default:
		switcher, err = caddy.New(s.Caddy.Admin, s.Caddy.Route, s.Caddy.Caddyfile, dir)
	}
	if err != nil {
		return nil, nil, err
	}
	rt, err := docker.New(ctx)
	if err != nil {
		return nil, nil, err
	}
	d := &deploy.Deployer{
		Runtime: rt,
		Proxy:   switcher,
		History: state.Store{Dir: dir},
		Locker:  state.Locker{Dir: dir, Wait: c.lockWait},
		Report:  &reporter{io: c.io},
		Pauser:  pauser,
		// A canary another shell can promote or abort (`handoff canary`).
		Steering: state.Steering{Dir: dir},
	}
	return d, func() { _ = rt.Close() }, nil
}

func printError(streams *IO, err error) {
	fmt.Fprintf(streams.Err, "handoff: %v\n", err)
	var he *deploy.HealthError
	if errors.As(err, &he) {
		fmt.Fprintln(streams.Err, he.Detail())
	}
}
