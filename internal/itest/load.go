package itest

import (
	"context"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// LoadOptions shape a steady load through Caddy. Every loop is bounded by
// MaxDuration and stops by itself.
type LoadOptions struct {
	Workers    int           // keep-alive HTTP/1.1 GET loops (Go's client retries these as HTTP allows)
	H2         int           // HTTP/2 (h2c) GET loops
	Posts      int           // keep-alive HTTP/1.1 POST loops: never retried by the client
	Slow       int           // loops of slow requests, each SlowFor long
	SlowFor    time.Duration // default 1s
	WebSockets int           // loops holding a WebSocket open for WSFor, then closing it
	WSFor      time.Duration // default 1s
	Pause      time.Duration // between two requests of one loop; default 2ms
	// Clients, when set, makes the GET and POST loops many browsers: each
	// request carries the handoff_split cookie of one of this many
	// clients, picked at random, so that a canary's split gets its share
	// of the load (from one address, without cookies, all of it would go
	// one way).
	Clients     int
	MaxDuration time.Duration // default 10m
	// FrontNeverReloads: nothing in front is reloaded while the load runs (Caddy
	// in front of handoff proxy keeps its one route), so the cuts ReloadCuts would
	// put down to a reload are failures, counted in ConnErrors.
	FrontNeverReloads bool
}

// LoadStats counts what the clients saw, by kind.
type LoadStats struct {
	OK          int            // 2xx
	Status5xx   int            // from GET, h2 and slow loops
	OtherStatus int            // not 2xx nor 5xx
	ConnErrors  int            // GET and h2 loops: refused, reset, EOF after the client's own retry; with FrontNeverReloads every cut
	SlowOK      int            // slow requests that ended with 200
	SlowCut     int            // slow requests that did not end with 200
	PostOK      int            // POST loops, counted apart: see Failures
	Post5xx     int            //
	PostConnErr int            // non-retried POSTs cut by Caddy's reload closing idle connections
	NewConnCut  int            // other requests cut on a connection just opened (see ReloadCuts)
	WSOK        int            // WebSockets held their whole time and closed normally
	WSGoingAway int            // WebSockets closed by the server with 1001 (going away): a proper goodbye
	WSCut       int            // WebSockets that failed to open or broke
	Releases    map[string]int // which release answered
	Failed5xx   map[string]int // which release answered a 5xx (X-Release; "" : the proxy's own)
	Hosts       map[string]int // which container answered GET / (its hostname: the short container ID)
	Errors      []string       // the first failures, with their times: what and when
	LongestGap  time.Duration  // the longest time without a 2xx GET (or h2) answer
	lastOK      time.Time
}

// Failures counts every failure a retrying client or a user would see;
// requests cut by a reload of the front proxy are counted apart
// (ReloadCuts), since they come from Caddy's reload, not from handoff,
// unless LoadOptions.FrontNeverReloads says there is none.
func (s LoadStats) Failures() int {
	return s.Status5xx + s.OtherStatus + s.ConnErrors + s.SlowCut + s.Post5xx + s.WSCut
}

// ReloadCuts counts the requests a reload of Caddy in front cuts and the
// client does not send again: POSTs on a kept-alive connection Caddy closes
// as idle while the request is on its way, and requests on a connection
// Caddy had just accepted (its old server's Shutdown closes those too,
// golang/go#75591; Go's client retries only on a reused connection). The
// connection was made in both cases: a refused connection is a failure.
// Through handoff proxy, which Caddy never reloads for, they must be zero:
// LoadOptions.FrontNeverReloads counts them as failures.
func (s LoadStats) ReloadCuts() int { return s.PostConnErr + s.NewConnCut }

// Requests counts every request and WebSocket the load made.
func (s LoadStats) Requests() int {
	return s.OK + s.Status5xx + s.OtherStatus + s.ConnErrors + s.SlowOK + s.SlowCut + s.PostOK + s.Post5xx + s.PostConnErr + s.NewConnCut + s.WSOK + s.WSGoingAway + s.WSCut
}

func (s LoadStats) String() string {
	return fmt.Sprintf("ok=%d 5xx=%d other=%d conn_errors=%d slow_ok=%d slow_cut=%d post_ok=%d post_5xx=%d post_conn_errors=%d new_conn_cut=%d ws_ok=%d ws_going_away=%d ws_cut=%d longest_gap=%s releases=%v errors=%q",
		s.OK, s.Status5xx, s.OtherStatus, s.ConnErrors, s.SlowOK, s.SlowCut, s.PostOK, s.Post5xx, s.PostConnErr, s.NewConnCut, s.WSOK, s.WSGoingAway, s.WSCut, s.LongestGap.Round(time.Millisecond), s.Releases, s.Errors)
}

// Load is a running load; Stop ends it and returns the counts.
type Load struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	stats  LoadStats
	// cutsFail: LoadOptions.FrontNeverReloads
	cutsFail bool
}

// StartLoad starts the loops against url with Host host.
func StartLoad(t testing.TB, url, host string, o LoadOptions) *Load {
	t.Helper()
	if o.SlowFor == 0 {
		o.SlowFor = time.Second
	}
	if o.Pause == 0 {
		o.Pause = 2 * time.Millisecond
	}
	if o.WSFor == 0 {
		o.WSFor = time.Second
	}
	if o.MaxDuration == 0 {
		o.MaxDuration = 10 * time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.MaxDuration)
	l := &Load{cancel: cancel, cutsFail: o.FrontNeverReloads, stats: LoadStats{Releases: map[string]int{}, Hosts: map[string]int{}, Failed5xx: map[string]int{}, lastOK: time.Now()}}
	t.Cleanup(func() { l.Stop() })

	h1 := &http.Transport{MaxIdleConnsPerHost: 64, IdleConnTimeout: 90 * time.Second}
	h2 := &http.Transport{Protocols: new(http.Protocols)}
	h2.Protocols.SetUnencryptedHTTP2(true)
	loops := []struct {
		n    int
		kind string
		tr   *http.Transport
	}{{o.Workers, "get", h1}, {o.H2, "h2", h2}, {o.Posts, "post", h1}, {o.Slow, "slow", h1}}
	for _, lp := range loops {
		for range lp.n {
			l.wg.Add(1)
			go l.loop(ctx, &http.Client{Transport: lp.tr, Timeout: 60 * time.Second}, lp.kind, url, host, o)
		}
	}
	for range o.WebSockets {
		l.wg.Add(1)
		go l.wsLoop(ctx, strings.Replace(url, "http://", "ws://", 1)+"/ws", host, o)
	}
	return l
}

// wsLoop opens a WebSocket, reads the app's messages for WSFor, and closes
// it normally; a WebSocket that breaks before is cut, one the server
// closes with 1001 was told goodbye properly.
func (l *Load) wsLoop(ctx context.Context, url, host string, o LoadOptions) {
	defer l.wg.Done()
	for ctx.Err() == nil {
		newConnCut, err := holdWebSocket(url, host, o.WSFor)
		l.countWS(err, newConnCut)
		select {
		case <-ctx.Done():
		case <-time.After(o.Pause):
		}
	}
}

var wsClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

// countWS counts one WebSocket of a wsLoop. A handshake cut on the
// connection just made for it, before any answer, is the new-connection
// cut of ReloadCuts (a Caddy reload's old server closing what it had just
// accepted), a failure when nothing in front reloads.
func (l *Load) countWS(err error, newConnCut bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case err == nil:
		l.stats.WSOK++
	case websocket.CloseStatus(err) == websocket.StatusGoingAway:
		l.stats.WSGoingAway++
	case newConnCut && !l.cutsFail:
		l.stats.NewConnCut++
		l.failed("ws", err.Error()+" (handshake on a new connection)")
	default:
		l.stats.WSCut++
		l.failed("ws", err.Error())
	}
}

// holdWebSocket opens, holds and closes one WebSocket. newConnCut says the
// handshake failed on the connection made for it with no answer at all: the
// connection was accepted and then closed (a refused connection, an answer
// that is not 101 and a handshake that timed out are not that).
func holdWebSocket(url, host string, hold time.Duration) (newConnCut bool, err error) {
	dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Each handshake on a connection of its own, as a browser opens one for
	// a WebSocket: never on an idle keep-alive connection another request
	// of this process left in http.DefaultClient's pool, which the front
	// proxy may be closing at that moment (a Caddy reload closes its idle
	// connections, and an upgrade request is not retried).
	made := false
	dctx = httptrace.WithClientTrace(dctx, &httptrace.ClientTrace{GotConn: func(httptrace.GotConnInfo) { made = true }})
	ws, resp, err := websocket.Dial(dctx, url, &websocket.DialOptions{Host: host, HTTPClient: wsClient})
	if err != nil {
		return made && resp == nil && dctx.Err() == nil, err
	}
	defer ws.CloseNow()
	end := time.Now().Add(hold)
	for time.Now().Before(end) {
		rctx, cancel := context.WithDeadline(context.Background(), end.Add(5*time.Second))
		_, _, err := ws.Read(rctx)
		cancel()
		if err != nil {
			return false, err
		}
	}
	return false, ws.Close(websocket.StatusNormalClosure, "done")
}

func (l *Load) loop(ctx context.Context, c *http.Client, kind, url, host string, o LoadOptions) {
	defer l.wg.Done()
	for ctx.Err() == nil {
		var req *http.Request
		switch kind {
		case "post":
			req, _ = http.NewRequest(http.MethodPost, url+"/echo", strings.NewReader("payload"))
		case "slow":
			req, _ = http.NewRequest(http.MethodGet, url+"/slow?d="+o.SlowFor.String(), nil)
		default:
			req, _ = http.NewRequest(http.MethodGet, url+"/", nil)
		}
		req.Host = host
		if o.Clients > 0 && kind != "slow" {
			req.Header.Set("Cookie", fmt.Sprintf("handoff_split=%016x", ClientKey(rand.IntN(o.Clients))))
		}
		// Requests are not tied to ctx: stopping the load lets the last ones finish.
		var conn struct{ made, reused bool } // of the last try
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
			conn.made, conn.reused = true, i.Reused
		}}))
		resp, err := c.Do(req)
		newConn := conn.made && !conn.reused
		code, release, host := 0, "", ""
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			code, release, host = resp.StatusCode, resp.Header.Get("X-Release"), resp.Header.Get("X-Host")
			if kind == "h2" && resp.ProtoMajor != 2 {
				err = fmt.Errorf("h2 loop got %s", resp.Proto)
			}
		}
		l.count(kind, code, release, host, err, newConn)
		select {
		case <-ctx.Done():
		case <-time.After(o.Pause):
		}
	}
}

func (l *Load) count(kind string, code int, release, host string, err error, newConn bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := &l.stats
	switch {
	case err != nil && newConn:
		l.failed(kind, err.Error()+" (on a new connection)")
	case err != nil:
		l.failed(kind, err.Error())
	case code/100 != 2:
		l.failed(kind, fmt.Sprintf("status %d from release %q", code, release))
	}
	if code/100 == 5 {
		s.Failed5xx[release]++
	}
	if code/100 == 2 {
		s.Releases[release]++
		if host != "" {
			s.Hosts[host]++
		}
		if kind == "get" || kind == "h2" {
			now := time.Now()
			s.LongestGap = max(s.LongestGap, now.Sub(s.lastOK))
			s.lastOK = now
		}
	}
	switch {
	case err != nil && (kind == "post" || newConn) && l.cutsFail:
		s.ConnErrors++
	case kind == "post" && err != nil:
		s.PostConnErr++
	case err != nil && newConn:
		s.NewConnCut++
	case kind == "post" && code/100 == 5:
		s.Post5xx++
	case kind == "post":
		s.PostOK++
	case kind == "slow" && code == 200:
		s.SlowOK++
	case kind == "slow":
		s.SlowCut++
	case err != nil:
		s.ConnErrors++
	case code/100 == 2:
		s.OK++
	case code/100 == 5:
		s.Status5xx++
	default:
		s.OtherStatus++
	}
}

// failed keeps the first failures with their times, so that every one a
// test reports can be matched with the proxy's and handoff's logs.
func (l *Load) failed(kind, what string) {
	if len(l.stats.Errors) < 10 {
		l.stats.Errors = append(l.stats.Errors, time.Now().UTC().Format("15:04:05.000")+" "+kind+": "+what)
	}
}

// Snapshot returns the counts so far.
func (l *Load) Snapshot() LoadStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.stats
	s.Releases, s.Hosts, s.Failed5xx = maps.Clone(l.stats.Releases), maps.Clone(l.stats.Hosts), maps.Clone(l.stats.Failed5xx)
	s.Errors = append([]string(nil), l.stats.Errors...)
	return s
}

// Stop ends the loops, waits for their last requests, and returns the counts.
func (l *Load) Stop() LoadStats {
	l.cancel()
	l.wg.Wait()
	return l.Snapshot()
}

// ClientKey is the handoff_split key of simulated client i: spread over
// all keys, as the proxy's own hash of an address would be.
func ClientKey(i int) uint64 { return uint64(i+1) * 0x9E3779B97F4A7C15 }
