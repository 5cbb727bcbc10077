package swarm

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/deploy"
	"github.com/handoff-dev/handoff/internal/proxy/wire"
)

func TestIdleColourNeverTheOneRunning(t *testing.T) {
	blue := ColourState{Colour: Blue, Name: "web-blue", Exists: true, Release: 4, Replicas: 2}
	green := ColourState{Colour: Green, Name: "web-green", Exists: true, Release: 5}
	got, err := idleColour(ColourStates{Blue: blue, Green: green})
	require.NoError(t, err)
	require.Equal(t, Green, got.Colour, "blue runs")

	blue.Replicas, green.Replicas = 0, 3
	got, err = idleColour(ColourStates{Blue: blue, Green: green})
	require.NoError(t, err)
	require.Equal(t, Blue, got.Colour, "green runs")

	blue.Replicas = 1
	_, err = idleColour(ColourStates{Blue: blue, Green: green})
	require.ErrorContains(t, err, "both colours run (web-blue release 4, web-green release 5): an earlier deploy left them so; run handoff repair first")

	blue.Replicas, green.Replicas = 0, 0
	got, _ = idleColour(ColourStates{Blue: blue, Green: green})
	require.Equal(t, Blue, got.Colour, "neither runs: the newest release (5, green) is kept for a rollback")
	got, _ = idleColour(ColourStates{Blue: ColourState{Colour: Blue}, Green: ColourState{Colour: Green}})
	require.Equal(t, Blue, got.Colour, "a first deploy goes to blue")
}

func TestHealthOfIsTheTasksHealthcheck(t *testing.T) {
	_, err := healthOf(deploy.Service{})
	require.ErrorIs(t, err, deploy.ErrConfig)
	h, err := healthOf(deploy.Service{Health: deploy.HealthCheck{Command: []string{"/app", "check"}, Interval: 1e9, Successes: 2}})
	require.NoError(t, err)
	require.Equal(t, HealthCheck{Command: []string{"/app", "check"}, Interval: 1e9, Retries: 3}, h)
}

func TestNextGenerationCountsOnTheLockRecord(t *testing.T) {
	f := newFakeSwarm()
	a, b := NewStore(f), NewStore(f)
	ctx := context.Background()
	g1, err := a.NextGeneration(ctx, "web")
	require.NoError(t, err)
	g2, err := b.NextGeneration(ctx, "web")
	require.NoError(t, err)
	require.Equal(t, []uint64{1, 2}, []uint64{g1, g2}, "two managers, one counter")
	other, err := a.NextGeneration(ctx, "api")
	require.NoError(t, err)
	require.Equal(t, uint64(1), other, "one counter per service")

	// Another manager writes between the read and the write: decided again.
	f.beforeWrite = func() {
		f.beforeWrite = nil
		_, _ = b.NextGeneration(ctx, "web")
	}
	g4, err := a.NextGeneration(ctx, "web")
	require.NoError(t, err)
	require.Equal(t, uint64(4), g4)
}

func TestJobNamesFitSwarmsLimit(t *testing.T) {
	require.Equal(t, "handoff-switch-web-42", jobName("switch", "web", 42))
	long := jobName("status", "a-service-whose-name-is-long-enough-to-overflow", 123456789012)
	require.LessOrEqual(t, len(long), 63, long)
	require.True(t, swarmName.MatchString(long), long)
	require.NotEqual(t, long, jobName("status", "a-service-whose-name-is-long-enough-to-overflow-too", 123456789012), "a hash of the whole name")
}

func TestTheNewestSwitchIsTheRoute(t *testing.T) {
	at := func(gen uint64, endpoint string) *wire.ServiceState {
		return &wire.ServiceState{Generation: gen, Route: []wire.BackendState{{Release: "web-" + endpoint, Weight: 100, Endpoints: []wire.EndpointState{{Endpoint: endpoint}}}}}
	}
	states := []nodeState{
		{node: NodeResult{Hostname: "hn1"}, state: at(7, "tasks.web-blue:8000")},
		{node: NodeResult{Hostname: "hn2"}, state: at(8, "tasks.web-green:8000")},
		{node: NodeResult{Hostname: "hn3"}}, // joined since: no route yet
	}
	require.Equal(t, []string{"tasks.web-green:8000"}, newestRoute(states).Endpoints())
	require.Empty(t, newestRoute([]nodeState{{node: NodeResult{Hostname: "hn1"}}}), "a fresh swarm: no route yet")

	// Repair's question: who serves another route than the newest.
	lag := behind(states, newestRoute(states))
	require.Len(t, lag, 2, "%q", lag)
	require.Contains(t, lag[0], "hn1 serves an older switch (generation 7: ")
	require.Contains(t, lag[0], "tasks.web-blue:8000")
	require.Equal(t, "the proxy on hn3 has no route for the service", lag[1])
	states[0].state = at(9, "tasks.web-green:8000")
	states = states[:2]
	require.Empty(t, behind(states, newestRoute(states)), "every node on the same release, whatever its generation")
}
