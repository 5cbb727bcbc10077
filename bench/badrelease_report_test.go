package bench

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"

	"github.com/handoff-dev/handoff/internal/deploy"
)

// The bad-release benchmark's report: a Markdown table, its JSON, and a
// chart of the users hurt and the time the bad release got traffic, way
// by way.

// tally is what the users got over a case's span, by request sent.
type tally struct {
	Requests int       `json:"requests"`       // every GET / sent in the span
	ToBad    int       `json:"to_bad_release"` // answered by the release judged
	Failed   int       `json:"failed"`         // its answers that were not 2xx
	Slow     int       `json:"slow"`           // its 2xx answers slower than the case's SlowOver
	Other    int       `json:"other_failures"` // failures not its own: connection errors, the proxy's own 5xx, the old release's
	First    time.Time `json:"first_answer"`   // its first answer
	Last     time.Time `json:"last_answer"`    // and its last
	// Latency is its 2xx answers', as the client saw them: what the slow
	// threshold is to be read against.
	Latency latency `json:"latency"`
}

// Hurt counts its users' requests that failed or were slow.
func (c tally) Hurt() int { return c.Failed + c.Slow }

// Traffic is how long the release got traffic: its first to last answer.
func (c tally) Traffic() time.Duration {
	if c.ToBad == 0 {
		return 0
	}
	return c.Last.Sub(c.First)
}

// count tallies the hits sent from from to to; release is the one judged
// and slowOver (0: none) the latency past which its answer counts as slow.
func count(hits []hit, from, to time.Time, release string, slowOver time.Duration) tally {
	var c tally
	var answered []time.Duration
	for _, h := range hits {
		if h.At.Before(from) || h.At.After(to) {
			continue
		}
		c.Requests++
		if h.Release != release {
			if !h.ok() {
				c.Other++
			}
			continue
		}
		c.ToBad++
		if at := h.answered(); c.First.IsZero() || at.Before(c.First) {
			c.First = at
		}
		if at := h.answered(); at.After(c.Last) {
			c.Last = at
		}
		if h.ok() {
			answered = append(answered, h.Latency)
		}
		switch {
		case !h.ok():
			c.Failed++
		case slowOver > 0 && h.Latency > slowOver:
			c.Slow++
		}
	}
	c.Latency = percentiles(answered)
	return c
}

// badCase is one bad release deployed one way.
type badCase struct {
	Kind       string            `json:"release"`
	Way        string            `json:"way"`
	Old        latency           `json:"old_latency"`            // the old release's, client side, before the deploy
	SlowOver   time.Duration     `json:"slow_over_ns,omitempty"` // 0: slowness not counted
	Start      time.Time         `json:"start"`                  // the deploy's command
	End        time.Time         `json:"end"`                    // where counting stopped
	DeployTook time.Duration     `json:"deploy_ns"`
	Exit       int               `json:"exit_code"`
	DecidedBy  string            `json:"decided_by"`
	Analysis   []deploy.Analysis `json:"analysis,omitempty"`
	// HostLoad is the machine's 1-minute load average as the case began
	// and ended: a busy host's tail latency is in every p99.
	HostLoad [2]float64 `json:"host_load"`
	tally
}

func (c badCase) summary() string {
	return fmt.Sprintf("%s, %s: exit %d after %s; %d of %d requests to the bad release, %d failed, %d slow, %d other failures; it got traffic for %s; %s",
		c.Kind, c.Way, c.Exit, c.DeployTook.Round(time.Millisecond), c.ToBad, c.Requests, c.Failed, c.Slow, c.Other, c.Traffic().Round(100*time.Millisecond), c.DecidedBy)
}

// goodCase is a good release through the same canary.
type goodCase struct {
	Steps        []string          `json:"canary_steps"`
	PlainDeploy  time.Duration     `json:"blue_green_deploy_ns"` // the same release, blue/green, just before
	CanaryDeploy time.Duration     `json:"canary_deploy_ns"`
	Exit         int               `json:"exit_code"`
	Promoted     bool              `json:"promoted"`
	Requests     int               `json:"requests"`       // sent during the canary deploy
	ToNew        int               `json:"to_new_release"` //
	Failed       int               `json:"failed"`         // by any release, or the proxy
	Analysis     []deploy.Analysis `json:"analysis,omitempty"`
	Start        time.Time         `json:"start"`
	End          time.Time         `json:"end"`
}

type badReport struct {
	Settings badSettings `json:"settings"`
	Machine  string      `json:"machine"`
	Started  time.Time   `json:"started"`
	Cases    []badCase   `json:"cases"`
	Good     *goodCase   `json:"good,omitempty"`
}

// find is the case of kind deployed way, if it ran.
func (r badReport) find(kind, way string) (badCase, bool) {
	for _, c := range r.Cases {
		if c.Kind == kind && c.Way == way {
			return c, true
		}
	}
	return badCase{}, false
}

func (r badReport) markdown() string {
	var b strings.Builder
	s := r.Settings
	fmt.Fprintf(&b, "Bad releases deployed under load through Caddy → handoff proxy: GET / at %d/s (vegeta), each request with the `handoff_split` cookie of one of %d simulated browsers. Each case a fresh proxy, Caddy and old release (v1, LATENCY=20ms), %s of load on it alone to measure its latency, then the deploy of v2. "+
		"Canary steps %s; watch %s; analysis `max_error_rate: +1%%, max_p99: 1.5x, min_requests: 100, max_wait: 1m`.\n",
		s.Rate, s.Clients, s.Warmup, "`"+strings.Join(s.Steps, ", ")+"`", s.Watch)
	fmt.Fprintf(&b, "Machine: %s. Run: %s.", r.Machine, r.Started.Format(time.RFC3339))
	if s.Short {
		b.WriteString(" **A short run (HANDOFF_BENCH_BAD_SHORT=1): its times prove the benchmark runs, they are not the figures.**")
	}
	b.WriteString("\n\n")
	b.WriteString("| bad release | way | requests to it | failed | slow | hurt | of all requests | it got traffic for | other failures | decided by | exit |\n")
	b.WriteString("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |\n")
	for _, c := range r.Cases {
		share := 0.0
		if c.Requests > 0 {
			share = float64(c.Hurt()) / float64(c.Requests)
		}
		slow := "—"
		if c.SlowOver > 0 {
			slow = fmt.Sprint(c.Slow)
		}
		traffic := c.Traffic().Round(100 * time.Millisecond).String()
		if c.Way == "blue/green" {
			traffic += " (the window)"
		}
		fmt.Fprintf(&b, "| %s | %s | %d | %d | %s | **%d** | %.2f%% of %d | %s | %d | %s | %d |\n",
			c.Kind, c.Way, c.ToBad, c.Failed, slow, c.Hurt(), 100*share, c.Requests, traffic, c.Other, strings.ReplaceAll(c.DecidedBy, "|", "/"), c.Exit)
	}
	b.WriteString("\n")
	for _, k := range badKinds {
		bg, ok1 := r.find(k.Name, "blue/green")
		can, ok2 := r.find(k.Name, "canary")
		if !ok1 || !ok2 {
			continue
		}
		fmt.Fprintf(&b, "- **%s**: blue/green hurt %d requests in its %s window, the canary %d: %s (goal: at least 20× fewer)", k.Name, bg.Hurt(), r.Settings.Window, can.Hurt(), fewer(bg.Hurt(), can.Hurt()))
		if w, ok := r.find(k.Name, "blue/green + watch"); ok {
			fmt.Fprintf(&b, "; the watch %d: %s", w.Hurt(), fewer(bg.Hurt(), w.Hurt()))
		}
		b.WriteString(".")
		if k.Slow {
			fmt.Fprintf(&b, " Counted by the requests it answered instead: blue/green %d, the canary %d (%s)", bg.ToBad, can.ToBad, fewer(bg.ToBad, can.ToBad))
			if w, ok := r.find(k.Name, "blue/green + watch"); ok {
				fmt.Fprintf(&b, ", the watch %d (%s)", w.ToBad, fewer(bg.ToBad, w.ToBad))
			}
			b.WriteString(".")
		}
		if why, ok := can.bound(k.Share); ok {
			fmt.Fprintf(&b, " The canary's bound, its step's weight of the traffic for the time analysis took to decide: %s; measured %d.", why, can.Hurt())
		}
		b.WriteString("\n")
	}
	if g := r.Good; g != nil {
		var verdicts []string
		for _, a := range g.Analysis {
			verdicts = append(verdicts, fmt.Sprintf("step %d (%d%%) %s after %s", a.Step, a.Weight, a.Verdict, a.Duration.Round(time.Second)))
		}
		outcome := "promoted"
		if !g.Promoted {
			outcome = "**not promoted**"
		}
		fmt.Fprintf(&b, "- **a good release through the same canary**: exit %d, %s (%s); %d failed of %d requests sent during the deploy (%d to the new release). The canary deploy took %s, a blue/green deploy of the same release just before %s: the steps add %s.\n",
			g.Exit, outcome, strings.Join(verdicts, ", "), g.Failed, g.Requests, g.ToNew, g.CanaryDeploy.Round(100*time.Millisecond), g.PlainDeploy.Round(100*time.Millisecond), (g.CanaryDeploy - g.PlainDeploy).Round(100*time.Millisecond))
	}
	b.WriteString("\nHow it is counted, from the client side, per request by its send time and its X-Release header:\n\n")
	fmt.Fprintf(&b, "- **failed**: the bad release answered 5xx (or any non-2xx). **slow**: it answered 2xx later than %.1f× the old release's median measured in the warm-up; counted for the slow release only (the failing one has the old one's latency). **hurt** = failed + slow. **of all requests**: hurt over every request sent from the deploy's command to the end of the case.\n", s.SlowOver)
	fmt.Fprintf(&b, "- **it got traffic for**: its first to its last answer. A blue/green deploy without a watch never takes the bad release back: every user is hurt until a person acts, modelled as %s after its first answer (HANDOFF_BENCH_BAD_WINDOW); its row counts that window. The watch and the canary exit 9 by themselves; their rows count until the exit + 1 s.\n", s.Window)
	b.WriteString("- **other failures**: failures not the bad release's own (connection errors, the proxy's own 5xx, the old release's): what the switch back or the abort itself would have cost.\n")
	var thresholds []string
	for _, c := range r.Cases {
		if c.SlowOver > 0 {
			thresholds = append(thresholds, fmt.Sprintf("%s %s / %s → %s (the slow release's %s / %s)", c.Way, ms(c.Old.P50), ms(c.Old.P99), ms(c.SlowOver), ms(c.Latency.P50), ms(c.Latency.P99)))
		}
	}
	var loads []string
	for _, c := range r.Cases {
		loads = append(loads, fmt.Sprintf("%.1f → %.1f", c.HostLoad[0], c.HostLoad[1]))
	}
	if len(loads) > 0 {
		fmt.Fprintf(&b, "- The host's 1-minute load average as each case began and ended, in the table's order: %s.\n", strings.Join(loads, "; "))
	}
	if len(thresholds) > 0 {
		fmt.Fprintf(&b, "- The old release's p50 / p99 before the deploy, the latency past which an answer of the slow release counts as slow, and the slow release's own p50 / p99, case by case: %s.\n", strings.Join(thresholds, "; "))
	}
	return b.String()
}

// ms is a latency for the notes: "24.6ms".
func ms(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond)) }

// bound is the measure of the canary: the deciding step's weight
// of the requests per second, for the time that step took, times the
// share of the bad release's requests that hurt. The split is by client
// (a cookie's or an address's hash, in buckets), so the share the new
// release really got is not its weight exactly: the analysis's own
// counts give it (release / both releases), and the figure at that share
// is said beside the bound.
func (c badCase) bound(share float64) (string, bool) {
	if len(c.Analysis) == 0 || c.Requests == 0 || !c.End.After(c.Start) {
		return "", false
	}
	a := c.Analysis[len(c.Analysis)-1]
	rate := float64(c.Requests) / c.End.Sub(c.Start).Seconds()
	toBad := float64(a.Weight) / 100 * rate * a.Duration.Seconds()
	why := fmt.Sprintf("%d%% of %.0f requests/s for %s = %.0f requests to it", a.Weight, rate, a.Duration.Round(100*time.Millisecond), toBad)
	if share < 1 {
		why += fmt.Sprintf(", of which %.0f%% hurt: %.0f", 100*share, toBad*share)
	}
	if both := a.Release.Requests + a.Baseline.Requests; both > 0 {
		got := float64(a.Release.Requests) / float64(both)
		why += fmt.Sprintf("; the split gave it %.2f%% of the requests (by client, not by request), which makes %.0f", 100*got, got*rate*a.Duration.Seconds()*share)
	}
	return why, true
}

// fewer says how many times fewer requests to hurt than of.
func fewer(of, to int) string {
	switch {
	case to == 0 && of == 0:
		return "neither hurt any"
	case to == 0:
		return "none at all"
	}
	return fmt.Sprintf("%.0f× fewer", float64(of)/float64(to))
}

// wayColors tell the ways apart in the chart.
var wayColors = map[string]color.NRGBA{
	"blue/green":         s5xxColor,
	"blue/green + watch": connColor,
	"canary":             p99Color,
}

// badChart draws two panels: the users hurt, and the time the bad release
// got traffic, both on a log scale, a bar per way for each bad release.
func badChart(r badReport) ([]byte, error) {
	var kinds []string
	for _, k := range badKinds {
		for _, c := range r.Cases {
			if c.Kind == k.Name {
				kinds = append(kinds, k.Name)
				break
			}
		}
	}
	if len(kinds) == 0 {
		return nil, fmt.Errorf("the report has no case")
	}
	hurt, err := barPanel(r, kinds, "requests hurt (failed + slow) before the bad release stopped getting traffic (log scale)", 0.5,
		func(c badCase) (float64, string) { return float64(c.Hurt()), fmt.Sprint(c.Hurt()) })
	if err != nil {
		return nil, err
	}
	traffic, err := barPanel(r, kinds, "seconds the bad release got traffic (log scale)", 0.1,
		func(c badCase) (float64, string) {
			label := c.Traffic().Round(100 * time.Millisecond).String()
			if c.Way == "blue/green" {
				label += " (the window)"
			}
			return c.Traffic().Seconds(), label
		})
	if err != nil {
		return nil, err
	}
	c := vgsvg.New(24*vg.Centimeter, 16*vg.Centimeter)
	drawRows([][]*plot.Plot{{hurt}, {traffic}}, draw.New(c))
	var b bytes.Buffer
	if _, err := c.WriteTo(&b); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// barPanel is one panel: for each kind a group of bars, one per way, each
// from floor (a log scale has no 0) to its value, labelled with it.
func barPanel(r badReport, kinds []string, title string, floor float64, value func(badCase) (float64, string)) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = title
	p.Title.TextStyle.Font.Size = vg.Points(9)
	p.X.Tick.Label.Font.Size, p.Y.Tick.Label.Font.Size = vg.Points(8), vg.Points(7)
	p.Y.Scale, p.Y.Tick.Marker = plot.LogScale{}, plot.LogTicks{Prec: -1}
	p.Legend.Top, p.Legend.Left = true, false
	p.Legend.TextStyle.Font.Size = vg.Points(7)
	const width = 0.25
	top := floor * 10
	var labels plotter.XYLabels
	for wi, way := range badWays {
		var legend *plotter.Polygon
		for ki, kind := range kinds {
			c, ok := r.find(kind, way.Name)
			if !ok {
				continue
			}
			v, label := value(c)
			v = max(v, floor)
			top = max(top, v)
			x := float64(ki) + (float64(wi)-1)*width*1.1
			poly, err := plotter.NewPolygon(plotter.XYs{{X: x - width/2, Y: floor}, {X: x + width/2, Y: floor}, {X: x + width/2, Y: v}, {X: x - width/2, Y: v}})
			if err != nil {
				return nil, err
			}
			poly.Color = wayColors[way.Name]
			poly.LineStyle.Width = 0
			p.Add(poly)
			legend = poly
			labels.XYs = append(labels.XYs, plotter.XY{X: x, Y: v})
			labels.Labels = append(labels.Labels, label)
		}
		if legend != nil {
			p.Legend.Add(way.Name, legend)
		}
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
	p.NominalX(kinds...)
	p.X.Min, p.X.Max = -0.6, float64(len(kinds))-0.4
	p.Y.Min, p.Y.Max = floor, top*4 // room for the labels and the legend
	return p, nil
}

// A fixture report of every case gives a table with a row per case, the
// ratio line, the good release's line, and a chart that parses with both
// panels; count sorts requests as the table says.
func TestBadReleaseReport(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	hits := []hit{
		{At: t0.Add(-time.Second), Code: 500, Release: "v2"},                                // before the case: not counted
		{At: t0, Latency: 20 * time.Millisecond, Code: 200, Release: "v1"},                  // the old release
		{At: t0.Add(time.Second), Latency: 45 * time.Millisecond, Code: 200, Release: "v2"}, // slow
		{At: t0.Add(2 * time.Second), Latency: 20 * time.Millisecond, Code: 500, Release: "v2"},
		{At: t0.Add(3 * time.Second), Latency: 20 * time.Millisecond, Code: 200, Release: "v2"},
		{At: t0.Add(4 * time.Second), Code: 0}, // a connection error
		{At: t0.Add(5 * time.Second), Latency: 20 * time.Millisecond, Code: 502, Release: ""},
		{At: t0.Add(time.Minute), Code: 500, Release: "v2"}, // after: not counted
	}
	c := count(hits, t0, t0.Add(10*time.Second), "v2", 30*time.Millisecond)
	require.Equal(t, tally{Requests: 6, ToBad: 3, Failed: 1, Slow: 1, Other: 2, First: t0.Add(time.Second + 45*time.Millisecond), Last: t0.Add(3*time.Second + 20*time.Millisecond),
		Latency: latency{P50: 45 * time.Millisecond, P99: 45 * time.Millisecond, Max: 45 * time.Millisecond}}, c)
	require.Equal(t, 2, c.Hurt())
	require.Equal(t, 1975*time.Millisecond, c.Traffic())

	rep := badReport{Settings: badSettings{Rate: 300, Clients: 1000, Warmup: 20 * time.Second, Window: 2 * time.Minute, Watch: 2 * time.Minute, Steps: []string{"5% 2m"}, SlowOver: 1.5}, Machine: "fixture", Started: t0}
	span := func(c badCase, d time.Duration, requests, toBad, failed, slow int) badCase {
		c.Start, c.End = t0, t0.Add(d)
		c.tally = tally{Requests: requests, ToBad: toBad, Failed: failed, Slow: slow, First: t0, Last: t0.Add(d)}
		return c
	}
	step := deploy.Analysis{Phase: deploy.PhaseCanary, Step: 1, Weight: 5, Duration: 8 * time.Second, Release: deploy.Window{Requests: 100}, Baseline: deploy.Window{Requests: 1900}, Verdict: deploy.VerdictFail, Reason: "error rate 6.00% (6 of 100) against 0.00% (0 of 1900) for the baseline: more than 1 percentage points over"}
	rep.Cases = []badCase{
		span(badCase{Kind: "fails 5%", Way: "blue/green", DecidedBy: "nobody: a person acts after 2m0s"}, 2*time.Minute, 36000, 36000, 1800, 0),
		span(badCase{Kind: "fails 5%", Way: "blue/green + watch", Exit: 9, DecidedBy: "watch after 1s: fail: …"}, 5*time.Second, 1500, 400, 20, 0),
		span(badCase{Kind: "fails 5%", Way: "canary", Exit: 9, DecidedBy: "step 1 (5%) after 8s: fail: …", Analysis: []deploy.Analysis{step}}, 10*time.Second, 3000, 120, 6, 0),
		span(badCase{Kind: "latency doubles", Way: "blue/green", Old: latency{P50: 21 * time.Millisecond, P99: 24600 * time.Microsecond}, SlowOver: 31500 * time.Microsecond}, 2*time.Minute, 36000, 36000, 0, 35000),
		span(badCase{Kind: "latency doubles", Way: "blue/green + watch", SlowOver: 37 * time.Millisecond, Exit: 9}, 5*time.Second, 1500, 400, 0, 390),
		span(badCase{Kind: "latency doubles", Way: "canary", SlowOver: 37 * time.Millisecond, Exit: 9}, 10*time.Second, 3000, 0, 0, 0),
	}
	rep.Good = &goodCase{Steps: []string{"5% 2m"}, PlainDeploy: 3 * time.Second, CanaryDeploy: 125 * time.Second, Promoted: true, Requests: 37000, ToNew: 2000,
		Analysis: []deploy.Analysis{{Phase: deploy.PhaseCanary, Step: 1, Weight: 5, Duration: 2 * time.Minute, Verdict: deploy.VerdictPass}}}

	md := rep.markdown()
	t.Log("\n" + md)
	require.Contains(t, md, "| fails 5% | blue/green | 36000 | 1800 | — | **1800** | 5.00% of 36000 | 2m0s (the window) | 0 | nobody: a person acts after 2m0s | 0 |")
	require.Contains(t, md, "| latency doubles | canary | 0 | 0 | 0 | **0** | 0.00% of 3000 | 0s | 0 |")
	require.Contains(t, md, "- **fails 5%**: blue/green hurt 1800 requests in its 2m0s window, the canary 6: 300× fewer (goal: at least 20× fewer); the watch 20: 90× fewer.")
	require.Contains(t, md, "5% of 300 requests/s for 8s = 120 requests to it, of which 5% hurt: 6; the split gave it 5.00% of the requests (by client, not by request), which makes 6; measured 6.")
	require.Contains(t, md, "case by case: blue/green 21.0ms / 24.6ms → 31.5ms (the slow release's 0.0ms / 0.0ms); blue/green + watch 0.0ms / 0.0ms → 37.0ms")
	require.Contains(t, md, "Counted by the requests it answered instead: blue/green 36000, the canary 0 (none at all), the watch 400 (90× fewer).")
	require.Contains(t, md, "the canary 0: none at all (goal: at least 20× fewer)")
	require.Contains(t, md, "exit 0, promoted (step 1 (5%) pass after 2m0s); 0 failed of 37000 requests sent during the deploy (2000 to the new release). The canary deploy took 2m5s, a blue/green deploy of the same release just before 3s: the steps add 2m2s.")

	svg, err := badChart(rep)
	require.NoError(t, err)
	texts, root := svgTexts(t, svg)
	require.Equal(t, "svg", root)
	joined := strings.Join(texts, "\n")
	for _, want := range []string{"requests hurt (failed + slow) before the bad release stopped getting traffic (log scale)", "seconds the bad release got traffic (log scale)", "fails 5%", "latency doubles", "blue/green + watch", "1800", "35000"} {
		require.Contains(t, joined, want)
	}
}

// HANDOFF_BENCH_BAD_REPORT=DIR writes DIR's bad-release.md and .svg again
// from its bad-release.json, as this code reports them: the figures of a
// run are kept, its words and chart follow the report.
func TestBadReleaseReportFromJSON(t *testing.T) {
	dir := os.Getenv("HANDOFF_BENCH_BAD_REPORT")
	if dir == "" {
		t.Skip("set HANDOFF_BENCH_BAD_REPORT to a directory with a bad-release.json")
	}
	data, err := os.ReadFile(filepath.Join(dir, "bad-release.json"))
	require.NoError(t, err)
	var rep badReport
	require.NoError(t, json.Unmarshal(data, &rep))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "bad-release.md"), []byte(rep.markdown()), 0o644))
	svg, err := badChart(rep)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "bad-release.svg"), svg, 0o644))
}
