package itest

import (
	"context"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
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
}

// LoadStats counts what the clients saw, by kind.
type LoadStats struct {
	OK          int            // 2xx
	Status5xx   int            // from GET, h2 and slow loops
	OtherStatus int            // not 2xx nor 5xx
	ConnErrors  int            // GET and h2 loops: refused, reset, EOF after the client's own retry
	SlowOK      int            // slow requests that ended with 200
	SlowCut     int            // slow requests that did not end with 200
	PostOK      int            // POST loops, counted apart: see Failures
	Post5xx     int            //
	PostConnErr int            // non-retried POSTs cut by Caddy's reload closing idle connections
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
// connection errors of non-retrying POSTs are reported apart (PostConnErr),
// since they come from Caddy's reload, not from handoff.
func (s LoadStats) Failures() int {
	return s.Status5xx + s.OtherStatus + s.ConnErrors + s.SlowCut + s.Post5xx + s.WSCut
}

// Requests counts every request and WebSocket the load made.
func (s LoadStats) Requests() int {
	return s.OK + s.Status5xx + s.OtherStatus + s.ConnErrors + s.SlowOK + s.SlowCut + s.PostOK + s.Post5xx + s.PostConnErr + s.WSOK + s.WSGoingAway + s.WSCut
}

func (s LoadStats) String() string {
	return fmt.Sprintf("ok=%d 5xx=%d other=%d conn_errors=%d slow_ok=%d slow_cut=%d post_ok=%d post_5xx=%d post_conn_errors=%d ws_ok=%d ws_going_away=%d ws_cut=%d longest_gap=%s releases=%v errors=%q",
		s.OK, s.Status5xx, s.OtherStatus, s.ConnErrors, s.SlowOK, s.SlowCut, s.PostOK, s.Post5xx, s.PostConnErr, s.WSOK, s.WSGoingAway, s.WSCut, s.LongestGap.Round(time.Millisecond), s.Releases, s.Errors)
}

// Load is a running load; Stop ends it and returns the counts.
type Load struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	stats  LoadStats
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
	l := &Load{cancel: cancel, stats: LoadStats{Releases: map[string]int{}, Hosts: map[string]int{}, Failed5xx: map[string]int{}, lastOK: time.Now()}}
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
		err := holdWebSocket(url, host, o.WSFor)
		l.mu.Lock()
		switch {
		case err == nil:
			l.stats.WSOK++
		case websocket.CloseStatus(err) == websocket.StatusGoingAway:
			l.stats.WSGoingAway++
		default:
			l.stats.WSCut++
			l.failed("ws", err.Error())
		}
		l.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-time.After(o.Pause):
		}
	}
}

var wsClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

func holdWebSocket(url, host string, hold time.Duration) error {
	dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Each handshake on a connection of its own, as a browser opens one for
	// a WebSocket: never on an idle keep-alive connection another request
	// of this process left in http.DefaultClient's pool, which the front
	// proxy may be closing at that moment (a Caddy reload closes its idle
	// connections, and an upgrade request is not retried).
	ws, _, err := websocket.Dial(dctx, url, &websocket.DialOptions{Host: host, HTTPClient: wsClient})
	if err != nil {
		return err
	}
	defer ws.CloseNow()
	end := time.Now().Add(hold)
	for time.Now().Before(end) {
		rctx, cancel := context.WithDeadline(context.Background(), end.Add(5*time.Second))
		_, _, err := ws.Read(rctx)
		cancel()
		if err != nil {
			return err
		}
	}
	return ws.Close(websocket.StatusNormalClosure, "done")
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
		resp, err := c.Do(req)
		code, release, host := 0, "", ""
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			code, release, host = resp.StatusCode, resp.Header.Get("X-Release"), resp.Header.Get("X-Host")
			if kind == "h2" && resp.ProtoMajor != 2 {
				err = fmt.Errorf("h2 loop got %s", resp.Proto)
			}
		}
		l.count(kind, code, release, host, err)
		select {
		case <-ctx.Done():
		case <-time.After(o.Pause):
		}
	}
}

func (l *Load) count(kind string, code int, release, host string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := &l.stats
	switch {
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
	case kind == "post" && err != nil:
		s.PostConnErr++
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
