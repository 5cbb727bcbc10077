package deploy

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

type rig struct {
	rt      *fakeRuntime
	proxy   *fakeProxy
	history *memHistory
	report  *quietReporter
	d       *Deployer
}

// newRig has release 1 of "web" live behind the proxy.
func newRig(t *testing.T) *rig {
	t.Helper()
	r := &rig{rt: newFakeRuntime(), history: &memHistory{}, report: &quietReporter{}}
	live := r.rt.add(Container{ID: "id-web-1", Name: "web-1", Service: "web", Release: 1, Running: true, Port: 8000, Upstream: "127.0.0.1:30001"})
	r.proxy = &fakeProxy{route: Only(live.Name, live.Upstream)}
	r.d = &Deployer{Runtime: r.rt, Proxy: r.proxy, History: r.history, Locker: noLock{}, Report: r.report, PID: 42}
	return r
}

func testService() Service {
	return Service{Name: "web", Image: "app:v2", Port: 8000, Health: HealthCheck{Kind: HealthDocker, Interval: time.Millisecond, Successes: 1, StartTimeout: time.Second},
		DrainTimeout: time.Second}
}

func TestDeploySwitchesDrainsAndRetires(t *testing.T) {
	r := newRig(t)
	rec, err := r.d.Deploy(context.Background(), testService())
	require.NoError(t, err)
	require.Equal(t, OutcomeSucceeded, rec.Outcome)
	require.Equal(t, []string{"run web-2", "stop web-1"}, r.rt.calls)
	require.Equal(t, []string{"127.0.0.1:30001 → 127.0.0.1:40001"}, r.proxy.switches)
	require.Equal(t, []string{"127.0.0.1:30001"}, r.proxy.retired, "the old upstream is retired before its container stops")
	require.Equal(t, 1, rec.FromRelease)
	require.Equal(t, 2, rec.ToRelease)
	require.True(t, rec.Switched)
	// Each phase was saved as running before it acted.
	require.Equal(t, []string{"image:running", "start:running", "health:running", "switch:running", "drain:running", "retire:running", "retire:succeeded"}, r.history.phasesSaved)
}

func TestUnhealthyNewContainerChangesNothing(t *testing.T) {
	cases := map[string]struct {
		look   func(Container) Container
		reason string
	}{
		"exits":      {func(c Container) Container { c.Running, c.ExitCode = false, 3; return c }, "exited with code 3 while starting"},
		"restarts":   {func(c Container) Container { c.Restarting = true; return c }, "restarted while starting"},
		"oom":        {func(c Container) Container { c.Running, c.OOMKilled = false, true; return c }, "out of memory"},
		"unhealthy":  {func(c Container) Container { c.Health = "unhealthy"; return c }, "Docker HEALTHCHECK reports unhealthy"},
		"never well": {func(c Container) Container { c.Health = "starting"; return c }, "not healthy after 1s"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			r := newRig(t)
			r.rt.logs = "boom\n"
			r.rt.healthy = func(c Container) Container {
				if c.Release == 2 {
					return tc.look(c)
				}
				return c
			}
			rec, err := r.d.Deploy(context.Background(), testService())
			require.ErrorIs(t, err, ErrUnhealthy)
			require.ErrorContains(t, err, tc.reason)
			require.ErrorContains(t, err, "web-1 still serving fake proxy; web-2 not in service")
			var he *HealthError
			require.ErrorAs(t, err, &he)
			require.Equal(t, "boom\n", he.Logs)
			require.Equal(t, []string{"run web-2", "remove web-2"}, r.rt.calls, "the new container is removed, the old one untouched")
			require.Empty(t, r.proxy.switches)
			require.Equal(t, OutcomeFailed, rec.Outcome)
		})
	}
}

func TestImageHealthcheckWindowExtendsStartTimeout(t *testing.T) {
	r := newRig(t)
	start := time.Now()
	r.rt.healthy = func(c Container) Container {
		c.HasCheck, c.CheckWindow = true, time.Second
		c.Health = "starting"
		if time.Since(start) > 200*time.Millisecond {
			c.Health = "healthy"
		}
		return c
	}
	svc := testService()
	svc.Health.Kind = HealthAuto
	svc.Health.StartTimeout = 50 * time.Millisecond
	_, err := r.d.Deploy(context.Background(), svc)
	require.NoError(t, err, "the image's HEALTHCHECK allows 1s, more than start_timeout")
	require.Contains(t, strings.Join(r.report.notes, "\n"), "waiting up to 1s, as web-2's HEALTHCHECK allows")
}

func TestSwitchFailureRemovesNewContainer(t *testing.T) {
	r := newRig(t)
	r.proxy.switchErr = ErrProxyUnreached
	_, err := r.d.Deploy(context.Background(), testService())
	require.ErrorIs(t, err, ErrProxyUnreached)
	require.Equal(t, []string{"run web-2", "remove web-2"}, r.rt.calls)
}

func TestPreflightFailureStartsNothing(t *testing.T) {
	r := newRig(t)
	r.proxy.preflightErr = ErrProxy
	_, err := r.d.Deploy(context.Background(), testService())
	require.ErrorIs(t, err, ErrProxy)
	require.Empty(t, r.rt.calls)
}

func TestMissingImageStartsNothing(t *testing.T) {
	r := newRig(t)
	svc := testService()
	svc.Image = "app:nope"
	_, err := r.d.Deploy(context.Background(), svc)
	require.ErrorIs(t, err, ErrPull, "not on the host, so pulled; the registry has none")
	require.Equal(t, []string{"pull app:nope"}, r.rt.calls)
}

func TestLockedDeployDoesNothing(t *testing.T) {
	r := newRig(t)
	r.d.Locker = noLock{err: ErrLocked}
	_, err := r.d.Deploy(context.Background(), testService())
	require.ErrorIs(t, err, ErrLocked)
	require.Empty(t, r.rt.calls)
	require.Empty(t, r.history.recs)
}

func TestDrainWaitsUntilNoRequestInFlight(t *testing.T) {
	r := newRig(t)
	r.proxy.inFlight = []InFlight{{Requests: 2, Reported: true}, {Requests: 1, Reported: true}, {Requests: 0, Reported: true}}
	start := time.Now()
	_, err := r.d.Deploy(context.Background(), testService())
	require.NoError(t, err)
	require.GreaterOrEqual(t, time.Since(start), 2*drainPoll, "two polls saw requests in flight")
}

func TestDrainWithoutCountsWaitsTheTimeoutAndSaysSo(t *testing.T) {
	r := newRig(t)
	r.proxy.inFlight = []InFlight{{Reported: false}}
	svc := testService()
	svc.DrainTimeout = 300 * time.Millisecond
	start := time.Now()
	rec, err := r.d.Deploy(context.Background(), svc)
	require.NoError(t, err)
	require.GreaterOrEqual(t, time.Since(start), svc.DrainTimeout)
	require.Contains(t, strings.Join(rec.Notes, "\n"), "waiting the whole drain timeout, 300ms")
}

func TestDrainTimeoutStopsOldAnyway(t *testing.T) {
	r := newRig(t)
	r.proxy.inFlight = []InFlight{{Requests: 5, Reported: true}}
	svc := testService()
	svc.DrainTimeout = 250 * time.Millisecond
	rec, err := r.d.Deploy(context.Background(), svc)
	require.NoError(t, err)
	require.Contains(t, strings.Join(rec.Notes, "\n"), "drain timeout 250ms reached with 5 request(s) still in flight")
	require.Contains(t, r.rt.calls, "stop web-1")
}

func TestFirstDeployAdoptsTheServingContainer(t *testing.T) {
	r := newRig(t)
	r.rt.containers = nil
	r.rt.add(Container{ID: "byhand", Name: "byhand", Running: true, Port: 8000, Upstream: "localhost:8000"})
	r.proxy.route = Only("", "localhost:8000")
	svc := testService()
	svc.Port = 0 // taken from the adopted container
	rec, err := r.d.Deploy(context.Background(), svc)
	require.NoError(t, err)
	require.Equal(t, "byhand", rec.From)
	require.Equal(t, 0, rec.FromRelease)
	require.Equal(t, []string{"run web-1", "stop byhand"}, r.rt.calls)
	require.Contains(t, r.report.notes[0], "adopting byhand")

	// The adopted container is the rollback target of release 1.
	r.rt.calls = nil
	rec, err = r.d.Rollback(context.Background(), svc, 0)
	require.NoError(t, err)
	require.Equal(t, "byhand", rec.To)
	require.Equal(t, []string{"start byhand", "stop web-1"}, r.rt.calls)
}

func TestRollbackPicksPreviousReleaseAndStopsItAgainOnFailure(t *testing.T) {
	r := newRig(t)
	_, err := r.d.Deploy(context.Background(), testService())
	require.NoError(t, err)
	r.rt.calls = nil

	r.rt.healthy = func(c Container) Container {
		if c.Release == 1 {
			c.Health = "unhealthy"
		}
		return c
	}
	_, err = r.d.Rollback(context.Background(), testService(), 0)
	require.ErrorIs(t, err, ErrUnhealthy)
	require.Equal(t, []string{"start web-1", "stop web-1"}, r.rt.calls, "a rollback target is stopped, never removed")

	r.rt.healthy = func(c Container) Container { c.Health = "healthy"; return c }
	r.rt.calls = nil
	rec, err := r.d.Rollback(context.Background(), testService(), 0)
	require.NoError(t, err)
	require.Equal(t, "web-1", rec.To)
	require.Equal(t, []string{"start web-1", "stop web-2"}, r.rt.calls)

	_, err = r.d.Rollback(context.Background(), testService(), 7)
	require.ErrorIs(t, err, ErrNothingToRoll)
	require.ErrorContains(t, err, "release 7 of web is not kept")
}

func TestInterruptedDeployIsRepaired(t *testing.T) {
	r := newRig(t)
	// A deploy died after starting web-2, before the switch.
	r.rt.add(Container{ID: "id-web-2", Name: "web-2", Service: "web", Release: 2, Running: true, Upstream: "127.0.0.1:30002"})
	r.history.recs = []Record{{ID: "old", Service: "web", Kind: KindDeploy, Outcome: OutcomeRunning, Phase: PhaseHealth, ToRelease: 2}}

	rec, err := r.d.Deploy(context.Background(), testService())
	require.NoError(t, err)
	require.Equal(t, 3, rec.ToRelease, "release numbers are never reused")
	require.Equal(t, []string{"remove web-2", "run web-3", "stop web-1"}, r.rt.calls)
	old := r.history.recs[1]
	require.Equal(t, OutcomeInterrupted, old.Outcome)
	require.Contains(t, old.Error, "interrupted in phase health")
}

func TestInterruptedDrainIsFinished(t *testing.T) {
	r := newRig(t)
	// A deploy switched to web-2 and died while draining web-1.
	r.rt.add(Container{ID: "id-web-2", Name: "web-2", Service: "web", Release: 2, Running: true, Upstream: "127.0.0.1:30002"})
	r.proxy.route = Only("", "127.0.0.1:30002")
	r.history.recs = []Record{{ID: "old", Service: "web", Outcome: OutcomeRunning, Phase: PhaseDrain, ToRelease: 2, Switched: true}}

	_, err := r.d.Deploy(context.Background(), testService())
	require.NoError(t, err)
	require.Equal(t, []string{"stop web-1", "run web-3", "stop web-2"}, r.rt.calls)
}

func TestKeepPrunesOldestStoppedReleases(t *testing.T) {
	r := newRig(t)
	svc := testService()
	svc.Keep = 2
	for range 4 {
		_, err := r.d.Deploy(context.Background(), svc)
		require.NoError(t, err)
	}
	var names []string
	for _, c := range r.rt.containers {
		names = append(names, c.Name)
	}
	require.ElementsMatch(t, []string{"web-3", "web-4", "web-5"}, names)
}

func TestCancelledHealthWaitRemovesNewContainer(t *testing.T) {
	r := newRig(t)
	r.rt.healthy = func(c Container) Container { c.Health = "starting"; return c }
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	svc := testService()
	svc.Health.StartTimeout = time.Minute
	rec, err := r.d.Deploy(ctx, svc)
	require.True(t, errors.Is(err, context.Canceled), "%v", err)
	require.Equal(t, OutcomeInterrupted, rec.Outcome)
	require.Equal(t, []string{"run web-2", "remove web-2"}, r.rt.calls)
}

func TestFirstDeployThroughAnEmptyProxy(t *testing.T) {
	r := newRig(t)
	r.rt.containers = nil
	r.proxy.route = nil
	rec, err := r.d.Deploy(context.Background(), testService())
	require.NoError(t, err)
	require.Equal(t, []string{" → 127.0.0.1:40001"}, r.proxy.switches)
	require.Equal(t, []string{"run web-1"}, r.rt.calls)
	require.Contains(t, rec.Notes[0], "first deploy through fake proxy: nothing serves yet")
}

func TestSameUpstream(t *testing.T) {
	require.True(t, SameUpstream("localhost:8000", "127.0.0.1:8000"))
	require.True(t, SameUpstream("[::1]:8000", "127.0.0.1:8000"))
	require.False(t, SameUpstream("127.0.0.1:8000", "127.0.0.1:8001"))
	require.False(t, SameUpstream("app:8000", "127.0.0.1:8000"))
}
