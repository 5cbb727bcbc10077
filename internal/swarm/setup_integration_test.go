package swarm

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"
	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/testhost"
)

// TestSwarmSetupOnOneNode sets a one-node swarm up for handoff: the overlay, and a real
// handoff proxy as a global service that answers on its control socket in the
// node-local volume; a second setup changes nothing, another image needs --update.
func TestSwarmSetupOnOneNode(t *testing.T) {
	testhost.RequireSwarmRun(t) // a dockerd on vfs building and pushing images: not beside the load tests
	server := oneNodeSwarm(t)
	ctx := context.Background()
	// From a registry, as a swarm's nodes pull it: an image only on one engine is
	// looked for on Docker Hub by the others (and by Swarm to pin its digest).
	registry := testhost.StartRegistry(t, server.Net)
	server.BuildHandoffImage(t, "handoff-proxy:one")
	server.BuildHandoffImage(t, "handoff-proxy:two")
	one, two := registry.Push(t, server, "handoff-proxy:one"), registry.Push(t, server, "handoff-proxy:two")
	// The users' image (deploy/Dockerfile.proxy), its entrypoint theirs: the service
	// and its jobs must set their own command.
	img, err := server.Docker().ImageInspect(ctx, "handoff-proxy:one")
	require.NoError(t, err)
	require.Equal(t, []string{"/handoff", "proxy", "--socket", ProxySocket, "--state-file", "/var/lib/handoff/proxy.json", "--pid-file", "/run/handoff/proxy.pid"}, img.Config.Entrypoint)

	o := SetupOptions{ProxyImage: one, Wait: time.Minute}
	t0 := time.Now()
	res, err := Setup(ctx, server.Docker(), o)
	require.NoError(t, err)
	took := time.Since(t0)
	require.True(t, res.NetworkCreated)
	require.Equal(t, "created", res.Proxy)
	require.Len(t, res.Nodes, 1)
	require.Equal(t, "running", res.Nodes[0].Proxy)

	// The proxy answers on its socket: what a switch job on that node will talk to.
	out := dockerOn(t, server, "ps", "-q", "--filter", "label=com.docker.swarm.service.name="+ProxyService)
	require.NotEmpty(t, out)
	status := dockerOn(t, server, "exec", strings.Fields(out)[0], "/handoff", "proxy", "status", "--socket", ProxySocket)
	t.Logf("setup in %s; the proxy's status: %s", took.Round(time.Millisecond), strings.TrimSpace(status))

	again, err := Setup(ctx, server.Docker(), o)
	require.NoError(t, err)
	require.Equal(t, "unchanged", again.Proxy)
	require.False(t, again.NetworkCreated)

	o.ProxyImage = two
	_, err = Setup(ctx, server.Docker(), o)
	require.ErrorContains(t, err, "--update changes it")
	o.Update = true
	updated, err := Setup(ctx, server.Docker(), o)
	require.NoError(t, err)
	require.Equal(t, "updated", updated.Proxy)
	got, err := server.Docker().ServiceInspect(ctx, ProxyService, client.ServiceInspectOptions{})
	require.NoError(t, err)
	svc := got.Service
	require.True(t, strings.HasPrefix(svc.Spec.TaskTemplate.ContainerSpec.Image, two+"@sha256:"), "pinned by its digest: %s", svc.Spec.TaskTemplate.ContainerSpec.Image)
}

// dockerOn runs the docker CLI against the server's engine.
func dockerOn(t *testing.T, s *testhost.Server, args ...string) string {
	t.Helper()
	out, err := exec.Command("docker", append([]string{"-H", s.DockerHost}, args...)...).CombinedOutput()
	require.NoError(t, err, "docker %s: %s", strings.Join(args, " "), out)
	return string(out)
}
