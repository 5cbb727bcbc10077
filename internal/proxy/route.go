package proxy

import (
	"cmp"
	"fmt"
	"net"
	"slices"
	"sync/atomic"
	"time"

	"github.com/handoff-dev/handoff/internal/proxy/wire"
)

// route is where a service's new requests go: a weighted list of backends
// (releases), each a set of endpoints (targets). It is never changed once
// made; a route change is one swap of the service's pointer to a new one.
type route struct {
	backends []*pool
	// order is the smooth weighted round robin of the backends of weight
	// > 0 (their indexes in backends), one turn of sum(weights)/gcd picks;
	// next counts the picks. A split route takes turns only for requests
	// whose own backend has no endpoint up.
	order []uint8
	next  atomic.Uint64
	// keyed: two or more backends of weight > 0 (a canary); each request's
	// backend is the one its client key falls in (stickiness.go). nil
	// otherwise: no key is looked at.
	keyed []keyRange
	// single: the route is one endpoint of weight > 0 (what Put and
	// Switch make); the request path takes it without picking.
	single *target
}

// pool is one backend (release) of a route: its endpoints.
type pool struct {
	release   string
	weight    int
	endpoints []*target
	next      atomic.Uint64 // the ties' round robin
}

// pick is the endpoint a new request of client key k goes to: a backend
// by weight (on a split route, the one k falls in), then its endpoint with
// the fewest requests in flight, among those up; when every endpoint of
// weight > 0 is down, the next in turn (the dial retry waits for it).
func (r *route) pick(k *clientKey) *target {
	if r.single != nil {
		return r.single
	}
	if r.keyed != nil {
		return r.pickKeyed(k)
	}
	if t := r.pickUp(nil); t != nil {
		return t
	}
	b := r.backends[r.order[(r.next.Add(1)-1)%uint64(len(r.order))]]
	return b.endpoints[b.turn()%uint64(len(b.endpoints))]
}

// pickUp is the endpoint up, other than not, that a request goes to: the
// backend next in the weights' turn that has one, then its endpoint with
// the fewest requests in flight. nil: none is up.
func (r *route) pickUp(not *target) *target {
	n := uint64(len(r.order))
	start := r.next.Add(1) - 1
	var empty []bool // backends found with no endpoint up, each looked at once
	for i := range n {
		j := r.order[(start+i)%n]
		if empty != nil && empty[j] {
			continue
		}
		b := r.backends[j]
		if t := b.fewest(b.turn(), not); t != nil {
			return t
		}
		if empty == nil {
			empty = make([]bool, len(r.backends))
		}
		empty[j] = true
	}
	return nil
}

// pickUpFor is the endpoint up, other than not, that a request of client
// key k goes to: by k on a split route, as pickUp picks on any other. nil:
// none is up.
func (r *route) pickUpFor(k *clientKey, not *target) *target {
	if r.keyed != nil {
		return r.pickUpKeyed(k, not)
	}
	return r.pickUp(not)
}

// upBesides says whether an endpoint of weight > 0 other than t is up:
// somewhere a request that t refused can go at once.
func (r *route) upBesides(t *target) bool {
	for _, b := range r.backends {
		if b.weight == 0 {
			continue
		}
		for _, e := range b.endpoints {
			if e != t && !e.down.Load() {
				return true
			}
		}
	}
	return false
}

// turn counts b's picks: ties are taken in turn.
func (b *pool) turn() uint64 { return b.next.Add(1) - 1 }

// fewest is b's endpoint up, other than not, with the fewest requests in
// flight; nil when none is up. Ties go in turn among the endpoints up, so
// that one down leaves the others even shares (taking ties in turn over
// all of them gave the one after it the down one's share too).
func (b *pool) fewest(turn uint64, not *target) *target {
	up := 0
	for _, t := range b.endpoints {
		if t != not && !t.down.Load() {
			up++
		}
	}
	if up == 0 {
		return nil
	}
	first := int(turn % uint64(up)) // the up endpoint ties begin at
	var best *target
	var fewest int64
	bestRank, p := 0, 0
	for _, t := range b.endpoints {
		if t == not || t.down.Load() {
			continue
		}
		rank := (p - first + up) % up
		p++
		if c := t.inFlight.Load(); best == nil || c < fewest || c == fewest && rank < bestRank {
			best, fewest, bestRank = t, c, rank
		}
	}
	return best
}

// smoothOrder is one turn of nginx's smooth weighted round robin over
// weights: each backend picked weight/gcd times, spread out (90/10 sends
// one request in ten to the second, not ten in a row).
func smoothOrder(weights []int) []uint8 {
	g := 0
	for _, w := range weights {
		g = gcd(g, w)
	}
	total := 0
	for _, w := range weights {
		total += w / g
	}
	current := make([]int, len(weights))
	order := make([]uint8, 0, total)
	for range total {
		best := -1
		for i, w := range weights {
			if w == 0 {
				continue
			}
			current[i] += w / g
			if best < 0 || current[i] > current[best] {
				best = i
			}
		}
		current[best] -= total
		order = append(order, uint8(best))
	}
	return order
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// oneEndpoint is the route Put and Switch make: every request to upstream.
func oneEndpoint(upstream string) []wire.Backend {
	return []wire.Backend{{Endpoints: []string{upstream}, Weight: 100}}
}

// checkRoute says what is wrong with a route a change asks for, if anything.
func checkRoute(spec []wire.Backend) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: route: %s", ErrBadInput, fmt.Sprintf(format, args...))
	}
	if len(spec) == 0 || len(spec) > wire.MaxBackends {
		return bad("a route needs 1 to %d backends", wire.MaxBackends)
	}
	releases, endpoints := map[string]bool{}, map[string]bool{}
	live := false
	for _, b := range spec {
		if releases[b.Release] {
			return bad("release %q is named twice", b.Release)
		}
		releases[b.Release] = true
		if b.Weight < 0 || b.Weight > wire.MaxWeight {
			return bad("release %q: a weight is 0 to %d, not %d", b.Release, wire.MaxWeight, b.Weight)
		}
		if len(b.Endpoints) == 0 || len(b.Endpoints) > wire.MaxEndpoints {
			return bad("release %q needs 1 to %d endpoints", b.Release, wire.MaxEndpoints)
		}
		for _, e := range b.Endpoints {
			if !isHostPort(e) {
				return bad("endpoint %q is not host:port", e)
			}
			if endpoints[e] {
				return bad("endpoint %s is in the route twice", e)
			}
			endpoints[e] = true
		}
		live = live || b.Weight > 0
	}
	if !live {
		return bad("every backend has weight 0: nothing would be served")
	}
	return nil
}

// canonical is spec in one order: backends by release, endpoints sorted,
// so that two routes that send alike compare equal.
func canonical(spec []wire.Backend) []wire.Backend {
	out := make([]wire.Backend, 0, len(spec))
	for _, b := range spec {
		b.Endpoints = slices.Sorted(slices.Values(b.Endpoints))
		out = append(out, b)
	}
	slices.SortFunc(out, func(a, b wire.Backend) int { return cmp.Compare(a.Release, b.Release) })
	return out
}

// sameRoute says whether two routes send alike.
func sameRoute(a, b []wire.Backend) bool {
	return slices.EqualFunc(canonical(a), canonical(b), func(x, y wire.Backend) bool {
		return x.Release == y.Release && x.Weight == y.Weight && slices.Equal(x.Endpoints, y.Endpoints)
	})
}

// spec is the route r runs.
func (r *route) spec() []wire.Backend {
	out := make([]wire.Backend, 0, len(r.backends))
	for _, b := range r.backends {
		eps := make([]string, 0, len(b.endpoints))
		for _, t := range b.endpoints {
			eps = append(eps, t.upstream)
		}
		out = append(out, wire.Backend{Release: b.release, Endpoints: eps, Weight: b.weight})
	}
	return out
}

// state is r with its counts.
func (r *route) state() (upstream string, inFlight int64, backends []wire.BackendState) {
	if r.single != nil {
		upstream = r.single.upstream
	}
	for _, b := range r.backends {
		bs := wire.BackendState{Release: b.release, Weight: b.weight, Endpoints: make([]wire.EndpointState, 0, len(b.endpoints))}
		for _, t := range b.endpoints {
			n := t.inFlight.Load()
			if b.weight > 0 {
				inFlight += n
			}
			es := wire.EndpointState{Endpoint: t.upstream, InFlight: n, Down: t.down.Load()}
			if t.named != nil {
				es.Addresses = t.named.state()
			}
			bs.Endpoints = append(bs.Endpoints, es)
		}
		backends = append(backends, bs)
	}
	return upstream, inFlight, backends
}

// live calls f for every endpoint of r that takes new requests.
func (r *route) live(f func(*target)) {
	for _, b := range r.backends {
		if b.weight > 0 {
			for _, t := range b.endpoints {
				f(t)
			}
		}
	}
}

// newRoute makes the route spec asks for (checked), keeping the targets of
// old that take new requests in both (their connections and counts), and
// the drained targets of old's weight-0 backends that stay at weight 0. A
// target that takes requests again after it drained is a new one, as a
// switch back to a draining upstream always made. Callers hold s.mu.
func (s *service) newRoute(spec []wire.Backend, old *route) *route {
	liveOld, drainedOld := map[string]*target{}, map[string]*target{}
	if old != nil {
		for _, b := range old.backends {
			for _, t := range b.endpoints {
				if b.weight > 0 {
					liveOld[t.upstream] = t
				} else {
					drainedOld[t.upstream] = t
				}
			}
		}
	}
	r := &route{}
	weights := make([]int, 0, len(spec))
	for _, bs := range spec {
		b := &pool{release: bs.Release, weight: bs.Weight}
		for _, e := range bs.Endpoints {
			t := liveOld[e]
			if bs.Weight == 0 && t == nil {
				t = drainedOld[e]
			}
			if t == nil {
				t = s.newTarget(e)
				if bs.Weight == 0 {
					t.drain()
					s.draining = append(s.draining, t)
				}
			}
			b.endpoints = append(b.endpoints, t)
		}
		r.backends = append(r.backends, b)
		weights = append(weights, bs.Weight)
	}
	r.order = smoothOrder(weights)
	r.keyed = keyRanges(weights)
	var live []*target
	r.live(func(t *target) { live = append(live, t) })
	if len(live) == 1 {
		r.single = live[0]
	}
	for _, t := range live {
		t.alone.Store(len(live) == 1)
	}
	return r
}

// setRoute makes r the service's route: one swap, then every endpoint
// that took new requests before and does not now drains, and the drained
// ones that have nothing left in flight and are not in r are forgotten.
// Callers hold s.mu.
func (s *service) setRoute(r *route) {
	old := s.route.Load()
	s.route.Store(r)
	if old == nil {
		return
	}
	stays := map[*target]bool{}
	for _, b := range r.backends {
		for _, t := range b.endpoints {
			stays[t] = b.weight > 0 || stays[t]
		}
	}
	inRoute := func(t *target) bool { _, ok := stays[t]; return ok }
	// Targets already drained out have nothing left to track.
	s.draining = slices.DeleteFunc(s.draining, func(t *target) bool {
		if t.inFlight.Load() != 0 || inRoute(t) {
			return false
		}
		t.forget()
		return true
	})
	old.live(func(t *target) {
		if stays[t] {
			return
		}
		t.drain()
		s.draining = append(s.draining, t)
	})
}

// changeRoute points the service at the route spec (checked), saved first
// as every change is, with generation gen (0: the one it has). Callers
// hold p.change.
func (p *Server) changeRoute(s *service, spec []wire.Backend, gen uint64) error {
	old := s.route.Load()
	err := p.saveEntry(s.name, func(st *ServiceState) {
		st.Route, st.Upstream = specState(spec), singleUpstream(spec)
		st.Generation = max(st.Generation, gen)
	})
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.setRoute(s.newRoute(spec, old))
	s.mu.Unlock()
	if gen != 0 {
		s.generation.Store(gen)
	}
	p.opts.Metrics.switched(s.name)
	p.log.Info("switched", "service", s.name, "from", describeRoute(old.spec()), "to", describeRoute(spec))
	return nil
}

// specState is spec as a state shows it, with no counts.
func specState(spec []wire.Backend) []wire.BackendState {
	out := make([]wire.BackendState, 0, len(spec))
	for _, b := range spec {
		bs := wire.BackendState{Release: b.Release, Weight: b.Weight}
		for _, e := range b.Endpoints {
			bs.Endpoints = append(bs.Endpoints, wire.EndpointState{Endpoint: e})
		}
		out = append(out, bs)
	}
	return out
}

// singleUpstream is the route's one endpoint of weight > 0, or "".
func singleUpstream(spec []wire.Backend) string {
	up := ""
	for _, b := range spec {
		if b.Weight == 0 {
			continue
		}
		if up != "" || len(b.Endpoints) != 1 {
			return ""
		}
		up = b.Endpoints[0]
	}
	return up
}

// describeRoute writes a route for the log: a single upstream as itself.
func describeRoute(spec []wire.Backend) string {
	if up := singleUpstream(spec); up != "" && len(spec) == 1 {
		return up
	}
	return fmt.Sprint(spec)
}

// Route points the service from the route from (any, when empty) to to.
// Requests already running stay where they are until they end; the next
// ones go along to. Answered as done when the route is to already (a
// repeated change whose answer was lost); ErrNotFrom when it is not from.
func (p *Server) Route(name string, from, to []wire.Backend) (ServiceState, error) {
	if err := checkRoute(to); err != nil {
		return ServiceState{}, err
	}
	return p.reroute(name, func(cur []wire.Backend) ([]wire.Backend, error) {
		switch {
		case sameRoute(cur, to):
			return nil, nil
		case len(from) > 0 && !sameRoute(cur, from):
			return nil, fmt.Errorf("%w: %s's route is %s, not %s", ErrNotFrom, name, describeRoute(cur), describeRoute(from))
		}
		return to, nil
	})
}

// reroute changes one service's route, one change at a time: next says,
// from the route it has now, the route it gets (nil: it is there
// already), or why it gets none.
func (p *Server) reroute(name string, next func(cur []wire.Backend) ([]wire.Backend, error)) (ServiceState, error) {
	return p.changing(name, func(s *service) error {
		to, err := next(s.route.Load().spec())
		if err != nil || to == nil {
			return err
		}
		return p.changeRoute(s, to, 0)
	})
}

// Probing an endpoint that refuses connections: every probeFirst at
// first, backing off to probeMax, until it answers or leaves the route.
var (
	probeFirst = 250 * time.Millisecond
	probeMax   = 2 * time.Second
)

// refused marks t down when err says its endpoint refused the connection,
// and starts probing it; logged once per change.
func (t *target) refused(err error) {
	if t.alone.Load() || !refusedConn(err) || !t.down.CompareAndSwap(false, true) {
		return // the route's only endpoint has none to be skipped for: the dial retry waits for it, as before routes
	}
	t.log.Warn("endpoint down: it refuses connections; it gets no new requests while another endpoint of the route is up, and is probed until it answers", "service", t.service, "endpoint", t.upstream, "err", err)
	go t.probe()
}

// answered marks t up again, if it was down.
func (t *target) answered() {
	if t.down.CompareAndSwap(true, false) {
		t.log.Info("endpoint up: it answers again", "service", t.service, "endpoint", t.upstream)
	}
}

// probe dials t until it answers (then t is up) or takes no new requests
// any more.
func (t *target) probe() {
	wait := t.probeFirst
	for t.down.Load() && !t.draining.Load() && !t.gone.Load() {
		time.Sleep(wait)
		if t.dialProbe() == nil {
			t.answered()
			return
		}
		wait = min(wait*3/2, probeMax)
	}
}

// dialProbe dials t's endpoint (any address of a name) once.
func (t *target) dialProbe() error {
	if t.named != nil {
		return t.named.dialAny()
	}
	conn, err := net.DialTimeout("tcp", t.upstream, time.Second)
	if err == nil {
		conn.Close()
	}
	return err
}
