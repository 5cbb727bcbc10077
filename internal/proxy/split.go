package proxy

import (
	"bytes"
	"net"
	"sync"
	"time"
)

// h2cPreface opens every HTTP/2 connection made with prior knowledge.
var h2cPreface = []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")

// prefaceTimeout bounds how long a new connection may take to send its
// first bytes before it is dropped.
const prefaceTimeout = 30 * time.Second

// splitListener hands each connection of one listening socket to the
// HTTP/1.1 server or the h2c server, by its first bytes. Two servers, so
// that a handover can send GOAWAY to HTTP/2 connections (Shutdown of the h2c
// server) without http.Server closing idle HTTP/1.1 connections, which
// Shutdown of a mixed server would do.
type splitListener struct {
	ln     net.Listener
	h1, h2 *chanListener
}

func newSplitListener(ln net.Listener) *splitListener {
	s := &splitListener{ln: ln, h1: newChanListener(ln.Addr()), h2: newChanListener(ln.Addr())}
	go s.accept()
	return s
}

func (s *splitListener) accept() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			s.h1.closeWith(err)
			s.h2.closeWith(err)
			return
		}
		go s.route(c)
	}
}

// route reads just enough of the connection to know its protocol and
// passes it on with those bytes put back.
func (s *splitListener) route(c net.Conn) {
	_ = c.SetReadDeadline(time.Now().Add(prefaceTimeout))
	buf := make([]byte, len(h2cPreface))
	n := 0
	for n < len(buf) && bytes.HasPrefix(h2cPreface, buf[:n]) {
		m, err := c.Read(buf[n:])
		n += m
		if err != nil {
			if n == 0 {
				c.Close()
				return
			}
			break
		}
	}
	_ = c.SetReadDeadline(time.Time{})
	pc := &peekedConn{Conn: c, peeked: buf[:n]}
	if n == len(h2cPreface) && bytes.Equal(buf, h2cPreface) {
		s.h2.push(pc)
		return
	}
	s.h1.push(pc)
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

func (l *chanListener) push(c net.Conn) {
	select {
	case l.conns <- c:
	case <-l.done:
		c.Close()
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
