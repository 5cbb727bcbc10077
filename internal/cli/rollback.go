package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"
)

type rollbackOptions struct {
	*common
	to int
}

func newRollbackCmd(c *common) *cobra.Command {
	opts := &rollbackOptions{common: c}
	cmd := &cobra.Command{
		Use:   "rollback",
		Short: "Put the previous kept release back in service (start, health, switch, drain, stop)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return rollbackRun(cmd.Context(), opts, args)
		},
	}
	cmd.Flags().IntVar(&opts.to, "to", 0, "release number to go back to (default: the one before the live one)")
	cmd.Flags().DurationVar(&c.lockWait, "wait", 0, "wait this long for another deploy of the service to finish, instead of failing")
	return cmd
}

func rollbackRun(ctx context.Context, opts *rollbackOptions, args []string) error {
	s, d, done, err := opts.open(ctx, args)
	if err != nil {
		return err
	}
	defer done()
	rec, err := d.Rollback(ctx, s.Service, opts.to)
	if err == nil && s.Compose && rec.Image != s.Service.Image {
		(&reporter{io: opts.io}).Note(fmt.Sprintf("the compose file names %s: a `docker compose up` would replace %s (%s) with it, in place; set the file's image to %s to keep this release, or deploy again with handoff", s.Service.Image, rec.To, rec.Image, rec.Image))
	}
	return opts.finish(rec, nil, err)
}
