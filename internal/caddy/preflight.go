package caddy

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/handoff-dev/handoff/internal/deploy"
)

// single is the one upstream of the route a preflight is asked about (""
// for no route); the procedure acts on no route of several yet.
func single(r deploy.Route) (string, error) {
	eps := r.Endpoints()
	switch {
	case len(eps) == 0:
		return "", nil
	case len(eps) == 1 && len(r.Serving()) == 1:
		return eps[0], nil
	}
	return "", fmt.Errorf("%w: the route %s has %d upstreams; handoff switches a route with exactly one", deploy.ErrNoRoute, r, len(eps))
}

// Preflight refuses, before anything starts, a switch that would strand
// another site or that the Caddyfile could not follow; its refusals say
// they are one. A Caddyfile that an interrupted switch left naming an
// earlier release of the service (one of known) is brought in step with
// Caddy first, and said so.
func (p *Proxy) Preflight(ctx context.Context, current deploy.Route, known []string) ([]string, error) {
	upstream, err := single(current)
	if err != nil || upstream == "" {
		return nil, err
	}
	all, hs, _, err := p.handlers(ctx, known)
	if err != nil {
		return nil, err
	}
	if others := p.sharing(all, hs, upstream); len(others) > 0 {
		return nil, refused(deploy.ErrConfig, fmt.Errorf("%s is also the upstream of %s; switching %s alone would leave them on a container the deploy then stops. Set caddy.route to %s to switch every site that uses it together, or give each site its own service",
			upstream, strings.Join(others, ", "), p.route, upstream))
	}
	if p.caddyfile == nil {
		return nil, nil
	}
	if err := p.caddyfile.check(); err != nil {
		return nil, refused(deploy.ErrConfig, err)
	}
	if rw, err := p.caddyfile.plan(p.host(), upstream, upstream); err == nil {
		return rw.notes, nil
	}
	// The file does not name what Caddy serves: behind by one interrupted
	// switch of this service, or changed by someone.
	unlock, err := p.caddyfile.lock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	for _, old := range known {
		if deploy.SameUpstream(old, upstream) {
			continue
		}
		if _, err := p.caddyfile.plan(p.host(), old, upstream); err != nil {
			continue
		}
		if err := p.caddyfile.replace(p.host(), old, upstream); err != nil {
			return nil, fmt.Errorf("%w: bring the Caddyfile in step: %v", deploy.ErrProxy, err)
		}
		return []string{fmt.Sprintf("the Caddyfile %s still named %s, an earlier release (an interrupted switch); it now names %s, as Caddy does", p.caddyfile.path, old, upstream)}, nil
	}
	_, err = p.caddyfile.plan(p.host(), upstream, upstream)
	return nil, refused(deploy.ErrProxy, err)
}

// refusal is a deploy the preflight refused: nothing was started. It says
// so in its own words, keeping kind for the exit code.
type refusal struct {
	kind error
	err  error
}

func refused(kind, err error) error {
	if err == nil || errors.As(err, new(*refusal)) {
		return err
	}
	return &refusal{kind: kind, err: err}
}

func (r *refusal) Error() string {
	return "refused before the deploy started anything: " + strings.TrimPrefix(r.err.Error(), r.kind.Error()+": ")
}

func (r *refusal) Unwrap() []error { return []error{r.kind, r.err} }

// sharing names the handlers outside the route that dial upstream too.
func (p *Proxy) sharing(all, route []proxyHandler, upstream string) []string {
	var out []string
	for _, h := range dialing(all, upstream) {
		// A named route is one handler for every site that invokes it.
		if !slices.ContainsFunc(route, func(r proxyHandler) bool { return r.path == h.path && slices.Equal(r.hosts, h.hosts) }) {
			out = append(out, h.describe())
		}
	}
	return out
}
