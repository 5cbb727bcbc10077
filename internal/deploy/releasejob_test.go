package deploy

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/hostcmd/hostcmdtest"
)

func TestPullPolicy(t *testing.T) {
	cases := map[string]struct {
		policy PullPolicy
		local  bool // app:v2 is on the host before the deploy
		calls  []string
		err    error
	}{
		"missing, present": {PullMissing, true, []string{"run web-2", "stop web-1"}, nil},
		"missing, absent":  {PullMissing, false, []string{"pull app:v2", "run web-2", "stop web-1"}, nil},
		"always, present":  {PullAlways, true, []string{"pull app:v2", "run web-2", "stop web-1"}, nil},
		"never, absent":    {PullNever, false, nil, ErrImageNotFound},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			r := newRig(t)
			r.rt.registry = map[string]string{"app:v2": "sha256:v2-registry"}
			if !tc.local {
				delete(r.rt.images, "app:v2")
			}
			svc := testService()
			svc.Pull = tc.policy
			rec, err := r.d.Deploy(context.Background(), svc)
			require.Equal(t, tc.calls, r.rt.calls)
			if tc.err != nil {
				require.ErrorIs(t, err, tc.err)
				require.Equal(t, []string{}, append([]string{}, r.proxy.switches...))
				return
			}
			require.NoError(t, err)
			require.Equal(t, "registry.test/app@"+rec.ImageID, rec.Digest, "the deploy records the digest it runs")
		})
	}
}

func TestAPullThatFailsChangesNothing(t *testing.T) {
	r := newRig(t)
	delete(r.rt.images, "app:v2")
	r.rt.pullErr = fmt.Errorf("%w: app:v2: registry.test refused the credentials", ErrPull)
	svc := testService()
	svc.Release = &Job{Command: []string{"migrate"}}
	rec, err := r.d.Deploy(context.Background(), svc)
	require.ErrorIs(t, err, ErrPull)
	require.Equal(t, []string{"pull app:v2"}, r.rt.calls, "no job, no container")
	require.Empty(t, r.proxy.switches)
	require.Equal(t, OutcomeFailed, rec.Outcome)
}

func TestReleaseJobRunsOnceBeforeTheNewRelease(t *testing.T) {
	r := newRig(t)
	svc := testService()
	svc.Release = &Job{Command: []string{"./app", "migrate"}}
	rec, err := r.d.Deploy(context.Background(), svc)
	require.NoError(t, err)
	require.Equal(t, []string{"job ./app migrate", "run web-2", "stop web-1"}, r.rt.calls)
	p := findPhase(t, rec, PhaseRelease)
	require.NotNil(t, p.ExitCode)
	require.Equal(t, 0, *p.ExitCode)

	_, err = r.d.Rollback(context.Background(), svc, 0)
	require.NoError(t, err)
	require.Len(t, r.rt.jobs, 1, "a rollback runs no release job")
}

func TestAFailingReleaseJobLeavesTheOldReleaseServing(t *testing.T) {
	r := newRig(t)
	r.rt.jobExit = 3
	svc := testService()
	svc.Release = &Job{Command: []string{"migrate"}}
	rec, err := r.d.Deploy(context.Background(), svc)
	require.ErrorIs(t, err, ErrReleaseJob)
	require.Contains(t, err.Error(), `"migrate" exited with 3`)
	require.Contains(t, err.Error(), "web-1 still serving, nothing was started")
	require.Equal(t, []string{"job migrate"}, r.rt.calls)
	require.Empty(t, r.proxy.switches)
	require.Equal(t, PhaseRelease, rec.Phase)
	require.Equal(t, 3, *findPhase(t, rec, PhaseRelease).ExitCode)
}

// A job the runtime refuses to create (a setting this engine cannot apply)
// is a configuration error (exit 2), not a failed job (exit 8): it never ran.
func TestAReleaseJobTheRuntimeRefusesIsAConfigurationError(t *testing.T) {
	r := newRig(t)
	r.rt.jobErr = fmt.Errorf("create web-job: %w: this Docker engine cannot mount part of a volume", ErrConfig)
	svc := testService()
	svc.Release = &Job{Command: []string{"migrate"}}
	_, err := r.d.Deploy(context.Background(), svc)
	require.ErrorIs(t, err, ErrConfig)
	require.NotErrorIs(t, err, ErrReleaseJob)
	require.Contains(t, err.Error(), `release job "migrate" not started`)
	require.Empty(t, r.proxy.switches)
}

func TestAReleaseJobThatRunsTooLongIsStopped(t *testing.T) {
	r := newRig(t)
	r.rt.jobBlock = true
	svc := testService()
	svc.Release = &Job{Command: []string{"migrate"}, Timeout: 20 * time.Millisecond}
	_, err := r.d.Deploy(context.Background(), svc)
	require.ErrorIs(t, err, ErrReleaseJob)
	require.Contains(t, err.Error(), "did not finish within 20ms (release_timeout)")
	require.Equal(t, []string{"job migrate"}, r.rt.calls)
}

type fakePauser struct {
	calls    []string
	pauseErr error // the pause is made, but this is what its caller hears
}

func (p *fakePauser) Pause(_ context.Context, wait time.Duration) error {
	p.calls = append(p.calls, "pause "+wait.String())
	return p.pauseErr
}
func (p *fakePauser) Resume(context.Context) error { p.calls = append(p.calls, "resume"); return nil }

// A pause whose answer is lost may have been made: it is resumed, the job
// does not run, and the record does not say requests are held.
func TestAPauseWithALostAnswerIsResumed(t *testing.T) {
	r := newRig(t)
	p := &fakePauser{pauseErr: errors.New("EOF")}
	r.d.Pauser = p
	svc := testService()
	svc.Release = &Job{Command: []string{"migrate"}, Pause: true, Timeout: time.Minute}
	rec, err := r.d.Deploy(context.Background(), svc)
	require.ErrorIs(t, err, ErrReleaseJob)
	require.Equal(t, []string{"pause 2m0s", "resume"}, p.calls)
	require.Empty(t, r.rt.jobs)
	require.False(t, rec.Held)
}

func TestReleasePauseHoldsRequestsOnlyDuringTheJob(t *testing.T) {
	r := newRig(t)
	svc := testService()
	svc.Release = &Job{Command: []string{"migrate"}, Pause: true, Timeout: time.Minute}
	_, err := r.d.Deploy(context.Background(), svc)
	require.ErrorIs(t, err, ErrConfig, "no proxy that can hold requests")
	require.Empty(t, r.rt.calls)

	for _, exit := range []int{0, 1} {
		r := newRig(t)
		r.rt.jobExit = exit
		p := &fakePauser{}
		r.d.Pauser = p
		_, _ = r.d.Deploy(context.Background(), svc)
		require.Equal(t, []string{"pause 2m0s", "resume"}, p.calls, "exit %d: resumed whatever the job did", exit)
	}
}

func TestHooksSeeTheDeployAndAFailingPreDeployAbortsFirst(t *testing.T) {
	dir := t.TempDir()
	r := newRig(t)
	svc := testService()
	svc.Release = &Job{Command: []string{"migrate"}}
	svc.Hooks = Hooks{
		PreDeploy:  `echo "pre $HANDOFF_SERVICE $HANDOFF_RELEASE $HANDOFF_IMAGE" >> hooks.log`,
		PostDeploy: `echo "post $HANDOFF_OUTCOME $HANDOFF_CONTAINER $HANDOFF_PREVIOUS_CONTAINER" >> hooks.log`,
		OnFailure:  `echo "failure $HANDOFF_OUTCOME $HANDOFF_PHASE" >> hooks.log`,
		Dir:        dir,
	}
	_, err := r.d.Deploy(context.Background(), svc)
	require.NoError(t, err)
	require.Equal(t, "pre web 2 app:v2\npost succeeded web-2 web-1\n", readFile(t, filepath.Join(dir, "hooks.log")))
	require.Equal(t, []string{"job migrate", "run web-2", "stop web-1"}, r.rt.calls, "pre_deploy runs before the release job")

	// A pre_deploy hook that fails: nothing runs, on_failure says where.
	require.NoError(t, os.Remove(filepath.Join(dir, "hooks.log")))
	r = newRig(t)
	svc.Hooks.PreDeploy = "exit 7"
	rec, err := r.d.Deploy(context.Background(), svc)
	require.ErrorIs(t, err, ErrHook)
	require.Contains(t, err.Error(), "pre_deploy hook exited with 7")
	require.Empty(t, r.rt.calls, "no job, no container")
	require.Equal(t, "failure failed pre_deploy\n", readFile(t, filepath.Join(dir, "hooks.log")))
	require.Contains(t, rec.Notes, "on_failure hook ran")

	// A post_deploy hook that fails is noted; the deploy stands.
	r = newRig(t)
	svc.Hooks.PreDeploy, svc.Hooks.PostDeploy = "", "exit 2"
	rec, err = r.d.Deploy(context.Background(), svc)
	require.NoError(t, err)
	require.Equal(t, OutcomeSucceeded, rec.Outcome)
	require.True(t, slicesContain(rec.Notes, "post_deploy hook exited with 2"), rec.Notes)
}

func TestRollbackPullsAnImageGoneFromTheHostByItsDigest(t *testing.T) {
	r := newRig(t)
	svc := testService()
	svc.RemoveRetired = true
	r.rt.registry = map[string]string{"app:v2": "sha256:v2", "registry.test/app@sha256:v1": "sha256:v1"}
	r.history.recs = append(r.history.recs, Record{Service: "web", Kind: KindDeploy, Outcome: OutcomeSucceeded, ToRelease: 1, To: "web-1",
		Image: "app:v1", ImageID: "sha256:v1", Digest: "registry.test/app@sha256:v1", Switched: true})
	_, err := r.d.Deploy(context.Background(), svc)
	require.NoError(t, err)
	rec, err := r.d.Rollback(context.Background(), svc, 0)
	require.NoError(t, err, "%v", r.rt.calls)
	require.Contains(t, r.rt.calls, "pull registry.test/app@sha256:v1")
	require.Equal(t, "sha256:v1", rec.ImageID)
}

func findPhase(t *testing.T, rec *Record, name string) PhaseRecord {
	t.Helper()
	for _, p := range rec.Phases {
		if p.Name == name {
			return p
		}
	}
	t.Fatalf("no phase %s in %+v", name, rec.Phases)
	return PhaseRecord{}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return string(b)
}

func slicesContain(list []string, part string) bool {
	for _, s := range list {
		if strings.Contains(s, part) {
			return true
		}
	}
	return false
}

// A handoff killed while its release job held the requests leaves a record
// that says so; the next deploy lets them go before anything else.
func TestRequestsHeldByAKilledReleaseJobAreLetGo(t *testing.T) {
	r := newRig(t)
	p := &fakePauser{}
	r.d.Pauser = p
	r.history.recs = append(r.history.recs, Record{ID: "killed", Service: "web", Kind: KindDeploy, Outcome: OutcomeRunning, Phase: PhaseRelease, Held: true, PID: 999999})
	rec, err := r.d.Deploy(context.Background(), testService())
	require.NoError(t, err)
	require.Equal(t, []string{"resume"}, p.calls)
	require.Contains(t, rec.Notes, "letting go the requests its release job held")
	for _, h := range r.history.recs {
		if h.ID == "killed" {
			require.False(t, h.Held)
			require.Equal(t, OutcomeInterrupted, h.Outcome)
		}
	}
}

// A hook past its timeout is ended with everything it started: the
// script's children too, not only sh.
func TestAHookPastItsTimeoutLeavesNoProcessBehind(t *testing.T) {
	dir := t.TempDir()
	r := newRig(t)
	svc := testService()
	svc.Hooks = Hooks{
		PreDeploy: `sleep 30 & echo $! > bg.pid; sh -c 'echo $$ > child.pid; sleep 30'; echo done > done`,
		Dir:       dir,
		Timeout:   300 * time.Millisecond,
	}
	_, err := r.d.Deploy(context.Background(), svc)
	require.ErrorIs(t, err, ErrHook)
	require.Contains(t, err.Error(), "pre_deploy hook did not finish within 300ms")
	for _, name := range []string{"bg.pid", "child.pid"} {
		pid, err := strconv.Atoi(strings.TrimSpace(readFile(t, filepath.Join(dir, name))))
		require.NoError(t, err)
		require.Eventually(t, func() bool { return hostcmdtest.Ended(pid) },
			2*time.Second, 10*time.Millisecond, "%s: process %d still runs after the hook's timeout", name, pid)
	}
	require.NoFileExists(t, filepath.Join(dir, "done"), "the script did not run on to its end")
}

// Requests the old release still runs when the pause starts (a slow POST,
// a stream) finish before the release job runs: the job must not change
// the database under old code. The wait is shown as the drain's is.
func TestAReleasePauseWaitsForRequestsInFlightBeforeTheJob(t *testing.T) {
	r := newRig(t)
	clock := newFakeClock()
	r.d.Now, r.d.After = clock.Now, clock.After
	p := &fakePauser{}
	r.d.Pauser = p
	progress := &progressReporter{}
	r.d.Report = progress
	r.proxy.inFlight = []InFlight{{Reported: true, Requests: 2}, {Reported: true, Requests: 1}, {Reported: true}}
	r.proxy.onInFlight = func() { r.rt.record("count in flight") }
	svc := testService()
	svc.Release = &Job{Command: []string{"migrate"}, Pause: true, Timeout: time.Minute}

	rec, err := r.d.Deploy(context.Background(), svc)
	require.NoError(t, err)
	require.Equal(t, []string{"count in flight", "count in flight", "count in flight", "job migrate", "run web-2", "count in flight", "stop web-1"}, r.rt.calls,
		"the job runs once nothing is in flight")
	require.Equal(t, []string{"pause 2m0s", "resume"}, p.calls)
	require.Equal(t, 2*drainPoll, clock.waited)
	require.Equal(t, []string{"release: 2 request(s) still in flight on 127.0.0.1:30001 (up to 1m0s)", "release: 1 request(s) still in flight on 127.0.0.1:30001 (up to 1m0s)"}, progress.lines)
	require.True(t, slicesContain(rec.Notes, "waited 50ms for the requests in flight on 127.0.0.1:30001 to finish before the release job"), rec.Notes)
}

// Requests that are still running when the release timeout is up: the job
// does not run beside them; the requests held are let go, the old release
// serves on, and the deploy fails as a release job does (exit 8).
func TestAReleasePauseThatCannotWaitOutTheRequestsInFlightFails(t *testing.T) {
	r := newRig(t)
	clock := newFakeClock()
	r.d.Now, r.d.After = clock.Now, clock.After
	p := &fakePauser{}
	r.d.Pauser = p
	r.proxy.inFlight = []InFlight{{Reported: true, Requests: 3}}
	svc := testService()
	svc.Release = &Job{Command: []string{"migrate"}, Pause: true, Timeout: time.Minute}

	rec, err := r.d.Deploy(context.Background(), svc)
	require.ErrorIs(t, err, ErrReleaseJob)
	require.Equal(t, "release job failed: 3 request(s) still in flight on 127.0.0.1:30001 (web-1) after 1m0s (release_timeout): the release job did not run beside them; "+
		"the held requests are let go; let those requests end (long uploads, streams, WebSockets), or raise release_timeout; web-1 still serving, nothing was started", err.Error())
	require.Empty(t, r.rt.jobs)
	require.Empty(t, r.proxy.switches)
	require.Equal(t, []string{"pause 2m0s", "resume"}, p.calls)
	require.Equal(t, time.Minute, clock.waited)
	require.False(t, rec.Held)
	require.Equal(t, OutcomeFailed, rec.Outcome)
}

type progressReporter struct {
	quietReporter
	lines []string
}

func (r *progressReporter) Progress(phase, state, detail string) {
	if phase == PhaseRelease {
		r.lines = append(r.lines, phase+": "+state+" ("+detail+")")
	}
}

// A release job interrupted (Ctrl-C, SIGTERM, SIGHUP) ends the deploy as an
// interrupted one (exit 130), its held requests let go.
func TestAnInterruptedReleaseJobEndsAsInterrupted(t *testing.T) {
	r := newRig(t)
	p := &fakePauser{}
	r.d.Pauser = p
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r.rt.jobBlock, r.rt.onJob = true, cancel
	svc := testService()
	svc.Release = &Job{Command: []string{"migrate"}, Pause: true, Timeout: time.Minute}
	rec, err := r.d.Deploy(ctx, svc)
	require.ErrorIs(t, err, context.Canceled)
	require.ErrorIs(t, err, ErrReleaseJob)
	require.Equal(t, OutcomeInterrupted, rec.Outcome)
	require.Equal(t, []string{"pause 2m0s", "resume"}, p.calls)
	require.False(t, rec.Held)
}

// While the deploy waits for the requests in flight before its job: a
// Ctrl-C (or SIGTERM, SIGHUP) ends it as interrupted, exit 130, and a
// proxy that cannot count is a proxy error, exit 5; the job runs in
// neither case and the held requests are let go.
func TestTheWaitBeforeTheJobEndsAsInterruptedOrAsAProxyError(t *testing.T) {
	r := newRig(t)
	p := &fakePauser{}
	r.d.Pauser = p
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r.proxy.onInFlight = cancel
	svc := testService()
	svc.Release = &Job{Command: []string{"migrate"}, Pause: true, Timeout: time.Minute}
	rec, err := r.d.Deploy(ctx, svc)
	require.ErrorIs(t, err, context.Canceled)
	require.NotErrorIs(t, err, ErrReleaseJob)
	require.NotErrorIs(t, err, ErrProxy)
	require.Equal(t, OutcomeInterrupted, rec.Outcome)
	require.NotContains(t, r.rt.calls, "job migrate")
	require.Equal(t, []string{"pause 2m0s", "resume"}, p.calls)

	r = newRig(t)
	p = &fakePauser{}
	r.d.Pauser = p
	r.proxy.inFlightErr = errors.New("dial unix /run/handoff-proxy.sock: connection refused")
	_, err = r.d.Deploy(context.Background(), svc)
	require.ErrorIs(t, err, ErrProxy)
	require.Contains(t, err.Error(), "connection refused; the release job did not run")
	require.NotContains(t, r.rt.calls, "job migrate")
	require.Equal(t, []string{"pause 2m0s", "resume"}, p.calls)
}
