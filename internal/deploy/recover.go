package deploy

import (
	"context"
	"fmt"
	"strings"
)

// leftovers is what an interrupted procedure left, as survey found it:
// its records, still marked running (we hold the lock, so nobody runs
// them), and the containers beside the live release and the one the
// history put in service.
type leftovers struct {
	interrupted []int // into the view's history
	containers  []leftover
	canary      bool // the route is an interrupted canary's split
}

// leftover is one container an interrupted procedure left, and what
// becomes of it.
type leftover struct {
	c   Container
	act leftoverAct
	why string // for leaveInUse: what uses it
	// ofCanary: the other release of an interrupted canary, which the
	// canary's route still points at until endCanary changes it; whether
	// anything else points at it is asked again after that.
	ofCanary bool
}

type leftoverAct int

const (
	leaveInUse         leftoverAct = iota // a route of the proxy points at it, or the proxy cannot say
	removeNeverStarted                    // created by an interrupted deploy that was killed before it started it
	removeNeverServed                     // left running by an interrupted deploy, never in service
	stopAfterSwitch                       // an earlier release left running after its switch
)

// leftBehind finds what an interrupted procedure left, without changing
// anything. Nothing a route of the proxy points at is to be touched, nor
// the release the history put in service.
func (d *Deployer) leftBehind(ctx context.Context, v *view) leftovers {
	l := leftovers{canary: v.canary != nil}
	for i, h := range v.history {
		if h.Outcome == OutcomeRunning {
			l.interrupted = append(l.interrupted, i)
		}
	}
	for _, c := range v.containers {
		if v.live.Has(c) || v.expected.Has(c) {
			continue
		}
		if !c.Running {
			// A deploy that fails removes its container itself; a killed one cannot.
			if v.neverServed(c) && v.createdByInterrupted(c) {
				l.containers = append(l.containers, leftover{c: c, act: removeNeverStarted})
			}
			continue
		}
		if v.canary != nil && !v.live.Has(c) && (v.canary.old.Has(c) || v.canary.next.Has(c)) {
			act := removeNeverServed
			if v.canary.old.Has(c) {
				act = stopAfterSwitch // the canary was promoted: the old release is retired
			}
			l.containers = append(l.containers, leftover{c: c, act: act, ofCanary: true})
			continue
		}
		act, why := stopAfterSwitch, d.inUse(ctx, c)
		switch {
		case why != "":
			act = leaveInUse
		case v.neverServed(c) && (v.live == nil || c.Release > v.live.Number):
			act = removeNeverServed
		}
		l.containers = append(l.containers, leftover{c: c, act: act, why: why})
	}
	return l
}

// toRecover says whether there is anything to do: a container in use is
// only noted.
func (l leftovers) toRecover() bool {
	if len(l.interrupted) > 0 || l.canary {
		return true
	}
	for _, lo := range l.containers {
		if lo.act != leaveInUse {
			return true
		}
	}
	return false
}

// describe names what the recover phase finishes, for its start line.
func (l leftovers) describe(v *view) string {
	var parts []string
	if l.canary {
		parts = append(parts, "the split of an interrupted canary")
	}
	for _, i := range l.interrupted {
		h := v.history[i]
		parts = append(parts, fmt.Sprintf("the %s %s, interrupted in phase %s", h.Kind, h.ID, h.Phase))
	}
	for _, lo := range l.containers {
		if lo.act != leaveInUse {
			parts = append(parts, lo.c.Name)
		}
	}
	return strings.Join(parts, "; ")
}

// recoverInterrupted finishes what an interrupted procedure left, so that
// every procedure starts from a clean state: its records become
// interrupted, the requests its release job held are let go, containers
// that never went live are removed, and older ones still running after a
// switch are drained and stopped. What it does is in the record's notes.
func (d *Deployer) recoverInterrupted(ctx context.Context, r *run, l leftovers) error {
	svc, rec, v := r.svc, r.rec, r.view
	if v.canary != nil {
		// Before anything else: the split sends users to a release no
		// analysis watches any more.
		if err := d.endCanary(ctx, r); err != nil {
			return err
		}
	}
	for _, i := range l.interrupted {
		h := &v.history[i]
		h.Outcome, h.Error = OutcomeInterrupted, "interrupted in phase "+h.Phase+" (found by "+rec.ID+")"
		if !h.Switched && h.ToRelease != 0 && v.live != nil && v.live.Number == h.ToRelease {
			// Killed after its switch took, before it could record it: the
			// proxy serves its release, which is a release that served.
			h.Switched = true
		}
		if err := d.History.Save(h); err != nil {
			return fmt.Errorf("mark interrupted %s: %w", h.ID, err)
		}
		d.note(rec, fmt.Sprintf("an earlier %s (%s) was interrupted in phase %s; repairing", h.Kind, h.ID, h.Phase))
		if h.Held && d.Pauser != nil {
			d.note(rec, "letting go the requests its release job held")
			if err := d.Pauser.Resume(ctx); err != nil {
				return fmt.Errorf("let go the requests an interrupted release job held: %w (run `handoff proxy resume %s`)", err, svc.Name)
			}
			h.Held = false
			if err := d.History.Save(h); err != nil {
				return fmt.Errorf("record %s: %w", h.ID, err)
			}
		}
	}
	changed := false
	for _, lo := range l.containers {
		c := lo.c
		if lo.ofCanary {
			if why := d.inUse(ctx, c); why != "" {
				d.noteInUse(rec, leftover{c: c, why: why})
				continue
			}
		}
		switch lo.act {
		case leaveInUse:
			d.noteInUse(rec, lo)
			continue
		case removeNeverStarted, removeNeverServed:
			why := "created by an interrupted deploy, never started"
			if lo.act == removeNeverServed {
				why = "left running by an interrupted deploy, never in service"
			}
			d.note(rec, fmt.Sprintf("removing %s: %s", c.Name, why))
			if err := d.Runtime.Remove(ctx, c.ID); err != nil {
				return fmt.Errorf("remove leftover %s: %w", c.Name, err)
			}
		case stopAfterSwitch:
			d.note(rec, fmt.Sprintf("stopping %s: an earlier release left running after its switch", c.Name))
			if err := d.drainLeftover(ctx, svc, rec, c.Upstream); err != nil {
				return err
			}
			if err := d.Runtime.Stop(ctx, c.ID, svc.StopTimeout); err != nil {
				return fmt.Errorf("stop leftover %s: %w", c.Name, err)
			}
		}
		changed = true
	}
	if !changed {
		return nil
	}
	// What was removed or stopped is no longer in the view.
	releases, err := d.Runtime.Releases(ctx, svc.Name)
	if err != nil {
		return err
	}
	v.containers = releases
	v.live, v.expected = v.current(v.live), v.current(v.expected)
	return nil
}

func (d *Deployer) noteInUse(rec *Record, lo leftover) {
	d.note(rec, fmt.Sprintf("leaving %s running: %s", lo.c.Name, lo.why))
}

// current is rel as the view's releases have it now (the view's pointers go
// stale when the releases are read again).
func (v *view) current(rel *Release) *Release {
	if rel == nil || rel.Adopted() {
		return rel // adopted: not among the releases
	}
	if now := v.release(rel.Number); now != nil {
		return now
	}
	return rel
}

// drainLeftover waits for what may still run on a leftover's upstream, when
// the proxy can tell; blind waits are for the upstream a switch just left.
func (d *Deployer) drainLeftover(ctx context.Context, svc Service, rec *Record, upstream string) error {
	if d.Proxy == nil {
		return nil
	}
	in, err := d.Proxy.InFlight(ctx, upstream)
	if err != nil || !in.Reported || in.Requests == 0 {
		return nil
	}
	return d.drain(ctx, svc, rec, []string{upstream})
}
