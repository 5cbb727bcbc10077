package swarm

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
)

// A switch reaches each node's proxy as a global job: a task on every node that runs
// once, mounts what it needs of the node and exits with a code. Swarm's jobs need
// API 1.41 (Docker 20.10).

// JobAPI is what a global job needs of a manager; *client.Client has it.
type JobAPI interface {
	TaskAPI
	ServiceCreate(ctx context.Context, opts client.ServiceCreateOptions) (client.ServiceCreateResult, error)
	ServiceInspect(ctx context.Context, id string, opts client.ServiceInspectOptions) (client.ServiceInspectResult, error)
	ServiceList(ctx context.Context, opts client.ServiceListOptions) (client.ServiceListResult, error)
	ServiceRemove(ctx context.Context, id string, opts client.ServiceRemoveOptions) (client.ServiceRemoveResult, error)
	TaskLogs(ctx context.Context, id string, opts client.TaskLogsOptions) (client.TaskLogsResult, error)
}

// JobSpec is a job to run once on every eligible node.
type JobSpec struct {
	Name string // the job's service name, unique while it runs
	// Service is the app service the job is for, its handoff.job label: what
	// RemoveEndedJobs finds a job by that an earlier run could not remove.
	Service     string
	Image       string
	Command     []string // the image's entrypoint when nil
	Args        []string // after the command
	Env         []string
	Mounts      []mount.Mount
	Constraints []string
	Network     string // none when empty
	Auth        string // EncodedRegistryAuth, so every node can pull
	// Timeout bounds the wait for every node's task; DefaultJobTimeout when 0.
	Timeout time.Duration
	// Interval between polls of the tasks; DefaultPollInterval when 0.
	Interval time.Duration
}

// LabelJob marks a job's service with the app service it is for.
const LabelJob = "handoff.job"

// DefaultJobTimeout bounds a job's run when JobSpec.Timeout is 0.
const DefaultJobTimeout = 2 * time.Minute

// NotReached is the state of a node that ran no task of the job.
const NotReached = "not reached"

// NodeResult is how a job's task on one node ended.
type NodeResult struct {
	NodeID, Hostname string
	// State is the task's (complete, failed, rejected…, or the one it was left in at
	// the timeout), or NotReached.
	State    string
	ExitCode int
	Err      string
	Logs     []string // the task's last lines of stdout and stderr
}

// jobLogLines is how many of a task's last log lines a result keeps.
const jobLogLines = 20

// jobRemoveTimeout bounds the job's removal, made also when ctx has ended.
const jobRemoveTimeout = 30 * time.Second

// RunGlobalJob runs spec once on every eligible node and returns a result per node of
// the swarm, nodes not ready (or without a task) as NotReached. The job's service is
// removed at the end in every case, also when its create failed but may have been
// made (the leader lost). The error says the job could not be run or watched to its
// end (the timeout, ctx), or was left; the results say how each node did.
func RunGlobalJob(ctx context.Context, api JobAPI, spec JobSpec) (results []NodeResult, err error) {
	ctx, cancel := context.WithTimeout(ctx, cmp.Or(spec.Timeout, DefaultJobTimeout))
	defer cancel()
	svc := jobSpec(spec)
	res, cerr := api.ServiceCreate(ctx, client.ServiceCreateOptions{Spec: svc, EncodedRegistryAuth: spec.Auth})
	if cerrdefs.IsAlreadyExists(cerr) || cerrdefs.IsConflict(cerr) {
		return nil, fmt.Errorf("job %s: a service of that name is there, left by an earlier run; remove it (docker service rm %s) and run again", spec.Name, spec.Name)
	}
	var werr error
	if cerr != nil {
		if ctx.Err() == nil && !isTransient(cerr) && !errors.Is(cerr, errUnanswered) {
			return nil, fmt.Errorf("create job %s: %w", spec.Name, cerr)
		}
		// The manager did not answer: the create may have committed all the same.
		werr = fmt.Errorf("create job %s: %w", spec.Name, cerr)
		id, found, ierr := madeJob(ctx, api, spec.Name)
		switch {
		case ierr != nil:
			return nil, fmt.Errorf("%w; it may have been made: check docker service ps %s, and docker service rm %s", werr, spec.Name, spec.Name)
		case !found:
			return nil, werr
		}
		res.ID = id
		if ctx.Err() == nil {
			werr = nil // it was made: watch it as any other
		}
	}
	defer func() {
		if rerr := removeJob(ctx, api, res.ID); rerr != nil {
			left := fmt.Errorf("job %s left (%v); docker service rm %s", spec.Name, rerr, spec.Name)
			if err == nil {
				err = left
			} else {
				err = fmt.Errorf("%w; %w", err, left)
			}
		}
	}()

	var tasks []swarm.Task
	var nodes []swarm.Node
	settled := 0 // polls in a row that found every task ended
poll:
	for werr == nil {
		t, n, err := listJob(ctx, api, res.ID)
		switch {
		case err == nil:
			tasks, nodes = t, n
			if len(tasks) > 0 && !slices.ContainsFunc(tasks, func(t swarm.Task) bool { return !jobTaskEnded(t, nodes) }) {
				settled++
			} else {
				settled = 0
			}
		case ctx.Err() == nil && !isTransient(err) && !errors.Is(err, errUnanswered):
			// A manager that did not answer for a while (swarm.Patient's bound) is asked
			// again until the job's own time is up: its tasks may still be draining.
			return nil, fmt.Errorf("job %s: %w", spec.Name, err)
		}
		// Swarm makes the tasks of every eligible node at once; one more poll finding
		// them all ended and none new says there are no more.
		if settled == 2 {
			break
		}
		select {
		case <-ctx.Done():
			werr = fmt.Errorf("job %s: %w", spec.Name, ctx.Err())
			break poll
		case <-time.After(cmp.Or(spec.Interval, DefaultPollInterval)):
		}
	}
	lctx, lcancel := context.WithTimeout(context.WithoutCancel(ctx), jobRemoveTimeout)
	defer lcancel()
	results = jobResults(tasks, nodes)
	for i := range results {
		if id := taskOn(tasks, results[i].NodeID); id != "" {
			results[i].Logs = taskLogs(lctx, api, id)
		}
	}
	if werr != nil {
		var left []string
		for _, r := range results {
			if r.State != NotReached && !terminal(swarm.TaskState(r.State)) {
				left = append(left, r.Hostname+" ("+r.State+stateSince(tasks, r.NodeID)+")")
			}
		}
		if len(left) > 0 {
			werr = fmt.Errorf("%w; not ended on %s", werr, strings.Join(left, ", "))
		}
	}
	return results, werr
}

// madeJob looks for the job's service by name, with a context of its own: the create
// whose answer was lost may have made it.
func madeJob(ctx context.Context, api JobAPI, name string) (string, bool, error) {
	ictx, cancel := context.WithTimeout(context.WithoutCancel(ctx), jobRemoveTimeout)
	defer cancel()
	got, err := api.ServiceInspect(ictx, name, client.ServiceInspectOptions{})
	for err != nil && isTransient(err) && ictx.Err() == nil {
		wait(ictx, transientRetry)
		got, err = api.ServiceInspect(ictx, name, client.ServiceInspectOptions{})
	}
	switch {
	case cerrdefs.IsNotFound(err):
		return "", false, nil
	case err != nil:
		return "", false, err
	}
	return got.Service.ID, true, nil
}

// removeJob removes the job's service with a context of its own, asking again while
// the manager cannot answer; one already gone is removed.
func removeJob(ctx context.Context, api JobAPI, id string) error {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), jobRemoveTimeout)
	defer cancel()
	_, err := api.ServiceRemove(rctx, id, client.ServiceRemoveOptions{})
	for err != nil && isTransient(err) && rctx.Err() == nil {
		wait(rctx, transientRetry)
		_, err = api.ServiceRemove(rctx, id, client.ServiceRemoveOptions{})
	}
	if cerrdefs.IsNotFound(err) {
		return nil
	}
	return err
}

// RemoveEndedJobs removes the jobs of service (every app service's when "") that an
// earlier run left, once each of their tasks has ended; a job still running is left to
// end. It returns the names of those removed.
func RemoveEndedJobs(ctx context.Context, api JobAPI, service string) ([]string, error) {
	label := LabelJob
	if service != "" {
		label += "=" + service
	}
	jobs, err := api.ServiceList(ctx, client.ServiceListOptions{Filters: make(client.Filters).Add("label", label)})
	if err != nil {
		return nil, fmt.Errorf("list the jobs left: %w", err)
	}
	var removed []string
	for _, job := range jobs.Items {
		if job.Spec.Mode.GlobalJob == nil {
			continue
		}
		tasks, nodes, err := listJob(ctx, api, job.ID)
		if err != nil {
			return removed, fmt.Errorf("job %s: %w", job.Spec.Name, err)
		}
		if slices.ContainsFunc(tasks, func(t swarm.Task) bool { return !jobTaskEnded(t, nodes) }) {
			continue
		}
		if err := removeJob(ctx, api, job.ID); err != nil {
			return removed, fmt.Errorf("job %s left (%v); docker service rm %s", job.Spec.Name, err, job.Spec.Name)
		}
		removed = append(removed, job.Spec.Name)
	}
	return removed, nil
}

func jobSpec(spec JobSpec) swarm.ServiceSpec {
	svc := swarm.ServiceSpec{
		Annotations: swarm.Annotations{Name: spec.Name, Labels: map[string]string{LabelJob: spec.Service}},
		TaskTemplate: swarm.TaskSpec{
			ContainerSpec: &swarm.ContainerSpec{Image: spec.Image, Command: spec.Command, Args: spec.Args, Env: spec.Env, Mounts: spec.Mounts},
			RestartPolicy: &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionNone},
			Placement:     &swarm.Placement{Constraints: spec.Constraints},
		},
		Mode: swarm.ServiceMode{GlobalJob: &swarm.GlobalJob{}},
	}
	if spec.Network != "" {
		svc.TaskTemplate.Networks = []swarm.NetworkAttachmentConfig{{Target: spec.Network}}
	}
	return svc
}

// jobTaskEnded says a job's task will not run further: its state is terminal, or its
// node is not ready in the same reading of the nodes, or Swarm wants it shut down. A
// node that dies mid-job never reports its task again, and swarmkit's global-job
// reconciler only sets the desired state: its task reads assigned or running for good.
func jobTaskEnded(t swarm.Task, nodes []swarm.Node) bool {
	return terminal(t.Status.State) || nodeDown(t, nodes) != "" || pastComplete(t.DesiredState)
}

// nodeDown is the state of t's node when it is not ready ("down", "gone" when not in
// nodes), "" when it is ready.
func nodeDown(t swarm.Task, nodes []swarm.Node) string {
	i := slices.IndexFunc(nodes, func(n swarm.Node) bool { return n.ID == t.NodeID })
	switch {
	case t.NodeID == "":
		return "" // not placed yet
	case i < 0:
		return "gone"
	case nodes[i].Status.State != swarm.NodeStateReady:
		return string(nodes[i].Status.State)
	}
	return ""
}

// pastComplete says a desired state is one Swarm sets to stop a task (shutdown, remove…);
// a job's task is wanted complete.
func pastComplete(st swarm.TaskState) bool {
	return terminal(st) && st != swarm.TaskStateComplete
}

func listJob(ctx context.Context, api TaskAPI, id string) ([]swarm.Task, []swarm.Node, error) {
	tasks, err := api.TaskList(ctx, client.TaskListOptions{Filters: make(client.Filters).Add("service", id)})
	if err != nil {
		return nil, nil, fmt.Errorf("list its tasks: %w", err)
	}
	nodes, err := api.NodeList(ctx, client.NodeListOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("list nodes: %w", err)
	}
	return tasks.Items, nodes.Items, nil
}

// jobResults is a result per node, by hostname: the newest task on it, or NotReached.
func jobResults(tasks []swarm.Task, nodes []swarm.Node) []NodeResult {
	results := make([]NodeResult, 0, len(nodes))
	for _, nd := range nodes {
		r := NodeResult{NodeID: nd.ID, Hostname: cmp.Or(nd.Description.Hostname, nd.ID), State: NotReached}
		if task, ok := newestOn(tasks, nd.ID); ok {
			r.State, r.Err = string(task.Status.State), task.Status.Err
			if cs := task.Status.ContainerStatus; cs != nil {
				r.ExitCode = cs.ExitCode
			}
			if !terminal(task.Status.State) {
				// Its node died under it, or Swarm stopped it: it will not end by itself.
				if down := nodeDown(task, nodes); down != "" {
					r.State, r.Err = NotReached, "node "+down+" (task "+string(task.Status.State)+")"
				} else if pastComplete(task.DesiredState) {
					r.State, r.Err = NotReached, "stopped by Swarm (task "+string(task.Status.State)+", desired "+string(task.DesiredState)+")"
				}
			}
		} else if nd.Status.State != swarm.NodeStateReady {
			r.Err = "node " + string(nd.Status.State)
		} else {
			r.Err = "no task placed (availability " + string(nd.Spec.Availability) + ", or the job's constraints)"
		}
		results = append(results, r)
	}
	slices.SortFunc(results, func(a, b NodeResult) int { return strings.Compare(a.Hostname, b.Hostname) })
	return results
}

func newestOn(tasks []swarm.Task, node string) (swarm.Task, bool) {
	var newest swarm.Task
	found := false
	for _, t := range tasks {
		if t.NodeID == node && (!found || t.Meta.CreatedAt.After(newest.Meta.CreatedAt)) {
			newest, found = t, true
		}
	}
	return newest, found
}

// stateSince says since when the newest task on node is in its state, and what
// Swarm says of it: what a job stuck on a node is waiting for.
func stateSince(tasks []swarm.Task, node string) string {
	t, ok := newestOn(tasks, node)
	if !ok {
		return ""
	}
	s := ""
	if !t.Status.Timestamp.IsZero() {
		s = " since " + t.Status.Timestamp.UTC().Format("15:04:05")
	}
	if msg := cmp.Or(t.Status.Err, t.Status.Message); msg != "" {
		s += ": " + msg
	}
	return s
}

func taskOn(tasks []swarm.Task, node string) string {
	t, _ := newestOn(tasks, node)
	return t.ID
}

// taskLogs are the task's last lines; none when they cannot be read (the node is gone).
func taskLogs(ctx context.Context, api JobAPI, id string) []string {
	rc, err := api.TaskLogs(ctx, id, client.TaskLogsOptions{ShowStdout: true, ShowStderr: true, Tail: fmt.Sprint(jobLogLines)})
	if err != nil {
		return nil
	}
	defer rc.Close()
	var out bytes.Buffer
	if _, err := stdcopy.StdCopy(&out, &out, rc); err != nil && out.Len() == 0 {
		return nil
	}
	var lines []string
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return lines[max(0, len(lines)-jobLogLines):]
}
