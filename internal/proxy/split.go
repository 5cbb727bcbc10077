package proxy

import (
	"bytes"
	"errors"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// h2cPreface opens every HTTP/2 connection made with prior knowledge.
var h2cPreface = []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")

// prefaceTimeout bounds how long a new connection may take to send its
// first bytes before it is dropped.
const prefaceTimeout = 30 * time.Second

// handoverPrefaceTimeout is how long a connection accepted before a
// handover, and still silent, may take to send its first bytes once the
// handover begins: the front sends its request at once, and a silent
// connection must not hold the handover's GOAWAY back.
const handoverPrefaceTimeout = time.Second

// splitListener hands each connection of one listening socket to the
// HTTP/1.1 server or the h2c server, by its first bytes. Two servers, so
// that a handover can send GOAWAY to HTTP/2 connections (Shutdown of the h2c
// server) without http.Server closing idle HTTP/1.1 connections, which
// Shutdown of a mixed server would do.
//
// A connection it has accepted is served, even when the listener is closed
// (a handover) while its first bytes are still being read: the client has
// sent its request on it. So it is counted among the service's connections
// from the moment it is accepted (track), and the two servers' listeners
// end only once every accepted connection has been handed to one of them.
type splitListener struct {
	ln      net.Listener
	h1, h2  *chanListener
	track   func(net.Conn, http.ConnState)
	routing sync.WaitGroup
	mu      sync.Mutex
	reading map[*peekedConn]bool // accepted, first bytes not read yet
	stopped chan struct{}        // closed once the listener is closed and every accepted connection tracked
	ended   chan struct{}        // and then once every accepted connection is handed on
}

// routeHook, when set by a test, runs after a connection's first bytes are
// read and before it is handed on.
var routeHook atomic.Pointer[func()]

func newSplitListener(ln net.Listener, track func(net.Conn, http.ConnState)) *splitListener {
	s := &splitListener{ln: ln, h1: newChanListener(ln.Addr()), h2: newChanListener(ln.Addr()), track: track,
		reading: map[*peekedConn]bool{}, stopped: make(chan struct{}), ended: make(chan struct{})}
	go s.accept()
	return s
}

// acceptRetry bounds the pause after a failed accept that is not the
// listener's close (too many open files, say): as http.Server does, the
// listener is tried again, from 5 ms, doubling, up to this.
const acceptRetry = time.Second

func (s *splitListener) accept() {
	var pause time.Duration
	for {
		c, err := s.ln.Accept()
		if err != nil && !errors.Is(err, net.ErrClosed) {
			pause = min(max(2*pause, 5*time.Millisecond), acceptRetry)
			time.Sleep(pause)
			continue
		}
		pause = 0
		if err != nil {
			close(s.stopped)
			s.hurry()
			s.routing.Wait()
			s.h1.closeWith(err)
			s.h2.closeWith(err)
			close(s.ended)
			return
		}
		pc := &peekedConn{Conn: c}
		s.track(pc, http.StateNew)
		_ = c.SetReadDeadline(time.Now().Add(prefaceTimeout))
		s.mu.Lock()
		s.reading[pc] = true
		s.mu.Unlock()
		s.routing.Add(1)
		go func() {
			defer s.routing.Done()
			s.route(pc)
		}()
	}
}

// hurry gives the connections still silent a short while to speak.
func (s *splitListener) hurry() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for pc := range s.reading {
		_ = pc.Conn.SetReadDeadline(time.Now().Add(handoverPrefaceTimeout))
	}
}

// route reads just enough of the connection to know its protocol and
// passes it on with those bytes put back.
func (s *splitListener) route(pc *peekedConn) {
	c := pc.Conn
	buf := make([]byte, len(h2cPreface))
	n := 0
	for n < len(buf) && bytes.HasPrefix(h2cPreface, buf[:n]) {
		m, err := c.Read(buf[n:])
		n += m
		if err != nil {
			if n == 0 {
				s.mu.Lock()
				delete(s.reading, pc)
				s.mu.Unlock()
				c.Close()
				s.track(pc, http.StateClosed)
				return
			}
			break
		}
	}
	s.mu.Lock()
	delete(s.reading, pc)
	_ = c.SetReadDeadline(time.Time{})
	s.mu.Unlock()
	pc.peeked = buf[:n]
	if h := routeHook.Load(); h != nil {
		(*h)()
	}
	to := s.h1
	if n == len(h2cPreface) && bytes.Equal(buf, h2cPreface) {
		to = s.h2
	}
	if !to.push(pc) {
		s.track(pc, http.StateClosed)
	}
}

// peekedConn is a connection whose first bytes were read already: they
// are read again first, then the connection itself.
type peekedConn struct {
	net.Conn
	peeked []byte
}

func (c *peekedConn) Read(p []byte) (int, error) {
	if len(c.peeked) == 0 {
		return c.Conn.Read(p)
	}
	n := copy(p, c.peeked)
	c.peeked = c.peeked[n:]
	return n, nil
}

// chanListener is a net.Listener fed by splitListener.
type chanListener struct {
	addr  net.Addr
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
	err   error
}

func newChanListener(addr net.Addr) *chanListener {
	return &chanListener{addr: addr, conns: make(chan net.Conn), done: make(chan struct{})}
}

// push hands c to the server accepting on l; if that server is gone, c is
// closed and push says false.
func (l *chanListener) push(c net.Conn) bool {
	select {
	case l.conns <- c:
		return true
	case <-l.done:
		c.Close()
		return false
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, l.err
	}
}

func (l *chanListener) closeWith(err error) {
	l.once.Do(func() { l.err = err; close(l.done) })
}

func (l *chanListener) Close() error {
	l.closeWith(net.ErrClosed)
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }
