package itest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
)

// SiteHost is the host name of the test site in Caddy.
const SiteHost = "app.test"

// CaddyOptions shape the test Caddy.
type CaddyOptions struct {
	Upstream    string // where the site proxies to at start
	Plain       bool   // leave out handoff's recommended reverse_proxy settings
	UnixAdmin   bool   // admin API on a unix socket instead of TCP
	Binary      string // "" : CaddyBinary
	ExtraGlobal string // more global options
	ExtraServer string // more options of the global servers block (Caddy 2.6's `metrics`)
	ExtraProxy  string // more reverse_proxy options
	Sites       []Site // more sites on the same port
}

// Site is another site of the test Caddy.
type Site struct {
	Host     string // matched on the Host header
	Upstream string
}

// Caddy is a real Caddy process serving one site on loopback.
type Caddy struct {
	Admin string // what --caddy-admin takes
	Addr  string // 127.0.0.1:port of the site
	File  string // its Caddyfile
	URL   string // http://Addr
	logs  *syncBuffer
	bin   string
	dir   string
	cmd   *exec.Cmd
	done  chan struct{} // closed when the current process has exited
	t     testing.TB
}

// StartCaddy writes a Caddyfile, starts Caddy on it and waits until both
// the admin API and the site answer. Caddy is stopped when the test ends.
func StartCaddy(t testing.TB, o CaddyOptions) *Caddy {
	t.Helper()
	bin := o.Binary
	if bin == "" {
		bin = CaddyBinary(t)
	}
	dir := t.TempDir()
	port := FreePort(t)
	c := &Caddy{Addr: "127.0.0.1:" + Itoa(port), File: filepath.Join(dir, "Caddyfile"), logs: &syncBuffer{}, bin: bin, dir: dir, t: t}
	c.URL = "http://" + c.Addr
	adminListen := "127.0.0.1:" + Itoa(FreePort(t))
	c.Admin = adminListen
	if o.UnixAdmin {
		sock := filepath.Join(dir, "admin.sock")
		adminListen, c.Admin = "unix/"+sock, "unix:"+sock
	}
	proxyOpts := "\t\tlb_try_duration 5s\n\t\tlb_try_interval 100ms\n\t\tstream_close_delay 1m\n"
	if o.Plain {
		proxyOpts = ""
	}
	proxyOpts += o.ExtraProxy
	caddyfile := fmt.Sprintf(`{
	admin %s
	auto_https off
	servers {
		protocols h1 h2c
%s	}
%s}

http://%s:%d, http://127.0.0.1:%d {
	bind 127.0.0.1
	reverse_proxy %s {
%s	}
}
`, adminListen, o.ExtraServer, o.ExtraGlobal, SiteHost, port, port, o.Upstream, proxyOpts)
	for _, site := range o.Sites {
		caddyfile += fmt.Sprintf("\nhttp://%s:%d {\n\tbind 127.0.0.1\n\treverse_proxy %s {\n%s\t}\n}\n", site.Host, port, site.Upstream, proxyOpts)
	}
	if err := os.WriteFile(c.File, []byte(caddyfile), 0o644); err != nil {
		t.Fatal(err)
	}
	c.start()
	t.Cleanup(func() {
		c.stop()
		if t.Failed() {
			t.Logf("caddy log:\n%s", lastLines(c.logs.String(), 40))
		}
	})
	return c
}

// start runs Caddy on its Caddyfile and waits until the admin API answers.
func (c *Caddy) start() {
	c.t.Helper()
	c.cmd = exec.Command(c.bin, "run", "--config", c.File, "--adapter", "caddyfile")
	c.cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+c.dir, "XDG_CONFIG_HOME="+c.dir, "HOME="+c.dir)
	c.cmd.Stdout, c.cmd.Stderr = c.logs, c.logs
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := c.cmd.Start(); err != nil {
		c.t.Fatalf("start caddy: %v", err)
	}
	done := make(chan struct{})
	c.done = done
	go func(cmd *exec.Cmd) { _ = cmd.Wait(); close(done) }(c.cmd)
	admin := c.AdminClient()
	WaitFor(c.t, 20*time.Second, "caddy admin API", func() bool {
		select {
		case <-done:
			c.t.Fatalf("caddy exited at start:\n%s", c.logs.String())
		default:
		}
		resp, err := admin.Get(c.AdminURL() + "/config/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
}

// stop ends the current Caddy process (SIGTERM, SIGKILL after 10 s).
func (c *Caddy) stop() {
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// Restart stops Caddy and starts it again from its Caddyfile, as
// `systemctl restart caddy` would: what only the admin API had is gone.
func (c *Caddy) Restart() {
	c.t.Helper()
	c.stop()
	c.start()
}

// AdminURL is the base URL to reach the admin API with AdminClient.
func (c *Caddy) AdminURL() string {
	if strings.HasPrefix(c.Admin, "unix:") {
		return "http://localhost"
	}
	return "http://" + c.Admin
}

// AdminClient reaches the admin API, over its unix socket if it has one.
func (c *Caddy) AdminClient() *http.Client {
	tr := &http.Transport{}
	if sock, ok := strings.CutPrefix(c.Admin, "unix:"); ok {
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}
	}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// Logs returns what Caddy printed so far.
func (c *Caddy) Logs() string { return c.logs.String() }

// UserContainer starts the app as a user would by hand before adopting
// handoff (`docker run -p 127.0.0.1::8000`), waits until it answers, and
// returns its host port.
func UserContainer(t testing.TB, api *client.Client, name string, env ...string) int {
	t.Helper()
	_, port := AppContainer(t, api, name, 0, env...)
	WaitFor(t, 20*time.Second, name+" listening", func() bool {
		code, _, err := Get(http.DefaultClient, "http://127.0.0.1:"+Itoa(port)+"/health", "")
		return err == nil && code == 200
	})
	return port
}

// AppContainer starts the test app as `docker run -d --name name -p
// 127.0.0.1:hostPort:8000` would (hostPort 0: Docker picks), without
// waiting for it, and removes it when the test ends.
func AppContainer(t testing.TB, api *client.Client, name string, hostPort int, env ...string) (id string, port int) {
	t.Helper()
	ctx := context.Background()
	p := network.MustParsePort("8000/tcp")
	binding := network.PortBinding{HostIP: netip.MustParseAddr("127.0.0.1")}
	if hostPort != 0 {
		binding.HostPort = Itoa(hostPort)
	}
	created, err := api.ContainerCreate(ctx, client.ContainerCreateOptions{
		Name: name,
		Config: &container.Config{Image: TestImage, Env: env, ExposedPorts: network.PortSet{p: {}},
			Labels: map[string]string{"handoff-test": "user"}},
		HostConfig: &container.HostConfig{PortBindings: network.PortMap{p: {binding}}},
	})
	if err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	t.Cleanup(func() { remove(api, created.ID) })
	if _, err := api.ContainerStart(ctx, created.ID, client.ContainerStartOptions{}); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	res, err := api.ContainerInspect(ctx, created.ID, client.ContainerInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Sscan(res.Container.NetworkSettings.Ports[p][0].HostPort, &port)
	return created.ID, port
}

// RemoveService removes every container of service, and of its release
// jobs, when the test ends.
func RemoveService(t testing.TB, api *client.Client, service string) {
	t.Helper()
	t.Cleanup(func() {
		for _, label := range []string{"handoff.service=" + service, "handoff.job=" + service} {
			list, err := api.ContainerList(context.Background(), client.ContainerListOptions{
				All: true, Filters: make(client.Filters).Add("label", label)})
			if err != nil {
				t.Errorf("list containers of %s: %v", service, err)
				return
			}
			for _, c := range list.Items {
				remove(api, c.ID)
			}
		}
	})
}

// Containers lists the names of service's containers and whether each runs.
func Containers(t testing.TB, api *client.Client, service string) map[string]bool {
	t.Helper()
	list, err := api.ContainerList(context.Background(), client.ContainerListOptions{
		All: true, Filters: make(client.Filters).Add("label", "handoff.service="+service)})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, c := range list.Items {
		out[strings.TrimPrefix(c.Names[0], "/")] = c.State == container.StateRunning
	}
	return out
}

func remove(api *client.Client, id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, _ = api.ContainerRemove(ctx, id, client.ContainerRemoveOptions{Force: true})
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
