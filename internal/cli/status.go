package cli

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/handoff-dev/handoff/internal/deploy"
)

func newStatusCmd(c *common) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the live release, what Caddy points at, whether they agree, and missing Caddy settings",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return statusRun(cmd.Context(), c, args)
		},
	}
}

func statusRun(ctx context.Context, c *common, args []string) error {
	s, d, done, err := c.open(ctx, args)
	if err != nil {
		return err
	}
	defer done()
	st, err := d.Status(ctx, s.Service)
	if err != nil {
		return err
	}
	if c.json {
		return c.io.JSON(st)
	}
	out := c.io.Out
	fmt.Fprintf(out, "service  %s\n", st.Service)
	if st.Routed {
		to := st.Upstream
		if len(st.Endpoints) > 0 {
			to = strings.Join(st.Endpoints, ", ")
		}
		fmt.Fprintf(out, "proxy    %s → %s\n", st.Proxy, orDash(to))
	} else {
		fmt.Fprintf(out, "proxy    none: no route (a worker)\n")
	}
	if st.Live != nil && len(st.Replicas) == 0 {
		fmt.Fprintf(out, "live     %s  image %s  up %s\n", st.Live.Name, st.Live.Image, st.Live.Uptime)
	}
	if len(st.Replicas) > 0 {
		which := fmt.Sprintf("release %d: %d replicas", st.Live.Release, len(st.Replicas))
		if st.Live.Adopted {
			which = fmt.Sprintf("%d adopted containers", len(st.Replicas))
		}
		fmt.Fprintf(out, "live     %s  image %s\n", which, st.Live.Image)
		tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  REPLICA\tCONTAINER\tSTATE\tHEALTH\tRESTARTS\tIN FLIGHT\tUPSTREAM")
		for _, r := range st.Replicas {
			inFlight := "-"
			if r.InFlight != nil {
				inFlight = strconv.Itoa(*r.InFlight)
			}
			fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\t%d\t%s\t%s\n", r.Replica, r.Name, stateOf(r), orDash(r.Health), r.Restarts, inFlight, orDash(r.Upstream))
		}
		tw.Flush()
	}
	if st.Live != nil {
		fmt.Fprintf(out, "health   %s\n", st.Check)
	}
	switch {
	case st.Agree && !st.Routed:
		fmt.Fprintln(out, "running  yes: the live release runs")
	case st.Agree:
		fmt.Fprintln(out, "agree    yes: the proxy points at the live release")
	default:
		fmt.Fprintf(out, "agree    NO: %s\n", st.Problem)
	}
	if st.Agree && st.Problem != "" {
		fmt.Fprintf(out, "warning  %s\n", st.Problem)
	}
	if st.Canary != "" {
		fmt.Fprintf(out, "canary   %s\n", st.Canary)
	}
	if len(st.Releases) > 0 {
		fmt.Fprintln(out, "\nreleases")
		tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  RELEASE\tCONTAINER\tIMAGE\tSTATE\tUPSTREAM")
		for _, r := range st.Releases {
			fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\t%s\n", r.Release, r.Name, r.Image, stateOf(r), orDash(r.Upstream))
		}
		tw.Flush()
	}
	if len(st.Parts) > 0 {
		fmt.Fprintln(out, "\nnodes")
		printParts(out, st.Parts)
	}
	if st.LastEvent != nil {
		e := st.LastEvent
		fmt.Fprintf(out, "\nlast     %s %s %s (%s ago)\n", e.Kind, e.To, e.Outcome, time.Since(e.Started).Round(time.Second))
	}
	for _, a := range st.Advice {
		fmt.Fprintf(out, "advice   %s\n", a)
	}
	return nil
}

// printParts is a row per part of the proxy (a swarm's node): where it runs,
// what its proxy serves, and what is amiss with it.
func printParts(out io.Writer, parts []deploy.PartStatus) {
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  NODE\tROLE\tSTATE\tAVAILABILITY\tPROXY\tGENERATION\tSERVES\tIN FLIGHT\tNOTE")
	for _, p := range parts {
		gen, inFlight := "-", "-"
		if p.Generation > 0 {
			gen = strconv.FormatUint(p.Generation, 10)
		}
		if p.InFlight != nil {
			inFlight = strconv.FormatInt(*p.InFlight, 10)
			if p.Draining > 0 {
				inFlight += fmt.Sprintf(" (%d draining)", p.Draining)
			}
		}
		proxy := cmp.Or(p.Proxy, "none")
		if p.State == "" {
			proxy = "-" // a node Swarm no longer lists (it left): its proxy task is not known
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.Name, orDash(p.Role), orDash(p.State), orDash(p.Availability),
			proxy, gen, orDash(p.Route), inFlight, orDash(p.Note))
	}
	tw.Flush()
}

func stateOf(c deploy.ContainerStatus) string {
	if c.Running {
		return "running " + c.Uptime.String()
	}
	return "stopped"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
