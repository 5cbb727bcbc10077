// Package itest is the harness for handoff's integration tests and
// benchmarks: a real Docker engine, a real Caddy, the handoff binary, and
// the test app image built FROM scratch. Everything it starts is removed
// when the test ends.
package itest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/client"
)

// TestImage is the tag of the test app image.
const TestImage = "handoff-testapp:it"

// CaddyVersion is the Caddy the tests run unless HANDOFF_TEST_CADDY names another binary.
const CaddyVersion = "2.11.9"

// RepoRoot finds the directory holding go.mod.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
}

// need skips the test when a real part is missing, except in CI, where a
// skipped integration test would hide a failure.
func need(t testing.TB, what string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if os.Getenv("CI") != "" || os.Getenv("HANDOFF_REQUIRE_INTEGRATION") != "" {
		t.Fatalf("%s: %v", what, err)
	}
	t.Skipf("%s: %v (run scripts/test.sh, which installs it)", what, err)
}

// CaddyBinary returns the Caddy to test against: $HANDOFF_TEST_CADDY, or
// the one scripts/install-caddy.sh put under .tools/.
func CaddyBinary(t testing.TB) string {
	t.Helper()
	path := os.Getenv("HANDOFF_TEST_CADDY")
	if path == "" {
		path = filepath.Join(RepoRoot(t), ".tools", "caddy-"+CaddyVersion+"-static", "caddy")
	}
	_, err := os.Stat(path)
	need(t, "caddy binary", err)
	return path
}

// Docker returns a client for the engine, negotiating the API version.
func Docker(t testing.TB) *client.Client {
	t.Helper()
	api, err := client.New(client.FromEnv) // negotiates the API version with the engine
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err = api.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true})
	}
	need(t, "docker engine", err)
	t.Cleanup(func() { api.Close() })
	return api
}

var (
	buildOnce sync.Once
	buildErr  error
	binPath   string
)

// Build compiles the handoff binary and the test app image, once per process.
func Build(t testing.TB) (handoff string) {
	t.Helper()
	Docker(t)
	buildOnce.Do(func() {
		root := RepoRoot(t)
		dir, err := os.MkdirTemp("", "handoff-it-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "handoff")
		if buildErr = run(root, nil, "go", "build", "-o", binPath, "./cmd/handoff"); buildErr != nil {
			return
		}
		buildErr = BuildTestImage(root, TestImage)
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// BuildTestImage builds the test app statically and makes an image FROM
// scratch of it, tagged tag.
func BuildTestImage(root, tag string) error {
	ctxDir, err := os.MkdirTemp("", "handoff-testapp-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(ctxDir)
	env := append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if err := run(root, env, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(ctxDir, "testapp"), "./testapp"); err != nil {
		return err
	}
	dockerfile := "FROM scratch\nCOPY testapp /testapp\nEXPOSE 8000\nENTRYPOINT [\"/testapp\"]\n"
	if err := os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
		return err
	}
	return run(ctxDir, nil, "docker", "build", "-q", "-t", tag, ".")
}

func run(dir string, env []string, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Dir, cmd.Env = dir, env
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

// FreePort returns a loopback port nobody listens on now.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Result is what one run of the handoff binary did.
type Result struct {
	Stdout, Stderr string
	Code           int
	Took           time.Duration
}

func (r Result) String() string {
	return fmt.Sprintf("exit %d after %s\nstdout:\n%s\nstderr:\n%s", r.Code, r.Took, r.Stdout, r.Stderr)
}

// Handoff runs the handoff binary in dir with a private state directory.
func Handoff(t testing.TB, bin, dir, stateDir string, args ...string) Result {
	t.Helper()
	return HandoffEnv(t, bin, dir, stateDir, nil, args...)
}

// HandoffEnv is Handoff with more environment variables (KEY=VALUE).
func HandoffEnv(t testing.TB, bin, dir, stateDir string, env []string, args ...string) Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "HANDOFF_STATE_DIR="+stateDir), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	res := Result{Stdout: out.String(), Stderr: errb.String(), Took: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		res.Code = ee.ExitCode()
	case err != nil:
		t.Fatalf("run handoff: %v", err)
	}
	return res
}

// WaitFor polls cond until it holds or timeout passes.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Get fetches url with Host set and returns the status and X-Release.
func Get(c *http.Client, url, host string) (int, string, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	req.Host = host
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	_, _ = bytes.NewBuffer(nil).ReadFrom(resp.Body)
	return resp.StatusCode, resp.Header.Get("X-Release"), nil
}

// Itoa is strconv.Itoa, for building addresses in tests.
func Itoa(n int) string { return strconv.Itoa(n) }
