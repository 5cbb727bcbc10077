// Package verify watches a deploy from the outside: it sends a light,
// steady stream of GET requests to the service's public URL while the
// deploy runs, and reports what a user would have seen.
package verify

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// DefaultRate is requests per second: light enough for production.
const DefaultRate = 5

// requestTimeout bounds one request; a slower answer counts as a timeout.
const requestTimeout = 10 * time.Second

// Sample is one request and how it went.
type Sample struct {
	At     time.Time     `json:"at"`
	Took   time.Duration `json:"took_ns"`
	Status int           `json:"status,omitempty"`
	Kind   string        `json:"kind"` // ok, 5xx, status, refused, reset, eof, timeout, error
	Err    string        `json:"error,omitempty"`
}

// Watch is a running stream of requests.
type Watch struct {
	url     string
	cancel  context.CancelFunc
	done    chan struct{}
	mu      sync.Mutex
	samples []Sample
}

// Start sends GET url at rate per second until Stop. Each request uses a
// new connection, as a new visitor would, so the report does not depend on
// one kept-alive connection's fate.
func Start(url string, rate float64) (*Watch, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil || req.URL.Host == "" || (req.URL.Scheme != "http" && req.URL.Scheme != "https") {
		return nil, fmt.Errorf("--verify URL %q: give a full http:// or https:// URL", url)
	}
	if rate <= 0 {
		rate = DefaultRate
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &Watch{url: url, cancel: cancel, done: make(chan struct{})}
	client := &http.Client{
		Timeout:       requestTimeout,
		Transport:     &http.Transport{DisableKeepAlives: true, Proxy: http.ProxyFromEnvironment},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	var wg sync.WaitGroup
	go func() {
		defer close(w.done)
		tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
		defer tick.Stop()
		for {
			wg.Add(1)
			go func() { defer wg.Done(); w.add(probe(client, url)) }()
			select {
			case <-ctx.Done():
				wg.Wait()
				return
			case <-tick.C:
			}
		}
	}()
	return w, nil
}

func (w *Watch) add(s Sample) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.samples = append(w.samples, s)
}

func probe(c *http.Client, url string) Sample {
	s := Sample{At: time.Now()}
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("User-Agent", "handoff-verify")
	resp, err := c.Do(req)
	if err == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		s.Status = resp.StatusCode
	}
	s.Took = time.Since(s.At)
	s.Kind = kindOf(s.Status, err)
	if err != nil {
		s.Err = err.Error()
	}
	return s
}

// kindOf names a failure the way a user would tell it apart.
func kindOf(status int, err error) string {
	var ne net.Error
	switch {
	case err == nil && status < 400:
		return "ok"
	case err == nil && status >= 500:
		return "5xx"
	case err == nil:
		return "status"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	return "error"
}

// Stop ends the stream, waits for the requests in flight, and returns them in order.
func (w *Watch) Stop() []Sample {
	w.cancel()
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	out := append([]Sample(nil), w.samples...)
	slices.SortFunc(out, func(a, b Sample) int { return a.At.Compare(b.At) })
	return out
}

// URL is what the watch requests.
func (w *Watch) URL() string { return w.url }

// Report is what the watch saw, for people and for --json.
type Report struct {
	URL        string         `json:"url"`
	Requests   int            `json:"requests"`
	OK         int            `json:"ok"`
	Failed     int            `json:"failed"`
	ByKind     map[string]int `json:"failures_by_kind,omitempty"`
	LongestGap time.Duration  `json:"longest_gap_between_successes_ns"`
	Answered   []Answered     `json:"answered"`
	Failures   []Sample       `json:"failure_samples,omitempty"`
}

// Answered says how many requests a release answered, and until when it was in service.
type Answered struct {
	Release  string    `json:"release"`
	Requests int       `json:"requests"`
	Failed   int       `json:"failed"`
	Until    time.Time `json:"until,omitzero"`
}

// Summarize counts samples. switchAt is when the proxy took the new
// release (zero: never); requests sent before it are the old release's.
func Summarize(url string, samples []Sample, oldRelease, newRelease string, switchAt time.Time) Report {
	r := Report{URL: url, ByKind: map[string]int{}}
	old := Answered{Release: oldRelease, Until: switchAt}
	next := Answered{Release: newRelease}
	var lastOK time.Time
	for _, s := range samples {
		r.Requests++
		who := &old
		if !switchAt.IsZero() && !s.At.Before(switchAt) {
			who = &next
		}
		who.Requests++
		if s.Kind == "ok" {
			r.OK++
			end := s.At.Add(s.Took)
			if !lastOK.IsZero() && end.Sub(lastOK) > r.LongestGap {
				r.LongestGap = end.Sub(lastOK)
			}
			lastOK = end
			continue
		}
		r.Failed++
		who.Failed++
		r.ByKind[s.Kind]++
		if len(r.Failures) < 10 {
			r.Failures = append(r.Failures, s)
		}
	}
	r.Answered = []Answered{old}
	if !switchAt.IsZero() {
		r.Answered = append(r.Answered, next)
	}
	return r
}

// String is the report for a person, in a few lines.
func (r Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "verify: %d requests to %s: %d ok, %d failed", r.Requests, r.URL, r.OK, r.Failed)
	if r.Failed > 0 {
		var kinds []string
		for k, n := range r.ByKind {
			kinds = append(kinds, fmt.Sprintf("%d %s", n, k))
		}
		fmt.Fprintf(&b, " (%s)", strings.Join(kinds, ", "))
	}
	fmt.Fprintf(&b, "; longest gap between two successes %s\n", r.LongestGap.Round(time.Millisecond))
	for _, a := range r.Answered {
		fmt.Fprintf(&b, "verify: %s answered %d", orOld(a.Release), a.Requests-a.Failed)
		if !a.Until.IsZero() {
			fmt.Fprintf(&b, " until the switch at %s", a.Until.UTC().Format("15:04:05.000"))
		}
		b.WriteString("\n")
	}
	for _, f := range r.Failures {
		fmt.Fprintf(&b, "verify: failed at %s: %s %s\n", f.At.UTC().Format("15:04:05.000"), f.Kind, strings.TrimSpace(f.Err+" "+statusText(f.Status)))
	}
	return b.String()
}

func orOld(s string) string {
	if s == "" {
		return "the old upstream"
	}
	return s
}

func statusText(code int) string {
	if code == 0 {
		return ""
	}
	return fmt.Sprintf("%d %s", code, http.StatusText(code))
}
