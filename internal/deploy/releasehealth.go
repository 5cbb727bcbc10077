package deploy

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
)

// waitReleaseHealthy waits until every container of rel is healthy, all at
// once: one that fails fails the release (the others are not waited for).
// A replica that passed early may crash while a slower one boots: once all
// have passed, each is looked at again, and one that exited or restarted
// since it started fails the release too.
func (d *Deployer) waitReleaseHealthy(ctx context.Context, svc Service, rel *Release) error {
	if len(rel.Containers) == 1 {
		return d.withLogs(ctx, rel.Containers[0], d.waitHealthy(ctx, svc, rel.Containers[0], d.Report))
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, len(rel.Containers))
	progress := &replicaProgress{Reporter: d.Report, states: make([]string, len(rel.Containers)), names: rel.Names()}
	for i, c := range rel.Containers {
		go func() { errs <- d.withLogs(wctx, c, d.waitHealthy(wctx, svc, c, progress.of(i))) }()
	}
	var first error
	for range rel.Containers {
		if err := <-errs; err != nil && first == nil {
			first = err
			cancel()
		}
	}
	if first != nil {
		return first
	}
	for _, c := range rel.Containers {
		now, err := d.Runtime.Inspect(ctx, c.ID)
		if err != nil {
			return fmt.Errorf("inspect %s: %w", c.Name, err)
		}
		if why := crashed(c, now); why != "" {
			return d.withLogs(ctx, c, &HealthError{Container: c.Name, Reason: "passed its check, then " + strings.TrimSuffix(why, " while starting") + " while the other replicas started"})
		}
	}
	return nil
}

// withLogs adds c's last log lines to a health error of c.
func (d *Deployer) withLogs(ctx context.Context, c Container, err error) error {
	var he *HealthError
	if errors.As(err, &he) && he.Logs == "" {
		he.Logs, _ = d.Runtime.Logs(context.WithoutCancel(ctx), c.ID, DefaultLogLines)
	}
	return err
}

// releaseHealthDetail says which check the health phase waits on.
func (d *Deployer) releaseHealthDetail(svc Service, rel *Release) string {
	detail := d.healthDetail(svc, rel.Containers[0])
	if n := len(rel.Containers); n > 1 {
		detail = fmt.Sprintf("%s, and the same on each of its %d replicas", detail, n)
	}
	return detail
}

// replicaProgress puts what the health waits of a release's containers
// see into one line: each replica's state, told when one changes.
type replicaProgress struct {
	Reporter
	mu     sync.Mutex
	names  []string
	states []string
}

// of is the Reporter replica i's health wait reports to.
func (p *replicaProgress) of(i int) Reporter { return replicaReporter{p, i} }

type replicaReporter struct {
	*replicaProgress
	i int
}

// Progress tells the line anew, under the lock: lines go out in the order
// the states changed.
func (r replicaReporter) Progress(phase, state, detail string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.states[r.i] = state
	parts := make([]string, 0, len(r.states))
	for j, s := range r.states {
		if s == "" {
			s = "starting"
		}
		parts = append(parts, r.names[j]+" "+s)
	}
	r.Reporter.Progress(phase, strings.Join(parts, "; "), detail)
}

// Note tells what the first replica's wait notes: the replicas of a
// release run one image, so the others would say the same.
func (r replicaReporter) Note(msg string) {
	if r.i == 0 {
		r.Reporter.Note(msg)
	}
}
