package swarm

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/testhost"
)

const testDigest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func testRelease(number int) Release {
	return Release{Service: "api", Colour: Green, Number: number, Image: "reg/api@" + testDigest, Replicas: 3,
		Health:          HealthCheck{Command: []string{"/app", "check"}, Interval: time.Second, Timeout: 2 * time.Second, Retries: 3, StartPeriod: 5 * time.Second},
		StopGracePeriod: 40 * time.Second, Env: []string{"A=1"}, Constraints: []string{"node.labels.web==true"}, MaxPerNode: 1}
}

func TestColourName(t *testing.T) {
	name, err := ColourName("api", Blue)
	require.NoError(t, err)
	require.Equal(t, "api-blue", name)
	require.Equal(t, Green, Blue.Other())
	require.Equal(t, Blue, Green.Other())
	_, err = ColourName("shop.api", Green)
	require.EqualError(t, err, `service "shop.api" cannot run on a swarm: its colour service shop.api-green must be at most 63 letters, digits, '-' and '_'; rename it`)
}

func TestColourSpec(t *testing.T) {
	spec, err := ColourSpec(testRelease(7))
	require.NoError(t, err)
	labels := map[string]string{LabelService: "api", LabelRelease: "7", LabelColour: "green"}
	require.Equal(t, "api-green", spec.Name)
	require.Equal(t, labels, spec.Labels)
	cs := spec.TaskTemplate.ContainerSpec
	require.Equal(t, labels, cs.Labels, "on the container too: a task says its release")
	require.Equal(t, "reg/api@"+testDigest, cs.Image)
	require.Equal(t, []string{"CMD", "/app", "check"}, cs.Healthcheck.Test)
	require.Equal(t, time.Second, cs.Healthcheck.Interval)
	require.Equal(t, 2*time.Second, cs.Healthcheck.Timeout)
	require.Equal(t, 5*time.Second, cs.Healthcheck.StartPeriod)
	require.Equal(t, 3, cs.Healthcheck.Retries)
	require.Equal(t, 40*time.Second, *cs.StopGracePeriod)
	require.Equal(t, []string{"A=1"}, cs.Env)
	require.Equal(t, uint64(3), *spec.Mode.Replicated.Replicas)
	require.Equal(t, swarm.ResolutionModeDNSRR, spec.EndpointSpec.Mode)
	require.Equal(t, []swarm.NetworkAttachmentConfig{{Target: "handoff"}}, spec.TaskTemplate.Networks)
	require.Equal(t, &swarm.Placement{Constraints: []string{"node.labels.web==true"}, MaxReplicas: 1}, spec.TaskTemplate.Placement)
	require.Equal(t, swarm.RestartPolicyConditionAny, spec.TaskTemplate.RestartPolicy.Condition)
	require.Equal(t, &swarm.UpdateConfig{Parallelism: 0, Order: swarm.UpdateOrderStopFirst, FailureAction: swarm.UpdateFailureActionContinue}, spec.UpdateConfig,
		"a write to a colour with tasks: all at once, never paused half way")

	r := testRelease(7)
	r.Network = "apps"
	spec, err = ColourSpec(r)
	require.NoError(t, err)
	require.Equal(t, []swarm.NetworkAttachmentConfig{{Target: "apps"}}, spec.TaskTemplate.Networks)

	r = testRelease(7)
	r.Health = HealthCheck{}
	_, err = ColourSpec(r)
	require.EqualError(t, err, "release 7 of api: a health check command is required on a swarm (a task joins DNS only once healthy, and no check from this host reaches other nodes); set health.command")

	r = testRelease(7)
	r.Image = "reg/api:1.4"
	_, err = ColourSpec(r)
	require.EqualError(t, err, `release 7 of api: image "reg/api:1.4" is not pinned by its digest (name@sha256:…); resolve its digest first`)
}

// authSwarm is a fakeSwarm that keeps the registry auth of each write.
type authSwarm struct {
	*fakeSwarm
	auths []string
}

func (a *authSwarm) ServiceCreate(ctx context.Context, opts client.ServiceCreateOptions) (client.ServiceCreateResult, error) {
	a.auths = append(a.auths, opts.EncodedRegistryAuth)
	return a.fakeSwarm.ServiceCreate(ctx, opts)
}

func (a *authSwarm) ServiceUpdate(ctx context.Context, id string, opts client.ServiceUpdateOptions) (client.ServiceUpdateResult, error) {
	a.auths = append(a.auths, opts.EncodedRegistryAuth)
	return a.fakeSwarm.ServiceUpdate(ctx, id, opts)
}

func mustSpec(t *testing.T, r Release) swarm.ServiceSpec {
	t.Helper()
	spec, err := ColourSpec(r)
	require.NoError(t, err)
	return spec
}

func TestStartCreatesThenUpdatesTheIdleColour(t *testing.T) {
	api := &authSwarm{fakeSwarm: newFakeSwarm()}
	c := &Colours{API: api}
	ctx := context.Background()
	states, err := c.Inspect(ctx, "api")
	require.NoError(t, err)
	require.Equal(t, ColourStates{Blue: ColourState{Colour: Blue, Name: "api-blue"}, Green: ColourState{Colour: Green, Name: "api-green"}}, states)

	require.NoError(t, c.Start(ctx, mustSpec(t, testRelease(7)), "auth7"))
	r := testRelease(9)
	r.Image = "reg/api@sha256:" + strings.Repeat("9", 64)
	require.NoError(t, c.Start(ctx, mustSpec(t, r), "auth9"))
	require.Equal(t, []string{"auth7", "auth9"}, api.auths, "the auth sent with every write")
	states, err = c.Inspect(ctx, "api")
	require.NoError(t, err)
	green := states.Of(Green)
	require.True(t, green.Exists)
	require.Equal(t, 9, green.Release)
	require.Equal(t, r.Image, green.Image)
	require.Equal(t, uint64(3), green.Replicas)
	require.False(t, states.Of(Blue).Exists)
}

func TestStartAtAStaleVersionDecidesAgain(t *testing.T) {
	api := &authSwarm{fakeSwarm: newFakeSwarm()}
	c := &Colours{API: api}
	ctx := context.Background()
	require.NoError(t, c.Start(ctx, mustSpec(t, testRelease(7)), "a"))

	// Someone scales the idle colour between Start's read and its write: the release
	// is the one read, so Start writes again at the new version.
	api.beforeWrite = func() {
		require.NoError(t, (&Colours{API: api.fakeSwarm}).Scale(ctx, "api-green", 0, ""))
	}
	require.NoError(t, c.Start(ctx, mustSpec(t, testRelease(8)), "b"))
	require.Equal(t, 1, api.stale)
	states, err := c.Inspect(ctx, "api")
	require.NoError(t, err)
	require.Equal(t, 8, states.Green.Release)
	require.Equal(t, uint64(3), states.Green.Replicas)

	// Another deploy writes release 10 meanwhile: Start stops and names it.
	api.beforeWrite = func() {
		require.NoError(t, (&Colours{API: api.fakeSwarm}).Start(ctx, mustSpec(t, testRelease(10)), ""))
	}
	err = c.Start(ctx, mustSpec(t, testRelease(9)), "c")
	require.EqualError(t, err, "start release 9 in api-green: another deploy wrote release 10 to it meanwhile; left as it is, nothing written")
	states, err = c.Inspect(ctx, "api")
	require.NoError(t, err)
	require.Equal(t, 10, states.Green.Release)
}

func TestStartRefusesAServiceNotHandoffs(t *testing.T) {
	api := newFakeSwarm()
	ctx := context.Background()
	zero := uint64(0)
	_, err := api.ServiceCreate(ctx, client.ServiceCreateOptions{Spec: swarm.ServiceSpec{Annotations: swarm.Annotations{Name: "api-green"},
		Mode: swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: &zero}}}})
	require.NoError(t, err)
	c := &Colours{API: api}
	err = c.Start(ctx, mustSpec(t, testRelease(7)), "")
	require.EqualError(t, err, `start release 7 in api-green: service api-green is not handoff's colour of api (label handoff.service=""); remove or rename it`)
	_, err = c.Inspect(ctx, "api")
	require.ErrorContains(t, err, "is not handoff's colour of api")
}

func TestScaleKeepsTheSpec(t *testing.T) {
	api := &authSwarm{fakeSwarm: newFakeSwarm()}
	c := &Colours{API: api}
	ctx := context.Background()
	require.NoError(t, c.Start(ctx, mustSpec(t, testRelease(7)), "a"))
	before := api.services["api-green"].Spec

	require.NoError(t, c.Scale(ctx, "api-green", 0, "b"))
	after := api.services["api-green"].Spec
	require.Equal(t, uint64(0), *after.Mode.Replicated.Replicas)
	after.Mode = before.Mode
	require.Equal(t, before, after, "only the replicas change")

	require.NoError(t, c.Scale(ctx, "api-green", 3, "c"))
	require.Equal(t, uint64(3), *api.services["api-green"].Spec.Mode.Replicated.Replicas)
	require.Equal(t, []string{"a", "b", "c"}, api.auths)

	require.NoError(t, c.Scale(ctx, "api-blue", 0, ""), "a colour never made is retired already")
	require.EqualError(t, c.Scale(ctx, "api-blue", 2, ""), "scale api-blue to 2: there is no such service; deploy first")
}

// swarmServer is a test server whose engine is a one-node swarm with an attachable
// overlay "handoff", and the test app pushed to a registry: its pinned reference.
func swarmServer(t *testing.T) (*testhost.Server, string) {
	t.Helper()
	start := time.Now()
	server := oneNodeSwarm(t)
	ctx := context.Background()
	_, err := server.Docker().NetworkCreate(ctx, DefaultNetwork, client.NetworkCreateOptions{Driver: "overlay", Attachable: true})
	require.NoError(t, err)
	t.Cleanup(func() {
		server.Docker().NetworkRemove(context.Background(), DefaultNetwork, client.NetworkRemoveOptions{})
	})
	// A digest is a registry's: pushed there, the image has one, as a user's would.
	registry := testhost.StartRegistry(t, server.Net)
	server.BuildTestImage(t, "hoff-testapp:1")
	ref := registry.Push(t, server, "hoff-testapp:1")
	img, err := server.Docker().ImageInspect(ctx, ref)
	require.NoError(t, err)
	require.NotEmpty(t, img.RepoDigests)
	t.Logf("one-node swarm, overlay and pushed image ready in %s", time.Since(start).Round(time.Millisecond))
	return server, img.RepoDigests[0]
}

// TestSwarmColourServicesOnOneNode starts colour services on a one-node swarm and waits
// for their tasks as a deploy does.
func TestSwarmColourServicesOnOneNode(t *testing.T) {
	testhost.RequireSwarmRun(t) // a dockerd on vfs building and pushing images: not beside the load tests
	server, image := swarmServer(t)
	api := server.Docker()
	ctx := context.Background()
	colours := &Colours{API: api}
	nodes, err := api.NodeList(ctx, client.NodeListOptions{})
	require.NoError(t, err)
	require.Len(t, nodes.Items, 1)
	hostname := nodes.Items[0].Description.Hostname
	release := func(service string, number int, replicas uint64, env ...string) swarm.ServiceSpec {
		spec := mustSpec(t, Release{Service: service, Colour: Green, Number: number, Image: image, Replicas: replicas, Env: env,
			Health:          HealthCheck{Command: []string{"/testapp", "check"}, Interval: 250 * time.Millisecond, Timeout: 2 * time.Second, Retries: 2},
			StopGracePeriod: 2 * time.Second})
		// Swarm waits 5 s before a restart unless told: the failing release's test
		// would wait for three.
		delay := 100 * time.Millisecond
		spec.TaskTemplate.RestartPolicy.Delay = &delay
		return spec
	}
	removeAfter := func(name string) {
		t.Cleanup(func() { api.ServiceRemove(context.Background(), name, client.ServiceRemoveOptions{}) })
	}

	t.Run("two replicas become ready with their addresses on the overlay", func(t *testing.T) {
		removeAfter("web-green")
		t0 := time.Now()
		require.NoError(t, colours.Start(ctx, release("web", 1, 2), ""))
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		tally, err := Wait(wctx, api, WaitOptions{Service: "web-green", Release: 1, Replicas: 2, Interval: 100 * time.Millisecond,
			Progress: func(tl Tally) { t.Logf("%s: %s", time.Since(t0).Round(time.Millisecond), tl.Progress()) }})
		require.NoError(t, err)
		require.Equal(t, Ready, tally.Verdict)
		require.Len(t, tally.IPs, 2)
		overlay, err := api.NetworkInspect(ctx, DefaultNetwork, client.NetworkInspectOptions{})
		require.NoError(t, err)
		subnet := overlay.Network.IPAM.Config[0].Subnet
		for _, ip := range tally.IPs {
			require.True(t, subnet.Contains(ip), "%s in the overlay's %s", ip, subnet)
		}
		t.Logf("2 tasks healthy in %s at %v", time.Since(t0).Round(time.Millisecond), tally.IPs)
		states, err := colours.Inspect(ctx, "web")
		require.NoError(t, err)
		require.False(t, states.Green.Created.IsZero())
		require.Equal(t, ColourState{Colour: Green, Name: "web-green", Exists: true, ID: states.Green.ID, Version: states.Green.Version,
			Release: 1, Image: image, Replicas: 2, Labels: map[string]string{LabelService: "web", LabelRelease: "1", LabelColour: "green"},
			Created: states.Green.Created, Updated: states.Green.Updated}, states.Green)
		require.False(t, states.Blue.Exists)

		t0 = time.Now()
		require.NoError(t, colours.Scale(ctx, "web-green", 0, ""))
		require.Eventually(t, func() bool {
			tasks, err := api.TaskList(ctx, client.TaskListOptions{Filters: make(client.Filters).Add("service", "web-green").Add("desired-state", "running")})
			return err == nil && len(tasks.Items) == 0
		}, 20*time.Second, 100*time.Millisecond)
		require.Eventually(t, func() bool {
			cs, err := api.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: make(client.Filters).Add("label", LabelService+"=web")})
			return err == nil && len(cs.Items) == 0
		}, 20*time.Second, 100*time.Millisecond, "its containers gone")
		t.Logf("scaled to 0: its tasks gone in %s", time.Since(t0).Round(time.Millisecond))
	})

	t.Run("a release whose check fails is failed naming the node", func(t *testing.T) {
		removeAfter("sick-green")
		t0 := time.Now()
		require.NoError(t, colours.Start(ctx, release("sick", 1, 1, "HEALTH_STATUS=500"), ""))
		wctx, cancel := context.WithTimeout(ctx, 45*time.Second) // 3 failures take 15 s, past 20 s when the machine is loaded
		defer cancel()
		tally, err := Wait(wctx, api, WaitOptions{Service: "sick-green", Release: 1, Replicas: 1, Interval: 100 * time.Millisecond})
		require.ErrorIs(t, err, ErrReleaseFailed)
		require.Equal(t, Failed, tally.Verdict)
		require.ErrorContains(t, err, "sick-green release 1: 3 tasks failed (on "+hostname+" 3); last on "+hostname+": ")
		// testapp drains on SIGTERM: stopped as unhealthy, it exits 0.
		require.ErrorContains(t, err, "exited 0: stopped as unhealthy")
		t.Logf("failed in %s: %v", time.Since(t0).Round(time.Millisecond), err)
	})
}

// oneNodeSwarm is a test server whose engine is a swarm of one node, itself its manager;
// the swarm is left before the engine stops (a swarm left behind would slow its stop).
func oneNodeSwarm(t *testing.T) *testhost.Server {
	t.Helper()
	server := testhost.StartServer(t, testhost.ServerOptions{})
	_, err := server.Docker().SwarmInit(context.Background(), client.SwarmInitOptions{ListenAddr: server.IP + ":2377", AdvertiseAddr: server.IP + ":2377"})
	require.NoError(t, err)
	t.Cleanup(func() { server.Docker().SwarmLeave(context.Background(), client.SwarmLeaveOptions{Force: true}) })
	return server
}
