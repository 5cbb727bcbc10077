package proxy

import (
	"context"
	"time"
)

// handoverPoll is how often Handover looks whether connections are gone.
const handoverPoll = 50 * time.Millisecond

// Handover is what an old process does once a new one serves the same
// sockets: it stops accepting, and lets its client connections end by
// themselves, because closing one a client is about to reuse is the very
// race handoff exists to avoid. Each HTTP/1.1 connection answers its next
// request with `Connection: close` and ends after it; an idle one is left to
// the client's own idle timeout. (http.Server's SetKeepAlivesEnabled(false)
// and Shutdown would close idle connections at once: they are not used on
// the HTTP/1.1 server.) HTTP/2 connections get GOAWAY, which tells the
// client which requests were taken, so it can retry the others safely.
// A connection accepted just before the listener closed is served too: it
// counts among the connections from its accept on. What is still open when
// ctx ends is closed.
func (p *Server) Handover(ctx context.Context) {
	p.mu.Lock()
	services := make([]*service, 0, len(p.services))
	for _, s := range p.services {
		services = append(services, s)
	}
	p.mu.Unlock()
	for _, s := range services {
		s.closing.Store(true)
		if ln := s.listener(); ln != nil {
			_ = ln.Close() // our copy only: the new process holds the socket
		}
		go s.goAway(ctx)
	}
	// A connection accepted just before the listener closed is counted
	// from here on.
	for _, s := range services {
		if split := s.splitListener(); split != nil && s.listener() != nil {
			select {
			case <-split.stopped:
			case <-ctx.Done():
			}
		}
	}
	tick := time.NewTicker(handoverPoll)
	defer tick.Stop()
	for {
		// Upgraded connections (WebSockets) leave the connection count when
		// hijacked; they still count in flight on their target.
		open := 0
		for _, s := range services {
			open += s.conns.count() + int(s.inFlight())
		}
		if open == 0 {
			return
		}
		select {
		case <-ctx.Done():
			p.log.Info("handover deadline: closing the connections left", "open", open)
			for _, s := range services {
				s.retireAll() // WebSockets get their close frame first
				s.conns.closeAll()
			}
			return
		case <-tick.C:
		}
	}
}

// h2Registered is how long an HTTP/2 connection handed to the h2c server may
// take to be known to it, at most (microseconds when idle): a GOAWAY goes
// to the connections it knows.
var h2Registered = []time.Duration{100 * time.Millisecond, time.Second}

// goAway sends GOAWAY to s's HTTP/2 connections once every connection
// accepted before the listener closed has been handed to its server, and
// again later for those the h2c server came to know after (a connection is
// told once).
func (s *service) goAway(ctx context.Context) {
	if split := s.splitListener(); split != nil {
		select {
		case <-split.ended:
		case <-ctx.Done():
		}
	}
	go func() { _ = s.h2c.Shutdown(ctx) }()
	for _, d := range h2Registered {
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
		// Shutdown runs the h2c server's shutdown hooks each time it is
		// called, and returns once its connections are gone.
		go func() { _ = s.h2c.Shutdown(ctx) }()
	}
}
