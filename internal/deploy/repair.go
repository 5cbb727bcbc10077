package deploy

import (
	"cmp"
	"context"
	"fmt"
	"strings"
)

// Repair brings the proxy and the release in service back in step after
// something outside a procedure moved them apart, and finishes what an
// interrupted procedure left (the recover phase, as every procedure does). The release the
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

	r := d.newRun(svc, KindRepair)
	rec := r.rec
	if err := d.begin(ctx, r); err != nil {
		return rec, d.fail(ctx, r, err)
	}
	view := r.view
	if view.live != nil {
		setFrom(rec, view.live)
		setTo(rec, view.live)
		behind, err := d.behind(ctx, view.route)
		if err != nil {
			return rec, d.fail(ctx, r, err)
		}
		if len(behind) > 0 {
			d.note(rec, fmt.Sprintf("%s points at %s, but %s", d.describe(), view.live.Name, strings.Join(behind, "; ")))
		}
		part := !view.live.Running()
		if part {
			// Serving on part of it: the rest is started again and waited on.
			if err := d.repairPart(ctx, r); err != nil {
				return rec, d.fail(ctx, r, err)
			}
		}
		if len(behind) > 0 {
			// Parts of the proxy that missed a switch: the route again, to all of them.
			d.note(rec, fmt.Sprintf("%s serves: sending the route again", view.live.Name))
			r.next = cmp.Or(r.next, view.live)
			err := d.phase(r, PhaseSwitch, view.route.String(), func() error {
				defer d.keepParts(rec)
				return d.Proxy.SetRoute(ctx, view.route, view.route)
			})
			if err != nil {
				return rec, d.fail(ctx, r, err)
			}
			// What only those parts pointed at (the release before a switch they
			// missed, which its deploy kept) is now left running after its switch.
			if err := d.retireLeftBehind(ctx, r); err != nil {
				return rec, d.fail(ctx, r, err)
			}
		}
		if len(behind) > 0 || part {
			r.inService = true
			return rec, d.succeed(r)
		}
		if rec.Phase == PhaseRecover {
			r.next = view.live // it recovered what was left: repaired, and this serves
		}
		d.note(rec, fmt.Sprintf("%s points at %s, which serves: nothing to repair", d.describe(), view.live.Name))
		return rec, d.succeed(r)
	}
	target := view.expected
	if target == nil && !view.routed() {
		return rec, d.fail(ctx, r, fmt.Errorf("%w: %s has no route for %s and no release of it is known to have served: deploy one (`handoff deploy`)", ErrNothingToRoll, d.describe(), svc.Name))
	}
	if target == nil {
		return rec, d.fail(ctx, r, fmt.Errorf("%w: %s points at %s and no release of %s is known to have served: deploy one (`handoff deploy`)", ErrNothingToRoll, d.describe(), view.at(), svc.Name))
	}
	setTo(rec, target)

	r.next = target
	if !target.Running() {
		err = d.phase(r, PhaseStart, target.Name, func() error {
			r.next, err = d.startAgain(ctx, svc, target)
			return err
		})
		if err != nil {
			return rec, d.fail(ctx, r, err)
		}
	}
	next := r.next
	// The release in service is never removed, even when it fails its check.
	keep := func(context.Context, Container) {}
	if next.Serves(view.route) {
		// Back where the proxy points: once healthy, it serves again.
		err := d.phase(r, PhaseHealth, d.releaseHealthDetail(svc, next), func() error { return d.waitReleaseHealthy(ctx, svc, next) })
		if err != nil {
			return rec, d.fail(ctx, r, err)
		}
		r.inService = true
		return rec, d.succeed(r)
	}
	return rec, d.putInService(ctx, r, keep)
}

// retireLeftBehind drains and stops (or removes) what begin left running because a
// route still pointed at it, once nothing does: a survey again, its interrupted
// records and canary finished already.
func (d *Deployer) retireLeftBehind(ctx context.Context, r *run) error {
	if r.view.canary != nil {
		return nil
	}
	left := d.leftBehind(ctx, r.view)
	left.interrupted = nil
	if !left.toRecover() {
		return nil
	}
	return d.phase(r, PhaseRecover, left.describe(r.view), func() error {
		return d.recoverInterrupted(ctx, r, left)
	})
}

// repairPart starts again the containers of the live release that are not
// running (a replica stopped by hand, or whose restart policy gave up),
// and waits until they are healthy; the rest serves meanwhile.
func (d *Deployer) repairPart(ctx context.Context, r *run) error {
	svc, rec, live := r.svc, r.rec, r.view.live
	down := notRunning(live)
	d.note(rec, fmt.Sprintf("%s points at %s, which serves on part of it: starting %s again", d.describe(), live.Name, strings.Join(down, ", ")))
	err := d.phase(r, PhaseStart, strings.Join(down, ", "), func() (err error) {
		r.next, err = d.startAgain(ctx, svc, live)
		return err
	})
	if err != nil {
		return fmt.Errorf("%w; %s serves on the rest", err, live.Name)
	}
	next := r.next
	err = d.phase(r, PhaseHealth, d.releaseHealthDetail(svc, next), func() error { return d.waitReleaseHealthy(ctx, svc, next) })
	if err != nil {
		return fmt.Errorf("%w; %s serves on the rest", err, live.Name)
	}
	return nil
}

// behind names the parts of the proxy that serve another route than route
// (Laggards); none when the proxy is one.
func (d *Deployer) behind(ctx context.Context, route Route) ([]string, error) {
	l, ok := d.Proxy.(Laggards)
	if !ok || len(route) == 0 {
		return nil, nil
	}
	return l.Behind(ctx, route)
}
