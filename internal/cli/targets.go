package cli

import (
	"cmp"
	"context"
	"fmt"

	"github.com/handoff-dev/handoff/internal/compose"
	"github.com/handoff-dev/handoff/internal/config"
	"github.com/handoff-dev/handoff/internal/deploy"
)

// target is one service a command acts on, and what the user must know
// about it before anything changes.
type target struct {
	config.Settings
	notes []string
}

// targets reads what the command acts on: the service of a handoff.yml,
// or the services of a compose project that args (or handoff.yml's
// `compose:`) name, each with its x-handoff settings, then the flags.
func (c *common) targets(ctx context.Context, args []string) ([]target, error) {
	files := c.files
	if len(files) <= 1 {
		file := ""
		if len(files) == 1 {
			file = files[0]
		}
		if file == "" || !compose.IsComposeFile(file) {
			f, err := config.Load(file)
			if err != nil {
				return nil, err
			}
			if f.Compose == nil {
				s, err := config.Resolve(f, c.overrides)
				// The service's own name is taken (what handoff's messages
				// say to run names it); any other is a mistake.
				if len(args) > 0 && (err != nil || len(args) > 1 || args[0] != s.Service.Name) {
					return nil, fmt.Errorf("%w: unexpected argument %q: handoff.yml describes %s; other services are named with a compose file (-f compose.yaml SERVICE), and a URL goes with --verify", errUsage, args[0], cmp.Or(s.Service.Name, "one service"))
				}
				return []target{{Settings: s}}, err
			}
			// handoff.yml points at the compose project.
			if f.Engine != "" || len(f.Swarm.Constraints) > 0 || f.Swarm.ProxyImage != "" {
				return nil, fmt.Errorf("%w: handoff.yml names a compose project (compose:) and sets engine: or swarm: beside it, which a compose service takes from its own x-handoff: move them there (x-handoff: {engine: swarm, swarm: {…}})", deploy.ErrConfig)
			}
			opts := c.compose
			opts.Files = f.ComposeFiles()
			opts.EnvFiles = append(f.Compose.EnvFiles, opts.EnvFiles...)
			opts.Profiles = append(f.Compose.Profiles, opts.Profiles...)
			opts.Name = pick(opts.Name, f.Compose.Project)
			if len(opts.Files) == 0 && opts.ProjectDir == "" {
				opts.ProjectDir = f.Dir() // compose.yaml beside handoff.yml
			}
			if len(args) == 0 {
				args = f.Compose.Services
			}
			return c.composeTargets(ctx, opts, args)
		}
	}
	opts := c.compose
	opts.Files = files
	return c.composeTargets(ctx, opts, args)
}

func (c *common) composeTargets(ctx context.Context, opts compose.Options, services []string) ([]target, error) {
	if len(services) == 0 {
		return nil, fmt.Errorf("%w: name the compose services to act on: handoff deploy -f compose.yaml web worker", errUsage)
	}
	p, err := compose.Load(ctx, opts)
	if err != nil {
		return nil, err
	}
	var out []target
	for _, name := range services {
		o := c.overrides
		if len(services) > 1 {
			o.Image, o.Service = "", "" // an image or a name for one service only
		}
		tool := compose.Tool{} // a swarm's service has no compose labels: nothing to ask docker compose
		if !compose.OnSwarm(p, name) {
			tool = compose.Ask(ctx, opts, name)
		}
		t, err := compose.Resolve(p, name, o, tool)
		if err != nil {
			return nil, err
		}
		out = append(out, target{Settings: t.Settings, notes: t.Notes})
	}
	return out, nil
}

func pick(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
