package proxyclient

import (
	"context"
	"slices"

	"github.com/handoff-dev/handoff/internal/deploy"
	"github.com/handoff-dev/handoff/internal/proxy/wire"
)

// Counts reads the proxy's counts of every endpoint of the service's
// route (deploy.Counter): what a canary step and the watch judge by.
func (p *Proxy) Counts(ctx context.Context) (deploy.Counts, error) {
	st, err := p.ctl.Stats(ctx)
	if err != nil {
		return nil, err
	}
	return counts(st), nil
}

// PerEndpoint: handoff proxy counts each endpoint apart.
func (p *Proxy) PerEndpoint() bool { return true }

// counts is one reading of the proxy's counts.
type counts wire.ServiceStats

// Since is what endpoints got between earlier and c: each endpoint's
// counts since it entered the route, less what earlier had of the same
// stay (wire.BetweenOf); clients that left unanswered count as failed.
func (c counts) Since(earlier deploy.Counts, endpoints []string) deploy.Window {
	before, _ := earlier.(counts)
	w := wire.BetweenOf(wire.ServiceStats(before), wire.ServiceStats(c), func(e wire.EndpointStats) bool {
		return slices.ContainsFunc(endpoints, func(ep string) bool { return deploy.SameUpstream(ep, e.Endpoint) })
	})
	// A request whose client gave up before any answer is one the release
	// failed to answer in time: a release that hangs shows only there (the
	// proxy waits for the app as long as the client does).
	return deploy.Window{Requests: int(w.Requests + w.ClientLeft), Errors: int(w.Errors + w.ClientLeft), P50: w.P50, P99: w.P99}
}
