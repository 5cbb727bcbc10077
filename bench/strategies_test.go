package bench

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/handoff-dev/handoff/internal/itest"
)

// bench is one strategy's run: the scenario (Caddy in front of the app
// started by hand) and what is live now.
type bench struct {
	t       *testing.T
	s       *itest.Scenario
	boot    time.Duration
	grace   time.Duration // the app's DRAIN_GRACE
	extra   string        // more handoff.yml (replicas)
	liveID  string
	livePod int // host port of the live container
}

// strategy deploys release i of the app.
type strategy struct {
	Name string
	Note string
	// deploy returns when the new release serves, by the strategy's own lights.
	deploy   func(b *bench, i int)
	Proxy    bool // deploys through `handoff proxy`
	Replicas int  // handoff's replicas: (0: one container)
}

var strategies = []strategy{
	{"restart", "`docker stop` then `docker run` on the same port", (*bench).restart, false, 0},
	{"script", "blue/green by hand: run on another port, poll health with curl every 1 s, rewrite the Caddyfile, `caddy reload`, `docker stop` the old at once", (*bench).script, false, 0},
	{"handoff", "`handoff deploy`", (*bench).handoff, false, 0},
	{"handoff ×3", "`handoff deploy` of `replicas: 3`: three containers a release, all healthy before one switch", (*bench).handoff, false, 3},
	{"handoff+proxy", "`handoff deploy` with `proxy: handoff`: Caddy → handoff proxy → app, Caddy never reloaded", (*bench).handoff, true, 0},
}

// viaProxy says whether the strategy deploys through `handoff proxy`.
func (st strategy) viaProxy() bool { return st.Proxy }

func (b *bench) env(i int) []string {
	return []string{"RELEASE=r" + itest.Itoa(i), "BOOT_DELAY=" + b.boot.String(), "DRAIN_GRACE=" + b.grace.String()}
}

const stopTimeout = 10 // seconds, for every strategy: Docker's default

// restart is what most teams do first.
func (b *bench) restart(i int) {
	b.stopAndRemove(b.liveID)
	id, port := itest.AppContainer(b.t, b.s.API, b.name(i), b.livePod, b.env(i)...)
	b.waitServing(port, time.Second/10)
	b.liveID = id
}

// script is the blue/green procedure as teams write it in bash.
func (b *bench) script(i int) {
	id, port := itest.AppContainer(b.t, b.s.API, b.name(i), 0, b.env(i)...)
	b.waitServing(port, time.Second) // until curl -fsS .../health; do sleep 1; done
	file, err := os.ReadFile(b.s.Caddy.File)
	if err != nil {
		b.t.Fatal(err)
	}
	old := "127.0.0.1:" + itest.Itoa(b.livePod)
	next := strings.Replace(string(file), old, "127.0.0.1:"+itest.Itoa(port), 1)
	if err := os.WriteFile(b.s.Caddy.File, []byte(next), 0o644); err != nil {
		b.t.Fatal(err)
	}
	out, err := exec.Command(itest.CaddyBinary(b.t), "reload", "--config", b.s.Caddy.File, "--adapter", "caddyfile", "--address", b.s.Caddy.Admin).CombinedOutput()
	if err != nil {
		b.t.Fatalf("caddy reload: %v\n%s", err, out)
	}
	b.stopAndRemove(b.liveID)
	b.liveID, b.livePod = id, port
}

// handoff is the product.
func (b *bench) handoff(i int) {
	env := map[string]string{"BOOT_DELAY": b.boot.String(), "DRAIN_GRACE": b.grace.String()}
	b.s.Deploy(itest.Config{Release: "r" + itest.Itoa(i), Env: env, DrainTimeout: "15s", StartTimeout: "2m", NoCaddyfile: b.s.Proxy != nil, Extra: b.extra})
}

func (b *bench) name(i int) string { return b.s.Service + "-bench-" + itest.Itoa(i) }

func (b *bench) stopAndRemove(id string) {
	if id == "" {
		return
	}
	secs := stopTimeout
	ctx := context.Background()
	if _, err := b.s.API.ContainerStop(ctx, id, client.ContainerStopOptions{Timeout: &secs}); err != nil {
		b.t.Fatalf("docker stop: %v", err)
	}
	if _, err := b.s.API.ContainerRemove(ctx, id, client.ContainerRemoveOptions{Force: true}); err != nil {
		b.t.Fatalf("docker rm: %v", err)
	}
}

// waitServing polls the app's health directly, as a script's curl loop does.
func (b *bench) waitServing(port int, every time.Duration) {
	c := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		code, _, err := itest.Get(c, "http://127.0.0.1:"+itest.Itoa(port)+"/health", "")
		if err == nil && code == 200 {
			return
		}
		time.Sleep(every)
	}
	b.t.Fatalf("app on port %d never became healthy", port)
}
