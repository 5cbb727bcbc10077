package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/handoff-dev/handoff/internal/deploy"
)

type deployOptions struct {
	*common
}

func newDeployCmd(c *common) *cobra.Command {
	opts := &deployOptions{common: c}
	cmd := &cobra.Command{
		Use:   "deploy",
		Short: "Start the new release beside the old, wait until healthy, switch Caddy, drain, retire the old",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return deployRun(cmd.Context(), opts)
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.overrides.Image, "image", "", "image to deploy (overrides image: and skips build:)")
	f.IntVar(&c.overrides.Port, "port", 0, "port the app listens on inside the container")
	f.StringVar(&c.overrides.HealthPath, "health-path", "", "HTTP path that answers 2xx when the app is ready")
	f.DurationVar(&c.overrides.DrainTimeout, "drain-timeout", 0, "how long in-flight requests may take to finish on the old release (default 30s)")
	f.DurationVar(&c.lockWait, "wait", 0, "wait this long for another deploy of the service to finish, instead of failing")
	return cmd
}

func deployRun(ctx context.Context, opts *deployOptions) error {
	s, err := opts.settings()
	if err != nil {
		return err
	}
	if opts.overrides.Image != "" {
		s.Service.Build = nil // an explicit image is deployed as it is
	}
	d, done, err := opts.connect(ctx, s)
	if err != nil {
		return err
	}
	defer done()
	rec, err := d.Deploy(ctx, s.Service)
	return opts.finish(rec, err)
}

// finish prints a deploy's or rollback's record: JSON, or a summary line.
func (c *common) finish(rec *deploy.Record, err error) error {
	if c.json && rec != nil {
		if jerr := c.io.JSON(rec); jerr != nil {
			return jerr
		}
	}
	if err != nil || c.json {
		return err
	}
	verb := map[string]string{deploy.KindDeploy: "deployed", deploy.KindRollback: "rolled back to"}[rec.Kind]
	fmt.Fprintf(c.io.Out, "%s %s (%s) in %s", verb, rec.To, rec.Image, rec.Took().Round(time.Millisecond))
	if rec.From != "" {
		fmt.Fprintf(c.io.Out, "; %s stopped and kept for rollback", rec.From)
	}
	fmt.Fprintln(c.io.Out)
	return nil
}
