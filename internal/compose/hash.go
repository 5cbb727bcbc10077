package compose

import (
	"bytes"
	"context"
	"os"
	"strings"
	"time"

	"github.com/handoff-dev/handoff/internal/hostcmd"
)

// Tool is what the user's own compose tool says of a service.
type Tool struct {
	Hash    string // the service's config hash; "" when no tool answered
	Version string // the tool's version, for compose's version label
}

// Ask asks the user's own compose tool for a service's config hash, the
// label by which `docker compose up` knows a container is up to date:
// compose keeps the hash's exact form to itself, so the tool that will
// compare it is the one to compute it. $HANDOFF_COMPOSE names the tool;
// else `docker compose`, else `docker-compose`.
func Ask(ctx context.Context, o Options, service string) Tool {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var args []string
	for _, f := range o.Files {
		args = append(args, "-f", f)
	}
	for _, f := range o.EnvFiles {
		args = append(args, "--env-file", f)
	}
	for _, p := range o.Profiles {
		args = append(args, "--profile", p)
	}
	if o.Name != "" {
		args = append(args, "-p", o.Name)
	}
	if o.ProjectDir != "" {
		args = append(args, "--project-directory", o.ProjectDir)
	}
	for _, tool := range composeTools() {
		out, err := run(ctx, tool, append(args, "config", "--hash="+service)...)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(out, "\n") {
			if name, hash, ok := strings.Cut(strings.TrimSpace(line), " "); ok && name == service {
				version, _ := run(ctx, tool, "version", "--short")
				return Tool{Hash: strings.TrimSpace(hash), Version: strings.TrimPrefix(strings.TrimSpace(version), "v")}
			}
		}
	}
	return Tool{}
}

func run(ctx context.Context, tool []string, args ...string) (string, error) {
	cmd := hostcmd.CommandContext(ctx, tool[0], append(tool[1:], args...)...)
	var out bytes.Buffer
	cmd.Stdout = &out
	err := cmd.Run()
	return out.String(), err
}

func composeTools() [][]string {
	if t := os.Getenv("HANDOFF_COMPOSE"); t != "" {
		return [][]string{strings.Fields(t)}
	}
	return [][]string{{"docker", "compose"}, {"docker-compose"}}
}
