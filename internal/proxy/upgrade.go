package proxy

import (
	"bufio"
	"net"
	"net/http"
	"sync"
	"time"
)

// trackingWriter lets the target see the client connection a WebSocket
// upgrade takes over, so that it can say goodbye properly at the drain
// deadline. httputil.ReverseProxy reaches Hijack and Flush through
// http.ResponseController, which uses Unwrap.
type trackingWriter struct {
	http.ResponseWriter
	t         *target
	websocket bool
	status    int   // the answer's status, for the metrics
	refused   error // the endpoint refused the request, which goes to another (errElsewhere); nothing was written
	start     time.Time
	counted   bool // the answer is in t.stats
	failed    bool // the answer is the proxy's 502 (counted as a connection failure)
}

// answered counts the answer, once, when its headers go: a final status,
// or the upgrade of a hijacked connection.
func (w *trackingWriter) answered(status int) {
	if w.counted || w.failed {
		return
	}
	w.counted = true
	w.t.stats.answered(status, time.Since(w.start))
}

func (w *trackingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *trackingWriter) WriteHeader(code int) {
	if w.status == 0 || w.status < 200 && code >= 200 {
		w.status = code
	}
	if code >= 200 {
		w.answered(code)
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *trackingWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
		w.answered(http.StatusOK)
	}
	return w.ResponseWriter.Write(b)
}

func (w *trackingWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, rw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	w.answered(http.StatusSwitchingProtocols) // the app's 101, which the proxy writes next
	uc := &upgradedConn{Conn: conn, t: w.t, websocket: w.websocket}
	w.t.mu.Lock()
	w.t.upgraded[uc] = struct{}{}
	w.t.mu.Unlock()
	return uc, rw, nil
}

// upgradedConn is a client connection after an upgrade. ReverseProxy closes
// it when either side ends; when the target is being cut, a WebSocket
// client first gets a close frame, 1001 "going away", so that it knows to
// reconnect rather than seeing a broken connection.
type upgradedConn struct {
	net.Conn
	t         *target
	websocket bool
	once      sync.Once
}

// closeGoingAway is an unmasked server close frame with status 1001.
var closeGoingAway = []byte{0x88, 0x02, 0x03, 0xE9}

func (c *upgradedConn) Close() error {
	c.once.Do(func() {
		if c.websocket && c.t.cutting.Load() {
			_, _ = c.Conn.Write(closeGoingAway)
		}
		c.t.mu.Lock()
		delete(c.t.upgraded, c)
		c.t.mu.Unlock()
	})
	return c.Conn.Close()
}
