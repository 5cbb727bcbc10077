package proxy

import (
	"context"
	"errors"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// gate holds a paused service's new requests, each for a bounded time,
// and the whole pause until its lease ends.
type gate struct {
	mu        sync.Mutex
	open      chan struct{} // closed while requests flow; replaced by pause
	current   pauseState
	id        uint64       // which pause holds now (each pause gets its own)
	stopLease func() bool  // the lease's timer
	waiting   atomic.Int64 // requests held now
	held      atomic.Bool  // paused: read on every request without the lock
}

// pauseState is a pause as the gate holds it.
type pauseState struct {
	paused       bool
	maxFor       time.Duration // each request's
	since, until time.Time     // until: the lease's end
}

func newGate() *gate {
	g := &gate{open: make(chan struct{})}
	close(g.open)
	return g
}

var (
	errPausedTooLong = errors.New("held for the pause's whole max wait")
	errTooManyHeld   = errors.New("too many requests held already")
)

func (g *gate) wait(ctx context.Context) error {
	if !g.held.Load() {
		return nil // the request path takes no lock while the service is not paused
	}
	g.mu.Lock()
	open, maxFor := g.open, g.current.maxFor
	g.mu.Unlock()
	select {
	case <-open:
		return nil
	default:
	}
	if g.waiting.Add(1) > MaxHeld {
		g.waiting.Add(-1)
		return errTooManyHeld
	}
	defer g.waiting.Add(-1)
	t := time.NewTimer(maxFor)
	defer t.Stop()
	select {
	case <-open:
		return nil
	case <-t.C:
		return errPausedTooLong
	case <-ctx.Done():
		return ctx.Err()
	}
}

// pause holds new requests, each for at most maxFor, until resume or
// until the lease ends; then onLease is called with the pause's id.
func (g *gate) pause(c Clock, maxFor time.Duration, since, until time.Time, onLease func(id uint64)) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.current = pauseState{paused: true, maxFor: maxFor, since: since, until: until}
	if !g.held.Load() {
		g.open = make(chan struct{})
		g.held.Store(true)
	}
	if g.stopLease != nil {
		g.stopLease()
	}
	g.id++
	id := g.id
	g.stopLease = c.AfterFunc(until.Sub(c.Now()), func() { onLease(id) })
}

func (g *gate) resume() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stopLease != nil {
		g.stopLease()
		g.stopLease = nil
	}
	g.id++
	g.current = pauseState{}
	if g.held.Load() {
		g.held.Store(false)
		close(g.open)
	}
}

// pauseOf is pause id, if it still holds.
func (g *gate) pauseOf(id uint64) (pauseState, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.current, g.id == id && g.current.paused
}

// state is the pause that holds now, if any.
func (g *gate) state() pauseState {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.current
}

// connTracker knows each client connection's state, so that an old
// process handing over to a new one can wait for its connections to end
// instead of closing one a client is about to reuse.
type connTracker struct {
	mu    sync.Mutex
	conns map[net.Conn]http.ConnState
}

func newConnTracker() *connTracker { return &connTracker{conns: map[net.Conn]http.ConnState{}} }

func (c *connTracker) track(conn net.Conn, st http.ConnState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch st {
	case http.StateClosed, http.StateHijacked:
		delete(c.conns, conn)
	default:
		c.conns[conn] = st
	}
}

func (c *connTracker) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.conns)
}

func (c *connTracker) closeAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for conn := range c.conns {
		conn.Close()
	}
}

func sortStates(s []ServiceState) {
	slices.SortFunc(s, func(a, b ServiceState) int { return strings.Compare(a.Name, b.Name) })
}
