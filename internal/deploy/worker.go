package deploy

import (
	"context"
	"errors"
	"fmt"
)

// replace puts a new release of a service no proxy routes to (a worker, a
// scheduler) in place of the live one. start-first: the new release starts
// beside the old; once it is healthy (its health check, or running its
// settle time without a restart) the old one is stopped with its stop
// signal and grace period. stop-first, for what must never run twice: the
// old one stops first, and the service has a gap until the new one is
// healthy; if the new one fails, the old one is started again.
func (d *Deployer) replace(ctx context.Context, r *run, release int, imageID string) error {
	svc, rec, old := r.svc, r.rec, r.view.live
	if svc.Rollout == RolloutStopFirst && old != nil {
		d.note(rec, fmt.Sprintf("stop-first: %s stops before %s starts; %s has a gap until %s is healthy", old.Name, rec.To, svc.Name, rec.To))
		err := d.phase(r, PhaseRetire, old.Name, func() error {
			return d.Runtime.Stop(ctx, old.ID, svc.StopTimeout)
		})
		if err != nil {
			return d.fail(ctx, r, err)
		}
	}

	err := d.phase(r, PhaseStart, rec.To, func() (err error) {
		r.next, err = d.Runtime.Run(ctx, svc, release, imageID)
		return err
	})
	next := r.next
	if err == nil {
		rec.NewUpstream = next.Upstream
		err = d.phase(r, PhaseHealth, d.healthDetail(svc, next), func() error {
			return d.waitHealthy(ctx, svc, next)
		})
		var he *HealthError
		if errors.As(err, &he) {
			he.Logs, _ = d.Runtime.Logs(context.WithoutCancel(ctx), next.ID, DefaultLogLines)
		}
		if err == nil {
			err = d.Runtime.Announce(ctx, next, svc)
		}
		if err != nil {
			d.discard(ctx, next)
		}
	}
	if err != nil {
		return d.fail(ctx, r, fmt.Errorf("%w; %s", err, d.workerLeft(ctx, svc, rec, old)))
	}
	r.inService = true // saved as the record's Switched: the history's word for it

	if svc.Rollout == RolloutStartFirst && old != nil {
		err = d.phase(r, PhaseRetire, old.Name, func() error {
			if err := d.Runtime.Stop(ctx, old.ID, svc.StopTimeout); err != nil {
				return fmt.Errorf("stop %s: %w (%s runs beside it; stop it with `docker stop %s`)", old.Name, err, rec.To, old.Name)
			}
			rec.FromStopped = true
			return nil
		})
		if err != nil {
			return d.fail(ctx, r, err)
		}
	} else if old != nil {
		rec.FromStopped = true
	}
	if err := d.prune(ctx, svc, rec, old, next); err != nil {
		return d.fail(ctx, r, err)
	}
	return d.succeed(r)
}

// workerLeft says what runs after a failed replace, and for stop-first
// starts the old release again.
func (d *Deployer) workerLeft(ctx context.Context, svc Service, rec *Record, old *Container) string {
	switch {
	case old == nil:
		return fmt.Sprintf("%s not started; nothing of %s runs", rec.To, svc.Name)
	case svc.Rollout == RolloutStopFirst:
		if _, err := d.Runtime.Start(context.WithoutCancel(ctx), old.ID, svc.Restart); err != nil {
			return fmt.Sprintf("%s removed, and %s could not be started again (%v): start it with `docker start %s`", rec.To, old.Name, err, old.Name)
		}
		return fmt.Sprintf("%s removed; %s started again", rec.To, old.Name)
	}
	return fmt.Sprintf("%s still runs; %s removed", old.Name, rec.To)
}
