package caddy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/handoff-dev/handoff/internal/deploy"
)

// upstreams is a route as Caddy's reverse_proxy holds it: the dials in
// order and, when they differ, a weight for each (weighted_round_robin).
type upstreams struct {
	dials   []string
	weights []int // nil: all equal, no selection policy of handoff's
}

// upstreamsFor spells a route for Caddy. Each endpoint's weight is its
// release's weight × L / the release's size, L the least common multiple
// of the releases' sizes, so that every release keeps its share however
// many endpoints it has; the weights are then divided by their greatest
// common divisor ([90, 10] is written 9 1).
func upstreamsFor(r deploy.Route) (upstreams, error) {
	var u upstreams
	l := 1
	for _, b := range r {
		if len(b.Endpoints) > 0 {
			l = lcm(l, len(b.Endpoints))
		}
		if b.Weight < 0 {
			return u, fmt.Errorf("%w: a negative weight in %s", deploy.ErrProxy, r)
		}
	}
	total := 0
	for _, b := range r {
		for _, e := range b.Endpoints {
			if slices.ContainsFunc(u.dials, func(d string) bool { return deploy.SameUpstream(d, e) }) {
				return u, fmt.Errorf("%w: %s is in the route twice (%s)", deploy.ErrProxy, e, r)
			}
			w := b.Weight * l / len(b.Endpoints)
			u.dials, u.weights = append(u.dials, e), append(u.weights, w)
			total += w
		}
	}
	if len(u.dials) == 0 {
		return u, fmt.Errorf("%w: Caddy's adapter cannot remove a route", deploy.ErrProxy)
	}
	if total == 0 {
		return u, fmt.Errorf("%w: %s sends no request anywhere", deploy.ErrProxy, r)
	}
	g := 0
	for _, w := range u.weights {
		g = gcd(g, w)
	}
	for i := range u.weights {
		u.weights[i] /= g
	}
	if !slices.ContainsFunc(u.weights, func(w int) bool { return w != u.weights[0] }) {
		u.weights = nil
	}
	return u, nil
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

func lcm(a, b int) int { return a / gcd(a, b) * b }

// routeOf reads a handler's upstreams as a route: one release of them
// all, or under weighted_round_robin one per upstream with its weight.
// Caddy keeps no release names.
func routeOf(h proxyHandler) deploy.Route {
	if ws, ok := wrrWeights(h.handler); ok && len(ws) == len(h.dials) {
		r := make(deploy.Route, len(h.dials))
		for i, d := range h.dials {
			r[i] = deploy.Backend{Endpoints: []string{d}, Weight: ws[i]}
		}
		return r
	}
	return deploy.Route{{Endpoints: h.dials, Weight: 100}}
}

// wrrWeights is the handler's weighted_round_robin weights, if that is
// its selection policy.
func wrrWeights(handler map[string]any) ([]int, bool) {
	policy, _ := dig(handler, "load_balancing", "selection_policy").(map[string]any)
	if policy["policy"] != "weighted_round_robin" {
		return nil, false
	}
	list, _ := policy["weights"].([]any)
	out := make([]int, 0, len(list))
	for _, w := range list {
		switch n := w.(type) {
		case json.Number: // as the admin client decodes Caddy's JSON
			i, _ := n.Int64()
			out = append(out, int(i))
		case float64:
			out = append(out, int(n))
		case int: // as apply writes it
			out = append(out, n)
		}
	}
	return out, true
}

// canWeigh refuses weights the Caddy cannot split by: weighted_round_robin
// exists from 2.7, and takes a weight of 0 from 2.9. A Caddy whose version
// cannot be read (a custom build says "(devel)") is assumed able to, and
// refuses the change itself if it is not (its config is then unchanged).
func (p *Proxy) canWeigh(ctx context.Context, u upstreams) error {
	if u.weights == nil {
		return nil
	}
	v, ok := p.caddyVersion(ctx)
	if !ok {
		return nil
	}
	if versionBefore(v, 2, 7, 0) {
		return fmt.Errorf("%w: Caddy %s has no weighted_round_robin (it came with 2.7): it cannot split %s's requests by weight; upgrade Caddy", deploy.ErrProxy, v, p.route)
	}
	if slices.Contains(u.weights, 0) && versionBefore(v, 2, 9, 0) {
		return fmt.Errorf("%w: Caddy %s takes no weight of 0 (2.9 does): it cannot keep an upstream of %s without sending it requests; upgrade Caddy", deploy.ErrProxy, v, p.route)
	}
	return nil
}

// assumedWeights says, on a change with weights that Caddy refused, what
// canWeigh assumed of a Caddy whose version it could not read.
func (p *Proxy) assumedWeights(ctx context.Context, u upstreams, err error) error {
	if _, known := p.caddyVersion(ctx); known || u.weights == nil || !errors.Is(err, deploy.ErrProxy) {
		return err
	}
	return fmt.Errorf("%w (Caddy's version could not be read from its /metrics, so handoff assumed it splits by weight: weighted_round_robin needs Caddy 2.7, a weight of 0 needs 2.9)", err)
}

// apply writes u into a reverse_proxy handler. Weights that differ set a
// weighted_round_robin selection policy (write refuses them over a policy
// of the user's own, which could not be given back); equal ones take away
// a weighted_round_robin, whose weights would no longer match the
// upstreams, and keep any other policy the user chose (least_conn, first...).
func (u upstreams) apply(handler map[string]any) {
	list := make([]any, 0, len(u.dials))
	for _, d := range u.dials {
		list = append(list, map[string]any{"dial": d})
	}
	handler["upstreams"] = list
	lb := map[string]any{}
	if old, ok := handler["load_balancing"].(map[string]any); ok {
		for k, v := range old {
			lb[k] = v
		}
	}
	if u.weights != nil {
		ws := make([]any, len(u.weights))
		for i, w := range u.weights {
			ws[i] = w
		}
		lb["selection_policy"] = map[string]any{"policy": "weighted_round_robin", "weights": ws}
	} else if _, ok := wrrWeights(handler); ok {
		delete(lb, "selection_policy")
	}
	if len(lb) == 0 {
		delete(handler, "load_balancing")
	} else {
		handler["load_balancing"] = lb
	}
}

// ownPolicy is the selection policy a handler has other than the
// weighted_round_robin weights bring, or "".
func ownPolicy(handler map[string]any) string {
	policy, _ := dig(handler, "load_balancing", "selection_policy").(map[string]any)
	if name, _ := policy["policy"].(string); name != "" && name != "weighted_round_robin" {
		return name
	}
	return ""
}

// policyChanges says whether writing u changes the handler's selection
// policy, not only its upstreams.
func (u upstreams) policyChanges(handler map[string]any) bool {
	_, ok := wrrWeights(handler)
	return u.weights != nil || ok
}

// matches says whether a handler read back holds u.
func (u upstreams) matches(handler map[string]any) bool {
	if !slices.Equal(dials(handler), u.dials) {
		return false
	}
	ws, ok := wrrWeights(handler)
	if u.weights == nil {
		return !ok
	}
	return ok && slices.Equal(ws, u.weights)
}

// describe spells u for messages: the dials, and their weights if any.
func (u upstreams) describe() string {
	s := strings.Join(u.dials, " ")
	if u.weights != nil {
		s += " (" + lbPolicy(u.weights) + ")"
	}
	return s
}
