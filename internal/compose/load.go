// Package compose turns services of a compose project into what handoff
// deploys. The project is loaded with compose-go exactly as `docker
// compose` loads it (several files, .env and --env-file, interpolation,
// profiles, extends, include, the project name rules); each named service
// becomes a deploy.Service with its whole definition, its compose labels,
// and the handoff settings of its `x-handoff` block.
package compose

import (
	"context"
	"fmt"
	"os"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"go.yaml.in/yaml/v3"

	"github.com/handoff-dev/handoff/internal/config"
	"github.com/handoff-dev/handoff/internal/deploy"
)

// Options name the project as `docker compose` flags do.
type Options struct {
	Files      []string // -f, in order ("" : compose.yaml and its kin, as compose finds them)
	EnvFiles   []string // --env-file
	Profiles   []string // --profile
	Name       string   // -p
	ProjectDir string   // --project-directory
}

// Load reads the project as `docker compose` does, with each service's
// environment resolved by compose's own rules (env_file, then environment).
func Load(ctx context.Context, o Options) (*types.Project, error) {
	opts, err := cli.NewProjectOptions(o.Files,
		cli.WithWorkingDirectory(o.ProjectDir),
		cli.WithOsEnv,
		cli.WithEnvFiles(o.EnvFiles...),
		cli.WithDotEnv,
		cli.WithConfigFileEnv,
		cli.WithDefaultConfigPath,
		cli.WithEnvFiles(o.EnvFiles...), // again: the project directory may have moved
		cli.WithDotEnv,
		cli.WithDefaultProfiles(o.Profiles...),
		cli.WithName(o.Name),
	)
	if err != nil {
		return nil, fmt.Errorf("%w: compose project: %v", deploy.ErrConfig, err)
	}
	p, err := opts.LoadProject(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: compose project: %v", deploy.ErrConfig, err)
	}
	p, err = p.WithServicesEnvironmentResolved(true)
	if err != nil {
		return nil, fmt.Errorf("%w: compose project: %v", deploy.ErrConfig, err)
	}
	// The model again, before compose-go splits its command strings; not
	// interpolated, so that its warnings (a variable not set) come once.
	if err := cli.WithLoadOptions(func(lo *loader.Options) { lo.SkipInterpolation, lo.SkipValidation = true, true })(opts); err != nil {
		return nil, err
	}
	model, err := opts.LoadModel(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: compose project: %v", deploy.ErrConfig, err)
	}
	if err := checkCommands(model, p.ServiceNames()); err != nil {
		return nil, err
	}
	return p, nil
}

// checkCommands refuses a command or entrypoint written as a string with
// a shell operator in it: compose splits such a string into words and
// silently drops everything from the operator on (`./app migrate &&
// ./app seed` runs the migration only), as `docker compose` itself does.
// model is the project before compose-go split the strings.
func checkCommands(model map[string]any, services []string) error {
	all, _ := model["services"].(map[string]any)
	for _, name := range services {
		s, _ := all[name].(map[string]any)
		for _, key := range []string{"command", "entrypoint"} {
			v, ok := s[key].(string)
			if !ok {
				continue
			}
			if _, err := config.SplitCommand(v); err != nil {
				return fmt.Errorf("%w: compose project: service %s: %s: %v", deploy.ErrConfig, name, key, err)
			}
		}
	}
	return nil
}

// IsComposeFile says whether path holds a compose file rather than a
// handoff.yml: a top-level `services:` mapping.
func IsComposeFile(path string) bool {
	data, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	return hasServicesKey(data)
}

func hasServicesKey(data []byte) bool {
	var top map[string]any
	if yaml.Unmarshal(data, &top) != nil {
		return false
	}
	_, ok := top["services"]
	return ok
}
