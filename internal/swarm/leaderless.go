package swarm

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/client"
)

// A swarm that loses its leader elects another in about 10 s (ElectionTick 10 × 1 s);
// meanwhile every manager answers "does not have a leader", and a follower that passes
// a request on to the leader just lost hangs on it (20 s on 20.10, then
// DeadlineExceeded). A deploy under way rides that out: Patient asks again.

// ManagerAPI is all a deploy asks of a manager: the runtime's, the jobs' and the
// record's calls. *client.Client has it.
type ManagerAPI interface {
	RuntimeAPI
	JobAPI
}

// Patient is a ManagerAPI that asks its manager again while the swarm cannot answer
// (no leader, the leader not answering, the manager not reached), for up to Timeout
// per call. A read is simply asked again. A write is made safe to ask again:
//   - an update carries the version it was decided at, so one sent again after an
//     answer was lost is refused as stale if the first went through; that refusal
//     says so, and the caller reads again and decides again (never a blind re-send);
//   - a create whose answer was lost is looked for by name first, and found with the
//     labels sent it is the one made: its ID is the answer;
//   - a remove whose answer was lost and that then finds nothing is done.
//
// Reads and writes alike are cut after Try and asked again, so that a request stuck
// on a lost leader is sent on to the next one soon after the election; log streams
// and registry queries, which may rightly take long, are not cut.
type Patient struct {
	API ManagerAPI
	// Timeout bounds each call, its tries again included: how long a swarm may go
	// without a leader before a deploy gives up. DefaultTimeout when 0.
	Timeout time.Duration
	// Try bounds each try of a call; DefaultTry when 0.
	Try time.Duration
	// Retry is how long to wait before asking again; transientRetry when 0.
	Retry time.Duration
}

var _ ManagerAPI = (*Patient)(nil)

// NewPatient is api asked again through a loss of its swarm's leader, with the
// default bounds.
func NewPatient(api ManagerAPI) *Patient { return &Patient{API: api} }

// DefaultTry bounds a try of a call to a manager. Every call a deploy makes is
// answered in well under a second by a swarm with a leader; one that hangs is stuck
// on a leader lost, and is better sent again: after the election, a manager passes it
// on to the new leader, which answers at once.
const DefaultTry = 5 * time.Second

func (p *Patient) timeout() time.Duration {
	if p.Timeout > 0 {
		return p.Timeout
	}
	return DefaultTimeout
}

func (p *Patient) try() time.Duration {
	if p.Try > 0 {
		return p.Try
	}
	return DefaultTry
}

func (p *Patient) retry() time.Duration {
	if p.Retry > 0 {
		return p.Retry
	}
	return transientRetry
}

// call runs f until it answers, fails for good, ctx ends or Timeout runs out. f is
// told whether an earlier try went unanswered (a write it made may have gone
// through). cut bounds each try by Try; without it f keeps ctx, for what it returns
// reads from ctx after the call (a log stream).
func call[T any](ctx context.Context, p *Patient, cut bool, f func(ctx context.Context, unanswered bool) (T, error)) (T, error) {
	deadline := time.Now().Add(p.timeout())
	unanswered := false
	for {
		tctx, cancel := ctx, context.CancelFunc(func() {})
		if cut {
			tctx, cancel = context.WithTimeout(ctx, min(p.try(), time.Until(deadline)))
		}
		res, err := f(tctx, unanswered)
		cutShort := tctx.Err() != nil
		cancel()
		switch {
		case err == nil || ctx.Err() != nil:
			return res, err
		case !isTransient(err) && !cutShort:
			return res, err
		}
		unanswered = true
		if time.Until(deadline) < p.retry() {
			var zero T
			return zero, unansweredFor(p.timeout(), err)
		}
		wait(ctx, p.retry())
		if ctx.Err() != nil {
			return res, err
		}
	}
}

// unansweredFor is the error of a call its manager did not answer for timeout, last
// failing with err. It says what kept the manager from answering in words of its own,
// not err's: callers ask again on an error that reads transient, and this one has been.
func unansweredFor(timeout time.Duration, err error) error {
	why := "a manager that did not answer"
	msg := err.Error()
	switch {
	case strings.Contains(msg, "does not have a leader") || strings.Contains(msg, "no leader"):
		why = "the swarm was without a leader all along"
	case client.IsErrConnectionFailed(err):
		why = "the manager could not be reached (DOCKER_HOST)"
	case cerrdefs.IsDeadlineExceeded(err) || strings.Contains(msg, "DeadlineExceeded"):
		why = "its requests were not answered in time"
	case cerrdefs.IsUnavailable(err) || strings.Contains(msg, "Unavailable"):
		why = "the manager found its leader unavailable"
	}
	return fmt.Errorf("%w for %s (%s; last: %s): more than half of the managers must be up and reach each other; check `docker node ls` on one, then run handoff again", errUnanswered, timeout, why, untransient(msg))
}

// untransient is msg with the words that make an error read transient to callers
// (isTransient) put otherwise, so that the cause can be named without being asked again.
func untransient(msg string) string {
	return strings.NewReplacer("code = Unavailable", "code Unavailable", "code = DeadlineExceeded", "code DeadlineExceeded",
		"does not have a leader", "has lost its leader", "no leader", "leaderless").Replace(msg)
}

func (p *Patient) ServiceInspect(ctx context.Context, id string, opts client.ServiceInspectOptions) (client.ServiceInspectResult, error) {
	return call(ctx, p, true, func(ctx context.Context, _ bool) (client.ServiceInspectResult, error) {
		return p.API.ServiceInspect(ctx, id, opts)
	})
}

func (p *Patient) ServiceList(ctx context.Context, opts client.ServiceListOptions) (client.ServiceListResult, error) {
	return call(ctx, p, true, func(ctx context.Context, _ bool) (client.ServiceListResult, error) {
		return p.API.ServiceList(ctx, opts)
	})
}

func (p *Patient) TaskList(ctx context.Context, opts client.TaskListOptions) (client.TaskListResult, error) {
	return call(ctx, p, true, func(ctx context.Context, _ bool) (client.TaskListResult, error) {
		return p.API.TaskList(ctx, opts)
	})
}

func (p *Patient) NodeList(ctx context.Context, opts client.NodeListOptions) (client.NodeListResult, error) {
	return call(ctx, p, true, func(ctx context.Context, _ bool) (client.NodeListResult, error) {
		return p.API.NodeList(ctx, opts)
	})
}

func (p *Patient) TaskLogs(ctx context.Context, id string, opts client.TaskLogsOptions) (client.TaskLogsResult, error) {
	return call(ctx, p, false, func(ctx context.Context, _ bool) (client.TaskLogsResult, error) {
		return p.API.TaskLogs(ctx, id, opts)
	})
}

func (p *Patient) ServiceLogs(ctx context.Context, id string, opts client.ServiceLogsOptions) (client.ServiceLogsResult, error) {
	return call(ctx, p, false, func(ctx context.Context, _ bool) (client.ServiceLogsResult, error) {
		return p.API.ServiceLogs(ctx, id, opts)
	})
}

func (p *Patient) DistributionInspect(ctx context.Context, ref string, opts client.DistributionInspectOptions) (client.DistributionInspectResult, error) {
	return call(ctx, p, false, func(ctx context.Context, _ bool) (client.DistributionInspectResult, error) {
		return p.API.DistributionInspect(ctx, ref, opts)
	})
}

// ServiceUpdate sends the update at the version it carries until it is answered. Sent
// again after an answer was lost, it is refused as stale if the first went through,
// and the refusal says so: read again and decide again.
func (p *Patient) ServiceUpdate(ctx context.Context, id string, opts client.ServiceUpdateOptions) (client.ServiceUpdateResult, error) {
	return call(ctx, p, true, func(ctx context.Context, unanswered bool) (client.ServiceUpdateResult, error) {
		res, err := p.API.ServiceUpdate(ctx, id, opts)
		if err != nil && unanswered && isStale(err) {
			err = fmt.Errorf("%w (an earlier try of this write went unanswered and may have been made: read it again)", err)
		}
		return res, err
	})
}

// ServiceCreate creates the service. After an answer was lost it first looks for it by
// name: there with the labels sent, it was made, and its ID is the answer; there with
// others, someone else made it (ErrAlreadyExists).
func (p *Patient) ServiceCreate(ctx context.Context, opts client.ServiceCreateOptions) (client.ServiceCreateResult, error) {
	name := opts.Spec.Name
	return call(ctx, p, true, func(ctx context.Context, unanswered bool) (client.ServiceCreateResult, error) {
		if unanswered {
			got, err := p.API.ServiceInspect(ctx, name, client.ServiceInspectOptions{})
			switch {
			case err == nil && maps.Equal(got.Service.Spec.Labels, opts.Spec.Labels):
				return client.ServiceCreateResult{ID: got.Service.ID}, nil
			case err == nil:
				return client.ServiceCreateResult{}, fmt.Errorf("create service %s: made meanwhile with other labels, by someone else: %w", name, cerrdefs.ErrAlreadyExists)
			case !cerrdefs.IsNotFound(err):
				return client.ServiceCreateResult{}, err
			}
		}
		res, err := p.API.ServiceCreate(ctx, opts)
		if err != nil && unanswered && (cerrdefs.IsAlreadyExists(err) || cerrdefs.IsConflict(err) || strings.Contains(err.Error(), "already exists")) {
			// The unanswered try went through after all, after the look above.
			got, ierr := p.API.ServiceInspect(ctx, name, client.ServiceInspectOptions{})
			switch {
			case ierr == nil && maps.Equal(got.Service.Spec.Labels, opts.Spec.Labels):
				return client.ServiceCreateResult{ID: got.Service.ID}, nil
			case ierr != nil && isTransient(ierr):
				// Not known whose it is: asked again, the look above tells.
				return client.ServiceCreateResult{}, ierr
			}
		}
		return res, err
	})
}

// ServiceRemove removes the service; after an answer was lost, finding none is done.
func (p *Patient) ServiceRemove(ctx context.Context, id string, opts client.ServiceRemoveOptions) (client.ServiceRemoveResult, error) {
	return call(ctx, p, true, func(ctx context.Context, unanswered bool) (client.ServiceRemoveResult, error) {
		res, err := p.API.ServiceRemove(ctx, id, opts)
		if err != nil && unanswered && cerrdefs.IsNotFound(err) {
			return res, nil
		}
		return res, err
	})
}
