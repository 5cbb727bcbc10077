package deploy

import (
	"context"
	"fmt"
	"time"
)

// drainPoll is how often the proxy is asked for in-flight requests.
const drainPoll = 25 * time.Millisecond

// drain waits until the proxy reports no request in flight to the old
// upstream, for at most the drain timeout. A proxy that cannot report it
// gets the whole timeout, and the record says so.
func (d *Deployer) drain(ctx context.Context, svc Service, rec *Record, upstream string) error {
	deadline := time.NewTimer(svc.DrainTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(drainPoll)
	defer tick.Stop()
	noted := ""
	for {
		in, err := d.Proxy.InFlight(ctx, upstream)
		if err != nil {
			return fmt.Errorf("drain %s: %w", upstream, err)
		}
		if in.Note != "" && in.Note != noted {
			d.note(rec, "drain: "+in.Note)
			noted = in.Note
		}
		if !in.Reported {
			d.note(rec, fmt.Sprintf("%s does not report requests in flight to a removed upstream (Caddy 2.11.2 and later do); waiting the whole drain timeout, %s", d.Proxy.Describe(), svc.DrainTimeout))
			select {
			case <-deadline.C:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if in.Requests == 0 {
			return nil
		}
		d.Report.Progress(PhaseDrain, fmt.Sprintf("%d request(s) still in flight on %s", in.Requests, upstream), fmt.Sprintf("up to %s", svc.DrainTimeout))
		select {
		case <-deadline.C:
			d.note(rec, fmt.Sprintf("drain timeout %s reached with %d request(s) still in flight to %s; stopping it anyway", svc.DrainTimeout, in.Requests, upstream))
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// retire ends what still runs on the upstream the switch left, stops the
// old container (SIGTERM, then SIGKILL after the stop timeout), keeps it
// for rollback, and removes releases beyond svc.Keep; the stop and the
// pruning of older releases run at the same time.
func (d *Deployer) retire(ctx context.Context, r *run) error {
	svc, rec, old, live := r.svc, r.rec, r.view.live, r.next
	if left := r.view.upstream; left != "" {
		if err := d.Proxy.Retire(ctx, left); err != nil {
			return fmt.Errorf("end what still runs on %s: %w", left, err)
		}
	}
	stopOld := old != nil && !SameUpstream(old.Upstream, live.Upstream)
	if stopOld {
		if why := d.inUse(ctx, *old); why != "" {
			d.note(rec, fmt.Sprintf("not stopping %s: %s; stop it yourself once nothing uses it (`docker stop %s`)", old.Name, why, old.Name))
			stopOld = false
		}
	}
	stopped := make(chan error, 1)
	if stopOld {
		go func() { stopped <- d.Runtime.Stop(ctx, old.ID, svc.StopTimeout) }()
	} else {
		stopped <- nil
	}
	kept := old
	if !stopOld || svc.RemoveRetired {
		kept = nil
	}
	pruneErr := d.pruneOlder(ctx, svc, rec, kept, live)
	if err := <-stopped; err != nil {
		return fmt.Errorf("stop %s: %w (it no longer receives traffic; stop it with `docker stop %s`)", old.Name, err, old.Name)
	}
	if stopOld {
		rec.FromStopped = true
		if err := d.removeRetired(ctx, svc, rec, old); err != nil {
			return err
		}
	}
	return pruneErr
}

// prune removes what is not kept once old is stopped (a worker's rollout).
func (d *Deployer) prune(ctx context.Context, svc Service, rec *Record, old *Container, live Container) error {
	if old != nil && rec.FromStopped {
		if err := d.removeRetired(ctx, svc, rec, old); err != nil {
			return err
		}
	}
	return d.pruneOlder(ctx, svc, rec, nil, live)
}

// removeRetired removes the stopped retired release when the service says
// so (a compose service: `docker compose` must find one container of it).
func (d *Deployer) removeRetired(ctx context.Context, svc Service, rec *Record, old *Container) error {
	if !svc.RemoveRetired {
		return nil
	}
	if err := d.Runtime.Remove(ctx, old.ID); err != nil {
		return fmt.Errorf("remove retired %s: %w", old.Name, err)
	}
	rec.FromRemoved = true
	d.note(rec, fmt.Sprintf("removed %s once stopped (its image %s is kept: `handoff rollback` runs it again)", old.Name, old.Image))
	return nil
}

// pruneOlder removes stopped releases beyond svc.Keep; retiring, the
// release being stopped now, is the newest kept. Images stay.
func (d *Deployer) pruneOlder(ctx context.Context, svc Service, rec *Record, retiring *Container, live Container) error {
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

// pruneList picks the stopped releases beyond the newest keep ones;
// retiring (being stopped now) counts as the newest kept. releases is
// newest first; the live container is never pruned.
func pruneList(releases []Container, live Container, retiring *Container, keep int) []Container {
	var out []Container
	kept := 0
	if retiring != nil {
		kept = 1
	}
	for _, c := range releases {
		if c.ID == live.ID || c.Running || c.Adopted || retiring != nil && c.ID == retiring.ID {
			continue
		}
		if kept < keep {
			kept++
			continue
		}
		out = append(out, c)
	}
	return out
}
