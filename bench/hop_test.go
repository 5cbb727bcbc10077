package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/itest"
)

// The hop benchmark: what one proxy between the client and the app costs.
// wrk (1 thread, 16 connections) drives the same small Go backend directly
// and through HAProxy (Debian's), Caddy 2.11.9 and handoff proxy, in
// interleaved rounds, with keep-alive and with a new connection per
// request, for a small body and a 64 KiB one. Each proxy's CPU per request
// is read from /proc around each run; its peak memory at the end; and its
// resident memory while 1,000 client connections are open.
//
// `make bench-hop` runs it (HANDOFF_BENCH_HOP=1); it writes bench-results/hop.md and hop.json.

type hopSettings struct {
	Rounds      int           `json:"rounds"`
	Duration    time.Duration `json:"duration_ns"`
	Connections int           `json:"connections"`
	Idle        int           `json:"idle_connections"` // for the memory figure
}

type hopCase struct {
	Name  string `json:"case"`
	Path  string `json:"path"`
	Close bool   `json:"new_connection_per_request"`
}

var hopCases = []hopCase{
	{"keep-alive, small body", "/", false},
	{"keep-alive, 64 KiB body", "/blob", false},
	{"new connection per request, small body", "/", true},
	{"new connection per request, 64 KiB body", "/blob", true},
}

type hopTarget struct {
	Name string
	URL  string
	PID  int // 0: the backend itself (direct)
}

type hopRun struct {
	RPS      float64       `json:"rps"`
	P50      time.Duration `json:"p50_ns"`
	P99      time.Duration `json:"p99_ns"`
	Requests int64         `json:"requests"`
	CPU      time.Duration `json:"proxy_cpu_ns"` // the proxy process's user+system CPU during the run
}

func (r hopRun) cpuPerRequest() time.Duration {
	if r.Requests == 0 {
		return 0
	}
	return r.CPU / time.Duration(r.Requests)
}

type hopCell struct {
	Target        string        `json:"target"`
	Runs          []hopRun      `json:"runs"`
	RPS           float64       `json:"median_rps"`
	P50           time.Duration `json:"median_p50_ns"`
	P99           time.Duration `json:"median_p99_ns"`
	CPUPerRequest time.Duration `json:"median_cpu_per_request_ns"`
}

type hopReport struct {
	Settings hopSettings          `json:"settings"`
	Machine  string               `json:"machine"`
	Started  time.Time            `json:"started"`
	Versions map[string]string    `json:"versions"`
	Cases    map[string][]hopCell `json:"cases"`
	PeakRSS  map[string]int64     `json:"peak_rss_bytes"`
	IdleRSS  map[string]int64     `json:"rss_with_idle_connections_bytes"`
	IdleAnon map[string]int64     `json:"anonymous_with_idle_connections_bytes"` // RSS less the program's file pages
}

func TestHop(t *testing.T) {
	if os.Getenv("HANDOFF_BENCH_HOP") == "" {
		t.Skip("a benchmark: set HANDOFF_BENCH_HOP=1, or run `make bench-hop`")
	}
	set := hopSettings{Rounds: 3, Duration: 8 * time.Second, Connections: 16, Idle: 1000}
	envInt(t, "HANDOFF_BENCH_HOP_ROUNDS", &set.Rounds)
	envDuration(t, "HANDOFF_BENCH_HOP_DURATION", &set.Duration)
	out := os.Getenv("HANDOFF_BENCH_OUT")
	if out == "" {
		out = "bench-results"
	}
	for _, tool := range []string{"wrk", "haproxy"} {
		_, err := exec.LookPath(tool)
		require.NoError(t, err, "%s is needed: apt-get install wrk haproxy (make bench-hop does)", tool)
	}
	dir := t.TempDir()
	root := itest.RepoRoot(t)
	build(t, root, filepath.Join(dir, "handoff"), "./cmd/handoff")
	build(t, root, filepath.Join(dir, "backend"), "./testapp")

	backendPort := itest.FreePort(t)
	start(t, dir, "backend", []string{"PORT=" + strconv.Itoa(backendPort), "RELEASE=hop"}, filepath.Join(dir, "backend"))
	backend := "127.0.0.1:" + strconv.Itoa(backendPort)
	waitHTTP(t, "http://"+backend+"/")

	targets := []hopTarget{{Name: "direct", URL: "http://" + backend}}
	targets = append(targets, startHAProxy(t, dir, backend), startCaddy(t, dir, backend), startHandoffProxy(t, dir, backend))
	rep := hopReport{Settings: set, Machine: machine(), Started: time.Now().UTC(), Cases: map[string][]hopCell{},
		PeakRSS: map[string]int64{}, IdleRSS: map[string]int64{}, IdleAnon: map[string]int64{}, Versions: versions(t, dir)}

	runs := map[string]map[string][]hopRun{}
	for round := range set.Rounds {
		for _, c := range hopCases {
			if runs[c.Name] == nil {
				runs[c.Name] = map[string][]hopRun{}
			}
			// Interleaved, and each round in another order, so that a
			// machine getting busier does not favour one of them.
			order := slices.Clone(targets)
			rot := round % len(order)
			order = append(order[rot:], order[:rot]...)
			for _, tg := range order {
				r := wrk(t, tg, c, set)
				runs[c.Name][tg.Name] = append(runs[c.Name][tg.Name], r)
				t.Logf("round %d, %s, %s: %.0f req/s, p50 %s, p99 %s, %s CPU/request", round+1, c.Name, tg.Name, r.RPS, r.P50, r.P99, r.cpuPerRequest())
			}
		}
	}
	for _, c := range hopCases {
		for _, tg := range targets {
			rep.Cases[c.Name] = append(rep.Cases[c.Name], summarize(tg.Name, runs[c.Name][tg.Name]))
		}
	}
	for _, tg := range targets[1:] {
		rep.PeakRSS[tg.Name] = peakRSS(t, tg.PID)
		rep.IdleRSS[tg.Name], rep.IdleAnon[tg.Name] = rssWithIdleConnections(t, tg, set.Idle)
	}
	md := rep.markdown()
	t.Log("\n" + md)
	require.NoError(t, os.MkdirAll(out, 0o755))
	data, err := json.MarshalIndent(rep, "", "  ")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(out, "hop.json"), data, 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(out, "hop.md"), []byte(md), 0o644))
	abs, _ := filepath.Abs(out)
	t.Logf("wrote %s/hop.md and hop.json", abs)
}

func build(t *testing.T, root, out, pkg string) {
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	b, err := cmd.CombinedOutput()
	require.NoError(t, err, "go build %s: %s", pkg, b)
}

// start runs a process until the test ends; its output goes to dir/name.log.
func start(t *testing.T, dir, name string, env []string, bin string, args ...string) *exec.Cmd {
	logf, err := os.Create(filepath.Join(dir, name+".log"))
	require.NoError(t, err)
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	require.NoError(t, cmd.Start(), "start %s", name)
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, name+".log"))
			t.Logf("%s log:\n%s", name, b)
		}
	})
	return cmd
}

func waitHTTP(t *testing.T, url string) {
	itest.WaitFor(t, 20*time.Second, url+" to answer", func() bool {
		resp, err := http.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
}

func startHAProxy(t *testing.T, dir, backend string) hopTarget {
	port := itest.FreePort(t)
	cfg := fmt.Sprintf(`global
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend hop
  bind 127.0.0.1:%d
  default_backend app
backend app
  server app %s
`, port, backend)
	path := filepath.Join(dir, "haproxy.cfg")
	require.NoError(t, os.WriteFile(path, []byte(cfg), 0o644))
	cmd := start(t, dir, "haproxy", nil, "haproxy", "-db", "-f", path)
	url := "http://127.0.0.1:" + strconv.Itoa(port)
	waitHTTP(t, url+"/")
	return hopTarget{Name: "HAProxy", URL: url, PID: cmd.Process.Pid}
}

func startCaddy(t *testing.T, dir, backend string) hopTarget {
	port := itest.FreePort(t)
	cfg := fmt.Sprintf("{\n\tadmin off\n\tauto_https off\n\tpersist_config off\n}\nhttp://:%d {\n\treverse_proxy %s\n}\n", port, backend)
	path := filepath.Join(dir, "Caddyfile")
	require.NoError(t, os.WriteFile(path, []byte(cfg), 0o644))
	cmd := start(t, dir, "caddy", []string{"XDG_DATA_HOME=" + dir, "XDG_CONFIG_HOME=" + dir}, itest.CaddyBinary(t), "run", "--config", path, "--adapter", "caddyfile")
	url := "http://127.0.0.1:" + strconv.Itoa(port)
	waitHTTP(t, url+"/")
	return hopTarget{Name: "Caddy " + itest.CaddyVersion, URL: url, PID: cmd.Process.Pid}
}

func startHandoffProxy(t *testing.T, dir, backend string) hopTarget {
	socket := filepath.Join(dir, "proxy.sock")
	cmd := start(t, dir, "handoff-proxy", nil, filepath.Join(dir, "handoff"), "proxy", "--socket", socket, "--state-file", filepath.Join(dir, "proxy.json"))
	itest.WaitFor(t, 20*time.Second, "handoff proxy's socket", func() bool {
		c, err := net.Dial("unix", socket)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	listen := "127.0.0.1:" + strconv.Itoa(itest.FreePort(t))
	cl := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", socket)
	}}}
	body, _ := json.Marshal(map[string]string{"listen": listen, "upstream": backend})
	req, _ := http.NewRequest(http.MethodPut, "http://proxy/v1/services/hop", bytes.NewReader(body))
	resp, err := cl.Do(req)
	require.NoError(t, err)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode, string(b))
	url := "http://" + listen
	waitHTTP(t, url+"/")
	return hopTarget{Name: "handoff proxy", URL: url, PID: cmd.Process.Pid}
}

var (
	rpsLine  = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	reqLine  = regexp.MustCompile(`(\d+) requests in`)
	pctLine  = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([0-9.]+)(us|ms|s)\s*$`)
	errsLine = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)|Socket errors: .*`)
)

// wrk runs wrk against tg for one case and reads the proxy's CPU around it.
func wrk(t *testing.T, tg hopTarget, c hopCase, set hopSettings) hopRun {
	args := []string{"-t1", "-c" + strconv.Itoa(set.Connections), "-d" + set.Duration.String(), "--latency"}
	if c.Close {
		args = append(args, "-H", "Connection: close")
	}
	args = append(args, tg.URL+c.Path)
	var cpu0 time.Duration
	if tg.PID != 0 {
		cpu0 = cpuTime(t, tg.PID)
	}
	out, err := exec.Command("wrk", args...).CombinedOutput()
	require.NoError(t, err, "wrk %s: %s", strings.Join(args, " "), out)
	var r hopRun
	if tg.PID != 0 {
		r.CPU = cpuTime(t, tg.PID) - cpu0
	}
	text := string(out)
	if m := errsLine.FindString(text); m != "" {
		t.Logf("%s, %s: wrk saw errors: %s", tg.Name, c.Name, m)
	}
	m := rpsLine.FindStringSubmatch(text)
	require.NotNil(t, m, "no Requests/sec in wrk's output:\n%s", text)
	r.RPS, _ = strconv.ParseFloat(m[1], 64)
	if m := reqLine.FindStringSubmatch(text); m != nil {
		r.Requests, _ = strconv.ParseInt(m[1], 10, 64)
	}
	for _, m := range pctLine.FindAllStringSubmatch(text, -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		unit := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second}[m[3]]
		d := time.Duration(v * float64(unit))
		if m[1] == "50" {
			r.P50 = d
		} else {
			r.P99 = d
		}
	}
	return r
}

func summarize(target string, runs []hopRun) hopCell {
	c := hopCell{Target: target, Runs: runs}
	med := func(f func(hopRun) float64) float64 {
		vs := make([]float64, 0, len(runs))
		for _, r := range runs {
			vs = append(vs, f(r))
		}
		slices.Sort(vs)
		return vs[len(vs)/2]
	}
	c.RPS = med(func(r hopRun) float64 { return r.RPS })
	c.P50 = time.Duration(med(func(r hopRun) float64 { return float64(r.P50) }))
	c.P99 = time.Duration(med(func(r hopRun) float64 { return float64(r.P99) }))
	c.CPUPerRequest = time.Duration(med(func(r hopRun) float64 { return float64(r.cpuPerRequest()) }))
	return c
}

// rssWithIdleConnections opens n keep-alive connections through tg, each
// after one request, and reads the proxy's resident memory with them open.
func rssWithIdleConnections(t *testing.T, tg hopTarget, n int) (rss, anon int64) {
	host := strings.TrimPrefix(tg.URL, "http://")
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		c, err := net.Dial("tcp", host)
		require.NoError(t, err)
		conns = append(conns, c)
		_, err = io.WriteString(c, "GET / HTTP/1.1\r\nHost: hop\r\n\r\n")
		require.NoError(t, err)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	return status(t, tg.PID, "VmRSS"), status(t, tg.PID, "RssAnon")
}

// status reads a size from /proc/PID/status, in bytes.
func status(t *testing.T, pid int, key string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(t, err)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func versions(t *testing.T, dir string) map[string]string {
	v := map[string]string{}
	for name, cmd := range map[string][]string{
		"wrk":     {"wrk", "--version"},
		"HAProxy": {"haproxy", "-v"},
	} {
		out, _ := exec.Command(cmd[0], cmd[1:]...).CombinedOutput()
		line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		line, _, _ = strings.Cut(line, " Copyright")
		v[name] = line
	}
	v["Caddy"] = itest.CaddyVersion + " (built from the Go module proxy)"
	return v
}

func (r hopReport) markdown() string {
	var b strings.Builder
	s := r.Settings
	fmt.Fprintf(&b, "wrk, 1 thread, %d connections, %s per run, %d interleaved rounds (medians); the same Go backend on loopback. Machine: %s. Run: %s.\n",
		s.Connections, s.Duration, s.Rounds, r.Machine, r.Started.Format(time.RFC3339))
	fmt.Fprintf(&b, "%s; Caddy %s; %s.\n", r.Versions["HAProxy"], r.Versions["Caddy"], r.Versions["wrk"])
	for _, c := range hopCases {
		cells := r.Cases[c.Name]
		var haproxyCPU, caddyRPS, caddyP99 float64
		for _, cell := range cells {
			switch {
			case cell.Target == "HAProxy":
				haproxyCPU = float64(cell.CPUPerRequest)
			case strings.HasPrefix(cell.Target, "Caddy"):
				caddyRPS, caddyP99 = cell.RPS, float64(cell.P99)
			}
		}
		fmt.Fprintf(&b, "\n**%s**\n\n| through | req/s | p50 | p99 | CPU per request | CPU ÷ HAProxy's | req/s ÷ Caddy's | p99 ÷ Caddy's |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n", c.Name)
		for _, cell := range cells {
			cpu, ratios := "—", "— | — | —"
			if cell.Target != "direct" {
				cpu = fmt.Sprintf("%.1f µs", float64(cell.CPUPerRequest)/float64(time.Microsecond))
				ratios = fmt.Sprintf("%.2f | %.2f | %.2f", float64(cell.CPUPerRequest)/haproxyCPU, cell.RPS/caddyRPS, float64(cell.P99)/caddyP99)
			}
			fmt.Fprintf(&b, "| %s | %.0f | %s | %s | %s | %s |\n", cell.Target, cell.RPS, roundD(cell.P50), roundD(cell.P99), cpu, ratios)
		}
	}
	b.WriteString("\n**Memory** (resident: peak over the whole run, and with 1,000 idle keep-alive client connections open; anonymous: the same less the program's own file pages, which the kernel shares and can drop):\n\n| proxy | peak resident | resident with 1,000 connections | anonymous with 1,000 connections |\n| --- | ---: | ---: | ---: |\n")
	for _, name := range slices.Sorted(maps.Keys(r.PeakRSS)) {
		fmt.Fprintf(&b, "| %s | %.1f MiB | %.1f MiB | %.1f MiB |\n", name, float64(r.PeakRSS[name])/(1<<20), float64(r.IdleRSS[name])/(1<<20), float64(r.IdleAnon[name])/(1<<20))
	}
	return b.String()
}

func roundD(d time.Duration) string {
	if d < time.Millisecond {
		return fmt.Sprintf("%d µs", d.Microseconds())
	}
	return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
}
