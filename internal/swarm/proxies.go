package swarm

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/handoff-dev/handoff/internal/deploy"
	"github.com/handoff-dev/handoff/internal/proxy/wire"
)

// Proxies is deploy.Proxy on a swarm: handoff proxy on every node (handoff swarm
// setup's global service), each reached by a one-off global job on its node that
// mounts the node-local volume of the proxy's control socket. A switch is one job:
// `handoff proxy ctl switch` on every node, which waits until that node's DNS answers
// with the new release's tasks, switches, drains the old endpoints and exits with a
// code read per node. What a proxy serves is read the same way (`ctl status`).
type Proxies struct {
	API     JobAPI
	Service string
	Image   string // the image of handoff the jobs run (swarm.proxy_image)
	Auth    string // its registry login
	Port    int    // where every node's proxy serves the service
	Network string // the overlay; DefaultNetwork when ""
	// Generation gives each switch a number above every earlier one's (the shared
	// record's counter): a proxy refuses one at or below its own, so a late job never
	// undoes a newer switch.
	Generation func(ctx context.Context) (uint64, error)
	Drain      time.Duration // how long a node's switch waits for the old endpoints
	Converge   time.Duration // how long a node waits for its DNS to show the tasks
	Timeout    time.Duration // bounds each job; DefaultJobTimeout when 0

	mu sync.Mutex
	// drained are the endpoints the last switch drained on every node that runs a
	// proxy: what InFlight need not ask the nodes again.
	drained map[string]bool
	// last is how each node took the last switch (deploy.Parts).
	last []deploy.PartResult
	// holding says reads are held (deploy.OneReading): held is the first `ctl
	// status` job's, the answer of those that follow until release; a switch drops it.
	holding bool
	held    *reading
}

// reading is one `ctl status` job: a result per node, and what kept it from ending.
type reading struct {
	results []NodeResult
	err     error
}

var (
	_ deploy.Proxy      = (*Proxies)(nil)
	_ deploy.Laggards   = (*Proxies)(nil)
	_ deploy.Parts      = (*Proxies)(nil)
	_ deploy.OneReading = (*Proxies)(nil)
)

// Exit codes of `handoff proxy ctl switch`, per node.
const (
	ctlNotConverged  = 3
	ctlOldGeneration = 4
	ctlDrainTimeout  = 5
)

// Describe names the proxies for messages.
func (p *Proxies) Describe() string {
	return fmt.Sprintf("handoff proxy on every node of the swarm (service %s, port %d)", p.Service, p.Port)
}

// nodeState is one node's `ctl status` answer for the service.
type nodeState struct {
	node  NodeResult
	state *wire.ServiceState // nil: the proxy has no such service
}

// Hold has the reads of what the proxies serve share one `ctl status` job until
// release: each takes seconds, and one status asks several questions (the route,
// in flight per replica, who is behind, a row per node) that should agree.
func (p *Proxies) Hold() (release func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.holding, p.held = true, nil
	return func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.holding, p.held = false, nil
	}
}

// read runs a `ctl status` job on every node, or gives the one held.
func (p *Proxies) read(ctx context.Context) ([]NodeResult, error) {
	p.mu.Lock()
	held, holding := p.held, p.holding
	p.mu.Unlock()
	if held != nil {
		return held.results, held.err
	}
	results, err := p.run(ctx, "status", p.statusArgs())
	if holding && ctx.Err() == nil {
		p.mu.Lock()
		if p.holding {
			p.held = &reading{results: results, err: err}
		}
		p.mu.Unlock()
	}
	return results, err
}

// states asks every node's proxy what it serves. A node reached whose proxy did not
// answer is an error: what it serves is not known, and a deploy must not stop what
// it may point at.
func (p *Proxies) states(ctx context.Context) ([]nodeState, error) {
	results, err := p.read(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: read the proxies of %s: %w", deploy.ErrProxyUnreached, p.Service, err)
	}
	var out []nodeState
	var failed []string
	unreached := map[string]NodeResult{}
	for _, r := range results {
		if r.State == NotReached {
			unreached[r.NodeID] = r
			continue
		}
		ns, why := readState(r)
		if why != "" {
			failed = append(failed, fmt.Sprintf("%s (%s)", r.Hostname, why))
			continue
		}
		out = append(out, ns)
	}
	// A paused node runs its proxy on, serving, where no job goes: what it points at
	// cannot be read, so nothing may be decided as though it pointed nowhere.
	if len(unreached) > 0 {
		nodes, err := ProxyNodes(ctx, p.API)
		if err != nil {
			return out, fmt.Errorf("%w: the nodes of %s: %w", deploy.ErrProxyUnreached, p.Service, err)
		}
		for _, n := range nodes {
			r, missed := unreached[n.ID]
			if !missed || n.State != string(swarm.NodeStateReady) || !mayServe(n.Proxy) {
				continue
			}
			if n.Availability == string(swarm.NodeAvailabilityPause) {
				failed = append(failed, fmt.Sprintf("%s (paused: its proxy serves on where no job goes; make it active with docker node update --availability active %s, or drain it)", n.Hostname, n.Hostname))
			} else {
				failed = append(failed, fmt.Sprintf("%s (its proxy %s, but no task of the job ran there: %s; ask again)", n.Hostname, n.Proxy, cmp.Or(r.Err, "not placed")))
			}
		}
	}
	if len(failed) > 0 {
		return out, fmt.Errorf("%w: the proxies of %s could not be read: %s", deploy.ErrProxyUnreached, p.Service, strings.Join(failed, "; "))
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no node's proxy answered (is handoff swarm setup done, and are the nodes ready?)", deploy.ErrProxyUnreached)
	}
	return out, nil
}

// readState reads a node's `ctl status` answer; why says what kept it from reading.
func readState(r NodeResult) (ns nodeState, why string) {
	if r.ExitCode != 0 || r.State != "complete" {
		return ns, fmt.Sprintf("%s, exit %d: %s", r.State, r.ExitCode, lastLine(r))
	}
	ns.node = r
	line := lastLine(r)
	if line != "null" && line != "" {
		ns.state = &wire.ServiceState{}
		if err := json.Unmarshal([]byte(line), ns.state); err != nil {
			return nodeState{}, fmt.Sprintf("its status did not read: %v", err)
		}
	}
	return ns, ""
}

func lastLine(r NodeResult) string {
	for i := len(r.Logs) - 1; i >= 0; i-- {
		if l := strings.TrimSpace(r.Logs[i]); l != "" {
			return l
		}
	}
	return cmp.Or(r.Err, "")
}

// routeOf is a node's route as the procedure knows routes.
func routeOf(st *wire.ServiceState) deploy.Route {
	if st == nil {
		return nil
	}
	var r deploy.Route
	for _, b := range st.Route {
		var endpoints []string
		for _, e := range b.Endpoints {
			endpoints = append(endpoints, e.Endpoint)
		}
		r = append(r, deploy.Backend{Release: b.Release, Endpoints: endpoints, Weight: b.Weight})
	}
	return r
}

// Route is the route of the newest switch the nodes' proxies hold (the highest
// generation). Nodes behind it (a switch that did not reach them, a node that joined
// since) keep serving theirs: PointsAt names them, so nothing they point at is
// stopped, and the next switch, sent to every node, brings them in step.
func (p *Proxies) Route(ctx context.Context, _ []string) (deploy.Route, error) {
	states, err := p.states(ctx)
	if err != nil {
		return nil, err
	}
	return newestRoute(states), nil
}

// newestRoute is the route of the node state of the highest generation.
func newestRoute(states []nodeState) deploy.Route {
	var newest *wire.ServiceState
	for _, s := range states {
		if s.state != nil && (newest == nil || s.state.Generation > newest.Generation) {
			newest = s.state
		}
	}
	return routeOf(newest)
}

// mayServe says a proxy task in state (ProxyNode.Proxy) runs, or may run soon and
// restore its route from its state volume: what it points at counts.
func mayServe(state string) bool {
	return state != "" && !terminal(swarm.TaskState(state))
}

// Behind names the nodes whose proxy serves another route than route: a node that
// was down, or that joined, at the last switch. Swarm does not run a job again on a
// node that comes back, so `handoff repair` sends the route again (deploy.Laggards).
func (p *Proxies) Behind(ctx context.Context, route deploy.Route) ([]string, error) {
	states, err := p.states(ctx)
	if err != nil {
		return nil, err
	}
	return behind(states, route), nil
}

func behind(states []nodeState, route deploy.Route) []string {
	var out []string
	for _, s := range states {
		switch r := routeOf(s.state); {
		case len(r) == 0:
			out = append(out, fmt.Sprintf("the proxy on %s has no route for the service", s.node.Hostname))
		case !deploy.Same(r, route):
			out = append(out, fmt.Sprintf("the proxy on %s serves an older switch (generation %d: %s)", s.node.Hostname, s.state.Generation, r))
		}
	}
	return out
}

// Preflight checks that every ready node runs its proxy.
func (p *Proxies) Preflight(ctx context.Context, _ deploy.Route, _ []string) ([]string, error) {
	nodes, err := ProxyNodes(ctx, p.API)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", deploy.ErrProxyUnreached, err)
	}
	var missing []string
	for _, n := range nodes {
		if n.eligible() && n.Proxy != "running" {
			missing = append(missing, n.describeMissing())
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%w: no running handoff proxy on %s: run handoff swarm setup (nothing was changed)", deploy.ErrProxyUnreached, strings.Join(missing, "; "))
	}
	// The port must be one setup published on every node: a proxy listening on another
	// serves nobody.
	svc, err := p.API.ServiceInspect(ctx, ProxyService, client.ServiceInspectOptions{})
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v (run handoff swarm setup)", deploy.ErrProxyUnreached, ProxyService, err)
	}
	var published []string
	found := false
	if es := svc.Service.Spec.EndpointSpec; es != nil {
		for _, pc := range es.Ports {
			published = append(published, strconv.Itoa(int(pc.PublishedPort)))
			found = found || int(pc.TargetPort) == p.Port && int(pc.PublishedPort) == p.Port
		}
	}
	if !found {
		return nil, fmt.Errorf("%w: swarm.port %d is not a port %s publishes (it publishes %s): set swarm.port to one of them, or add it with handoff swarm setup --update --port %d", deploy.ErrConfig, p.Port, ProxyService, cmp.Or(strings.Join(published, ", "), "none"), p.Port)
	}
	// Jobs a killed handoff left: ended ones go; one still running is another's.
	removed, err := RemoveEndedJobs(ctx, p.API, p.Service)
	var notes []string
	if len(removed) > 0 {
		notes = append(notes, "removed jobs an earlier run left: "+strings.Join(removed, ", "))
	}
	return notes, err
}

// SetRoute switches every node's proxy to to, a route of one release whose endpoint
// is its colour's tasks.<name>:<port>: one job, each node's part waiting until its DNS
// answers with the release's healthy tasks (their IPs from the tally), then draining
// the old endpoints there. A node that refuses the generation has seen a newer switch;
// one whose DNS never shows the tasks is named, and nothing is stopped.
func (p *Proxies) SetRoute(ctx context.Context, from, to deploy.Route) error {
	p.keepSwitch(nil)
	if len(to) != 1 || len(to[0].Endpoints) != 1 {
		return fmt.Errorf("%w: on a swarm a route is one release's colour service (got %v)", deploy.ErrProxy, to.Endpoints())
	}
	endpoint := to[0].Endpoints[0]
	colour, _, ok := strings.Cut(strings.TrimPrefix(endpoint, "tasks."), ":")
	if !ok || !strings.HasPrefix(endpoint, "tasks.") {
		return fmt.Errorf("%w: %s is not a colour service's tasks.<name>:<port>", deploy.ErrProxy, endpoint)
	}
	expect, err := p.expect(ctx, colour)
	if err != nil {
		return err
	}
	gen, err := p.Generation(ctx)
	if err != nil {
		return fmt.Errorf("%w: the switch's generation: %v (nothing was changed)", deploy.ErrProxy, err)
	}
	args := []string{"proxy", "ctl", "switch", "--socket", ProxySocket, "--service", p.Service,
		"--listen", ":" + strconv.Itoa(p.Port), "--to", endpoint, "--release", to[0].Release,
		"--generation", strconv.FormatUint(gen, 10),
		"--drain", p.drain().String(), "--converge", p.converge().String()}
	if len(expect) > 0 {
		args = append(args, "--expect", strings.Join(expect, ","))
	}
	p.mu.Lock()
	p.drained, p.held = nil, nil
	p.mu.Unlock()
	sent := time.Now()
	results, err := p.run(ctx, "switch", args)
	took := time.Since(sent)
	p.keepSwitch(switchResults(results, to.String(), gen, took, nil))
	if err != nil {
		return fmt.Errorf("%w: %v", deploy.ErrUnclear, err)
	}
	// A node that runs a proxy and ran no task of the job (paused: Swarm places no
	// new task there) was not switched: its proxy serves the old release on.
	proxies, err := ProxyNodes(ctx, p.API)
	if err != nil {
		return fmt.Errorf("%w: %v", deploy.ErrUnclear, err)
	}
	p.keepSwitch(switchResults(results, to.String(), gen, took, proxies))
	serving := map[string]ProxyNode{}
	for _, n := range proxies {
		if mayServe(n.Proxy) && n.State == "ready" {
			serving[n.ID] = n
		}
	}
	var failed []string
	allDrained := true
	for _, r := range results {
		switch {
		case r.State == NotReached:
			if n, ok := serving[r.NodeID]; ok {
				failed = append(failed, fmt.Sprintf("%s (%s) runs a proxy the switch did not reach: make it active (docker node update --availability active) or drain it", r.Hostname, n.Availability))
			}
		case r.State == "complete":
		case r.ExitCode == ctlDrainTimeout:
			// switched; the drain timed out and the node retired what was left
			allDrained = false
		case r.ExitCode == ctlNotConverged:
			failed = append(failed, fmt.Sprintf("%s: its DNS never answered %s with the tasks %v (%s)", r.Hostname, colour, expect, lastLine(r)))
		case r.ExitCode == ctlOldGeneration:
			failed = append(failed, fmt.Sprintf("%s: it holds a newer switch than generation %d (%s)", r.Hostname, gen, lastLine(r)))
		default:
			failed = append(failed, fmt.Sprintf("%s: %s, exit %d: %s", r.Hostname, r.State, r.ExitCode, lastLine(r)))
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("%w: switch of %s to %s (generation %d) not made on every node: %s; both colours are kept, run handoff repair", deploy.ErrProxy, p.Service, endpoint, gen, strings.Join(failed, "; "))
	}
	if allDrained {
		p.mu.Lock()
		p.drained = map[string]bool{}
		for _, e := range from.Endpoints() {
			if e != endpoint {
				p.drained[e] = true
			}
		}
		p.mu.Unlock()
	}
	return nil
}

// expect is the overlay IPs of colour's tasks running on ready nodes: what every
// node's DNS must answer before its proxy switches.
func (p *Proxies) expect(ctx context.Context, colour string) ([]string, error) {
	tasks, err := p.API.TaskList(ctx, client.TaskListOptions{Filters: make(client.Filters).Add("service", colour)})
	if err != nil {
		return nil, fmt.Errorf("%w: list the tasks of %s: %v", deploy.ErrProxy, colour, err)
	}
	nodes, err := p.API.NodeList(ctx, client.NodeListOptions{})
	if err != nil {
		return nil, fmt.Errorf("%w: list the nodes: %v", deploy.ErrProxy, err)
	}
	release := 0
	for _, t := range tasks.Items {
		if t.Spec.ContainerSpec != nil {
			if n, err := strconv.Atoi(t.Spec.ContainerSpec.Labels[LabelRelease]); err == nil && n > release {
				release = n
			}
		}
	}
	t := Count(colour, tasks.Items, nodes.Items, release, 0, cmp.Or(p.Network, DefaultNetwork))
	var ips []string
	for _, a := range t.IPs {
		ips = append(ips, a.String())
	}
	return ips, nil
}

// PointsAt names the nodes whose proxy sends the service's requests to upstream.
func (p *Proxies) PointsAt(ctx context.Context, upstream string) ([]string, error) {
	states, err := p.states(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, s := range states {
		if slices.ContainsFunc(routeOf(s.state).Serving(), func(e string) bool { return deploy.SameUpstream(e, upstream) }) {
			out = append(out, p.Service+" on "+s.node.Hostname)
		}
	}
	return out, nil
}

// InFlight is none for what the last switch drained on every node (each node's
// switch waits for its old endpoints before it ends); else the sum of what the nodes'
// proxies still run on upstream, asked of them.
func (p *Proxies) InFlight(ctx context.Context, upstream string) (deploy.InFlight, error) {
	p.mu.Lock()
	drained := p.drained[upstream]
	p.mu.Unlock()
	if drained {
		return deploy.InFlight{Reported: true, Note: "drained on every node by its switch job"}, nil
	}
	states, err := p.states(ctx)
	if err != nil {
		return deploy.InFlight{}, err
	}
	var n int64
	for _, s := range states {
		if s.state == nil {
			continue
		}
		for _, d := range s.state.Draining {
			if deploy.SameUpstream(d.Upstream, upstream) {
				n += d.InFlight
			}
		}
		for _, b := range s.state.Route {
			for _, e := range b.Endpoints {
				if deploy.SameUpstream(e.Endpoint, upstream) {
					n += e.InFlight
				}
			}
		}
	}
	return deploy.InFlight{Requests: int(n), Reported: true}, nil
}

// Retire does nothing: each node's switch retired what its drain left.
func (p *Proxies) Retire(context.Context, string) error { return nil }

// Advice has nothing to add.
func (p *Proxies) Advice(context.Context, string) ([]string, error) { return nil, nil }

func (p *Proxies) drain() time.Duration    { return cmp.Or(p.Drain, deploy.DefaultDrainTimeout) }
func (p *Proxies) converge() time.Duration { return cmp.Or(p.Converge, wire.DefaultConverge) }

// jobName is a name of its own for a job of what on service, at most 63 characters
// (Swarm's limit): a long service's name is cut and a hash of it added.
func jobName(what, service string, n int64) string {
	name := "handoff-" + what + "-" + service
	if len(name) > 40 {
		sum := sha256.Sum256([]byte(service))
		name = name[:30] + "-" + hex.EncodeToString(sum[:4])
	}
	return fmt.Sprintf("%s-%d", strings.TrimRight(name, "-_."), n%1e9)
}

// run runs handoff args on every node, beside its proxy's socket.
func (p *Proxies) run(ctx context.Context, what string, args []string) ([]NodeResult, error) {
	if p.Image == "" {
		return nil, errors.New("no proxy image (swarm.proxy_image)")
	}
	name := jobName(what, p.Service, time.Now().UnixNano())
	return RunGlobalJob(ctx, p.API, JobSpec{
		Name: name, Service: p.Service, Image: p.Image, Command: append([]string{"/handoff"}, args...), Auth: p.Auth,
		Mounts:  []mount.Mount{{Type: mount.TypeVolume, Source: ProxyRunVolume, Target: "/run/handoff"}},
		Timeout: cmp.Or(p.Timeout, DefaultJobTimeout+p.converge()+p.drain()),
	})
}
