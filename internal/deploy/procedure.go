package deploy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

// Deployer runs the procedure. Every field but Pauser, Now, After and PID is required.
type Deployer struct {
	Runtime Runtime
	Proxy   Proxy
	History History
	Locker  Locker
	Report  Reporter
	Pauser  Pauser                               // nil: the proxy cannot hold requests (release_pause refused)
	Now     func() time.Time                     // nil: time.Now
	After   func(time.Duration) <-chan time.Time // nil: time.After; the waits that take Now's time
	PID     int                                  // 0: os.Getpid()
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
		svc.Reach = reachOf(firstEndpoint(view.endpoints()))
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
		return d.fail(ctx, r, err)
	}
	return d.putInService(ctx, r, d.discard)
}

// start runs every container of a new release, all at once. When one
// cannot start, those started are removed: a release is started whole or
// not at all.
func (d *Deployer) start(ctx context.Context, svc Service, release int, imageID string) (*Release, error) {
	replicas := svc.ReplicaNumbers()
	started := make([]Container, len(replicas))
	errs := make([]error, len(replicas))
	var wg sync.WaitGroup
	for i, replica := range replicas {
		wg.Go(func() { started[i], errs[i] = d.Runtime.Run(ctx, svc, release, replica, imageID) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		for i, c := range started {
			if errs[i] == nil {
				d.discard(ctx, c)
			}
		}
		return nil, err
	}
	return releaseOf(svc.ReleaseName(release), started...), nil
}

// startDetail names what the start phase starts: web-4, or web-4 (3 replicas).
func (d *Deployer) startDetail(svc Service, release int) string {
	if n := len(svc.ReplicaNumbers()); n > 1 {
		return fmt.Sprintf("%s (%d replicas)", svc.ReleaseName(release), n)
	}
	return svc.ReleaseName(release)
}

func firstEndpoint(endpoints []string) string {
	if len(endpoints) == 0 {
		return ""
	}
	return endpoints[0]
}

// begin is how every procedure starts: survey what exists, check that the
// proxy can be switched, and finish what an interrupted procedure left, as
// a recorded phase when there is something to recover.
func (d *Deployer) begin(ctx context.Context, r *run) error {
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
		return rec, d.fail(ctx, r, err)
	}
	// A rollback target that fails is stopped again, never removed: it may be
	// the only copy of that release.
	return rec, d.putInService(ctx, r, d.stopQuietly(svc))
}

// startAgain starts a kept release's containers (those not running). When
// one cannot start, those started here are stopped again.
func (d *Deployer) startAgain(ctx context.Context, svc Service, rel *Release) (*Release, error) {
	out := *rel
	out.Containers = slices.Clone(rel.Containers)
	var started []Container
	for i, c := range out.Containers {
		if c.Running {
			continue
		}
		now, err := d.Runtime.Start(ctx, c.ID, svc.Restart)
		if err != nil {
			for _, s := range started {
				d.stopQuietly(svc)(ctx, s)
			}
			return nil, fmt.Errorf("start %s: %w", c.Name, err)
		}
		now.Replica, now.Adopted = c.Replica, c.Adopted
		out.Containers[i] = now
		started = append(started, now)
	}
	return &out, nil
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
	if svc.hasAliases() {
		for _, c := range next.Containers {
			if err := d.confirmHealthy(ctx, svc, c); err != nil {
				undo()
				return d.fail(ctx, r, fmt.Errorf("%w; %s", err, d.leftAsIs(view, next)))
			}
		}
	}

	err = d.phase(r, PhaseSwitch, fmt.Sprintf("%s → %s", view.at(), endpointList(next.Endpoints())), func() error {
		return d.switchTo(ctx, r)
	})
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

// waitReleaseHealthy waits until every container of rel is healthy, all at
// once: one that fails fails the release (the others are not waited for).
func (d *Deployer) waitReleaseHealthy(ctx context.Context, svc Service, rel *Release) error {
	if len(rel.Containers) == 1 {
		return d.withLogs(ctx, rel.Containers[0], d.waitHealthy(ctx, svc, rel.Containers[0]))
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, len(rel.Containers))
	progress := &replicaProgress{Reporter: d.Report, states: make([]string, len(rel.Containers)), names: rel.Names()}
	for i, c := range rel.Containers {
		each := *d
		each.Report = progress.of(i)
		go func() { errs <- d.withLogs(ctx, c, each.waitHealthy(ctx, svc, c)) }()
	}
	var first error
	for range rel.Containers {
		if err := <-errs; err != nil && first == nil {
			first = err
			cancel()
		}
	}
	return first
}

// announce gives c the service's network names, on an engine that gives
// names apart from starting a container.
func (d *Deployer) announce(ctx context.Context, c Container, svc Service) error {
	if a, ok := d.Runtime.(Announcer); ok {
		return a.Announce(ctx, c, svc)
	}
	return nil
}

// replicaProgress puts what the health waits of a release's containers
// see into one line: each replica's state, told when one changes.
type replicaProgress struct {
	Reporter
	mu     sync.Mutex
	names  []string
	states []string
}

// of is the Reporter replica i's health wait reports to.
func (p *replicaProgress) of(i int) Reporter { return replicaReporter{p, i} }

type replicaReporter struct {
	*replicaProgress
	i int
}

func (r replicaReporter) Progress(phase, state, detail string) {
	r.mu.Lock()
	r.states[r.i] = state
	parts := make([]string, 0, len(r.states))
	for j, s := range r.states {
		if s == "" {
			s = "starting"
		}
		parts = append(parts, r.names[j]+" "+s)
	}
	line := strings.Join(parts, "; ")
	r.mu.Unlock()
	r.Reporter.Progress(phase, line, detail)
}

// withLogs adds c's last log lines to a health error of c.
func (d *Deployer) withLogs(ctx context.Context, c Container, err error) error {
	var he *HealthError
	if errors.As(err, &he) && he.Logs == "" {
		he.Logs, _ = d.Runtime.Logs(context.WithoutCancel(ctx), c.ID, DefaultLogLines)
	}
	return err
}

// releaseHealthDetail says which check the health phase waits on.
func (d *Deployer) releaseHealthDetail(svc Service, rel *Release) string {
	detail := d.healthDetail(svc, rel.Containers[0])
	if n := len(rel.Containers); n > 1 {
		detail = fmt.Sprintf("%s, on each of %d replicas", detail, n)
	}
	return detail
}

// switchTo points the proxy at r.next. An error does not say whether the
// change was made (the reply may be lost after Caddy applied it, the read
// back may fail, the user may press Ctrl-C): the proxy is read again, and
// what it points at now decides, never the error.
func (d *Deployer) switchTo(ctx context.Context, r *run) error {
	v, next := r.view, r.next
	to := next.Route()
	err := d.Proxy.SetRoute(ctx, v.route, to)
	if err == nil {
		r.inService = true
		return nil
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	now, rerr := d.Proxy.Route(rctx, v.known(next))
	switch {
	case rerr != nil:
		return fmt.Errorf("%w: %v; reading %s back failed too (%v), so it may point at %s or at %s: both are left running; see `handoff status`, then run `handoff repair`",
			ErrUnclear, err, d.Proxy.Describe(), rerr, v.liveName(), next.Name)
	case !Same(now, to):
		return err // not applied: the proxy still points elsewhere
	}
	d.note(r.rec, fmt.Sprintf("the switch reported an error (%v), but %s points at %s: it took; finishing it", err, d.Proxy.Describe(), endpointList(next.Endpoints())))
	r.inService = true
	if ferr := d.Proxy.SetRoute(rctx, v.route, to); ferr != nil {
		return fmt.Errorf("%w: switched to %s, but could not finish the switch: %v", ErrProxy, endpointList(next.Endpoints()), ferr)
	}
	return ctx.Err() // interrupted: stop here; what is left is the next deploy's to drain
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

// unlessUsed undoes c (abandon) unless a route of the proxy points at it,
// or the proxy cannot say: a container is never stopped or removed under a
// proxy that may send it traffic.
func (d *Deployer) unlessUsed(ctx context.Context, rec *Record, c Container, undo func(context.Context, Container)) {
	if why := d.inUse(ctx, c); why != "" {
		d.note(rec, fmt.Sprintf("%s left running: %s", c.Name, why))
		return
	}
	undo(ctx, c)
}

// inUse says why c must not be stopped or removed, or "".
func (d *Deployer) inUse(ctx context.Context, c Container) string {
	if c.Upstream == "" || d.Proxy == nil {
		return ""
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	routes, err := d.Proxy.PointsAt(ctx, c.Upstream)
	if err != nil {
		return fmt.Sprintf("cannot tell whether %s still points at %s (%v)", d.Proxy.Describe(), c.Upstream, err)
	}
	if len(routes) > 0 {
		return fmt.Sprintf("%s is still the upstream of %s", c.Upstream, strings.Join(routes, "; "))
	}
	return ""
}

// discard removes a new container that will never serve.
func (d *Deployer) discard(ctx context.Context, c Container) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	if err := d.Runtime.Remove(ctx, c.ID); err != nil {
		d.Report.Note(fmt.Sprintf("could not remove %s: %v (remove it with `docker rm -f %s`)", c.Name, err, c.Name))
	}
}

func (d *Deployer) stopQuietly(svc Service) func(context.Context, Container) {
	return func(ctx context.Context, c Container) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout+svc.StopTimeout)
		defer cancel()
		if err := d.Runtime.Stop(ctx, c.ID, svc.StopTimeout); err != nil {
			d.Report.Note(fmt.Sprintf("could not stop %s: %v", c.Name, err))
		}
	}
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
