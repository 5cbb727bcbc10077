package deploy

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// workerRig has release 1 of "jobs", a service no proxy routes to, running.
func workerRig(t *testing.T, rollout Rollout) (*rig, Service) {
	t.Helper()
	r := &rig{rt: newFakeRuntime(), history: &memHistory{}, report: &quietReporter{}}
	r.rt.healthy = func(c Container) Container { return c } // no health check: settle
	r.rt.add(Container{ID: "id-jobs-1", Name: "jobs-1", Service: "jobs", Release: 1, Running: true, StartedAt: time.Now().Add(-time.Hour)})
	r.d = &Deployer{Runtime: r.rt, History: r.history, Locker: noLock{}, Report: r.report, PID: 42}
	svc := Service{Name: "jobs", Image: "app:v2", Rollout: rollout, RemoveRetired: true,
		Health: HealthCheck{Interval: 10 * time.Millisecond, Settle: 50 * time.Millisecond, StartTimeout: time.Second}}
	return r, svc
}

// start-first: the new worker runs its settle time, gets the service's
// names, then the old one stops and, in a compose project, is removed.
func TestWorkerStartFirst(t *testing.T) {
	r, svc := workerRig(t, RolloutStartFirst)
	rec, err := r.d.Deploy(context.Background(), svc)
	require.NoError(t, err)
	require.Equal(t, []string{"run jobs-2", "stop jobs-1", "remove jobs-1"}, r.rt.calls)
	require.Equal(t, []string{"jobs-2"}, r.rt.announced)
	require.True(t, rec.Switched)
	require.Equal(t, "jobs-1", rec.From)
	phase := map[string]time.Duration{}
	for _, p := range rec.Phases {
		phase[p.Name] = p.Duration
	}
	require.GreaterOrEqual(t, phase[PhaseHealth], 50*time.Millisecond, "it ran its settle time first")
}

// stop-first: the old worker stops before the new one starts, and the
// output says there is a gap; if the new one fails, the old one is
// started again.
func TestWorkerStopFirst(t *testing.T) {
	r, svc := workerRig(t, RolloutStopFirst)
	rec, err := r.d.Deploy(context.Background(), svc)
	require.NoError(t, err)
	require.Equal(t, []string{"stop jobs-1", "run jobs-2", "remove jobs-1"}, r.rt.calls)
	require.Contains(t, strings.Join(rec.Notes, "\n"), "stop-first: jobs-1 stops before jobs-2 starts; jobs has a gap")

	r.rt.calls = nil
	r.rt.healthy = func(c Container) Container {
		if c.Release == 3 {
			c.Running, c.ExitCode = false, 1
		}
		return c
	}
	_, err = r.d.Deploy(context.Background(), svc)
	require.ErrorIs(t, err, ErrUnhealthy)
	require.ErrorContains(t, err, "jobs-3 removed; jobs-2 started again")
	require.Equal(t, []string{"stop jobs-2", "run jobs-3", "remove jobs-3", "start jobs-2"}, r.rt.calls)
}

// A crash-looping new worker is refused and the old one keeps running.
func TestWorkerThatCrashesChangesNothing(t *testing.T) {
	r, svc := workerRig(t, RolloutStartFirst)
	r.rt.healthy = func(c Container) Container {
		if c.Release == 2 {
			c.Restarting = true
		}
		return c
	}
	_, err := r.d.Deploy(context.Background(), svc)
	require.ErrorIs(t, err, ErrUnhealthy)
	require.ErrorContains(t, err, "jobs-1 still runs; jobs-2 removed")
	require.Equal(t, []string{"run jobs-2", "remove jobs-2"}, r.rt.calls)
}

// A service whose retired releases are removed rolls back by running the
// earlier release's image again.
func TestRollbackRunsAnEarlierImageAgain(t *testing.T) {
	r := newRig(t)
	svc := testService()
	svc.RemoveRetired = true
	r.rt.images["app:v3"] = "sha256:v3"
	_, err := r.d.Deploy(context.Background(), svc)
	require.NoError(t, err)
	svc.Image = "app:v3"
	_, err = r.d.Deploy(context.Background(), svc)
	require.NoError(t, err)
	require.Equal(t, []string{"run web-2", "stop web-1", "remove web-1", "run web-3", "stop web-2", "remove web-2"}, r.rt.calls)

	r.rt.images["sha256:v2"] = "sha256:v2"
	r.rt.calls = nil
	rec, err := r.d.Rollback(context.Background(), svc, 0)
	require.NoError(t, err)
	require.Equal(t, []string{"run web-4", "stop web-3", "remove web-3"}, r.rt.calls)
	require.Equal(t, "sha256:v2", rec.ImageID, "release 2's image")
	require.Equal(t, "app:v2", rec.Image)
}

// A release gets its service's network names only once healthy, before the
// switch: nobody reaches it by them while it boots.
func TestAnnounceComesAfterHealthBeforeTheSwitch(t *testing.T) {
	r := newRig(t)
	r.rt.healthy = func(c Container) Container {
		if c.Release == 2 {
			require.Empty(t, r.rt.announced, "not announced while its health is checked")
		}
		c.Health = "healthy"
		return c
	}
	_, err := r.d.Deploy(context.Background(), testService())
	require.NoError(t, err)
	require.Equal(t, []string{"web-2"}, r.rt.announced)
}

func TestReachOf(t *testing.T) {
	require.Equal(t, ReachHost, reachOf(""))
	require.Equal(t, ReachHost, reachOf("127.0.0.1:8000"))
	require.Equal(t, ReachHost, reachOf("localhost:8000"))
	require.Equal(t, ReachHost, reachOf("10.0.0.5:8000"))
	require.Equal(t, ReachNetwork, reachOf("web:8000"))
	require.Equal(t, ReachNetwork, reachOf("shop-web-3:8000"))
}

// Giving a release its names makes it leave and join each network again
// (Docker gives aliases no other way), which may cut what it had open: it
// is checked once more before the switch, and one that is no longer
// healthy is not switched to; the old release serves on.
func TestAReleaseUnhealthyAfterItsNamesAreGivenIsNotSwitchedTo(t *testing.T) {
	r := newRig(t)
	clock := newFakeClock()
	r.d.Now, r.d.After = clock.Now, clock.After
	r.rt.healthy = func(c Container) Container {
		c.Health = "healthy"
		if c.Release == 2 && len(r.rt.announced) > 0 {
			c.Health, c.HealthOutput = "unhealthy", "database connection lost"
		}
		return c
	}
	svc := testService()
	svc.Networks = []Network{{Name: "shop_default", Aliases: []string{"web"}}}
	_, err := r.d.Deploy(context.Background(), svc)
	var he *HealthError
	require.ErrorAs(t, err, &he)
	require.Contains(t, err.Error(), "healthy, then not after it joined its networks again")
	require.Contains(t, err.Error(), "database connection lost")
	require.Empty(t, r.proxy.switches, "not switched to")
	require.Equal(t, []string{"web-2"}, r.rt.announced)

	// The image's HEALTHCHECK: Docker's status is still the one from before
	// the networks were joined again, so the check itself is run.
	r3 := newRig(t)
	r3.rt.healthy = func(c Container) Container {
		c.Health, c.HasCheck, c.CheckCommand = "healthy", true, []string{"/app", "check"}
		return c
	}
	r3.rt.exec = func(string, []string) (int, string) {
		if len(r3.rt.announced) > 0 {
			return 1, "database connection lost"
		}
		return 0, ""
	}
	_, err = r3.d.Deploy(context.Background(), svc)
	require.ErrorAs(t, err, &he)
	require.Contains(t, err.Error(), "/app check exited 1: database connection lost")
	require.Empty(t, r3.proxy.switches, "not switched to")

	// Without names to give nothing is joined again, and nothing checked again.
	r2 := newRig(t)
	r2.rt.healthy = func(c Container) Container {
		c.Health = "healthy"
		if c.Release == 2 && len(r2.rt.announced) > 0 {
			c.Health = "unhealthy"
		}
		return c
	}
	_, err = r2.d.Deploy(context.Background(), testService())
	require.NoError(t, err)
}
