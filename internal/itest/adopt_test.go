package itest

import (
	"context"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
	"github.com/stretchr/testify/require"
)

// A container published on every address (`docker run -p P:8000`) behind
// a Caddyfile that writes its upstream `:P` or `0.0.0.0:P` is the one the
// first deploy adopts: retired (stopped, kept) once the new release
// serves, and the release a rollback goes back to.
func TestFirstDeployAdoptsAContainerBehindAnyFormOfALocalAddress(t *testing.T) {
	for _, form := range []string{":", "0.0.0.0:"} {
		t.Run(form+"P", func(t *testing.T) {
			Build(t) // the test image
			api := Docker(t)
			name := UniqueName() + "-byhand"
			port := FreePort(t)
			publishedOnEveryAddress(t, api, name, port, "RELEASE=v0")
			s := NewScenarioWith(t, ScenarioOptions{Caddy: CaddyOptions{Upstream: form + Itoa(port)}}, port)
			require.Equal(t, "v0", s.Serving())

			r := s.Deploy(Config{Release: "v1"})
			require.Contains(t, r.Stderr, "adopting "+name, r.String())
			require.NotContains(t, r.Stderr, "no container found serving")
			require.Equal(t, "v1", s.Serving())
			byHand, err := s.API.ContainerInspect(t.Context(), name, clientInspect)
			require.NoError(t, err, "the adopted container is kept")
			require.False(t, byHand.Container.State.Running, "the adopted container is stopped")

			r = s.Run("rollback")
			require.Equal(t, 0, r.Code, r.String())
			require.Equal(t, "v0", s.Serving(), "the rollback goes back to the adopted container")
			byHand, err = s.API.ContainerInspect(t.Context(), name, clientInspect)
			require.NoError(t, err)
			require.True(t, byHand.Container.State.Running)
			require.Equal(t, map[string]bool{s.Service + "-1": false}, Containers(t, s.API, s.Service))
			st := s.status()
			require.True(t, st.Agree, "%+v", st)
			t.Logf("rollback:\n%s", r.Stderr)
		})
	}
}

// publishedOnEveryAddress starts the test app as `docker run -d --name
// name -p port:8000` would, waits until it answers, and removes it when
// the test ends.
func publishedOnEveryAddress(t *testing.T, api *client.Client, name string, port int, env ...string) {
	t.Helper()
	ctx := context.Background()
	p := network.MustParsePort("8000/tcp")
	created, err := api.ContainerCreate(ctx, client.ContainerCreateOptions{
		Name: name,
		Config: &container.Config{Image: TestImage, Env: env, ExposedPorts: network.PortSet{p: {}},
			Labels: map[string]string{"handoff-test": "user"}},
		HostConfig: &container.HostConfig{PortBindings: network.PortMap{p: {{HostIP: netip.IPv4Unspecified(), HostPort: Itoa(port)}}}},
	})
	require.NoError(t, err, "create %s", name)
	t.Cleanup(func() { remove(api, created.ID) })
	_, err = api.ContainerStart(ctx, created.ID, client.ContainerStartOptions{})
	require.NoError(t, err, "start %s", name)
	WaitFor(t, 20*time.Second, name+" listening", func() bool {
		code, _, err := Get(http.DefaultClient, "http://127.0.0.1:"+Itoa(port)+"/health", "")
		return err == nil && code == 200
	})
}
