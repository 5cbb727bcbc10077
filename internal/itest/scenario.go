package itest

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/moby/moby/client"
)

// Scenario is a user's setup before handoff: the app running in a container
// started by hand, Caddy proxying a site to it, and a handoff.yml.
type Scenario struct {
	T        testing.TB
	API      *client.Client
	Bin      string
	Service  string
	Dir      string // where handoff.yml is and handoff runs
	State    string // handoff's state dir
	Caddy    *Caddy
	UserPort int
	Client   *http.Client
	Proxy    *ProxyDaemon // with ScenarioOptions.HandoffProxy
}

// ScenarioOptions vary the setup.
type ScenarioOptions struct {
	Caddy        CaddyOptions  // Upstream is filled in
	HandoffProxy bool          // deploy through `handoff proxy`, Caddy in front of it
	Handover     time.Duration // the proxy's --handover-timeout; default 5s
}

// NewScenario sets everything up; all of it is removed when the test ends.
func NewScenario(t testing.TB, o ScenarioOptions) *Scenario {
	t.Helper()
	return NewScenarioWith(t, o, 0)
}

// NewScenarioWith is NewScenario with the app already running by hand on
// userPort (0: one is started), and Caddy pointed as o says.
func NewScenarioWith(t testing.TB, o ScenarioOptions, userPort int) *Scenario {
	t.Helper()
	s := &Scenario{T: t, Bin: Build(t), API: Docker(t), Dir: t.TempDir(), State: t.TempDir()}
	s.Service = UniqueName()
	RemoveService(t, s.API, s.Service)
	if o.HandoffProxy {
		if o.Handover == 0 {
			o.Handover = 5 * time.Second
		}
		s.Proxy = StartProxy(t, s.Bin, o.Handover)
		o.Caddy.Upstream = "127.0.0.1:" + Itoa(FreePort(t)) // where the proxy will serve the service
		s.Proxy.Listen = o.Caddy.Upstream
		// As docs/proxy.md recommends: idle connections to the proxy end
		// before its handover deadline.
		o.Caddy.ExtraProxy = "\t\ttransport http {\n\t\t\tkeepalive 3s\n\t\t}\n"
	} else if userPort != 0 {
		s.UserPort = userPort
	} else {
		s.UserPort = UserContainer(t, s.API, s.Service+"-byhand", "RELEASE=v0")
		o.Caddy.Upstream = "127.0.0.1:" + Itoa(s.UserPort)
	}
	s.Caddy = StartCaddy(t, o.Caddy)
	s.Client = &http.Client{Timeout: 30 * time.Second}
	return s
}

// Config is what a test varies in handoff.yml.
type Config struct {
	Release      string            // RELEASE env of the new container
	Env          map[string]string // more env
	HealthPath   string            // "" : /health
	StartTimeout string            // "" : 30s
	DrainTimeout string            // "" : 10s
	Extra        string            // more top-level YAML
	Health       string            // replaces the health block ("" : GET /health)
	Image        string            // "" : TestImage
	NoCaddyfile  bool
	Route        string // "" : SiteHost
	Admin        string // "" : the test Caddy's admin address (a FaultyAdmin's, say)
	Caddyfile    string // "" : the test Caddy's Caddyfile
}

// WriteConfig writes handoff.yml for the next deploy.
func (s *Scenario) WriteConfig(c Config) {
	s.T.Helper()
	path := or(c.HealthPath, "/health")
	env := "  RELEASE: " + c.Release + "\n"
	for k, v := range c.Env {
		env += fmt.Sprintf("  %s: %q\n", k, v)
	}
	caddyfile := "  caddyfile: " + or(c.Caddyfile, s.Caddy.File) + "\n"
	if c.NoCaddyfile {
		caddyfile = ""
	}
	if s.Proxy != nil {
		caddyfile += fmt.Sprintf("proxy: handoff\nhandoff_proxy:\n  socket: %s\n  listen: %s\n", s.Proxy.Socket, s.Proxy.Listen)
	}
	health := fmt.Sprintf("health:\n  path: %s\n  interval: 100ms\n  successes: 2\n  start_timeout: %s\n", path, or(c.StartTimeout, "30s"))
	if c.Health != "" {
		health = c.Health
	}
	yml := fmt.Sprintf(`service: %s
image: %s
port: 8000
env:
%s%sdrain_timeout: %s
stop_timeout: 5s
caddy:
  admin: %s
  route: %s
%s%s`, s.Service, or(c.Image, TestImage), env, health, or(c.DrainTimeout, "10s"),
		or(c.Admin, s.Caddy.Admin), or(c.Route, SiteHost), caddyfile, c.Extra)
	if err := os.WriteFile(filepath.Join(s.Dir, "handoff.yml"), []byte(yml), 0o644); err != nil {
		s.T.Fatal(err)
	}
}

// Sibling is a second service beside s: its own name and handoff.yml, the
// same Caddy (and handoff proxy) and the same state directory.
func (s *Scenario) Sibling() *Scenario {
	s.T.Helper()
	o := *s
	o.Service = UniqueName()
	o.Dir = s.T.TempDir()
	o.UserPort = 0
	RemoveService(s.T, s.API, o.Service)
	return &o
}

// Run runs handoff with args in the scenario's directory.
func (s *Scenario) Run(args ...string) Result {
	s.T.Helper()
	return Handoff(s.T, s.Bin, s.Dir, s.State, args...)
}

// Start starts handoff with args without waiting for it.
func (s *Scenario) Start(args ...string) (*exec.Cmd, *syncBuffer) {
	s.T.Helper()
	cmd := exec.Command(s.Bin, args...)
	cmd.Dir = s.Dir
	cmd.Env = append(os.Environ(), "HANDOFF_STATE_DIR="+s.State)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		s.T.Fatal(err)
	}
	s.T.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return cmd, out
}

// Deploy writes the config and deploys it, failing the test if it fails.
func (s *Scenario) Deploy(c Config) Result {
	s.T.Helper()
	s.WriteConfig(c)
	r := s.Run("deploy")
	if r.Code != 0 {
		s.T.Fatalf("deploy %s failed: %s", c.Release, r)
	}
	return r
}

// Serving asks the site through Caddy which release answers.
func (s *Scenario) Serving() string {
	s.T.Helper()
	code, release, err := Get(s.Client, s.Caddy.URL+"/", SiteHost)
	if err != nil || code != 200 {
		s.T.Fatalf("GET through caddy: %d %v", code, err)
	}
	return release
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// runID is in the name of every Docker object this test process makes, so
// that its end can check that none is left (TestMain), and tell them from
// another package's running at the same time.
var runID = randomHex(2)

// UniqueName names a service, container, network or volume of a test.
func UniqueName() string { return "it" + runID + randomHex(3) }

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return strings.ToLower(hex.EncodeToString(b))
}

var clientInspect = client.ContainerInspectOptions{}

// RunTTY runs handoff with args on a pseudo-terminal (stdin, stdout and
// stderr), as a person at a terminal would, and returns what it printed
// there and its exit code.
func (s *Scenario) RunTTY(args ...string) (string, int) {
	s.T.Helper()
	cmd := exec.Command(s.Bin, args...)
	cmd.Dir = s.Dir
	cmd.Env = append(os.Environ(), "HANDOFF_STATE_DIR="+s.State, "TERM=xterm")
	ptmx, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 40, Cols: 160})
	if err != nil {
		s.T.Fatal(err)
	}
	defer ptmx.Close()
	out, _ := io.ReadAll(ptmx) // ends with EIO once the process has exited
	code := 0
	if err := cmd.Wait(); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			s.T.Fatalf("run handoff on a terminal: %v", err)
		}
		code = ee.ExitCode()
	}
	return strings.ReplaceAll(string(out), "\r\n", "\n"), code
}
