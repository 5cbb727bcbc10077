package swarm

import (
	"context"
	"slices"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/api/types/system"
	"github.com/moby/moby/client"
	"github.com/stretchr/testify/require"
)

// setupFake is a manager as setup sees it: one network, one service, nodes and tasks.
type setupFake struct {
	manager  bool
	network  *network.Inspect
	service  *swarm.Service
	nodes    []swarm.Node
	tasks    []swarm.Task
	created  []string // what setup created or updated, in order
	lastSpec swarm.ServiceSpec
	// held keeps the old proxies running after an update, as Swarm does until it has
	// replaced each; warnings are what a write answers with.
	held     bool
	warnings []string
	// nodesDown is how many NodeLists more fail as a manager without a leader does.
	nodesDown int
}

func (f *setupFake) Info(context.Context, client.InfoOptions) (client.SystemInfoResult, error) {
	info := system.Info{}
	info.Swarm.ControlAvailable = f.manager
	info.Swarm.LocalNodeState = swarm.LocalNodeStateActive
	if !f.manager {
		info.Swarm.LocalNodeState = swarm.LocalNodeStateInactive
	}
	return client.SystemInfoResult{Info: info}, nil
}

func (f *setupFake) NetworkInspect(_ context.Context, id string, _ client.NetworkInspectOptions) (client.NetworkInspectResult, error) {
	if f.network == nil || f.network.Name != id {
		return client.NetworkInspectResult{}, cerrdefs.ErrNotFound
	}
	return client.NetworkInspectResult{Network: *f.network}, nil
}

func (f *setupFake) NetworkCreate(_ context.Context, name string, o client.NetworkCreateOptions) (client.NetworkCreateResult, error) {
	f.network = &network.Inspect{Network: network.Network{Name: name, ID: "n" + name, Driver: o.Driver, Scope: o.Scope}}
	f.created = append(f.created, "network "+name)
	return client.NetworkCreateResult{ID: name}, nil
}

func (f *setupFake) ServiceInspect(_ context.Context, id string, _ client.ServiceInspectOptions) (client.ServiceInspectResult, error) {
	if f.service == nil || f.service.Spec.Name != id {
		return client.ServiceInspectResult{}, cerrdefs.ErrNotFound
	}
	// Swarm answers with the networks' IDs.
	svc := *f.service
	svc.Spec.TaskTemplate.Networks = slices.Clone(svc.Spec.TaskTemplate.Networks)
	for i, n := range svc.Spec.TaskTemplate.Networks {
		if f.network != nil && n.Target == f.network.Name {
			svc.Spec.TaskTemplate.Networks[i].Target = f.network.ID
		}
	}
	return client.ServiceInspectResult{Service: svc}, nil
}

func (f *setupFake) ServiceCreate(_ context.Context, o client.ServiceCreateOptions) (client.ServiceCreateResult, error) {
	f.service = &swarm.Service{ID: "p1", Spec: o.Spec}
	f.lastSpec = o.Spec
	f.created = append(f.created, "service "+o.Spec.Name)
	f.placeProxies()
	return client.ServiceCreateResult{ID: "p1", Warnings: f.warnings}, nil
}

func (f *setupFake) ServiceUpdate(_ context.Context, id string, o client.ServiceUpdateOptions) (client.ServiceUpdateResult, error) {
	f.service.Spec = o.Spec
	f.lastSpec = o.Spec
	f.created = append(f.created, "update "+id)
	if !f.held {
		f.placeProxies()
	}
	return client.ServiceUpdateResult{Warnings: f.warnings}, nil
}

func (f *setupFake) NodeList(context.Context, client.NodeListOptions) (client.NodeListResult, error) {
	if f.nodesDown > 0 {
		f.nodesDown--
		return client.NodeListResult{}, errLeaderLost
	}
	return client.NodeListResult{Items: f.nodes}, nil
}

func (f *setupFake) TaskList(context.Context, client.TaskListOptions) (client.TaskListResult, error) {
	return client.TaskListResult{Items: f.tasks}, nil
}

// placeProxies runs a proxy task of the service's spec on every ready, active node, as
// a global service does, and shuts down those of an earlier spec.
func (f *setupFake) placeProxies() {
	for i := range f.tasks {
		f.tasks[i].DesiredState, f.tasks[i].Status.State = swarm.TaskStateShutdown, swarm.TaskStateShutdown
	}
	for _, n := range f.nodes {
		if n.Status.State == swarm.NodeStateReady && n.Spec.Availability == swarm.NodeAvailabilityActive {
			f.tasks = append(f.tasks, swarm.Task{NodeID: n.ID, Spec: f.service.Spec.TaskTemplate, DesiredState: swarm.TaskStateRunning, Status: swarm.TaskStatus{State: swarm.TaskStateRunning}})
		}
	}
}

func setupNode(id string, state swarm.NodeState) swarm.Node {
	n := swarm.Node{ID: id}
	n.Description.Hostname = id
	n.Spec.Role = swarm.NodeRoleManager
	n.Spec.Availability = swarm.NodeAvailabilityActive
	n.Status.State = state
	return n
}

func newSetupFake() *setupFake {
	return &setupFake{manager: true, nodes: []swarm.Node{setupNode("hn1", swarm.NodeStateReady), setupNode("hn2", swarm.NodeStateReady), setupNode("hn3", swarm.NodeStateDown)}}
}

var setupOpts = SetupOptions{ProxyImage: "reg:5000/handoff:1", Wait: time.Millisecond, Poll: time.Millisecond}

func TestSetupCreatesTheOverlayAndTheProxyAndWaitsForEachReadyNode(t *testing.T) {
	f := newSetupFake()
	res, err := Setup(context.Background(), f, setupOpts)
	require.NoError(t, err)
	require.Equal(t, []string{"network handoff", "service handoff-proxy"}, f.created)
	require.True(t, res.NetworkCreated)
	require.Equal(t, "created", res.Proxy)
	require.Len(t, res.Nodes, 3)
	require.Equal(t, "running", res.Nodes[0].Proxy)
	require.Equal(t, "", res.Nodes[2].Proxy, "a down node has no proxy, and is not waited for")

	spec := f.lastSpec
	require.NotNil(t, spec.Mode.Global)
	require.Equal(t, swarm.ResolutionModeDNSRR, spec.EndpointSpec.Mode)
	require.Equal(t, []swarm.PortConfig{{Protocol: network.TCP, TargetPort: 9001, PublishedPort: 9001, PublishMode: swarm.PortConfigPublishModeHost}}, spec.EndpointSpec.Ports)
	require.Equal(t, swarm.UpdateOrderStopFirst, spec.UpdateConfig.Order, "host ports: two proxies cannot hold one")
	require.Equal(t, []string{"/handoff", "proxy", "--socket", ProxySocket, "--state-file", "/var/lib/handoff/proxy.json"}, spec.TaskTemplate.ContainerSpec.Command)
	require.Equal(t, ProxyRunVolume, spec.TaskTemplate.ContainerSpec.Mounts[0].Source)

	again, err := Setup(context.Background(), f, setupOpts)
	require.NoError(t, err)
	require.Equal(t, "unchanged", again.Proxy)
	require.False(t, again.NetworkCreated)
	require.Len(t, f.created, 2, "a second setup changes nothing")
}

func TestSetupRefusesWhatItDidNotMakeOrWouldChange(t *testing.T) {
	ctx := context.Background()
	t.Run("not a manager", func(t *testing.T) {
		f := newSetupFake()
		f.manager = false
		_, err := Setup(ctx, f, setupOpts)
		require.ErrorContains(t, err, `not a manager of a swarm (node state "inactive"): point DOCKER_HOST or --host at a manager`)
	})
	t.Run("no image", func(t *testing.T) {
		_, err := Setup(ctx, newSetupFake(), SetupOptions{})
		require.ErrorContains(t, err, "give --proxy-image")
	})
	t.Run("a bridge network of the name", func(t *testing.T) {
		f := newSetupFake()
		f.network = &network.Inspect{Network: network.Network{Name: "handoff", Driver: "bridge", Scope: "local"}}
		_, err := Setup(ctx, f, setupOpts)
		require.ErrorContains(t, err, "network handoff exists as a bridge network of scope local")
		require.Empty(t, f.created)
	})
	t.Run("someone else's service of the name", func(t *testing.T) {
		f := newSetupFake()
		f.service = &swarm.Service{ID: "x", Spec: swarm.ServiceSpec{Annotations: swarm.Annotations{Name: ProxyService}}}
		_, err := Setup(ctx, f, setupOpts)
		require.ErrorContains(t, err, "a service handoff-proxy exists that handoff did not make")
	})
	t.Run("another image: only with --update", func(t *testing.T) {
		f := newSetupFake()
		_, err := Setup(ctx, f, setupOpts)
		require.NoError(t, err)
		// Swarm pins the image it was given by its digest: the same image.
		f.service.Spec.TaskTemplate.ContainerSpec.Image = setupOpts.ProxyImage + "@sha256:abc"
		_, err = Setup(ctx, f, setupOpts)
		require.NoError(t, err)

		o := setupOpts
		o.ProxyImage, o.Ports = "reg:5000/handoff:2", []int{9001, 9002}
		_, err = Setup(ctx, f, o)
		require.ErrorContains(t, err, "handoff-proxy runs image reg:5000/handoff:1@sha256:abc, not reg:5000/handoff:2, ports [9001:9001/tcp(host)], not [9001:9001/tcp(host) 9002:9002/tcp(host)]; --update changes it")
		o.Update = true
		res, err := Setup(ctx, f, o)
		require.NoError(t, err)
		require.Equal(t, "updated", res.Proxy)
		require.Equal(t, "reg:5000/handoff:2", f.service.Spec.TaskTemplate.ContainerSpec.Image)
	})
	t.Run("a bad port", func(t *testing.T) {
		o := setupOpts
		o.Ports = []int{9001, 9001}
		_, err := Setup(ctx, newSetupFake(), o)
		require.ErrorContains(t, err, "port 9001: give each port once")
	})
}

func TestSetupNamesTheNodesWithoutARunningProxy(t *testing.T) {
	f := newSetupFake()
	f.nodes = append(f.nodes, setupNode("hn4", swarm.NodeStateReady))
	_, err := Setup(context.Background(), f, setupOpts)
	require.NoError(t, err, "the fake places a task on hn4 too")
	// hn4's task cannot pull the image; hn1's is still starting.
	for i := range f.tasks {
		switch f.tasks[i].NodeID {
		case "hn4":
			f.tasks[i].Status = swarm.TaskStatus{State: swarm.TaskStateRejected, Err: "No such image: reg:5000/handoff:1"}
		case "hn1":
			f.tasks[i].Status.State = swarm.TaskStateStarting
		}
	}
	_, err = WaitProxies(context.Background(), f, time.Millisecond, time.Millisecond)
	require.EqualError(t, err, "swarm setup: no running proxy after 1ms on hn1 (starting); hn4 (rejected: No such image: reg:5000/handoff:1); `docker service ps handoff-proxy` shows its tasks")
}

func TestProxyNodesTakesTheTaskMeantToRun(t *testing.T) {
	now := time.Now()
	old := swarm.Task{NodeID: "hn1", DesiredState: swarm.TaskStateShutdown, Status: swarm.TaskStatus{State: swarm.TaskStateFailed, Err: "task: non-zero exit (2)"}}
	old.Meta.CreatedAt = now
	cur := swarm.Task{NodeID: "hn1", DesiredState: swarm.TaskStateRunning, Status: swarm.TaskStatus{State: swarm.TaskStateRunning}}
	cur.Meta.CreatedAt = now.Add(-time.Second) // an older clock: meant to run wins anyway
	got := proxyNodes([]swarm.Node{setupNode("hn1", swarm.NodeStateReady)}, []swarm.Task{cur, old})
	require.Equal(t, "running", got[0].Proxy)
	require.Empty(t, got[0].Err)
}

func TestSetupTakesTheImageAsTheClientWroteItForTheSame(t *testing.T) {
	// The client writes reg:5000/handoff as reg:5000/handoff:latest and
	// docker.io/team/handoff:1 as team/handoff:1; Swarm pins either by its digest.
	const digest = "@sha256:4bc453b53cb3d914b45f4b250294236adba2c0e09ff6f03793949e7e39fd4cc1"
	for _, c := range []struct{ written, stored string }{
		{"reg:5000/handoff", "reg:5000/handoff:latest" + digest},
		{"docker.io/team/handoff:1", "team/handoff:1" + digest},
		{"docker.io/library/handoff:1", "handoff:1" + digest},
		{"reg:5000/handoff" + digest, "reg:5000/handoff:latest" + digest},
	} {
		t.Run(c.written, func(t *testing.T) {
			f := newSetupFake()
			o := setupOpts
			o.ProxyImage = c.written
			_, err := Setup(context.Background(), f, o)
			require.NoError(t, err)
			f.service.Spec.TaskTemplate.ContainerSpec.Image = c.stored
			again, err := Setup(context.Background(), f, o)
			require.NoError(t, err)
			require.Equal(t, "unchanged", again.Proxy)
		})
	}
	for _, c := range []struct{ written, stored string }{
		{"reg:5000/handoff", "reg:5000/handoff:2" + digest},
		{"docker.io/team/handoff:1", "other/handoff:1" + digest},
		{"reg:5000/handoff@sha256:0000000000000000000000000000000000000000000000000000000000000000", "reg:5000/handoff:latest" + digest},
	} {
		t.Run(c.written+" is not "+c.stored, func(t *testing.T) {
			f := newSetupFake()
			o := setupOpts
			o.ProxyImage = c.written
			_, err := Setup(context.Background(), f, o)
			require.NoError(t, err)
			f.service.Spec.TaskTemplate.ContainerSpec.Image = c.stored
			_, err = Setup(context.Background(), f, o)
			require.ErrorContains(t, err, "--update changes it")
		})
	}
}

// stepClock is a clock each wait of which has passed at once, moving it on; step, when
// set, runs at each wait with its number (1, 2…).
type stepClock struct {
	now   time.Time
	waits int
	step  func(int)
}

func (c *stepClock) Now() time.Time { return c.now }

func (c *stepClock) After(d time.Duration) <-chan time.Time {
	c.now = c.now.Add(d)
	c.waits++
	if c.step != nil {
		c.step(c.waits)
	}
	ch := make(chan time.Time, 1)
	ch <- c.now
	return ch
}

// updated is setupOpts for another image, with --update, on clock.
func updated(clock *stepClock) SetupOptions {
	o := setupOpts
	o.ProxyImage, o.Update, o.Wait, o.Poll = "reg:5000/handoff:2", true, time.Minute, time.Second
	o.Now, o.After = clock.Now, clock.After
	return o
}

func TestSetupUpdateWaitsUntilEveryProxyIsReplaced(t *testing.T) {
	ctx := context.Background()
	t.Run("replaced", func(t *testing.T) {
		f := newSetupFake()
		_, err := Setup(ctx, f, setupOpts)
		require.NoError(t, err)
		// An earlier update's status, completed, is still there until Swarm starts this one.
		started := taskTime
		f.service.UpdateStatus = &swarm.UpdateStatus{State: swarm.UpdateStateCompleted, StartedAt: &started}
		f.held = true
		clock := &stepClock{now: taskTime, step: func(n int) {
			if n == 3 {
				f.placeProxies()
			}
		}}
		res, err := Setup(ctx, f, updated(clock))
		require.NoError(t, err)
		require.Equal(t, "updated", res.Proxy)
		require.Equal(t, 3, clock.waits, "waited until Swarm replaced the proxies")
		require.Equal(t, uint64(1), f.lastSpec.TaskTemplate.ForceUpdate, "the new tasks marked")
	})
	t.Run("never replaced", func(t *testing.T) {
		f := newSetupFake()
		_, err := Setup(ctx, f, setupOpts)
		require.NoError(t, err)
		f.held = true
		_, err = Setup(ctx, f, updated(&stepClock{now: taskTime}))
		require.EqualError(t, err, "swarm setup: handoff-proxy not updated after 1m0s on hn1 (no task); hn2 (no task); `docker service ps handoff-proxy` shows its tasks")
	})
	t.Run("paused by Swarm", func(t *testing.T) {
		f := newSetupFake()
		_, err := Setup(ctx, f, setupOpts)
		require.NoError(t, err)
		f.held = true
		clock := &stepClock{now: taskTime, step: func(int) {
			started := taskTime.Add(time.Minute)
			f.service.UpdateStatus = &swarm.UpdateStatus{State: swarm.UpdateStatePaused, StartedAt: &started,
				Message: "update paused due to failure or early termination of task x1"}
		}}
		_, err = Setup(ctx, f, updated(clock))
		require.EqualError(t, err, "swarm setup: the update of handoff-proxy is paused: update paused due to failure or early termination of task x1; `docker service ps handoff-proxy` shows why, then run setup --update again")
	})
}

func TestSetupReturnsTheWritesWarningsOneLineEach(t *testing.T) {
	f := newSetupFake()
	f.warnings = []string{"image reg:5000/handoff:1 could not be accessed on a registry to record\nits digest. Each node will access reg:5000/handoff:1 independently,\npossibly leading to different nodes running different\nversions of the image.\n"}
	res, err := Setup(context.Background(), f, setupOpts)
	require.NoError(t, err)
	require.Equal(t, []string{"image reg:5000/handoff:1 could not be accessed on a registry to record its digest. Each node will access reg:5000/handoff:1 independently, possibly leading to different nodes running different versions of the image."}, res.Warnings)
	o := updated(&stepClock{now: taskTime})
	res, err = Setup(context.Background(), f, o)
	require.NoError(t, err)
	require.Len(t, res.Warnings, 1, "an update's too")
}

func TestWaitProxiesAsksAgainAManagerWithoutALeader(t *testing.T) {
	f := newSetupFake()
	_, err := Setup(context.Background(), f, setupOpts)
	require.NoError(t, err)
	f.nodesDown = 2
	clock := &stepClock{now: taskTime}
	nodes, err := waitProxies(context.Background(), f, time.Minute, time.Second, setupClock{now: clock.Now, after: clock.After})
	require.NoError(t, err)
	require.Len(t, nodes, 3)
	require.Equal(t, 2, clock.waits)
}
