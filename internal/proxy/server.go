package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/handoff-dev/handoff/internal/proxy/wire"
)

// Errors the control API maps to statuses.
var (
	ErrNoService  = errors.New("no such service")
	ErrNotFrom    = errors.New("the service's target (or route) is not the one named")
	ErrBadInput   = errors.New("bad request")
	ErrNotSaved   = errors.New("the state file could not be written; nothing was changed")
	ErrRestarting = errors.New("handoff proxy is restarting; try again in a moment")
)

// MaxHeld bounds how many requests a pause holds (wire has how long).
const MaxHeld = 10000

// Listen opens a listening socket; tableflip's Upgrader.Listen in the
// daemon (so sockets survive a restart), net.Listen in tests.
type Listen func(network, addr string) (net.Listener, error)

// Options configure a Server.
type Options struct {
	// Save keeps the services across restarts (the state file). It is
	// called with the state a change will lead to, before the change is
	// applied; when it fails, the change is not made. nil: nothing is kept.
	Save func([]ServiceState) error
	// Trusted are the addresses of front proxies whose X-Forwarded-*
	// headers are kept and appended to; from anyone else they are replaced.
	Trusted []netip.Prefix
	// DialRetry is how long a request waits for an app that refuses
	// connections (restarting); 0: DefaultDialRetry.
	DialRetry time.Duration
	// Metrics, when set, count requests, errors and switches.
	Metrics *Metrics
	// Clock is what leases and retries (of listens, of refused dials) are
	// timed by; nil: the system's.
	Clock Clock
	// Resolver looks up named endpoints (tasks.api-green:8000); nil:
	// net.DefaultResolver.
	Resolver Resolver
}

// DefaultTrusted is loopback: the front proxy on the same host.
var DefaultTrusted = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}

// Server is the switch: one listener per service, each request sent along
// the service's route to one of its endpoints (targets).
type Server struct {
	listen Listen
	log    *slog.Logger
	opts   Options

	// change lets one change at a time be saved and then applied, so the
	// state file always holds the latest state.
	change sync.Mutex
	// frozen: a new process is taking over; changes must go to it.
	frozen atomic.Bool
	// handoverPending: this is the new process and the previous one is
	// still finishing requests, which this one cannot count.
	handoverPending atomic.Bool

	clock Clock
	// probe checks a restored service's endpoint and logs what it finds.
	probe func(log *slog.Logger, name, upstream string)

	mu       sync.Mutex
	services map[string]*service
	// kept are the state file's entries that could not be restored, each
	// written back as it was on every save.
	kept []ServiceState
}

// NewServer makes an empty switch.
func NewServer(listen Listen, log *slog.Logger, opts Options) *Server {
	p := &Server{listen: listen, log: log, opts: opts, clock: opts.Clock, probe: checkUpstream, services: map[string]*service{}}
	if p.clock == nil {
		p.clock = systemClock{}
	}
	if p.opts.Resolver == nil {
		p.opts.Resolver = net.DefaultResolver
	}
	if opts.Metrics != nil {
		opts.Metrics.watch(p)
	}
	return p
}

// service is one app behind one stable address.
type service struct {
	name      string
	listen    string
	route     atomic.Pointer[route] // never nil once made
	http      *http.Server          // HTTP/1.1 connections
	h2c       *http.Server          // HTTP/2 connections with prior knowledge, apart so a handover can GOAWAY them
	ln        net.Listener          // nil while the service cannot listen (listenFail says why)
	split     *splitListener        // what serves ln; nil until it does
	conns     *connTracker
	closing   atomic.Bool // handing over: every answer says Connection: close
	log       *slog.Logger
	trusted   []netip.Prefix
	dialRetry time.Duration
	clock     Clock // the dial retry's
	resolver  Resolver
	metrics   *Metrics
	// generation is the last a route change carried (wire.RouteRequest).
	generation atomic.Uint64

	maint atomic.Pointer[wire.MaintenanceState]

	// listenFail: the service was kept from the state file but its
	// address cannot be listened on yet; it is tried again.
	listenFail atomic.Pointer[wire.ListenFailure]

	// mu guards draining and route changes (not the route's reads).
	mu        sync.Mutex
	draining  []*target // endpoints that take no new requests, still tracked
	gate      *gate
	stopRetry func() bool // the next listen tried again, while listenFail
}

// acquireHook, when set by a test, runs between picking a request's
// endpoint and counting the request on it: the window a switch must not
// slip through.
var acquireHook func()

func (s *service) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.closing.Load() {
		w.Header().Set("Connection", "close")
	}
	if m := s.maint.Load(); m != nil && !slices.Contains(m.Allow, r.URL.Path) {
		serveMaintenance(w, m)
		return
	}
	key := clientKey{r: r, trusted: s.trusted} // worked out only if the route is split
	t, err := s.admit(r.Context(), &key)
	if err != nil {
		if r.Context().Err() == nil {
			s.log.Warn("503: request held by a pause", "service", s.name, "method", r.Method, "uri", r.RequestURI, "err", err)
			http.Error(w, "503 Service Unavailable: "+s.name+" is paused ("+err.Error()+"); try again shortly", http.StatusServiceUnavailable)
		}
		return
	}
	if key.known && !key.sent {
		w = newCookieWriter(w, key.value) // so that the client's next requests keep its key
	}
	if s.route.Load().single != nil {
		defer t.done()
		t.serve(w, r)
		return
	}
	// Several endpoints: one that refuses the connection need not be
	// waited for while another is up.
	defer func() { t.done() }()
	r = movable(r, s)
	for refusals := 1; ; refusals++ {
		if t.serve(w, r) == nil {
			return
		}
		if refusals == maxMoves {
			r = r.WithContext(context.WithValue(r.Context(), movableKey{}, (*service)(nil)))
		}
		from := t
		if t = s.moveFrom(from, &key); t != from { // else none is up any more: its dial retry waits for it
			s.log.Info("refused: request sent to another endpoint", "service", s.name, "method", r.Method, "uri", r.RequestURI, "refused", from.upstream, "to", t.upstream)
		}
	}
}

// maxMoves bounds how often one request is refused and goes elsewhere.
// Each refusal marks an endpoint down, so only endpoints that keep coming
// and going could take a request further; after that its dial retry
// waits for the endpoint it is on.
const maxMoves = 16

// movable is r as a request that may go to another endpoint of s's route
// when its own refuses the connection: its context says so to the dial,
// and its body is kept open for the next endpoint.
func movable(r *http.Request, s *service) *http.Request {
	r2 := r.WithContext(context.WithValue(r.Context(), movableKey{}, s))
	if r.Body != nil && r.Body != http.NoBody {
		r2.Body = keptBody{r.Body}
	}
	return r2
}

// moveFrom counts a request of client key k whose endpoint from refused
// it on another endpoint up of the route, picked as a new request is,
// then ends its count on from, so that it is counted somewhere all along.
// from itself when no other endpoint is up any more.
func (s *service) moveFrom(from *target, k *clientKey) *target {
	for {
		t := s.route.Load().pickUpFor(k, from)
		if t == nil {
			return from
		}
		t.inFlight.Add(1)
		if !t.draining.Load() {
			from.done()
			return t
		}
		t.done() // switched away meanwhile: pick again from the new route
	}
}

// admit counts a request in flight, and only then looks at the pause
// gate. A deploy that paused and then saw nothing in flight runs its
// release job: no request may start on the old release after it looked.
// Counting first makes that so (the two atomics are sequentially
// consistent: either the deploy sees the count or the request sees the
// pause); a request that finds the service paused uncounts itself, waits
// at the gate, and is counted again once it opens.
func (s *service) admit(ctx context.Context, k *clientKey) (*target, error) {
	for {
		t := s.acquire(k)
		if !s.gate.held.Load() {
			return t, nil
		}
		t.done()
		if err := s.gate.wait(ctx); err != nil {
			return nil, err
		}
	}
}

// acquire counts a request in flight on the endpoint the route picks, then
// checks that the endpoint was not switched away meanwhile (it left the
// route, or its backend's weight became 0). A deploy that saw the switch
// and then nothing in flight on an old endpoint stops its container: no
// request may reach that endpoint after it looked. Counting first makes
// that so; a request that lost the race picks again from the new route,
// with the same client key k.
func (s *service) acquire(k *clientKey) *target {
	for {
		t := s.route.Load().pick(k)
		if acquireHook != nil {
			acquireHook()
		}
		t.inFlight.Add(1)
		if !t.draining.Load() {
			return t
		}
		t.done()
	}
}

// ServiceState is a service as the server holds it: what the control
// API shows, and for an entry of the state file it could not restore,
// that entry as the file holds it (written back as it was).
type ServiceState struct {
	wire.ServiceState

	raw json.RawMessage // an Unrestored entry as the state file holds it
}

// Put creates a service listening on listen and sending to upstream, or,
// if it exists on that address, leaves it as it is (no switch).
func (p *Server) Put(name, listen, upstream string) (ServiceState, error) {
	if name == "" || listen == "" || upstream == "" {
		return ServiceState{}, fmt.Errorf("%w: a service needs a name, a listen address and an upstream", ErrBadInput)
	}
	return p.PutRoute(name, listen, oneEndpoint(upstream))
}

// PutRoute creates a service listening on listen and sending along the
// route spec, or, if it exists on that address, leaves it as it is.
func (p *Server) PutRoute(name, listen string, spec []wire.Backend) (ServiceState, error) {
	if name == "" || listen == "" {
		return ServiceState{}, fmt.Errorf("%w: a service needs a name and a listen address", ErrBadInput)
	}
	if err := checkRoute(spec); err != nil {
		return ServiceState{}, err
	}
	unlock, err := p.begin()
	if err != nil {
		return ServiceState{}, err
	}
	defer unlock()
	if s, err := p.get(name); err != nil {
		if kept, ok := p.keptEntry(name); ok {
			return ServiceState{}, fmt.Errorf("%w: %s: %s; fix that entry in the state file and restart handoff proxy, or delete the service first", wire.ErrUnrestored, name, kept.Unrestored)
		}
	} else {
		if s.listen != listen {
			return ServiceState{}, fmt.Errorf("%w: service %s listens on %s; delete it first to move it to %s", ErrBadInput, name, s.listen, listen)
		}
		return p.state(s), nil
	}
	s, err := p.open(name, listen, spec)
	if err != nil {
		return ServiceState{}, err
	}
	err = p.save(func(list []ServiceState) []ServiceState {
		return append(list, ServiceState{ServiceState: wire.ServiceState{Name: name, Listen: listen, Upstream: singleUpstream(spec), Route: specState(spec)}})
	})
	if err != nil {
		s.ln.Close()
		s.forgetTargets()
		return ServiceState{}, err
	}
	p.serve(s)
	return p.state(s), nil
}

// open listens for a new service; serve then adds it and starts serving.
func (p *Server) open(name, listen string, spec []wire.Backend) (*service, error) {
	ln, err := p.listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("%w: listen on %s: %v", ErrBadInput, listen, err)
	}
	s := p.newService(name, listen, spec)
	s.ln = ln
	return s, nil
}

// newService makes a service that does not listen yet.
func (p *Server) newService(name, listen string, spec []wire.Backend) *service {
	s := &service{name: name, listen: listen, gate: newGate(), conns: newConnTracker(), log: p.log, trusted: p.opts.Trusted, dialRetry: p.opts.DialRetry, clock: p.clock, resolver: p.opts.Resolver, metrics: p.opts.Metrics}
	if s.dialRetry == 0 {
		s.dialRetry = DefaultDialRetry
	}
	s.mu.Lock()
	s.setRoute(s.newRoute(spec, nil))
	s.mu.Unlock()
	s.http, s.h2c = newHTTPServer(s, s.conns, false), newHTTPServer(s, s.conns, true)
	return s
}

// add makes s one of the services, listening or not.
func (p *Server) add(s *service) {
	p.mu.Lock()
	p.services[s.name] = s
	p.mu.Unlock()
}

// serve adds s and serves it on its listener.
func (p *Server) serve(s *service) {
	p.add(s)
	p.start(s)
	p.log.Info("service added", "service", s.name, "listen", s.listen, "upstream", describeRoute(s.route.Load().spec()))
}

// start serves s on its listener.
func (p *Server) start(s *service) {
	split := newSplitListener(s.listener(), s.conns.track)
	s.mu.Lock()
	s.split = split
	s.mu.Unlock()
	for srv, l := range map[*http.Server]net.Listener{s.http: split.h1, s.h2c: split.h2} {
		go func() {
			if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
				p.log.Error("serve", "service", s.name, "err", err)
			}
		}()
	}
}

// listener is what s listens on; nil while it cannot.
func (s *service) listener() net.Listener {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ln
}

// Switch points the service at to, if it points at from now (its route is
// one endpoint, from; "": whatever it is): the route becomes to alone, of
// weight 100. Requests already running stay where they are until they
// end; the next ones go to to. The state file has the new target before
// any request goes to it.
func (p *Server) Switch(name, from, to string) (ServiceState, error) {
	return p.reroute(name, func(cur []wire.Backend) ([]wire.Backend, error) {
		switch up := singleUpstream(cur); {
		case up == to:
			return nil, nil // already there: a repeated switch whose answer was lost
		case from != "" && up != from:
			return nil, fmt.Errorf("%w: %s points at %s, not %s", ErrNotFrom, name, describeRoute(cur), from)
		}
		return oneEndpoint(to), nil
	})
}

// Retire ends what still runs on a drained-out upstream (at the deploy's
// drain deadline) and forgets it. It changes nothing that is saved.
func (p *Server) Retire(name, upstream string) (ServiceState, error) {
	s, err := p.get(name)
	if err != nil {
		return ServiceState{}, err
	}
	s.mu.Lock()
	var keep []*target
	for _, t := range s.draining {
		if t.upstream == upstream {
			p.log.Info("retired", "service", name, "upstream", upstream, "cut_in_flight", t.inFlight.Load())
			t.retire()
			t.forget()
			continue
		}
		keep = append(keep, t)
	}
	s.draining = keep
	s.mu.Unlock()
	return p.state(s), nil
}

// update changes one service, one change at a time: its entry in the
// state file as edit says first, then, once that is saved, the service
// itself (apply). A change that cannot be saved is not made.
func (p *Server) update(name string, edit func(*ServiceState), apply func(*service)) (ServiceState, error) {
	return p.changing(name, func(s *service) error {
		if err := p.saveEntry(name, edit); err != nil {
			return err
		}
		apply(s)
		return nil
	})
}

// changing runs change on one service, one change at a time, and answers
// with the service's state after it.
func (p *Server) changing(name string, change func(*service) error) (ServiceState, error) {
	unlock, err := p.begin()
	if err != nil {
		return ServiceState{}, err
	}
	defer unlock()
	s, err := p.get(name)
	if err != nil {
		return ServiceState{}, err
	}
	if err := change(s); err != nil {
		return ServiceState{}, err
	}
	return p.state(s), nil
}

// saveEntry saves the state with the entry of service name edited.
// Callers hold p.change.
func (p *Server) saveEntry(name string, edit func(*ServiceState)) error {
	return p.save(func(list []ServiceState) []ServiceState {
		for i := range list {
			if list[i].Name == name {
				edit(&list[i])
			}
		}
		return list
	})
}

// Delete stops listening for the service, and forgets any entry of the
// state file kept under its name.
func (p *Server) Delete(name string) error {
	unlock, err := p.begin()
	if err != nil {
		return err
	}
	defer unlock()
	s, err := p.get(name)
	if _, kept := p.keptEntry(name); err != nil && !kept {
		return err
	}
	err = p.save(func(list []ServiceState) []ServiceState {
		return slices.DeleteFunc(list, func(st ServiceState) bool { return st.Name == name })
	})
	if err != nil {
		return err
	}
	p.mu.Lock()
	delete(p.services, name)
	p.kept = slices.DeleteFunc(p.kept, func(st ServiceState) bool { return st.Name == name })
	p.mu.Unlock()
	if s == nil {
		p.log.Info("state file entry deleted", "service", name)
		return nil
	}
	s.mu.Lock()
	ln := s.ln
	if s.stopRetry != nil {
		s.stopRetry()
	}
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if ln != nil {
		_ = ln.Close()
	}
	_ = s.h2c.Shutdown(ctx)
	_ = s.http.Shutdown(ctx)
	s.gate.resume()
	s.forgetTargets()
	p.opts.Metrics.deleted(name)
	p.log.Info("service deleted", "service", name)
	return nil
}

// Get returns one service's state; for a name the proxy knows only from
// an entry of its state file it could not restore, that entry.
func (p *Server) Get(name string) (ServiceState, error) {
	s, err := p.get(name)
	if err != nil {
		if kept, ok := p.keptEntry(name); ok {
			kept.raw = nil
			return kept, nil
		}
		return ServiceState{}, err
	}
	return p.state(s), nil
}

// List returns every service's state, by name.
func (p *Server) List() []ServiceState {
	p.mu.Lock()
	all := make([]*service, 0, len(p.services))
	for _, s := range p.services {
		all = append(all, s)
	}
	p.mu.Unlock()
	out := make([]ServiceState, 0, len(all))
	for _, s := range all {
		out = append(out, p.state(s))
	}
	sortStates(out)
	p.mu.Lock()
	out = append(out, p.kept...)
	p.mu.Unlock()
	return out
}

// Freeze makes every change fail with ErrRestarting while a new process
// takes over (it reads the state file as it is now); Thaw undoes it when
// the restart did not happen.
func (p *Server) Freeze() {
	p.change.Lock()
	p.frozen.Store(true)
	p.change.Unlock()
}

// Thaw lets changes be made again.
func (p *Server) Thaw() { p.frozen.Store(false) }

// SetHandoverPending says whether a previous process still finishes
// requests (see ServiceState.HandoverPending).
func (p *Server) SetHandoverPending(pending bool) { p.handoverPending.Store(pending) }

// begin starts a change: one at a time, and none while frozen.
func (p *Server) begin() (unlock func(), err error) {
	p.change.Lock()
	if p.frozen.Load() {
		p.change.Unlock()
		return nil, ErrRestarting
	}
	return p.change.Unlock, nil
}

// save writes the state the services will have after a change, computed
// by next from the saved part of the current state. Callers hold p.change.
func (p *Server) save(next func([]ServiceState) []ServiceState) error {
	if p.opts.Save == nil {
		return nil
	}
	list := p.List()
	if err := p.opts.Save(next(list)); err != nil {
		p.log.Error("save state: the change is refused", "err", err)
		return fmt.Errorf("%w (%v)", ErrNotSaved, err)
	}
	return nil
}

func (p *Server) get(name string) (*service, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s, ok := p.services[name]
	if !ok {
		for _, st := range p.kept {
			if st.Name == name {
				return nil, fmt.Errorf("%w: %s: %s", wire.ErrUnrestored, name, st.Unrestored)
			}
		}
		return nil, fmt.Errorf("%w: %s", ErrNoService, name)
	}
	return s, nil
}

// inFlight counts the requests running on every target of s.
func (s *service) inFlight() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n int64
	s.route.Load().live(func(t *target) { n += t.inFlight.Load() })
	for _, t := range s.draining {
		n += t.inFlight.Load()
	}
	return n
}

// forgetTargets lets go of every target of s (their metrics).
func (s *service) forgetTargets() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.route.Load().live((*target).forget)
	for _, t := range s.draining {
		t.forget()
	}
	s.draining = nil
}

// retireAll ends everything still running on every target of s.
func (s *service) retireAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.route.Load().live((*target).retire)
	for _, t := range s.draining {
		t.retire()
	}
}

func (p *Server) state(s *service) ServiceState {
	upstream, inFlight, backends := s.route.Load().state()
	ps := s.gate.state()
	st := ServiceState{ServiceState: wire.ServiceState{Name: s.name, Listen: s.listen, Upstream: upstream, InFlight: inFlight, Route: backends,
		Paused: ps.paused, Held: s.gate.waiting.Load(), HandoverPending: p.handoverPending.Load(), Maintenance: s.maint.Load(), Generation: s.generation.Load()}}
	if ps.paused {
		st.MaxWait, st.PausedSince, st.PauseUntil = wire.Duration(ps.maxFor), ps.since, ps.until
	}
	if f := s.listenFail.Load(); f != nil {
		copied := *f
		st.NotListening = &copied
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range s.draining {
		st.Draining = append(st.Draining, wire.DrainingState{Upstream: t.upstream, InFlight: t.inFlight.Load()})
	}
	return st
}

// newHTTPServer serves HTTP/1.1, or HTTP/2 without TLS (h2c, from a
// front proxy that speaks it).
func newHTTPServer(h http.Handler, conns *connTracker, h2c bool) *http.Server {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 30 * time.Second, IdleTimeout: 5 * time.Minute, ConnState: conns.track}
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(!h2c)
	srv.Protocols.SetUnencryptedHTTP2(h2c)
	return srv
}

// splitListener is what serves s's listener, nil if none does.
func (s *service) splitListener() *splitListener {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.split
}
