package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"slices"
	"strings"

	"github.com/compose-spec/compose-go/v2/types"
	"github.com/spf13/cobra"

	"github.com/handoff-dev/handoff/internal/caddy"
	"github.com/handoff-dev/handoff/internal/compose"
	"github.com/handoff-dev/handoff/internal/config"
	"github.com/handoff-dev/handoff/internal/deploy"
	"github.com/handoff-dev/handoff/internal/docker"
)

func newInitCmd(c *common) *cobra.Command {
	var write bool
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Describe what runs today (a container behind a Caddy route, or a compose project and its Caddy) as a commented handoff.yml or x-handoff blocks",
		Long: `init looks at what runs today and writes down how handoff would deploy it, so that the
first deploy adopts it without downtime: for a container behind a Caddy route, a commented
handoff.yml; for a compose project (-f compose.yaml, or compose.yaml here), the x-handoff
blocks to paste into it. It reads Caddy's routes through its admin API (--caddy-admin) and
changes nothing. Environment values are never written, only their names.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return initRun(cmd.Context(), c, write)
		},
	}
	cmd.Flags().BoolVar(&write, "write", false, "write ./handoff.yml instead of printing it (never over an existing file)")
	return cmd
}

func initRun(ctx context.Context, c *common, write bool) error {
	admin := or(c.overrides.CaddyAdmin, caddy.DefaultAdmin)
	sites, siteErr := caddy.Sites(ctx, admin)
	files := c.files
	if len(files) == 0 {
		for _, name := range []string{"compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml"} {
			if _, err := os.Stat(name); err == nil {
				files = []string{name}
				break
			}
		}
	}
	if len(files) > 0 && compose.IsComposeFile(files[0]) {
		opts := c.compose
		opts.Files = files
		p, err := compose.Load(ctx, opts)
		if err != nil {
			return err
		}
		_, err = fmt.Fprint(c.io.Out, composeBlocks(p, sites, siteErr, c.overrides, admin))
		return err
	}
	if siteErr != nil {
		return fmt.Errorf("%w (handoff init reads Caddy's routes; pass --caddy-admin)", siteErr)
	}
	text, err := hostFile(ctx, sites, c.overrides, admin)
	if err != nil {
		return err
	}
	if !write {
		_, err = fmt.Fprint(c.io.Out, text)
		return err
	}
	f, err := os.OpenFile(config.DefaultFile, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%w: %s exists; handoff init does not overwrite it (leave out --write to print)", errUsage, config.DefaultFile)
	}
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.WriteString(text); err != nil {
		return err
	}
	fmt.Fprintf(c.io.Err, "wrote %s: read it, then `handoff deploy`\n", config.DefaultFile)
	return nil
}

// hostFile writes handoff.yml for the container a Caddy route proxies to.
func hostFile(ctx context.Context, sites []caddy.Site, o config.Overrides, admin string) (string, error) {
	rt, err := docker.New(ctx)
	if err != nil {
		return "", err
	}
	defer rt.Close()
	var found []string
	for _, s := range sites {
		if len(s.Upstreams) == 0 {
			continue
		}
		route := s.Upstreams[0] // a site with no host is named by an upstream
		if len(s.Hosts) > 0 {
			route = s.Hosts[0]
		}
		if o.CaddyRoute != "" && o.CaddyRoute != route && !slices.Contains(s.Hosts, o.CaddyRoute) {
			continue
		}
		// Every upstream a container of this host: one container, or the
		// replicas of one release (`reverse_proxy app1:8000 app2:8000`).
		var names []string
		var first *deploy.Container
		for _, u := range s.Upstreams {
			c, err := rt.Serving(ctx, u)
			if err != nil || c == nil {
				names = nil
				break
			}
			if first == nil {
				first = c
			}
			names = append(names, c.Name)
		}
		if len(names) == 0 {
			continue
		}
		d, err := rt.Describe(ctx, first.ID, first.Port)
		if err != nil {
			return "", err
		}
		found = append(found, describeHost(d, names, route, strings.Join(s.Upstreams, " "), admin, o.Caddyfile))
	}
	if len(found) == 0 {
		return "", fmt.Errorf("%w: no Caddy route of %s proxies to a container on this host (its routes: %s); start the app in a container and point Caddy at it first", errUsage, admin, describeSites(sites))
	}
	if len(found) > 1 {
		return found[0] + fmt.Sprintf("\n# Caddy routes to %d containers here; this file is for the first. For another: handoff init --caddy-route HOST\n", len(found)), nil
	}
	return found[0], nil
}

func describeHost(d docker.Description, containers []string, route, upstream, admin, caddyfile string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# handoff.yml, written by `handoff init` from what runs now: %s behind Caddy's route %s.\n", strings.Join(containers, ", "), route)
	if len(containers) > 1 {
		fmt.Fprintf(&b, "# The first `handoff deploy` adopts those %d containers as one release (stopped, kept for rollback);\n# this file is written from %s.\n", len(containers), d.Name)
	} else {
		b.WriteString("# The first `handoff deploy` adopts that container (stopped, kept for rollback).\n")
	}
	fmt.Fprintf(&b, "service: %s\n", serviceName(d.Name))
	fmt.Fprintf(&b, "image: %s                 # or build: (see the README)\n", d.Image)
	fmt.Fprintf(&b, "port: %d\n", d.Port)
	if len(containers) > 1 {
		fmt.Fprintf(&b, "replicas: %d                     # containers a release runs, as now\n", len(containers))
	}
	if len(d.Env) > 0 {
		fmt.Fprintf(&b, "# The container has these environment variables; their values are not written here.\n# Put them in an env file (KEY=VALUE lines, read as docker --env-file does):\n# env_file: .env    # %s\n", strings.Join(d.Env, ", "))
	}
	if len(d.Binds) > 0 {
		fmt.Fprintf(&b, "volumes: [%s]\n", quoteList(d.Binds))
	}
	if len(d.Networks) > 0 {
		fmt.Fprintf(&b, "network: %s\n", d.Networks[0])
	}
	restart := d.Restart
	if restart == "" || restart == "no" {
		restart = "unless-stopped   # it had none: this brings it back after a crash or a reboot"
	}
	fmt.Fprintf(&b, "restart: %s\n", restart)
	b.WriteString("health:\n  path: /             # a page that answers 2xx once the app really serves\n  start_timeout: 2m   # raise it for apps that preload\n")
	b.WriteString("drain_timeout: 30s\nkeep: 3\ncaddy:\n")
	fmt.Fprintf(&b, "  admin: %s\n  route: %s        # was %s\n", admin, route, upstream)
	if caddyfile == "" {
		caddyfile = "/etc/caddy/Caddyfile"
		b.WriteString("  # the Caddyfile Caddy starts from, kept in step with every switch (check the path):\n")
	}
	fmt.Fprintf(&b, "  caddyfile: %s\n", caddyfile)
	return b.String()
}

// composeBlocks writes the x-handoff blocks for a compose project: which
// services Caddy routes to, and what the others are.
func composeBlocks(p *types.Project, sites []caddy.Site, siteErr error, o config.Overrides, admin string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# x-handoff blocks for compose project %s, written by `handoff init`. Paste them into\n# the compose file; `handoff deploy -f compose.yaml SERVICE` then deploys a service.\n", p.Name)
	if siteErr != nil {
		fmt.Fprintf(&b, "# Caddy's admin API did not answer at %s (%v): the routes below are guesses.\n", admin, siteErr)
	}
	b.WriteString("\nx-handoff:                       # top level: what every service shares\n  caddy:\n")
	fmt.Fprintf(&b, "    admin: %s   # a unix socket on a volume shared with Caddy's container is the safe choice (docs/compose.md)\n", admin)
	caddyfile := or(o.Caddyfile, "./caddy/Caddyfile")
	fmt.Fprintf(&b, "    caddyfile: %s   # mount its directory into Caddy's container, not the file\n", caddyfile)
	b.WriteString("\nservices:\n")
	for _, name := range p.ServiceNames() {
		s := p.Services[name]
		if strings.Contains(s.Image, "caddy") || name == "caddy" {
			continue
		}
		route := ""
		for _, site := range sites {
			for _, up := range site.Upstreams {
				host, _, _ := net.SplitHostPort(up)
				if host == name || strings.HasPrefix(host, p.Name+"-"+name+"-") || strings.HasPrefix(host, p.Name+"_"+name+"_") {
					route = up
					if len(site.Hosts) > 0 {
						route = site.Hosts[0]
					}
				}
			}
		}
		fmt.Fprintf(&b, "  %s:\n    x-handoff:\n", name)
		switch {
		case route != "":
			fmt.Fprintf(&b, "      route: %s            # Caddy proxies this site to %s\n", route, name)
			if s.HealthCheck == nil {
				b.WriteString("      health: {path: /}       # a page that answers 2xx once the app really serves\n")
			} else {
				b.WriteString("      # its healthcheck: decides when a release is ready (start_period and retries set how long)\n")
			}
			b.WriteString("      drain_timeout: 30s\n")
		case len(s.Ports) > 0:
			b.WriteString("      # publishes ports, but no Caddy route reaches it: give it a route (route: HOST) to deploy it\n      # with handoff; a second copy could not hold the same host port\n")
		default:
			b.WriteString("      strategy: start-first   # no route: a worker; stop-first if it must never run twice (a scheduler)\n")
		}
		if s.ContainerName != "" {
			fmt.Fprintf(&b, "      # container_name: %s must go: two releases cannot share a name\n", s.ContainerName)
		}
	}
	return b.String()
}

func serviceName(container string) string {
	var b strings.Builder
	for i, r := range container {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || i > 0 && (r == '-' || r == '_' || r == '.')
		if ok {
			b.WriteRune(r)
		}
	}
	if b.Len() == 0 {
		return "app"
	}
	return b.String()
}

func quoteList(list []string) string {
	var q []string
	for _, s := range list {
		q = append(q, fmt.Sprintf("%q", s))
	}
	return strings.Join(q, ", ")
}

func describeSites(sites []caddy.Site) string {
	var parts []string
	for _, s := range sites {
		where := "any host"
		if len(s.Hosts) > 0 {
			where = strings.Join(s.Hosts, ",")
		}
		parts = append(parts, where+" → "+strings.Join(s.Upstreams, ","))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, "; ")
}
