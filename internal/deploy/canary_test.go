package deploy

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// canaryRig is a rig whose proxy counts, and whose clock passes only as
// the procedure waits on it: a canary of minutes runs in no time.
func canaryRig(t *testing.T) (*rig, *countingProxy, *fakeClock) {
	t.Helper()
	r := newRig(t)
	p := &countingProxy{fakeProxy: r.proxy, perRead: 400, errRate: map[string]float64{}, p99: map[string]time.Duration{}}
	clock := newFakeClock()
	r.d.Proxy, r.d.Now, r.d.After = p, clock.Now, clock.After
	return r, p, clock
}

func canaryService() Service {
	svc := testService()
	svc.Canary = []CanaryStep{{10, time.Minute}, {50, time.Minute}}
	return svc
}

// A good release goes through every step, each judged a pass, and is then
// switched to as blue/green does; the old release is retired only then.
func TestAGoodCanaryIsPromotedStepByStep(t *testing.T) {
	r, p, clock := canaryRig(t)
	rec, err := r.d.Deploy(context.Background(), canaryService())
	require.NoError(t, err)
	require.Equal(t, []string{
		"127.0.0.1:30001 → 127.0.0.1:30001,127.0.0.1:40001",
		"127.0.0.1:30001,127.0.0.1:40001 → 127.0.0.1:30001,127.0.0.1:40001",
		"127.0.0.1:30001,127.0.0.1:40001 → 127.0.0.1:40001",
	}, p.switches)
	require.Equal(t, []string{"run web-2", "stop web-1"}, r.rt.calls)
	require.Len(t, rec.Analysis, 2)
	for i, a := range rec.Analysis {
		require.Equal(t, VerdictPass, a.Verdict, a.Reason)
		require.Equal(t, []int{10, 50}[i], a.Weight)
		require.Equal(t, time.Minute, a.Duration)
	}
	require.Equal(t, 2400, rec.Analysis[0].Release.Requests, "40 of 400 a second for a minute")
	require.True(t, rec.Canary.Promoted)
	require.Equal(t, 2*time.Minute, clock.waited)
	require.Equal(t, []string{"image", "start", "health", "canary", "switch", "drain", "retire"}, phaseNames(rec))
}

func phaseNames(rec *Record) []string {
	var out []string
	for _, p := range rec.Phases {
		out = append(out, p.Name)
	}
	return out
}

// A release that fails 5% of its requests is aborted in its first step,
// as soon as it has answered enough to tell: every request goes back on
// the old release, never stopped, and the canary is removed.
func TestACanaryThatFailsRequestsIsAbortedAtOnce(t *testing.T) {
	r, p, clock := canaryRig(t)
	p.errRate["127.0.0.1:40001"] = 0.05
	rec, err := r.d.Deploy(context.Background(), canaryService())
	require.ErrorIs(t, err, ErrRolledBack)
	require.ErrorContains(t, err, "canary step 1 (10% 1m0s) of web-2: fail: error rate 5.00% (")
	require.ErrorContains(t, err, "every request is back on web-1 (never stopped); web-2 removed")
	require.Equal(t, "127.0.0.1:30001", p.at())
	require.Equal(t, []string{"run web-2", "remove web-2"}, r.rt.calls)
	require.True(t, r.rt.find("web-1").Running)
	require.Less(t, clock.waited, 10*time.Second, "decided once 100 requests were in, not at the end of the step")
	require.True(t, rec.Canary.Aborted)
	require.Equal(t, VerdictFail, rec.Analysis[0].Verdict)
	require.False(t, rec.Switched)
	require.Equal(t, OutcomeFailed, rec.Outcome)
}

// A release whose p99 doubles is aborted too, once the step has enough
// requests, with the two p99s in the reason.
func TestACanaryTwiceAsSlowIsAborted(t *testing.T) {
	r, p, _ := canaryRig(t)
	p.p99["127.0.0.1:40001"] = 40 * time.Millisecond
	_, err := r.d.Deploy(context.Background(), canaryService())
	require.ErrorIs(t, err, ErrRolledBack)
	require.ErrorContains(t, err, "p99 40ms against 20ms for the baseline: more than 1.5x")
	require.Equal(t, "127.0.0.1:30001", p.at())
}

// A step with too few requests waits past its time, says so, and is
// never passed on no data: it ends undecided and the canary is aborted.
func TestAStepWithTooFewRequestsWaitsThenAborts(t *testing.T) {
	r, p, clock := canaryRig(t)
	p.perRead = 10 // 1 a second for the canary at 10%: 30 in its 30 seconds
	svc := canaryService()
	svc.Canary[0].Hold = 30 * time.Second
	_, err := r.d.Deploy(context.Background(), svc)
	require.ErrorIs(t, err, ErrRolledBack)
	require.ErrorContains(t, err, "could not be judged: 60 of the 100 requests needed")
	require.Contains(t, r.report.notes, "canary step 1 of 2 (10%): 30 of the 100 requests needed to judge the release have been answered after 30s; waiting up to 30s more (`handoff canary promote web` decides without them)")
	require.Equal(t, time.Minute, clock.waited)
	require.Equal(t, "127.0.0.1:30001", p.at())
}

// A person's promote ends the step at once and skips the rest: the switch
// follows; an abort puts every request back on the old release.
func TestAPersonPromotesOrAbortsACanary(t *testing.T) {
	r, p, _ := canaryRig(t)
	s := &fakeSteering{asks: map[int]string{3: AskPromote}}
	r.d.Steering = s
	rec, err := r.d.Deploy(context.Background(), canaryService())
	require.NoError(t, err)
	require.Len(t, rec.Analysis, 1)
	require.Equal(t, "person", rec.Analysis[0].By)
	require.Equal(t, "127.0.0.1:40001", p.at(), "switched without the second step")
	require.Nil(t, s.shown[len(s.shown)-1], "the status is taken down when the step ends")
	require.Equal(t, 1, s.shown[0].Step)
	require.Equal(t, "web-2", s.shown[0].New)
	require.Equal(t, "web-1", s.shown[0].Old)

	r.d.Steering = &fakeSteering{asks: map[int]string{2: AskAbort}}
	_, err = r.d.Deploy(context.Background(), canaryService())
	require.ErrorIs(t, err, ErrRolledBack)
	require.ErrorContains(t, err, "aborted by a person (`handoff canary abort` at ")
	require.Equal(t, "127.0.0.1:40001", p.at())
}

// A canary or a watch needs a proxy that counts per release: Caddy's is
// refused with the reason before anything starts.
func TestACanaryNeedsAProxyThatCounts(t *testing.T) {
	r := newRig(t)
	for _, svc := range []Service{canaryService(), func() Service { s := testService(); s.Watch = time.Minute; return s }()} {
		_, err := r.d.Deploy(context.Background(), svc)
		require.ErrorIs(t, err, ErrConfig)
		require.ErrorContains(t, err, "does not count them per release: put `handoff proxy` in front (proxy: handoff)")
		require.Empty(t, r.rt.calls)
	}
}

// Ctrl-C in a step puts every request back on the old release and removes
// the canary before handoff exits.
func TestAnInterruptInAStepPutsTheOldReleaseBack(t *testing.T) {
	r, p, _ := canaryRig(t)
	ctx, cancel := context.WithCancel(context.Background())
	p.onRead = func(n int) {
		if n == 5 {
			cancel()
		}
	}
	_, err := r.d.Deploy(ctx, canaryService())
	require.ErrorIs(t, err, context.Canceled)
	require.Equal(t, "127.0.0.1:30001", p.at())
	require.Equal(t, []string{"run web-2", "remove web-2"}, r.rt.calls)
}

// The watch keeps the old release up after the switch; a new release
// that does as well as the old one did before is kept, the old retired.
func TestAWatchThatPassesRetiresTheOldRelease(t *testing.T) {
	r, p, clock := canaryRig(t)
	svc := testService()
	svc.Watch = 2 * time.Minute
	rec, err := r.d.Deploy(context.Background(), svc)
	require.NoError(t, err)
	require.Equal(t, []string{"image", "start", "health", "switch", "watch", "drain", "retire"}, phaseNames(rec))
	require.Equal(t, "127.0.0.1:40001", p.at())
	require.Equal(t, []string{"run web-2", "stop web-1"}, r.rt.calls)
	require.Equal(t, 2*time.Minute, clock.waited)
	require.Equal(t, VerdictPass, rec.Analysis[0].Verdict)
	require.Equal(t, 100, rec.Analysis[0].Weight)
}

// A new release that fails requests after the switch is switched away
// from at once: the old release, still running, serves everything again,
// and the new one is removed.
func TestAWatchThatFailsSwitchesBack(t *testing.T) {
	r, p, clock := canaryRig(t)
	p.errRate["127.0.0.1:40001"] = 0.05
	svc := testService()
	svc.Watch = 2 * time.Minute
	rec, err := r.d.Deploy(context.Background(), svc)
	require.ErrorIs(t, err, ErrRolledBack)
	require.ErrorContains(t, err, "watch of web-2: error rate 5.00% (20 of 400) against 0.00% (0 of ")
	require.ErrorContains(t, err, "switched back to web-1 (never stopped); web-2 removed")
	require.Equal(t, []string{"127.0.0.1:30001 → 127.0.0.1:40001", "127.0.0.1:40001 → 127.0.0.1:30001"}, p.switches)
	require.Equal(t, []string{"run web-2", "remove web-2"}, r.rt.calls)
	require.True(t, r.rt.find("web-1").Running)
	require.False(t, rec.Switched, "not in service: a rollback or the next deploy does not take it for the live release")
	require.Equal(t, time.Second, clock.waited, "one reading of 400 requests decided")
}

// A canary killed in a step leaves its split; the next deploy puts every
// request back on the old release before anything else, and removes the
// canary's containers; status does the first part and says so.
func TestAKilledCanaryIsEndedByTheNextCommand(t *testing.T) {
	for _, next := range []string{"deploy", "status"} {
		t.Run(next, func(t *testing.T) {
			r, p, _ := canaryRig(t)
			p.onRead = func(n int) {
				if n == 3 {
					panic("kill -9")
				}
			}
			require.Panics(t, func() { _, _ = r.d.Deploy(context.Background(), canaryService()) })
			require.Equal(t, "127.0.0.1:30001,127.0.0.1:40001", p.at(), "the kill left the split")
			p.onRead = nil
			r.rt.calls = nil
			if next == "status" {
				st, err := r.d.Status(context.Background(), testService())
				require.NoError(t, err)
				require.Contains(t, st.Canary, "the canary of web-2 (")
				require.Contains(t, st.Canary, "was interrupted at step 1 (10%): every request is on web-1 again; `handoff repair web` removes what it left")
				require.Equal(t, "127.0.0.1:30001", p.at())
				require.True(t, r.history.recs[0].Canary.Aborted)
				return
			}
			rec, err := r.d.Deploy(context.Background(), testService())
			require.NoError(t, err)
			require.Equal(t, "recover", rec.Phases[0].Name)
			require.Contains(t, rec.Notes, "removing web-2: left running by an interrupted deploy, never in service")
			require.Equal(t, []string{"remove web-2", "run web-3", "stop web-1"}, r.rt.calls)
			require.Equal(t, "127.0.0.1:40002", p.at())
		})
	}
}

// A proxy that counts the route only as a whole (Caddy's metrics) judges
// a watch, not a canary, which is refused before anything starts.
func TestAProxyCountingTheRouteAsAWholeWatchesButRefusesACanary(t *testing.T) {
	r, p, _ := canaryRig(t)
	p.routeOnly = true
	_, err := r.d.Deploy(context.Background(), canaryService())
	require.ErrorIs(t, err, ErrConfig)
	require.ErrorContains(t, err, "counts the route's requests only as a whole, not per release")
	require.Empty(t, r.rt.calls)
	svc := testService()
	svc.Watch = time.Minute
	_, err = r.d.Deploy(context.Background(), svc)
	require.NoError(t, err)
}

// An abort that cannot put the route back fails with the split still in
// the proxy; the next deploy finds it by the canary's record and ends it.
func TestASplitAFailedAbortLeftIsEndedByTheNextDeploy(t *testing.T) {
	r, p, _ := canaryRig(t)
	p.errRate["127.0.0.1:40001"] = 0.05
	p.onRead = func(n int) {
		if n == 3 {
			p.switchErr = ErrProxyUnreached // the abort's change fails, and is read back as not made
		}
	}
	_, err := r.d.Deploy(context.Background(), canaryService())
	require.ErrorIs(t, err, ErrProxyUnreached, "exit 5: nothing was rolled back")
	require.NotErrorIs(t, err, ErrRolledBack)
	require.ErrorContains(t, err, "canary step 1 (10% 1m0s) of web-2: fail: error rate")
	require.ErrorContains(t, err, "putting every request back on web-1 failed")
	require.Equal(t, "127.0.0.1:30001,127.0.0.1:40001", p.at(), "the split is still there")
	require.Equal(t, OutcomeFailed, r.history.recs[0].Outcome)

	p.switchErr, p.onRead = nil, nil
	r.rt.calls = nil
	rec, err := r.d.Deploy(context.Background(), testService())
	require.NoError(t, err)
	require.Contains(t, strings.Join(rec.Notes, "\n"), "ended with its split still in place at step 1 (10%): every request is on web-1 again")
	require.Equal(t, []string{"remove web-2", "run web-3", "stop web-1"}, r.rt.calls)
}

type stepLog struct {
	quietReporter
	states, details []string
}

func (s *stepLog) Progress(phase, state, detail string) {
	if phase != PhaseCanary {
		return
	}
	if len(s.states) == 0 || s.states[len(s.states)-1] != state {
		s.states = append(s.states, state)
	}
	s.details = append(s.details, detail)
}

// A step's live line: its state changes only with the verdict so far (a
// log gets a line then), both releases' numbers every second.
func TestAStepsLiveLineShowsBothReleases(t *testing.T) {
	r, p, _ := canaryRig(t)
	p.perRead = 500
	log := &stepLog{}
	r.d.Report = log
	svc := testService()
	svc.Canary = []CanaryStep{{Weight: 10, Hold: 10 * time.Second}}
	_, err := r.d.Deploy(context.Background(), svc)
	require.NoError(t, err)
	require.Equal(t, []string{"step 1 of 1: web-2 gets 10% of new requests", "step 1 of 1, 10%: too few requests yet", "step 1 of 1, 10%: as good as the old release so far"}, log.states)
	require.Equal(t, "web-2 0.00% of 100 p99 20ms | web-1 0.00% of 900 p99 20ms · 8s left", log.details[2])
}

// A promoted canary whose switch fails takes its split down: every
// request back on the old release, the canary removed, the proxy's error
// (exit 5), never "web-1 still serving" with a share on web-2.
func TestAFailedSwitchAfterTheCanaryTakesTheSplitDown(t *testing.T) {
	r, p, _ := canaryRig(t)
	svc := testService()
	svc.Canary = []CanaryStep{{Weight: 10, Hold: 10 * time.Second}}
	p.onRead = func(n int) {
		if n == 11 { // the step's last reading: the switch comes next, and fails
			p.switchErr, p.failOnce = ErrProxyUnreached, true
		}
	}
	_, err := r.d.Deploy(context.Background(), svc)
	require.ErrorIs(t, err, ErrProxyUnreached)
	require.NotErrorIs(t, err, ErrRolledBack)
	require.ErrorContains(t, err, "the switch after the canary")
	require.ErrorContains(t, err, "every request is back on web-1 (never stopped); web-2 removed")
	require.Equal(t, "127.0.0.1:30001", p.at())
	require.Equal(t, []string{"run web-2", "remove web-2"}, r.rt.calls)
}

// A step whose change took but whose reply was lost and could not be read
// back (unclear) is aborted from the route the proxy really has: the
// abort reads it first, and the proxy's compare-and-set does not refuse it.
func TestAnUnclearStepIsAbortedFromTheRouteTheProxyHas(t *testing.T) {
	r, p, _ := canaryRig(t)
	p.onRead = func(n int) {
		if n == 62 { // step 1 passed at 61: step 2's change takes, its reply and read back are lost
			p.switchErr, p.applyAnyway, p.readBackErr, p.readBackOnce = ErrProxyUnreached, true, ErrProxyUnreached, true
		}
	}
	_, err := r.d.Deploy(context.Background(), canaryService())
	require.ErrorIs(t, err, ErrUnclear)
	require.ErrorContains(t, err, "every request is back on web-1 (never stopped); web-2 removed")
	require.Equal(t, "127.0.0.1:30001", p.at())
	require.Equal(t, []string{"run web-2", "remove web-2"}, r.rt.calls)
}

// A watch killed before it passed is undone by the next command, as an
// unpromoted canary is: every request back on the old release (still
// running), the unjudged release removed, never the other way round.
func TestAKilledWatchIsUndoneByTheNextCommand(t *testing.T) {
	for _, next := range []string{"deploy", "status"} {
		t.Run(next, func(t *testing.T) {
			r, p, _ := canaryRig(t)
			p.onRead = func(n int) {
				if n == 5 {
					panic("kill -9")
				}
			}
			svc := testService()
			svc.Watch = time.Minute
			require.Panics(t, func() { _, _ = r.d.Deploy(context.Background(), svc) })
			require.Equal(t, "127.0.0.1:40001", p.at(), "the kill left the new release serving")
			p.onRead = nil
			r.rt.calls = nil
			if next == "status" {
				st, err := r.d.Status(context.Background(), testService())
				require.NoError(t, err)
				require.Contains(t, st.Canary, "was interrupted before it passed: every request is on web-1 again")
				require.Equal(t, "127.0.0.1:30001", p.at())
				require.False(t, r.history.recs[0].Switched)
				return
			}
			rec, err := r.d.Deploy(context.Background(), testService())
			require.NoError(t, err)
			require.Contains(t, strings.Join(rec.Notes, "\n"), "the watch of web-2")
			require.Equal(t, []string{"remove web-2", "run web-3", "stop web-1"}, r.rt.calls, "web-1, the release to switch back to, served until web-3 replaced it")
			require.False(t, r.history.recs[1].Switched)
		})
	}
}

// A watch under way in another handoff is only described by status, and
// the new release is the live one.
func TestStatusOfAWatchUnderWay(t *testing.T) {
	r, p, _ := canaryRig(t)
	var st *Status
	p.onRead = func(n int) {
		if n == 5 {
			r.d.Locker = noLock{err: ErrLocked}
			var err error
			st, err = r.d.Status(context.Background(), testService())
			require.NoError(t, err)
			r.d.Locker = noLock{}
		}
	}
	svc := testService()
	svc.Watch = 10 * time.Second
	_, err := r.d.Deploy(context.Background(), svc)
	require.NoError(t, err)
	require.Contains(t, st.Canary, "a watch is under way (pid 42): web-2 serves every request, web-1 kept running to switch back to")
	require.Equal(t, "web-2", st.Live.Name)
}

type checkedCounter struct {
	*countingProxy
	err error
}

func (c checkedCounter) CanCount(context.Context) error { return c.err }

// A counter that says it cannot count (Caddy with its metrics off) stops a
// watch before anything starts, with its reason.
func TestAWatchIsRefusedWhenTheProxyCannotCount(t *testing.T) {
	r, p, _ := canaryRig(t)
	p.routeOnly = true
	r.d.Proxy = checkedCounter{p, fmt.Errorf("%w: watch: needs Caddy's HTTP metrics", ErrConfig)}
	svc := testService()
	svc.Watch = time.Minute
	_, err := r.d.Deploy(context.Background(), svc)
	require.ErrorIs(t, err, ErrConfig)
	require.ErrorContains(t, err, "needs Caddy's HTTP metrics")
	require.Empty(t, r.rt.calls)
}
