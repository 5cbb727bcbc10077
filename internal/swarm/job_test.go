package swarm

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/testhost"
)

// fakeJobs is a manager running one job: its tasks are what tasks says at each poll.
type fakeJobs struct {
	mu      sync.Mutex
	nodes   []swarm.Node
	tasks   func(poll int) []swarm.Task
	polls   int
	created []swarm.ServiceSpec
	exists  bool // a service of the job's name is there already
	removed []string
	// removedLive says each removal's context was still live when it was made.
	removedLive []bool
	logs        map[string]string // task ID → its stdout
	// createErr, when set, is what the create answers, after making the job when
	// createMade: a leader lost after the write committed.
	createErr  error
	createMade bool
	// inspectErrs are what the next inspects answer, one each.
	inspectErrs []error
	// removeErr, when set, is what every removal answers.
	removeErr error
	// services are the services there, for ServiceList and ServiceInspect.
	services []swarm.Service
	// taskList, when set, answers TaskList by service ID instead of tasks.
	taskList map[string][]swarm.Task
}

func (f *fakeJobs) ServiceInspect(_ context.Context, id string, _ client.ServiceInspectOptions) (client.ServiceInspectResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.inspectErrs) > 0 {
		err := f.inspectErrs[0]
		f.inspectErrs = f.inspectErrs[1:]
		return client.ServiceInspectResult{}, err
	}
	for _, svc := range f.services {
		if svc.ID == id || svc.Spec.Name == id {
			return client.ServiceInspectResult{Service: svc}, nil
		}
	}
	return client.ServiceInspectResult{}, fmt.Errorf("service %s not found: %w", id, cerrdefs.ErrNotFound)
}

func (f *fakeJobs) ServiceList(_ context.Context, opts client.ServiceListOptions) (client.ServiceListResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []swarm.Service
	for _, svc := range f.services {
		match := true
		for filter := range opts.Filters["label"] {
			k, v, withValue := strings.Cut(filter, "=")
			got, ok := svc.Spec.Labels[k]
			match = match && ok && (!withValue || got == v)
		}
		if match {
			out = append(out, svc)
		}
	}
	return client.ServiceListResult{Items: out}, nil
}

func (f *fakeJobs) ServiceCreate(_ context.Context, opts client.ServiceCreateOptions) (client.ServiceCreateResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.exists {
		return client.ServiceCreateResult{}, fmt.Errorf("Error response from daemon: rpc error: code = AlreadyExists desc = name conflicts with an existing object: %w", cerrdefs.ErrConflict)
	}
	if f.createErr != nil && !f.createMade {
		return client.ServiceCreateResult{}, f.createErr
	}
	f.created = append(f.created, opts.Spec)
	f.services = append(f.services, swarm.Service{ID: "job1", Spec: opts.Spec})
	if f.createErr != nil {
		return client.ServiceCreateResult{}, f.createErr
	}
	return client.ServiceCreateResult{ID: "job1"}, nil
}

func (f *fakeJobs) ServiceRemove(ctx context.Context, id string, _ client.ServiceRemoveOptions) (client.ServiceRemoveResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.removeErr != nil {
		return client.ServiceRemoveResult{}, f.removeErr
	}
	f.removed = append(f.removed, id)
	f.removedLive = append(f.removedLive, ctx.Err() == nil)
	return client.ServiceRemoveResult{}, nil
}

func (f *fakeJobs) TaskList(_ context.Context, opts client.TaskListOptions) (client.TaskListResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.taskList != nil {
		var tasks []swarm.Task
		for id := range opts.Filters["service"] {
			tasks = append(tasks, f.taskList[id]...)
		}
		return client.TaskListResult{Items: tasks}, nil
	}
	f.polls++
	return client.TaskListResult{Items: f.tasks(f.polls)}, nil
}

func (f *fakeJobs) NodeList(context.Context, client.NodeListOptions) (client.NodeListResult, error) {
	return client.NodeListResult{Items: f.nodes}, nil
}

func (f *fakeJobs) TaskLogs(_ context.Context, id string, _ client.TaskLogsOptions) (client.TaskLogsResult, error) {
	var buf bytes.Buffer
	if out := f.logs[id]; out != "" {
		// The engine's multiplexed stream: a header (stream 1, stdout; the length) per frame.
		header := make([]byte, 8)
		header[0] = 1
		binary.BigEndian.PutUint32(header[4:], uint32(len(out)))
		buf.Write(header)
		buf.WriteString(out)
	}
	return io.NopCloser(&buf), nil
}

func jobTask(id, nodeID string, state swarm.TaskState, exit int, err string) swarm.Task {
	return swarm.Task{ID: id, NodeID: nodeID, Status: swarm.TaskStatus{State: state, Err: err,
		ContainerStatus: &swarm.ContainerStatus{ExitCode: exit}}}
}

var jobNodes = []swarm.Node{tallyNode("n2", "hn2", swarm.NodeStateReady), tallyNode("n1", "hn1", swarm.NodeStateReady), tallyNode("n3", "hn3", swarm.NodeStateDown)}

func TestGlobalJobResultsByNode(t *testing.T) {
	api := &fakeJobs{nodes: jobNodes, logs: map[string]string{"t1": strings.Repeat("line\n", 30) + "switched\n"}, tasks: func(poll int) []swarm.Task {
		if poll == 1 {
			return []swarm.Task{jobTask("t1", "n1", swarm.TaskStateRunning, 0, ""), jobTask("t2", "n2", swarm.TaskStateStarting, 0, "")}
		}
		return []swarm.Task{jobTask("t1", "n1", swarm.TaskStateComplete, 0, ""), jobTask("t2", "n2", swarm.TaskStateFailed, 3, "task: non-zero exit (3)")}
	}}
	results, err := RunGlobalJob(context.Background(), api, JobSpec{Name: "handoff-switch-api-8", Image: "reg/handoff@sha256:ab",
		Args: []string{"proxy", "ctl", "switch"}, Constraints: []string{"node.labels.web==true"}, Network: "handoff", Auth: "e30=", Interval: time.Millisecond})
	require.NoError(t, err)
	require.Len(t, results[0].Logs, jobLogLines, "the last lines only")
	require.Equal(t, "switched", results[0].Logs[jobLogLines-1])
	results[0].Logs = nil
	require.Equal(t, []NodeResult{
		{NodeID: "n1", Hostname: "hn1", State: "complete", ExitCode: 0},
		{NodeID: "n2", Hostname: "hn2", State: "failed", ExitCode: 3, Err: "task: non-zero exit (3)"},
		{NodeID: "n3", Hostname: "hn3", State: NotReached, Err: "node down"},
	}, results)
	require.Equal(t, []string{"job1"}, api.removed)
	spec := api.created[0]
	require.NotNil(t, spec.Mode.GlobalJob)
	require.Equal(t, swarm.RestartPolicyConditionNone, spec.TaskTemplate.RestartPolicy.Condition)
	require.Equal(t, []string{"node.labels.web==true"}, spec.TaskTemplate.Placement.Constraints)
	require.Equal(t, []swarm.NetworkAttachmentConfig{{Target: "handoff"}}, spec.TaskTemplate.Networks)
}

func TestGlobalJobIsRemovedWhenItsContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	api := &fakeJobs{nodes: jobNodes, tasks: func(poll int) []swarm.Task {
		if poll == 2 {
			cancel() // the user's ^C while a node's task still runs
		}
		return []swarm.Task{jobTask("t1", "n1", swarm.TaskStateComplete, 0, ""), jobTask("t2", "n2", swarm.TaskStateRunning, 0, "")}
	}}
	results, err := RunGlobalJob(ctx, api, JobSpec{Name: "handoff-switch-api-8", Image: "reg/handoff@sha256:ab", Interval: time.Millisecond})
	require.ErrorIs(t, err, context.Canceled)
	require.EqualError(t, err, "job handoff-switch-api-8: context canceled; not ended on hn2 (running)")
	require.Len(t, results, 3)
	require.Equal(t, []string{"job1"}, api.removed)
	require.Equal(t, []bool{true}, api.removedLive, "removed with a context of its own")
}

func TestGlobalJobLeftByAnEarlierRun(t *testing.T) {
	api := &fakeJobs{nodes: jobNodes, exists: true}
	_, err := RunGlobalJob(context.Background(), api, JobSpec{Name: "handoff-switch-api-8", Image: "reg/handoff@sha256:ab"})
	require.EqualError(t, err, "job handoff-switch-api-8: a service of that name is there, left by an earlier run; remove it (docker service rm handoff-switch-api-8) and run again")
	require.Empty(t, api.removed, "not ours to remove")
}

// TestSwarmGlobalJobOnOneNode runs jobs of the test app on a one-node swarm: one that
// exits 0, one that exits 3.
func TestSwarmGlobalJobOnOneNode(t *testing.T) {
	testhost.RequireSwarmRun(t) // a dockerd on vfs building and pushing images: not beside the load tests
	server, image := swarmServer(t)
	api := server.Docker()
	ctx := context.Background()
	for _, exit := range []int{0, 3} {
		name := fmt.Sprint("handoff-job-", exit)
		t0 := time.Now()
		results, err := RunGlobalJob(ctx, api, JobSpec{Name: name, Image: image, Args: []string{"migrate"},
			Env: []string{fmt.Sprint("RELEASE=job", exit), fmt.Sprint("MIGRATE_EXIT=", exit)}, Network: DefaultNetwork,
			Timeout: 30 * time.Second, Interval: 100 * time.Millisecond})
		require.NoError(t, err)
		require.Len(t, results, 1)
		r := results[0]
		t.Logf("exit %d: %s on %s in %s, logs %q", exit, r.State, r.Hostname, time.Since(t0).Round(time.Millisecond), r.Logs)
		require.Equal(t, exit, r.ExitCode)
		if exit == 0 {
			require.Equal(t, string(swarm.TaskStateComplete), r.State)
		} else {
			require.Equal(t, string(swarm.TaskStateFailed), r.State)
			require.Contains(t, r.Err, "non-zero exit (3)")
		}
		require.NotEmpty(t, r.Logs, "the task's output")
		_, err = api.ServiceInspect(ctx, name, client.ServiceInspectOptions{})
		require.True(t, cerrdefs.IsNotFound(err), "the job's service is gone: %v", err)
	}

	// A job's service left by a handoff killed mid-run: named, not run over.
	zero := uint64(0)
	left, err := api.ServiceCreate(ctx, client.ServiceCreateOptions{Spec: swarm.ServiceSpec{Annotations: swarm.Annotations{Name: "handoff-job-left"},
		TaskTemplate: swarm.TaskSpec{ContainerSpec: &swarm.ContainerSpec{Image: image}},
		Mode:         swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: &zero}}}})
	require.NoError(t, err)
	_, err = RunGlobalJob(ctx, api, JobSpec{Name: "handoff-job-left", Image: image, Args: []string{"migrate"}})
	require.EqualError(t, err, "job handoff-job-left: a service of that name is there, left by an earlier run; remove it (docker service rm handoff-job-left) and run again")
	_, err = api.ServiceRemove(ctx, left.ID, client.ServiceRemoveOptions{})
	require.NoError(t, err)

	services, err := api.ServiceList(ctx, client.ServiceListOptions{})
	require.NoError(t, err)
	require.Empty(t, services.Items)
}

func TestGlobalJobDoesNotWaitForATaskOnANodeThatDied(t *testing.T) {
	// hn3 died mid-job: its task reads running for good (no agent reports it), and
	// Swarm only sets its desired state; hn2's task Swarm stopped reads running too.
	nodes := []swarm.Node{tallyNode("n1", "hn1", swarm.NodeStateReady), tallyNode("n2", "hn2", swarm.NodeStateReady), tallyNode("n3", "hn3", swarm.NodeStateDown)}
	api := &fakeJobs{nodes: nodes, tasks: func(int) []swarm.Task {
		stopped := jobTask("t2", "n2", swarm.TaskStateRunning, 0, "")
		stopped.DesiredState = swarm.TaskStateShutdown
		return []swarm.Task{jobTask("t1", "n1", swarm.TaskStateComplete, 0, ""), stopped, jobTask("t3", "n3", swarm.TaskStateRunning, 0, "")}
	}}
	results, err := RunGlobalJob(context.Background(), api, JobSpec{Name: "handoff-switch-api-8", Image: "reg/handoff@sha256:ab",
		Interval: time.Millisecond, Timeout: 5 * time.Second})
	require.NoError(t, err, "ended without waiting out its timeout")
	require.Equal(t, []NodeResult{
		{NodeID: "n1", Hostname: "hn1", State: "complete"},
		{NodeID: "n2", Hostname: "hn2", State: NotReached, Err: "stopped by Swarm (task running, desired shutdown)"},
		{NodeID: "n3", Hostname: "hn3", State: NotReached, Err: "node down (task running)"},
	}, results)
	require.Equal(t, []string{"job1"}, api.removed)
}

// errLeaderLost is how a manager answers a write while its swarm elects a new leader.
var errLeaderLost = errors.New("Error response from daemon: rpc error: code = Unknown desc = The swarm does not have a leader")

func TestGlobalJobWhoseCreateWasNotAnsweredIsWatchedAndRemoved(t *testing.T) {
	done := func(int) []swarm.Task { return []swarm.Task{jobTask("t1", "n1", swarm.TaskStateComplete, 0, "")} }
	nodes := []swarm.Node{tallyNode("n1", "hn1", swarm.NodeStateReady)}
	spec := JobSpec{Name: "handoff-switch-api-8", Service: "api", Image: "reg/handoff@sha256:ab", Interval: time.Millisecond}

	t.Run("made all the same", func(t *testing.T) {
		api := &fakeJobs{nodes: nodes, tasks: done, createErr: errLeaderLost, createMade: true, inspectErrs: []error{errLeaderLost}}
		results, err := RunGlobalJob(context.Background(), api, spec)
		require.NoError(t, err)
		require.Equal(t, []NodeResult{{NodeID: "n1", Hostname: "hn1", State: "complete"}}, results)
		require.Equal(t, []string{"job1"}, api.removed, "what the lost create made is removed")
		require.Equal(t, map[string]string{LabelJob: "api"}, api.created[0].Labels)
	})
	t.Run("not made", func(t *testing.T) {
		api := &fakeJobs{nodes: nodes, tasks: done, createErr: errLeaderLost}
		_, err := RunGlobalJob(context.Background(), api, spec)
		require.ErrorIs(t, err, errLeaderLost)
		require.Empty(t, api.removed)
	})
	t.Run("made, then its context ended", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		api := &fakeJobs{nodes: nodes, tasks: done, createErr: context.Canceled, createMade: true}
		cancel()
		_, err := RunGlobalJob(ctx, api, spec)
		require.ErrorIs(t, err, context.Canceled)
		require.Equal(t, []string{"job1"}, api.removed)
		require.Equal(t, []bool{true}, api.removedLive, "removed with a context of its own")
	})
}

func TestGlobalJobNotRemovedSaysSo(t *testing.T) {
	api := &fakeJobs{nodes: jobNodes, removeErr: errors.New("Error response from daemon: permission denied"), tasks: func(int) []swarm.Task {
		return []swarm.Task{jobTask("t1", "n1", swarm.TaskStateComplete, 0, ""), jobTask("t2", "n2", swarm.TaskStateComplete, 0, "")}
	}}
	results, err := RunGlobalJob(context.Background(), api, JobSpec{Name: "handoff-switch-api-8", Image: "reg/handoff@sha256:ab", Interval: time.Millisecond})
	require.EqualError(t, err, "job handoff-switch-api-8 left (Error response from daemon: permission denied); docker service rm handoff-switch-api-8")
	require.Len(t, results, 3, "each node's result all the same")
}

func TestRemoveEndedJobs(t *testing.T) {
	job := func(id, name, service string) swarm.Service {
		return swarm.Service{ID: id, Spec: swarm.ServiceSpec{Annotations: swarm.Annotations{Name: name, Labels: map[string]string{LabelJob: service}},
			Mode: swarm.ServiceMode{GlobalJob: &swarm.GlobalJob{}}}}
	}
	api := &fakeJobs{nodes: jobNodes,
		services: []swarm.Service{job("j1", "handoff-switch-api-1", "api"), job("j2", "handoff-switch-api-2", "api"), job("j3", "handoff-switch-web-1", "web")},
		taskList: map[string][]swarm.Task{
			"j1": {jobTask("a", "n1", swarm.TaskStateComplete, 0, ""), jobTask("b", "n3", swarm.TaskStateRunning, 0, "")}, // n3 is down
			"j2": {jobTask("c", "n1", swarm.TaskStateRunning, 0, "")},                                                     // still switching
			"j3": {jobTask("d", "n1", swarm.TaskStateComplete, 0, "")},
		}}
	removed, err := RemoveEndedJobs(context.Background(), api, "api")
	require.NoError(t, err)
	require.Equal(t, []string{"handoff-switch-api-1"}, removed)
	require.Equal(t, []string{"j1"}, api.removed)
}
