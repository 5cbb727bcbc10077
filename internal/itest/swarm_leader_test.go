package itest

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
	"github.com/stretchr/testify/require"

	hswarm "github.com/handoff-dev/handoff/internal/swarm"
	"github.com/handoff-dev/handoff/internal/testhost"
)

// TestSwarmALeaderLostDuringHealthIsSurvived runs a deploy through a manager that is
// not the leader, and freezes the leader (which runs no task of the app) while the new
// release's tasks boot: the swarm has no leader for about 10 s, and the manager handoff
// talks to hangs on what it passed on to the lost one. The deploy completes through the new leader, the nodes
// that are up serve the release with no failed request, and nothing was written twice:
// the new colour was created once and never updated, the old one scaled down once.
func TestSwarmALeaderLostDuringHealthIsSurvived(t *testing.T) {
	requireSwarmFaults(t)
	a := newSwarmApp(t)
	leader := a.sw.Leader(t)
	// The app's tasks run off the leader: this is the loss of the swarm's control
	// plane; what is in flight to a task of a node that dies is lost with it
	// (TestSwarmANodeFrozenDuringADeploy, docs/swarm.md).
	a.avoid = leader
	a.firstDeploy()
	var other *testhost.Server
	var up []*testhost.Server
	for i, n := range a.sw.Nodes {
		if n == leader {
			continue
		}
		up = append(up, n)
		if other == nil && i < a.sw.Managers {
			other = n
		}
	}
	require.NotNil(t, other, "a manager that is not the leader")
	t.Logf("leader: node %d; handoff talks to node %d", leader.Index, other.Index)
	a.env = []string{"DOCKER_HOST=" + other.DockerHost}
	loads := a.load(up...)

	// The health wait counts the election too: give the release's boot and the
	// swarm's time without a leader both.
	a.startTimeout = "60s"
	a.write("v2", `, BOOT_DELAY: "6s"`)
	began := time.Now()
	done := make(chan Result, 1)
	go func() { done <- HandoffEnv(t, a.bin, a.dir, a.state, a.env, "deploy") }()
	api := other.Docker()
	WaitFor(t, 60*time.Second, "the v2 release's tasks are placed", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		tasks, err := api.TaskList(ctx, client.TaskListOptions{Filters: make(client.Filters).Add("service", "web-green").Add("desired-state", "running")})
		return err == nil && len(tasks.Items) > 0 && !slices.ContainsFunc(tasks.Items, func(t swarm.Task) bool { return t.NodeID == "" })
	})
	placed := time.Since(began)
	leader.Freeze(t)
	frozen := time.Now()
	t.Logf("leader (node %d) frozen at %s, %s into the deploy, its tasks placed", leader.Index, frozen.Format("15:04:05.000"), placed.Round(time.Millisecond))

	res := <-done
	t.Logf("deploy: %s in all, %s after the leader was frozen:\n%s%s", res.Took.Round(time.Millisecond), time.Since(frozen).Round(time.Millisecond), res.Stdout, res.Stderr)
	require.Zero(t, res.Code, "a deploy whose swarm lost its leader during the health wait: %s", res)
	a.servesOn("v2", up...)
	t.Logf("new leader: node %d", a.sw.Leader(t).Index)

	// Each colour written once in this deploy: a second write of either would have
	// left its spec as its PreviousSpec.
	m := a.sw.Manager(t)
	inspect := func(name string) swarm.Service {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		got, err := m.ServiceInspect(ctx, name, client.ServiceInspectOptions{})
		require.NoError(t, err)
		return got.Service
	}
	green, blue := inspect("web-green"), inspect("web-blue")
	require.Equal(t, "v2", envOf(green.Spec, "RELEASE"), "the new colour runs v2")
	require.Nil(t, green.PreviousSpec, "the new colour was created once and never written again")
	require.Zero(t, replicasOf(blue.Spec), "the old colour is retired")
	require.NotNil(t, blue.PreviousSpec)
	require.NotZero(t, replicasOf(*blue.PreviousSpec), "the old colour was scaled down once (a second scale-down leaves 0 as its previous spec)")
	require.Equal(t, blue.Spec.Labels[hswarm.LabelRelease], blue.PreviousSpec.Labels[hswarm.LabelRelease])

	a.noneFailed(loads, "a leader lost during the health wait: %d requests to the nodes up, %d failed")
}

func replicasOf(spec swarm.ServiceSpec) uint64 {
	if r := spec.Mode.Replicated; r != nil && r.Replicas != nil {
		return *r.Replicas
	}
	return 0
}

// envOf is the value of key in spec's container environment.
func envOf(spec swarm.ServiceSpec, key string) string {
	if cs := spec.TaskTemplate.ContainerSpec; cs != nil {
		for _, kv := range cs.Env {
			if k, v, ok := strings.Cut(kv, "="); ok && k == key {
				return v
			}
		}
	}
	return ""
}
