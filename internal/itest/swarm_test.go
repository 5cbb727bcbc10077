package itest

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"
	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/swarm"
	"github.com/handoff-dev/handoff/internal/testhost"
)

// swarmFile is the handoff.yml of a service on a test swarm, release RELEASE.
const swarmFile = `service: web
engine: swarm
image: %s
port: 8000
replicas: 2
env: {RELEASE: "%s"%s}
health: {type: cmd, command: ["/testapp", "check"], interval: 500ms, timeout: 2s, start_timeout: %s}
drain_timeout: 10s
swarm: {proxy_image: %s}
`

// TestSwarmDeploysUnderLoadThroughEveryNode deploys on a swarm of three test servers
// as a user would: handoff swarm setup, then handoff deploy from this machine against a
// manager, under load sent to every node's proxy port. Every node's proxy reaches the
// release's tasks wherever they run; every deploy, and a rollback, fail no request.
func TestSwarmDeploysUnderLoadThroughEveryNode(t *testing.T) {
	testhost.RequireSwarmRun(t)
	bin := Build(t)
	sw := testhost.StartSwarm(t, 3, testhost.SwarmOptions{})
	node1 := sw.Nodes[0]
	node1.BuildTestImage(t, "hoff-testapp:1")
	node1.BuildHandoffImage(t, "handoff:test")
	app, proxyImage := sw.Registry.Push(t, node1, "hoff-testapp:1"), sw.Registry.Push(t, node1, "handoff:test")
	env := []string{"DOCKER_HOST=" + node1.DockerHost}
	dir, state := t.TempDir(), t.TempDir()

	res := HandoffEnv(t, bin, dir, state, env, "swarm", "setup", "--proxy-image", proxyImage)
	require.Zero(t, res.Code, "%s", res)
	t.Logf("handoff swarm setup: %s", strings.TrimSpace(res.Stdout))

	startTimeout := "20s"
	write := func(release, extraEnv string) {
		t.Helper()
		require.NoError(t, os.WriteFile(filepath.Join(dir, "handoff.yml"), fmt.Appendf(nil, swarmFile, app, release, extraEnv, startTimeout, proxyImage), 0o644))
	}
	deploy := func(release string) Result {
		t.Helper()
		write(release, "")
		return HandoffEnv(t, bin, dir, state, env, "deploy")
	}
	res = deploy("v1")
	require.Zero(t, res.Code, "first deploy: %s", res)
	t.Logf("first deploy in %s", res.Took.Round(time.Millisecond))

	// Every node's proxy answers, from tasks on any node.
	for _, n := range sw.Nodes {
		url := "http://" + n.Addr(swarm.DefaultProxyPort)
		WaitFor(t, 10*time.Second, "node "+n.IP+"'s proxy answers", func() bool {
			code, release, err := Get(plainClient, url+"/", SiteHost)
			return err == nil && code == 200 && release == "v1"
		})
	}

	var loads []*Load
	for _, n := range sw.Nodes {
		loads = append(loads, StartLoad(t, "http://"+n.Addr(swarm.DefaultProxyPort), SiteHost, LoadOptions{
			Workers: 1, Posts: 1, Slow: 1, WebSockets: 1, Pause: 10 * time.Millisecond, FrontNeverReloads: true}))
	}
	// scripts/test.sh runs 2 (CI's time), make test-swarm 10.
	deploys := 10
	if n, err := strconv.Atoi(os.Getenv("HANDOFF_SWARM_DEPLOYS")); err == nil && n > 1 {
		deploys = n
	}
	var took []time.Duration
	servesOnEveryNode := func(release string) {
		t.Helper()
		for _, n := range sw.Nodes {
			code, got, err := Get(plainClient, "http://"+n.Addr(swarm.DefaultProxyPort)+"/", SiteHost)
			require.NoError(t, err)
			require.Equal(t, 200, code)
			require.Equal(t, release, got, "node %s's proxy serves the release in service", n.IP)
		}
	}
	for i := 2; i <= deploys+1; i++ {
		res := deploy(fmt.Sprintf("v%d", i))
		require.Zero(t, res.Code, "deploy %d: %s", i, res)
		took = append(took, res.Took.Round(time.Millisecond))
		servesOnEveryNode(fmt.Sprintf("v%d", i))
	}
	res = HandoffEnv(t, bin, dir, state, env, "rollback")
	require.Zero(t, res.Code, "rollback: %s", res)
	servesOnEveryNode(fmt.Sprintf("v%d", deploys))

	// A release that never becomes healthy: exit 3, the live one serving on.
	startTimeout = "8s"
	write("sick", `, HEALTH_STATUS: "500"`)
	res = HandoffEnv(t, bin, dir, state, env, "deploy")
	startTimeout = "20s"
	require.Equal(t, 3, res.Code, "a never-healthy release: %s", res)
	t.Logf("never-healthy release refused in %s:\n%s", res.Took.Round(time.Millisecond), res.Stderr)

	// Two deploys at once: the second is refused at once, naming the first.
	write("slow", `, BOOT_DELAY: "4s"`)
	first := make(chan Result, 1)
	go func() { first <- HandoffEnv(t, bin, dir, state, env, "deploy") }()
	lockName, err := swarm.LockName("web")
	require.NoError(t, err)
	WaitFor(t, 30*time.Second, "the first deploy holds the swarm's lock", func() bool {
		got, err := node1.Docker().ServiceInspect(context.Background(), lockName, client.ServiceInspectOptions{})
		return err == nil && got.Service.Spec.Labels[swarm.LabelLock] != ""
	})
	second := HandoffEnv(t, bin, dir, state, env, "deploy")
	require.Equal(t, 4, second.Code, "a second deploy at once: %s", second)
	require.Contains(t, second.Stderr, "another handoff is running for this service")
	res = <-first
	require.Zero(t, res.Code, "the first of two deploys: %s", res)
	servesOnEveryNode("slow")
	t.Logf("a second deploy at once: %s", lastLine(second.Stderr))
	time.Sleep(time.Second)
	total, failed := 0, 0
	for i, l := range loads {
		got := l.Stop()
		total += got.Requests()
		failed += got.Failures()
		t.Logf("node %d: %d requests, %d failed: %s", i+1, got.Requests(), got.Failures(), got)
	}
	t.Logf("swarm of 3: %d deploys, a rollback, a never-healthy release and two deploys at once, through every node's proxy (%v each): %d requests, %d failed", deploys, took, total, failed)
	require.Zero(t, failed)
}

// plainClient makes a new connection for every request.
var plainClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
