package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Errors the control API maps to statuses.
var (
	ErrNoService = errors.New("no such service")
	ErrNotFrom   = errors.New("the service's target is not the one named")
	ErrBadInput  = errors.New("bad request")
)

// DefaultPauseWait bounds how long a paused service holds a request.
const DefaultPauseWait = 30 * time.Second

// Listen opens a listening socket; tableflip's Upgrader.Listen in the
// daemon (so sockets survive a restart), net.Listen in tests.
type Listen func(network, addr string) (net.Listener, error)

// Server is the switch: one listener per service, each request sent to the
// service's current target.
type Server struct {
	listen Listen
	log    *slog.Logger
	onSave func([]ServiceState) // called with every change, to keep the state file

	mu        sync.Mutex
	services  map[string]*service
	restoring bool // no saving while the state file is being read back
}

// NewServer makes an empty switch.
func NewServer(listen Listen, log *slog.Logger, onSave func([]ServiceState)) *Server {
	if onSave == nil {
		onSave = func([]ServiceState) {}
	}
	return &Server{listen: listen, log: log, onSave: onSave, services: map[string]*service{}}
}

// service is one app behind one stable address.
type service struct {
	name    string
	listen  string
	current atomic.Pointer[target]
	http    *http.Server // HTTP/1.1 connections
	h2c     *http.Server // HTTP/2 connections with prior knowledge, apart so a handover can GOAWAY them
	ln      net.Listener
	conns   *connTracker
	closing atomic.Bool // handing over: every answer says Connection: close

	mu       sync.Mutex
	draining []*target
	gate     *gate
}

func (s *service) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.closing.Load() {
		w.Header().Set("Connection", "close")
	}
	if err := s.gate.wait(r.Context()); err != nil {
		http.Error(w, "service paused for too long", http.StatusServiceUnavailable)
		return
	}
	// The target is read per request: after a switch, the next request on
	// an existing client connection goes to the new target.
	s.current.Load().serve(w, r)
}

// ServiceState is a service as the control API and the state file show it.
type ServiceState struct {
	Name     string          `json:"name"`
	Listen   string          `json:"listen"`
	Upstream string          `json:"upstream"`
	InFlight int64           `json:"in_flight"`
	Draining []DrainingState `json:"draining,omitempty"`
	Paused   bool            `json:"paused,omitempty"`
	Held     int64           `json:"held,omitempty"` // requests a pause holds now
}

// DrainingState is an old target still finishing requests.
type DrainingState struct {
	Upstream string `json:"upstream"`
	InFlight int64  `json:"in_flight"`
}

// Put creates a service listening on listen and sending to upstream, or,
// if it exists on that address, leaves it as it is (no switch).
func (p *Server) Put(name, listen, upstream string) (ServiceState, error) {
	if name == "" || listen == "" || upstream == "" {
		return ServiceState{}, fmt.Errorf("%w: a service needs a name, a listen address and an upstream", ErrBadInput)
	}
	p.mu.Lock()
	if s, ok := p.services[name]; ok {
		p.mu.Unlock()
		if s.listen != listen {
			return ServiceState{}, fmt.Errorf("%w: service %s listens on %s; delete it first to move it to %s", ErrBadInput, name, s.listen, listen)
		}
		return s.state(), nil
	}
	p.mu.Unlock()

	ln, err := p.listen("tcp", listen)
	if err != nil {
		return ServiceState{}, fmt.Errorf("%w: listen on %s: %v", ErrBadInput, listen, err)
	}
	s := &service{name: name, listen: listen, ln: ln, gate: newGate(), conns: newConnTracker()}
	s.current.Store(newTarget(upstream))
	s.http, s.h2c = newHTTPServer(s, s.conns, false), newHTTPServer(s, s.conns, true)
	p.mu.Lock()
	p.services[name] = s
	p.mu.Unlock()
	split := newSplitListener(ln)
	for srv, l := range map[*http.Server]net.Listener{s.http: split.h1, s.h2c: split.h2} {
		go func() {
			if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
				p.log.Error("serve", "service", name, "err", err)
			}
		}()
	}
	p.log.Info("service added", "service", name, "listen", listen, "upstream", upstream)
	p.save()
	return s.state(), nil
}

// Switch points the service at to, if it points at from now. Requests
// already running stay on from until they end; the next ones go to to.
func (p *Server) Switch(name, from, to string) (ServiceState, error) {
	s, err := p.get(name)
	if err != nil {
		return ServiceState{}, err
	}
	s.mu.Lock()
	old := s.current.Load()
	if from != "" && old.upstream != from {
		s.mu.Unlock()
		return ServiceState{}, fmt.Errorf("%w: %s points at %s, not %s", ErrNotFrom, name, old.upstream, from)
	}
	if old.upstream != to {
		s.current.Store(newTarget(to))
		old.drain()
		// Targets already drained out have nothing left to track.
		s.draining = slices.DeleteFunc(s.draining, func(t *target) bool { return t.inFlight.Load() == 0 })
		s.draining = append(s.draining, old)
	}
	s.mu.Unlock()
	p.log.Info("switched", "service", name, "from", old.upstream, "to", to)
	p.save()
	return s.state(), nil
}

// Retire ends what still runs on a drained-out upstream (at the deploy's
// drain deadline) and forgets it.
func (p *Server) Retire(name, upstream string) (ServiceState, error) {
	s, err := p.get(name)
	if err != nil {
		return ServiceState{}, err
	}
	s.mu.Lock()
	var keep []*target
	for _, t := range s.draining {
		if t.upstream == upstream {
			t.retire()
			continue
		}
		keep = append(keep, t)
	}
	s.draining = keep
	s.mu.Unlock()
	return s.state(), nil
}

// Pause holds the service's new requests until Resume, each for at most wait.
func (p *Server) Pause(name string, wait time.Duration) (ServiceState, error) {
	s, err := p.get(name)
	if err != nil {
		return ServiceState{}, err
	}
	if wait <= 0 {
		wait = DefaultPauseWait
	}
	s.gate.pause(wait)
	return s.state(), nil
}

// Resume releases the held requests.
func (p *Server) Resume(name string) (ServiceState, error) {
	s, err := p.get(name)
	if err != nil {
		return ServiceState{}, err
	}
	s.gate.resume()
	return s.state(), nil
}

// Delete stops listening for the service.
func (p *Server) Delete(name string) error {
	p.mu.Lock()
	s, ok := p.services[name]
	delete(p.services, name)
	p.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: %s", ErrNoService, name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = s.ln.Close()
	_ = s.h2c.Shutdown(ctx)
	_ = s.http.Shutdown(ctx)
	p.save()
	return nil
}

// Get returns one service's state.
func (p *Server) Get(name string) (ServiceState, error) {
	s, err := p.get(name)
	if err != nil {
		return ServiceState{}, err
	}
	return s.state(), nil
}

// List returns every service's state, by name.
func (p *Server) List() []ServiceState {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]ServiceState, 0, len(p.services))
	for _, s := range p.services {
		out = append(out, s.state())
	}
	sortStates(out)
	return out
}

func (p *Server) get(name string) (*service, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s, ok := p.services[name]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrNoService, name)
	}
	return s, nil
}

func (p *Server) save() {
	p.mu.Lock()
	restoring := p.restoring
	p.mu.Unlock()
	if !restoring {
		p.onSave(p.List())
	}
}

// inFlight counts the requests running on every target of s.
func (s *service) inFlight() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.current.Load().inFlight.Load()
	for _, t := range s.draining {
		n += t.inFlight.Load()
	}
	return n
}

// retireAll ends everything still running on every target of s.
func (s *service) retireAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.current.Load().retire()
	for _, t := range s.draining {
		t.retire()
	}
}

func (s *service) state() ServiceState {
	cur := s.current.Load()
	st := ServiceState{Name: s.name, Listen: s.listen, Upstream: cur.upstream, InFlight: cur.inFlight.Load(), Paused: s.gate.paused(), Held: s.gate.waiting.Load()}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range s.draining {
		st.Draining = append(st.Draining, DrainingState{Upstream: t.upstream, InFlight: t.inFlight.Load()})
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
