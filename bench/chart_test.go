package bench

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"image/color"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"
)

// The chart of a deploy benchmark: for each strategy, side by side on the
// same axes, three strips over the run — requests answered per second,
// failures per second by kind, p99 latency — with each deploy's phases
// shaded behind them. Drawn from the benchmark's own JSON (deploy.json).

// phaseColors shade the spans of a deploy.
var phaseColors = map[string]color.NRGBA{
	"deploy":     {R: 120, G: 120, B: 120, A: 60}, // a strategy that records no phases
	"restart":    {R: 200, G: 60, B: 160, A: 70},  // handoff proxy restarting itself
	"image":      {R: 160, G: 160, B: 160, A: 60},
	"pre_deploy": {R: 160, G: 160, B: 160, A: 60},
	"release":    {R: 150, G: 110, B: 200, A: 70},
	"start":      {R: 110, G: 110, B: 110, A: 70},
	"health":     {R: 230, G: 190, B: 40, A: 80},
	"switch":     {R: 30, G: 110, B: 230, A: 200},
	"drain":      {R: 60, G: 170, B: 80, A: 80},
	"retire":     {R: 150, G: 90, B: 40, A: 90},
}

var phaseOrder = []string{"deploy", "restart", "release", "start", "health", "switch", "drain", "retire"}

var (
	okColor   = color.NRGBA{R: 20, G: 20, B: 20, A: 255}
	s5xxColor = color.NRGBA{R: 220, G: 30, B: 30, A: 255}
	connColor = color.NRGBA{R: 240, G: 130, B: 0, A: 255}
	cutColor  = color.NRGBA{R: 140, G: 40, B: 170, A: 255}
	p99Color  = color.NRGBA{R: 30, G: 90, B: 200, A: 255}
)

// chart draws r as an SVG.
func chart(r report) ([]byte, error) {
	rows, err := chartRows(r)
	if err != nil {
		return nil, err
	}
	c := vgsvg.New(chartSize(len(rows)))
	drawRows(rows, draw.New(c))
	var b bytes.Buffer
	if _, err := c.WriteTo(&b); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// chartRows makes the strips of every strategy, on the same axes.
func chartRows(r report) ([][]*plot.Plot, error) {
	var xmax, okMax, failMax, p99Max float64 = 1, 1, 1, 1
	for _, st := range r.Strategies {
		for _, s := range st.Timeline {
			xmax = max(xmax, s.T+1)
			okMax = max(okMax, float64(s.OK))
			failMax = max(failMax, float64(s.S5xx), float64(s.ConnErr), float64(s.Cut))
			p99Max = max(p99Max, s.P99)
		}
		for _, m := range st.Marks {
			xmax = max(xmax, m.To)
		}
	}
	var rows [][]*plot.Plot
	for _, st := range r.Strategies {
		totals := failTotal(st)
		if n := len(st.Timeline); n > 1 {
			st.Timeline = st.Timeline[:n-1] // the last second was cut short by the end of the load
		}
		ok, err := strip(fmt.Sprintf("%s: requests answered per second", st.Name), xmax, okMax*1.1, st, true)
		if err != nil {
			return nil, err
		}
		if err := addLine(ok, st.Timeline, func(s second) float64 { return float64(s.OK) }, okColor, "answered (2xx)"); err != nil {
			return nil, err
		}
		fail, err := strip(fmt.Sprintf("%s: failures per second (%s)", st.Name, totals), xmax, failMax*1.1, st, false)
		if err != nil {
			return nil, err
		}
		for _, f := range []struct {
			name string
			c    color.Color
			v    func(second) float64
		}{
			{"5xx", s5xxColor, func(s second) float64 { return float64(s.S5xx) }},
			{"connection errors", connColor, func(s second) float64 { return float64(s.ConnErr) }},
			{"streams cut", cutColor, func(s second) float64 { return float64(s.Cut) }},
		} {
			if err := addLine(fail, st.Timeline, f.v, f.c, f.name); err != nil {
				return nil, err
			}
		}
		lat, err := strip(st.Name+": p99 latency (ms)", xmax, p99Max*1.1, st, false)
		if err != nil {
			return nil, err
		}
		if err := addLine(lat, st.Timeline, func(s second) float64 { return s.P99 }, p99Color, "p99"); err != nil {
			return nil, err
		}
		lat.X.Label.Text = "seconds since the load started"
		rows = append(rows, []*plot.Plot{ok}, []*plot.Plot{fail}, []*plot.Plot{lat})
	}
	if len(rows) == 0 {
		return nil, fmt.Errorf("the report has no strategy")
	}
	return rows, nil
}

// chartSize is the chart's width and height for rows strips.
func chartSize(rows int) (vg.Length, vg.Length) {
	return 30 * vg.Centimeter, 4.2 * vg.Centimeter * vg.Length(rows)
}

// drawRows draws the strips one under the other, their axes aligned.
func drawRows(rows [][]*plot.Plot, dc draw.Canvas) {
	tiles := draw.Tiles{Rows: len(rows), Cols: 1, PadTop: vg.Points(6), PadBottom: vg.Points(4), PadY: vg.Points(8), PadLeft: vg.Points(4), PadRight: vg.Points(8)}
	canvases := plot.Align(rows, tiles, dc)
	for i := range rows {
		rows[i][0].Draw(canvases[i][0])
	}
}

// strip is one row: the title, the shared axes, and the deploys' phases
// shaded behind (with their legend on the first row of the chart).
func strip(title string, xmax, ymax float64, st strategyResult, legend bool) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = title
	p.Title.TextStyle.Font.Size = vg.Points(9)
	p.X.Min, p.X.Max, p.Y.Min, p.Y.Max = 0, xmax, 0, ymax
	p.X.Tick.Label.Font.Size, p.Y.Tick.Label.Font.Size = vg.Points(7), vg.Points(7)
	p.Legend.Top, p.Legend.Left = true, false
	p.Legend.TextStyle.Font.Size = vg.Points(7)
	shown := map[string]*plotter.Polygon{}
	for _, m := range st.Marks {
		col, ok := phaseColors[m.Phase]
		if !ok {
			continue
		}
		to := max(m.To, m.From+0.15) // a 5 ms switch still shows
		poly, err := plotter.NewPolygon(plotter.XYs{{X: m.From, Y: 0}, {X: to, Y: 0}, {X: to, Y: ymax}, {X: m.From, Y: ymax}})
		if err != nil {
			return nil, err
		}
		poly.Color = col
		poly.LineStyle.Width = 0
		p.Add(poly)
		shown[m.Phase] = poly
	}
	if legend {
		for _, name := range phaseOrder {
			if poly, ok := shown[name]; ok {
				p.Legend.Add(name, poly)
			}
		}
	}
	return p, nil
}

func addLine(p *plot.Plot, tl []second, v func(second) float64, c color.Color, name string) error {
	xys := make(plotter.XYs, len(tl))
	for i, s := range tl {
		xys[i] = plotter.XY{X: s.T + 0.5, Y: v(s)}
	}
	if len(xys) == 0 {
		return nil
	}
	l, err := plotter.NewLine(xys)
	if err != nil {
		return err
	}
	l.Color = c
	l.Width = vg.Points(0.8)
	p.Add(l)
	p.Legend.Add(name, l)
	return nil
}

func failTotal(st strategyResult) string {
	var s5xx, conn, cut int
	for _, s := range st.Timeline {
		s5xx, conn, cut = s5xx+s.S5xx, conn+s.ConnErr, cut+s.Cut
	}
	return fmt.Sprintf("%d 5xx, %d connection errors, %d streams cut in all", s5xx, conn, cut)
}

// writeChart draws the report next to its JSON: deploy.svg.
func writeChart(t *testing.T, r report, dir string) {
	svg, err := chart(r)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "deploy.svg"), svg, 0o644))
}

// The chart is drawn from the benchmark's own JSON: a small fixture run
// of two strategies gives an SVG that parses, with one panel (three
// strips) per strategy. HANDOFF_BENCH_CHART=path/deploy.json draws the
// chart of an earlier run next to it.
func TestChartFromTheBenchmarksJSON(t *testing.T) {
	path := os.Getenv("HANDOFF_BENCH_CHART")
	if path == "" {
		path = filepath.Join("testdata", "deploy-fixture.json")
	}
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	var r report
	require.NoError(t, json.Unmarshal(data, &r))
	svg, err := chart(r)
	require.NoError(t, err)

	texts, root := svgTexts(t, svg)
	require.Equal(t, "svg", root)
	for _, st := range r.Strategies {
		for _, strip := range []string{st.Name + ": requests answered per second", st.Name + ": failures per second", st.Name + ": p99 latency (ms)"} {
			n := 0
			for _, text := range texts {
				if strings.HasPrefix(text, strip) {
					n++
				}
			}
			require.Equal(t, 1, n, "one %q strip in the chart", strip)
		}
	}
	if os.Getenv("HANDOFF_BENCH_CHART") != "" {
		writeChart(t, r, filepath.Dir(path))
		t.Logf("wrote %s", filepath.Join(filepath.Dir(path), "deploy.svg"))
	}
}

// svgTexts parses an SVG document and returns its text elements' contents
// and its root element's name.
func svgTexts(t *testing.T, svg []byte) ([]string, string) {
	dec := xml.NewDecoder(bytes.NewReader(svg))
	var texts []string
	root, inText := "", false
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		require.NoError(t, err, "the chart is not well-formed XML")
		switch el := tok.(type) {
		case xml.StartElement:
			if root == "" {
				root = el.Name.Local
			}
			inText = el.Name.Local == "text"
		case xml.CharData:
			if inText {
				texts = append(texts, strings.TrimSpace(string(el)))
			}
		case xml.EndElement:
			inText = false
		}
	}
	return texts, root
}
