package cli

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/handoff-dev/handoff/internal/deploy"
	"github.com/handoff-dev/handoff/internal/state"
)

func newHistoryCmd(c *common) *cobra.Command {
	limit := 20
	cmd := &cobra.Command{
		Use:   "history",
		Short: "List deploys and rollbacks with their image, outcome and the duration of each phase",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return historyRun(cmd.Context(), c, limit, args)
		},
	}
	cmd.Flags().IntVarP(&limit, "limit", "n", limit, "how many records to show")
	return cmd
}

func historyRun(ctx context.Context, c *common, limit int, args []string) error {
	s, err := c.settings(ctx, args)
	if err != nil {
		return err
	}
	dir := c.stateDir
	if dir == "" {
		dir = state.DefaultDir()
	}
	recs, err := state.Store{Dir: dir}.List(s.Service.Name)
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
		fmt.Fprintf(c.io.Out, "no deploys of %s recorded in %s\n", s.Service.Name, dir)
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
	return tw.Flush()
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
