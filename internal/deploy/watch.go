package deploy

import (
	"context"
	"fmt"
	"strings"
)

// The watch after a switch (issue 18): the new release serves every
// request while the old one keeps running; if the new one does worse than
// the old one did before the switch, the switch is undone at once (the old
// containers are still up) and the new release is removed. Argo Rollouts'
// post-promotion analysis, on one host.

// countsBefore reads the proxy's counts as a deploy that watches begins to
// put its release in service: the old release's window from here to the
// switch is the watch's baseline. nil when there is no watch, or the
// proxy could not be read (the baseline is then the old release's whole
// stay).
func (d *Deployer) countsBefore(ctx context.Context, r *run) Counts {
	if !r.judged || r.svc.Watch == 0 || r.view.live == nil {
		return nil
	}
	c, err := d.Proxy.(Counter).Counts(ctx)
	if err != nil {
		return nil
	}
	return c
}

// baseline is what the old release's users got before the switch: from
// before (as the deploy began) to now, or, when that window is too small
// to judge by, everything since the old release entered the route.
func (d *Deployer) baseline(ctx context.Context, r *run, before Counts) Window {
	now, err := d.Proxy.(Counter).Counts(ctx)
	if err != nil {
		d.note(r.rec, fmt.Sprintf("the watch has no baseline: reading the counts of %s failed (%v); the new release is judged on its own numbers", d.Proxy.Describe(), err))
		return Window{}
	}
	old := r.view.live.Endpoints()
	if before != nil {
		if w := now.Since(before, old); w.Requests >= r.svc.Analysis.WithDefaults().MinRequests {
			return w
		}
	}
	return now.Since(nil, old)
}

// watch judges next, serving every request, against the old release's
// baseline for svc.Watch; a failure switches back to the old release and
// removes next (ErrRolledBack).
func (d *Deployer) watch(ctx context.Context, r *run, baseline Window) error {
	svc, view, next := r.svc, r.view, r.next
	if r.rec.Canary == nil {
		d.asked(svc.Name) // an ask left from before this watch began is not for it
	}
	a, err := d.observe(ctx, r, observation{phase: PhaseWatch, weight: 100, hold: svc.Watch, release: next, fixed: baseline})
	r.rec.Analysis = append(r.rec.Analysis, a)
	if err != nil {
		// The switch stands: the old release is left running, the next
		// deploy (or `handoff repair`) drains and stops it.
		return fmt.Errorf("watch of %s: %w; %s serves, %s is left running", next.Name, err, next.Name, view.liveName())
	}
	d.note(r.rec, fmt.Sprintf("watch of %s: %s", next.Name, a.said()))
	switch {
	case a.Verdict == VerdictPass:
		return nil
	case a.Verdict == VerdictWait:
		d.note(r.rec, fmt.Sprintf("the watch of %s ended without enough requests to judge it (%s); it stays in service", next.Name, a.Reason))
		return nil
	}
	return d.switchBack(ctx, r, a)
}

// switchBack undoes the switch to next after its watch failed: every
// request to the old release again, next drained and removed. When the
// route cannot be changed back the error is the proxy's: next serves.
func (d *Deployer) switchBack(ctx context.Context, r *run, a Analysis) error {
	svc, view, next := r.svc, r.view, r.next
	why := fmt.Sprintf("watch of %s: %s", next.Name, a.Reason)
	if a.By != "" {
		why = fmt.Sprintf("watch of %s: %s", next.Name, a.said())
	}
	if err := d.takeBack(ctx, r, next.Name); err != nil {
		return fmt.Errorf("%s; switching back to %s failed: %w; %s serves, %s is left running: run `handoff rollback %s`", why, view.liveName(), err, next.Name, view.liveName(), svc.Name)
	}
	return fmt.Errorf("%w: %s; switched back to %s (never stopped); %s removed", ErrRolledBack, why, view.liveName(), next.Name)
}

// canaryDetail is the canary phase's start line: its steps.
func canaryDetail(svc Service, next *Release) string {
	steps := make([]string, len(svc.Canary))
	for i, s := range svc.Canary {
		steps[i] = s.String()
	}
	return fmt.Sprintf("%s: %s, then 100%%", next.Name, strings.Join(steps, ", "))
}
