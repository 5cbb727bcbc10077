package deploy

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
)

// bareRuntime has the required roles of a Runtime only: an engine that
// cannot adopt, give names apart, exec or check health itself.
type bareRuntime struct{ Runtime }

// probingRuntime checks health itself (an engine whose containers this
// host cannot reach).
type probingRuntime struct {
	Runtime
	probed []string
}

func (p *probingRuntime) Probe(_ context.Context, kind HealthKind, _ HealthCheck, c Container) (bool, string) {
	p.probed = append(p.probed, string(kind)+" "+c.Name)
	return true, ""
}

// An engine without the optional roles deploys as well: nothing is
// adopted or announced, and what needs a role it lacks is refused by name.
func TestARuntimeWithoutOptionalRolesDeploys(t *testing.T) {
	r := newRig(t)
	r.d.Runtime = bareRuntime{r.rt}
	svc := testService()
	svc.Networks = []Network{{Name: "shop", Aliases: []string{"web"}}}
	_, err := r.d.Deploy(context.Background(), svc)
	require.NoError(t, err)
	require.Empty(t, r.rt.announced, "no Announcer: nothing announced")

	svc.Health = HealthCheck{Kind: HealthCmd, Command: []string{"true"}, Interval: 1, Successes: 1, StartTimeout: 1e6}
	_, err = r.d.Deploy(context.Background(), svc)
	require.ErrorIs(t, err, ErrConfig)
	require.ErrorContains(t, err, "health type cmd runs a command in the container, which this engine cannot")
	require.Empty(t, r.rt.calls[2:], "refused before anything started")
}

// An engine that probes health itself is asked instead of a check from
// this host (which would not reach a task on another node).
func TestARuntimeThatProbesIsAskedForHTTPChecks(t *testing.T) {
	r := newRig(t)
	p := &probingRuntime{Runtime: r.rt}
	r.d.Runtime = p
	svc := replicated(2)
	svc.Health = HealthCheck{Kind: HealthHTTP, Path: "/health", Interval: 1, Successes: 1, StartTimeout: 1e9, Timeout: 1e9, StatusMin: 200, StatusMax: 399}
	_, err := r.d.Deploy(context.Background(), svc)
	require.NoError(t, err)
	require.ElementsMatch(t, []string{"http web-2-1", "http web-2-2"}, p.probed)
}
