package deploy

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

func replicated(n int) Service {
	svc := testService()
	svc.Replicas = n
	return svc
}

// sorted is calls in a stable order: a release's containers are stopped
// all at once, in no set order.
func sorted(calls []string) []string {
	out := slices.Clone(calls)
	slices.Sort(out)
	return out
}

// A release of three is started whole, waited on whole, and switched to in
// one change; the release it replaces is drained and stopped whole.
func TestAReleaseOfThreeIsSwitchedToAtOnce(t *testing.T) {
	r := newRig(t)
	rec, err := r.d.Deploy(context.Background(), replicated(3))
	require.NoError(t, err)
	require.Equal(t, []string{"run web-2-1", "run web-2-2", "run web-2-3", "stop web-1"}, sorted(r.rt.calls))
	require.Equal(t, []string{"127.0.0.1:30001 → 127.0.0.1:40201,127.0.0.1:40202,127.0.0.1:40203"}, r.proxy.switches, "one change")
	require.Equal(t, "web-2", rec.To)
	require.Equal(t, []string{"web-2-1", "web-2-2", "web-2-3"}, rec.ToContainers)
	require.Equal(t, []string{"127.0.0.1:40201", "127.0.0.1:40202", "127.0.0.1:40203"}, rec.NewEndpoints)
	require.Equal(t, "127.0.0.1:40201", rec.NewUpstream)

	r.rt.calls = nil
	rec, err = r.d.Deploy(context.Background(), replicated(3))
	require.NoError(t, err)
	require.Equal(t, []string{"run web-3-1", "run web-3-2", "run web-3-3", "stop web-2-1", "stop web-2-2", "stop web-2-3"}, sorted(r.rt.calls))
	require.Equal(t, []string{"web-2-1", "web-2-2", "web-2-3"}, rec.FromContainers)
	require.Equal(t, []string{"127.0.0.1:40201", "127.0.0.1:40202", "127.0.0.1:40203"}, sorted(r.proxy.retired[1:]), "every old endpoint retired")
	require.Equal(t, 3, len(r.proxy.route.Endpoints()))
}

// One replica that fails its check fails the release: none of it is
// switched to, all of it is removed, and the old release serves on.
func TestOneUnhealthyReplicaFailsTheWholeRelease(t *testing.T) {
	r := newRig(t)
	r.rt.healthy = func(c Container) Container {
		c.Health = "healthy"
		if c.Name == "web-2-2" {
			c.Health = "unhealthy"
		}
		return c
	}
	_, err := r.d.Deploy(context.Background(), replicated(3))
	require.ErrorIs(t, err, ErrUnhealthy)
	require.ErrorContains(t, err, "web-2-2: Docker HEALTHCHECK reports unhealthy")
	require.ErrorContains(t, err, "web-1 still serving fake proxy; web-2 not in service")
	require.Empty(t, r.proxy.switches)
	require.Equal(t, []string{"remove web-2-1", "remove web-2-2", "remove web-2-3", "run web-2-1", "run web-2-2", "run web-2-3"}, sorted(r.rt.calls))
	require.True(t, r.rt.find("web-1").Running)
}

// A rollback starts the kept release's containers again, all of them.
func TestARollbackPutsBackEveryReplica(t *testing.T) {
	r := newRig(t)
	for range 2 {
		_, err := r.d.Deploy(context.Background(), replicated(3))
		require.NoError(t, err)
	}
	r.rt.calls = nil
	rec, err := r.d.Rollback(context.Background(), replicated(3), 0)
	require.NoError(t, err)
	require.Equal(t, "web-2", rec.To)
	require.Equal(t, []string{"start web-2-1", "start web-2-2", "start web-2-3", "stop web-3-1", "stop web-3-2", "stop web-3-3"}, sorted(r.rt.calls))
	require.ElementsMatch(t, []string{"127.0.0.1:40201", "127.0.0.1:40202", "127.0.0.1:40203"}, r.proxy.route.Endpoints(), "pinned ports: the same endpoints as before")
}

// keep counts releases, not containers: a release of three is kept or
// removed whole.
func TestKeepCountsReleases(t *testing.T) {
	r := newRig(t)
	svc := replicated(2)
	svc.Keep = 1
	for range 3 {
		_, err := r.d.Deploy(context.Background(), svc)
		require.NoError(t, err)
	}
	var left []string
	for _, c := range r.rt.containers {
		left = append(left, c.Name)
	}
	require.ElementsMatch(t, []string{"web-3-1", "web-3-2", "web-4-1", "web-4-2"}, left)
}

// A route of two endpoints, each served by a container someone else
// started, is adopted whole: both are retired once the new release serves.
func TestARouteOfTwoContainersIsAdoptedWhole(t *testing.T) {
	r := newRig(t)
	r.rt.containers = nil
	r.rt.add(Container{ID: "id-a", Name: "app1", Running: true, Port: 8000, Upstream: "127.0.0.1:8001"})
	r.rt.add(Container{ID: "id-b", Name: "app2", Running: true, Port: 8000, Upstream: "127.0.0.1:8002"})
	r.proxy.route = Only("", "127.0.0.1:8001", "127.0.0.1:8002")
	rec, err := r.d.Deploy(context.Background(), replicated(2))
	require.NoError(t, err)
	require.Equal(t, []string{"app1", "app2"}, rec.FromContainers)
	require.Equal(t, []string{"run web-1-1", "run web-1-2", "stop app1", "stop app2"}, sorted(r.rt.calls))
	require.Contains(t, strings.Join(rec.Notes, "\n"), "adopting app1, app2 (serving 127.0.0.1:8001, 127.0.0.1:8002)")

	// The adopted pair is a release to roll back to.
	r.rt.calls = nil
	_, err = r.d.Rollback(context.Background(), replicated(2), 0)
	require.NoError(t, err)
	require.Equal(t, []string{"start app1", "start app2", "stop web-1-1", "stop web-1-2"}, sorted(r.rt.calls))
}

// A route of one endpoint of which only part is found is not adopted: it
// is replaced but nothing is stopped.
func TestARouteOnlyPartlyServedIsNotAdopted(t *testing.T) {
	r := newRig(t)
	r.rt.containers = nil
	r.rt.add(Container{ID: "id-a", Name: "app1", Running: true, Port: 8000, Upstream: "127.0.0.1:8001"})
	r.proxy.route = Only("", "127.0.0.1:8001", "127.0.0.1:8002")
	rec, err := r.d.Deploy(context.Background(), testService())
	require.NoError(t, err)
	require.Equal(t, []string{"run web-1"}, r.rt.calls)
	require.Contains(t, strings.Join(rec.Notes, "\n"), "no container found serving 127.0.0.1:8001, 127.0.0.1:8002")
}

// Status shows every replica of the live release, with what is in flight
// on each.
func TestStatusShowsEveryReplica(t *testing.T) {
	r := newRig(t)
	_, err := r.d.Deploy(context.Background(), replicated(2))
	require.NoError(t, err)
	st, err := r.d.Status(context.Background(), replicated(2))
	require.NoError(t, err)
	require.True(t, st.Agree, st.Problem)
	require.Len(t, st.Replicas, 2)
	require.Equal(t, "web-2-1", st.Replicas[0].Name)
	require.Equal(t, 1, st.Replicas[0].Replica)
	require.Equal(t, "web-2-2", st.Replicas[1].Name)
	require.NotNil(t, st.Replicas[1].InFlight)
	require.Equal(t, []string{"127.0.0.1:40201", "127.0.0.1:40202"}, st.Endpoints)
}

// A deploy killed while it started a release of three leaves part of it:
// the next deploy removes what it left, and replaces the live release.
func TestADeployAfterOneKilledWhileStartingReplicasRemovesThem(t *testing.T) {
	r := newRig(t)
	r.rt.add(Container{ID: "id-web-2-1", Name: "web-2-1", Service: "web", Release: 2, Replica: 1, Running: true, Upstream: "127.0.0.1:30021"})
	r.rt.add(Container{ID: "id-web-2-2", Name: "web-2-2", Service: "web", Release: 2, Replica: 2, Upstream: "127.0.0.1:30022"})
	r.history.recs = []Record{{ID: "killed", Service: "web", Kind: KindDeploy, Outcome: OutcomeRunning, Phase: PhaseStart, ToRelease: 2, To: "web-2"}}
	rec, err := r.d.Deploy(context.Background(), replicated(3))
	require.NoError(t, err)
	require.Equal(t, []string{"remove web-2-1", "remove web-2-2", "run web-3-1", "run web-3-2", "run web-3-3", "stop web-1"}, sorted(r.rt.calls))
	require.Equal(t, PhaseRecover, rec.Phases[0].Name)
	require.Equal(t, "web-3", rec.To)
}

// A deploy killed after its switch to three replicas, in the drain, left
// the old release running: the next deploy stops it, and replaces the three.
func TestADeployAfterOneKilledInTheDrainOfReplicasStopsTheOld(t *testing.T) {
	r := newRig(t)
	for i := 1; i <= 2; i++ {
		r.rt.add(Container{ID: "id-web-2-" + itoa(i), Name: "web-2-" + itoa(i), Service: "web", Release: 2, Replica: i, Running: true, Upstream: "127.0.0.1:3002" + itoa(i)})
	}
	r.proxy.route = Only("", "127.0.0.1:30021", "127.0.0.1:30022")
	r.history.recs = []Record{{ID: "killed", Service: "web", Kind: KindDeploy, Outcome: OutcomeRunning, Phase: PhaseDrain, ToRelease: 2, To: "web-2", Switched: true}}
	st, err := r.d.Status(context.Background(), replicated(2))
	require.NoError(t, err)
	require.Equal(t, "web-2-1", st.Live.Name)
	require.Contains(t, st.Problem, "interrupted in phase drain")

	rec, err := r.d.Deploy(context.Background(), replicated(2))
	require.NoError(t, err)
	require.Equal(t, []string{"run web-3-1", "run web-3-2", "stop web-1", "stop web-2-1", "stop web-2-2"}, sorted(r.rt.calls))
	require.Contains(t, rec.Notes, "stopping web-1: an earlier release left running after its switch")
	require.Equal(t, []string{"web-2-1", "web-2-2"}, rec.FromContainers)
}

func itoa(i int) string { return strconv.Itoa(i) }

// A replica that crashed and is restarting when a deploy starts is still
// the live release's: the deploy replaces the whole release, and status
// says which replica is down.
func TestADeployWhileAReplicaIsDownReplacesTheWholeRelease(t *testing.T) {
	r := newRig(t)
	_, err := r.d.Deploy(context.Background(), replicated(3))
	require.NoError(t, err)
	down := r.rt.find("web-2-2")
	down.Running, down.Restarting = false, true

	st, err := r.d.Status(context.Background(), replicated(3))
	require.NoError(t, err)
	require.True(t, st.Agree, "the proxy points at the live release, which serves on the rest")
	require.Equal(t, "web-2-2 of web-2 not running (its restart policy may bring it back; `handoff repair web` starts it)", st.Problem)
	require.Len(t, st.Replicas, 3)

	r.rt.calls = nil
	rec, err := r.d.Deploy(context.Background(), replicated(3))
	require.NoError(t, err)
	require.Equal(t, []string{"run web-3-1", "run web-3-2", "run web-3-3", "stop web-2-1", "stop web-2-2", "stop web-2-3"}, sorted(r.rt.calls))
	require.Equal(t, "web-2", rec.From)
}

// A compose service's containers are named as compose names them, one
// number each (shop-web-201, shop-web-202), and still make one release.
func TestComposeReplicasAreNamedAsComposeNamesThem(t *testing.T) {
	svc := replicated(2)
	svc.ContainerPrefix, svc.ComposeNames = "shop-web", true
	require.Equal(t, "shop-web-201", svc.ContainerName(2, 1))
	require.Equal(t, "shop-web-2", svc.ContainerName(2, 0), "a release of one keeps its name")
	require.Equal(t, "web-2-1", replicated(2).ContainerName(2, 1))
	require.Equal(t, 201, ContainerNumber(2, 1))

	for _, c := range []struct {
		c    Container
		want string
	}{
		{Container{Name: "shop-web-1002", Release: 10, Replica: 2}, "shop-web-10"},
		{Container{Name: "web-10-1", Release: 10, Replica: 1}, "web-10"},
		{Container{Name: "web-4", Release: 4}, "web-4"},
		{Container{Name: "app1"}, "app1"},
	} {
		require.Equal(t, c.want, releaseName(c.c), c.c.Name)
	}

	r := newRig(t)
	_, err := r.d.Deploy(context.Background(), svc)
	require.NoError(t, err)
	require.Equal(t, []string{"run shop-web-201", "run shop-web-202", "stop web-1"}, sorted(r.rt.calls))
	rels := groupReleases(r.rt.containersOf("web"))
	require.Equal(t, "shop-web-2", rels[0].Name)
	require.Len(t, rels[0].Containers, 2)
}

// A route to a name every container of a compose service answers to
// (`reverse_proxy web:8000`) reaches one of them: the whole service, as
// its labels name it, is adopted, and retired once the new release serves.
func TestAServiceReachedByOneNameIsAdoptedWhole(t *testing.T) {
	r := newRig(t)
	r.rt.containers = nil
	r.rt.add(Container{ID: "id-1", Name: "web-byhand-1", Running: true, Port: 8000, Upstream: "127.0.0.1:8001"})
	r.rt.add(Container{ID: "id-2", Name: "web-byhand-2", Running: true, Port: 8000, Upstream: "127.0.0.1:8002"})
	r.proxy.route = Only("", "127.0.0.1:8001") // the name reached the first
	svc := replicated(2)
	svc.Adopt = map[string]string{"app": "web"}
	rec, err := r.d.Deploy(context.Background(), svc)
	require.NoError(t, err)
	require.Equal(t, []string{"web-byhand-1", "web-byhand-2"}, rec.FromContainers)
	require.Equal(t, []string{"run web-1-1", "run web-1-2", "stop web-byhand-1", "stop web-byhand-2"}, sorted(r.rt.calls))
}

type progressLog struct {
	quietReporter
	lines []string
}

func (p *progressLog) Progress(_, state, _ string) { p.lines = append(p.lines, state) }

// The health waits of a release's replicas report in one line, each
// replica's state in it, not a line of each in turn.
func TestReplicasReportTheirHealthInOneLine(t *testing.T) {
	log := &progressLog{}
	p := &replicaProgress{Reporter: log, names: []string{"web-4-1", "web-4-2"}, states: make([]string, 2)}
	p.of(1).Progress(PhaseHealth, "not answering yet", "check 1")
	p.of(0).Progress(PhaseHealth, "passing", "check 1")
	require.Equal(t, []string{
		"web-4-1 starting; web-4-2 not answering yet",
		"web-4-1 passing; web-4-2 not answering yet",
	}, log.lines)
}

// A replica that passes its check early and crashes while a slower one
// boots fails the release: nothing is switched to it.
func TestAReplicaThatCrashesAfterPassingFailsTheRelease(t *testing.T) {
	r := newRig(t)
	var mu sync.Mutex
	inspects := map[string]int{}
	r.rt.healthy = func(c Container) Container {
		mu.Lock()
		defer mu.Unlock()
		inspects[c.Name]++
		c.Health = "healthy"
		switch {
		case c.Name == "web-2-2" && inspects[c.Name] < 5:
			c.Health = "starting" // slow to boot
		case c.Name == "web-2-1" && inspects[c.Name] > 2: // (1: its Run, 2: its passing check)
			c.RestartCount++ // passed, then crashed and was brought back
		}
		return c
	}
	_, err := r.d.Deploy(context.Background(), replicated(2))
	require.ErrorIs(t, err, ErrUnhealthy)
	require.ErrorContains(t, err, "web-2-1: passed its check, then restarted")
	require.Empty(t, r.proxy.switches)
}

// Repair starts again a replica of the live release that stopped for good
// (stopped by hand, or its restart policy gave up); the rest serves on.
func TestRepairStartsAStoppedReplicaOfTheLiveRelease(t *testing.T) {
	r := newRig(t)
	_, err := r.d.Deploy(context.Background(), replicated(2))
	require.NoError(t, err)
	r.rt.find("web-2-2").Running = false
	r.rt.calls = nil
	rec, err := r.d.Repair(context.Background(), replicated(2))
	require.NoError(t, err)
	require.Equal(t, []string{"start web-2-2"}, r.rt.calls)
	require.True(t, rec.Switched)
	require.Contains(t, rec.Notes, "fake proxy points at web-2, which serves on part of it: starting web-2-2 again")
	require.Len(t, r.proxy.switches, 1, "the route is not touched")
}
