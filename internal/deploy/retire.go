package deploy

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// drainPoll is how often the proxy is asked for in-flight requests.
const drainPoll = 25 * time.Millisecond

// drain waits until the proxy reports no request in flight to any of the
// endpoints the switch left, for at most the drain timeout. A proxy that
// cannot report it gets the whole timeout, and the record says so.
func (d *Deployer) drain(ctx context.Context, svc Service, rec *Record, endpoints []string) error {
	deadline := time.NewTimer(svc.DrainTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(drainPoll)
	defer tick.Stop()
	noted := ""
	for {
		in, err := d.inFlight(ctx, endpoints)
		if err != nil {
			return fmt.Errorf("drain: %w", err)
		}
		if in.Note != "" && in.Note != noted {
			d.note(rec, "drain: "+in.Note)
			noted = in.Note
		}
		total, where, blind := in.Requests, in.where, !in.Reported
		if blind {
			d.note(rec, fmt.Sprintf("%s does not report requests in flight to a removed upstream (Caddy 2.11.2 and later do); waiting the whole drain timeout, %s", d.Proxy.Describe(), svc.DrainTimeout))
			select {
			case <-deadline.C:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if total == 0 {
			return nil
		}
		d.Report.Progress(PhaseDrain, fmt.Sprintf("%d request(s) still in flight on %s", total, endpointList(where)), fmt.Sprintf("up to %s", svc.DrainTimeout))
		select {
		case <-deadline.C:
			d.note(rec, fmt.Sprintf("drain timeout %s reached with %d request(s) still in flight to %s; stopping it anyway", svc.DrainTimeout, total, endpointList(where)))
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// inFlightOn is what the proxy says about requests in flight on several
// endpoints: their sum, where they are, and whether it could tell for all.
type inFlightOn struct {
	InFlight
	where []string // the endpoints with requests in flight
}

// inFlight asks the proxy about each endpoint; Reported only when it could
// tell for every one.
func (d *Deployer) inFlight(ctx context.Context, endpoints []string) (inFlightOn, error) {
	out := inFlightOn{InFlight: InFlight{Reported: true}}
	for _, e := range endpoints {
		in, err := d.Proxy.InFlight(ctx, e)
		if err != nil {
			return out, fmt.Errorf("count the requests in flight on %s: %w", e, err)
		}
		if out.Note == "" {
			out.Note = in.Note
		}
		if !in.Reported {
			out.Reported = false
			continue
		}
		if in.Requests > 0 {
			out.Requests += in.Requests
			out.where = append(out.where, e)
		}
	}
	return out, nil
}

// retire ends what still runs on the endpoints the switch left, stops the
// old release's containers (SIGTERM, then SIGKILL after the stop timeout)
// all at once, keeps them for rollback, and removes releases beyond
// svc.Keep; the stops and the pruning of older releases run at the same time.
func (d *Deployer) retire(ctx context.Context, r *run) error {
	svc, rec, old, live := r.svc, r.rec, r.view.live, r.next
	for _, left := range r.view.left(live) {
		if err := d.Proxy.Retire(ctx, left); err != nil {
			return fmt.Errorf("end what still runs on %s: %w", left, err)
		}
	}
	var stop []Container
	if old != nil {
		for _, c := range old.Containers {
			if live.Route().Has(c.Upstream) && c.Upstream != "" || live.Has(c) {
				continue // the new release is served there too
			}
			if why := d.inUse(ctx, c); why != "" {
				d.note(rec, fmt.Sprintf("not stopping %s: %s; stop it yourself once nothing uses it (`docker stop %s`)", c.Name, why, c.Name))
				continue
			}
			stop = append(stop, c)
		}
	}
	type stopResult struct {
		stopped []Container
		err     error
	}
	done := make(chan stopResult, 1)
	go func() {
		stopped, err := d.stopAll(ctx, svc, stop)
		done <- stopResult{stopped, err}
	}()
	var kept *Release
	if len(stop) > 0 && !svc.RemoveRetired {
		kept = old
	}
	pruneErr := d.pruneOlder(ctx, svc, rec, kept, live)
	res := <-done
	if len(stop) > 0 && len(res.stopped) == len(old.Containers) {
		rec.FromStopped = true // the whole old release, kept for rollback
	}
	// What did stop is removed as it would be; what did not is said.
	removeErr := d.removeRetired(ctx, svc, rec, res.stopped)
	if res.err != nil {
		return fmt.Errorf("%w; it no longer receives traffic", errors.Join(res.err, removeErr))
	}
	return errors.Join(removeErr, pruneErr)
}

// prune removes what is not kept once old is stopped (a worker's rollout).
func (d *Deployer) prune(ctx context.Context, svc Service, rec *Record, old *Release, live *Release) error {
	if old != nil && rec.FromStopped {
		if err := d.removeRetired(ctx, svc, rec, old.Containers); err != nil {
			return err
		}
	}
	return d.pruneOlder(ctx, svc, rec, nil, live)
}

// removeRetired removes the stopped containers of the retired release when
// the service says so (a compose service: `docker compose` must find only
// the containers of the release in service).
func (d *Deployer) removeRetired(ctx context.Context, svc Service, rec *Record, old []Container) error {
	if !svc.RemoveRetired || len(old) == 0 {
		return nil
	}
	var errs []error
	for _, c := range old {
		if err := d.Runtime.Remove(ctx, c.ID); err != nil {
			errs = append(errs, fmt.Errorf("remove retired %s: %w", c.Name, err))
			continue
		}
		d.note(rec, fmt.Sprintf("removed %s once stopped (its image %s is kept: `handoff rollback` runs it again)", c.Name, c.Image))
	}
	rec.FromRemoved = len(errs) == 0
	return errors.Join(errs...)
}

// pruneOlder removes stopped releases beyond svc.Keep; retiring, the
// release being stopped now, is the newest kept. Images stay.
func (d *Deployer) pruneOlder(ctx context.Context, svc Service, rec *Record, retiring *Release, live *Release) error {
	releases, err := d.Runtime.Releases(ctx, svc.Name)
	if err != nil {
		return err
	}
	for _, c := range pruneList(releases, live, retiring, svc.Keep) {
		if err := d.Runtime.Remove(ctx, c.ID); err != nil {
			return fmt.Errorf("remove old release %s: %w", c.Name, err)
		}
		d.note(rec, fmt.Sprintf("removed %s (beyond keep=%d); its image is left in place", c.Name, svc.Keep))
	}
	return nil
}

// pruneList picks the containers of the stopped releases beyond the newest
// keep ones; retiring (being stopped now) counts as the newest kept.
// releases is newest first; the live release, and a release of which any
// container runs, are never pruned.
func pruneList(releases []Container, live *Release, retiring *Release, keep int) []Container {
	var out []Container
	kept := 0
	if retiring != nil {
		kept = 1
	}
	for _, rel := range groupReleases(releases) {
		skip := false
		for _, c := range rel.Containers {
			skip = skip || live.Has(c) || c.Running || c.Adopted || retiring.Has(c)
		}
		if skip {
			continue
		}
		if kept < keep {
			kept++
			continue
		}
		out = append(out, rel.Containers...)
	}
	return out
}
