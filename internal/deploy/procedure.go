package deploy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

// Deployer runs the procedure. Every field but Pauser, Steering, Now, After and PID is required.
type Deployer struct {
	Runtime Runtime
	Proxy   Proxy
	History History
	Locker  Locker
	Report  Reporter
	Pauser  Pauser // nil: the proxy cannot hold requests (release_pause refused)
	// Steering takes a person's promote or abort of a running canary
	// (`handoff canary`); nil: the analysis alone decides.
	Steering Steering
	Now      func() time.Time                     // nil: time.Now
	After    func(time.Duration) <-chan time.Time // nil: time.After; the waits that take Now's time
	PID      int                                  // 0: os.Getpid()
}

// cleanupTimeout bounds the work done after the user's context is gone
// (Ctrl-C): removing a new container, saving the record.
const cleanupTimeout = 30 * time.Second

// Deploy replaces the live release of svc with a new one from svc's image:
// image, start, wait healthy, switch, drain, retire. When it fails before
// the switch, the old container is still serving and nothing users see changed.
func (d *Deployer) Deploy(ctx context.Context, svc Service) (*Record, error) {
	svc = svc.WithDefaults()
	if err := svc.Validate(); err != nil {
		return nil, err
	}
	r, err := d.deploy(ctx, svc)
	if r == nil {
		return nil, err
	}
	d.afterHooks(ctx, r)
	return r.rec, err
}

func (d *Deployer) deploy(ctx context.Context, svc Service) (*run, error) {
	unlock, err := d.Locker.Lock(ctx, svc.Name)
	if err != nil {
		return nil, err
	}
	defer unlock()

	r := d.newRun(svc, KindDeploy)
	if err := d.begin(ctx, r); err != nil {
		return r, d.fail(ctx, r, err)
	}
	r.view.adoptExpected(r.rec)

	var imageID string
	err = d.phase(r, PhaseImage, d.imageDetail(svc), func() error {
		imageID, err = d.image(ctx, svc, r.rec)
		return err
	})
	if err != nil {
		return r, d.fail(ctx, r, err)
	}
	return r, d.runNewRelease(ctx, r, imageID)
}

// runNewRelease starts a new release of the service from imageID and puts
// it in service as the service's rollout says: blue/green behind a proxy,
// or, for a service no proxy routes to, start-first or stop-first.
func (d *Deployer) runNewRelease(ctx context.Context, r *run, imageID string) error {
	svc, rec, view := &r.svc, r.rec, r.view
	rec.Image, rec.ImageID = svc.Image, imageID
	if svc.Port == 0 && view.live != nil {
		svc.Port = view.live.Containers[0].Port
	}
	if svc.Port == 0 && svc.Rollout == RolloutBlueGreen {
		return d.fail(ctx, r, fmt.Errorf("%w: no port for %s: set `port:` in handoff.yml or pass --port (the port the app listens on inside the container)", ErrConfig, svc.Name))
	}
	if svc.Reach == ReachAuto {
		first, _ := firstOf(view.endpoints())
		svc.Reach = reachOf(first)
	}
	release := view.nextRelease(*svc)
	rec.ToRelease, rec.To = release, svc.ReleaseName(release)
	if r.kind == KindDeploy {
		if err := d.releaseWork(ctx, r, imageID); err != nil {
			return d.fail(ctx, r, fmt.Errorf("%w; %s", err, d.untouched(view)))
		}
	}
	if svc.Rollout != RolloutBlueGreen {
		return d.replace(ctx, r, release, imageID)
	}

	err := d.phase(r, PhaseStart, d.startDetail(*svc, release), func() (err error) {
		r.next, err = d.start(ctx, *svc, release, imageID)
		return err
	})
	if err != nil {
		return d.fail(ctx, r, fmt.Errorf("%w; %s", err, d.untouched(view)))
	}
	return d.putInService(ctx, r, d.discard)
}

// begin is how every procedure starts: survey what exists, check that the
// proxy can be switched, and finish what an interrupted procedure left, as
// a recorded phase when there is something to recover.
func (d *Deployer) begin(ctx context.Context, r *run) error {
	if _, ok := d.Runtime.(Execer); !ok && r.svc.Health.Kind == HealthCmd {
		return fmt.Errorf("%w: health type cmd runs a command in the container, which this engine cannot: use health type http or tcp", ErrConfig)
	}
	judged, err := d.judged(r)
	if err != nil {
		return err
	}
	r.judged = judged
	if cc, ok := d.Proxy.(CountChecker); ok && judged {
		if err := cc.CanCount(ctx); err != nil {
			return err
		}
	}
	left, err := d.survey(ctx, r)
	if err != nil {
		return err
	}
	if err := d.preflight(ctx, r); err != nil {
		return err
	}
	if !left.toRecover() {
		for _, lo := range left.containers {
			d.noteInUse(r.rec, lo)
		}
		return nil
	}
	return d.phase(r, PhaseRecover, left.describe(r.view), func() error {
		return d.recoverInterrupted(ctx, r, left)
	})
}

// preflight asks the proxy, before anything is started, whether a switch
// away from the route's upstream could be made and kept; the proxy may
// bring its own files in step (a Caddyfile an interrupted switch left
// behind) and says so, for the record.
func (d *Deployer) preflight(ctx context.Context, r *run) error {
	if d.Proxy == nil {
		return nil
	}
	notes, err := d.Proxy.Preflight(ctx, r.view.route, r.view.known(nil))
	if err != nil {
		return err
	}
	for _, n := range notes {
		d.note(r.rec, n)
	}
	return nil
}

// reachOf says how a proxy that dials upstream reaches a container: by a
// name on a Docker network (it runs in a container too), or on the host.
func reachOf(upstream string) Reach {
	host, _, err := net.SplitHostPort(upstream)
	if err != nil || upstream == "" || isLoopback(host) || net.ParseIP(host) != nil {
		return ReachHost
	}
	return ReachNetwork
}

// Rollback puts an earlier release back in service by the same procedure:
// a kept container is started again; a release no longer kept (a compose
// service's, removed when retired) runs again from its image. to is the
// release number; 0 picks the newest release older than the live one.
func (d *Deployer) Rollback(ctx context.Context, svc Service, to int) (*Record, error) {
	svc = svc.WithDefaults()
	unlock, err := d.Locker.Lock(ctx, svc.Name)
	if err != nil {
		return nil, err
	}
	defer unlock()

	r := d.newRun(svc, KindRollback)
	rec := r.rec
	if err := d.begin(ctx, r); err != nil {
		return rec, d.fail(ctx, r, err)
	}
	r.view.adoptExpected(rec)
	target, err := d.rollbackTarget(svc, r.view, to)
	if errors.Is(err, ErrNothingToRoll) && (svc.RemoveRetired || svc.Rollout != RolloutBlueGreen) {
		return rec, d.rollbackToImage(ctx, r, to)
	}
	if err != nil {
		return rec, d.fail(ctx, r, err)
	}
	setTo(rec, target)

	err = d.phase(r, PhaseStart, target.Name, func() error {
		r.next, err = d.startAgain(ctx, svc, target)
		return err
	})
	if err != nil {
		return rec, d.fail(ctx, r, fmt.Errorf("%w; %s", err, d.untouched(r.view)))
	}
	if n := max(svc.Replicas, 1); len(target.Containers) != n {
		d.note(rec, fmt.Sprintf("%s runs %d container(s), as it did; replicas: says %d: the next deploy runs %d", target.Name, len(target.Containers), n, n))
	}
	// A rollback target that fails is stopped again, never removed: it may be
	// the only copy of that release.
	return rec, d.putInService(ctx, r, d.stopQuietly(svc))
}

// rollbackToImage runs an earlier release's image again as a new release.
func (d *Deployer) rollbackToImage(ctx context.Context, r *run, to int) error {
	svc, rec, view := &r.svc, r.rec, r.view
	from := view.rollbackRecord(to)
	if from == nil {
		if to != 0 {
			return d.fail(ctx, r, fmt.Errorf("%w: the history has no release %d of %s that served (see `handoff history`)", ErrNothingToRoll, to, svc.Name))
		}
		return d.fail(ctx, r, fmt.Errorf("%w: the history has no release of %s before %s", ErrNothingToRoll, svc.Name, view.liveName()))
	}
	svc.Image, svc.Build = from.Image, nil
	var imageID string
	ran := fmt.Sprintf("as release %d ran it", from.ToRelease)
	if from.ToRelease == 0 {
		ran = "as the container handoff adopted ran it"
	}
	err := d.phase(r, PhaseImage, fmt.Sprintf("%s (%s, %s)", from.Image, shortID(from.ImageID), ran), func() (err error) {
		imageID, err = d.Runtime.ImageID(ctx, from.ImageID)
		if errors.Is(err, ErrImageNotFound) && from.Digest != "" {
			// Removed from the host since: the registry still has the
			// exact image by its digest, whatever its tag names now.
			if err = d.Runtime.Pull(ctx, from.Digest, d.Report.Output()); err == nil {
				imageID, err = d.Runtime.ImageID(ctx, from.ImageID)
			}
		}
		rec.Digest = from.Digest
		return err
	})
	if err != nil {
		return d.fail(ctx, r, err)
	}
	return d.runNewRelease(ctx, r, imageID)
}

func shortID(id string) string {
	id = strings.TrimPrefix(id, "sha256:")
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// putInService is the part deploy, rollback and repair share: wait until
// every container of r.next is healthy, switch the proxy to all of them at
// once, drain the old release's endpoints, retire the old release. abandon
// undoes r.next's containers when a step before the switch fails.
func (d *Deployer) putInService(ctx context.Context, r *run, abandon func(context.Context, Container)) error {
	svc, rec, view, next := r.svc, r.rec, r.view, r.next
	undo := func() {
		for _, c := range next.Containers {
			d.unlessUsed(ctx, rec, c, abandon)
		}
	}
	before := d.countsBefore(ctx, r)
	err := d.phase(r, PhaseHealth, d.releaseHealthDetail(svc, next), func() error {
		return d.waitReleaseHealthy(ctx, svc, next)
	})
	if err != nil {
		undo()
		return d.fail(ctx, r, fmt.Errorf("%w; %s", err, d.leftAsIs(view, next)))
	}
	for _, c := range next.Containers {
		if err := d.announce(ctx, c, svc); err != nil {
			undo()
			return d.fail(ctx, r, fmt.Errorf("give %s the service's network aliases: %w; %s", c.Name, err, d.leftAsIs(view, next)))
		}
	}
	if _, names := d.Runtime.(Announcer); names && svc.hasAliases() {
		for _, c := range next.Containers {
			if err := d.confirmHealthy(ctx, svc, c); err != nil {
				undo()
				return d.fail(ctx, r, fmt.Errorf("%w; %s", err, d.leftAsIs(view, next)))
			}
		}
	}

	judged := r.judged
	if judged {
		// `handoff canary status` reads the state each step publishes; it
		// is taken down once the release is in service or taken back.
		defer d.show(svc.Name, nil)
	}
	if judged && view.live == nil {
		judged = false
		d.note(rec, fmt.Sprintf("a first deploy has no release to compare %s with: no canary, no watch", next.Name))
	}
	if judged && len(svc.Canary) > 0 {
		err = d.phase(r, PhaseCanary, canaryDetail(svc, next), func() error {
			return d.canary(ctx, r)
		})
		if err != nil {
			return d.fail(ctx, r, err)
		}
	}
	var baseline Window
	if judged && svc.Watch > 0 {
		baseline = d.baseline(ctx, r, before)
	}

	err = d.phase(r, PhaseSwitch, fmt.Sprintf("%s → %s", r.current(), endpointList(next.Endpoints())), func() error {
		return d.switchTo(ctx, r)
	})
	if err != nil && !r.inService && r.rec.Canary != nil {
		// The canary's split still sends next a share: take it down.
		return d.fail(ctx, r, d.abortCanary(ctx, r, fmt.Errorf("the switch after the canary: %w", err), false))
	}
	if err != nil && !r.inService {
		undo()
		if errors.Is(err, ErrUnclear) {
			return d.fail(ctx, r, err)
		}
		return d.fail(ctx, r, fmt.Errorf("%w; %s", err, d.leftAsIs(view, next)))
	}
	if err != nil {
		// Switched, but interrupted or not finished: nothing is undone; the
		// next deploy drains and stops what is left.
		return d.fail(ctx, r, fmt.Errorf("%w; %s serves now, %s is left running (the next deploy drains and stops it)", err, next.Name, view.liveName()))
	}

	if judged && svc.Watch > 0 {
		err = d.phase(r, PhaseWatch, fmt.Sprintf("%s for %s, %s kept running to switch back to", next.Name, svc.Watch, view.liveName()), func() error {
			return d.watch(ctx, r, baseline)
		})
		if err != nil {
			return d.fail(ctx, r, err)
		}
	}

	// From here on users are served by next: a failure below is reported, but
	// never undoes the switch. A first deploy through an empty proxy had no
	// old upstream: nothing to drain.
	if left := view.left(next); len(left) > 0 {
		err = d.phase(r, PhaseDrain, endpointList(left), func() error {
			return d.drain(ctx, svc, rec, left)
		})
		if err != nil {
			return d.fail(ctx, r, err)
		}
	}
	err = d.phase(r, PhaseRetire, view.liveName(), func() error {
		return d.retire(ctx, r)
	})
	if err != nil {
		return d.fail(ctx, r, err)
	}
	return d.succeed(r)
}

// left lists the endpoints the route sent to before that next does not have:
// what the switch to next leaves to drain.
func (v *view) left(next *Release) []string {
	var out []string
	for _, e := range v.endpoints() {
		if !next.Route().Has(e) {
			out = append(out, e)
		}
	}
	return out
}

// announce gives c the service's network names, on an engine that gives
// names apart from starting a container.
func (d *Deployer) announce(ctx context.Context, c Container, svc Service) error {
	if a, ok := d.Runtime.(Announcer); ok {
		return a.Announce(ctx, c, svc)
	}
	return nil
}

// switchTo points the proxy at r.next, every request (routeTo reads the
// proxy back when the change reports an error).
func (d *Deployer) switchTo(ctx context.Context, r *run) error {
	err := d.routeTo(ctx, r, r.current(), r.next.Route(), r.view.liveName(), r.next.Name)
	if Same(r.current(), r.next.Route()) {
		r.inService = true
	}
	return err
}

// routeTo changes the route from from to to. An error does not say whether
// the change was made (the reply may be lost after the proxy applied it,
// the read back may fail, the user may press Ctrl-C): the proxy is read
// again, and what it serves now decides, never the error. fromName and
// toName say what each route is, for messages. When the change took, r's
// current route is to, whatever the error.
func (d *Deployer) routeTo(ctx context.Context, r *run, from, to Route, fromName, toName string) error {
	err := d.Proxy.SetRoute(ctx, from, to)
	d.keepParts(r.rec)
	if err == nil {
		r.route = to
		return nil
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	now, rerr := d.Proxy.Route(rctx, r.view.known(r.next))
	switch {
	case rerr != nil:
		return fmt.Errorf("%w: %v; reading %s back failed too (%v), so it may point at %s or at %s: both are left running; see `handoff status`, then run `handoff repair`",
			ErrUnclear, err, d.Proxy.Describe(), rerr, fromName, toName)
	case !Same(now, to):
		return err // not applied: the proxy still points elsewhere
	}
	d.note(r.rec, fmt.Sprintf("the switch reported an error (%v), but %s points at %s: it took; finishing it", err, d.Proxy.Describe(), endpointList(to.Endpoints())))
	r.route = to
	ferr := d.Proxy.SetRoute(rctx, from, to)
	d.keepParts(r.rec)
	if ferr != nil {
		return fmt.Errorf("%w: switched to %s, but could not finish the switch: %v", ErrProxy, endpointList(to.Endpoints()), ferr)
	}
	return ctx.Err() // interrupted: stop here
}

// keepParts records how each part of a proxy made of several (Parts) took
// the switch just sent, whether it succeeded or not.
func (d *Deployer) keepParts(rec *Record) {
	if p, ok := d.Proxy.(Parts); ok {
		rec.Nodes = append(rec.Nodes, p.LastSwitch()...)
	}
}

// current is the route as the run left it: the view's until the run
// changed it.
func (r *run) current() Route {
	if r.route != nil {
		return r.route
	}
	return r.view.route
}

// describe names the proxy for messages; a service no proxy routes to has none.
func (d *Deployer) describe() string {
	if d.Proxy == nil {
		return "no proxy (no route: a worker)"
	}
	return d.Proxy.Describe()
}

// untouched says what production looks like after a failure before any
// new release started.
func (d *Deployer) untouched(view *view) string {
	if view.live == nil {
		return "nothing was started"
	}
	return fmt.Sprintf("%s still serving, nothing was started", view.liveName())
}

// leftAsIs says what production looks like after a failure before the switch.
func (d *Deployer) leftAsIs(view *view, next *Release) string {
	return fmt.Sprintf("%s still serving %s; %s not in service", view.liveName(), d.Proxy.Describe(), next.Name)
}

// phase records that a phase is about to act, runs it, and records how it
// went. Before the release is in service a phase that cannot be recorded
// does not act (nothing users see has changed); after, the procedure goes
// on to leave production consistent, and says the history is behind.
func (d *Deployer) phase(r *run, name, detail string, act func() error) error {
	rec := r.rec
	start := d.now()
	rec.Phase = name
	rec.Phases = append(rec.Phases, PhaseRecord{Name: name, Started: start})
	if err := d.save(r); err != nil {
		if !r.inService {
			return fmt.Errorf("record phase %s before acting: %w (nothing was changed for it)", name, err)
		}
		d.note(rec, fmt.Sprintf("could not record phase %s in the history (%v); going on, since the switch is made", name, err))
	}
	d.Report.PhaseStart(name, detail)
	r.exitCode = nil
	err := act()
	took := d.now().Sub(start)
	p := &rec.Phases[len(rec.Phases)-1]
	p.Duration, p.ExitCode = took, r.exitCode
	if err != nil {
		p.Error = err.Error()
	}
	d.Report.PhaseDone(name, took, err)
	return err
}

func (d *Deployer) note(rec *Record, msg string) {
	rec.Notes = append(rec.Notes, msg)
	d.Report.Note(msg)
}

func (d *Deployer) fail(ctx context.Context, r *run, err error) error {
	rec := r.rec
	rec.Outcome = OutcomeFailed
	if ctx.Err() != nil {
		rec.Outcome = OutcomeInterrupted
	}
	rec.Error = err.Error()
	rec.Finished = d.now()
	if serr := d.save(r); serr != nil {
		d.Report.Note(fmt.Sprintf("could not save the history: %v", serr))
	}
	return err
}

func (d *Deployer) succeed(r *run) error {
	r.rec.Outcome = OutcomeSucceeded
	r.rec.Finished = d.now()
	if err := d.save(r); err != nil {
		d.Report.Note(fmt.Sprintf("deployed, but could not save the history: %v", err))
	}
	return nil
}

func (d *Deployer) now() time.Time {
	if d.Now != nil {
		return d.Now()
	}
	return time.Now()
}

func (d *Deployer) after(wait time.Duration) <-chan time.Time {
	if d.After != nil {
		return d.After(wait)
	}
	return time.After(wait)
}

func (d *Deployer) pid() int {
	if d.PID != 0 {
		return d.PID
	}
	return os.Getpid()
}
