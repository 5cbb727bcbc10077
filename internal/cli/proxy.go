package cli

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/handoff-dev/handoff/internal/config"
	"github.com/handoff-dev/handoff/internal/proxy"
	"github.com/handoff-dev/handoff/internal/proxy/proxyclient"
	"github.com/handoff-dev/handoff/internal/proxy/proxyd"
	"github.com/handoff-dev/handoff/internal/proxy/wire"
)

func newProxyCmd(c *common) *cobra.Command {
	o := proxyd.Options{}
	var socket string
	var trustedProxies []string
	cmd := &cobra.Command{
		Use:   "proxy",
		Short: "Run the always-on switch between the front proxy and the containers (see docs/proxy.md)",
		Long: `handoff proxy serves each service on a stable loopback address and switches it
between containers per request, so a deploy never reloads the front proxy and no
client connection is closed. SIGHUP hands its sockets to a new process of the
same binary (an upgrade or restart without dropping anything).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			trusted, err := parsePrefixes(trustedProxies)
			if err != nil {
				return err
			}
			o.Log = slog.New(slog.NewTextHandler(c.io.Err, nil))
			o.Socket, o.Trusted = socket, trusted
			// SIGHUP is the proxy's restart (systemctl reload), never its
			// stop, whatever the other commands make of it: only SIGINT
			// and SIGTERM end the daemon.
			ctx, stop := signal.NotifyContext(context.WithoutCancel(cmd.Context()), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return proxyd.Run(ctx, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.StateFile, "state-file", proxyd.DefaultStateFile, "services, kept across restarts")
	f.StringVar(&o.PIDFile, "pid-file", "", "write the serving process's pid here (systemd PIDFile=)")
	f.DurationVar(&o.HandoverTimeout, "handover-timeout", proxyd.DefaultHandoverTimeout, "after a restart, how long the old process waits for its client connections to end")
	f.StringVar(&o.Metrics, "metrics", "", "serve Prometheus metrics on this address, like 127.0.0.1:9100 (docs/metrics.md)")
	f.DurationVar(&o.DialRetry, "dial-retry", proxy.DefaultDialRetry, "how long a request waits for an app that refuses connections (restarting) before it gets a 502")
	f.StringSliceVar(&trustedProxies, "trusted-proxies", []string{"127.0.0.0/8", "::1/128"}, "front proxies (IPs or CIDRs) whose X-Forwarded-For/-Proto/-Host are kept and appended to; \"none\" trusts nobody")
	cmd.PersistentFlags().StringVar(&socket, "socket", "", "control socket (default handoff_proxy.socket in handoff.yml, else "+wire.DefaultSocket+")")
	var maxWait, lease time.Duration
	pause := &cobra.Command{
		Use:   "pause [service]",
		Short: "Hold the service's new requests (each for at most --max-wait) until resume or --lease ends, e.g. during a migration",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return proxyControl(c, socket, args, func(cl *proxyclient.Control) (wire.ServiceState, error) {
				return cl.Pause(cmd.Context(), maxWait, lease)
			})
		},
	}
	pause.Flags().DurationVar(&maxWait, "max-wait", wire.DefaultPauseWait, "a held request gets 503 after this long")
	pause.Flags().DurationVar(&lease, "lease", wire.DefaultPauseLease, "if no resume comes within this long, the proxy lets requests go on by itself (at most "+wire.MaxPauseLease.String()+"); pause again to extend it")
	resume := &cobra.Command{
		Use:   "resume [service]",
		Short: "Release the requests a pause holds",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return proxyControl(c, socket, args, func(cl *proxyclient.Control) (wire.ServiceState, error) { return cl.Resume(cmd.Context()) })
		},
	}
	status := &cobra.Command{
		Use:   "status",
		Short: "List the proxy's services, their targets and requests in flight",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return proxyStatus(cmd.Context(), c, socket)
		},
	}
	cmd.AddCommand(pause, resume, status, newProxyCtlCmd(c, &socket))
	return cmd
}

func proxyControl(c *common, socket string, args []string, act func(*proxyclient.Control) (wire.ServiceState, error)) error {
	s, err := c.settings(context.Background(), args)
	if err != nil {
		return err
	}
	cl := proxyclient.NewControl(or(socket, s.HandoffProxy.Socket), s.Service.Name)
	st, err := act(cl)
	if err != nil {
		return err
	}
	if c.json {
		return c.io.JSON(st)
	}
	fmt.Fprintf(c.io.Out, "%s: %s → %s, %d in flight, paused: %v", st.Name, st.Listen, st.Upstream, st.InFlight, st.Paused)
	if st.Paused && !st.PauseUntil.IsZero() {
		fmt.Fprintf(c.io.Out, " (until %s unless resumed)", st.PauseUntil.Local().Format(time.DateTime))
	}
	fmt.Fprintln(c.io.Out)
	for _, line := range proxyProblems([]wire.ServiceState{st}) {
		fmt.Fprintln(c.io.Out, line)
	}
	return nil
}

// parsePrefixes reads --trusted-proxies: addresses or CIDR prefixes.
func parsePrefixes(list []string) ([]netip.Prefix, error) {
	out := []netip.Prefix{}
	for _, s := range list {
		s = strings.TrimSpace(s)
		if s == "" || s == "none" {
			continue
		}
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("%w: --trusted-proxies %q: want an IP address or a CIDR prefix, like 127.0.0.1 or 10.0.0.0/8", errUsage, s)
		}
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

func first(list []string) string {
	if len(list) == 0 {
		return ""
	}
	return list[0]
}

func or(s, def string) string {
	if s != "" {
		return s
	}
	return def
}

func proxyStatus(ctx context.Context, c *common, socket string) error {
	if socket == "" {
		if f, err := config.Load(first(c.files)); err == nil {
			socket = f.HandoffProxy.Socket
		}
	}
	list, err := proxyclient.NewControl(socket, "").List(ctx)
	if err != nil {
		return err
	}
	if c.json {
		return c.io.JSON(list)
	}
	tw := tabwriter.NewWriter(c.io.Out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tLISTEN\tUPSTREAM\tIN FLIGHT\tDRAINING\tPAUSED")
	for _, s := range list {
		if s.Unrestored != "" {
			fmt.Fprintf(tw, "%s\t%s\t%s\t-\t-\t-\n", or(s.Name, "(unnamed entry)"), or(s.Listen, "-"), or(s.Upstream, "-"))
			continue
		}
		listen := s.Listen
		if s.NotListening != nil {
			listen += " (NOT LISTENING)"
		}
		paused := "no"
		if s.Paused {
			paused = "yes"
			if !s.PauseUntil.IsZero() {
				paused = "until " + s.PauseUntil.Local().Format(time.TimeOnly)
			}
		}
		draining := "-"
		for i, d := range s.Draining {
			if i == 0 {
				draining = ""
			} else {
				draining += ", "
			}
			draining += fmt.Sprintf("%s (%d)", d.Upstream, d.InFlight)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", s.Name, listen, s.Upstream, s.InFlight, draining, paused)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, line := range proxyProblems(list) {
		fmt.Fprintln(c.io.Out, line)
	}
	return nil
}

// proxyProblems says, one line each, which services the proxy knows but
// does not serve, and why.
func proxyProblems(list []wire.ServiceState) []string {
	var out []string
	for _, s := range list {
		switch {
		case s.Unrestored != "":
			out = append(out, fmt.Sprintf("%s: not restored from the state file, so not served: %s (the entry is kept in the file as it was)", or(s.Name, "(unnamed entry)"), s.Unrestored))
		case s.NotListening != nil:
			f := s.NotListening
			out = append(out, fmt.Sprintf("%s: not listening on %s since %s (%d attempts): %s; handoff proxy keeps trying", s.Name, s.Listen, f.Since.Local().Format(time.DateTime), f.Attempts, f.Error))
		}
	}
	return out
}
