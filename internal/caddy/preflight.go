package caddy

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/handoff-dev/handoff/internal/deploy"
)

// Preflight refuses, before anything starts, a switch that would strand
// another site or that the Caddyfile could not follow; its refusals say
// they are one. A Caddyfile that an interrupted switch left naming an
// earlier release of the service (some of known) is brought in step with
// Caddy first, and said so. The route may have any number of upstreams:
// a release of replicas, or a user's own `reverse_proxy a b`.
func (p *Proxy) Preflight(ctx context.Context, current deploy.Route, known []string) ([]string, error) {
	if len(current.Endpoints()) == 0 {
		return nil, nil // no route yet
	}
	all, hs, _, err := p.handlers(ctx, known)
	if err != nil {
		return nil, err
	}
	now := hs[0].dials // as Caddy spells them, which is how the Caddyfile spells them
	for _, upstream := range now {
		others := p.sharing(all, hs, upstream)
		if len(others) == 0 {
			continue
		}
		hint := fmt.Sprintf("Set caddy.route to %s to switch every site that uses it together, or give each site its own service", upstream)
		if len(now) > 1 {
			hint = "Give each site its own service"
		}
		return nil, refused(deploy.ErrConfig, fmt.Errorf("%s is also the upstream of %s; switching %s alone would leave them on a container the deploy then stops. %s",
			upstream, strings.Join(others, ", "), p.route, hint))
	}
	if p.caddyfile == nil {
		return nil, nil
	}
	if err := p.caddyfile.check(); err != nil {
		return nil, refused(deploy.ErrConfig, err)
	}
	rw, err := p.caddyfile.plan(p.host(), now, now)
	if err == nil {
		return rw.notes, nil
	}
	// The file does not name what Caddy serves: behind by one interrupted
	// switch of this service, or changed by someone.
	unlock, err := p.caddyfile.lock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	old, err := p.caddyfile.named(p.host(), known)
	if err != nil {
		return nil, refused(deploy.ErrConfig, err)
	}
	if len(old) > 0 && !sameUpstreams(old, now) {
		if _, err := p.caddyfile.plan(p.host(), old, now); err == nil {
			if err := p.caddyfile.replace(p.host(), old, now, fileWeights(hs[0])); err != nil {
				return nil, fmt.Errorf("%w: bring the Caddyfile in step: %v", deploy.ErrProxy, err)
			}
			return []string{fmt.Sprintf("the Caddyfile %s still named %s, an earlier release (an interrupted switch); it now names %s, as Caddy does", p.caddyfile.path, strings.Join(old, " "), strings.Join(now, " "))}, nil
		}
	}
	_, err = p.caddyfile.plan(p.host(), now, now)
	return nil, refused(deploy.ErrProxy, err)
}

// sameUpstreams says whether a and b list the same upstreams, in any order.
func sameUpstreams(a, b []string) bool {
	has := func(list []string, u string) bool {
		return slices.ContainsFunc(list, func(v string) bool { return deploy.SameUpstream(u, v) })
	}
	for _, u := range a {
		if !has(b, u) {
			return false
		}
	}
	for _, u := range b {
		if !has(a, u) {
			return false
		}
	}
	return true
}

// fileWeights are the weights the Caddyfile writes for what the handler
// serves: its weighted_round_robin's, or nil.
func fileWeights(h proxyHandler) []int {
	if ws, ok := wrrWeights(h.handler); ok && len(ws) == len(h.dials) {
		return ws
	}
	return nil
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
