package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/moby/moby/client"
	"github.com/spf13/cobra"

	"github.com/handoff-dev/handoff/internal/config"
	"github.com/handoff-dev/handoff/internal/deploy"
	"github.com/handoff-dev/handoff/internal/state"
	"github.com/handoff-dev/handoff/internal/swarm"
)

func newHistoryCmd(c *common) *cobra.Command {
	limit := 20
	var bars bool
	cmd := &cobra.Command{
		Use:   "history",
		Short: "List deploys and rollbacks with their image, outcome and the duration of each phase",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return historyRun(cmd.Context(), c, limit, bars, args)
		},
	}
	cmd.Flags().IntVarP(&limit, "limit", "n", limit, "how many records to show")
	cmd.Flags().BoolVar(&bars, "chart", false, "draw each deploy's phases as a bar, to the same scale, so a slow phase stands out")
	return cmd
}

func historyRun(ctx context.Context, c *common, limit int, bars bool, args []string) error {
	s, err := c.settings(ctx, args)
	if err != nil {
		return err
	}
	history, where, done, err := c.historyOf(s)
	if err != nil {
		return err
	}
	defer done()
	recs, err := history.List(s.Service.Name)
	if err != nil {
		return err
	}
	if limit > 0 && len(recs) > limit {
		recs = recs[:limit]
	}
	if c.json {
		return c.io.JSON(recs)
	}
	if len(recs) == 0 {
		fmt.Fprintf(c.io.Out, "no deploys of %s recorded in %s\n", s.Service.Name, where)
		return nil
	}
	if bars {
		fmt.Fprint(c.io.Out, phaseChart(recs, chartWidth))
		return nil
	}
	tw := tabwriter.NewWriter(c.io.Out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STARTED\tKIND\tFROM\tTO\tIMAGE\tOUTCOME\tTOOK\tPHASES")
	for _, r := range recs {
		var phases []string
		for _, p := range r.Phases {
			ph := fmt.Sprintf("%s %s", p.Name, p.Duration.Round(time.Millisecond))
			if p.ExitCode != nil {
				ph += fmt.Sprintf(" (exit %d)", *p.ExitCode)
			}
			phases = append(phases, ph)
		}
		outcome := r.Outcome
		if r.Error != "" {
			outcome += ": " + firstWords(r.Error, 60)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Started.Local().Format("2006-01-02 15:04:05"), r.Kind,
			orDash(r.From), orDash(r.To), imageOf(r), outcome, r.Took().Round(time.Millisecond), strings.Join(phases, ", "))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	printNodeSwitches(c.io.Out, recs)
	return nil
}

// printNodeSwitches shows, for each record of a proxy made of several (a
// swarm's nodes), how every node took each of its switches.
func printNodeSwitches(out io.Writer, recs []deploy.Record) {
	for _, r := range recs {
		if len(r.Nodes) == 0 {
			continue
		}
		fmt.Fprintf(out, "\n%s %s %s, per node:\n", r.Started.Local().Format("2006-01-02 15:04:05"), r.Kind, orDash(r.To))
		tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
		for i, n := range r.Nodes {
			if i == 0 || n.Route != r.Nodes[i-1].Route || n.Generation != r.Nodes[i-1].Generation {
				sw := "  switch to " + n.Route
				if n.Generation > 0 {
					sw += fmt.Sprintf(" (generation %d)", n.Generation)
				}
				fmt.Fprintln(tw, sw)
			}
			result := n.Result
			if n.ExitCode != 0 {
				result += fmt.Sprintf(" (exit %d)", n.ExitCode)
			}
			took := "-"
			if n.Took > 0 {
				took = n.Took.Round(time.Millisecond).String()
			}
			fmt.Fprintf(tw, "    %s\t%s\t%s\t%s\n", n.Node, result, took, orDash(n.Detail))
		}
		tw.Flush()
	}
}

// historyOf is where s's records are kept, and its name for messages: on a
// swarm the record services every manager shares, else the state directory.
// Reading them needs a manager and nothing else: no registry login, no proxy.
func (c *common) historyOf(s config.Settings) (deploy.History, string, func(), error) {
	if s.Engine == config.EngineSwarm {
		if c.stateDir != "" {
			fmt.Fprintf(c.io.Err, "note: --state-dir %s is not read on a swarm: its records are the swarm's, shared by every manager\n", c.stateDir)
		}
		manager, err := client.New(client.FromEnv)
		if err != nil {
			return nil, "", nil, err
		}
		return swarm.NewStore(manager), "the swarm's records", func() { _ = manager.Close() }, nil
	}
	dir := c.stateDir
	if dir == "" {
		dir = state.DefaultDir()
	}
	return state.Store{Dir: dir}, dir, func() {}, nil
}

// chartWidth is how many columns the longest deploy's bar takes.
const chartWidth = 60

// phaseLetters draw each phase in a bar.
var phaseLetters = []struct {
	phase  string
	letter rune
}{
	{deploy.PhaseRecover, 'c'}, {deploy.PhaseImage, 'i'}, {deploy.PhaseHook, 'p'}, {deploy.PhaseRelease, 'r'},
	{deploy.PhaseStart, 's'}, {deploy.PhaseHealth, 'h'}, {deploy.PhaseCanary, 'k'}, {deploy.PhaseSwitch, 'w'}, {deploy.PhaseWatch, 'v'},
	{deploy.PhaseDrain, 'd'}, {deploy.PhaseRetire, 't'},
}

// phaseChart draws recs (newest first) as bars of their phases, all to
// the scale of the longest, a letter per phase, so that a slow one stands out.
func phaseChart(recs []deploy.Record, width int) string {
	var longest time.Duration
	for _, r := range recs {
		longest = max(longest, phasesTook(r))
	}
	if longest == 0 {
		return "no phases recorded yet\n"
	}
	scale := longest / time.Duration(width)
	var b strings.Builder
	var legend []string
	for _, p := range phaseLetters {
		legend = append(legend, fmt.Sprintf("%c %s", p.letter, p.phase))
	}
	fmt.Fprintf(&b, "one column ≈ %s; %s\n", scale.Round(time.Millisecond), strings.Join(legend, " · "))
	tw := tabwriter.NewWriter(&b, 2, 4, 2, ' ', 0)
	for _, r := range recs {
		var bar strings.Builder
		for _, p := range r.Phases {
			letter := '?'
			for _, pl := range phaseLetters {
				if pl.phase == p.Name {
					letter = pl.letter
				}
			}
			n := int((p.Duration + scale/2) / scale)
			if p.Error != "" {
				letter = '!' // the phase that failed
				n = max(n, 1)
			}
			bar.WriteString(strings.Repeat(string(letter), n))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Started.Local().Format("2006-01-02 15:04:05"), r.Kind, orDash(r.To),
			r.Outcome, phasesTook(r).Round(time.Millisecond), bar.String())
	}
	tw.Flush()
	return b.String()
}

func phasesTook(r deploy.Record) time.Duration {
	var d time.Duration
	for _, p := range r.Phases {
		d += p.Duration
	}
	return d
}

// imageOf names a record's image, with the digest it was pulled as: the
// exact image, whatever its tag names since.
func imageOf(r deploy.Record) string {
	if _, digest, ok := strings.Cut(r.Digest, "@"); ok {
		return fmt.Sprintf("%s (%s)", orDash(r.Image), firstWords(digest, 19))
	}
	return orDash(r.Image)
}

func firstWords(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
