package deploy

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Cases a review of the replicas change found; each failed before its fix.

// byName answers a route to web:8000 (an alias every replica has) with the
// first compose container, as docker's named() does: Port and Upstream
// from the route; Find's containers carry neither (compose containers
// have no handoff.port label and publish nothing).
type byName struct{ *fakeRuntime }

func (b byName) Serving(_ context.Context, upstream string) (*Container, error) {
	if upstream != "web:8000" {
		return nil, nil
	}
	c := *b.find("web-byhand-1")
	c.Adopted, c.Port, c.Upstream = true, 8000, upstream
	return &c, nil
}

func TestAServiceAdoptedByANameKeepsTheRoutesPort(t *testing.T) {
	r := newRig(t)
	r.rt.containers = nil
	r.rt.add(Container{ID: "id-1", Name: "web-byhand-1", Running: true})
	r.rt.add(Container{ID: "id-2", Name: "web-byhand-2", Running: true})
	r.proxy.route = Only("", "web:8000")
	r.d.Runtime = byName{r.rt}
	svc := replicated(2)
	svc.Port = 0 // compose said no expose/ports: the port comes from the route
	svc.Adopt = map[string]string{"app": "web"}
	_, err := r.d.Deploy(context.Background(), svc)
	require.NoError(t, err)
}

func TestAContainerAdoptedByANameKeepsTheRoutesPort(t *testing.T) {
	r := newRig(t)
	r.rt.containers = nil
	r.rt.add(Container{ID: "id-1", Name: "web-byhand-1", Running: true})
	r.proxy.route = Only("", "web:8000")
	r.d.Runtime = byName{r.rt}
	svc := testService()
	svc.Port = 0
	svc.Adopt = map[string]string{"app": "web"}
	_, err := r.d.Deploy(context.Background(), svc)
	require.NoError(t, err)
}

// A start-first worker deploy of 3 replicas killed in its health phase
// with one of the three started: the next deploy replaces the release in
// service, not that partial one, never healthy (it used to take it for
// the live release and stop the one in service first).
func TestAWorkerDeployKilledWithPartOfItsReplicasStartedLeavesTheLiveReleaseLive(t *testing.T) {
	rt := newFakeRuntime()
	for i := 1; i <= 3; i++ {
		rt.add(Container{ID: "id-w-1-" + itoa(i), Name: "w-1-" + itoa(i), Service: "w", Release: 1, Replica: i, Running: true})
	}
	rt.add(Container{ID: "id-w-2-1", Name: "w-2-1", Service: "w", Release: 2, Replica: 1, Running: true})
	h := &memHistory{recs: []Record{
		{ID: "killed", Service: "w", Kind: KindDeploy, Outcome: OutcomeRunning, Phase: PhaseHealth, FromRelease: 1, ToRelease: 2, To: "w-2"},
		{ID: "first", Service: "w", Kind: KindDeploy, Outcome: OutcomeSucceeded, Phase: PhaseRetire, ToRelease: 1, To: "w-1", Switched: true},
	}}
	rep := &quietReporter{}
	d := &Deployer{Runtime: rt, History: h, Locker: noLock{}, Report: rep, PID: 1}
	svc := Service{Name: "w", Image: "app:v2", Rollout: RolloutStartFirst, Replicas: 3,
		Health: HealthCheck{Kind: HealthRunning, Interval: time.Millisecond, Settle: time.Millisecond, StartTimeout: time.Second}}
	rec, err := d.Deploy(context.Background(), svc)
	require.NoError(t, err)
	require.Equal(t, "w-1", rec.From, "the release in service is the one replaced")
}

type failingStart struct {
	*fakeRuntime
	fail string
}

func (f *failingStart) Start(ctx context.Context, id string, restart string) (Container, error) {
	if c := f.find(id); c != nil && c.Name == f.fail {
		return Container{}, errors.New("boom")
	}
	return f.fakeRuntime.Start(ctx, id, restart)
}

// stop-first with replicas: the new release fails, the old one is
// started again, every replica of it, even when the first cannot start.
func TestAFailedStopFirstDeployStartsEveryOldReplicaAgain(t *testing.T) {
	rt := newFakeRuntime()
	for i := 1; i <= 3; i++ {
		rt.add(Container{ID: "id-w-1-" + itoa(i), Name: "w-1-" + itoa(i), Service: "w", Release: 1, Replica: i, Running: true})
	}
	frt := &failingStart{fakeRuntime: rt, fail: "w-1-1"}
	rt.healthy = func(c Container) Container {
		if c.Release == 2 {
			c.Running, c.ExitCode = false, 1
		}
		return c
	}
	d := &Deployer{Runtime: frt, History: &memHistory{}, Locker: noLock{}, Report: &quietReporter{}, PID: 1}
	svc := Service{Name: "w", Image: "app:v2", Rollout: RolloutStopFirst, Replicas: 3,
		Health: HealthCheck{Kind: HealthRunning, Interval: time.Millisecond, Settle: time.Millisecond, StartTimeout: time.Second}}
	_, err := d.Deploy(context.Background(), svc)
	require.Error(t, err)
	require.True(t, rt.find("w-1-2").Running, "w-1-2 started again")
	require.True(t, rt.find("w-1-3").Running, "w-1-3 started again")
}

// A partially-down live release (one replica exited for good): repair
// starts that replica again (it used to say there was nothing to repair).
func TestRepairOfALiveReleasePartlyDown(t *testing.T) {
	r := newRig(t)
	_, err := r.d.Deploy(context.Background(), replicated(3))
	require.NoError(t, err)
	down := r.rt.find("web-2-2")
	down.Running, down.ExitCode = false, 137
	r.rt.calls = nil
	_, err = r.d.Repair(context.Background(), replicated(3))
	require.NoError(t, err)
	require.Contains(t, r.rt.calls, "start web-2-2", "repair starts the replica that is down")
}

// One replica of the live release removed (docker rm -f): status knows
// the live release on the two that answer (it used to say none answered).
func TestStatusOfALiveReleaseMissingAReplica(t *testing.T) {
	r := newRig(t)
	_, err := r.d.Deploy(context.Background(), replicated(3))
	require.NoError(t, err)
	require.NoError(t, r.rt.Remove(context.Background(), "id-web-2-2"))
	st, err := r.d.Status(context.Background(), replicated(3))
	require.NoError(t, err)
	require.NotContains(t, st.Problem, "where no container answers")
}

// A deploy killed as its switch took (the reply lost, or killed right
// after SetRoute before the next save): the next procedure records that
// its release served, so that once retired it is kept for rollback, not
// removed as "never started".
func TestAReleaseSwitchedToByAKilledDeployIsKeptForRollback(t *testing.T) {
	r := newRig(t)
	// web-2 serves (the killed deploy's switch took), its record says not switched.
	r.rt.add(Container{ID: "id-web-2", Name: "web-2", Service: "web", Release: 2, Running: true, Port: 8000, Upstream: "127.0.0.1:30002"})
	r.proxy.route = Only("web-2", "127.0.0.1:30002")
	r.history.recs = []Record{{ID: "killed", Service: "web", Kind: KindDeploy, Outcome: OutcomeRunning, Phase: PhaseSwitch, FromRelease: 1, ToRelease: 2, To: "web-2"}}
	_, err := r.d.Deploy(context.Background(), testService()) // web-3 replaces web-2; web-2 stopped, kept
	require.NoError(t, err)
	require.False(t, r.rt.find("web-2").Running)
	r.rt.calls = nil
	_, err = r.d.Deploy(context.Background(), testService()) // web-4
	require.NoError(t, err)
	require.NotNil(t, r.rt.find("web-2"), "web-2 served, and is a kept release to roll back to")
}

// Rollback to a release of three of which one container was removed: it
// runs as two, as it is, and says so.
func TestARollbackToAReleaseOfAnotherCountSaysSo(t *testing.T) {
	r := newRig(t)
	for range 2 {
		_, err := r.d.Deploy(context.Background(), replicated(3))
		require.NoError(t, err)
	}
	require.NoError(t, r.rt.Remove(context.Background(), "id-web-2-3"))
	rec, err := r.d.Rollback(context.Background(), replicated(3), 0)
	require.NoError(t, err)
	require.Contains(t, rec.Notes, "web-2 runs 2 container(s), as it did; replicas: says 3: the next deploy runs 3")
}
