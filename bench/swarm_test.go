package bench

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
	"github.com/stretchr/testify/require"
	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/handoff-dev/handoff/internal/itest"
	hswarm "github.com/handoff-dev/handoff/internal/swarm"
	"github.com/handoff-dev/handoff/internal/testhost"
)

// The swarm benchmark (issue 20): one app on a swarm of three test servers, deployed
// three ways under the same load, sent to every node's published port: handoff (two
// colour services, every node's proxy switched by a job), and Swarm's own rolling
// update of one service (`docker service update`), start-first and stop-first, set
// as a careful user would. Each way deploys N releases and rolls back once, alone
// on the swarm. `make bench-swarm` runs it (HANDOFF_BENCH_SWARM=1, and the swarm
// harness's HANDOFF_TEST_SWARM=1); it writes bench-results/swarm.md, .json and .svg.

// swarmSettings shape the run, from the environment.
type swarmSettings struct {
	Deploys int `json:"deploys"` // HANDOFF_BENCH_SWARM_DEPLOYS: each way, then a rollback
	// Timeout is how long one deploy is waited for (HANDOFF_BENCH_SWARM_TIMEOUT): a
	// Swarm update that has not completed by then is recorded as such, with what
	// Swarm says, and the next one is sent.
	Timeout time.Duration `json:"timeout_ns"`
	// Stalls: a way gives up after this many deploys in a row did not complete, the
	// rest recorded as not tried, its rollback still tried (HANDOFF_BENCH_SWARM_STALLS;
	// 0: never gives up).
	Stalls int           `json:"stalls"`
	Pause  time.Duration `json:"pause_ns"` // steady state before the first deploy and after each
	// Load is what each node's port gets (HANDOFF_BENCH_SWARM_RATE: GETs per second).
	Load loadSettings `json:"load_per_node"`
	Only string       `json:"only,omitempty"` // HANDOFF_BENCH_ONLY: these ways only (names, comma-separated)
	Out  string       `json:"-"`
}

func readSwarmSettings(t *testing.T) swarmSettings {
	s := swarmSettings{Deploys: 10, Timeout: 90 * time.Second, Stalls: 3, Pause: 2 * time.Second, Out: "bench-results",
		Load: loadSettings{GetRate: 40, PostRate: 10, Connections: 2, SlowLoops: 1, SlowFor: 2 * time.Second, StreamFor: 8 * time.Second}}
	envInt(t, "HANDOFF_BENCH_SWARM_DEPLOYS", &s.Deploys)
	envDuration(t, "HANDOFF_BENCH_SWARM_TIMEOUT", &s.Timeout)
	envInt(t, "HANDOFF_BENCH_SWARM_STALLS", &s.Stalls)
	envInt(t, "HANDOFF_BENCH_SWARM_RATE", &s.Load.GetRate)
	s.Only = os.Getenv("HANDOFF_BENCH_ONLY")
	if v := os.Getenv("HANDOFF_BENCH_OUT"); v != "" {
		s.Out = v
	}
	return s
}

// The ways, in the order they run and the report shows them.
const (
	wayHandoff    = "handoff"
	wayStartFirst = "swarm start-first"
	wayStopFirst  = "swarm stop-first"
)

var swarmWayNames = []string{wayHandoff, wayStartFirst, wayStopFirst}

// The published ports of the ways: handoff's proxies on every node, each plain
// service on its own.
var swarmWayPorts = map[string]int{wayHandoff: hswarm.DefaultProxyPort, wayStartFirst: 8001, wayStopFirst: 8002}

func TestSwarmUnderLoad(t *testing.T) {
	if os.Getenv("HANDOFF_BENCH_SWARM") != "1" {
		t.Skip("a benchmark: set HANDOFF_BENCH_SWARM=1 and HANDOFF_TEST_SWARM=1, or run `make bench-swarm`")
	}
	testhost.RequireSwarmRun(t)
	set := readSwarmSettings(t)
	require.Positive(t, set.Deploys, "HANDOFF_BENCH_SWARM_DEPLOYS")
	rep := swarmReport{Settings: set, Machine: machine(), Started: time.Now().UTC()}

	sw := testhost.StartSwarm(t, 3, testhost.SwarmOptions{})
	node1 := sw.Nodes[0]
	node1.BuildTestImage(t, "hoff-testapp:1")
	node1.BuildHandoffImage(t, "handoff:test")
	images := swarmImages{app: sw.Registry.Push(t, node1, "hoff-testapp:1"), proxy: sw.Registry.Push(t, node1, "handoff:test")}
	t.Logf("swarm of 3 ready in %s", sw.ReadyIn.Round(time.Millisecond))

	for _, name := range swarmWayNames {
		if set.Only != "" && !slices.Contains(strings.Split(set.Only, ","), name) {
			continue
		}
		t.Run(name, func(t *testing.T) {
			var way swarmWay
			if name == wayHandoff {
				way = handoffWay(t, set, sw, images)
			} else {
				way = plainSwarmWay(t, set, sw, images, name)
			}
			res := runSwarmWay(t, set, sw, way)
			t.Logf("%s", res.summary())
			rep.Ways = append(rep.Ways, res)
			removeServices(t, sw) // each way alone on the swarm
		})
	}
	md := rep.markdown()
	t.Log("\n" + md)
	require.NoError(t, os.MkdirAll(set.Out, 0o755))
	data, err := json.MarshalIndent(rep, "", "  ")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(set.Out, "swarm.json"), data, 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(set.Out, "swarm.md"), []byte(md), 0o644))
	svg, err := swarmChart(rep)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(set.Out, "swarm.svg"), svg, 0o644))
	abs, _ := filepath.Abs(set.Out)
	t.Logf("wrote %s/swarm.md, swarm.json and swarm.svg", abs)
}

// swarmImages are the images every node pulls from the test registry.
type swarmImages struct{ app, proxy string }

// swarmWay is one way of deploying, set up on the swarm with release v1 serving on
// every node's Port.
type swarmWay struct {
	Name, Note string
	Port       int
	// deploy makes release the one in service and returns once it is, or once it
	// gave up: it fills Completed, State and Message.
	deploy func(release string) swarmDeploy
	// rollback goes back to the release before.
	rollback func() swarmDeploy
}

// runSwarmWay puts the load on every node's port, deploys v2..vN+1 and rolls back
// once, a pause of steady state around each, and counts what the load got.
func runSwarmWay(t *testing.T, set swarmSettings, sw *testhost.Swarm, way swarmWay) swarmWayResult {
	res := swarmWayResult{Name: way.Name, Note: way.Note, Port: way.Port}
	maxDuration := time.Duration(set.Deploys+1)*(set.Timeout+set.Pause+10*time.Second) + 5*time.Minute
	res.Origin = time.Now()
	var loads []*benchLoad
	for _, n := range sw.Nodes {
		l := startLoad("http://"+n.Addr(way.Port), itest.SiteHost, set.Load, maxDuration)
		t.Cleanup(func() { l.stop() }) // a way that fails half-way leaves no load behind
		loads = append(loads, l)
	}
	time.Sleep(set.Pause)
	one := func(d func() swarmDeploy) {
		start := time.Now()
		got := d()
		got.Start, got.Took = start, time.Since(start)
		got.Serves = serving(sw, way.Port)
		t.Logf("%s %s: %s", way.Name, got.what(), got.outcome())
		res.Deploys = append(res.Deploys, got)
		time.Sleep(set.Pause)
	}
	stalled := 0
	for i := 2; i <= set.Deploys+1; i++ {
		if set.Stalls > 0 && stalled >= set.Stalls {
			res.NotTried = set.Deploys + 2 - i
			t.Logf("%s: %d deploys in a row did not complete; the other %d not tried", way.Name, stalled, res.NotTried)
			break
		}
		release := fmt.Sprintf("v%d", i)
		one(func() swarmDeploy { return way.deploy(release) })
		if res.Deploys[len(res.Deploys)-1].Completed {
			stalled = 0
		} else {
			stalled++
		}
	}
	one(way.rollback)
	var all [][]vegeta.Result
	var events [][]event
	for _, l := range loads {
		r, e := l.stop()
		all, events = append(all, r), append(events, e)
	}
	res.tally(all, events)
	return res
}

// serving is what each node's port answers now: its release, or the error.
func serving(sw *testhost.Swarm, port int) string {
	var out []string
	for _, n := range sw.Nodes {
		code, release, err := itest.Get(plainHTTP, "http://"+n.Addr(port)+"/", itest.SiteHost)
		switch {
		case err != nil:
			out = append(out, connErrKind(err.Error()))
		case code != 200:
			out = append(out, fmt.Sprint(code))
		default:
			out = append(out, release)
		}
	}
	return strings.Join(out, " ")
}

// plainHTTP makes a new connection for every request.
var plainHTTP = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// handoffSwarmFile is the handoff.yml of the benchmark's service: the plain
// services' replicas, one per node, health check and drain.
const handoffSwarmFile = `service: web
engine: swarm
image: %s
port: 8000
replicas: 3
env: {RELEASE: "%s"}
health: {type: cmd, command: ["/testapp", "check"], interval: 500ms, timeout: 2s, start_timeout: 30s}
drain_timeout: 15s
swarm: {proxy_image: %s, max_per_node: 1}
`

// handoffWay sets handoff up on the swarm as a user would (handoff swarm setup, then
// handoff deploy from this machine against node 1, a manager) and deploys v1.
func handoffWay(t *testing.T, set swarmSettings, sw *testhost.Swarm, images swarmImages) swarmWay {
	bin := filepath.Join(t.TempDir(), "handoff")
	build(t, itest.RepoRoot(t), bin, "./cmd/handoff")
	dir, state := t.TempDir(), t.TempDir()
	env := []string{"DOCKER_HOST=" + sw.Nodes[0].DockerHost}
	run := func(args ...string) itest.Result { return itest.HandoffEnv(t, bin, dir, state, env, args...) }
	write := func(release string) {
		require.NoError(t, os.WriteFile(filepath.Join(dir, "handoff.yml"), fmt.Appendf(nil, handoffSwarmFile, images.app, release, images.proxy), 0o644))
	}
	r := run("swarm", "setup", "--proxy-image", images.proxy)
	require.Zero(t, r.Code, "handoff swarm setup: %s", r)
	write("v1")
	r = run("deploy")
	require.Zero(t, r.Code, "first deploy: %s", r)
	waitServing(t, sw, hswarm.DefaultProxyPort, "v1")
	done := func(release string, r itest.Result) swarmDeploy {
		d := swarmDeploy{Release: release, Completed: r.Code == 0, State: fmt.Sprintf("exit %d", r.Code)}
		if r.Code != 0 {
			d.Message = lastNonEmpty(r.Stderr)
		}
		return d
	}
	return swarmWay{
		Name: wayHandoff, Port: hswarm.DefaultProxyPort,
		Note: "`handoff deploy` (engine: swarm): the idle colour service started beside the live one (3 replicas, one per node, dnsrr on the overlay), its tasks healthy, every node's proxy switched by a global job, drained, the old colour scaled to 0; `handoff rollback` back. Load to every node's proxy (:9001).",
		deploy: func(release string) swarmDeploy {
			write(release)
			return done(release, run("deploy"))
		},
		rollback: func() swarmDeploy {
			d := done("", run("rollback"))
			d.Rollback = true
			return d
		},
	}
}

// plainSwarmWay creates one plain service as a careful user of Swarm's rolling update
// would set it: 3 replicas, at most one per node, the port published in host mode
// (the routing mesh needs IPVS, which this kernel lacks), the app's health check,
// one task at a time, rolled back on a failure; the order is the way's.
func plainSwarmWay(t *testing.T, set swarmSettings, sw *testhost.Swarm, images swarmImages, name string) swarmWay {
	order := swarm.UpdateOrderStartFirst
	if name == wayStopFirst {
		order = swarm.UpdateOrderStopFirst
	}
	port := swarmWayPorts[name]
	api := sw.Nodes[0].Docker()
	svcName := "plain-" + strings.TrimPrefix(name, "swarm ")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	created, err := api.ServiceCreate(ctx, client.ServiceCreateOptions{Spec: plainServiceSpec(svcName, images.app, port, order)})
	require.NoError(t, err, "create service %s", svcName)
	waitServing(t, sw, port, "v1")
	p := &plainService{api: api, id: created.ID, timeout: set.Timeout}
	return swarmWay{
		Name: name, Port: port,
		Note:     fmt.Sprintf("`docker service update --env-add RELEASE=vN` of one service (3 replicas, max 1 per node, host-mode port %d, HEALTHCHECK `/testapp check` every 500ms, update-order %s, parallelism 1, monitor 5s, failure action rollback, stop grace 15s), waited until its UpdateStatus is completed (at most %s); `docker service rollback` back.", port, order, set.Timeout),
		deploy:   func(release string) swarmDeploy { return p.update(release, false) },
		rollback: func() swarmDeploy { return p.update("", true) },
	}
}

func plainServiceSpec(name, image string, port int, order swarm.UpdateOrder) swarm.ServiceSpec {
	replicas := uint64(3)
	grace, monitor := 15*time.Second, 5*time.Second
	update := swarm.UpdateConfig{Parallelism: 1, Order: order, Monitor: monitor, FailureAction: swarm.UpdateFailureActionRollback}
	rollback := swarm.UpdateConfig{Parallelism: 1, Order: order, Monitor: monitor, FailureAction: swarm.UpdateFailureActionPause}
	return swarm.ServiceSpec{
		Annotations: swarm.Annotations{Name: name},
		TaskTemplate: swarm.TaskSpec{
			ContainerSpec: &swarm.ContainerSpec{
				Image: image,
				Env:   []string{"RELEASE=v1"},
				Healthcheck: &container.HealthConfig{Test: []string{"CMD", "/testapp", "check"},
					Interval: 500 * time.Millisecond, Timeout: 2 * time.Second, Retries: 3},
				StopGracePeriod: &grace,
			},
			RestartPolicy: &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionAny},
			Placement:     &swarm.Placement{MaxReplicas: 1},
			Networks:      []swarm.NetworkAttachmentConfig{{Target: testhost.SwarmNetwork}},
		},
		Mode:           swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: &replicas}},
		UpdateConfig:   &update,
		RollbackConfig: &rollback,
		// dnsrr: a VIP needs IPVS; host-mode ports need no mesh.
		EndpointSpec: &swarm.EndpointSpec{Mode: swarm.ResolutionModeDNSRR, Ports: []swarm.PortConfig{
			{Protocol: network.TCP, TargetPort: 8000, PublishedPort: uint32(port), PublishMode: swarm.PortConfigPublishModeHost}}},
	}
}

// plainService is a service updated by Swarm itself.
type plainService struct {
	api     *client.Client
	id      string
	timeout time.Duration
}

// update sends release (or, with rollback, `docker service rollback`) and waits
// until Swarm says the update is over, or for p.timeout.
func (p *plainService) update(release string, rollback bool) swarmDeploy {
	d := swarmDeploy{Release: release, Rollback: rollback}
	ctx, cancel := context.WithTimeout(context.Background(), p.timeout+30*time.Second)
	defer cancel()
	got, err := p.api.ServiceInspect(ctx, p.id, client.ServiceInspectOptions{})
	if err != nil {
		d.Message = "inspect: " + err.Error()
		return d
	}
	spec := got.Service.Spec
	opts := client.ServiceUpdateOptions{Version: got.Service.Version, Spec: spec}
	if rollback {
		opts.Rollback = "previous"
	} else {
		spec.TaskTemplate.ContainerSpec.Env = []string{"RELEASE=" + release}
		opts.Spec = spec
	}
	sent := time.Now()
	if _, err := p.api.ServiceUpdate(ctx, p.id, opts); err != nil {
		d.Message = "update: " + err.Error()
		return d
	}
	deadline := sent.Add(p.timeout)
	for {
		got, err := p.api.ServiceInspect(ctx, p.id, client.ServiceInspectOptions{})
		// The status of this update: the one before may still be read for a moment.
		if st := got.Service.UpdateStatus; err == nil && st != nil && st.StartedAt != nil && !st.StartedAt.Before(sent.Add(-time.Second)) {
			d.State, d.Message = string(st.State), st.Message
			switch st.State {
			case swarm.UpdateStateCompleted:
				d.Completed = !rollback
				return d
			case swarm.UpdateStateRollbackCompleted:
				d.Completed = rollback // an update rolled back by its failure action did not complete
				return d
			case swarm.UpdateStatePaused, swarm.UpdateStateRollbackPaused:
				return d
			}
		}
		if time.Now().After(deadline) {
			if d.State == "" {
				d.State = "no update status"
			}
			if stuck := p.unfinishedTasks(ctx); stuck != "" {
				d.Message = strings.TrimPrefix(d.Message+"; "+stuck, "; ")
			}
			return d
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// unfinishedTasks says what the service's tasks meant to run but not running are
// doing, and why: "2 pending: no suitable node (…)".
func (p *plainService) unfinishedTasks(ctx context.Context) string {
	tasks, err := p.api.TaskList(ctx, client.TaskListOptions{Filters: make(client.Filters).Add("service", p.id).Add("desired-state", "running")})
	if err != nil {
		return "task list: " + err.Error()
	}
	seen := map[string]int{}
	for _, task := range tasks.Items {
		if task.Status.State == swarm.TaskStateRunning {
			continue
		}
		why := cmp.Or(task.Status.Err, task.Status.Message)
		seen[fmt.Sprintf("%s: %s", task.Status.State, why)]++
	}
	var out []string
	for what, n := range seen {
		out = append(out, fmt.Sprintf("%d task(s) %s", n, what))
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}

// waitServing waits until every node's port answers release.
func waitServing(t *testing.T, sw *testhost.Swarm, port int, release string) {
	for _, n := range sw.Nodes {
		itest.WaitFor(t, 2*time.Minute, fmt.Sprintf("node %d's port %d serves %s", n.Index, port, release), func() bool {
			code, got, err := itest.Get(plainHTTP, "http://"+n.Addr(port)+"/", itest.SiteHost)
			if err != nil || code != 200 || got != release {
				time.Sleep(200 * time.Millisecond)
				return false
			}
			return true
		})
	}
}

// removeServices removes every service of the swarm and waits, for a minute at
// most, until no node runs a container, so that the next way has the swarm to
// itself; what still runs then is logged.
func removeServices(t *testing.T, sw *testhost.Swarm) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	api := sw.Nodes[0].Docker()
	list, err := api.ServiceList(ctx, client.ServiceListOptions{})
	require.NoError(t, err)
	for _, svc := range list.Items {
		_, err := api.ServiceRemove(ctx, svc.ID, client.ServiceRemoveOptions{})
		require.NoError(t, err, "remove service %s", svc.Spec.Name)
	}
	var running []string
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(500 * time.Millisecond) {
		running = nil
		for _, n := range sw.Nodes {
			got, err := n.Docker().ContainerList(ctx, client.ContainerListOptions{})
			if err != nil {
				running = append(running, fmt.Sprintf("node %d: %v", n.Index, err))
			}
			for _, c := range got.Items {
				running = append(running, fmt.Sprintf("node %d: %s %s", n.Index, strings.Join(c.Names, ","), c.Status))
			}
		}
		if len(running) == 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(running) > 0 {
		t.Logf("a minute after every service was removed, still running: %s", strings.Join(running, "; "))
	}
}

func lastNonEmpty(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
