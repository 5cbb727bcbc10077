package swarm

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
	"github.com/stretchr/testify/require"
)

var taskTime = time.Date(2026, 12, 3, 14, 0, 0, 0, time.UTC)

func tallyNode(id, hostname string, state swarm.NodeState) swarm.Node {
	return swarm.Node{ID: id, Description: swarm.NodeDescription{Hostname: hostname},
		Status: swarm.NodeStatus{State: state}, Spec: swarm.NodeSpec{Availability: swarm.NodeAvailabilityActive}}
}

// task is a task of release on node, in state, wanted running, with ip on the overlay.
func tallyTask(id string, release, nodeID string, state swarm.TaskState, ip string) swarm.Task {
	t := swarm.Task{ID: id, NodeID: nodeID, DesiredState: swarm.TaskStateRunning,
		Spec:   swarm.TaskSpec{ContainerSpec: &swarm.ContainerSpec{Labels: map[string]string{LabelRelease: release}}},
		Status: swarm.TaskStatus{State: state, Timestamp: taskTime}}
	if ip != "" {
		t.NetworksAttachments = []swarm.NetworkAttachment{
			{Network: swarm.Network{Spec: swarm.NetworkSpec{Annotations: swarm.Annotations{Name: "handoff"}}}, Addresses: []netip.Prefix{netip.MustParsePrefix(ip)}},
			{Network: swarm.Network{Spec: swarm.NetworkSpec{Annotations: swarm.Annotations{Name: "other"}}}, Addresses: []netip.Prefix{netip.MustParsePrefix("10.9.9.9/24")}},
		}
	}
	return t
}

func failedTask(id, release, nodeID string, state swarm.TaskState, err string, at time.Duration) swarm.Task {
	t := tallyTask(id, release, nodeID, state, "")
	t.DesiredState = swarm.TaskStateShutdown
	t.Status.Err, t.Status.Timestamp = err, taskTime.Add(at)
	return t
}

var tallyNodes = []swarm.Node{tallyNode("n1", "hn1", swarm.NodeStateReady), tallyNode("n2", "hn2", swarm.NodeStateReady), tallyNode("n3", "hn3", swarm.NodeStateReady)}

func TestCountReadyWithTheTasksIPs(t *testing.T) {
	tasks := []swarm.Task{
		tallyTask("a", "7", "n2", swarm.TaskStateRunning, "10.240.0.12/20"),
		tallyTask("b", "7", "n1", swarm.TaskStateRunning, "10.240.0.5/20"),
		tallyTask("old", "6", "n3", swarm.TaskStateRunning, "10.240.0.9/20"), // the release before, in this colour
		failedTask("r", "7", "n3", swarm.TaskStateRejected, "No such image: reg/api@sha256:ab", 0),
	}
	tally := Count("api-green", tasks, tallyNodes, 7, 2, "handoff")
	require.Equal(t, Ready, tally.Verdict)
	require.Equal(t, 2, tally.Healthy)
	require.Equal(t, []netip.Addr{netip.MustParseAddr("10.240.0.5"), netip.MustParseAddr("10.240.0.12")}, tally.IPs)
	require.NoError(t, tally.Err())
	require.Equal(t, []string{"hn3"}, tally.CouldNotPull(), "placed elsewhere: ready, with a warning")
	require.Equal(t, "2 of 2 tasks healthy; could not pull the image on hn3 (Swarm tries other nodes)", tally.Progress())
}

func TestCountNeverADownNodesRunningTask(t *testing.T) {
	nodes := []swarm.Node{tallyNode("n1", "hn1", swarm.NodeStateReady), tallyNode("n2", "hn2", swarm.NodeStateReady), tallyNode("n3", "hn3", swarm.NodeStateDown)}
	drained := tallyNode("n4", "hn4", swarm.NodeStateReady)
	drained.Spec.Availability = swarm.NodeAvailabilityDrain
	nodes = append(nodes, drained)
	tasks := []swarm.Task{
		tallyTask("a", "7", "n1", swarm.TaskStateRunning, "10.240.0.5/20"),
		tallyTask("b", "7", "n3", swarm.TaskStateRunning, "10.240.0.6/20"), // reads running: its node is down
		tallyTask("c", "7", "n4", swarm.TaskStateRunning, "10.240.0.7/20"), // its node drains
		tallyTask("d", "7", "n2", swarm.TaskStateStarting, "10.240.0.8/20"),
		tallyTask("e", "7", "gone", swarm.TaskStateRunning, "10.240.0.9/20"), // a node no more in the list
	}
	tally := Count("api-green", tasks, nodes, 7, 3, "handoff")
	require.Equal(t, Waiting, tally.Verdict)
	require.Equal(t, 1, tally.Healthy)
	require.Equal(t, []netip.Addr{netip.MustParseAddr("10.240.0.5")}, tally.IPs, "only the counted tasks' addresses")
	require.Equal(t, "1 of 3 tasks healthy; 1 starting on hn2; 3 on gone, hn3, hn4 not counted (node not ready)", tally.Progress())
}

func TestCountProgressOfStartingTasks(t *testing.T) {
	tasks := []swarm.Task{
		tallyTask("a", "7", "n1", swarm.TaskStateRunning, "10.240.0.5/20"),
		tallyTask("b", "7", "n3", swarm.TaskStateRunning, "10.240.0.6/20"),
		tallyTask("c", "7", "n2", swarm.TaskStateStarting, ""),
		tallyTask("d", "7", "", swarm.TaskStatePending, ""),
	}
	scaledAway := tallyTask("e", "7", "n2", swarm.TaskStateRunning, "10.240.0.7/20")
	scaledAway.DesiredState = swarm.TaskStateShutdown
	tasks = append(tasks, scaledAway)
	tally := Count("api-green", tasks, tallyNodes, 7, 3, "handoff")
	require.Equal(t, Waiting, tally.Verdict)
	require.Equal(t, "2 of 3 tasks healthy; 1 starting on hn2; 1 not placed on a node yet", tally.Progress())
}

func TestCountFailsAfterTheLimitNamingTheNodes(t *testing.T) {
	unhealthy := "task: non-zero exit (1): dockerexec: unhealthy container"
	noImage := `No such image: reg/api@sha256:ab`
	tasks := []swarm.Task{
		tallyTask("ok", "7", "n1", swarm.TaskStateRunning, "10.240.0.5/20"),
		failedTask("f1", "7", "n2", swarm.TaskStateRejected, noImage, 1*time.Second),
		failedTask("f2", "7", "n1", swarm.TaskStateFailed, unhealthy, 2*time.Second),
		failedTask("f3", "7", "n2", swarm.TaskStateRejected, noImage, 3*time.Second),
		failedTask("old", "6", "n3", swarm.TaskStateFailed, unhealthy, 4*time.Second), // another release's
	}
	// Two replicas: failing at max(3, 4) = 4, rejections for want of the image aside
	// (Swarm places those elsewhere).
	tally := Count("api-green", tasks, tallyNodes, 7, 2, "handoff")
	require.Equal(t, Waiting, tally.Verdict, "1 failure of 4 allowed")
	require.Equal(t, "1 of 2 tasks healthy; could not pull the image on hn2 (Swarm tries other nodes); 1 failed (fails at 4)", tally.Progress())

	tasks = append(tasks, failedTask("f4", "7", "n3", swarm.TaskStateFailed, unhealthy, 5*time.Second),
		failedTask("f5", "7", "n1", swarm.TaskStateFailed, unhealthy, 6*time.Second))
	require.Equal(t, Waiting, Count("api-green", tasks, tallyNodes, 7, 2, "handoff").Verdict, "3 of 4")
	tasks = append(tasks, failedTask("f6", "7", "n3", swarm.TaskStateFailed, unhealthy, 7*time.Second))
	tally = Count("api-green", tasks, tallyNodes, 7, 2, "handoff")
	require.Equal(t, Failed, tally.Verdict)
	require.Equal(t, []string{"hn2"}, tally.CouldNotPull())
	err := tally.Err()
	require.ErrorIs(t, err, ErrReleaseFailed)
	require.EqualError(t, err, "release failed to become healthy: api-green release 7: 6 tasks failed (on hn2 2, hn1 2, hn3 2); last on hn3: "+
		unhealthy+"; could not pull the image on hn2")

	require.Equal(t, 3, FailureLimit(1))
	require.Equal(t, 6, FailureLimit(3))
}

// Rejections for want of the image end the wait at once when every node a task could
// go to (ready and active; a node down is none of those) was rejected three times and
// runs no task of the release; a node rejected once that then pulled is not one.
func TestCountFailsWhenNoNodeCanPull(t *testing.T) {
	noImage := `No such image: reg/api@sha256:ab`
	var tasks []swarm.Task
	reject := func(node string, n int) {
		for range n {
			tasks = append(tasks, failedTask(fmt.Sprintf("r%d", len(tasks)), "7", node, swarm.TaskStateRejected, noImage, time.Duration(len(tasks))*time.Second))
		}
	}
	reject("n1", 3)
	reject("n2", 2)
	down := []swarm.Node{tallyNodes[0], tallyNodes[1], tallyNode("n3", "hn3", swarm.NodeStateDown)}
	require.Equal(t, Waiting, Count("api-green", tasks, down, 7, 2, "handoff").Verdict, "hn2 rejected twice: maybe a blip")
	reject("n2", 1)
	tally := Count("api-green", tasks, down, 7, 2, "handoff")
	require.Equal(t, Failed, tally.Verdict, "both nodes up could not")
	require.ErrorContains(t, tally.Err(), "could not pull the image on hn1, hn2")
	require.Equal(t, Waiting, Count("api-green", tasks, tallyNodes, 7, 2, "handoff").Verdict, "hn3 may pull it")

	// hn1 pulled in the end: it runs a task, so it is no node that cannot pull.
	tasks = append(tasks, tallyTask("ok", "7", "n1", swarm.TaskStateRunning, "10.240.0.5/20"))
	tally = Count("api-green", tasks, down, 7, 2, "handoff")
	require.Equal(t, Waiting, tally.Verdict)
	require.Equal(t, []string{"hn2"}, tally.CouldNotPull())
}

// fakeTasks answers each poll with the next of its answers; past them it fails.
type fakeTasks struct {
	polls   int
	answers []func() ([]swarm.Task, error)
	nodes   []swarm.Node
	cancel  func() // called from the poll of the last answer on, when set
}

func (f *fakeTasks) TaskList(ctx context.Context, opts client.TaskListOptions) (client.TaskListResult, error) {
	i := f.polls
	f.polls++
	if i >= len(f.answers)-1 && f.cancel != nil {
		f.cancel()
	}
	if i >= len(f.answers) {
		return client.TaskListResult{}, errors.New("fake: polled past its answers")
	}
	tasks, err := f.answers[i]()
	return client.TaskListResult{Items: tasks}, err
}

func (f *fakeTasks) NodeList(ctx context.Context, opts client.NodeListOptions) (client.NodeListResult, error) {
	return client.NodeListResult{Items: f.nodes}, nil
}

// fakeAfter is a clock whose every wait has passed at once; it counts the waits.
type fakeAfter struct{ waits []time.Duration }

func (f *fakeAfter) After(d time.Duration) <-chan time.Time {
	f.waits = append(f.waits, d)
	c := make(chan time.Time, 1)
	c <- taskTime
	return c
}

func TestWaitUntilReady(t *testing.T) {
	api := &fakeTasks{nodes: tallyNodes, answers: []func() ([]swarm.Task, error){
		func() ([]swarm.Task, error) {
			return []swarm.Task{tallyTask("a", "7", "n1", swarm.TaskStateStarting, "")}, nil
		},
		func() ([]swarm.Task, error) {
			return nil, errors.New("Error response from daemon: rpc error: code = Unknown desc = The swarm does not have a leader")
		},
		func() ([]swarm.Task, error) {
			return []swarm.Task{tallyTask("a", "7", "n1", swarm.TaskStateRunning, "10.240.0.5/20"), tallyTask("b", "7", "n2", swarm.TaskStateStarting, "")}, nil
		},
		func() ([]swarm.Task, error) {
			return []swarm.Task{tallyTask("a", "7", "n1", swarm.TaskStateRunning, "10.240.0.5/20"), tallyTask("b", "7", "n2", swarm.TaskStateRunning, "10.240.0.6/20")}, nil
		},
	}}
	clock := &fakeAfter{}
	var said []string
	tally, err := Wait(context.Background(), api, WaitOptions{Service: "api-green", Release: 7, Replicas: 2, Interval: time.Second,
		After: clock.After, Progress: func(t Tally) { said = append(said, t.Progress()) }})
	require.NoError(t, err)
	require.Equal(t, Ready, tally.Verdict)
	require.Len(t, tally.IPs, 2)
	require.Equal(t, []time.Duration{time.Second, time.Second, time.Second}, clock.waits, "a manager without a leader asked again at the next poll")
	require.Equal(t, []string{"0 of 2 tasks healthy; 1 starting on hn1", "1 of 2 tasks healthy; 1 starting on hn2", "2 of 2 tasks healthy"}, said)
}

func TestWaitRemembersFailuresSwarmForgets(t *testing.T) {
	// One replica (failing at 3); Swarm keeps only the newest failed task of the slot.
	api := &fakeTasks{nodes: tallyNodes}
	for i, id := range []string{"f1", "f2", "f3"} {
		api.answers = append(api.answers, func() ([]swarm.Task, error) {
			return []swarm.Task{failedTask(id, "7", "n1", swarm.TaskStateFailed, "unhealthy container", time.Duration(i)*time.Second)}, nil
		})
	}
	tally, err := Wait(context.Background(), api, WaitOptions{Service: "api-green", Release: 7, Replicas: 1, After: (&fakeAfter{}).After})
	require.ErrorIs(t, err, ErrReleaseFailed)
	require.Equal(t, Failed, tally.Verdict)
	require.ErrorContains(t, err, "3 tasks failed (on hn1 3)")
}

func TestWaitEndsWithItsContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	api := &fakeTasks{nodes: tallyNodes, cancel: cancel, answers: []func() ([]swarm.Task, error){
		func() ([]swarm.Task, error) {
			return []swarm.Task{tallyTask("a", "7", "n1", swarm.TaskStateStarting, "")}, nil
		},
	}}
	tally, err := Wait(ctx, api, WaitOptions{Service: "api-green", Release: 7, Replicas: 1, After: func(time.Duration) <-chan time.Time { return nil }})
	require.ErrorIs(t, err, context.Canceled)
	require.EqualError(t, err, "wait for api-green release 7: context canceled (0 of 1 tasks healthy; 1 starting on hn1)")
	require.Equal(t, Waiting, tally.Verdict)
}

func TestWaitStopsAtARefusal(t *testing.T) {
	api := &fakeTasks{nodes: tallyNodes, answers: []func() ([]swarm.Task, error){
		func() ([]swarm.Task, error) { return nil, errors.New("Error response from daemon: permission denied") },
	}}
	_, err := Wait(context.Background(), api, WaitOptions{Service: "api-green", Release: 7, Replicas: 1, After: (&fakeAfter{}).After})
	require.EqualError(t, err, "list tasks of api-green: Error response from daemon: permission denied")
}

func TestCountTakesAnExitedServerForAFailure(t *testing.T) {
	var tasks []swarm.Task
	for i, id := range []string{"c1", "c2", "c3"} {
		done := failedTask(id, "7", "n1", swarm.TaskStateComplete, "", time.Duration(i)*time.Second)
		done.Status.Message = "finished"
		tasks = append(tasks, done)
	}
	tally := Count("api-green", tasks, tallyNodes, 7, 1, "handoff")
	require.Equal(t, Failed, tally.Verdict)
	require.EqualError(t, tally.Err(), "release failed to become healthy: api-green release 7: 3 tasks failed (on hn1 3); last on hn1: exited 0: stopped as unhealthy, or the app ended by itself")
}

func TestCountAPausedNodesRunningTasks(t *testing.T) {
	// A pause places no new task on a node but keeps its tasks running and in DNS.
	nodes := []swarm.Node{tallyNode("n1", "hn1", swarm.NodeStateReady), tallyNode("n2", "hn2", swarm.NodeStateReady)}
	nodes[1].Spec.Availability = swarm.NodeAvailabilityPause
	tasks := []swarm.Task{
		tallyTask("a", "7", "n1", swarm.TaskStateRunning, "10.240.0.5/20"),
		tallyTask("b", "7", "n2", swarm.TaskStateRunning, "10.240.0.6/20"),
	}
	tally := Count("api-green", tasks, nodes, 7, 2, "handoff")
	require.Equal(t, Ready, tally.Verdict)
	require.Equal(t, []netip.Addr{netip.MustParseAddr("10.240.0.5"), netip.MustParseAddr("10.240.0.6")}, tally.IPs, "the paused node's task is in DNS: expected")
	require.Equal(t, "2 of 2 tasks healthy; 1 of them on paused hn2", tally.Progress())
}

func TestCountSinceLeavesOutTheReleasesEarlierLife(t *testing.T) {
	// Release 7 failed twice in this colour, was retired, and is scaled up again by a
	// rollback written at since.
	since := taskTime.Add(time.Hour)
	before := func(task swarm.Task) swarm.Task { task.Meta.CreatedAt = since.Add(-time.Minute); return task }
	after := func(task swarm.Task) swarm.Task { task.Meta.CreatedAt = since.Add(time.Second); return task }
	scaledAway := after(failedTask("gone", "7", "n3", swarm.TaskStateFailed, "unhealthy container", 0))
	scaledAway.DesiredState = swarm.TaskStateRemove
	tasks := []swarm.Task{
		before(failedTask("old1", "7", "n1", swarm.TaskStateFailed, "unhealthy container", 0)),
		before(failedTask("old2", "7", "n2", swarm.TaskStateComplete, "", 0)),
		scaledAway,
		after(failedTask("new", "7", "n2", swarm.TaskStateFailed, "unhealthy container", time.Hour)),
		after(tallyTask("a", "7", "n1", swarm.TaskStateRunning, "10.240.0.5/20")),
	}
	tally := CountSince("api-green", tasks, tallyNodes, 7, 1, "handoff", since)
	require.Equal(t, Ready, tally.Verdict)
	require.Equal(t, []string{"new"}, []string{tally.Failures[0].Task})
	require.Len(t, tally.Failures, 1, "only the failure since the write")

	tasks[4] = after(tallyTask("a", "7", "n1", swarm.TaskStateStarting, ""))
	api := &fakeTasks{nodes: tallyNodes, answers: []func() ([]swarm.Task, error){
		func() ([]swarm.Task, error) { return tasks, nil },
		func() ([]swarm.Task, error) { return tasks[:3], nil },
	}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	api.cancel = cancel
	tally, err := Wait(ctx, api, WaitOptions{Service: "api-green", Release: 7, Replicas: 1, Since: since, After: (&fakeAfter{}).After})
	require.ErrorIs(t, err, context.Canceled, "waiting, not failed by the release's earlier failures")
	require.Len(t, tally.Failures, 1)
}
