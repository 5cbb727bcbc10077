package compose

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"strings"
	"time"
)

// Hash asks the user's own compose tool for a service's config hash, the
// label by which `docker compose up` knows a container is up to date:
// compose keeps the hash's exact form to itself, so the tool that will
// compare it is the one to compute it. $HANDOFF_COMPOSE names the tool;
// else `docker compose`, else `docker-compose`. "" when none answers.
func Hash(ctx context.Context, o Options, service string) string {
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
	args = append(args, "config", "--hash="+service)
	for _, tool := range composeTools() {
		cmd := exec.CommandContext(ctx, tool[0], append(tool[1:], args...)...)
		var out bytes.Buffer
		cmd.Stdout = &out
		if cmd.Run() != nil {
			continue
		}
		for _, line := range strings.Split(out.String(), "\n") {
			if name, hash, ok := strings.Cut(strings.TrimSpace(line), " "); ok && name == service {
				return strings.TrimSpace(hash)
			}
		}
	}
	return ""
}

func composeTools() [][]string {
	if t := os.Getenv("HANDOFF_COMPOSE"); t != "" {
		return [][]string{strings.Fields(t)}
	}
	return [][]string{{"docker", "compose"}, {"docker-compose"}}
}
