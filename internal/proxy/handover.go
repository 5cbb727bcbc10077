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
// What is still open when ctx ends is closed.
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
		go func() { _ = s.h2c.Shutdown(ctx) }()
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
