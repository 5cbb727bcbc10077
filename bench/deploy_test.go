// Package bench measures deploys under load: the same app, the same load,
// the same Caddy, deployed N times by each strategy (restart, script,
// handoff). Run it with `make bench-deploy`; it writes a Markdown table and
// a JSON file. It is a benchmark that prints figures, not a timed test:
// it fails only when a strategy cannot run at all.
package bench

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/deploy"
	"github.com/handoff-dev/handoff/internal/itest"
)

// Settings, from the environment so that `make bench-deploy` and CI's short
// run can set them.
type settings struct {
	Deploys  int           // HANDOFF_BENCH_DEPLOYS; 0 skips the benchmark
	Boot     time.Duration // HANDOFF_BENCH_BOOT: the app's boot time
	Out      string        // HANDOFF_BENCH_OUT: where the table and JSON go
	Pause    time.Duration // steady state between two deploys
	AppGrace time.Duration // HANDOFF_BENCH_APP_GRACE: how long the app finishes requests after SIGTERM
	Load     loadSettings
	Strategy string // HANDOFF_BENCH_ONLY: run one strategy
}

func readSettings(t *testing.T) settings {
	s := settings{Boot: 3 * time.Second, Out: "bench-results", Pause: 2 * time.Second,
		Load: loadSettings{GetRate: 300, PostRate: 100, Connections: 8, SlowLoops: 3, SlowFor: 2 * time.Second, StreamFor: 8 * time.Second}}
	if v := os.Getenv("HANDOFF_BENCH_DEPLOYS"); v != "" {
		n, err := strconv.Atoi(v)
		require.NoError(t, err)
		s.Deploys = n
	}
	if v := os.Getenv("HANDOFF_BENCH_BOOT"); v != "" {
		d, err := time.ParseDuration(v)
		require.NoError(t, err)
		s.Boot = d
	}
	if v := os.Getenv("HANDOFF_BENCH_OUT"); v != "" {
		s.Out = v
	}
	if v := os.Getenv("HANDOFF_BENCH_APP_GRACE"); v != "" {
		d, err := time.ParseDuration(v)
		require.NoError(t, err)
		s.AppGrace = d
	}
	s.Strategy = os.Getenv("HANDOFF_BENCH_ONLY")
	return s
}

func TestDeployUnderLoad(t *testing.T) {
	set := readSettings(t)
	if set.Deploys == 0 {
		t.Skip("a benchmark: set HANDOFF_BENCH_DEPLOYS=N, or run `make bench-deploy`")
	}
	rep := report{Settings: set, Machine: machine(), Started: time.Now().UTC()}
	for _, st := range strategies {
		if set.Strategy != "" && st.Name != set.Strategy {
			continue
		}
		t.Run(st.Name, func(t *testing.T) {
			rep.Strategies = append(rep.Strategies, runStrategy(t, set, st))
		})
	}
	md := rep.markdown()
	t.Log("\n" + md)
	require.NoError(t, os.MkdirAll(set.Out, 0o755))
	data, err := json.MarshalIndent(rep, "", "  ")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(set.Out, "deploy.json"), data, 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(set.Out, "deploy.md"), []byte(md), 0o644))
	abs, _ := filepath.Abs(set.Out)
	t.Logf("wrote %s/deploy.md and deploy.json", abs)
}

// runStrategy sets up a fresh Caddy and app, puts the load on, deploys
// N times with steady state between, and measures.
func runStrategy(t *testing.T, set settings, st strategy) strategyResult {
	s := itest.NewScenario(t, itest.ScenarioOptions{})
	b := &bench{t: t, s: s, boot: set.Boot, grace: set.AppGrace, liveID: s.Service + "-byhand", livePod: s.UserPort}
	maxDuration := time.Duration(set.Deploys)*(set.Boot+set.Pause+40*time.Second) + time.Minute
	load := startLoad(s.Caddy.URL, itest.SiteHost, set.Load, maxDuration)
	time.Sleep(set.Pause)

	var windows []window
	for i := 1; i <= set.Deploys; i++ {
		w := window{Start: time.Now()}
		st.deploy(b, i)
		w.End = time.Now()
		windows = append(windows, w)
		t.Logf("%s deploy %d: %s", st.Name, i, w.End.Sub(w.Start).Round(time.Millisecond))
		time.Sleep(set.Pause)
	}
	results, events := load.stop()
	res := measure(st, set, windows, results, events)
	if st.Name == "handoff" {
		res.Drain = medianDrain(t, s)
	}
	return res
}

// medianDrain reads handoff's own history for how long its drains waited.
func medianDrain(t *testing.T, s *itest.Scenario) time.Duration {
	r := s.Run("history", "--json", "-n", "1000")
	require.Equal(t, 0, r.Code, r.String())
	var recs []deploy.Record
	require.NoError(t, json.Unmarshal([]byte(r.Stdout), &recs))
	var drains []time.Duration
	for _, rec := range recs {
		for _, p := range rec.Phases {
			if p.Name == deploy.PhaseDrain {
				drains = append(drains, p.Duration)
			}
		}
	}
	return percentiles(drains).P50
}

func machine() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s, %d cores, %s/%s, %s", host, runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version())
}
