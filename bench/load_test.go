package bench

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	vegeta "github.com/tsenart/vegeta/v12/lib"
)

// loadSettings is the load every strategy gets.
type loadSettings struct {
	GetRate, PostRate int           // requests per second
	Connections       int           // keep-alive connections per attacker
	SlowLoops         int           // concurrent loops of slow requests
	SlowFor           time.Duration // how long a slow request takes
	StreamFor         time.Duration // how long an SSE stream or a WebSocket stays open
}

// event is one slow request, SSE stream or WebSocket: it completed or was cut.
type event struct {
	Kind     string // slow, sse, ws
	Start    time.Time
	End      time.Time
	Complete bool
	Err      string
}

// benchLoad runs vegeta's GET and POST attacks and the stream loops, and
// keeps every result for the report.
type benchLoad struct {
	cancel   context.CancelFunc
	attacks  []*vegeta.Attacker
	wg       sync.WaitGroup
	mu       sync.Mutex
	results  []vegeta.Result
	events   []event
	deadline time.Duration
}

func startLoad(base, host string, ls loadSettings, maxDuration time.Duration) *benchLoad {
	ctx, cancel := context.WithTimeout(context.Background(), maxDuration)
	l := &benchLoad{cancel: cancel, deadline: maxDuration}
	header := http.Header{"Host": {host}}
	targets := []struct {
		name string
		rate int
		t    vegeta.Target
	}{
		{"GET", ls.GetRate, vegeta.Target{Method: http.MethodGet, URL: base + "/", Header: header}},
		{"POST", ls.PostRate, vegeta.Target{Method: http.MethodPost, URL: base + "/echo", Body: []byte(`{"order":42,"items":["a","b"]}`), Header: header}},
	}
	for _, tg := range targets {
		a := vegeta.NewAttacker(vegeta.Connections(ls.Connections), vegeta.KeepAlive(true), vegeta.Timeout(30*time.Second), vegeta.Redirects(vegeta.NoFollow))
		l.attacks = append(l.attacks, a)
		rate := vegeta.Rate{Freq: tg.rate, Per: time.Second}
		results := a.Attack(vegeta.NewStaticTargeter(tg.t), rate, maxDuration, tg.name)
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for r := range results {
				r.Body = nil
				l.mu.Lock()
				l.results = append(l.results, *r)
				l.mu.Unlock()
			}
		}()
	}
	slowClient := &http.Client{Timeout: time.Minute}
	for range ls.SlowLoops {
		l.loop(ctx, func() event { return slowRequest(slowClient, base, host, ls.SlowFor) })
	}
	l.loop(ctx, func() event { return sseStream(base, host, ls.StreamFor) })
	l.loop(ctx, func() event { return webSocket(base, host, ls.StreamFor) })
	return l
}

func (l *benchLoad) loop(ctx context.Context, once func() event) {
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		for ctx.Err() == nil {
			e := once()
			l.mu.Lock()
			l.events = append(l.events, e)
			l.mu.Unlock()
			if !e.Complete {
				time.Sleep(50 * time.Millisecond) // do not spin on a refused connection
			}
		}
	}()
}

// stop ends the attacks, lets the streams in progress finish, and returns everything.
func (l *benchLoad) stop() ([]vegeta.Result, []event) {
	for _, a := range l.attacks {
		a.Stop()
	}
	l.cancel()
	l.wg.Wait()
	return l.results, l.events
}

func slowRequest(c *http.Client, base, host string, d time.Duration) event {
	e := event{Kind: "slow", Start: time.Now()}
	req, _ := http.NewRequest(http.MethodGet, base+"/slow?d="+d.String(), nil)
	req.Host = host
	resp, err := c.Do(req)
	if err == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err == nil && resp.StatusCode != 200 {
			err = errors.New(resp.Status)
		}
	}
	return e.done(err)
}

// sseStream reads /sse until its "end" event: a stream that ends before is cut.
func sseStream(base, host string, d time.Duration) event {
	e := event{Kind: "sse", Start: time.Now()}
	req, _ := http.NewRequest(http.MethodGet, base+"/sse?d="+d.String(), nil)
	req.Host = host
	resp, err := (&http.Client{Timeout: d + time.Minute}).Do(req)
	if err != nil {
		return e.done(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return e.done(errors.New(resp.Status))
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if sc.Text() == "event: end" {
			return e.done(nil)
		}
	}
	if sc.Err() != nil {
		return e.done(sc.Err())
	}
	return e.done(errors.New("stream ended without its end event"))
}

// webSocket keeps a WebSocket open for d, reading the app's messages, then
// closes it normally: a read error before that is a cut.
func webSocket(base, host string, d time.Duration) event {
	e := event{Kind: "ws", Start: time.Now()}
	ctx, cancel := context.WithTimeout(context.Background(), d+time.Minute)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(base, "http")+"/ws", &websocket.DialOptions{Host: host})
	if err != nil {
		return e.done(err)
	}
	defer conn.CloseNow()
	until := time.Now().Add(d)
	for time.Now().Before(until) {
		rctx, rcancel := context.WithDeadline(ctx, until)
		_, _, err := conn.Read(rctx)
		rcancel()
		if err != nil && time.Now().Before(until) {
			return e.done(err)
		}
	}
	return e.done(conn.Close(websocket.StatusNormalClosure, "done"))
}

func (e event) done(err error) event {
	e.End = time.Now()
	e.Complete = err == nil
	if !e.Complete {
		e.Err = err.Error()
	}
	return e
}
