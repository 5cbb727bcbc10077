package deploy

import (
	"cmp"
	"context"
	"fmt"
	"time"
)

// A canary (issue 18): the new release gets a share of the requests, step
// by step, while the analysis compares what its users get with what the
// live release's users get over the same window. A step that does worse,
// or that cannot be judged in time, puts every request back on the live
// release, which was never stopped; the last step passed, the switch to
// the new release is the blue/green one.

// CanaryRecord is a canary's course as the history keeps it.
type CanaryRecord struct {
	Steps    []string `json:"steps"`              // the plan: "5% 2m"
	Step     int      `json:"step"`               // the step under way or last taken, 1…len(Steps)
	Weight   int      `json:"weight"`             // the new release's share now, percent
	Promoted bool     `json:"promoted,omitempty"` // every step passed (or a person promoted it): the switch follows
	Aborted  bool     `json:"aborted,omitempty"`  // every request went back on the old release
}

// Analysis is one verdict of a canary step or of the watch, with the
// numbers that decided it.
type Analysis struct {
	Phase    string        `json:"phase"`          // PhaseCanary or PhaseWatch
	Step     int           `json:"step,omitempty"` // the canary's step, 1…N
	Weight   int           `json:"weight"`         // the new release's share, percent
	Started  time.Time     `json:"started"`
	Duration time.Duration `json:"duration_ns"`
	Release  Window        `json:"release"`  // the new release's window
	Baseline Window        `json:"baseline"` // the old release's
	Verdict  Verdict       `json:"verdict"`
	Reason   string        `json:"reason"`
	// By is "person" when `handoff canary promote|abort` decided, not the numbers.
	By string `json:"by,omitempty"`
}

// What a person may ask of a running canary.
const (
	AskPromote = "promote"
	AskAbort   = "abort"
)

// CanaryStatus is what `handoff canary status` shows of a running canary.
type CanaryStatus struct {
	Service  string    `json:"service"`
	PID      int       `json:"pid"`
	Phase    string    `json:"phase"` // PhaseCanary or PhaseWatch
	Old      string    `json:"old"`
	New      string    `json:"new"`
	Step     int       `json:"step,omitempty"`
	Steps    int       `json:"steps,omitempty"`
	Weight   int       `json:"weight"`
	Started  time.Time `json:"started"` // of the step, or of the watch
	Ends     time.Time `json:"ends"`    // when the step is judged, if its numbers suffice
	Release  Window    `json:"release"`
	Baseline Window    `json:"baseline"`
	Verdict  Verdict   `json:"verdict"`
	Reason   string    `json:"reason"`
	Updated  time.Time `json:"updated"`
}

// DefaultCanarySteps are the steps of `--canary` when handoff.yml names none.
var DefaultCanarySteps = []CanaryStep{{5, 2 * time.Minute}, {25, 3 * time.Minute}, {50, 3 * time.Minute}}

// analysisPoll is how often the proxy's counts are read while a step or
// the watch runs; maxFailedReads readings failing in a row end it.
const (
	analysisPoll   = time.Second
	maxFailedReads = 5
)

// checkSteps refuses a canary whose steps cannot run: each a weight
// between 1 and 99 percent, each above the one before, each held a while.
func checkSteps(steps []CanaryStep) error {
	last := 0
	for i, s := range steps {
		switch {
		case s.Weight < 1 || s.Weight > 99:
			return fmt.Errorf("%w: canary step %d (%s): a weight is 1%% to 99%% (100%% is the switch that follows the last step)", ErrConfig, i+1, s)
		case s.Weight <= last:
			return fmt.Errorf("%w: canary step %d (%s): each step sends more than the one before (%d%%)", ErrConfig, i+1, s, last)
		case s.Hold <= 0:
			return fmt.Errorf("%w: canary step %d (%s): a step is held for a time, like \"5%% 2m\"", ErrConfig, i+1, s)
		}
		last = s.Weight
	}
	if len(steps) > 20 {
		return fmt.Errorf("%w: a canary of %d steps: at most 20", ErrConfig, len(steps))
	}
	return nil
}

// judged says whether the run compares releases by numbers (a deploy with
// a canary or a watch), and refuses it when the proxy cannot count.
func (d *Deployer) judged(r *run) (bool, error) {
	svc := r.svc
	if r.kind != KindDeploy || len(svc.Canary) == 0 && svc.Watch == 0 {
		return false, nil
	}
	what := "watch:"
	if len(svc.Canary) > 0 {
		what = "strategy: canary"
	}
	if d.Proxy == nil {
		return false, fmt.Errorf("%w: %s compares releases behind a proxy; %s has no route", ErrConfig, what, svc.Name)
	}
	c, ok := d.Proxy.(Counter)
	switch {
	case !ok:
		return false, fmt.Errorf("%w: %s judges a release by the requests the proxy saw it answer, and %s does not count them per release: put `handoff proxy` in front (proxy: handoff), or remove %s", ErrConfig, what, d.Proxy.Describe(), what)
	case len(svc.Canary) > 0 && !c.PerEndpoint():
		return false, fmt.Errorf("%w: strategy: canary compares two releases serving side by side, and %s counts the route's requests only as a whole, not per release (a watch: after the switch works with it): put `handoff proxy` in front (proxy: handoff)", ErrConfig, d.Proxy.Describe())
	}
	return true, nil
}

// canary runs the canary's steps. nil: every step passed (or a person
// promoted it) and the switch follows; an error: every request is back on
// the live release and next is removed (ErrRolledBack when the numbers or
// a person decided).
func (d *Deployer) canary(ctx context.Context, r *run) error {
	svc, view, next := r.svc, r.view, r.next
	old := view.route
	d.asked(svc.Name) // an ask left from before this canary began is not for it
	r.rec.Canary = &CanaryRecord{}
	for _, s := range svc.Canary {
		r.rec.Canary.Steps = append(r.rec.Canary.Steps, s.String())
	}
	for i, s := range svc.Canary {
		r.rec.Canary.Step, r.rec.Canary.Weight = i+1, s.Weight
		if err := d.save(r); err != nil {
			// Recorded before it acts: a kill must leave a record that
			// says which split to undo.
			return d.abortCanary(ctx, r, fmt.Errorf("record canary step %d before acting: %w", i+1, err), false)
		}
		split := canaryRoute(old, next, s.Weight)
		if err := d.routeTo(ctx, r, r.current(), split, r.current().String(), next.Name+" at "+s.String()); err != nil {
			return d.abortCanary(ctx, r, fmt.Errorf("canary step %d (%s): %w", i+1, s, err), false)
		}
		d.Report.Progress(PhaseCanary, fmt.Sprintf("step %d of %d: %s gets %d%% of new requests", i+1, len(svc.Canary), next.Name, s.Weight), "")
		a, err := d.observe(ctx, r, observation{phase: PhaseCanary, step: i + 1, steps: len(svc.Canary), weight: s.Weight, hold: s.Hold, release: next, baseline: view.live})
		r.rec.Analysis = append(r.rec.Analysis, a)
		if err != nil {
			return d.abortCanary(ctx, r, fmt.Errorf("canary step %d (%s): %w", i+1, s, err), false)
		}
		d.note(r.rec, fmt.Sprintf("canary step %d of %d (%s): %s", i+1, len(svc.Canary), s, a.said()))
		switch {
		case a.By != "" && a.Verdict == VerdictPass:
			r.rec.Canary.Promoted = true
			return nil
		case a.Verdict == VerdictPass:
			continue
		case a.Verdict == VerdictWait:
			return d.abortCanary(ctx, r, fmt.Errorf("canary step %d (%s) of %s could not be judged: %s (lower analysis.min_requests, or send it more traffic with a higher weight)", i+1, s, next.Name, a.Reason), true)
		default:
			return d.abortCanary(ctx, r, fmt.Errorf("canary step %d (%s) of %s: %s", i+1, s, next.Name, a.said()), true)
		}
	}
	r.rec.Canary.Promoted = true
	return nil
}

// canaryRoute is old's route with next beside it at weight percent. The
// new release comes last: handoff proxy's sticky split gives a later
// release the top buckets, so that a client it got at 5% stays with it
// at 25% and 50%.
func canaryRoute(old Route, next *Release, weight int) Route {
	split := make(Route, 0, len(old)+1)
	for _, b := range old {
		if b.Weight > 0 {
			b.Weight = 100 - weight
			split = append(split, b)
		}
	}
	return append(split, Backend{Release: next.Name, Endpoints: next.Endpoints(), Weight: weight})
}

// abortCanary puts every request back on the live release (never
// stopped) and removes the canary. why is what decided it: the analysis or
// a person (byAnalysis: the error is ErrRolledBack, exit 9), or a failure
// (the error wraps it). When the route cannot be changed back, the error
// is the proxy's (exit 5: nothing was rolled back) and the canary is left
// running for `handoff repair`, which finds the split by this record.
func (d *Deployer) abortCanary(ctx context.Context, r *run, why error, byAnalysis bool) error {
	view, next := r.view, r.next
	r.rec.Canary.Aborted, r.rec.Canary.Promoted = true, false
	if err := d.takeBack(ctx, r, r.current().String()); err != nil {
		return fmt.Errorf("%v; putting every request back on %s failed: %w; %s is left running: run `handoff repair %s`", why, view.liveName(), err, next.Name, r.svc.Name)
	}
	if byAnalysis {
		return fmt.Errorf("%w: %v; every request is back on %s (never stopped); %s removed", ErrRolledBack, why, view.liveName(), next.Name)
	}
	return fmt.Errorf("%w; every request is back on %s (never stopped); %s removed", why, view.liveName(), next.Name)
}

// takeBack puts every request back on the live release, which was never
// stopped, drains next and removes it: the end of an aborted canary and of
// a failed watch. what names the route it leaves, for messages. The route
// is read first: a change before this one whose outcome was unclear may
// have taken, and the proxy refuses a change from a route it no longer has.
func (d *Deployer) takeBack(ctx context.Context, r *run, what string) error {
	view, next := r.view, r.next
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	from := r.current()
	if now, err := d.Proxy.Route(cctx, view.known(next)); err == nil && (splitBetween(now, view.live, next) || Same(now, next.Route())) {
		from = now
	}
	if err := d.routeTo(cctx, r, from, view.route, what, "every request on "+view.liveName()); err != nil {
		return err
	}
	r.inService = false
	if err := d.save(r); err != nil {
		d.note(r.rec, fmt.Sprintf("could not record that every request is on %s again (%v)", view.liveName(), err))
	}
	d.note(r.rec, fmt.Sprintf("every request is on %s again", view.liveName()))
	if err := d.drain(cctx, r.svc, r.rec, next.Endpoints()); err != nil {
		d.note(r.rec, fmt.Sprintf("draining %s: %v", next.Name, err))
	}
	for _, c := range next.Containers {
		d.unlessUsed(cctx, r.rec, c, d.discard)
	}
	return nil
}

// said is the verdict for a note: what decided it, and its numbers.
func (a Analysis) said() string {
	if a.By != "" {
		return fmt.Sprintf("%s by a person (%s)", map[Verdict]string{VerdictPass: "promoted", VerdictFail: "aborted"}[a.Verdict], a.Reason)
	}
	return fmt.Sprintf("%s: %s", a.Verdict, a.Reason)
}

// observation is a stretch of time the analysis judges: a canary step, or
// the watch after a switch.
type observation struct {
	phase       string // PhaseCanary or PhaseWatch
	step, steps int    // the canary's; 0 for the watch
	weight      int    // the new release's share, percent
	hold        time.Duration
	release     *Release // judged
	baseline    *Release // judged against over the same window; nil: fixed
	fixed       Window   // the baseline when it is not over the same window (the watch's, before the switch)
}

// observe reads the proxy's counts every analysisPoll for o.hold and
// judges the window since o began: a failure ends it at once, a pass only
// at the end of the hold; too few requests wait up to MaxWait more, then
// end it undecided. A person's promote or abort ends it too.
func (d *Deployer) observe(ctx context.Context, r *run, o observation) (Analysis, error) {
	svc := r.svc
	th := svc.Analysis.WithDefaults()
	counter := d.Proxy.(Counter)
	a := Analysis{Phase: o.phase, Step: o.step, Weight: o.weight, Started: d.now(), Verdict: VerdictWait, Reason: "no reading yet"}
	before, err := counter.Counts(ctx)
	if err != nil {
		return a, fmt.Errorf("read the counts of %s: %w", d.Proxy.Describe(), err)
	}
	limit := o.hold + cmp.Or(th.MaxWait, o.hold) // MaxWait 0: as long again as the step
	waitNoted, failedReads := false, 0
	d.show(svc.Name, d.status(r, o, a))
	for {
		select {
		case <-ctx.Done():
			return a, ctx.Err()
		case <-d.after(analysisPoll):
		}
		now, err := counter.Counts(ctx)
		if err != nil {
			// One reading lost (a proxy restarting) is not a verdict: a few
			// in a row are, and the caller takes the release back.
			if failedReads++; failedReads < maxFailedReads {
				continue
			}
			return a, fmt.Errorf("read the counts of %s, %d times in a row: %w", d.Proxy.Describe(), failedReads, err)
		}
		failedReads = 0
		a.Release = now.Since(before, o.release.Endpoints())
		a.Baseline = o.fixed
		if o.baseline != nil {
			a.Baseline = now.Since(before, o.baseline.Endpoints())
		}
		a.Duration = d.now().Sub(a.Started)
		j := Judge(a.Baseline, a.Release, th)
		if a.Duration < o.hold {
			j = JudgeEarly(a.Baseline, a.Release, th) // read every second: fail only beyond doubt
		}
		a.Verdict, a.Reason = j.Verdict, j.Reason
		state, detail := d.progress(r, o, a)
		d.Report.Progress(o.phase, state, detail)
		d.show(svc.Name, d.status(r, o, a))
		if by, err := d.asked(svc.Name); err != nil {
			d.note(r.rec, fmt.Sprintf("could not read what `handoff canary` asked: %v", err))
		} else if by != "" {
			a.By = "person"
			a.Verdict, a.Reason = VerdictPass, "`handoff canary promote` at "+j.Reason
			if by == AskAbort {
				a.Verdict, a.Reason = VerdictFail, "`handoff canary abort` at "+j.Reason
			}
			return a, nil
		}
		switch {
		case j.Verdict == VerdictFail:
			return a, nil
		case a.Duration < o.hold:
		case j.Verdict == VerdictPass:
			return a, nil
		case a.Duration >= limit:
			return a, nil
		case !waitNoted:
			waitNoted = true
			d.note(r.rec, fmt.Sprintf("%s: %s after %s; waiting up to %s more (`handoff canary promote %s` decides without them)",
				o.what(), j.Reason, o.hold, limit-o.hold, svc.Name))
		}
	}
}

// what names the stretch for messages.
func (o observation) what() string {
	if o.phase == PhaseWatch {
		return "the watch of " + o.release.Name
	}
	return fmt.Sprintf("canary step %d of %d (%d%%)", o.step, o.steps, o.weight)
}

// progress is what a step or the watch waits for: state, which changes
// when the verdict so far does (a log gets a line then), and both
// releases' numbers with the time left, rewritten every second on a
// terminal.
func (d *Deployer) progress(r *run, o observation, a Analysis) (state, detail string) {
	state = "the watch of " + o.release.Name
	if o.phase == PhaseCanary {
		state = fmt.Sprintf("step %d of %d, %d%%", o.step, o.steps, o.weight)
	}
	switch a.Verdict {
	case VerdictWait:
		state += ": too few requests yet"
	default:
		state += ": as good as the old release so far"
	}
	old := "the old release"
	if r.view.live != nil {
		old = r.view.live.Name
	}
	if o.baseline == nil {
		old += " before"
	}
	detail = fmt.Sprintf("%s %s | %s %s · %s left", o.release.Name, a.Release.short(), old, a.Baseline.short(), max(o.hold-a.Duration, 0).Round(time.Second))
	return state, detail
}

// status is the canary's state for `handoff canary status`.
func (d *Deployer) status(r *run, o observation, a Analysis) *CanaryStatus {
	st := &CanaryStatus{Service: r.svc.Name, PID: d.pid(), Phase: o.phase, New: o.release.Name, Step: o.step, Steps: o.steps,
		Weight: o.weight, Started: a.Started, Ends: a.Started.Add(o.hold), Release: a.Release, Baseline: a.Baseline,
		Verdict: a.Verdict, Reason: a.Reason, Updated: d.now()}
	if r.view.live != nil {
		st.Old = r.view.live.Name
	}
	return st
}

// asked is what a person asked of the canary, if the run can be steered.
func (d *Deployer) asked(service string) (string, error) {
	if d.Steering == nil {
		return "", nil
	}
	return d.Steering.Asked(service)
}

// show publishes the canary's state, if the run can be steered; a failure
// to is noted nowhere: the canary goes on without its status file.
func (d *Deployer) show(service string, st *CanaryStatus) {
	if d.Steering != nil {
		_ = d.Steering.Show(service, st)
	}
}

// canaryLeft is a canary whose split the route still serves: one under
// way in another handoff, or one a kill left (its record says running).
type canaryLeft struct {
	rec       int // into the view's history
	old, next *Release
	// watch: not a split but a watch a kill interrupted: next serves
	// every request, undecided, and old still runs to switch back to.
	watch bool
}

// canaryOf finds the canary whose releases route splits between: the
// newest record of a canary, if route sends to its two releases and
// nothing else. Its outcome does not matter: a canary whose abort could
// not change the route back failed with the split still in place.
func (v *view) canaryOf(route Route) *canaryLeft {
	for i, h := range v.history {
		if h.Canary == nil {
			continue
		}
		old, next := v.release(h.FromRelease), v.release(h.ToRelease)
		if h.FromRelease == 0 {
			old = v.adopted
		}
		if old == nil || next == nil || !splitBetween(route, old, next) {
			return nil
		}
		return &canaryLeft{rec: i, old: old, next: next}
	}
	return nil
}

// watchLeft finds a watch a kill interrupted: the newest record is running
// in its watch, the route serves its new release, and the old one still
// runs. It is undone as an unpromoted canary is: the watch never passed.
func (v *view) watchLeft() {
	if len(v.history) == 0 || v.live == nil {
		return
	}
	h := v.history[0]
	if h.Outcome != OutcomeRunning || h.Phase != PhaseWatch || h.ToRelease != v.live.Number {
		return
	}
	old := v.release(h.FromRelease)
	if h.FromRelease == 0 {
		old = v.adopted
	}
	if old == nil || !old.Running() {
		return
	}
	v.canary = &canaryLeft{rec: 0, old: old, next: v.live, watch: true}
	v.live = old
}

// splitBetween says whether every endpoint of route is a or b's, and each
// of them has one.
func splitBetween(route Route, a, b *Release) bool {
	hasA, hasB := false, false
	for _, e := range route.Endpoints() {
		inA, inB := a.Route().Has(e), b.Route().Has(e)
		if !inA && !inB {
			return false
		}
		hasA, hasB = hasA || inA, hasB || inB
	}
	return hasA && hasB
}

// endCanary finishes a canary a kill left: every request back on the old
// release, or, when it had been promoted, on the new one; the other
// release is then a leftover as any other. The record says what was done.
func (d *Deployer) endCanary(ctx context.Context, r *run) error {
	v := r.view
	c := v.canary
	h := &v.history[c.rec]
	to, what := Only(c.old.Name, c.old.Endpoints()...), fmt.Sprintf("every request is on %s again", c.old.Name)
	if c.watch {
		if err := d.routeTo(ctx, r, v.route, to, c.next.Name, what); err != nil {
			return fmt.Errorf("undo the interrupted watch of %s: %w", c.next.Name, err)
		}
		v.route, r.route, v.canary = to, nil, nil
		h.Switched = false // switched back: not a release that served
		d.note(r.rec, fmt.Sprintf("the watch of %s (%s) was interrupted before it passed: %s", c.next.Name, h.ID, what))
		return nil
	}
	if h.Canary.Promoted {
		to, what = Only(c.next.Name, c.next.Endpoints()...), fmt.Sprintf("it had been promoted: every request is on %s", c.next.Name)
	}
	if err := d.routeTo(ctx, r, v.route, to, "the canary's split", what); err != nil {
		return fmt.Errorf("end the interrupted canary of %s: %w", c.next.Name, err)
	}
	v.route, r.route, v.canary = to, nil, nil
	if !h.Canary.Promoted {
		h.Canary.Aborted = true
	}
	how := "was interrupted"
	if h.Outcome != OutcomeRunning {
		how = "ended with its split still in place" // its abort could not change the route
	}
	d.note(r.rec, fmt.Sprintf("the canary of %s (%s) %s at step %d (%d%%): %s", c.next.Name, h.ID, how, h.Canary.Step, h.Canary.Weight, what))
	return nil
}
