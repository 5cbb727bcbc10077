package proxy

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/handoff-dev/handoff/internal/proxy/wire"
)

// ChangeRoute is Route with what a deploy on a swarm adds to it: a
// generation, so that a late change of an older deploy never undoes a
// newer one (wire.ErrOldGeneration), and the IPs a named endpoint must
// resolve to first, so that a proxy whose DNS lags does not switch to a
// name that has no tasks for it yet (wire.ErrNotConverged). A change at
// the generation the service holds, to the route it has, is a repeat
// whose answer was lost: answered as done.
func (p *Server) ChangeRoute(ctx context.Context, name string, in wire.RouteRequest) (ServiceState, error) {
	if err := checkRoute(in.To); err != nil {
		return ServiceState{}, err
	}
	expect, err := checkExpect(in.To, in.Expect)
	if err != nil {
		return ServiceState{}, err
	}
	if len(expect) > 0 {
		// Refused or done before any wait, when the service says so now.
		if st, err := p.Get(name); err == nil && st.Unrestored == "" {
			done, err := generationSays(name, st.Generation, wire.Spec(st.Route), in)
			if err != nil || done {
				return st, err
			}
		}
		if err := p.converge(ctx, expect, time.Duration(in.Converge)); err != nil {
			return ServiceState{}, err
		}
	}
	return p.changing(name, func(s *service) error {
		cur := s.route.Load().spec()
		held := s.generation.Load()
		switch done, err := generationSays(name, held, cur, in); {
		case err != nil || done:
			return err
		case sameRoute(cur, in.To):
			if in.Generation <= held {
				return nil
			}
			if err := p.saveEntry(name, func(st *ServiceState) { st.Generation = in.Generation }); err != nil {
				return err
			}
			s.generation.Store(in.Generation)
			return nil
		case len(in.From) > 0 && !sameRoute(cur, in.From):
			return fmt.Errorf("%w: %s's route is %s, not %s", ErrNotFrom, name, describeRoute(cur), describeRoute(in.From))
		}
		return p.changeRoute(s, in.To, in.Generation)
	})
}

// generationSays whether a change is refused for its generation (one at
// or below held), or done already (a repeat of the change that set held).
func generationSays(name string, held uint64, cur []wire.Backend, in wire.RouteRequest) (done bool, err error) {
	switch {
	case in.Generation == 0 || in.Generation > held:
		return false, nil
	case in.Generation == held && sameRoute(cur, in.To):
		return true, nil
	}
	return false, fmt.Errorf("%w: %s holds generation %d, this change has %d; its route was left as it is (%s)", wire.ErrOldGeneration, name, held, in.Generation, describeRoute(cur))
}

// checkExpect reads a change's expected IPs: by host, for named
// endpoints of the route it asks for.
func checkExpect(to []wire.Backend, expect map[string][]string) (map[string][]netip.Addr, error) {
	out := map[string][]netip.Addr{}
	for endpoint, ips := range expect {
		if !slices.ContainsFunc(to, func(b wire.Backend) bool { return slices.Contains(b.Endpoints, endpoint) }) || !isNamed(endpoint) {
			return nil, fmt.Errorf("%w: expect: %q is not a named endpoint (host:port) of the route asked for", ErrBadInput, endpoint)
		}
		host, _, _ := net.SplitHostPort(endpoint)
		for _, s := range ips {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return nil, fmt.Errorf("%w: expect: %s: %q is not an IP address", ErrBadInput, endpoint, s)
			}
			out[host] = append(out[host], a.Unmap())
		}
	}
	return out, nil
}

// converge looks up each host until its answer holds every expected IP,
// every resolveEvery for at most timeout (0: wire.DefaultConverge).
func (p *Server) converge(ctx context.Context, expect map[string][]netip.Addr, timeout time.Duration) error {
	if timeout <= 0 {
		timeout = wire.DefaultConverge
	}
	deadline := p.clock.Now().Add(timeout)
	hosts := slices.Sorted(maps.Keys(expect))
	for {
		var missing error
		for _, h := range hosts {
			if missing = p.resolvesTo(ctx, h, expect[h]); missing != nil {
				break
			}
		}
		if missing == nil {
			return nil
		}
		left := deadline.Sub(p.clock.Now())
		if left <= 0 {
			return fmt.Errorf("%w; the route was left as it is", missing)
		}
		if !sleep(ctx, p.clock, min(resolveEvery, left)) {
			return fmt.Errorf("%w (the change was cancelled while waiting; the route was left as it is)", missing)
		}
	}
}

// resolvesTo says what is missing from host's answer, if anything.
func (p *Server) resolvesTo(ctx context.Context, host string, want []netip.Addr) error {
	lctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	got, err := p.opts.Resolver.LookupNetIP(lctx, "ip", host)
	for i := range got {
		got[i] = got[i].Unmap()
	}
	slices.SortFunc(got, netip.Addr.Compare)
	for _, a := range want {
		if !slices.Contains(got, a) {
			why := ""
			if err != nil {
				why = " (lookup: " + err.Error() + ")"
			}
			return fmt.Errorf("%w: %s resolves to %v%s, expected %v", wire.ErrNotConverged, host, got, why, want)
		}
	}
	return nil
}
