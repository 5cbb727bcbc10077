package itest

import (
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
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
			// The app connects to db once it runs, not before compose up returns.
			WaitFor(t, 10*time.Second, "web0 to hold its connection to db", func() bool { return holds(httpc, p) })
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

// holds says whether the live release answers that it holds its connection.
func holds(c *http.Client, p *ComposeProject) bool {
	req, err := http.NewRequest(http.MethodGet, p.SiteURL+"/held", nil)
	if err != nil {
		return false
	}
	req.Host = SiteHost
	resp, err := c.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
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

// Compose settings that were accepted and dropped reach the release on a
// real engine: restart on-failure:3 (Docker refused the whole string when
// the release was created, after its release job had run), a pids limit,
// a bind's selinux label and propagation, a volume's nocopy (compose
// v5.6.0 does not know use_service_name_alias yet: the unit test has it).
// A volume's subpath is refused on this
// engine (API 1.41 would mount the whole volume) before the release job
// runs.
func TestComposeSettingsReachTheRelease(t *testing.T) {
	BuildComposeImages(t)
	api, bin, tool := Docker(t), Build(t), ComposeTool(t, "v5")
	project := func(t *testing.T, app string) (string, func(args ...string) Result) {
		name, dir := UniqueName(), t.TempDir()
		for _, d := range []string{"out", "shared"} {
			require.NoError(t, os.Mkdir(filepath.Join(dir, d), 0o777))
		}
		yml := "name: " + name + "\nservices:\n  app:\n    image: " + TestImage + "\n    command: [worker]\n" +
			"    environment: {RELEASE: \"${APP_RELEASE:-a0}\", MIGRATIONS: /out/migrations.log}\n" + app +
			"    x-handoff: {release: [migrate]}\nvolumes:\n  cache: {}\n  tenants: {}\nnetworks:\n  back: {}\n"
		require.NoError(t, os.WriteFile(filepath.Join(dir, "compose.yaml"), []byte(yml), 0o644))
		env := append(os.Environ(), "HANDOFF_STATE_DIR="+t.TempDir(), "HANDOFF_COMPOSE="+tool, "APP_RELEASE=a1")
		t.Cleanup(func() {
			cmd := exec.Command(tool, "-p", name, "down", "-v", "-t", "1")
			cmd.Dir, cmd.Env = dir, env
			_ = cmd.Run()
			list, err := api.ContainerList(context.Background(), client.ContainerListOptions{All: true, Filters: make(client.Filters).Add("label", "com.docker.compose.project="+name)})
			if err == nil {
				for _, c := range list.Items {
					remove(api, c.ID)
				}
			}
			_, _ = api.NetworkRemove(context.Background(), name+"_back", client.NetworkRemoveOptions{})
			for _, v := range []string{"_cache", "_tenants"} {
				_, _ = api.VolumeRemove(context.Background(), name+v, client.VolumeRemoveOptions{Force: true})
			}
		})
		return dir, func(args ...string) Result {
			t.Helper()
			if args[0] == "compose" {
				cmd := exec.Command(tool, append([]string{"-p", name}, args[1:]...)...)
				cmd.Dir, cmd.Env = dir, env
				out, err := cmd.CombinedOutput()
				require.NoError(t, err, "%s", out)
				return Result{Stdout: string(out)}
			}
			return HandoffEnv(t, bin, dir, "", env, append([]string{args[0], "-f", "compose.yaml", "-p", name}, args[1:]...)...)
		}
	}

	t.Run("applied", func(t *testing.T) {
		dir, run := project(t, `    restart: on-failure:3
    deploy: {resources: {limits: {pids: 64}}}
    init: true
    tty: true
    stdin_open: true
    volumes:
      - {type: bind, source: ./out, target: /out, bind: {selinux: z}}
      - {type: bind, source: ./shared, target: /shared, read_only: true, bind: {propagation: private}}
      - {type: volume, source: cache, target: /cache, volume: {nocopy: true}}
    networks: [back]
`)
		run("compose", "up", "-d")
		r := run("deploy", "app")
		require.Equal(t, 0, r.Code, r.String())
		migrations, err := os.ReadFile(filepath.Join(dir, "out", "migrations.log"))
		require.NoError(t, err)
		require.Equal(t, "a1\n", string(migrations), "the release job ran once")

		var live container.InspectResponse
		for _, c := range listService(t, api, "app") {
			if c.Config.Labels["com.docker.compose.project.working_dir"] == dir {
				live = c
			}
		}
		require.NotNil(t, live.State, "a release of app runs")
		require.True(t, live.State.Running)
		require.Equal(t, container.RestartPolicy{Name: "on-failure", MaximumRetryCount: 3}, live.HostConfig.RestartPolicy)
		require.NotNil(t, live.HostConfig.PidsLimit)
		require.Equal(t, int64(64), *live.HostConfig.PidsLimit)
		require.NotNil(t, live.HostConfig.Init)
		require.True(t, *live.HostConfig.Init)
		require.True(t, live.Config.Tty)
		require.True(t, live.Config.OpenStdin)
		mounts := map[string]container.MountPoint{}
		for _, m := range live.Mounts {
			mounts[m.Destination] = m
		}
		require.Equal(t, "z", mounts["/out"].Mode)
		require.Equal(t, "private", string(mounts["/shared"].Propagation))
		require.False(t, mounts["/shared"].RW)
		require.Equal(t, "nocopy", mounts["/cache"].Mode)
	})

	t.Run("subpath refused on API 1.41", func(t *testing.T) {
		dir, run := project(t, `    volumes:
      - {type: bind, source: ./out, target: /out}
      - {type: volume, source: tenants, target: /data, volume: {subpath: acme}}
    networks: [back]
`)
		out := run("compose", "up", "-d")
		t.Logf("docker compose v5.6.0 on API 1.41: %s", out.Stdout)
		r := run("deploy", "app")
		t.Logf("%s", r)
		require.NotEqual(t, 0, r.Code, r.String())
		require.Contains(t, r.Stderr, "mounts acme of volume ")
		require.Contains(t, r.Stderr, "cannot mount part of a volume")
		_, err := os.Stat(filepath.Join(dir, "out", "migrations.log"))
		require.True(t, os.IsNotExist(err), "the release job did not run")
	})
}

// listService inspects the containers of compose service service.
func listService(t *testing.T, api *client.Client, service string) []container.InspectResponse {
	t.Helper()
	list, err := api.ContainerList(context.Background(), client.ContainerListOptions{Filters: make(client.Filters).Add("label", "com.docker.compose.service="+service)})
	require.NoError(t, err)
	var out []container.InspectResponse
	for _, c := range list.Items {
		res, err := api.ContainerInspect(context.Background(), c.ID, client.ContainerInspectOptions{})
		require.NoError(t, err)
		out = append(out, res.Container)
	}
	return out
}
