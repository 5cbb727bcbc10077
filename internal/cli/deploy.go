package cli

import (
	"context"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/handoff-dev/handoff/internal/config"
	"github.com/handoff-dev/handoff/internal/deploy"
	"github.com/handoff-dev/handoff/internal/verify"
)

type deployOptions struct {
	*common
	verify     string  // "", "on", "strict" or a URL
	verifyURL  string  // the URL given as the argument
	verifyRate float64 // requests per second
}

func newDeployCmd(c *common) *cobra.Command {
	opts := &deployOptions{common: c}
	cmd := &cobra.Command{
		Use:   "deploy [SERVICE...] [--verify[=strict] [URL]]",
		Short: "Start the new release beside the old, wait until healthy, switch Caddy, drain, retire the old",
		Long: `deploy replaces the live release of a service with a new one, without a failed request.
With handoff.yml it deploys its service. With a compose file (-f compose.yaml SERVICE...) it
deploys each named service of the project in turn: blue/green for a service behind a route,
start-first (or stop-first) for one without (a worker); services not named are not touched.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			services := args
			if n := len(args); n > 0 && (opts.verify == "on" || opts.verify == "strict") && strings.Contains(args[n-1], "://") {
				// `--verify URL` and `--verify=strict URL`: the URL is the last argument.
				opts.verifyURL, services = args[n-1], args[:n-1]
			}
			return deployRun(cmd.Context(), opts, services)
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.overrides.Image, "image", "", "image to deploy (overrides image: and skips build:)")
	f.IntVar(&c.overrides.Port, "port", 0, "port the app listens on inside the container")
	f.Var(&c.overrides.Replicas, "replicas", "containers a release runs, each on its own port (default: replicas: in handoff.yml, else 1)")
	f.StringVar(&c.overrides.HealthPath, "health-path", "", "HTTP path that answers 2xx when the app is ready")
	f.DurationVar(&c.overrides.DrainTimeout, "drain-timeout", 0, "how long in-flight requests may take to finish on the old release (default 30s)")
	f.StringVar(&c.overrides.Pull, "pull", "", "when to pull the image from its registry: missing (default: not on this host), always (a tag that moves) or never")
	f.DurationVar(&c.lockWait, "wait", 0, "wait this long for another deploy of the service to finish, instead of failing")
	f.BoolVar(&c.overrides.Canary, "canary", false, "strategy: canary for this deploy: canary.steps of handoff.yml (default 5% 2m, 25% 3m, 50% 3m), each judged against the old release (needs proxy: handoff)")
	f.DurationVar(&c.overrides.Watch, "watch", 0, "after the switch keep the old release running this long, and switch back to it if the new one does worse (needs proxy: handoff)")
	f.StringVar(&opts.verify, "verify", "", "watch the deploy from outside: GET the public URL (https://<caddy route>/, or the URL given) during the deploy and report; =strict fails the command if any request failed")
	f.Lookup("verify").NoOptDefVal = "on"
	f.Float64Var(&opts.verifyRate, "verify-rate", verify.DefaultRate, "requests per second sent by --verify")
	return cmd
}

func deployRun(ctx context.Context, opts *deployOptions, services []string) error {
	targets, err := opts.targets(ctx, services)
	if err != nil {
		return err
	}
	if len(targets) > 1 && opts.verify != "" {
		return fmt.Errorf("%w: --verify watches one service: deploy them one at a time to verify each", errUsage)
	}
	for _, t := range targets {
		if err := opts.deployOne(ctx, t); err != nil {
			return err
		}
	}
	return nil
}

// deployOne deploys one service: its notes first, then the procedure.
func (opts *deployOptions) deployOne(ctx context.Context, t target) error {
	s := t.Settings
	if opts.overrides.Image != "" {
		s.Service.Build = nil // an explicit image is deployed as it is
	}
	for _, n := range t.notes {
		(&reporter{io: opts.io}).Note(n)
	}
	d, done, err := opts.connect(ctx, s)
	if err != nil {
		return err
	}
	defer done()
	watch, strict, err := opts.startVerify(s)
	if err != nil {
		return err
	}
	rec, err := d.Deploy(ctx, s.Service)
	if watch == nil {
		return opts.finish(rec, nil, err)
	}
	report := summarize(watch, rec)
	fmt.Fprint(opts.io.Err, report.String())
	if err == nil && strict && report.Failed > 0 {
		err = fmt.Errorf("%w: %d of %d requests to %s failed during the deploy (the deploy itself completed)", errVerifyFailed, report.Failed, report.Requests, report.URL)
	}
	return opts.finish(rec, &report, err)
}

// startVerify starts --verify's requests, before anything is started.
func (o *deployOptions) startVerify(s config.Settings) (*verify.Watch, bool, error) {
	if o.verify == "" {
		return nil, false, nil
	}
	url, strict := o.verify, false
	switch o.verify {
	case "on", "strict":
		strict = o.verify == "strict"
		if o.verifyURL != "" {
			url = o.verifyURL
			break
		}
		route := s.Caddy.Route
		if _, _, err := net.SplitHostPort(route); err == nil || route == "" {
			return nil, false, fmt.Errorf("%w: --verify needs a URL when the Caddy route is not a site host: --verify=https://example.com/", errUsage)
		}
		url = "https://" + route + "/"
	}
	w, err := verify.Start(url, o.verifyRate)
	if err != nil {
		return nil, false, fmt.Errorf("%w: %v", errUsage, err)
	}
	return w, strict, nil
}

// summarize stops the watch and splits its requests at the switch.
func summarize(w *verify.Watch, rec *deploy.Record) verify.Report {
	samples := w.Stop()
	if rec == nil {
		return verify.Summarize(w.URL(), samples, "", "", time.Time{})
	}
	var switchAt time.Time
	for _, p := range rec.Phases {
		if p.Name == deploy.PhaseSwitch && p.Error == "" && rec.Switched {
			switchAt = p.Started.Add(p.Duration)
		}
	}
	return verify.Summarize(w.URL(), samples, rec.From, rec.To, switchAt)
}

// result is what --json prints for a deploy or rollback.
type result struct {
	*deploy.Record
	Verify *verify.Report `json:"verify,omitempty"`
}

// finish prints a deploy's or rollback's record: JSON, or a summary line.
func (c *common) finish(rec *deploy.Record, report *verify.Report, err error) error {
	if c.json && rec != nil {
		if jerr := c.io.JSON(result{Record: rec, Verify: report}); jerr != nil {
			return jerr
		}
	}
	if err != nil || c.json {
		return err
	}
	if rec.Kind == deploy.KindRepair {
		if rec.Phase == "" {
			fmt.Fprintf(c.io.Out, "nothing to repair: %s serves\n", rec.To)
		} else {
			fmt.Fprintf(c.io.Out, "repaired: %s serves at %s\n", rec.To, rec.NewUpstream)
		}
		return nil
	}
	verb := map[string]string{deploy.KindDeploy: "deployed", deploy.KindRollback: "rolled back to"}[rec.Kind]
	fmt.Fprintf(c.io.Out, "%s %s (%s) in %s", verb, rec.To, rec.Image, rec.Took().Round(time.Millisecond))
	switch {
	case rec.FromRemoved:
		fmt.Fprintf(c.io.Out, "; %s stopped and removed (its image stays for rollback)", rec.From)
	case rec.FromStopped:
		fmt.Fprintf(c.io.Out, "; %s stopped and kept for rollback", rec.From)
	case rec.From != "":
		fmt.Fprintf(c.io.Out, "; %s left running (see the notes above)", rec.From)
	}
	fmt.Fprintln(c.io.Out)
	return nil
}
