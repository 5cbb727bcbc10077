package proxy

import (
	"errors"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// flakyListener fails its first accepts as a process out of file
// descriptors does, then accepts from the real listener.
type flakyListener struct {
	net.Listener
	fails int
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.fails > 0 {
		l.fails--
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}
	}
	return l.Listener.Accept()
}

// A failed accept (too many open files) is tried again: the service goes on
// listening, instead of ending its listener for good.
func TestSplitListenerGoesOnAfterAFailedAccept(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	split := newSplitListener(&flakyListener{Listener: ln, fails: 3}, func(net.Conn, http.ConnState) {})
	defer ln.Close()
	go func() {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err == nil {
			_, _ = c.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
			time.Sleep(time.Second)
			c.Close()
		}
	}()
	c, err := split.h1.Accept()
	require.NoError(t, err, "a connection after the failed accepts is served")
	c.Close()
	ln.Close()
	<-split.ended
	_, err = split.h1.Accept()
	require.True(t, errors.Is(err, net.ErrClosed), "the listener's close ends it: %v", err)
}
