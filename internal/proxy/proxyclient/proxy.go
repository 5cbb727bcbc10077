package proxyclient

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/handoff-dev/handoff/internal/deploy"
	"github.com/handoff-dev/handoff/internal/proxy/wire"
)

// Proxy is the deploy.Proxy for `proxy: handoff`: a service of a running
// `handoff proxy`, driven through its Control, served on a stable address.
type Proxy struct {
	ctl    *Control
	listen string // the stable address the service is served on
}

var (
	_ deploy.Proxy      = (*Proxy)(nil)
	_ deploy.Maintainer = (*Proxy)(nil)
)

// New returns the deploy.Proxy for ctl's service, served on listen.
func New(ctl *Control, listen string) (*Proxy, error) {
	if listen == "" {
		return nil, fmt.Errorf("%w: proxy: handoff needs handoff_proxy.listen (or --proxy-listen), the stable address the front proxy points at, like 127.0.0.1:9001", deploy.ErrConfig)
	}
	if _, _, err := net.SplitHostPort(listen); err != nil {
		return nil, fmt.Errorf("%w: handoff_proxy.listen %q: want host:port, like 127.0.0.1:9001", deploy.ErrConfig, listen)
	}
	return &Proxy{ctl: ctl, listen: listen}, nil
}

// MaintenanceOn answers the service's requests with m's page.
func (p *Proxy) MaintenanceOn(ctx context.Context, m deploy.Maintenance, _ []string) error {
	in := wire.MaintenanceState{Page: m.Body(), RetryAfter: m.RetryAfterSeconds(), Allow: m.Allow}
	return p.ctl.found(p.ctl.call(ctx, http.MethodPut, "/maintenance", in, nil))
}

// MaintenanceOff sends the service's requests to its release again.
func (p *Proxy) MaintenanceOff(ctx context.Context, _ string) (bool, error) {
	st, err := p.ctl.get(ctx)
	if err := p.ctl.found(err); err != nil {
		return false, err
	}
	if st.Maintenance == nil {
		return false, nil
	}
	return true, p.ctl.found(p.ctl.call(ctx, http.MethodDelete, "/maintenance", nil, nil))
}

// Pauser is the service's pause as the deploy procedure holds requests
// with during a release job. Its Pause is given how long the hold may last
// (the job's timeout): each request is held at most that or
// wire.MaxPauseWait, whichever is less, and the pause has a lease of that
// plus wire.PauseLeaseMargin (at most wire.MaxPauseLease), so that a
// deploy killed before it resumes (SIGKILL, an OOM kill, a cancelled CI
// job) does not leave the service paused.
func (p *Proxy) Pauser() deploy.Pauser { return pauser{p.ctl} }

type pauser struct{ c *Control }

func (p pauser) Pause(ctx context.Context, hold time.Duration) error {
	wait, lease := pauseWaits(hold)
	_, err := p.c.Pause(ctx, wait, lease)
	return err
}

// pauseWaits is the max wait and lease of a deploy's pause of hold.
func pauseWaits(hold time.Duration) (maxWait, lease time.Duration) {
	if hold <= 0 {
		return wire.MaxPauseWait, 0
	}
	return min(hold, wire.MaxPauseWait), min(hold+wire.PauseLeaseMargin, wire.MaxPauseLease)
}

func (p pauser) Resume(ctx context.Context) error {
	_, err := p.c.Resume(ctx)
	return err
}

// Describe names the proxy for messages.
func (p *Proxy) Describe() string {
	return fmt.Sprintf("handoff proxy at %s (%s on %s)", p.ctl.socket, p.ctl.service, p.listen)
}

// Route is the service's current target as a route of one endpoint (see
// Control.Upstream); empty before its first deploy.
func (p *Proxy) Route(ctx context.Context, known []string) (deploy.Route, error) {
	up, err := p.ctl.Upstream(ctx, known)
	if err != nil || up == "" {
		return nil, err
	}
	return deploy.Only("", up), nil
}

// oneTarget is the one endpoint of a route handoff proxy can be given
// today ("" for no route).
func (p *Proxy) oneTarget(r deploy.Route) (string, error) {
	eps := r.Endpoints()
	switch {
	case len(eps) == 0:
		return "", nil
	case len(eps) == 1 && len(r) == 1 && r[0].Weight > 0:
		return eps[0], nil
	}
	return "", fmt.Errorf("%w: handoff proxy takes one endpoint per route until its data plane has a route API (several targets with weights per service); %s cannot be given %s", deploy.ErrProxy, p.ctl.service, r)
}

// Preflight checks that the proxy answers and serves the service where the
// file says.
func (p *Proxy) Preflight(ctx context.Context, _ deploy.Route, _ []string) ([]string, error) {
	st, err := p.ctl.get(ctx)
	if errors.Is(err, errNotThere) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if st.Listen != p.listen {
		return nil, fmt.Errorf("%w: handoff proxy serves %s on %s, not %s; delete it there first (curl --unix-socket %s -X DELETE http://proxy/v1/services/%s)", deploy.ErrConfig, p.ctl.service, st.Listen, p.listen, p.ctl.socket, p.ctl.service)
	}
	if f := st.NotListening; f != nil {
		return []string{fmt.Sprintf("handoff proxy cannot listen on %s for %s since %s (%s) and keeps trying: until it can, no request reaches any release; free that address", st.Listen, p.ctl.service, f.Since.Format(time.RFC3339), f.Error)}, nil
	}
	return nil, nil
}

// PointsAt names the proxy's services whose current target is upstream.
func (p *Proxy) PointsAt(ctx context.Context, upstream string) ([]string, error) {
	list, err := p.ctl.List(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, st := range list {
		if deploy.SameUpstream(st.Upstream, upstream) {
			out = append(out, fmt.Sprintf("handoff proxy service %s (%s)", st.Name, st.Listen))
		}
	}
	return out, nil
}

// SetRoute points the service at to's one endpoint through the control
// API's switch; on its first deploy it creates it. The proxy changes
// nothing and answers a conflict when the service is at neither.
func (p *Proxy) SetRoute(ctx context.Context, fromRoute, toRoute deploy.Route) error {
	from, err := p.oneTarget(fromRoute)
	if err != nil {
		return err
	}
	to, err := p.oneTarget(toRoute)
	if err != nil {
		return err
	}
	if to == "" {
		return fmt.Errorf("%w: handoff proxy's client cannot remove the route of %s", deploy.ErrProxy, p.ctl.service)
	}
	var st wire.ServiceState
	if from == "" {
		err = p.ctl.call(ctx, http.MethodPut, "", wire.PutRequest{Listen: p.listen, Upstream: to}, &st)
	} else {
		err = p.ctl.call(ctx, http.MethodPost, "/switch", wire.SwitchRequest{From: from, To: to}, &st)
	}
	if err != nil {
		return err
	}
	if st.Upstream != to {
		return fmt.Errorf("%w: handoff proxy reads back %s for %s, not %s", deploy.ErrProxy, st.Upstream, p.ctl.service, to)
	}
	return nil
}

// InFlight counts requests still running on upstream; the proxy always knows.
func (p *Proxy) InFlight(ctx context.Context, upstream string) (deploy.InFlight, error) {
	st, err := p.ctl.get(ctx)
	if err != nil {
		return deploy.InFlight{}, err
	}
	in := deploy.InFlight{Reported: true}
	if st.Upstream == upstream {
		in.Requests = int(st.InFlight)
	}
	for _, d := range st.Draining {
		if d.Upstream == upstream {
			in.Requests += int(d.InFlight)
		}
	}
	if st.HandoverPending && in.Requests == 0 {
		// A restarted proxy's previous process may still run requests on
		// upstream, and only its exit tells: count that as one.
		in.Requests, in.Note = 1, "handoff proxy's previous process (a restart) is still finishing its requests"
	}
	return in, nil
}

// Retire ends what still runs on upstream, WebSockets with a close frame.
func (p *Proxy) Retire(ctx context.Context, upstream string) error {
	return p.ctl.call(ctx, http.MethodPost, "/retire", wire.RetireRequest{Upstream: upstream}, nil)
}

// Advice has nothing to add: no reload happens, nothing to configure.
func (p *Proxy) Advice(context.Context, string) ([]string, error) { return nil, nil }
