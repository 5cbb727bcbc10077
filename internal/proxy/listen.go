package proxy

import (
	"time"

	"github.com/handoff-dev/handoff/internal/proxy/wire"
)

// A failed listen is tried again after listenRetryFirst, then twice as
// long each time up to listenRetryMax.
const (
	listenRetryFirst = time.Second
	listenRetryMax   = 10 * time.Second
)

// listenFailed records that s could not listen, logs it when the failure
// is new or other than the last one (not at every attempt), and sets the
// next attempt.
func (p *Server) listenFailed(s *service, err error) {
	prev := s.listenFail.Load()
	f := &wire.ListenFailure{Error: err.Error(), Since: p.clock.Now(), Attempts: 1}
	if prev != nil {
		f.Since, f.Attempts = prev.Since, prev.Attempts+1
	}
	s.listenFail.Store(f)
	switch {
	case prev == nil:
		p.log.Error("cannot listen for the service; it is kept, and its address tried again until it can be listened on", "service", s.name, "listen", s.listen, "err", err)
	case prev.Error != f.Error:
		p.log.Error("still cannot listen for the service, now for another reason; it is tried again", "service", s.name, "listen", s.listen, "err", err, "since", f.Since)
	}
	p.retryAfter(s, min(listenRetryFirst<<min(f.Attempts-1, 8), listenRetryMax))
}

func (p *Server) retryAfter(s *service, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopRetry = p.clock.AfterFunc(d, func() { p.retryListen(s) })
}

// retryListen tries s's address again, as a change: none is made while a
// restart hands over (the new process listens for itself), and a deleted
// service is not tried again.
func (p *Server) retryListen(s *service) {
	unlock, err := p.begin()
	if err != nil {
		p.retryAfter(s, listenRetryMax) // in case the restart does not happen
		return
	}
	defer unlock()
	if cur, err := p.get(s.name); err != nil || cur != s || s.closing.Load() {
		return
	}
	ln, err := p.listen("tcp", s.listen)
	if err != nil {
		p.listenFailed(s, err)
		return
	}
	s.mu.Lock()
	s.ln, s.stopRetry = ln, nil
	s.mu.Unlock()
	f := s.listenFail.Swap(nil)
	p.start(s)
	p.log.Info("listening for the service at last", "service", s.name, "listen", s.listen, "upstream", describeRoute(s.route.Load().spec()),
		"not_listening_for", p.clock.Now().Sub(f.Since).Round(time.Millisecond), "attempts", f.Attempts+1)
}
