package deploy

import (
	"context"
	"fmt"
)

// Repair brings the proxy and the release in service back in step after
// something outside a procedure moved them apart, and finishes what an
// interrupted procedure left (survey does that part). The release the
// history last put in service is started again if it stopped, waited on
// until healthy, and the proxy pointed at where it listens now. When the
// proxy already points at a running release, nothing else is done.
func (d *Deployer) Repair(ctx context.Context, svc Service) (*Record, error) {
	svc = svc.WithDefaults()
	unlock, err := d.Locker.Lock(ctx, svc.Name)
	if err != nil {
		return nil, err
	}
	defer unlock()

	rec := newRecord(svc.Name, KindRepair, d.pid(), d.now())
	view, err := d.survey(ctx, svc, rec)
	if err != nil {
		return rec, d.fail(ctx, rec, err)
	}
	if view.live != nil {
		rec.From, rec.To, rec.FromRelease, rec.ToRelease = view.live.Name, view.live.Name, view.live.Release, view.live.Release
		d.note(rec, fmt.Sprintf("%s points at %s, which serves: nothing to repair", d.describe(), view.live.Name))
		return rec, d.succeed(rec)
	}
	target := view.expected
	if target == nil && view.upstream == "" {
		return rec, d.fail(ctx, rec, fmt.Errorf("%w: %s has no route for %s and no release of it is known to have served: deploy one (`handoff deploy`)", ErrNothingToRoll, d.describe(), svc.Name))
	}
	if target == nil {
		return rec, d.fail(ctx, rec, fmt.Errorf("%w: %s points at %s and no release of %s is known to have served: deploy one (`handoff deploy`)", ErrNothingToRoll, d.describe(), view.upstream, svc.Name))
	}
	rec.ToRelease, rec.To, rec.Image, rec.ImageID = target.Release, target.Name, target.Image, target.ImageID

	next := *target
	if !next.Running {
		err = d.phase(rec, PhaseStart, target.Name, func() error {
			next, err = d.Runtime.Start(ctx, target.ID, svc.Restart)
			return err
		})
		if err != nil {
			return rec, d.fail(ctx, rec, err)
		}
	}
	// The release in service is never removed, even when it fails its check.
	keep := func(context.Context, Container) {}
	if SameUpstream(next.Upstream, view.upstream) {
		// Back where the proxy points: once healthy, it serves again.
		rec.NewUpstream = next.Upstream
		err := d.phase(rec, PhaseHealth, d.healthDetail(svc, next), func() error { return d.waitHealthy(ctx, svc, next) })
		if err != nil {
			return rec, d.fail(ctx, rec, err)
		}
		rec.Switched = true
		return rec, d.succeed(rec)
	}
	return rec, d.handoff(ctx, svc, rec, view, next, keep)
}
