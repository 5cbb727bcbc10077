package itest

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
	"github.com/stretchr/testify/require"
)

// A compose release is given the service's names on its networks only
// once it is healthy, and Docker gives them only as a container joins a
// network again. The app holds a connection to db from its start, as a
// database pool does; while the new release is checked, a container with
// a lower address on the network goes away, so a release joining again
// would be given that address and lose its connection. On a network with
// a subnet of its own, handoff asks for the release's address back: the
// connection is kept through the switch. Without one the engine picks,
// and the deploy refuses to switch to a release whose connections were
// cut; the old release serves on.
func TestComposeReleaseKeepsItsConnections(t *testing.T) {
	for _, c := range []struct{ name, subnet string }{{"network with a subnet", "10.231.7.0/24"}, {"engine picks the address", ""}} {
		t.Run(c.name, func(t *testing.T) {
			p := NewComposeProject(t, ComposeOptions{HoldDB: true, BackSubnet: c.subnet})
			p.Up()
			httpc := &http.Client{Timeout: 5 * time.Second}
			require.Equal(t, "web0", held(t, httpc, p)[0], "web0 holds its connection to db")

			filler := startOn(t, p.API, p.Name+"_back")
			ReleaseImage(t, "web1")
			p.Env["WEB_RELEASE"], p.Env["WEB_BOOT_DELAY"] = "web1", "1500ms"
			removed := make(chan struct{})
			go func() {
				defer close(removed)
				// Once the new release runs (and has its address), the
				// container below it on the network goes away.
				for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
					if c, ok := p.Containers()[p.Name+"-web-2"]; ok && c.Running {
						remove(p.API, filler)
						return
					}
				}
			}()
			r := p.Handoff("deploy", "web")
			<-removed

			if c.subnet == "" {
				require.NotEqual(t, 0, r.Code, "switched to a release whose connections were cut:\n%s", r)
				require.Contains(t, r.Stderr, p.Name+"-web-2 came back on network "+p.Name+"_back at another address")
				require.Contains(t, r.Stderr, "give network "+p.Name+"_back a subnet of its own")
				p.WaitServing("web0")
				require.Equal(t, "web0", held(t, httpc, p)[0], "web0 still serves, its connection kept")
				require.NotContains(t, p.Containers(), p.Name+"-web-2", "the refused release is removed")
				return
			}
			require.Equal(t, 0, r.Code, r.String())
			p.WaitServing("web1")
			before := held(t, httpc, p)
			require.Equal(t, "web1", before[0], "web1's connection to db, made before it was given its names, is kept")
			time.Sleep(2500 * time.Millisecond) // past testapp's 2 s deadline on the connection
			after := held(t, httpc, p)
			require.Equal(t, before[1], after[1], "the same connection")
			t.Logf("held before %v, after %v", before, after)
			require.NotEqual(t, before[2], after[2], "still in use")
		})
	}
}

// held is what the live release says of its held connection: its release,
// the connection's own address and how often it was used; the test fails
// if the connection is lost.
func held(t *testing.T, c *http.Client, p *ComposeProject) [3]string {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, p.SiteURL+"/held", nil)
	require.NoError(t, err)
	req.Host = SiteHost
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	f := strings.Fields(string(body))
	require.True(t, resp.StatusCode == http.StatusOK && len(f) == 3, "%s's held connection: %d %s", resp.Header.Get("X-Release"), resp.StatusCode, body)
	return [3]string{resp.Header.Get("X-Release"), f[1], f[2]}
}

// startOn runs a container of the test image on network, removed when the
// test ends (if it is still there).
func startOn(t *testing.T, api *client.Client, network string) string {
	t.Helper()
	ctx := context.Background()
	created, err := api.ContainerCreate(ctx, client.ContainerCreateOptions{
		Name:       UniqueName() + "-filler",
		Config:     &container.Config{Image: TestImage, Cmd: []string{"worker"}},
		HostConfig: &container.HostConfig{NetworkMode: container.NetworkMode(network)},
	})
	require.NoError(t, err)
	t.Cleanup(func() { remove(api, created.ID) })
	_, err = api.ContainerStart(ctx, created.ID, client.ContainerStartOptions{})
	require.NoError(t, err)
	return created.ID
}
