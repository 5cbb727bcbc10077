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

// Route is the service's route as the proxy runs it (see
// Control.Upstream for when it fails); empty before its first deploy.
func (p *Proxy) Route(ctx context.Context, _ []string) (deploy.Route, error) {
	st, err := p.ctl.current(ctx)
	if err != nil {
		return nil, err
	}
	return routeOf(st), nil
}

// routeOf is the route st shows. A handoff proxy from before routes
// answers no "route": its upstream is then the route, of one endpoint.
func routeOf(st wire.ServiceState) deploy.Route {
	if len(st.Route) == 0 {
		return deploy.Only("", st.Upstream)
	}
	out := make(deploy.Route, 0, len(st.Route))
	for _, b := range wire.Spec(st.Route) {
		out = append(out, deploy.Backend{Release: b.Release, Endpoints: b.Endpoints, Weight: b.Weight})
	}
	return out
}

// toWire is r as the control API takes a route.
func toWire(r deploy.Route) []wire.Backend {
	out := make([]wire.Backend, 0, len(r))
	for _, b := range r {
		out = append(out, wire.Backend{Release: b.Release, Endpoints: b.Endpoints, Weight: b.Weight})
	}
	return out
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

// PointsAt names the proxy's services whose route has upstream, of any
// weight (one of weight 0 still finishes requests).
func (p *Proxy) PointsAt(ctx context.Context, upstream string) ([]string, error) {
	list, err := p.ctl.List(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, st := range list {
		if routeOf(st).Has(upstream) {
			out = append(out, fmt.Sprintf("handoff proxy service %s (%s)", st.Name, st.Listen))
		}
	}
	return out, nil
}

// SetRoute changes the service's route through the control API's route
// change; on its first deploy it creates the service with to. from is
// compared as deploy.Same does (release names aside), and the change sent
// names the route the proxy runs now as its from: the proxy, which
// compares exactly, makes it only if nothing changed meanwhile (409:
// ErrConflict). A change whose answer was lost is read back.
func (p *Proxy) SetRoute(ctx context.Context, from, to deploy.Route) error {
	for sent := 1; ; sent++ {
		err := p.setRoute(ctx, from, to)
		var lost changeLost
		if !errors.As(err, &lost) {
			return err
		}
		if sent == changeSends {
			return fmt.Errorf("%w; sent %d times, each time the connection was cut before an answer, and %s reads back unchanged each time: nothing was switched; see handoff proxy's log", lost.err, sent, p.ctl.service)
		}
	}
}

// changeSends is how many times a change is sent when the proxy answers,
// after each, that it was not made: a proxy handing over to its next
// process (SIGHUP) may cut the connection of a change it never saw.
const changeSends = 3

// changeLost is a change the proxy's connection cut, read back as not
// made: the proxy answers and nothing changed, so sending it again is
// safe (it names the route it changes from, which the proxy compares).
type changeLost struct{ err error }

func (e changeLost) Error() string { return e.err.Error() }
func (e changeLost) Unwrap() error { return e.err }

func (p *Proxy) setRoute(ctx context.Context, from, to deploy.Route) error {
	if len(to) == 0 {
		return fmt.Errorf("%w: handoff proxy's client cannot remove the route of %s", deploy.ErrProxy, p.ctl.service)
	}
	cur, err := p.ctl.current(ctx)
	if err != nil {
		return err
	}
	now := routeOf(cur)
	if !deploy.Same(now, from) && !deploy.Same(now, to) {
		return fmt.Errorf("%w: handoff proxy's route of %s is %s, neither %s nor %s", deploy.ErrConflict, p.ctl.service, now, from, to)
	}
	var st wire.ServiceState
	one, single := soleEndpoint(to)
	switch {
	case len(now) == 0 && single:
		// A first route of one endpoint goes by the first API, which every
		// handoff proxy takes — one from before routes too, still running
		// after handoff itself was upgraded, until its restart — and a
		// newer one reads as that endpoint at weight 100.
		err = p.ctl.call(ctx, http.MethodPut, "", wire.PutRequest{Listen: p.listen, Upstream: one}, &st)
	case len(now) == 0:
		err = p.ctl.call(ctx, http.MethodPut, "", wire.PutRequest{Listen: p.listen, Route: toWire(to)}, &st)
	case len(cur.Route) == 0 && !single:
		return fmt.Errorf("%w: handoff proxy runs a version from before routes, which sends %s to one endpoint; restart it to run this version (`systemctl reload handoff-proxy`, no request is dropped), then set %s", deploy.ErrProxy, p.ctl.service, to)
	case len(cur.Route) == 0:
		// A proxy from before routes (it answers no route): its switch.
		err = p.ctl.call(ctx, http.MethodPost, "/switch", wire.SwitchRequest{From: cur.Upstream, To: one}, &st)
	case single && isSole(now):
		// One endpoint to another: the switch, as blue/green always was
		// (saved as the upstream alone; already there is done).
		from, _ := soleEndpoint(now)
		err = p.ctl.call(ctx, http.MethodPost, "/switch", wire.SwitchRequest{From: from, To: one}, &st)
	default:
		err = p.ctl.call(ctx, http.MethodPut, "/route", wire.RouteRequest{From: toWire(now), To: toWire(to)}, &st)
	}
	if errors.Is(err, deploy.ErrProxyUnreached) {
		// The proxy may have made the change and its answer got lost, or
		// never seen it.
		got, rerr := p.Route(ctx, nil)
		switch {
		case rerr != nil:
		case deploy.Same(got, to):
			return nil
		case deploy.Same(got, now):
			return changeLost{err}
		}
	}
	if err != nil {
		return err
	}
	switch got := routeOf(st); {
	case deploy.Same(got, to):
		return nil
	case len(now) == 0:
		return fmt.Errorf("%w: handoff proxy's %s was created meanwhile, with the route %s, not %s", deploy.ErrConflict, p.ctl.service, got, to)
	default:
		return fmt.Errorf("%w: handoff proxy reads back %s for %s, not %s", deploy.ErrProxy, got, p.ctl.service, to)
	}
}

// InFlight counts requests still running on upstream, one endpoint, of
// any weight; the proxy always knows.
func (p *Proxy) InFlight(ctx context.Context, upstream string) (deploy.InFlight, error) {
	st, err := p.ctl.get(ctx)
	if err != nil {
		return deploy.InFlight{}, err
	}
	in := deploy.InFlight{Reported: true}
	if len(st.Route) == 0 && st.Upstream == upstream { // a proxy from before routes
		in.Requests = int(st.InFlight)
	}
	for _, b := range st.Route {
		if b.Weight == 0 {
			continue // its endpoints drain: they are counted under draining
		}
		for _, e := range b.Endpoints {
			if e.Endpoint == upstream {
				in.Requests += int(e.InFlight)
			}
		}
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

// Retire ends what still runs on upstream, WebSockets with a close frame:
// an endpoint that left the route or whose release has weight 0.
func (p *Proxy) Retire(ctx context.Context, upstream string) error {
	return p.ctl.call(ctx, http.MethodPost, "/retire", wire.RetireRequest{Upstream: upstream}, nil)
}

// Advice has nothing to add: no reload happens, nothing to configure.
func (p *Proxy) Advice(context.Context, string) ([]string, error) { return nil, nil }

// soleEndpoint is a route's one endpoint when it is a single release of
// one endpoint with weight.
func soleEndpoint(r deploy.Route) (string, bool) {
	if len(r) != 1 || len(r[0].Endpoints) != 1 || r[0].Weight <= 0 {
		return "", false
	}
	return r[0].Endpoints[0], true
}

func isSole(r deploy.Route) bool { _, ok := soleEndpoint(r); return ok }
