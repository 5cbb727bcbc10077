package itest

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/client"
)

// Images the compose tests build FROM scratch: Caddy (a static build) and
// handoff itself, for `handoff proxy` run as a compose service.
const (
	CaddyImage = "handoff-caddy:it"
	ProxyImage = "handoff-proxy:it"
)

// ComposeVersion is the Compose CLI scripts/install-compose.sh builds.
const ComposeVersion = "5.6.0"

// ComposeTool returns the compose CLI to test with: "v5" is the one
// scripts/install-compose.sh builds, "v1" Debian's docker-compose 1.29.2.
func ComposeTool(t testing.TB, which string) string {
	t.Helper()
	path := filepath.Join(RepoRoot(t), ".tools", "compose-"+ComposeVersion, "docker-compose")
	if which == "v1" {
		path = "/usr/bin/docker-compose"
	}
	_, err := os.Stat(path)
	need(t, "compose CLI "+which+" (scripts/install-compose.sh; apt-get install docker-compose)", err)
	return path
}

var (
	composeImagesOnce sync.Once
	composeImagesErr  error
)

// BuildComposeImages builds the Caddy and handoff proxy images, once per process.
func BuildComposeImages(t testing.TB) {
	t.Helper()
	Build(t)
	composeImagesOnce.Do(func() {
		root := RepoRoot(t)
		static := filepath.Join(root, ".tools", "caddy-"+CaddyVersion+"-static", "caddy")
		if _, err := os.Stat(static); err != nil {
			composeImagesErr = fmt.Errorf("static caddy %s: %w (scripts/install-caddy.sh builds it)", static, err)
			return
		}
		dir, err := os.MkdirTemp("", "handoff-images-")
		if err != nil {
			composeImagesErr = err
			return
		}
		defer os.RemoveAll(dir)
		if composeImagesErr = copyFile(static, filepath.Join(dir, "caddy")); composeImagesErr != nil {
			return
		}
		env := append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
		if composeImagesErr = run(root, env, "go", "build", "-trimpath", "-o", filepath.Join(dir, "handoff"), "./cmd/handoff"); composeImagesErr != nil {
			return
		}
		for tag, bin := range map[string]string{CaddyImage: "caddy", ProxyImage: "handoff"} {
			df := fmt.Sprintf("FROM scratch\nCOPY %s /%s\nENTRYPOINT [\"/%s\"]\n", bin, bin, bin)
			if composeImagesErr = os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(df), 0o644); composeImagesErr != nil {
				return
			}
			if composeImagesErr = run(dir, nil, "docker", "build", "-q", "-t", tag, "."); composeImagesErr != nil {
				return
			}
		}
	})
	if composeImagesErr != nil {
		t.Fatal(composeImagesErr)
	}
}

func copyFile(from, to string) error {
	data, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, data, 0o755)
}

// ComposeProject is a user's compose project: Caddy in a container in
// front of the app (directly, or through `handoff proxy` in a container),
// a worker, and a dependency, with its Caddyfile and admin socket in
// directories shared with the host.
type ComposeProject struct {
	T        testing.TB
	API      *client.Client
	Bin      string // handoff
	Tool     string // the compose CLI
	Name     string // the project name
	Dir      string
	State    string
	SiteURL  string // http://127.0.0.1:port, Host SiteHost
	ViaProxy bool
	Env      map[string]string // for handoff and the compose tool: WEB_RELEASE, WORKER_RELEASE, WEB_BOOT_DELAY
	v1       bool
	opts     ComposeOptions
}

// ComposeOptions vary a project.
type ComposeOptions struct {
	ViaProxy bool   // Caddy → handoff proxy (a compose service) → app
	Tool     string // "v5" (default) or "v1" (docker-compose 1.29.2: no top-level name:)
	// HoldDB: web holds one connection to db, as a database pool does,
	// and is healthy only while it works (testapp's HOLD).
	HoldDB     bool
	BackSubnet string // the back network's own subnet ("" : the engine picks one)
}

// NewComposeProject writes the project; Up starts it. Everything it makes
// is removed when the test ends (`compose down`, and handoff's releases).
func NewComposeProject(t testing.TB, o ComposeOptions) *ComposeProject {
	t.Helper()
	BuildComposeImages(t)
	tool := o.Tool
	if tool == "" {
		tool = "v5"
	}
	p := &ComposeProject{T: t, API: Docker(t), Bin: Build(t), Tool: ComposeTool(t, tool), Name: UniqueName(), Dir: t.TempDir(), State: t.TempDir(),
		ViaProxy: o.ViaProxy, Env: map[string]string{"WEB_RELEASE": "web0", "WORKER_RELEASE": "worker0"}, v1: tool == "v1", opts: o}
	port := FreePort(t)
	p.SiteURL = "http://127.0.0.1:" + Itoa(port)
	for _, d := range []string{"caddy", "proxy", "ticks"} {
		if err := os.MkdirAll(filepath.Join(p.Dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	upstream := "web:8000"
	if o.ViaProxy {
		upstream = "handoff-proxy:9001"
	}
	caddyfile := fmt.Sprintf(`{
	admin unix//run/caddy/admin.sock
	auto_https off
	servers {
		protocols h1 h2c
	}
}

http://%s:80, http://127.0.0.1:80 {
	reverse_proxy %s {
		lb_try_duration 5s
		lb_try_interval 100ms
		stream_close_delay 1m
	}
}
`, SiteHost, upstream)
	if err := os.WriteFile(filepath.Join(p.Dir, "caddy", "Caddyfile"), []byte(caddyfile), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p.Dir, "compose.yaml"), []byte(p.composeFile(port)), 0o644); err != nil {
		t.Fatal(err)
	}
	ReleaseImage(t, "web0")
	t.Cleanup(p.down)
	return p
}

func (p *ComposeProject) composeFile(port int) string {
	name := "name: " + p.Name + "\n"
	if p.v1 {
		name = "" // 1.29.2 knows no top-level name: the tests pass -p
	}
	handoff := `x-handoff:
  caddy:
    admin: unix:./caddy/admin.sock
    caddyfile: ./caddy/Caddyfile
`
	webHandoff := `    x-handoff:
      route: ` + SiteHost + `
      health: {path: /health, interval: 100ms, successes: 2}
      drain_timeout: 10s
`
	proxySvc, webEnv, back := "", "", "  back: {}\n"
	if p.opts.HoldDB {
		webEnv = `, BOOT_DELAY: "${WEB_BOOT_DELAY:-0s}", HOLD: "db:8000"`
	}
	if p.opts.BackSubnet != "" {
		back = "  back:\n    ipam: {config: [{subnet: " + p.opts.BackSubnet + "}]}\n"
	}
	if p.ViaProxy {
		handoff = `x-handoff:
  proxy: handoff
  reach: network
  handoff_proxy:
    socket: ./proxy/proxy.sock
`
		webHandoff = `    x-handoff:
      handoff_proxy: {listen: "0.0.0.0:9001"}
      health: {path: /health, interval: 100ms, successes: 2}
      drain_timeout: 10s
`
		proxySvc = `  handoff-proxy:
    image: ` + ProxyImage + `
    command: ["proxy", "--socket", "/run/handoff/proxy.sock", "--state-file", "/run/handoff/state.json", "--handover-timeout", "5s", "--trusted-proxies", "172.16.0.0/12"]
    restart: unless-stopped
    volumes: ["./proxy:/run/handoff"]
    networks: [front, back]
`
	}
	return name + handoff + `services:
  caddy:
    image: ` + CaddyImage + `
    command: ["run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"]
    environment: {XDG_DATA_HOME: /data, XDG_CONFIG_HOME: /data}
    restart: unless-stopped
    volumes: ["./caddy:/etc/caddy", "./caddy:/run/caddy", "caddy-data:/data"]
    ports: ["127.0.0.1:` + Itoa(port) + `:80"]
    networks: [front]
` + proxySvc + `  web:
    image: ` + TestImage + `-${WEB_RELEASE}
    environment: {DRAIN_GRACE: "0s"` + webEnv + `}
    expose: ["8000"]
    restart: unless-stopped
    depends_on: [db]
    networks: [front, back]
` + webHandoff + `  worker:
    image: ` + TestImage + `
    command: ["worker"]
    environment: {RELEASE: "${WORKER_RELEASE}", TICKS: /ticks/ticks.log}
    volumes: ["./ticks:/ticks"]
    restart: unless-stopped
    networks: [back]
  db:
    image: ` + TestImage + `
    environment: {RELEASE: db}
    restart: unless-stopped
    networks: [back]
volumes:
  caddy-data: {}
networks:
  front: {}
` + back
}

// ReleaseImage builds the app image of a release (its RELEASE baked in, so
// that a rollback, which runs an earlier image, answers as that release),
// removed when the test ends.
func ReleaseImage(t testing.TB, release string) {
	t.Helper()
	tag := TestImage + "-" + release
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte("FROM "+TestImage+"\nENV RELEASE="+release+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := run(dir, nil, "docker", "build", "-q", "-t", tag, "."); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = run(".", nil, "docker", "image", "rm", "-f", tag) })
}

// Compose runs the compose CLI in the project with args.
func (p *ComposeProject) Compose(args ...string) (string, error) {
	p.T.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	full := append([]string{"-p", p.Name}, args...)
	cmd := exec.CommandContext(ctx, p.Tool, full...)
	cmd.Dir = p.Dir
	cmd.Env = p.env()
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (p *ComposeProject) env() []string {
	env := os.Environ()
	for k, v := range p.Env {
		env = append(env, k+"="+v)
	}
	return append(env, "HANDOFF_STATE_DIR="+p.State, "HANDOFF_COMPOSE="+p.Tool)
}

// Up runs `compose up -d` and waits until the site answers through Caddy.
func (p *ComposeProject) Up() {
	p.T.Helper()
	if out, err := p.Compose("up", "-d"); err != nil {
		p.T.Fatalf("compose up: %v\n%s", err, out)
	}
	if p.ViaProxy {
		return // the proxy serves the app once the first deploy creates it there
	}
	p.WaitServing("web0")
}

// WaitServing waits until the site answers 200 from release.
func (p *ComposeProject) WaitServing(release string) {
	p.T.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	WaitFor(p.T, 60*time.Second, "the site to serve "+release, func() bool {
		code, rel, err := Get(c, p.SiteURL+"/", SiteHost)
		return err == nil && code == 200 && rel == release
	})
}

// Handoff runs handoff in the project directory with -f compose.yaml.
func (p *ComposeProject) Handoff(args ...string) Result {
	p.T.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, p.Bin, append([]string{args[0], "-f", "compose.yaml", "-p", p.Name}, args[1:]...)...)
	cmd.Dir = p.Dir
	cmd.Env = p.env()
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	res := Result{Stdout: out.String(), Stderr: errb.String(), Took: time.Since(start)}
	if ee, ok := err.(*exec.ExitError); ok {
		res.Code = ee.ExitCode()
	} else if err != nil {
		p.T.Fatalf("run handoff: %v", err)
	}
	return res
}

// Deploy deploys services with the releases given in p.Env, failing the test if it fails.
func (p *ComposeProject) Deploy(services ...string) Result {
	p.T.Helper()
	r := p.Handoff(append([]string{"deploy"}, services...)...)
	if r.Code != 0 {
		p.T.Fatalf("deploy %v: %s", services, r)
	}
	return r
}

// Containers lists the project's containers: name → (ID, running).
func (p *ComposeProject) Containers() map[string]ContainerState {
	p.T.Helper()
	list, err := p.API.ContainerList(context.Background(), client.ContainerListOptions{
		All: true, Filters: make(client.Filters).Add("label", "com.docker.compose.project="+p.Name)})
	if err != nil {
		p.T.Fatal(err)
	}
	out := map[string]ContainerState{}
	for _, c := range list.Items {
		res, err := p.API.ContainerInspect(context.Background(), c.ID, client.ContainerInspectOptions{})
		if err != nil {
			continue
		}
		in := res.Container
		out[strings.TrimPrefix(in.Name, "/")] = ContainerState{ID: in.ID, Service: in.Config.Labels["com.docker.compose.service"],
			Running: in.State.Running, Restarts: in.RestartCount, StartedAt: in.State.StartedAt}
	}
	return out
}

// ContainerState is what the tests check of a container.
type ContainerState struct {
	ID, Service string
	Running     bool
	Restarts    int
	StartedAt   string
}

// Of lists the containers of a compose service.
func (p *ComposeProject) Of(service string) map[string]ContainerState {
	out := map[string]ContainerState{}
	for name, c := range p.Containers() {
		if c.Service == service {
			out[name] = c
		}
	}
	return out
}

func (p *ComposeProject) down() {
	_, _ = p.Compose("down", "-v", "--remove-orphans", "-t", "2")
	ctx := context.Background()
	list, err := p.API.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: make(client.Filters).Add("label", "com.docker.compose.project="+p.Name)})
	if err == nil {
		for _, c := range list.Items {
			remove(p.API, c.ID)
		}
	}
	for _, n := range []string{"_front", "_back", "_default"} {
		_, _ = p.API.NetworkRemove(ctx, p.Name+n, client.NetworkRemoveOptions{})
	}
	_, _ = p.API.VolumeRemove(ctx, p.Name+"_caddy-data", client.VolumeRemoveOptions{Force: true})
}
