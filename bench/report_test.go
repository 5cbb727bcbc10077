package bench

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"
)

// window is the time one deploy took, from its command to serving (or
// one restart of handoff proxy).
type window struct {
	Start, End time.Time
	Restart    bool
}

func (w window) holds(t time.Time) bool { return !t.Before(w.Start) && !t.After(w.End) }

// counts are failures and totals over some span.
type counts struct {
	Sent        int `json:"sent"`
	OK          int `json:"ok"`
	Status5xx   int `json:"status_5xx"`
	OtherStatus int `json:"other_status"`
	GetConnErr  int `json:"get_conn_errors"`
	PostConnErr int `json:"post_conn_errors"`
	SlowOK      int `json:"slow_ok"`
	SlowCut     int `json:"slow_cut"`
	SSECut      int `json:"sse_cut"`
	WSCut       int `json:"ws_cut"`
	StreamsOK   int `json:"streams_ok"`
	// ConnErrKinds splits connection errors by method and kind: "POST reset", "GET refused".
	ConnErrKinds map[string]int `json:"conn_error_kinds,omitempty"`
}

type latency struct {
	P50 time.Duration `json:"p50_ns"`
	P99 time.Duration `json:"p99_ns"`
	Max time.Duration `json:"max_ns"`
}

type deployResult struct {
	Took     time.Duration            `json:"took_ns"`
	Overhead time.Duration            `json:"overhead_ns"`         // took minus the app's boot time
	Idle     time.Duration            `json:"idle_ns,omitempty"`   // took minus boot minus drain: what handoff adds
	Phases   map[string]time.Duration `json:"phases_ns,omitempty"` // handoff's record of it
	Counts   counts                   `json:"counts"`
}

type strategyResult struct {
	Name      string                   `json:"strategy"`
	Note      string                   `json:"how"`
	Deploys   []deployResult           `json:"deploys"`
	Total     counts                   `json:"total"`
	Steady    latency                  `json:"latency_steady"`
	Switching latency                  `json:"latency_in_deploys"`
	Overhead  time.Duration            `json:"median_overhead_ns"`
	Drain     time.Duration            `json:"median_drain_ns"` // of the overhead, waiting for requests in flight (handoff)
	Idle      time.Duration            `json:"median_idle_ns,omitempty"`
	Phases    map[string]time.Duration `json:"median_phases_ns,omitempty"`
	Restarts  []deployResult           `json:"proxy_restarts,omitempty"`

	Origin   time.Time `json:"origin"` // when the load started
	Timeline []second  `json:"timeline,omitempty"`
	Marks    []mark    `json:"marks,omitempty"`

	ProxyCPUPerRequest time.Duration `json:"proxy_cpu_per_request_ns,omitempty"`
	ProxyPeakRSS       int64         `json:"proxy_peak_rss_bytes,omitempty"`
	Errors             []string      `json:"error_samples"`
}

type report struct {
	Settings   settings         `json:"settings"`
	Machine    string           `json:"machine"`
	Started    time.Time        `json:"started"`
	Strategies []strategyResult `json:"strategies"`
}

// measure sorts every result and stream into its deploy window (or steady
// state) and counts.
func measure(st strategy, set settings, windows []window, results []vegeta.Result, events []event) strategyResult {
	r := strategyResult{Name: st.Name, Note: st.Note}
	restarts := 0
	for _, w := range windows {
		if w.Restart {
			restarts++
		}
	}
	// Capacity up front: spans point into these slices.
	r.Deploys = make([]deployResult, 0, len(windows)-restarts)
	r.Restarts = make([]deployResult, 0, restarts)
	spans := make([]*deployResult, len(windows))
	for i, w := range windows {
		d := deployResult{Took: w.End.Sub(w.Start)}
		if w.Restart {
			r.Restarts = append(r.Restarts, d)
			spans[i] = &r.Restarts[len(r.Restarts)-1]
			continue
		}
		d.Overhead = d.Took - set.Boot
		r.Deploys = append(r.Deploys, d)
		spans[i] = &r.Deploys[len(r.Deploys)-1]
	}
	at := func(t time.Time) *counts {
		for i, w := range windows {
			if w.holds(t) {
				return &spans[i].Counts
			}
		}
		return nil
	}
	var steady, switching []time.Duration
	samples := map[string]bool{}
	for _, res := range results {
		c := at(res.Timestamp)
		if c != nil {
			switching = append(switching, res.Latency)
		} else {
			steady = append(steady, res.Latency)
		}
		for _, c := range []*counts{c, &r.Total} {
			if c != nil {
				c.addResult(res)
			}
		}
		if res.Error != "" && len(samples) < 6 {
			samples[res.Method+": "+res.Error] = true
		}
	}
	for _, e := range events {
		for _, c := range []*counts{at(e.End), &r.Total} {
			if c != nil {
				c.addEvent(e)
			}
		}
		if e.Err != "" && len(samples) < 12 {
			samples[e.Kind+": "+e.Err] = true
		}
	}
	for s := range samples {
		r.Errors = append(r.Errors, s)
	}
	slices.Sort(r.Errors)
	r.Steady, r.Switching = percentiles(steady), percentiles(switching)
	var overheads []time.Duration
	for _, d := range r.Deploys {
		overheads = append(overheads, d.Overhead)
	}
	r.Overhead = percentiles(overheads).P50
	return r
}

func (c *counts) addResult(res vegeta.Result) {
	c.Sent++
	if res.Code == 0 {
		if c.ConnErrKinds == nil {
			c.ConnErrKinds = map[string]int{}
		}
		c.ConnErrKinds[res.Method+" "+connErrKind(res.Error)]++
	}
	switch {
	case res.Code == 0 && res.Method == "POST":
		c.PostConnErr++
	case res.Code == 0:
		c.GetConnErr++
	case res.Code >= 500:
		c.Status5xx++
	case res.Code >= 200 && res.Code < 300:
		c.OK++
	default:
		c.OtherStatus++
	}
}

// connErrKind names a vegeta error the way a user tells them apart.
func connErrKind(err string) string {
	switch {
	case strings.Contains(err, "connection refused"):
		return "refused"
	case strings.Contains(err, "connection reset"):
		return "reset"
	case strings.HasSuffix(err, "EOF"):
		return "EOF"
	case strings.Contains(err, "timeout"), strings.Contains(err, "deadline exceeded"):
		return "timeout"
	}
	return "other"
}

func (c *counts) addEvent(e event) {
	switch {
	case e.Kind == "slow" && e.Complete:
		c.SlowOK++
	case e.Kind == "slow":
		c.SlowCut++
	case e.Complete:
		c.StreamsOK++
	case e.Kind == "sse":
		c.SSECut++
	default:
		c.WSCut++
	}
}

func percentiles(ds []time.Duration) latency {
	if len(ds) == 0 {
		return latency{}
	}
	slices.Sort(ds)
	at := func(q float64) time.Duration { return ds[min(len(ds)-1, int(q*float64(len(ds))))] }
	return latency{P50: at(0.50), P99: at(0.99), Max: ds[len(ds)-1]}
}

func (r report) markdown() string {
	var b strings.Builder
	s := r.Settings
	grace := "drops its requests at once on SIGTERM, as an app without graceful shutdown does"
	if s.AppGrace > 0 {
		grace = fmt.Sprintf("finishes its requests for up to %s after SIGTERM", s.AppGrace)
	}
	fmt.Fprintf(&b, "%d deploys per strategy; the app boots in %s and %s; load through Caddy: GET %d/s + POST %d/s (vegeta, %d keep-alive connections each), %d loops of %s slow requests, one SSE stream and one WebSocket held %s at a time.\n",
		s.Deploys, s.Boot, grace, s.Load.GetRate, s.Load.PostRate, s.Load.Connections, s.Load.SlowLoops, s.Load.SlowFor, s.Load.StreamFor)
	fmt.Fprintf(&b, "Machine: %s. Run: %s.\n\n", r.Machine, r.Started.Format(time.RFC3339))
	b.WriteString("| strategy | requests | 5xx | GET conn errors | POST conn errors | slow cut | SSE cut | WS cut | p50 / p99 / max steady | p50 / p99 / max in deploys | deploy time − boot (median) | of which drain | deploy − boot − drain (median) |\n")
	b.WriteString("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: |\n")
	for _, st := range r.Strategies {
		t := st.Total
		idle := "—"
		if st.Phases != nil {
			idle = st.Idle.Round(time.Millisecond).String()
		}
		fmt.Fprintf(&b, "| **%s** | %d | %d | %d | %d | %d / %d | %d | %d | %s | %s | %s | %s | %s |\n", st.Name, t.Sent, t.Status5xx, t.GetConnErr, t.PostConnErr,
			t.SlowCut, t.SlowCut+t.SlowOK, t.SSECut, t.WSCut, st.Steady, st.Switching, st.Overhead.Round(time.Millisecond), st.Drain.Round(time.Millisecond), idle)
	}
	for _, st := range r.Strategies {
		if st.Phases == nil {
			continue
		}
		var parts []string
		for _, name := range []string{"image", "start", "health", "switch", "drain", "retire", "outside phases"} {
			parts = append(parts, fmt.Sprintf("%s %s", name, st.Phases[name].Round(time.Millisecond)))
		}
		fmt.Fprintf(&b, "\n%s, phases (median of each): %s; health includes the app's %s boot.", st.Name, strings.Join(parts, ", "), r.Settings.Boot)
	}
	b.WriteString("\nConnection errors by kind:")
	for _, st := range r.Strategies {
		kinds := slices.Sorted(maps.Keys(st.Total.ConnErrKinds))
		var parts []string
		for _, k := range kinds {
			parts = append(parts, fmt.Sprintf("%d %s", st.Total.ConnErrKinds[k], k))
		}
		if len(parts) == 0 {
			parts = []string{"none"}
		}
		fmt.Fprintf(&b, " %s: %s.", st.Name, strings.Join(parts, ", "))
	}
	b.WriteString("\n\nPer deploy (5xx / GET conn / POST conn / slow cut / SSE cut / WS cut):\n\n")
	for _, st := range r.Strategies {
		var parts []string
		for _, d := range st.Deploys {
			c := d.Counts
			parts = append(parts, fmt.Sprintf("%d/%d/%d/%d/%d/%d", c.Status5xx, c.GetConnErr, c.PostConnErr, c.SlowCut, c.SSECut, c.WSCut))
		}
		fmt.Fprintf(&b, "- %s: %s\n", st.Name, strings.Join(parts, " "))
	}
	for _, st := range r.Strategies {
		if len(st.Restarts) == 0 && st.ProxyPeakRSS == 0 {
			continue
		}
		var parts []string
		for _, d := range st.Restarts {
			c := d.Counts
			parts = append(parts, fmt.Sprintf("%d/%d/%d/%d/%d/%d in %s", c.Status5xx, c.GetConnErr, c.PostConnErr, c.SlowCut, c.SSECut, c.WSCut, d.Took.Round(time.Millisecond)))
		}
		fmt.Fprintf(&b, "- %s, restarts of handoff proxy itself under the same load: %s\n", st.Name, strings.Join(parts, " "))
		fmt.Fprintf(&b, "- %s, the proxy's cost: %.1f µs of CPU per request, peak memory %.1f MiB\n", st.Name, float64(st.ProxyCPUPerRequest)/float64(time.Microsecond), float64(st.ProxyPeakRSS)/(1<<20))
	}
	b.WriteString("\nStrategies:\n\n")
	for _, st := range r.Strategies {
		fmt.Fprintf(&b, "- **%s**: %s", st.Name, st.Note)
		if len(st.Errors) > 0 {
			fmt.Fprintf(&b, ". Errors seen: %s", strings.Join(st.Errors, "; "))
		}
		b.WriteString("\n")
	}
	return b.String()
}

func (l latency) String() string {
	r := func(d time.Duration) string {
		switch {
		case d >= time.Second:
			return fmt.Sprintf("%.2fs", d.Seconds())
		default:
			return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
		}
	}
	return r(l.P50) + " / " + r(l.P99) + " / " + r(l.Max)
}

func TestConnErrKind(t *testing.T) {
	cases := map[string]string{
		`Post "http://127.0.0.1:1/echo": EOF`: "EOF",
		`Post "http://127.0.0.1:1/echo": read tcp 127.0.0.1:2->127.0.0.1:1: read: connection reset by peer`: "reset",
		`Get "http://127.0.0.1:1/": dial tcp 127.0.0.1:1: connect: connection refused`:                      "refused",
		`Get "http://127.0.0.1:1/": context deadline exceeded (Client.Timeout exceeded)`:                    "timeout",
		`something else`: "other",
	}
	for in, want := range cases {
		if got := connErrKind(in); got != want {
			t.Errorf("connErrKind(%q) = %q, want %q", in, got, want)
		}
	}
}
