package deploy

import (
	"context"
	"fmt"
	"net"
	"slices"
)

// view is what exists before a procedure acts: the service's containers,
// what the proxy points at, and which release that is.
type view struct {
	containers []Container // the service's, newest first
	route      Route       // the route as the proxy serves it
	live       *Release    // the running release the route sends to; nil if none found
	// expected is, when no release serves the route, the release the
	// history last put in service, as it is now: stopped, or listening
	// elsewhere (a release made before handoff pinned host ports).
	expected *Release
	adopted  *Release // the release adopted on the first deploy, if it still exists
	history  []Record
	canary   *canaryLeft // the route is a canary's split: under way, or interrupted
}

// endpoints lists where the route sends now, weight 0 included.
func (v *view) endpoints() []string { return v.route.Endpoints() }

// routed says whether the proxy has a route for the service.
func (v *view) routed() bool { return len(v.endpoints()) > 0 }

// at names where the route sends, for messages.
func (v *view) at() string { return endpointList(v.endpoints()) }

// survey reads Docker, the history and the proxy without changing
// anything: it gives the run its view, notes what it found, and says what
// an interrupted procedure left (recoverInterrupted finishes it).
func (d *Deployer) survey(ctx context.Context, r *run) (leftovers, error) {
	svc, rec := r.svc, r.rec
	v, err := d.readView(ctx, svc)
	if err != nil {
		return leftovers{}, err
	}
	r.view = v
	switch {
	case d.Proxy == nil && v.live == nil:
		d.note(rec, fmt.Sprintf("first deploy of %s: nothing of it runs yet", svc.Name))
	case d.Proxy == nil:
		setFrom(rec, v.live)
		if v.live.Adopted() {
			d.note(rec, fmt.Sprintf("adopting %s as the current release", v.live.Name))
		}
	case !v.routed() && v.expected != nil:
		d.note(rec, d.routeLost(svc, v))
	case !v.routed() && v.live != nil:
		setFrom(rec, v.live)
		runs := "which runs already; it is"
		if len(v.live.Containers) > 1 {
			runs = "which run already; they are"
		}
		d.note(rec, fmt.Sprintf("first deploy through %s: adopting %s, %s retired once the new release serves", d.Proxy.Describe(), v.live.Name, runs))
	case !v.routed():
		d.note(rec, fmt.Sprintf("first deploy through %s: nothing serves yet", d.Proxy.Describe()))
	case v.live == nil && v.expected != nil:
		d.note(rec, fmt.Sprintf("%s points at %s, where no container answers; %s, the release in service, %s", d.Proxy.Describe(), v.at(), v.expected.Name, v.expected.whereNow()))
	case v.live == nil:
		d.note(rec, fmt.Sprintf("no container found serving %s; it will be replaced but not stopped", v.at()))
	default:
		setFrom(rec, v.live)
		if v.live.Adopted() {
			d.note(rec, fmt.Sprintf("adopting %s (serving %s) as the current release", v.live.Name, v.at()))
		}
	}
	return d.leftBehind(ctx, v), nil
}

// readView gathers the view without changing anything; status uses it too.
func (d *Deployer) readView(ctx context.Context, svc Service) (*view, error) {
	v, err := d.readRoute(ctx, svc)
	if err == nil && v.canary == nil {
		v.watchLeft()
	}
	return v, err
}

// readRoute finds the live release by what the proxy serves.
func (d *Deployer) readRoute(ctx context.Context, svc Service) (*view, error) {
	releases, err := d.Runtime.Releases(ctx, svc.Name)
	if err != nil {
		return nil, err
	}
	history, err := d.History.List(svc.Name)
	if err != nil {
		return nil, err
	}
	v := &view{containers: releases, history: history}
	if d.Proxy == nil {
		return v, d.liveUnrouted(ctx, svc, v)
	}
	// A release adopted on the first deploy carries no labels: only the
	// history knows it, and where it listens now (a rollback to it may have
	// brought it back on another port) is one of the route's upstreams.
	v.adopted = d.adopted(ctx, v)
	route, err := d.Proxy.Route(ctx, v.known(nil))
	if err != nil {
		return nil, err
	}
	v.route = route
	if len(route) > 1 {
		// A route of several releases is a canary's, under way or
		// interrupted (its record says which releases), or a hand-made one.
		if v.canary = v.canaryOf(route); v.canary == nil {
			return nil, fmt.Errorf("%w: the route of %s sends to %d releases (%s), and no canary of handoff's made it; handoff switches a route that sends to one release: set it to one", ErrNoRoute, d.Proxy.Describe(), len(route), route)
		}
		v.live = v.canary.old
		if v.history[v.canary.rec].Canary.Promoted {
			v.live = v.canary.next
		}
		return v, nil
	}
	for _, rel := range v.groups() {
		// A release of several serves while one of them runs: one that
		// crashed and is restarting is still the live release's.
		if rel.anyRunning() && rel.Serves(route) {
			v.live = &rel
			return v, nil
		}
	}
	for _, rel := range v.groups() {
		// One whose containers were removed in part (docker rm -f web-4-2)
		// still serves on what is left of it.
		if rel.anyRunning() && len(rel.Endpoints()) > 0 && !rel.Adopted() && servesPartOf(&rel, route) {
			v.live = &rel
			return v, nil
		}
	}
	if !v.routed() {
		// A release the history put in service means the proxy forgot the
		// route (handoff proxy could not restore it, or its state file was
		// moved aside), not a first deploy: that release stays.
		if v.expected = v.lastSwitched(); v.expected != nil {
			return v, nil
		}
		// Nothing routed yet (a first deploy through handoff proxy): the
		// containers compose started are still taken over, and retired.
		return v, d.adoptByLabels(ctx, svc, v)
	}
	v.live, err = d.serving(ctx, v.endpoints())
	if err != nil {
		return v, err
	}
	if v.live != nil {
		// A route to a name several containers answer to (compose's
		// service name, `reverse_proxy web:8000`) reaches one of them: the
		// others of its service are the same release.
		return v, d.adoptTheRestByLabels(ctx, svc, v)
	}
	v.expected = v.lastSwitched()
	return v, nil
}

// servesPartOf says whether every endpoint of rel is one of the route's
// (whose others reach no container any more).
func servesPartOf(rel *Release, route Route) bool {
	for _, e := range rel.Endpoints() {
		if !route.Has(e) {
			return false
		}
	}
	return true
}

// groups is the view's containers by release, newest first.
func (v *view) groups() []Release { return groupReleases(v.containers) }

// release is release number n as the view has it; nil if none of its
// containers exists.
func (v *view) release(n int) *Release {
	for _, rel := range v.groups() {
		if rel.Number == n {
			return &rel
		}
	}
	return nil
}

// liveUnrouted finds the live release of a service no proxy routes to:
// the newest one running, or on a first deploy the one to adopt.
func (d *Deployer) liveUnrouted(ctx context.Context, svc Service, v *view) error {
	// The release the history put in service, while it runs: a newer one
	// running beside it was left by an interrupted deploy, never in service.
	if last := v.lastSwitched(); last != nil && last.anyRunning() {
		v.live = last
		return nil
	}
	for _, rel := range v.groups() {
		if rel.anyRunning() {
			v.live = &rel
			return nil
		}
	}
	if v.expected = v.lastSwitched(); v.expected != nil {
		return nil
	}
	return d.adoptByLabels(ctx, svc, v)
}

// known lists the upstreams of the service's containers (and of extra,
// when there is one): after the first deploy the route points at them.
func (v *view) known(extra *Release) []string {
	var out []string
	all := slices.Clone(v.containers)
	if extra != nil {
		all = append(all, extra.Containers...)
	}
	if v.adopted != nil {
		all = append(all, v.adopted.Containers...)
	}
	for _, c := range all {
		if c.Upstream != "" {
			out = append(out, c.Upstream)
		}
	}
	return out
}

// lastSwitched is the release the newest switch put in service, if its
// containers still exist (a rollback may have put the adopted one back).
func (v *view) lastSwitched() *Release {
	for _, r := range v.history {
		if !r.Switched {
			continue
		}
		if r.ToRelease != 0 {
			return v.release(r.ToRelease)
		}
		if v.adopted != nil && v.adopted.Name == r.To {
			return v.adopted
		}
		return nil
	}
	return nil
}

// routeLost says that the proxy has no route for the service while the
// history has a release in service, and what to run.
func (d *Deployer) routeLost(svc Service, v *view) string {
	c := v.expected
	now, fix := "runs on "+endpointList(c.Endpoints()), "to point the proxy at it again"
	if !c.Running() {
		now, fix = "is not running", "to start it and point the proxy at it again"
	}
	return fmt.Sprintf("%s has no route for %s, while %s, the release in service, %s; run `handoff repair %s` %s", d.describe(), svc.Name, c.Name, now, svc.Name, fix)
}

// whereNow says how a release the proxy lost track of is now.
func (r *Release) whereNow() string {
	if !r.Running() {
		return "is not running"
	}
	return "now listens on " + endpointList(r.Endpoints())
}

// setFrom records the release being replaced, and the image it runs.
func setFrom(rec *Record, r *Release) {
	rec.FromRelease, rec.From, rec.FromContainers = r.Number, r.Name, r.several()
	rec.FromImage, rec.FromImageID = r.Image()
}

// setTo records the release being put in service.
func setTo(rec *Record, r *Release) {
	rec.ToRelease, rec.To, rec.ToContainers = r.Number, r.Name, r.several()
	rec.Image, rec.ImageID = r.Image()
}

// adoptExpected makes the release in service the live one when the proxy
// lost track of it (it stopped, or came back on another port): a deploy or
// rollback then replaces it as it would the live release.
func (v *view) adoptExpected(rec *Record) {
	if v.live == nil && v.expected != nil && v.expected.Running() {
		v.live = v.expected
		setFrom(rec, v.live)
	}
}

// createdByInterrupted says whether c is the new container of a deploy
// that was interrupted before its switch (a deploy that fails removes its
// container itself; a killed one cannot).
func (v *view) createdByInterrupted(c Container) bool {
	for _, r := range v.history {
		if r.Kind == KindDeploy && r.ToRelease == c.Release && !r.Switched &&
			(r.Outcome == OutcomeInterrupted || r.Outcome == OutcomeRunning) {
			return true
		}
	}
	return false
}

// rollbackRecord is what a rollback to release to (0: the one before the
// live one) runs again, as the history has it: the newest release that
// served, its image, and the image's ID. A container adopted on the first
// deploy counts, as release 0.
func (v *view) rollbackRecord(to int) *Record {
	live := -1
	if v.live != nil {
		live = v.live.Number
	}
	for i := range v.history {
		r := v.history[i]
		sides := []Record{}
		if r.Switched {
			sides = append(sides, Record{ToRelease: r.ToRelease, Image: r.Image, ImageID: r.ImageID, Digest: r.Digest})
		}
		if r.From != "" {
			sides = append(sides, Record{ToRelease: r.FromRelease, Image: r.FromImage, ImageID: r.FromImageID})
		}
		for _, s := range sides {
			if s.ImageID == "" {
				continue
			}
			if to != 0 && s.ToRelease == to || to == 0 && s.ToRelease != live && (live < 0 || s.ToRelease < live) {
				s.Digest = v.digestOf(s.ImageID, s.Digest)
				return &s
			}
		}
	}
	return nil
}

// digestOf is the registry digest some record gives image id, or known.
func (v *view) digestOf(id, known string) string {
	for _, r := range v.history {
		if known == "" && r.ImageID == id {
			known = r.Digest
		}
	}
	return known
}

// neverServed says whether no record shows c's release switched into service.
func (v *view) neverServed(c Container) bool {
	for _, r := range v.history {
		if r.ToRelease == c.Release && r.Switched {
			return false
		}
	}
	return true
}

// nextRelease is one more than any release that ever existed, so that a
// name is never reused (Caddy reuses pooled connections by address), and
// past the name of a container handoff adopted (compose's web-1).
func (v *view) nextRelease(svc Service) int {
	n := 0
	for _, c := range v.containers {
		n = max(n, c.Release)
	}
	for _, r := range v.history {
		n = max(n, r.ToRelease)
	}
	taken := map[string]bool{}
	for _, c := range v.containers {
		taken[c.Name] = true
	}
	for _, r := range []*Release{v.live, v.adopted, v.expected} {
		if r == nil {
			continue
		}
		for _, c := range r.Containers {
			taken[c.Name] = true
		}
	}
	for n++; slices.ContainsFunc(svc.ReplicaNumbers(), func(i int) bool { return taken[svc.ContainerName(n, i)] }); n++ {
	}
	return n
}

func (v *view) liveName() string {
	if v.live == nil {
		return "the current upstream " + v.at()
	}
	return v.live.Name
}

// rollbackTarget picks the release to go back to: the given one, or the
// newest kept release older than the live one (an adopted one counts).
func (d *Deployer) rollbackTarget(svc Service, v *view, to int) (*Release, error) {
	candidates := v.groups()
	if v.adopted != nil {
		candidates = append(candidates, *v.adopted)
	}
	liveRelease := -1
	if v.live != nil {
		liveRelease = v.live.Number
	}
	for _, rel := range candidates {
		if v.live != nil && v.live.Has(rel.Containers[0]) {
			continue
		}
		if to != 0 && rel.Number == to {
			return &rel, nil
		}
		if to == 0 && (liveRelease < 0 || rel.Number < liveRelease) {
			return &rel, nil
		}
	}
	if to != 0 {
		return nil, fmt.Errorf("%w: release %d of %s is not kept (see `handoff history`)", ErrNothingToRoll, to, svc.Name)
	}
	return nil, fmt.Errorf("%w: %s has no kept release older than %s", ErrNothingToRoll, svc.Name, v.liveName())
}

// SameUpstream says whether two dial addresses reach the same place:
// "localhost:8000", "127.0.0.1:8000" and "[::1]:8000" are one.
func SameUpstream(a, b string) bool {
	if a == b {
		return true
	}
	ha, pa, err1 := net.SplitHostPort(a)
	hb, pb, err2 := net.SplitHostPort(b)
	if err1 != nil || err2 != nil || pa != pb {
		return false
	}
	return isLoopback(ha) && isLoopback(hb)
}

func isLoopback(host string) bool {
	if host == "localhost" || host == "" || host == "0.0.0.0" || host == "::" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
