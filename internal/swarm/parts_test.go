package swarm

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/swarm"
	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/deploy"
	"github.com/handoff-dev/handoff/internal/proxy/wire"
)

func int64p(n int64) *int64 { return &n }

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return string(b)
}

func TestPartRowsPutEachNodeWithItsProxysAnswer(t *testing.T) {
	nodes := []ProxyNode{
		{ID: "n1", Hostname: "hn1", Role: "manager", State: "ready", Availability: "active", Proxy: "running"},
		{ID: "n2", Hostname: "hn2", Role: "worker", State: "down", Availability: "active", Proxy: "running"},
		{ID: "n3", Hostname: "hn3", Role: "worker", State: "ready", Availability: "active", Proxy: "rejected", Err: "No such image: reg/handoff:1"},
		{ID: "n4", Hostname: "hn4", Role: "worker", State: "ready", Availability: "active", Proxy: "running"},
		{ID: "n6", Hostname: "hn6", Role: "worker", State: "ready", Availability: "active", Proxy: "running"},
		{ID: "n7", Hostname: "hn7", Role: "worker", State: "ready", Availability: "active", Proxy: "running"},
	}
	serving := `{"name":"web","generation":8,"route":[{"release":"web-4","weight":100,"endpoints":[{"endpoint":"tasks.web-green:8000","in_flight":3}]}],"draining":[{"upstream":"tasks.web-blue:8000","in_flight":2}]}`
	results := []NodeResult{
		{NodeID: "n1", Hostname: "hn1", State: "complete", Logs: []string{serving, ""}},
		{NodeID: "n2", Hostname: "hn2", State: NotReached, Err: "node down"},
		{NodeID: "n3", Hostname: "hn3", State: "failed", ExitCode: 1, Logs: []string{"handoff: dial unix /run/handoff/proxy.sock: connect: no such file or directory"}},
		{NodeID: "n4", Hostname: "hn4", State: "complete", Logs: []string{"null"}},
		{NodeID: "n5", Hostname: "hn5", State: "complete", Logs: []string{"null"}}, // left between the reads
		{NodeID: "n7", Hostname: "hn7", State: "running", Logs: []string{`{"phase":"read"}`}},
	}
	require.Equal(t, []deploy.PartStatus{
		{Name: "hn1", Role: "manager", State: "ready", Availability: "active", Proxy: "running", Generation: 8, Route: "web-4 (tasks.web-green:8000):100", InFlight: int64p(5), Draining: 2},
		{Name: "hn2", Role: "worker", State: "down", Availability: "active", Proxy: "running", Note: "not reached: node down"},
		{Name: "hn3", Role: "worker", State: "ready", Availability: "active", Proxy: "rejected",
			Note: "its proxy did not answer: failed, exit 1: handoff: dial unix /run/handoff/proxy.sock: connect: no such file or directory; its proxy task: No such image: reg/handoff:1"},
		{Name: "hn4", Role: "worker", State: "ready", Availability: "active", Proxy: "running", Note: "its proxy has no route for the service"},
		{Name: "hn6", Role: "worker", State: "ready", Availability: "active", Proxy: "running", Note: "not asked: the node joined after its proxy was read"},
		{Name: "hn7", Role: "worker", State: "ready", Availability: "active", Proxy: "running", Note: "its proxy did not answer before the job's timeout (task running)"},
		{Name: "hn5", Note: "the node left the swarm after its proxy was read; its proxy has no route for the service"},
	}, partRows(nodes, results))
}

func TestSwitchResultsAreReadAsSetRouteReadsThem(t *testing.T) {
	done := `{"phase":"done","service":"web","to":"tasks.web-green:8000","generation":8,"in_flight":0,"drained":true,"retired":["tasks.web-blue:8000"]}`
	results := []NodeResult{
		{Hostname: "hn1", State: "complete", Logs: []string{`{"phase":"switch"}`, done}},
		{Hostname: "hn2", State: "complete", Logs: []string{`{"phase":"done","retired":null}`}},
		{Hostname: "hn3", State: "failed", ExitCode: ctlDrainTimeout, Logs: []string{"handoff: drain timed out: 2 requests still ran on [tasks.web-blue:8000] of web after --drain 30s; they were cut, and tasks.web-green:8000 serves"}},
		{Hostname: "hn4", State: "failed", ExitCode: ctlOldGeneration, Logs: []string{"handoff: generation 8 is not above 9"}},
		{NodeID: "n5", Hostname: "hn5", State: NotReached, Err: "node down"},
		{Hostname: "hn6", State: "failed", ExitCode: 1, Logs: []string{strings.Repeat("x", 300)}},
		{Hostname: "hn7", State: "running", Logs: []string{`{"phase":"switch"}`, `{"phase":"drain","in_flight":2}`}},
		{NodeID: "n8", Hostname: "hn8", State: NotReached, Err: "no task placed (availability drain, or the job's constraints)"},
	}
	proxies := []ProxyNode{{ID: "n5", State: "down", Proxy: "orphaned"}, {ID: "n8", State: "ready", Proxy: "shutdown"}}
	got := switchResults(results, "web-4 (tasks.web-green:8000):100", 8, 3*time.Second, proxies)
	route, took := "web-4 (tasks.web-green:8000):100", 3*time.Second
	require.Equal(t, []deploy.PartResult{
		{Node: "hn1", Route: route, Generation: 8, Result: deploy.PartSwitched, Detail: "drained tasks.web-blue:8000", Took: took},
		{Node: "hn2", Route: route, Generation: 8, Result: deploy.PartSwitched, Detail: "nothing to drain", Took: took},
		{Node: "hn3", Route: route, Generation: 8, Result: deploy.PartDrainTimeout, ExitCode: 5, Detail: results[2].Logs[0], Took: took},
		{Node: "hn4", Route: route, Generation: 8, Result: deploy.PartRefused, ExitCode: 4, Detail: "handoff: generation 8 is not above 9", Took: took},
		{Node: "hn5", Route: route, Generation: 8, Result: deploy.PartNotReached, Detail: "node down"},
		{Node: "hn6", Route: route, Generation: 8, Result: deploy.PartFailed, ExitCode: 1, Detail: "failed: " + strings.Repeat("x", partDetailMax-len("failed: ")) + "…", Took: took},
		{Node: "hn7", Route: route, Generation: 8, Result: "unfinished", Detail: `the job ended first (task running): {"phase":"drain","in_flight":2}`, Took: took},
		{Node: "hn8", Route: route, Generation: 8, Result: deploy.PartNotReached, Detail: "no proxy there: no task placed (availability drain, or the job's constraints)"},
	}, got)
}

// partsSwarm is a swarm of hn1 (ready), hn2 (down) and hn3 (ready), each with its
// proxy, web-green's task on hn1, and the job's tasks as given.
func partsSwarm(job []swarm.Task, logs map[string]string) *fakeJobs {
	proxy := func(id, node string) swarm.Task {
		return swarm.Task{ID: id, NodeID: node, DesiredState: swarm.TaskStateRunning, Status: swarm.TaskStatus{State: swarm.TaskStateRunning}}
	}
	return &fakeJobs{
		nodes: []swarm.Node{tallyNode("n1", "hn1", swarm.NodeStateReady), tallyNode("n2", "hn2", swarm.NodeStateDown), tallyNode("n3", "hn3", swarm.NodeStateReady)},
		logs:  logs,
		taskList: map[string][]swarm.Task{
			"job1":       job,
			"web-green":  {tallyTask("g1", "4", "n1", swarm.TaskStateRunning, "10.240.0.7/20")},
			ProxyService: {proxy("p1", "n1"), proxy("p2", "n2"), proxy("p3", "n3")},
		},
	}
}

func partsProxies(api JobAPI) *Proxies {
	return &Proxies{API: api, Service: "web", Image: "reg/handoff@sha256:ab", Port: 8000,
		Generation: func(context.Context) (uint64, error) { return 8, nil }}
}

// Each switch keeps how every node took it, a node that refused it too; a switch
// refused before its job ran has none.
func TestProxiesKeepTheLastSwitchOfEachNode(t *testing.T) {
	api := partsSwarm([]swarm.Task{
		jobTask("t1", "n1", swarm.TaskStateComplete, 0, ""),
		jobTask("t3", "n3", swarm.TaskStateFailed, ctlOldGeneration, "task: non-zero exit (4)"),
	}, map[string]string{
		"t1": `{"phase":"done","retired":["tasks.web-blue:8000"]}` + "\n",
		"t3": "handoff: generation 8 is not above 9\n",
	})
	p := partsProxies(api)
	to := deploy.Only("web-4", "tasks.web-green:8000")
	err := p.SetRoute(context.Background(), deploy.Only("web-3", "tasks.web-blue:8000"), to)
	require.ErrorIs(t, err, deploy.ErrProxy)
	last := p.LastSwitch()
	require.Len(t, last, 3)
	for i, want := range []struct{ node, result, detail string }{
		{"hn1", deploy.PartSwitched, "drained tasks.web-blue:8000"},
		{"hn2", deploy.PartNotReached, "node down"},
		{"hn3", deploy.PartRefused, "handoff: generation 8 is not above 9"},
	} {
		require.Equal(t, want.node, last[i].Node)
		require.Equal(t, want.result, last[i].Result, want.node)
		require.Equal(t, want.detail, last[i].Detail, want.node)
		require.Equal(t, to.String(), last[i].Route)
		require.Equal(t, uint64(8), last[i].Generation)
	}
	require.Positive(t, last[0].Took)

	err = p.SetRoute(context.Background(), to, deploy.Route{{Release: "web-3", Endpoints: []string{"tasks.web-blue:8000"}, Weight: 90}, {Release: "web-4", Endpoints: []string{"tasks.web-green:8000"}, Weight: 10}})
	require.ErrorIs(t, err, deploy.ErrProxy)
	require.Empty(t, p.LastSwitch(), "a split is refused before any node is told")
}

func TestProxiesPartStatusHasARowPerNode(t *testing.T) {
	serving := wire.ServiceState{Name: "web", Generation: 8, Route: []wire.BackendState{{Release: "web-4", Weight: 100, Endpoints: []wire.EndpointState{{Endpoint: "tasks.web-green:8000", InFlight: 1}}}}}
	api := partsSwarm([]swarm.Task{jobTask("t1", "n1", swarm.TaskStateComplete, 0, ""), jobTask("t3", "n3", swarm.TaskStateComplete, 0, "")},
		map[string]string{"t1": mustJSON(t, serving) + "\n", "t3": "null\n"})
	rows, err := partsProxies(api).PartStatus(context.Background())
	require.NoError(t, err)
	require.Len(t, rows, 3)
	require.Equal(t, deploy.PartStatus{Name: "hn1", State: "ready", Availability: "active", Proxy: "running", Generation: 8, Route: "web-4 (tasks.web-green:8000):100", InFlight: int64p(1)}, rows[0])
	require.Equal(t, "not reached: node down", rows[1].Note)
	require.Equal(t, "its proxy has no route for the service", rows[2].Note)

	_, err = (&Proxies{API: api, Service: "web"}).PartStatus(context.Background())
	require.ErrorIs(t, err, deploy.ErrProxyUnreached, "no proxy image: no job, no rows")
}

// A node whose proxy does not answer before the job's timeout is a row that says
// so; the other nodes' rows are kept.
func TestProxiesPartStatusKeepsTheRowsOfAJobThatTimedOut(t *testing.T) {
	serving := wire.ServiceState{Name: "web", Generation: 8, Route: []wire.BackendState{{Release: "web-4", Weight: 100, Endpoints: []wire.EndpointState{{Endpoint: "tasks.web-green:8000"}}}}}
	api := partsSwarm([]swarm.Task{jobTask("t1", "n1", swarm.TaskStateComplete, 0, ""), jobTask("t3", "n3", swarm.TaskStateRunning, 0, "")},
		map[string]string{"t1": mustJSON(t, serving) + "\n"})
	p := partsProxies(api)
	p.Timeout = 10 * time.Millisecond
	rows, err := p.PartStatus(context.Background())
	require.NoError(t, err)
	require.Len(t, rows, 3)
	require.Equal(t, "web-4 (tasks.web-green:8000):100", rows[0].Route)
	require.Equal(t, "not reached: node down", rows[1].Note)
	require.Equal(t, "its proxy did not answer before the job's timeout (task running)", rows[2].Note)

	// A deploy's read of the same answers fails: what hn3 serves is not known.
	_, err = p.Route(context.Background(), nil)
	require.ErrorIs(t, err, deploy.ErrProxyUnreached)
	require.ErrorContains(t, err, "not ended on hn3")
}

// Held, the reads share one `ctl status` job until released; a switch between
// them is read afresh.
func TestProxiesHeldReadOnce(t *testing.T) {
	serving := wire.ServiceState{Name: "web", Generation: 8, Route: []wire.BackendState{{Release: "web-4", Weight: 100, Endpoints: []wire.EndpointState{{Endpoint: "tasks.web-green:8000", InFlight: 1}}}}}
	api := partsSwarm([]swarm.Task{jobTask("t1", "n1", swarm.TaskStateComplete, 0, ""), jobTask("t3", "n3", swarm.TaskStateComplete, 0, "")},
		map[string]string{"t1": mustJSON(t, serving) + "\n", "t3": mustJSON(t, serving) + "\n"})
	p := partsProxies(api)
	ctx := context.Background()
	jobs := func() int {
		api.mu.Lock()
		defer api.mu.Unlock()
		return len(api.created)
	}

	release := p.Hold()
	route, err := p.Route(ctx, nil)
	require.NoError(t, err)
	in, err := p.InFlight(ctx, "tasks.web-green:8000")
	require.NoError(t, err)
	require.Equal(t, 2, in.Requests)
	behind, err := p.Behind(ctx, route)
	require.NoError(t, err)
	require.Empty(t, behind)
	_, err = p.PartStatus(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, jobs(), "one job for every read")

	require.NoError(t, p.SetRoute(ctx, route, route))
	require.Equal(t, 2, jobs())
	_, err = p.Route(ctx, nil)
	require.NoError(t, err)
	require.Equal(t, 3, jobs(), "read again after a switch")

	release()
	_, err = p.Route(ctx, nil)
	require.NoError(t, err)
	_, err = p.Route(ctx, nil)
	require.NoError(t, err)
	require.Equal(t, 5, jobs(), "released: each read its own job")
}

// A node that runs no proxy (a drained manager) is not reached by any switch:
// its result says why, that it is not one the switch missed.
func TestASwitchSaysANodeWithoutAProxyHasNone(t *testing.T) {
	api := partsSwarm([]swarm.Task{jobTask("t1", "n1", swarm.TaskStateComplete, 0, "")}, map[string]string{"t1": `{"phase":"done"}` + "\n"})
	api.taskList[ProxyService] = api.taskList[ProxyService][:2] // none on hn3
	p := partsProxies(api)
	require.NoError(t, p.SetRoute(context.Background(), deploy.Only("web-3", "tasks.web-blue:8000"), deploy.Only("web-4", "tasks.web-green:8000")))
	last := p.LastSwitch()
	require.Len(t, last, 3)
	require.Equal(t, deploy.PartNotReached, last[2].Result)
	require.Equal(t, "no proxy there: no task placed (availability active, or the job's constraints)", last[2].Detail)
	require.Equal(t, "node down", last[1].Detail, "hn2 runs its proxy: the switch missed it")
}

// A paused node runs its proxy on, serving, where no job goes: the proxies cannot be
// read while it is so, and PointsAt never answers as though it pointed nowhere.
func TestAPausedNodesProxyIsNotReadAsPointingNowhere(t *testing.T) {
	serving := wire.ServiceState{Name: "web", Generation: 8, Route: []wire.BackendState{{Release: "web-4", Weight: 100, Endpoints: []wire.EndpointState{{Endpoint: "tasks.web-green:8000"}}}}}
	api := partsSwarm([]swarm.Task{jobTask("t1", "n1", swarm.TaskStateComplete, 0, "")}, map[string]string{"t1": mustJSON(t, serving) + "\n"})
	api.nodes[2].Spec.Availability = swarm.NodeAvailabilityPause
	p := partsProxies(api)
	_, err := p.PointsAt(context.Background(), "tasks.web-blue:8000")
	require.ErrorIs(t, err, deploy.ErrProxyUnreached)
	require.ErrorContains(t, err, "hn3 (paused: its proxy serves on where no job goes; make it active with docker node update --availability active hn3")
	api.taskList[ProxyService][2].Status.State = swarm.TaskStateStarting // restarting: it restores its route
	_, err = p.PointsAt(context.Background(), "tasks.web-blue:8000")
	require.ErrorContains(t, err, "hn3 (paused", "a proxy starting may serve too")

	api.nodes[2].Spec.Availability = swarm.NodeAvailabilityActive
	api.taskList[ProxyService] = api.taskList[ProxyService][:2] // and no proxy on hn3: nothing to read there
	got, err := p.PointsAt(context.Background(), "tasks.web-green:8000")
	require.NoError(t, err)
	require.Equal(t, []string{"web on hn1"}, got)
}
