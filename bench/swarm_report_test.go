package bench

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"image/color"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	vegeta "github.com/tsenart/vegeta/v12/lib"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"
)

// The swarm benchmark's report: a Markdown table of the ways side by side, its JSON,
// and a chart of the failed requests of each way and of its failures second by
// second, its deploys shaded.

type swarmReport struct {
	Settings swarmSettings    `json:"settings"`
	Machine  string           `json:"machine"`
	Started  time.Time        `json:"started"`
	Ways     []swarmWayResult `json:"ways"`
}

// swarmDeploy is one deploy (or the rollback) of a way.
type swarmDeploy struct {
	Release   string        `json:"release,omitempty"`
	Rollback  bool          `json:"rollback,omitempty"`
	Start     time.Time     `json:"start"`
	Took      time.Duration `json:"took_ns"`
	Completed bool          `json:"completed"`
	// State is where it ended: Swarm's update state, or handoff's exit code.
	State string `json:"state"`
	// Message is what Swarm said of it (its update's message, its unfinished
	// tasks'), or handoff's last line on a failure.
	Message string `json:"message,omitempty"`
	// Serves is what each node's port answered right after: "v3 v3 v3".
	Serves string `json:"serves_after"`
	// Counts are the requests that ended while it ran.
	Counts counts `json:"counts"`
}

type swarmWayResult struct {
	Name    string        `json:"way"`
	Note    string        `json:"how"`
	Port    int           `json:"port"`
	Deploys []swarmDeploy `json:"deploys"` // the rollback last
	// NotTried deploys were left out after Settings.Stalls in a row did not complete.
	NotTried int      `json:"not_tried,omitempty"`
	Total    counts   `json:"total"`
	Nodes    []counts `json:"nodes"` // the load of node 1, 2, 3
	// Failed counts every failed request and stream by kind: refused, reset, EOF,
	// timeout, 5xx, other status, other.
	Failed   map[string]int `json:"failed_by_kind"`
	Origin   time.Time      `json:"origin"` // when the load started
	Timeline []second       `json:"timeline"`
	Marks    []mark         `json:"marks"` // a deploy's span: completed, not completed, rollback
	Errors   []string       `json:"error_samples"`
}

// failureKinds are the kinds of Failed, in the order the table gives them.
var failureKinds = []string{"refused", "reset", "EOF", "timeout", "5xx", "other status", "other"}

// failureKind names a failed request (code 0: no answer, err says why) or a cut
// stream (code 0; err is its status line when it got an answer that is not 200).
func failureKind(code int, err string) string {
	switch {
	case code >= 500:
		return "5xx"
	case code != 0:
		return "other status"
	case len(err) >= 3 && err[0] == '5' && strings.Trim(err[:3], "0123456789") == "":
		return "5xx" // a slow request's status line: "502 Bad Gateway"
	case strings.Contains(err, "status code 101 but got 5"):
		return "5xx" // a WebSocket handshake answered 5xx
	}
	return connErrKind(err)
}

func failed(c counts) int {
	return c.Status5xx + c.OtherStatus + c.GetConnErr + c.PostConnErr + c.SlowCut + c.SSECut + c.WSCut
}

func requests(c counts) int { return c.Sent + c.SlowOK + c.SlowCut + c.StreamsOK + c.SSECut + c.WSCut }

// tally counts the load of each node (results[i], events[i]) into the way's totals,
// its nodes', its deploys' (by when each request ended) and its timeline.
func (r *swarmWayResult) tally(results [][]vegeta.Result, events [][]event) {
	at := func(t time.Time) *counts {
		for i, d := range r.Deploys {
			if !t.Before(d.Start) && !t.After(d.Start.Add(d.Took)) {
				return &r.Deploys[i].Counts
			}
		}
		return nil
	}
	r.Nodes, r.Failed = make([]counts, len(results)), map[string]int{}
	samples := map[string]bool{}
	var allResults []vegeta.Result
	var allEvents []event
	for i := range results {
		for _, res := range results[i] {
			for _, c := range []*counts{&r.Total, &r.Nodes[i], at(res.Timestamp.Add(res.Latency))} {
				if c != nil {
					c.addResult(res)
				}
			}
			if res.Code < 200 || res.Code >= 300 {
				r.Failed[failureKind(int(res.Code), res.Error)]++
				if len(samples) < 8 {
					samples[fmt.Sprintf("node %d %s: %s", i+1, res.Method, cmp.Or(res.Error, fmt.Sprint(res.Code)))] = true
				}
			}
		}
		for _, e := range events[i] {
			for _, c := range []*counts{&r.Total, &r.Nodes[i], at(e.End)} {
				if c != nil {
					c.addEvent(e)
				}
			}
			if !e.Complete {
				r.Failed[failureKind(0, e.Err)]++
				if len(samples) < 12 {
					samples[fmt.Sprintf("node %d %s: %s", i+1, e.Kind, e.Err)] = true
				}
			}
		}
		allResults, allEvents = append(allResults, results[i]...), append(allEvents, events[i]...)
	}
	r.Errors = slices.Sorted(maps.Keys(samples))
	var tl strategyResult
	tl.timeline(r.Origin, nil, allResults, allEvents, false)
	r.Timeline = tl.Timeline
	r.Marks = nil
	for i, d := range r.Deploys {
		phase := "completed"
		switch {
		case d.Rollback:
			phase = "rollback"
		case !d.Completed:
			phase = "not completed"
		}
		from := d.Start.Sub(r.Origin).Seconds()
		r.Marks = append(r.Marks, mark{Deploy: i + 1, Phase: phase, From: from, To: from + d.Took.Seconds()})
	}
}

// what names a deploy: "v3", "rollback".
func (d swarmDeploy) what() string {
	if d.Rollback {
		return "rollback"
	}
	return d.Release
}

// outcome says how a deploy ended, for the log and the report.
func (d swarmDeploy) outcome() string {
	took := d.Took.Round(100 * time.Millisecond)
	why := ""
	if d.Message != "" {
		why = ": " + d.Message
	}
	switch {
	case d.Completed:
		return fmt.Sprintf("completed in %s, then served %s", took, d.Serves)
	case d.State == "rollback_completed":
		return fmt.Sprintf("rolled back by Swarm after %s (%s%s), then served %s", took, d.State, why, d.Serves)
	}
	return fmt.Sprintf("did not complete in %s (%s%s), then served %s", took, d.State, why, d.Serves)
}

// completed counts the deploys that completed, the rollback apart.
func (r swarmWayResult) completed() (deploys, tried int, rollback bool) {
	for _, d := range r.Deploys {
		switch {
		case d.Rollback:
			rollback = d.Completed
		case d.Completed:
			deploys++
			tried++
		default:
			tried++
		}
	}
	return deploys, tried, rollback
}

// tookCompleted is the median and max time of the deploys that completed, the
// rollback apart.
func (r swarmWayResult) tookCompleted() (latency, bool) {
	var took []time.Duration
	for _, d := range r.Deploys {
		if d.Completed && !d.Rollback {
			took = append(took, d.Took)
		}
	}
	return percentiles(took), len(took) > 0
}

func (r swarmWayResult) failedByKind() string {
	var parts []string
	for _, k := range failureKinds {
		if n := r.Failed[k]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", k, n))
		}
	}
	if len(parts) == 0 {
		return "—"
	}
	return strings.Join(parts, ", ")
}

func (r swarmWayResult) summary() string {
	done, tried, rb := r.completed()
	return fmt.Sprintf("%s: %d of %d deploys completed (rollback: %v), %d requests, %d failed (%s)", r.Name, done, tried, rb, requests(r.Total), failed(r.Total), r.failedByKind())
}

// notes sums up the deploys that did not complete: how many, how, and what Swarm
// said of the first.
func (r swarmWayResult) notes() string {
	var parts []string
	var stalled, rolledBack []swarmDeploy
	for _, d := range r.Deploys {
		switch {
		case d.Completed:
		case d.State == "rollback_completed":
			rolledBack = append(rolledBack, d)
		default:
			stalled = append(stalled, d)
		}
	}
	say := func(n int, how string, first swarmDeploy) {
		msg := ""
		if first.Message != "" {
			msg = `: "` + first.Message + `"`
		}
		parts = append(parts, fmt.Sprintf("%d %s (first: %s, %s%s)", n, how, first.what(), first.State, msg))
	}
	if len(stalled) > 0 {
		longest := time.Duration(0)
		for _, d := range stalled {
			longest = max(longest, d.Took)
		}
		say(len(stalled), fmt.Sprintf("did not complete in %s", longest.Round(time.Second)), stalled[0])
	}
	if len(rolledBack) > 0 {
		say(len(rolledBack), "rolled back by Swarm's failure action", rolledBack[0])
	}
	if r.NotTried > 0 {
		parts = append(parts, fmt.Sprintf("%d not tried after that", r.NotTried))
	}
	if len(parts) == 0 {
		return "every deploy completed"
	}
	return strings.ReplaceAll(strings.Join(parts, "; "), "|", "/")
}

func (r swarmReport) markdown() string {
	var b strings.Builder
	s := r.Settings
	fmt.Fprintf(&b, "Swarm of 3 test servers on one machine (%s), started %s. Each way: %d deploys and a rollback, alone on the swarm, under the same load sent to every node's published port: per node %d GET/s and %d POST/s keep-alive (vegeta, %d connections each), %d loop of %s slow requests, an SSE stream and a WebSocket held %s each, in turn; %s of steady state before the first deploy and after each. A deploy is waited for at most %s",
		r.Machine, r.Started.Format("2006-01-02 15:04 UTC"), s.Deploys, s.Load.GetRate, s.Load.PostRate, s.Load.Connections, s.Load.SlowLoops, s.Load.SlowFor, s.Load.StreamFor, s.Pause, s.Timeout)
	if s.Stalls > 0 {
		fmt.Fprintf(&b, "; a way stops after %d in a row did not complete (its rollback still tried)", s.Stalls)
	}
	b.WriteString(".\n\n")
	b.WriteString("| way | deploys completed | requests | failed | failed % | failed by kind | deploy time median / max | notes |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|\n")
	for _, w := range r.Ways {
		done, tried, rb := w.completed()
		of := fmt.Sprintf("%d of %d", done, tried)
		if w.NotTried > 0 {
			of = fmt.Sprintf("%d of %d (%d not tried)", done, tried+w.NotTried, w.NotTried)
		}
		if rb {
			of += fmt.Sprintf(" + rollback (%s)", w.Deploys[len(w.Deploys)-1].Took.Round(100*time.Millisecond))
		} else {
			of += ", rollback not completed"
		}
		took := "—"
		if l, ok := w.tookCompleted(); ok {
			took = fmt.Sprintf("%s / %s", l.P50.Round(100*time.Millisecond), l.Max.Round(100*time.Millisecond))
		}
		pct := 0.0
		if n := requests(w.Total); n > 0 {
			pct = 100 * float64(failed(w.Total)) / float64(n)
		}
		fmt.Fprintf(&b, "| **%s** | %s | %d | **%d** | %.3f%% | %s | %s | %s |\n", w.Name, of, requests(w.Total), failed(w.Total), pct, w.failedByKind(), took, w.notes())
	}
	b.WriteString("\nEach deploy: how it ended, what each node's port answered right after, and the requests failed of those that ended while it ran:\n\n")
	for _, w := range r.Ways {
		var parts []string
		for _, d := range w.Deploys {
			state := d.Took.Round(100 * time.Millisecond).String()
			if !d.Completed {
				state = "**" + cmp.Or(d.State, "failed") + "** after " + state
			}
			parts = append(parts, fmt.Sprintf("%s %s, %s, %d/%d failed", d.what(), state, d.Serves, failed(d.Counts), requests(d.Counts)))
		}
		fmt.Fprintf(&b, "- %s: %s\n", w.Name, strings.Join(parts, "; "))
	}
	b.WriteString("\nBy node (requests / failed):")
	for _, w := range r.Ways {
		var parts []string
		for i, c := range w.Nodes {
			parts = append(parts, fmt.Sprintf("node %d %d / %d", i+1, requests(c), failed(c)))
		}
		fmt.Fprintf(&b, " %s: %s.", w.Name, strings.Join(parts, ", "))
	}
	b.WriteString("\n\nFailed by part of the load (GET / POST / slow / SSE / WebSocket):")
	for _, w := range r.Ways {
		c := w.Total
		fmt.Fprintf(&b, " %s: %d / %d / %d / %d / %d.", w.Name, c.GetConnErr+c.Status5xx+c.OtherStatus, c.PostConnErr, c.SlowCut, c.SSECut, c.WSCut)
	}
	b.WriteString(" A loop of slow requests, SSE streams or WebSockets begins its next one 50 ms after a failure, so while a node's port refuses, each such loop counts about 20 failures a second there: a user who retries.")
	b.WriteString("\n\nHow it is counted: **requests** are every GET and POST sent and every slow request, SSE stream and WebSocket begun; **failed** those without a 2xx answer, and the streams cut before their end; **failed %** is of every request of the way's run, from its load's start to its end, steady state included. **refused**, **reset**, **EOF**, **timeout** are connection errors (no answer); a slow request or stream cut mid-way counts by how it broke. **deploy time** is over the deploys that completed, the rollback apart (its time is beside it): from the command (or the API call) to handoff's exit, or to Swarm's update state `completed`.\n\nWays:\n\n")
	for _, w := range r.Ways {
		fmt.Fprintf(&b, "- **%s**: %s", w.Name, w.Note)
		if len(w.Errors) > 0 {
			fmt.Fprintf(&b, " Errors seen: %s.", strings.Join(w.Errors, "; "))
		}
		b.WriteString("\n")
	}
	return b.String()
}

// markColors shade a deploy's span in the chart.
var markColors = map[string]color.NRGBA{
	"completed":     {R: 60, G: 170, B: 80, A: 70},
	"not completed": {R: 220, G: 30, B: 30, A: 45},
	"rollback":      {R: 150, G: 110, B: 200, A: 80},
}

var swarmWayColors = []color.NRGBA{p99Color, connColor, s5xxColor}

// swarmChart draws the failed requests of each way (a bar each, log scale), then a
// strip per way of its failures per second by kind over its run, its deploys
// shaded by how they ended, on the same axes.
func swarmChart(r swarmReport) ([]byte, error) {
	if len(r.Ways) == 0 {
		return nil, fmt.Errorf("the report has no way")
	}
	bars, err := failedBars(r)
	if err != nil {
		return nil, err
	}
	rows := [][]*plot.Plot{{bars}}
	var xmax, ymax float64 = 1, 1
	for _, w := range r.Ways {
		for _, s := range w.Timeline {
			xmax = max(xmax, s.T+1)
			ymax = max(ymax, float64(s.S5xx), float64(s.ConnErr), float64(s.Cut))
		}
		for _, m := range w.Marks {
			xmax = max(xmax, m.To)
		}
	}
	for i, w := range r.Ways {
		p, err := failureStrip(w, xmax, ymax*1.15)
		if err != nil {
			return nil, err
		}
		if i == len(r.Ways)-1 {
			p.X.Label.Text = "seconds since the way's load started"
		}
		rows = append(rows, []*plot.Plot{p})
	}
	c := vgsvg.New(30*vg.Centimeter, 5*vg.Centimeter*vg.Length(len(rows)))
	drawRows(rows, draw.New(c))
	var b bytes.Buffer
	if _, err := c.WriteTo(&b); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// failedBars is a bar per way of its failed requests, from 0.5 (a log scale has no
// 0), labelled with the count and the deploys completed.
func failedBars(r swarmReport) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = "failed requests of each way, in all (log scale)"
	p.Title.TextStyle.Font.Size = vg.Points(9)
	p.X.Tick.Label.Font.Size, p.Y.Tick.Label.Font.Size = vg.Points(8), vg.Points(7)
	p.Y.Scale, p.Y.Tick.Marker = plot.LogScale{}, plot.LogTicks{Prec: -1}
	const floor, width = 0.5, 0.5
	top := 10.0
	var labels plotter.XYLabels
	var names []string
	for i, w := range r.Ways {
		v := max(float64(failed(w.Total)), floor)
		top = max(top, v)
		x := float64(i)
		poly, err := plotter.NewPolygon(plotter.XYs{{X: x - width/2, Y: floor}, {X: x + width/2, Y: floor}, {X: x + width/2, Y: v}, {X: x - width/2, Y: v}})
		if err != nil {
			return nil, err
		}
		poly.Color = swarmWayColors[i%len(swarmWayColors)]
		poly.LineStyle.Width = 0
		p.Add(poly)
		done, tried, _ := w.completed()
		labels.XYs = append(labels.XYs, plotter.XY{X: x, Y: v})
		labels.Labels = append(labels.Labels, fmt.Sprintf("%d of %d (%d of %d deploys completed)", failed(w.Total), requests(w.Total), done, tried+w.NotTried))
		names = append(names, w.Name)
	}
	l, err := plotter.NewLabels(labels)
	if err != nil {
		return nil, err
	}
	for i := range l.TextStyle {
		l.TextStyle[i].Font.Size = vg.Points(7)
		l.TextStyle[i].XAlign = draw.XCenter
	}
	l.Offset = vg.Point{Y: vg.Points(2)}
	p.Add(l)
	p.NominalX(names...)
	p.X.Min, p.X.Max = -0.6, float64(len(r.Ways))-0.4
	p.Y.Min, p.Y.Max = floor, top*6 // room for the labels
	return p, nil
}

// failureStrip is a way's failures per second by kind, its deploys shaded.
func failureStrip(w swarmWayResult, xmax, ymax float64) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("%s: failures per second (%d of %d requests failed)", w.Name, failed(w.Total), requests(w.Total))
	p.Title.TextStyle.Font.Size = vg.Points(9)
	p.X.Min, p.X.Max, p.Y.Min, p.Y.Max = 0, xmax, 0, ymax
	p.X.Tick.Label.Font.Size, p.Y.Tick.Label.Font.Size = vg.Points(7), vg.Points(7)
	p.Legend.Top, p.Legend.Left = true, false
	p.Legend.TextStyle.Font.Size = vg.Points(7)
	shown := map[string]*plotter.Polygon{}
	for _, m := range w.Marks {
		to := max(m.To, m.From+0.15)
		poly, err := plotter.NewPolygon(plotter.XYs{{X: m.From, Y: 0}, {X: to, Y: 0}, {X: to, Y: ymax}, {X: m.From, Y: ymax}})
		if err != nil {
			return nil, err
		}
		poly.Color = markColors[m.Phase]
		poly.LineStyle.Width = 0
		p.Add(poly)
		shown[m.Phase] = poly
	}
	for _, name := range []string{"completed", "not completed", "rollback"} {
		if poly, ok := shown[name]; ok {
			p.Legend.Add("deploy "+name, poly)
		}
	}
	tl := w.Timeline
	if n := len(tl); n > 1 {
		tl = tl[:n-1] // the last second was cut short by the end of the load
	}
	for _, f := range []struct {
		name string
		c    color.Color
		v    func(second) float64
	}{
		{"5xx", s5xxColor, func(s second) float64 { return float64(s.S5xx) }},
		{"connection errors", connColor, func(s second) float64 { return float64(s.ConnErr) }},
		{"slow requests and streams cut", cutColor, func(s second) float64 { return float64(s.Cut) }},
	} {
		if err := addLine(p, tl, f.v, f.c, f.name); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// swarmFixture is a report of the three ways as a run gives them, made by tally from
// requests and streams of a known kind.
func swarmFixture(t *testing.T) swarmReport {
	t0 := time.Date(2026, 12, 4, 2, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	set := swarmSettings{Deploys: 2, Timeout: time.Minute, Stalls: 3, Pause: 2 * time.Second,
		Load: loadSettings{GetRate: 40, PostRate: 10, Connections: 2, SlowLoops: 1, SlowFor: 2 * time.Second, StreamFor: 8 * time.Second}}
	rep := swarmReport{Settings: set, Machine: "fixture", Started: t0}
	ok := func(s float64, method string) vegeta.Result {
		return vegeta.Result{Method: method, Timestamp: at(s), Latency: 2 * time.Millisecond, Code: 200}
	}
	cut := func(s float64, method, err string) vegeta.Result {
		return vegeta.Result{Method: method, Timestamp: at(s), Latency: time.Millisecond, Error: err}
	}
	refused := `Get "http://192.168.213.12:8002/": dial tcp 192.168.213.12:8002: connect: connection refused`

	h := swarmWayResult{Name: wayHandoff, Note: "handoff deploy", Port: 9001, Origin: t0, Deploys: []swarmDeploy{
		{Release: "v2", Start: at(2), Took: 9 * time.Second, Completed: true, State: "exit 0", Serves: "v2 v2 v2"},
		{Release: "v3", Start: at(13), Took: 11 * time.Second, Completed: true, State: "exit 0", Serves: "v3 v3 v3"},
		{Rollback: true, Start: at(26), Took: 10 * time.Second, Completed: true, State: "exit 0", Serves: "v2 v2 v2"},
	}}
	h.tally([][]vegeta.Result{{ok(1, "GET"), ok(5, "POST")}, {ok(14, "GET")}, {ok(30, "GET")}},
		[][]event{{{Kind: "ws", Start: at(1), End: at(9), Complete: true}}, nil, nil})

	start := swarmWayResult{Name: wayStartFirst, Note: "docker service update, start-first", Port: 8001, Origin: t0, Deploys: []swarmDeploy{
		{Release: "v2", Start: at(2), Took: time.Minute, State: "updating", Message: "update in progress; 1 task(s) pending: no suitable node (max replicas per node limit exceed)", Serves: "v1 v1 v1"},
		{Release: "v3", Start: at(64), Took: time.Minute, State: "updating", Message: "update in progress", Serves: "v1 v1 v1"},
		{Rollback: true, Start: at(126), Took: 3 * time.Second, Completed: true, State: "rollback_completed", Message: "rollback completed", Serves: "v1 v1 v1"},
	}}
	start.tally([][]vegeta.Result{{ok(1, "GET")}, {ok(70, "GET")}, {ok(127, "POST")}}, [][]event{nil, nil, nil})

	stop := swarmWayResult{Name: wayStopFirst, Note: "docker service update, stop-first", Port: 8002, Origin: t0, Deploys: []swarmDeploy{
		{Release: "v2", Start: at(2), Took: 20 * time.Second, Completed: true, State: "completed", Message: "update completed", Serves: "v2 v2 v2"},
		{Release: "v3", Start: at(24), Took: 8 * time.Second, State: "rollback_completed", Message: "update rolled back due to failure or early termination of task", Serves: "v2 v2 v2"},
		{Rollback: true, Start: at(34), Took: 20 * time.Second, Completed: true, State: "rollback_completed", Serves: "v2 v2 v2"},
	}}
	stop.tally([][]vegeta.Result{
		{ok(1, "GET"), cut(3, "GET", refused), cut(3.5, "POST", `Post "http://192.168.213.11:8002/echo": EOF`), {Method: "GET", Timestamp: at(4), Code: 502}},
		{ok(25, "GET"), cut(26, "GET", "read tcp 192.168.213.254:4->192.168.213.12:8002: read: connection reset by peer")},
		{ok(50, "GET")},
	}, [][]event{
		{{Kind: "slow", Start: at(2), End: at(3), Err: "502 Bad Gateway"}, {Kind: "ws", Start: at(1), End: at(4), Err: "failed to WebSocket dial: " + refused}},
		{{Kind: "sse", Start: at(20), End: at(25), Err: "unexpected EOF"}},
		{{Kind: "slow", Start: at(60), End: at(62), Complete: true}},
	})
	rep.Ways = []swarmWayResult{h, start, stop}
	return rep
}

// tally sorts each request into its way's deploy, node and kind; the table gives a
// row per way with its deploys completed, failures by kind and notes; the chart
// parses and has its panels.
func TestSwarmReport(t *testing.T) {
	rep := swarmFixture(t)
	h, start, stop := rep.Ways[0], rep.Ways[1], rep.Ways[2]
	require.Equal(t, 5, requests(h.Total))
	require.Zero(t, failed(h.Total))
	require.Equal(t, []int{2, 1, 1}, []int{requests(h.Deploys[0].Counts), requests(h.Deploys[1].Counts), requests(h.Deploys[2].Counts)}, "by when each ended: the WebSocket ended at 9 s, in v2's deploy")
	require.Equal(t, 3, requests(h.Nodes[0]))

	require.Equal(t, 11, requests(stop.Total))
	require.Equal(t, 7, failed(stop.Total))
	require.Equal(t, map[string]int{"refused": 2, "EOF": 2, "reset": 1, "5xx": 2}, stop.Failed)
	require.Equal(t, []int{5, 2, 0}, []int{failed(stop.Nodes[0]), failed(stop.Nodes[1]), failed(stop.Nodes[2])})
	require.Equal(t, 5, failed(stop.Deploys[0].Counts), "node 1's failures ended while v2 was deployed")
	require.Equal(t, 2, failed(stop.Deploys[1].Counts))
	require.Equal(t, []mark{{Deploy: 1, Phase: "completed", From: 2, To: 22}, {Deploy: 2, Phase: "not completed", From: 24, To: 32}, {Deploy: 3, Phase: "rollback", From: 34, To: 54}}, stop.Marks)
	var conn, s5xx, cutN int
	for _, s := range stop.Timeline {
		conn, s5xx, cutN = conn+s.ConnErr, s5xx+s.S5xx, cutN+s.Cut
	}
	require.Equal(t, []int{3, 1, 3}, []int{conn, s5xx, cutN})

	done, tried, rb := start.completed()
	require.Equal(t, []any{0, 2, true}, []any{done, tried, rb})

	md := rep.markdown()
	t.Log("\n" + md)
	require.Contains(t, md, "| **handoff** | 2 of 2 + rollback (10s) | 5 | **0** | 0.000% | — | 11s / 11s | every deploy completed |")
	require.Contains(t, md, `| **swarm start-first** | 0 of 2 + rollback (3s) | 3 | **0** | 0.000% | — | — | 2 did not complete in 1m0s (first: v2, updating: "update in progress; 1 task(s) pending: no suitable node (max replicas per node limit exceed)") |`)
	require.Contains(t, md, "| **swarm stop-first** | 1 of 2 + rollback (20s) | 11 | **7** | 63.636% | refused 2, reset 1, EOF 2, 5xx 2 | 20s / 20s | 1 rolled back by Swarm's failure action (first: v3, rollback_completed: \"update rolled back due to failure or early termination of task\") |")
	require.Contains(t, md, "- swarm stop-first: v2 20s, v2 v2 v2, 5/5 failed; v3 **rollback_completed** after 8s, v2 v2 v2, 2/3 failed; rollback 20s, v2 v2 v2, 0/1 failed")
	require.Contains(t, md, "swarm stop-first: node 1 6 / 5, node 2 3 / 2, node 3 2 / 0.")
	require.Contains(t, md, "Failed by part of the load (GET / POST / slow / SSE / WebSocket): handoff: 0 / 0 / 0 / 0 / 0. swarm start-first: 0 / 0 / 0 / 0 / 0. swarm stop-first: 3 / 1 / 1 / 1 / 1.")

	start.NotTried = 8
	rep.Ways[1] = start
	require.Contains(t, rep.markdown(), "| **swarm start-first** | 0 of 10 (8 not tried) + rollback (3s) |")

	svg, err := swarmChart(rep)
	require.NoError(t, err)
	texts, root := svgTexts(t, svg)
	require.Equal(t, "svg", root)
	joined := strings.Join(texts, "\n")
	for _, want := range []string{"failed requests of each way, in all (log scale)", "handoff: failures per second (0 of 5 requests failed)",
		"swarm stop-first: failures per second (7 of 11 requests failed)", "7 of 11 (1 of 2 deploys completed)", "deploy not completed", "deploy rollback"} {
		require.Contains(t, joined, want)
	}
}

func TestFailureKind(t *testing.T) {
	cases := []struct {
		code int
		err  string
		want string
	}{
		{502, "", "5xx"},
		{404, "", "other status"},
		{0, "503 Service Unavailable", "5xx"},
		{0, "failed to WebSocket dial: expected handshake response status code 101 but got 502", "5xx"},
		{0, `Get "http://192.168.213.11:8001/": dial tcp 192.168.213.11:8001: connect: connection refused`, "refused"},
		{0, "unexpected EOF", "EOF"},
		{0, "failed to get reader: failed to read frame header: EOF", "EOF"},
		{0, "stream ended without its end event", "other"},
	}
	for _, c := range cases {
		require.Equal(t, c.want, failureKind(c.code, c.err), "%d %q", c.code, c.err)
	}
}

// The committed run's swarm.md is what this code makes of its swarm.json;
// HANDOFF_BENCH_SWARM_REPORT=DIR writes DIR's swarm.md and swarm.svg again from its
// swarm.json instead: the figures of a run are kept, its words and chart follow the
// report.
func TestSwarmReportFromJSON(t *testing.T) {
	if dir := os.Getenv("HANDOFF_BENCH_SWARM_REPORT"); dir != "" {
		swarmReportFromJSON(t, dir, true)
		return
	}
	for _, run := range []string{"2026-12-04-swarm-run1", "2026-12-04-swarm-run2"} {
		t.Run(run, func(t *testing.T) { swarmReportFromJSON(t, filepath.Join("results", run), false) })
	}
}

func swarmReportFromJSON(t *testing.T, dir string, rewrite bool) {
	data, err := os.ReadFile(filepath.Join(dir, "swarm.json"))
	require.NoError(t, err)
	var rep swarmReport
	require.NoError(t, json.Unmarshal(data, &rep))
	require.NotEmpty(t, rep.Ways)
	md := rep.markdown()
	svg, err := swarmChart(rep)
	require.NoError(t, err)
	if rewrite {
		require.NoError(t, os.WriteFile(filepath.Join(dir, "swarm.md"), []byte(md), 0o644))
		require.NoError(t, os.WriteFile(filepath.Join(dir, "swarm.svg"), svg, 0o644))
		return
	}
	committed, err := os.ReadFile(filepath.Join(dir, "swarm.md"))
	require.NoError(t, err)
	require.Equal(t, string(committed), md, "%s/swarm.md is not what the report makes of its swarm.json: write it again with HANDOFF_BENCH_SWARM_REPORT=%s go test -run TestSwarmReportFromJSON ./bench", dir, dir)
	texts, root := svgTexts(t, svg)
	require.Equal(t, "svg", root)
	for _, w := range rep.Ways {
		require.Contains(t, strings.Join(texts, "\n"), w.Name+": failures per second")
	}
}
