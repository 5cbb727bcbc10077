package swarm

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
	"github.com/stretchr/testify/require"
)

// taskLog is a task's log as a manager serves it: every line at or after Since.
type taskLog struct {
	RuntimeAPI
	lines []string // "<RFC3339Nano> text"
	asked []string // the Since of each read
}

func (l *taskLog) TaskLogs(_ context.Context, _ string, opts client.TaskLogsOptions) (client.TaskLogsResult, error) {
	l.asked = append(l.asked, opts.Since)
	var since time.Time
	if opts.Since != "" {
		since, _ = time.Parse(time.RFC3339Nano, opts.Since)
	}
	var buf bytes.Buffer
	for _, line := range l.lines {
		stamp, _, _ := strings.Cut(line, " ")
		at, _ := time.Parse(time.RFC3339Nano, stamp)
		if !at.Before(since) {
			frame := []byte(line + "\n")
			buf.Write(binary.BigEndian.AppendUint32([]byte{byte(stdcopy.Stdout), 0, 0, 0}, uint32(len(frame))))
			buf.Write(frame)
		}
	}
	return io.NopCloser(&buf), nil
}

// Each read copies the lines since the last one copied, once each, also lines that
// share its timestamp.
func TestAReleaseJobsOutputIsCopiedOnceAsItComes(t *testing.T) {
	at := func(s int) string { return time.Date(2026, 12, 4, 19, 0, s, 0, time.UTC).Format(time.RFC3339Nano) }
	l := &taskLog{lines: []string{at(1) + " migrating", at(2) + " step 1", at(2) + " step 2"}}
	var out bytes.Buffer
	o := &jobOutput{out: &out}
	o.read(context.Background(), l, "t1")
	require.Equal(t, "migrating\nstep 1\nstep 2\n", out.String())

	l.lines = append(l.lines, at(2)+" step 3", at(3)+" done")
	o.read(context.Background(), l, "t1")
	o.read(context.Background(), l, "t1")
	require.Equal(t, "migrating\nstep 1\nstep 2\nstep 3\ndone\n", out.String())
	require.Equal(t, []string{"", at(2), at(3)}, l.asked, "each read asks from the last line copied")
}

// jobSwarm is a manager's answers about a release job: its tasks and the nodes.
type jobSwarm struct {
	RuntimeAPI
	tasks []swarm.Task
	nodes []swarm.Node
}

func (j *jobSwarm) TaskList(context.Context, client.TaskListOptions) (client.TaskListResult, error) {
	return client.TaskListResult{Items: j.tasks}, nil
}

func (j *jobSwarm) NodeList(context.Context, client.NodeListOptions) (client.NodeListResult, error) {
	return client.NodeListResult{Items: j.nodes}, nil
}

func (j *jobSwarm) TaskLogs(context.Context, string, client.TaskLogsOptions) (client.TaskLogsResult, error) {
	return nil, errors.New("no logs here")
}

func rjTask(id string, st swarm.TaskState, exit int, err string) swarm.Task {
	t := swarm.Task{ID: id, NodeID: "n1", DesiredState: swarm.TaskStateComplete, Status: swarm.TaskStatus{State: st, Err: err}}
	if st != swarm.TaskStatePending && st != swarm.TaskStateRejected {
		t.Status.ContainerStatus = &swarm.ContainerStatus{ContainerID: "c-" + id, ExitCode: exit}
	}
	return t
}

func rjNode(state swarm.NodeState) []swarm.Node {
	return []swarm.Node{{ID: "n1", Status: swarm.NodeStatus{State: state}}}
}

// The job's task decides: its exit code once it ended, why it did not run, or that
// it may have run in part. A node that reads unknown (after a leader change) or
// disconnected runs it on; one down for a minute has ended it.
func TestAReleaseJobIsJudgedByItsFirstTask(t *testing.T) {
	clock := newFakeClock()
	watch := func() (*jobWatch, *bytes.Buffer) {
		var out bytes.Buffer
		return &jobWatch{name: "web-release-job", out: &jobOutput{out: &out}, now: clock.Now}, &out
	}
	poll := func(w *jobWatch, js *jobSwarm) (bool, int, error) {
		return w.poll(context.Background(), js, "svc")
	}

	for _, tc := range []struct {
		name string
		task swarm.Task
		code int
		err  string
	}{
		{"complete", rjTask("t1", swarm.TaskStateComplete, 0, ""), 0, ""},
		{"failed with its exit code", rjTask("t1", swarm.TaskStateFailed, 3, "task: non-zero exit (3)"), 3, ""},
		{"rejected before its container was made", rjTask("t1", swarm.TaskStateRejected, 0, "No such image: r/x@sha256:1"), -1, "the release job web-release-job did not run: task rejected: No such image"},
		{"shut down after it started", rjTask("t1", swarm.TaskStateShutdown, 0, ""), -1, "was stopped (task shutdown, exit code 0): it may have run in part"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, _ := watch()
			done, code, err := poll(w, &jobSwarm{tasks: []swarm.Task{tc.task}, nodes: rjNode(swarm.NodeStateReady)})
			require.True(t, done)
			require.Equal(t, tc.code, code)
			if tc.err == "" {
				require.NoError(t, err)
			} else {
				require.ErrorContains(t, err, tc.err)
			}
		})
	}

	t.Run("pending: says why, and waits", func(t *testing.T) {
		w, out := watch()
		pending := rjTask("t1", swarm.TaskStatePending, 0, "no suitable node (scheduling constraints not satisfied on 3 nodes)")
		done, _, _ := poll(w, &jobSwarm{tasks: []swarm.Task{pending}, nodes: rjNode(swarm.NodeStateReady)})
		require.False(t, done)
		require.Contains(t, out.String(), "release job web-release-job: task pending: no suitable node")
	})
	t.Run("running on a node the managers lost sight of, or Swarm wants stopped", func(t *testing.T) {
		w, _ := watch()
		running := rjTask("t1", swarm.TaskStateRunning, 0, "")
		for _, st := range []swarm.NodeState{swarm.NodeStateUnknown, swarm.NodeStateDisconnected} {
			done, _, _ := poll(w, &jobSwarm{tasks: []swarm.Task{running}, nodes: rjNode(st)})
			require.False(t, done, "node %s", st)
		}
		running.DesiredState = swarm.TaskStateShutdown
		done, _, _ := poll(w, &jobSwarm{tasks: []swarm.Task{running}, nodes: rjNode(swarm.NodeStateReady)})
		require.False(t, done, "it runs until it has stopped")
	})
	t.Run("its node down for a minute", func(t *testing.T) {
		w, _ := watch()
		js := &jobSwarm{tasks: []swarm.Task{rjTask("t1", swarm.TaskStateRunning, 0, "")}, nodes: rjNode(swarm.NodeStateDown)}
		done, _, _ := poll(w, js)
		require.False(t, done)
		clock.Advance(releaseJobNodeLost - time.Second)
		done, _, _ = poll(w, js)
		require.False(t, done)
		clock.Advance(time.Second)
		done, _, err := poll(w, js)
		require.True(t, done)
		require.ErrorContains(t, err, "the node that ran the release job web-release-job is down (task running) for 1m0s: it may have run in part")
	})
	t.Run("a second task: it may have run twice", func(t *testing.T) {
		w, _ := watch()
		first := rjTask("t1", swarm.TaskStateFailed, 3, "")
		first.Meta.CreatedAt = clock.Now()
		first.Status.State = swarm.TaskStateRunning
		done, _, _ := poll(w, &jobSwarm{tasks: []swarm.Task{first}, nodes: rjNode(swarm.NodeStateReady)})
		require.False(t, done)
		again := rjTask("t2", swarm.TaskStateComplete, 0, "")
		again.Meta.CreatedAt = clock.Now().Add(time.Second)
		first.Status.State = swarm.TaskStateFailed
		done, code, err := poll(w, &jobSwarm{tasks: []swarm.Task{first, again}, nodes: rjNode(swarm.NodeStateReady)})
		require.True(t, done)
		require.Equal(t, -1, code, "never the second run's code")
		require.ErrorContains(t, err, "the release job web-release-job was started again by Swarm")
	})
}

// A line of any length is copied whole, and those after it too.
func TestAReleaseJobsLongLineDoesNotHideTheRest(t *testing.T) {
	at := time.Date(2026, 12, 4, 19, 0, 1, 0, time.UTC).Format(time.RFC3339Nano)
	long := strings.Repeat("x", 2<<20)
	l := &taskLog{lines: []string{at + " " + long, at + " ERROR: the migration failed"}}
	var out bytes.Buffer
	(&jobOutput{out: &out}).read(context.Background(), l, "t1")
	require.Equal(t, long+"\nERROR: the migration failed\n", out.String())
}
