package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/spf13/cobra"

	"github.com/handoff-dev/handoff/internal/deploy"
	"github.com/handoff-dev/handoff/internal/proxy/proxyclient"
	"github.com/handoff-dev/handoff/internal/proxy/wire"
)

// proxyCtlOptions are what `handoff proxy ctl switch` takes: what the job
// a swarm deploy runs on each node asks of that node's proxy.
type proxyCtlOptions struct {
	IO         *IO
	Control    func(socket, service string) *proxyclient.Control
	Socket     string
	Service    string
	To         string
	Release    string
	Expect     []string
	Generation uint64
	Listen     string // where to serve the service if the proxy has none yet
	Drain      time.Duration
	Converge   time.Duration
	Poll       time.Duration // how often the drain is looked at
}

// newProxyCtlCmd is `handoff proxy ctl`, the commands a swarm deploy's
// per-node job runs against that node's proxy socket (docs/proxy.md).
func newProxyCtlCmd(c *common, socket *string) *cobra.Command {
	ctl := &cobra.Command{Use: "ctl", Short: "Drive this node's handoff proxy (what a swarm deploy's per-node job runs)", Hidden: true}
	o := proxyCtlOptions{IO: c.io, Control: proxyclient.NewControl, Poll: 100 * time.Millisecond}
	sw := &cobra.Command{
		Use:   "switch",
		Short: "Switch --service to the one endpoint --to, wait for the old endpoints to drain, retire them; JSON progress lines on stdout",
		Long: `Exit status: 0 switched and drained, 3 not converged (the proxy's lookup never held
--expect; nothing changed), 4 refused: the proxy holds a generation at or above
--generation (nothing changed), 5 switched but the drain timed out (the old
endpoints were retired at --drain), 2 a usage error, 1 anything else.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Socket, o.Service = *socket, c.overrides.Service
			return ctlExit(proxyCtlSwitch(cmd.Context(), o))
		},
	}
	f := sw.Flags()
	f.StringVar(&o.To, "to", "", "the endpoint to switch to, host:port (a name such as tasks.api-green:8000 is looked up by the proxy)")
	f.StringVar(&o.Release, "release", "", "the release name the route gives the endpoint")
	f.StringSliceVar(&o.Expect, "expect", nil, "IPs the proxy's lookup of --to must hold before it switches (the release's task IPs)")
	f.Uint64Var(&o.Generation, "generation", 0, "this switch's generation: the proxy refuses one at or below its own")
	f.StringVar(&o.Listen, "listen", "", "where to serve the service, like :9001, if the proxy has no such service yet (a node's first switch)")
	f.DurationVar(&o.Drain, "drain", 30*time.Second, "how long the old endpoints' requests may run before they are cut")
	f.DurationVar(&o.Converge, "converge", wire.DefaultConverge, "with --expect: how long the proxy waits for its lookup to hold them")
	status := &cobra.Command{
		Use:   "status",
		Short: "Print the proxy's services as JSON (generation and requests in flight included); --service: that one",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return ctlExit(proxyCtlStatus(cmd.Context(), c.io, proxyclient.NewControl(*socket, c.overrides.Service), c.overrides.Service))
		},
	}
	ctl.AddCommand(sw, status)
	return ctl
}

// errCtlDrainTimeout: switched, but requests still ran on the old
// endpoints at --drain (exit 5).
var errCtlDrainTimeout = errors.New("drain timed out")

// ctlExit gives a ctl error the exit status ctl documents, by the error
// ExitCode maps to that number (3 ErrUnhealthy, 4 ErrLocked, 5 ErrProxy);
// any other is 1, whatever it wraps (an unreachable proxy is not a 5
// here). The per-node job reads these numbers, not deploy's meanings.
func ctlExit(err error) error {
	switch {
	case err == nil, errors.Is(err, context.Canceled):
		return err
	case errors.Is(err, wire.ErrNotConverged):
		return ctlError{err.Error(), deploy.ErrUnhealthy}
	case errors.Is(err, wire.ErrOldGeneration):
		return ctlError{err.Error(), deploy.ErrLocked}
	case errors.Is(err, errCtlDrainTimeout):
		return ctlError{err.Error(), deploy.ErrProxy}
	case errors.Is(err, errUsage):
		return err
	}
	return ctlError{err.Error(), nil}
}

type ctlError struct {
	msg string
	is  error
}

func (e ctlError) Error() string        { return e.msg }
func (e ctlError) Is(target error) bool { return e.is != nil && target == e.is }

// ctlPhase is one JSON progress line.
type ctlPhase struct {
	Phase      string         `json:"phase"`
	Service    string         `json:"service,omitempty"`
	From       []wire.Backend `json:"from,omitempty"`
	To         string         `json:"to,omitempty"`
	Generation uint64         `json:"generation,omitempty"`
	InFlight   *int64         `json:"in_flight,omitempty"`
	Drained    *bool          `json:"drained,omitempty"`
	Retired    []string       `json:"retired,omitempty"`
}

func (o proxyCtlOptions) print(p ctlPhase) {
	b, _ := json.Marshal(p)
	fmt.Fprintf(o.IO.Out, "%s\n", b)
}

// proxyCtlSwitch switches the whole route of the service to o.To, from
// whatever is live, then drains and retires what it was.
func proxyCtlSwitch(ctx context.Context, o proxyCtlOptions) error {
	if err := o.check(); err != nil {
		return err
	}
	cl := o.Control(o.Socket, o.Service)
	to := []wire.Backend{{Release: o.Release, Endpoints: []string{o.To}, Weight: 100}}
	cur, err := cl.State(ctx)
	if proxyclient.NotThere(err) && o.Listen != "" {
		// This node's first route for the service: made, then changed to itself with
		// the generation and the expected IPs, which the proxy then holds.
		if cur, err = cl.Create(ctx, o.Listen, to); err == nil {
			o.print(ctlPhase{Phase: "create", Service: o.Service, To: o.To})
		}
	}
	if err != nil {
		return err
	}
	from := wire.Spec(cur.Route)
	in := wire.RouteRequest{From: from, To: to, Generation: o.Generation}
	if len(o.Expect) > 0 {
		in.Expect, in.Converge = map[string][]string{o.To: o.Expect}, wire.Duration(o.Converge)
	}
	now, err := cl.ChangeRoute(ctx, in)
	if err != nil {
		return fmt.Errorf("switch %s to %s: %w", o.Service, o.To, err)
	}
	o.print(ctlPhase{Phase: "switch", Service: o.Service, From: from, To: o.To, Generation: o.Generation})
	// What this switch took out of the route, and whatever still drains: a job run
	// again after a lost answer finds the route switched already, and must still wait
	// for what the first run left draining.
	var old []string
	add := func(e string) {
		if e != o.To && !slices.Contains(old, e) {
			old = append(old, e)
		}
	}
	for _, b := range from {
		for _, e := range b.Endpoints {
			add(e)
		}
	}
	for _, d := range now.Draining {
		add(d.Upstream)
	}
	n, err := o.drain(ctx, cl, old)
	if err != nil {
		return err
	}
	for _, e := range old {
		if _, err := cl.Retire(ctx, e); err != nil {
			return fmt.Errorf("retire %s of %s: %w", e, o.Service, err)
		}
	}
	drained := n == 0
	o.print(ctlPhase{Phase: "done", Service: o.Service, To: o.To, Generation: o.Generation, InFlight: &n, Drained: &drained, Retired: old})
	if !drained {
		return fmt.Errorf("%w: %d requests still ran on %v of %s after --drain %s; they were cut, and %s serves", errCtlDrainTimeout, n, old, o.Service, o.Drain, o.To)
	}
	return nil
}

func (o proxyCtlOptions) check() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{errUsage}, args...)...)
	}
	switch {
	case o.Service == "":
		return bad("ctl switch needs --service")
	case o.To == "":
		return bad("ctl switch needs --to host:port")
	case o.Generation == 0:
		return bad("ctl switch needs --generation (above the proxy's; `handoff proxy ctl status` shows it)")
	}
	for _, ip := range o.Expect {
		if _, err := netip.ParseAddr(ip); err != nil {
			return bad("--expect %q is not an IP address", ip)
		}
	}
	return nil
}

// drain waits until nothing runs on the old endpoints, or o.Drain passes;
// it prints the count each time it changes, and returns the last.
func (o proxyCtlOptions) drain(ctx context.Context, cl *proxyclient.Control, old []string) (int64, error) {
	deadline := time.Now().Add(o.Drain)
	last := int64(-1)
	for {
		st, err := cl.State(ctx)
		if err != nil {
			return 0, err
		}
		var n int64
		for _, d := range st.Draining {
			if slices.Contains(old, d.Upstream) {
				n += d.InFlight
			}
		}
		if st.HandoverPending && n == 0 && len(old) > 0 {
			n = 1 // the proxy's previous process may still run requests on them
		}
		if n != last {
			o.print(ctlPhase{Phase: "drain", InFlight: &n})
			last = n
		}
		if n == 0 || !time.Now().Before(deadline) {
			return n, nil
		}
		select {
		case <-ctx.Done():
			return n, ctx.Err()
		case <-time.After(min(o.Poll, time.Until(deadline))):
		}
	}
}

// proxyCtlStatus prints the proxy's services, or one, as JSON.
func proxyCtlStatus(ctx context.Context, streams *IO, cl *proxyclient.Control, service string) error {
	var v any
	if service != "" {
		// A service the proxy does not have is null: a node before its first switch.
		st, err := cl.State(ctx)
		switch {
		case err == nil:
			v = st
		case !proxyclient.NotThere(err):
			return err
		}
	} else {
		list, err := cl.List(ctx)
		if err != nil {
			return err
		}
		v = list
	}
	// One line: a job's output is read back line by line, from its last lines.
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(streams.Out, "%s\n", b)
	return err
}
