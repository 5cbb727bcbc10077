package swarm

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/handoff-dev/handoff/internal/deploy"
)

// A release job on a swarm (migrations) is a replicated job of one task: the new
// release's image, pinned, with its environment, entrypoint, overlay and placement, no
// health check, never restarted (a migration that failed half way is not run again by
// Swarm). Whatever node runs it, its output is read through the manager as it comes.

// ReleaseJobName is the service name of service's release job.
func ReleaseJobName(service string) string { return service + "-release-job" }

// releaseJobPoll is how often the job's task and its output are read.
const releaseJobPoll = time.Second

// releaseJobNodeLost is how long the node running the job must stay down (or out of
// the swarm) before the job is taken as ended with it. A node reads "unknown" from
// every manager for a while after the leader changes, and "disconnected" through a
// short gap in its heartbeats: the migration runs on there, and is waited for.
const releaseJobNodeLost = time.Minute

// releaseJobStopWait bounds the wait, once the job's service is removed, for its task
// to stop, past its grace period.
const releaseJobStopWait = 30 * time.Second

// Job runs cmd once as a replicated job of imageID, streams its output to out and
// returns its exit code. It follows the first task Swarm makes: if Swarm starts
// another (it may, for a job whose task it shut down), the job is stopped and the
// deploy fails, never taking the second run's code for the first's. The job's service
// is removed at the end in every case; when ctx ends first, removing it stops the task
// (SIGTERM, then SIGKILL after its grace), and Job waits for that before it says so. A
// job an earlier handoff left running is never run beside: Job refuses, naming it; one
// that has ended is removed.
func (r *Runtime) Job(ctx context.Context, svc deploy.Service, imageID string, cmd []string, out io.Writer) (code int, err error) {
	name := ReleaseJobName(svc.Name)
	if len(name) > 63 {
		return -1, fmt.Errorf("%w: the release job of %s would be the service %s, longer than Swarm's 63 letters; rename the service", deploy.ErrConfig, svc.Name, name)
	}
	if err := r.clearReleaseJob(ctx, svc.Name, name); err != nil {
		return -1, err
	}
	auth, err := r.auth(imageID)
	if err != nil {
		return -1, err
	}
	grace := svc.StopTimeout
	one := uint64(1)
	spec := swarm.ServiceSpec{
		Annotations: swarm.Annotations{Name: name, Labels: map[string]string{LabelJob: svc.Name, LabelService: svc.Name}},
		TaskTemplate: swarm.TaskSpec{
			ContainerSpec: &swarm.ContainerSpec{
				Image: imageID, Command: svc.Entrypoint, Args: cmd, Env: svc.Env,
				Healthcheck:     &container.HealthConfig{Test: []string{"NONE"}},
				StopGracePeriod: &grace,
			},
			RestartPolicy: &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionNone},
			Placement:     &swarm.Placement{Constraints: r.Constraints},
			Networks:      []swarm.NetworkAttachmentConfig{{Target: cmp.Or(r.Network, DefaultNetwork)}},
		},
		Mode: swarm.ServiceMode{ReplicatedJob: &swarm.ReplicatedJob{MaxConcurrent: &one, TotalCompletions: &one}},
	}
	created, err := r.API.ServiceCreate(ctx, client.ServiceCreateOptions{Spec: spec, EncodedRegistryAuth: auth})
	if cerrdefs.IsAlreadyExists(err) || cerrdefs.IsConflict(err) {
		return -1, fmt.Errorf("%w: a service %s was made meanwhile; see docker service ps %s", deploy.ErrReleaseJob, name, name)
	}
	if err != nil {
		if id, found, ierr := madeJob(ctx, r.API, name); ierr == nil && found {
			// Made all the same, its answer lost: it must not run unwatched.
			if rerr := removeJob(ctx, r.API, id); rerr != nil {
				return -1, fmt.Errorf("create the release job %s: %w; it was made and is left (%v): docker service rm %s", name, err, rerr, name)
			}
		}
		return -1, fmt.Errorf("create the release job %s: %w", name, err)
	}

	w := &jobWatch{name: name, out: &jobOutput{out: out}, now: r.now}
	defer func() {
		if left := w.stop(ctx, r.API, created.ID, grace); left != nil {
			if err == nil {
				code, err = -1, left
			} else {
				err = fmt.Errorf("%w; %w", err, left)
			}
		}
	}()
	for {
		if done, code, err := w.poll(ctx, r.API, created.ID); done {
			return code, err
		}
		select {
		case <-ctx.Done():
			return -1, fmt.Errorf("the release job %s was stopped (%s): %w", name, w.where(), ctx.Err())
		case <-time.After(releaseJobPoll):
		}
	}
}

// jobWatch follows a release job's first task.
type jobWatch struct {
	name      string
	out       *jobOutput
	task      swarm.Task // the first task made, as last read
	progress  string     // the last state reported while it waits to run
	lostSince time.Time  // when its node was first seen down, zero while up
	now       func() time.Time
}

// poll reads the job's tasks and nodes once: done when its task has ended, with its
// exit code, or why it has none.
func (w *jobWatch) poll(ctx context.Context, api RuntimeAPI, id string) (done bool, code int, err error) {
	tasks, nodes, err := listJob(ctx, api, id)
	if err != nil || len(tasks) == 0 {
		return false, 0, nil // asked again at the next poll, until release_timeout
	}
	first := slices.MinFunc(tasks, func(a, b swarm.Task) int { return a.Meta.CreatedAt.Compare(b.Meta.CreatedAt) })
	if w.task.ID != "" && first.ID != w.task.ID || len(tasks) > 1 {
		return true, -1, fmt.Errorf("the release job %s was started again by Swarm (%d tasks; the first %s): it may have run twice; check what it does before you deploy again", w.name, len(tasks), w.where())
	}
	w.task = first
	if !started(first) {
		if now := "task " + string(first.Status.State) + stateMessage(first); now != w.progress {
			w.progress = now
			fmt.Fprintf(w.out.out, "release job %s: %s\n", w.name, now) // why it has not started: no node fits, a pull…
		}
	}
	w.out.read(ctx, api, first.ID)
	if terminal(first.Status.State) {
		if !w.out.read(context.WithoutCancel(ctx), api, first.ID) { // what it wrote last
			fmt.Fprintf(w.out.out, "release job %s: its last output could not be read (docker service logs %s)\n", w.name, w.name)
		}
		code, err := releaseJobEnd(w.name, first)
		return true, code, err
	}
	if down := nodeDown(first, nodes); down == "down" || down == "gone" {
		if w.lostSince.IsZero() {
			w.lostSince = w.now()
		}
		if w.now().Sub(w.lostSince) >= releaseJobNodeLost {
			return true, -1, fmt.Errorf("the node that ran the release job %s is %s (task %s) for %s: it may have run in part; check what it does before you deploy again", w.name, down, first.Status.State, releaseJobNodeLost)
		}
	} else {
		w.lostSince = time.Time{}
	}
	return false, 0, nil
}

// where says what the job's task was doing, as last read.
func (w *jobWatch) where() string {
	if w.task.ID == "" {
		return "not placed on a node yet"
	}
	return "task " + w.task.ID + " " + string(w.task.Status.State) + stateMessage(w.task)
}

// stop removes the job's service and, when its task had not ended, waits until it
// has (its grace, plus releaseJobStopWait): an error says what is left running.
func (w *jobWatch) stop(ctx context.Context, api RuntimeAPI, id string, grace time.Duration) error {
	if err := removeJob(ctx, api, id); err != nil {
		return fmt.Errorf("the release job %s is left (%v): docker service rm %s", w.name, err, w.name)
	}
	if w.task.ID == "" || terminal(w.task.Status.State) {
		return nil
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), grace+releaseJobStopWait)
	defer cancel()
	for {
		got, err := api.TaskList(wctx, client.TaskListOptions{Filters: make(client.Filters).Add("id", w.task.ID)})
		if err == nil && (len(got.Items) == 0 || terminal(got.Items[0].Status.State)) {
			return nil
		}
		select {
		case <-wctx.Done():
			return fmt.Errorf("its task %s may still run (its service is removed; not seen stopped within %s): docker ps on its node", w.task.ID, grace+releaseJobStopWait)
		case <-time.After(releaseJobPoll):
		}
	}
}

// started says the job's container was made: from then on it may have run.
func started(t swarm.Task) bool {
	return t.Status.ContainerStatus != nil && t.Status.ContainerStatus.ContainerID != ""
}

// releaseJobEnd is the exit code of a job's task that has ended, or why it has none.
func releaseJobEnd(name string, t swarm.Task) (int, error) {
	cs := t.Status.ContainerStatus
	switch {
	case t.Status.State == swarm.TaskStateComplete:
		return 0, nil
	case t.Status.State == swarm.TaskStateFailed && cs != nil && cs.ExitCode != 0:
		return cs.ExitCode, nil
	case !started(t):
		return -1, fmt.Errorf("the release job %s did not run: task %s%s", name, t.Status.State, stateMessage(t))
	}
	exit := ""
	if cs != nil {
		exit = fmt.Sprintf(", exit code %d", cs.ExitCode)
	}
	return -1, fmt.Errorf("the release job %s was stopped (task %s%s%s): it may have run in part; check what it does before you deploy again", name, t.Status.State, stateMessage(t), exit)
}

func stateMessage(t swarm.Task) string {
	if msg := cmp.Or(t.Status.Err, t.Status.Message); msg != "" {
		return ": " + msg
	}
	return ""
}

// clearReleaseJob removes a release job an earlier run left once it has ended, and
// refuses while it runs.
func (r *Runtime) clearReleaseJob(ctx context.Context, service, name string) error {
	got, err := r.API.ServiceInspect(ctx, name, client.ServiceInspectOptions{})
	switch {
	case cerrdefs.IsNotFound(err):
		return nil
	case err != nil:
		return fmt.Errorf("look for a release job an earlier run left (%s): %w", name, err)
	case got.Service.Spec.Labels[LabelJob] != service:
		return fmt.Errorf("%w: a service %s is there that is not a release job of %s; rename it, or remove it (docker service rm %s)", deploy.ErrReleaseJob, name, service, name)
	}
	tasks, nodes, err := listJob(ctx, r.API, got.Service.ID)
	if err != nil {
		return fmt.Errorf("release job %s: %w", name, err)
	}
	if slices.ContainsFunc(tasks, func(t swarm.Task) bool { return !jobTaskEnded(t, nodes) }) {
		return fmt.Errorf("%w: a release job of %s is still running (%s, left by a deploy that was killed?): wait for it to end (docker service ps %s) or remove it (docker service rm %s), then deploy again", deploy.ErrReleaseJob, service, name, name, name)
	}
	if err := removeJob(ctx, r.API, got.Service.ID); err != nil {
		return fmt.Errorf("remove the old release job %s: %w", name, err)
	}
	return nil
}

// jobOutput copies a task's log lines to out as they come: each read asks for those
// since the last line copied (the manager keeps the task's log, wherever it ran).
type jobOutput struct {
	out  io.Writer
	last time.Time // the timestamp of the last line copied
	seen int       // lines copied with that timestamp, which the next read repeats
}

func (o *jobOutput) read(ctx context.Context, api RuntimeAPI, task string) bool {
	opts := client.TaskLogsOptions{ShowStdout: true, ShowStderr: true, Timestamps: true}
	if !o.last.IsZero() {
		opts.Since = o.last.Format(time.RFC3339Nano)
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	rc, err := api.TaskLogs(rctx, task, opts)
	if err != nil {
		return false // read at the next poll, or lost with its node
	}
	defer rc.Close()
	var buf bytes.Buffer
	_, err = stdcopy.StdCopy(&buf, &buf, rc)
	// Whole lines, however long: the read is in memory already.
	same := 0
	for raw := range strings.SplitSeq(strings.TrimSuffix(buf.String(), "\n"), "\n") {
		if raw == "" {
			continue
		}
		stamp, line, _ := strings.Cut(raw, " ")
		at, perr := time.Parse(time.RFC3339Nano, stamp)
		if perr != nil {
			fmt.Fprintln(o.out, raw)
			continue
		}
		switch {
		case at.Before(o.last):
			continue
		case at.Equal(o.last):
			if same++; same <= o.seen {
				continue // copied already
			}
		}
		fmt.Fprintln(o.out, line)
		if at.After(o.last) {
			o.last, o.seen, same = at, 0, 1
		}
		o.seen = max(o.seen, same)
	}
	return err == nil
}
