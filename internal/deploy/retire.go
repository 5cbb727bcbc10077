package deploy

import (
	"context"
	"fmt"
	"time"
)

// drainPoll is how often the proxy is asked for in-flight requests.
const drainPoll = 100 * time.Millisecond

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

// retire stops the old container (SIGTERM, then SIGKILL after the stop
// timeout), keeps it for rollback, and removes releases beyond svc.Keep.
func (d *Deployer) retire(ctx context.Context, svc Service, rec *Record, old *Container, live Container) error {
	if rec.OldUpstream != "" {
		if err := d.Proxy.Retire(ctx, rec.OldUpstream); err != nil {
			return fmt.Errorf("end what still runs on %s: %w", rec.OldUpstream, err)
		}
	}
	if old != nil && !SameUpstream(old.Upstream, live.Upstream) {
		if why := d.inUse(ctx, *old); why != "" {
			d.note(rec, fmt.Sprintf("not stopping %s: %s; stop it yourself once nothing uses it (`docker stop %s`)", old.Name, why, old.Name))
		} else if err := d.Runtime.Stop(ctx, old.ID, svc.StopTimeout); err != nil {
			return fmt.Errorf("stop %s: %w (it no longer receives traffic; stop it with `docker stop %s`)", old.Name, err, old.Name)
		} else {
			rec.FromStopped = true
		}
	}
	return d.prune(ctx, svc, rec, old, live)
}

// prune removes what is not kept: the retired release itself when the
// service says so (a compose service: `docker compose` must find one
// container of it), and stopped releases beyond svc.Keep. Images stay.
func (d *Deployer) prune(ctx context.Context, svc Service, rec *Record, old *Container, live Container) error {
	if svc.RemoveRetired && old != nil && rec.FromStopped {
		if err := d.Runtime.Remove(ctx, old.ID); err != nil {
			return fmt.Errorf("remove retired %s: %w", old.Name, err)
		}
		rec.FromRemoved = true
		d.note(rec, fmt.Sprintf("removed %s once stopped (its image %s is kept: `handoff rollback` runs it again)", old.Name, old.Image))
	}
	releases, err := d.Runtime.Releases(ctx, svc.Name)
	if err != nil {
		return err
	}
	for _, c := range pruneList(releases, live, svc.Keep) {
		if err := d.Runtime.Remove(ctx, c.ID); err != nil {
			return fmt.Errorf("remove old release %s: %w", c.Name, err)
		}
		d.note(rec, fmt.Sprintf("removed %s (beyond keep=%d); its image is left in place", c.Name, svc.Keep))
	}
	return nil
}

// pruneList picks the stopped releases beyond the newest keep ones.
// releases is newest first; the live container is never pruned.
func pruneList(releases []Container, live Container, keep int) []Container {
	var out []Container
	kept := 0
	for _, c := range releases {
		if c.ID == live.ID || c.Running || c.Adopted {
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
