package swarm

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
)

// Verdict is what a tally of a release's tasks says.
type Verdict int

const (
	Waiting Verdict = iota // not yet N healthy tasks, not yet too many failures
	Ready                  // N tasks of the release run healthy on ready nodes
	Failed                 // max(3, 2N) tasks of the release failed
)

// ErrReleaseFailed is a release whose tasks failed too often to wait on.
var ErrReleaseFailed = errors.New("release failed to become healthy")

// Failure is a task of the release that failed or was rejected.
type Failure struct {
	Task, Node string // task ID, node hostname (its ID when unknown)
	State      swarm.TaskState
	Err        string
	At         time.Time
}

// noImage says f is a node that could not pull the image.
func (f Failure) noImage() bool {
	return f.State == swarm.TaskStateRejected && strings.Contains(f.Err, "No such image")
}

// Tally counts the tasks of one release of a colour service.
type Tally struct {
	Service string
	Release int
	Wanted  int
	// Healthy is the tasks counted: running (with a HEALTHCHECK, only once healthy) on
	// nodes ready and active or paused. A dead node's tasks read running until Swarm
	// marks it down.
	Healthy int
	// Paused are the nodes of counted tasks on paused nodes, a name per task: a pause
	// keeps their tasks running and in DNS, and places no new one there.
	Paused []string
	// Starting are the nodes of tasks on their way to running, a name per task;
	// Unplaced the tasks no node has taken yet.
	Starting []string
	Unplaced int
	// Unreachable are the nodes of tasks that read running on nodes not ready or not
	// active, never counted.
	Unreachable []string
	Failures    []Failure // oldest first
	// IPs are the counted tasks' addresses on the network: what the proxies must resolve.
	IPs     []netip.Addr
	Verdict Verdict

	failed int             // Failures but those rejected for want of the image: what FailureLimit bounds
	pulled map[string]bool // nodes where a task of the release got past its pull
}

// FailureLimit is how many failed tasks of a release of n replicas end the wait.
func FailureLimit(n int) int { return max(3, 2*n) }

// Count tallies tasks (of a colour service, any release) for release, wanting n
// healthy, on nodes; IPs are read on network.
func Count(service string, tasks []swarm.Task, nodes []swarm.Node, release, n int, network string) Tally {
	return CountSince(service, tasks, nodes, release, n, network, time.Time{})
}

// CountSince is Count without the tasks that ended before since: the colour's
// UpdatedAt once the release was written. A rollback scales an old colour up again,
// and the tasks its release left then (failed, complete) are still listed with its
// label; a task of it still running is counted.
func CountSince(service string, tasks []swarm.Task, nodes []swarm.Node, release, n int, network string, since time.Time) Tally {
	byID := make(map[string]swarm.Node, len(nodes))
	for _, nd := range nodes {
		byID[nd.ID] = nd
	}
	hostname := func(id string) string {
		if nd, ok := byID[id]; ok && nd.Description.Hostname != "" {
			return nd.Description.Hostname
		}
		return id
	}
	t := Tally{Service: service, Release: release, Wanted: n}
	want := strconv.Itoa(release)
	for _, task := range tasks {
		if cs := task.Spec.ContainerSpec; cs == nil || cs.Labels[LabelRelease] != want {
			continue
		}
		if task.DesiredState == swarm.TaskStateRemove || terminal(task.Status.State) && task.Meta.CreatedAt.Before(since) {
			continue // scaled away, or ended in the release's earlier life
		}
		switch st := task.Status.State; {
		case st == swarm.TaskStateFailed || st == swarm.TaskStateRejected || st == swarm.TaskStateComplete:
			// A server that exits 0 is no healthier than one that fails, and it is how
			// a task stopped as unhealthy ends if it drains on SIGTERM.
			err := task.Status.Err
			if err == "" && st == swarm.TaskStateComplete {
				err = "exited 0: stopped as unhealthy, or the app ended by itself"
			}
			t.Failures = append(t.Failures, Failure{Task: task.ID, Node: hostname(task.NodeID), State: st,
				Err: cmp.Or(err, task.Status.Message), At: task.Status.Timestamp})
		case task.DesiredState != swarm.TaskStateRunning:
			// Being shut down (scaled away, replaced): neither counted nor awaited.
		case st == swarm.TaskStateRunning:
			nd, ok := byID[task.NodeID]
			avail := nd.Spec.Availability
			if !ok || nd.Status.State != swarm.NodeStateReady || avail != swarm.NodeAvailabilityActive && avail != swarm.NodeAvailabilityPause {
				t.Unreachable = append(t.Unreachable, hostname(task.NodeID))
				continue
			}
			if avail == swarm.NodeAvailabilityPause {
				t.Paused = append(t.Paused, hostname(task.NodeID))
			}
			t.has(hostname(task.NodeID))
			t.Healthy++
			t.IPs = append(t.IPs, addresses(task, network)...)
		case !terminal(st) && task.NodeID == "":
			t.Unplaced++
		case !terminal(st):
			if st != swarm.TaskStateNew && st != swarm.TaskStatePending && st != swarm.TaskStateAssigned && st != swarm.TaskStateAccepted {
				t.has(hostname(task.NodeID)) // past its pull
			}
			t.Starting = append(t.Starting, hostname(task.NodeID))
		}
	}
	slices.SortFunc(t.Failures, func(a, b Failure) int { return a.At.Compare(b.At) })
	slices.SortFunc(t.IPs, netip.Addr.Compare)
	slices.Sort(t.Starting)
	slices.Sort(t.Unreachable)
	slices.Sort(t.Paused)
	// A task rejected for want of the image is the node's doing, not the release's:
	// Swarm places the next one elsewhere once that node failed often enough (five
	// times, as read in swarmkit's scheduler), so such rejections do not count towards
	// the limit, unless no node a task could go to can pull it.
	t.failed = 0
	for _, f := range t.Failures {
		if !f.noImage() {
			t.failed++
		}
	}
	switch {
	case t.Healthy >= n:
		t.Verdict = Ready
	case t.failed >= FailureLimit(n):
		t.Verdict = Failed
	case t.noneCanPull(nodes):
		t.Verdict = Failed
	}
	return t
}

// pullTries is how many rejections for want of the image make a node one that cannot
// pull it: one may be a registry's passing blip.
const pullTries = 3

// has notes that a task of the release got past its pull on node (it runs, or starts).
func (t *Tally) has(node string) {
	if t.pulled == nil {
		t.pulled = map[string]bool{}
	}
	t.pulled[node] = true
}

// noneCanPull says every node a new task can go to (ready and active) was rejected
// for want of the image pullTries times and runs no task of the release. Placement
// constraints are not read here: a node they rule out keeps the wait going, which
// health.start_timeout then bounds.
func (t Tally) noneCanPull(nodes []swarm.Node) bool {
	tries := map[string]int{}
	for _, f := range t.Failures {
		if f.noImage() {
			tries[f.Node]++
		}
	}
	eligible := 0
	for _, nd := range nodes {
		if nd.Status.State != swarm.NodeStateReady || nd.Spec.Availability != swarm.NodeAvailabilityActive {
			continue
		}
		eligible++
		name := cmp.Or(nd.Description.Hostname, nd.ID)
		if tries[name] < pullTries || t.pulled[name] {
			return false
		}
	}
	return eligible > 0
}

// terminal says a task in state st will not run again.
func terminal(st swarm.TaskState) bool {
	switch st {
	case swarm.TaskStateComplete, swarm.TaskStateShutdown, swarm.TaskStateFailed, swarm.TaskStateRejected,
		swarm.TaskStateRemove, swarm.TaskStateOrphaned:
		return true
	}
	return false
}

// addresses are task's IPs on network, without their prefix length.
func addresses(task swarm.Task, network string) []netip.Addr {
	var ips []netip.Addr
	for _, att := range task.NetworksAttachments {
		if att.Network.Spec.Name != network {
			continue
		}
		for _, p := range att.Addresses {
			ips = append(ips, p.Addr())
		}
	}
	return ips
}

// Progress is a line of how far the release is: "2 of 3 tasks healthy; 1 starting on hn2".
func (t Tally) Progress() string {
	parts := []string{fmt.Sprintf("%d of %d tasks healthy", t.Healthy, t.Wanted)}
	if len(t.Paused) > 0 {
		parts = append(parts, fmt.Sprintf("%d of them on paused %s", len(t.Paused), strings.Join(slices.Compact(slices.Clone(t.Paused)), ", ")))
	}
	if len(t.Starting) > 0 {
		parts = append(parts, fmt.Sprintf("%d starting on %s", len(t.Starting), strings.Join(slices.Compact(slices.Clone(t.Starting)), ", ")))
	}
	if t.Unplaced > 0 {
		parts = append(parts, fmt.Sprintf("%d not placed on a node yet", t.Unplaced))
	}
	if len(t.Unreachable) > 0 {
		parts = append(parts, fmt.Sprintf("%d on %s not counted (node not ready)", len(t.Unreachable), strings.Join(slices.Compact(slices.Clone(t.Unreachable)), ", ")))
	}
	if nodes := t.CouldNotPull(); len(nodes) > 0 {
		parts = append(parts, "could not pull the image on "+strings.Join(nodes, ", ")+" (Swarm tries other nodes)")
	}
	if t.failed > 0 {
		parts = append(parts, fmt.Sprintf("%d failed (fails at %d)", t.failed, FailureLimit(t.Wanted)))
	}
	return strings.Join(parts, "; ")
}

// Err is nil unless the verdict is Failed: then it names the nodes the tasks failed
// on, those that could not pull, and the last failure's error.
func (t Tally) Err() error {
	if t.Verdict != Failed {
		return nil
	}
	counts := map[string]int{}
	var order []string
	for _, f := range t.Failures {
		if counts[f.Node] == 0 {
			order = append(order, f.Node)
		}
		counts[f.Node]++
	}
	per := make([]string, len(order))
	for i, node := range order {
		per[i] = fmt.Sprintf("%s %d", node, counts[node])
	}
	last := t.Failures[len(t.Failures)-1]
	msg := fmt.Sprintf("%s release %d: %d tasks failed (on %s); last on %s: %s", t.Service, t.Release, len(t.Failures),
		strings.Join(per, ", "), last.Node, cmp.Or(last.Err, string(last.State)))
	if nodes := t.CouldNotPull(); len(nodes) > 0 {
		msg += "; could not pull the image on " + strings.Join(nodes, ", ")
	}
	return fmt.Errorf("%w: %s", ErrReleaseFailed, msg)
}

// CouldNotPull are the nodes whose tasks were rejected for want of the image and that
// run none of the release now: Swarm places them elsewhere, so a release may be Ready
// all the same, with this to warn of.
func (t Tally) CouldNotPull() []string {
	var nodes []string
	for _, f := range t.Failures {
		if f.noImage() && !t.pulled[f.Node] && !slices.Contains(nodes, f.Node) {
			nodes = append(nodes, f.Node)
		}
	}
	slices.Sort(nodes)
	return nodes
}

// TaskAPI is what waiting on tasks needs of a manager; *client.Client has it.
type TaskAPI interface {
	TaskList(ctx context.Context, opts client.TaskListOptions) (client.TaskListResult, error)
	NodeList(ctx context.Context, opts client.NodeListOptions) (client.NodeListResult, error)
}

// WaitOptions say which release's tasks Wait waits for, and how.
type WaitOptions struct {
	Service  string // the colour service: "api-green"
	Release  int
	Replicas int
	Network  string // DefaultNetwork when empty
	// Interval between polls; DefaultPollInterval when 0.
	Interval time.Duration
	// After is the clock: time.After when nil.
	After func(time.Duration) <-chan time.Time
	// Progress, when set, is told each tally whose Progress line changed.
	Progress func(Tally)
	// Timeout bounds each poll; DefaultTimeout when 0.
	Timeout time.Duration
	// Since is the colour's UpdatedAt once the release was written: tasks created
	// before it are of the release's earlier life and not counted (CountSince).
	Since time.Time
}

// DefaultPollInterval is how often a wait lists tasks and nodes.
const DefaultPollInterval = 500 * time.Millisecond

// Wait polls api until the release is Ready (its tally returned), Failed (its error) or ctx
// ends (ctx's error, with the last tally). A manager that cannot answer now is asked
// again at the next poll. Failed tasks are remembered across polls, since Swarm keeps
// only the newest few of each slot.
func Wait(ctx context.Context, api TaskAPI, w WaitOptions) (Tally, error) {
	after := w.After
	if after == nil {
		after = time.After
	}
	network := cmp.Or(w.Network, DefaultNetwork)
	failed := map[string]swarm.Task{}
	var last Tally
	said := ""
	for {
		tasks, nodes, err := w.poll(ctx, api)
		switch {
		case err == nil:
			seen := map[string]bool{}
			for _, task := range tasks {
				seen[task.ID] = true
				if task.Status.State == swarm.TaskStateFailed || task.Status.State == swarm.TaskStateRejected || task.Status.State == swarm.TaskStateComplete {
					failed[task.ID] = task
				}
			}
			for id, task := range failed {
				if !seen[id] {
					tasks = append(tasks, task)
				}
			}
			last = CountSince(w.Service, tasks, nodes, w.Release, w.Replicas, network, w.Since)
			if p := last.Progress(); p != said && w.Progress != nil {
				w.Progress(last)
				said = p
			}
			switch last.Verdict {
			case Ready:
				return last, nil
			case Failed:
				return last, last.Err()
			}
		case ctx.Err() != nil:
		case !isTransient(err):
			return last, err
		}
		select {
		case <-ctx.Done():
			return last, fmt.Errorf("wait for %s release %d: %w (%s)", w.Service, w.Release, ctx.Err(), last.Progress())
		case <-after(cmp.Or(w.Interval, DefaultPollInterval)):
		}
	}
}

// poll lists the service's tasks and the swarm's nodes.
func (w WaitOptions) poll(ctx context.Context, api TaskAPI) ([]swarm.Task, []swarm.Node, error) {
	ctx, cancel := context.WithTimeout(ctx, cmp.Or(w.Timeout, DefaultTimeout))
	defer cancel()
	tasks, err := api.TaskList(ctx, client.TaskListOptions{Filters: make(client.Filters).Add("service", w.Service)})
	if err != nil {
		return nil, nil, fmt.Errorf("list tasks of %s: %w", w.Service, err)
	}
	nodes, err := api.NodeList(ctx, client.NodeListOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("list nodes: %w", err)
	}
	return tasks.Items, nodes.Items, nil
}
