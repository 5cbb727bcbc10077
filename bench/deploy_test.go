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
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	vegeta "github.com/tsenart/vegeta/v12/lib"

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
	Strategy string // HANDOFF_BENCH_ONLY: run these strategies only (names, comma-separated)
	Restarts int    // restarts of handoff proxy under load, after its deploys
}

func readSettings(t *testing.T) settings {
	s := settings{Boot: 3 * time.Second, Out: "bench-results", Pause: 2 * time.Second, Restarts: 3,
		Load: loadSettings{GetRate: 300, PostRate: 100, Connections: 8, SlowLoops: 3, SlowFor: 2 * time.Second, StreamFor: 8 * time.Second}}
	envInt(t, "HANDOFF_BENCH_DEPLOYS", &s.Deploys)
	envDuration(t, "HANDOFF_BENCH_BOOT", &s.Boot)
	if v := os.Getenv("HANDOFF_BENCH_OUT"); v != "" {
		s.Out = v
	}
	envDuration(t, "HANDOFF_BENCH_APP_GRACE", &s.AppGrace)
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
		if set.Strategy != "" && !slices.Contains(strings.Split(set.Strategy, ","), st.Name) {
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
	writeChart(t, rep, set.Out)
	abs, _ := filepath.Abs(set.Out)
	t.Logf("wrote %s/deploy.md, deploy.json and deploy.svg", abs)
}

// runStrategy sets up a fresh Caddy and app, puts the load on, deploys
// N times with steady state between, and measures.
func runStrategy(t *testing.T, set settings, st strategy) strategyResult {
	// The proxy's handover deadline is the drain deadline of its deploys:
	// streams shorter than it must survive a restart too.
	s := itest.NewScenario(t, itest.ScenarioOptions{HandoffProxy: st.viaProxy(), Handover: 15 * time.Second})
	b := &bench{t: t, s: s, boot: set.Boot, grace: set.AppGrace, liveID: s.Service + "-byhand", livePod: s.UserPort}
	if st.Replicas > 1 {
		b.extra = "replicas: " + itest.Itoa(st.Replicas) + "\n"
	}
	if st.viaProxy() {
		b.handoff(0) // the first deploy creates the service in the proxy
	}
	maxDuration := time.Duration(set.Deploys)*(set.Boot+set.Pause+40*time.Second) + 2*time.Minute
	origin := time.Now()
	load := startLoad(s.Caddy.URL, itest.SiteHost, set.Load, maxDuration)
	time.Sleep(set.Pause)
	var cpu0 time.Duration
	cpuStart := time.Now()
	if st.viaProxy() {
		cpu0 = cpuTime(t, s.Proxy.PID())
	}

	var windows []window
	for i := 1; i <= set.Deploys; i++ {
		w := window{Start: time.Now()}
		st.deploy(b, i)
		w.End = time.Now()
		windows = append(windows, w)
		t.Logf("%s deploy %d: %s", st.Name, i, w.End.Sub(w.Start).Round(time.Millisecond))
		time.Sleep(set.Pause)
	}
	var proxyCPU time.Duration
	var proxyRSS int64
	cpuEnd := time.Now()
	if st.viaProxy() {
		proxyCPU, proxyRSS = cpuTime(t, s.Proxy.PID())-cpu0, peakRSS(t, s.Proxy.PID())
		// The proxy's own restart, under the same load.
		for range set.Restarts {
			w := window{Start: time.Now(), Restart: true}
			s.Proxy.Restart()
			w.End = time.Now()
			windows = append(windows, w)
			t.Logf("%s: proxy restart: %s", st.Name, w.End.Sub(w.Start).Round(time.Millisecond))
			time.Sleep(set.Pause)
		}
	}
	results, events := load.stop()
	res := measure(st, set, windows, results, events)
	recorded := st.Name != "restart" && st.Name != "script" // handoff keeps a record of its phases
	res.timeline(origin, windows, results, events, recorded)
	if recorded {
		phaseBreakdown(t, s, set, &res)
	}
	if sent := sentBetween(results, cpuStart, cpuEnd); st.viaProxy() && sent > 0 {
		// CPU over the deploys, per request sent meanwhile (the restarts are
		// other processes). Streams and health checks are in the CPU too.
		res.ProxyCPUPerRequest = proxyCPU / time.Duration(sent)
		res.ProxyPeakRSS = proxyRSS
	}
	return res
}

// phaseBreakdown reads handoff's own record of each deploy measured: its
// phases, and what is left of its time once the app's boot and the drain
// (waiting for requests in flight) are taken out, the time handoff adds.
func phaseBreakdown(t *testing.T, s *itest.Scenario, set settings, res *strategyResult) {
	r := s.Run("history", "--json", "-n", "1000")
	require.Equal(t, 0, r.Code, r.String())
	var recs []deploy.Record
	require.NoError(t, json.Unmarshal([]byte(r.Stdout), &recs))
	recs = slices.DeleteFunc(recs, func(r deploy.Record) bool { return r.Kind != deploy.KindDeploy })
	n := min(len(recs), len(res.Deploys))
	recs = recs[:n]
	slices.Reverse(recs) // oldest first, as res.Deploys
	first := len(res.Deploys) - n
	phases := map[string][]time.Duration{}
	var drains, idles []time.Duration
	for i, rec := range recs {
		d := &res.Deploys[first+i]
		d.Phases = map[string]time.Duration{}
		var sum time.Duration
		for _, p := range rec.Phases {
			d.Phases[p.Name] += p.Duration
			sum += p.Duration
		}
		d.Phases["outside phases"] = d.Took - sum // process start, lock, survey, records
		for name, v := range d.Phases {
			phases[name] = append(phases[name], v)
		}
		d.Idle = d.Took - set.Boot - d.Phases[deploy.PhaseDrain]
		res.markPhases(first+i+1, rec)
		drains = append(drains, d.Phases[deploy.PhaseDrain])
		idles = append(idles, d.Idle)
	}
	res.Drain, res.Idle = percentiles(drains).P50, percentiles(idles).P50
	res.Phases = map[string]time.Duration{}
	for name, ds := range phases {
		res.Phases[name] = percentiles(ds).P50
	}
}

func sentBetween(results []vegeta.Result, start, end time.Time) int {
	n := 0
	for _, r := range results {
		if r.Timestamp.After(start) && r.Timestamp.Before(end) {
			n++
		}
	}
	return n
}

// cpuTime is the user+system CPU a process has used, from /proc.
func cpuTime(t *testing.T, pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	require.NoError(t, err)
	_, rest, _ := strings.Cut(string(b), ") ")
	f := strings.Fields(rest)
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	const clockTicks = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / clockTicks
}

// peakRSS is a process's peak resident memory (VmHWM), in bytes.
func peakRSS(t *testing.T, pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(t, err)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// envInt sets *n from the environment variable key, when it is set.
func envInt(t *testing.T, key string, n *int) {
	if v := os.Getenv(key); v != "" {
		i, err := strconv.Atoi(v)
		require.NoError(t, err, key)
		*n = i
	}
}

// envDuration sets *d from the environment variable key, when it is set.
func envDuration(t *testing.T, key string, d *time.Duration) {
	if v := os.Getenv(key); v != "" {
		x, err := time.ParseDuration(v)
		require.NoError(t, err, key)
		*d = x
	}
}

func machine() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s, %d cores, %s/%s, %s", host, runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version())
}
