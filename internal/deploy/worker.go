package deploy

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
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
			_, err := d.stopAll(ctx, svc, old.Containers)
			return err
		})
		if err != nil {
			return d.fail(ctx, r, err)
		}
	}

	err := d.phase(r, PhaseStart, d.startDetail(svc, release), func() (err error) {
		r.next, err = d.start(ctx, svc, release, imageID)
		return err
	})
	if err == nil {
		next := r.next
		err = d.phase(r, PhaseHealth, d.releaseHealthDetail(svc, next), func() error {
			return d.waitReleaseHealthy(ctx, svc, next)
		})
		for _, c := range next.Containers {
			if err == nil {
				err = d.announce(ctx, c, svc)
			}
		}
		if err != nil {
			for _, c := range next.Containers {
				d.discard(ctx, c)
			}
		}
	}
	if err != nil {
		return d.fail(ctx, r, fmt.Errorf("%w; %s", err, d.workerLeft(ctx, svc, rec, old)))
	}
	r.inService = true // saved as the record's Switched: the history's word for it

	if svc.Rollout == RolloutStartFirst && old != nil {
		err = d.phase(r, PhaseRetire, old.Name, func() error {
			if _, err := d.stopAll(ctx, svc, old.Containers); err != nil {
				return fmt.Errorf("%w (%s runs beside it)", err, rec.To)
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
	if err := d.prune(ctx, svc, rec, old, r.next); err != nil {
		return d.fail(ctx, r, err)
	}
	return d.succeed(r)
}

// stopAll stops every container of cs at once, and returns those it
// stopped; the error says which it could not (each names its container
// and how to stop it).
func (d *Deployer) stopAll(ctx context.Context, svc Service, cs []Container) ([]Container, error) {
	errs := make([]error, len(cs))
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Go(func() {
			if err := d.Runtime.Stop(ctx, c.ID, svc.StopTimeout); err != nil {
				errs[i] = fmt.Errorf("stop %s: %w (stop it with `docker stop %s`)", c.Name, err, c.Name)
			}
		})
	}
	wg.Wait()
	var stopped []Container
	for i, c := range cs {
		if errs[i] == nil {
			stopped = append(stopped, c)
		}
	}
	return stopped, errors.Join(errs...)
}

// workerLeft says what runs after a failed replace, and for stop-first
// starts the old release again.
func (d *Deployer) workerLeft(ctx context.Context, svc Service, rec *Record, old *Release) string {
	switch {
	case old == nil:
		return fmt.Sprintf("%s not started; nothing of %s runs", rec.To, svc.Name)
	case svc.Rollout == RolloutStopFirst:
		var failed []string
		for _, c := range old.Containers {
			if _, err := d.Runtime.Start(context.WithoutCancel(ctx), c.ID, svc.Restart); err != nil {
				failed = append(failed, fmt.Sprintf("%s could not be started again (%v): start it with `docker start %s`", c.Name, err, c.Name))
			}
		}
		if len(failed) > 0 {
			return fmt.Sprintf("%s removed, and %s", rec.To, strings.Join(failed, "; "))
		}
		return fmt.Sprintf("%s removed; %s started again", rec.To, old.Name)
	}
	return fmt.Sprintf("%s still runs; %s removed", old.Name, rec.To)
}
