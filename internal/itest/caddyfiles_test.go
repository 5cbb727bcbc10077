package itest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/caddy"
	"github.com/handoff-dev/handoff/internal/deploy"
)

// Every Caddyfile of the corpus (internal/caddy/testdata/caddyfiles, its
// header lines explained in caddyfile_corpus_test.go there) through a real
// Caddy: the route is found, the switch is made by the adapter's own
// Preflight and Switch, the file is kept but for the upstream, and `caddy
// adapt` of the new file is the config Caddy runs. A shape the header says
// is refused is refused with that reason, Caddy and the file untouched.
func TestCaddyfileCorpusThroughCaddy(t *testing.T) {
	bin := CaddyBinary(t)
	paths, err := filepath.Glob(filepath.Join(RepoRoot(t), "internal", "caddy", "testdata", "caddyfiles", "*.caddyfile"))
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(paths), 20)
	for _, path := range paths {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".caddyfile"), func(t *testing.T) {
			src, err := os.ReadFile(path)
			require.NoError(t, err)
			corpusCase(t, bin, string(src))
		})
	}
}

func corpusCase(t *testing.T, bin, src string) {
	head := corpusHeader(src)
	old, next := textServer(t, "old"), textServer(t, "new")
	port := FreePort(t)
	marks := []string{"@KEEP@", old, "@OTHER@", textServer(t, "other"), "@AUTH@", textServer(t, "auth"),
		"@PHP@", "127.0.0.1:" + Itoa(FreePort(t)), "@PORT@", Itoa(port)}
	render := func(s, up string) string {
		return strings.NewReplacer(append([]string{"@UP@", up}, marks...)...).Replace(s)
	}
	dir := t.TempDir()
	admin := "127.0.0.1:" + Itoa(FreePort(t))
	template := withTestGlobals(src, admin, FreePort(t), FreePort(t))
	file := filepath.Join(dir, "Caddyfile")
	require.NoError(t, os.WriteFile(file, []byte(render(template, old)), 0o644))
	var env []string
	for _, kv := range head["env"] {
		env = append(env, render(kv, old))
	}
	startCorpusCaddy(t, bin, dir, file, env, admin)
	before := runningConfig(t, admin)

	route := head["route"][0]
	if route == "upstream" {
		route = old
	}
	p, err := caddy.New(admin, route, file, t.TempDir())
	require.NoError(t, err)
	ctx := context.Background()
	var notes []string
	cur, err := p.Route(ctx, nil)
	if err == nil {
		require.Equal(t, []string{old}, cur.Endpoints(), "the route's upstream")
		notes, err = p.Preflight(ctx, cur, nil)
	}
	if err == nil && len(head["refuse"]) == 0 {
		err = p.SetRoute(ctx, cur, deploy.Only("web-2", next))
	}
	if want := head["refuse"]; len(want) > 0 {
		require.Error(t, err, "refused")
		require.Contains(t, err.Error(), render(want[0], old))
		if len(head["preflight"]) > 0 {
			require.Contains(t, err.Error(), "refused before the deploy started anything")
			require.NotContains(t, err.Error(), "proxy switch failed", "nothing was switched")
		}
		t.Logf("refused: %v", err)
		got, _ := os.ReadFile(file)
		require.Equal(t, render(template, old), string(got), "the file is untouched")
		require.Equal(t, before, runningConfig(t, admin), "Caddy is untouched")
		return
	}
	require.NoError(t, err)
	for _, want := range head["note"] {
		require.Contains(t, strings.Join(notes, "\n"), want)
	}
	got, err := os.ReadFile(file)
	require.NoError(t, err)
	require.Equal(t, render(template, next), string(got), "the file changes at the upstream, nowhere else")
	require.Equal(t, adapt(t, bin, file, env), runningConfig(t, admin), "caddy adapt of the new file is what Caddy runs")
	for _, get := range head["get"] {
		host, reqPath, _ := strings.Cut(get, " ")
		require.Equal(t, "new", getBody(t, "http://127.0.0.1:"+Itoa(port)+reqPath, host), "GET %s", get)
	}
}

// corpusHeader reads the "# key: value" lines of a corpus file.
func corpusHeader(src string) map[string][]string {
	out := map[string][]string{}
	for _, line := range strings.Split(src, "\n") {
		rest, ok := strings.CutPrefix(line, "# ")
		if !ok {
			continue
		}
		if k, v, ok := strings.Cut(rest, ": "); ok && !strings.Contains(k, " ") {
			out[k] = append(out[k], v)
		}
	}
	return out
}

// withTestGlobals gives the file the global options a test Caddy needs
// (admin and site ports of its own, no certificates), inside its own
// global block if it has one.
func withTestGlobals(src, admin string, httpPort, httpsPort int) string {
	opts := fmt.Sprintf("\tadmin %s\n\tauto_https off\n\thttp_port %d\n\thttps_port %d\n", admin, httpPort, httpsPort)
	lines := strings.SplitAfter(src, "\n")
	for i, l := range lines {
		switch strings.TrimSpace(l) {
		case "{":
			return strings.Join(lines[:i+1], "") + opts + strings.Join(lines[i+1:], "")
		case "":
			continue
		}
		if !strings.HasPrefix(l, "#") {
			break
		}
	}
	return "{\n" + opts + "}\n\n" + src
}

// textServer is an upstream on loopback that answers body.
func textServer(t *testing.T, body string) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, body) }))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// startCorpusCaddy runs Caddy on file with env until the test ends.
func startCorpusCaddy(t *testing.T, bin, dir, file string, env []string, admin string) {
	logs := &syncBuffer{}
	cmd := exec.Command(bin, "run", "--config", file, "--adapter", "caddyfile")
	cmd.Env = append(append(os.Environ(), "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir, "HOME="+dir), env...)
	cmd.Stdout, cmd.Stderr = logs, logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(t, cmd.Start())
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("caddy log:\n%s", lastLines(logs.String(), 30))
		}
	})
	WaitFor(t, 20*time.Second, "caddy admin API", func() bool {
		select {
		case <-done:
			t.Fatalf("caddy exited at start:\n%s", logs.String())
		default:
		}
		resp, err := http.Get("http://" + admin + "/config/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
}

// runningConfig is Caddy's config as its admin API returns it, decoded.
func runningConfig(t *testing.T, admin string) any {
	resp, err := http.Get("http://" + admin + "/config/")
	require.NoError(t, err)
	defer resp.Body.Close()
	var v any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&v))
	return v
}

// adapt is `caddy adapt` of file, decoded.
func adapt(t *testing.T, bin, file string, env []string) any {
	cmd := exec.Command(bin, "adapt", "--config", file, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.Output()
	require.NoError(t, err, "caddy adapt %s", file)
	var v any
	require.NoError(t, json.Unmarshal(out, &v))
	return v
}

func getBody(t *testing.T, url, host string) string {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	require.NoError(t, err)
	req.Host = host
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
