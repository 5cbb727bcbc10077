package cli

import (
	"context"

	"github.com/spf13/cobra"
)

func newRepairCmd(c *common) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "repair [service]",
		Short: "Put the proxy and the live release back in step (after a restart moved or stopped it), and finish what an interrupted deploy left",
		Long: `repair finishes what an interrupted deploy left (a new container that never
served is removed, an old one still running after its switch is drained and
stopped), starts the release in service again if it stopped, and points the
proxy at it when it listens somewhere else or has lost its route. When the
proxy already points at a running release it changes nothing. handoff status
says when it is needed. In a compose project, name the service.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return repairRun(cmd.Context(), c, args)
		},
	}
	cmd.Flags().DurationVar(&c.lockWait, "wait", 0, "wait this long for another deploy of the service to finish, instead of failing")
	return cmd
}

func repairRun(ctx context.Context, c *common, args []string) error {
	s, d, done, err := c.open(ctx, args)
	if err != nil {
		return err
	}
	defer done()
	rec, err := d.Repair(ctx, s.Service)
	return c.finish(rec, nil, err)
}
