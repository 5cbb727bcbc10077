package cli

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/handoff-dev/handoff/internal/deploy"
)

type maintenanceOptions struct {
	message    string
	page       string
	retryAfter time.Duration
	allow      []string
}

func newMaintenanceCmd(c *common) *cobra.Command {
	opts := &maintenanceOptions{}
	cmd := &cobra.Command{
		Use:   "maintenance on|off [SERVICE]",
		Short: "Answer the service's requests with a maintenance page (503 and Retry-After), or serve the app again",
		Long: `maintenance on answers every request to the service with 503, a page (--message, or
your own --page FILE) and Retry-After, except the paths in --allow (default: the
service's health path unless it is /), which still reach the app, so that a front load
balancer's health check passes. maintenance off takes the page away, exactly.

An allowed path is matched without its query (a health path written /health?full=1
lets /health through, with any query), and as the app sees it (behind handle_path,
without the prefix).

With Caddy, handoff adds a route (@id handoff-maintenance-SERVICE-N) right before each
of the service's own routes, with their matchers, so that the page answers exactly the
requests the service's reverse_proxy would get (another handle block of the same site
is served as before), and removes just those routes again. The service's own routes
are not touched, so a deploy during maintenance switches them as usual. The page
lives in Caddy's running config: a reload of the Caddyfile ends it. With handoff proxy
the page is saved in the proxy's state and holds across its restarts.`,
		Args:      cobra.RangeArgs(1, 2),
		ValidArgs: []string{"on", "off"},
		RunE: func(cmd *cobra.Command, args []string) error {
			switch args[0] {
			case "on", "off":
			default:
				return fmt.Errorf("%w: maintenance %q: say on or off", errUsage, args[0])
			}
			return maintenanceRun(cmd.Context(), c, opts, args[0] == "on", args[1:])
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.message, "message", "", "the text of the default page")
	f.StringVar(&opts.page, "page", "", "an HTML file to answer with instead of the default page")
	f.DurationVar(&opts.retryAfter, "retry-after", deploy.DefaultRetryAfter, "the Retry-After the page gives")
	f.StringArrayVar(&opts.allow, "allow", nil, "an exact path that still reaches the app, with any query (repeat; default: the health path unless it is /)")
	return cmd
}

func maintenanceRun(ctx context.Context, c *common, opts *maintenanceOptions, on bool, args []string) error {
	s, err := c.settings(ctx, args)
	if err != nil {
		return err
	}
	if s.Service.Rollout != deploy.RolloutBlueGreen {
		return fmt.Errorf("%w: %s has no route (a worker): there is nothing to answer with a page", errUsage, s.Service.Name)
	}
	m := deploy.Maintenance{Service: s.Service.Name, Message: opts.message, RetryAfter: opts.retryAfter}
	if opts.page != "" {
		b, err := os.ReadFile(opts.page)
		if err != nil {
			return fmt.Errorf("%w: --page: %v", errUsage, err)
		}
		m.Page = string(b)
	}
	if opts.retryAfter < 0 {
		return fmt.Errorf("%w: --retry-after %s: a duration cannot be negative", errUsage, opts.retryAfter)
	}
	m.Allow = allowedPaths(opts.allow, s.Service.Health.Path)
	d, done, err := c.connect(ctx, s)
	if err != nil {
		return err
	}
	defer done()
	mt, ok := d.Proxy.(deploy.Maintainer)
	if !ok {
		return fmt.Errorf("%w: %s cannot show a maintenance page", errUsage, d.Proxy.Describe())
	}
	if !on {
		was, err := mt.MaintenanceOff(ctx, s.Service.Name)
		if err != nil {
			return err
		}
		if !was {
			fmt.Fprintf(c.io.Out, "%s was not in maintenance: nothing changed\n", s.Service.Name)
			return nil
		}
		fmt.Fprintf(c.io.Out, "maintenance off: %s serves %s again\n", d.Proxy.Describe(), s.Service.Name)
		return nil
	}
	// The route is found by the upstream of one of the service's releases
	// once handoff has switched it.
	rels, err := d.Runtime.Releases(ctx, s.Service.Name)
	if err != nil {
		return err
	}
	var known []string
	for _, r := range rels {
		if r.Upstream != "" {
			known = append(known, r.Upstream)
		}
	}
	if err := mt.MaintenanceOn(ctx, m, known); err != nil {
		return err
	}
	fmt.Fprintf(c.io.Out, "maintenance on: %s answers %s with 503 and Retry-After: %d", d.Proxy.Describe(), s.Service.Name, m.RetryAfterSeconds())
	if len(m.Allow) > 0 {
		fmt.Fprintf(c.io.Out, "; %v still reach the app", m.Allow)
	}
	fmt.Fprintf(c.io.Out, "\n`handoff maintenance off` ends it\n")
	return nil
}

// allowedPaths are the paths that still reach the app in maintenance:
// those given with --allow, or else the health path unless it is /. Both
// Caddy's path matcher and handoff proxy match a request's path without
// its query, so a query is cut off here: kept, it never matched, and a
// health check written /health?full=1 got the page.
func allowedPaths(allow []string, healthPath string) []string {
	if allow == nil {
		if p := pathOf(healthPath); p != "" && p != "/" {
			return []string{p}
		}
		return nil
	}
	out := []string{}
	for _, a := range allow {
		if p := pathOf(a); !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// pathOf is a request target's path: what comes before its query.
func pathOf(target string) string {
	path, _, _ := strings.Cut(target, "?")
	return path
}
