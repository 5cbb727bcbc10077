package compose

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/config"
	"github.com/handoff-dev/handoff/internal/deploy"
)

func loadShop(t *testing.T, o Options) *Options {
	t.Helper()
	dir, err := filepath.Abs("testdata/shop")
	require.NoError(t, err)
	if o.Files == nil {
		o.Files = []string{filepath.Join(dir, "compose.yaml")}
	}
	o.ProjectDir = dir
	return &o
}

// A service's whole definition, loaded as docker compose loads it (.env,
// interpolation, extends, include, env_file then environment), becomes
// what handoff deploys, with compose's labels and the x-handoff settings.
func TestWebServiceMapsWhole(t *testing.T) {
	o := loadShop(t, Options{})
	p, err := Load(context.Background(), *o)
	require.NoError(t, err)
	require.Equal(t, "shop", p.Name)
	require.ElementsMatch(t, []string{"web", "worker", "db"}, p.ServiceNames(), "cron's profile is off; db comes by include")

	tg, err := Resolve(p, "web", config.Overrides{}, Tool{Hash: "abc123", Version: "5.6.0"})
	require.NoError(t, err)
	svc := tg.Service
	require.Equal(t, "shop-web", svc.Name)
	require.Equal(t, "shop-web-7", svc.ContainerName(7, 0))
	require.Equal(t, "shop-app:1.4.2", svc.Image, ".env interpolated, extends applied")
	require.Equal(t, []string{"serve", "--port", "8000"}, svc.Command)
	require.Equal(t, 8000, svc.Port)
	require.Equal(t, []string{"FROM_FILE=yes", "MODE=staging", "SECRET=Xy7$k9"}, svc.Env, "environment over env_file, $$ is a $")
	dir := o.ProjectDir
	require.Equal(t, []string{"shop_media:/app/media", filepath.Join(dir, "static") + ":/app/static:ro"}, svc.Volumes)
	require.Equal(t, []deploy.Network{{Name: "shop_back", Aliases: []string{"web", "shop-api"}}, {Name: "shop_front", Aliases: []string{"web"}}}, svc.Networks)
	require.Equal(t, "1000", svc.User)
	require.Equal(t, "/app", svc.WorkingDir)
	require.Equal(t, []string{"metrics.internal:10.0.0.9"}, svc.ExtraHosts)
	require.Equal(t, []string{"ALL"}, svc.CapDrop)
	require.Equal(t, &deploy.Logging{Driver: "json-file", Options: map[string]string{"max-size": "10m"}}, svc.Logging)
	require.Equal(t, int64(256<<20), svc.Memory)
	require.Equal(t, 0.5, svc.CPUs)
	require.Equal(t, "unless-stopped", svc.Restart)
	require.Equal(t, "SIGINT", svc.StopSignal)
	require.Equal(t, 20*time.Second, svc.StopTimeout)
	require.Equal(t, &deploy.DockerCheck{Test: []string{"CMD", "/app/check"}, Interval: 2 * time.Second, Timeout: time.Second, StartPeriod: 30 * time.Second, Retries: 5}, svc.Check)
	require.True(t, svc.RemoveRetired)
	require.Equal(t, deploy.PullAlways, svc.Pull, "pull_policy")
	require.Equal(t, &deploy.Job{Command: []string{"migrate", "--yes"}, Timeout: 2 * time.Minute}, svc.Release, "x-handoff: release")
	require.Equal(t, "./notify.sh", svc.Hooks.PostDeploy)
	require.Equal(t, dir, svc.Hooks.Dir, "hooks run in the project directory")
	require.Equal(t, deploy.RolloutBlueGreen, svc.Rollout)
	require.Equal(t, 45*time.Second, svc.DrainTimeout)
	require.Equal(t, map[string]string{LabelProject: "shop", LabelService: "web", LabelOneoff: "False"}, svc.Adopt)
	for k, v := range map[string]string{LabelProject: "shop", LabelService: "web", LabelOneoff: "False", LabelConfigHash: "abc123", LabelWorkingDir: dir} {
		require.Equal(t, v, svc.Labels[k], k)
	}
	require.Equal(t, deploy.StampNumber, svc.Stamps[LabelNumber])
	require.Equal(t, deploy.StampImageID, svc.Stamps[LabelImage])

	require.Equal(t, "shop.example.com", tg.Caddy.Route)
	require.Equal(t, "unix:"+filepath.Join(dir, "caddy/admin.sock"), tg.Caddy.Admin, "the project's x-handoff, relative to the project")
	require.Equal(t, filepath.Join(dir, "Caddyfile"), tg.Caddy.Caddyfile)
	require.Len(t, tg.Notes, 1)
	require.Contains(t, tg.Notes[0], "web's ports: 8000:8000 are not published")
}

// A service without a route is a worker: start-first unless x-handoff says
// stop-first; its dependency is never part of the deploy.
func TestWorkerAndProfiles(t *testing.T) {
	o := loadShop(t, Options{Profiles: []string{"jobs"}})
	p, err := Load(context.Background(), *o)
	require.NoError(t, err)
	require.Contains(t, p.ServiceNames(), "cron", "a profile turned on")

	tg, err := Resolve(p, "worker", config.Overrides{}, Tool{Hash: "h"})
	require.NoError(t, err)
	require.Equal(t, deploy.RolloutStopFirst, tg.Service.Rollout)
	require.Zero(t, tg.Service.Port)
	require.Equal(t, []deploy.Network{{Name: "shop_back", Aliases: []string{"worker"}}}, tg.Service.Networks)

	tg, err = Resolve(p, "cron", config.Overrides{}, Tool{Hash: "h"})
	require.NoError(t, err)
	require.Equal(t, deploy.RolloutStartFirst, tg.Service.Rollout)
	require.Equal(t, "no", tg.Service.Restart, "compose's default restart policy")
	require.Equal(t, []deploy.Network{{Name: "shop_default", Aliases: []string{"cron"}}}, tg.Service.Networks)
}

// What handoff cannot do with a service is said before anything starts.
func TestRefusals(t *testing.T) {
	dir := t.TempDir()
	cases := map[string]struct{ yml, want string }{
		"container_name":  {"services:\n  web:\n    image: x\n    container_name: web\n", "web sets container_name: web"},
		"network_mode":    {"services:\n  web:\n    image: x\n    network_mode: host\n", "web sets network_mode: host"},
		"unapplied keys":  {"services:\n  web:\n    image: x\n    privileged: true\n    sysctls: {net.core.somaxconn: 1024}\n", "web sets privileged, sysctls, which handoff does not apply"},
		"no such service": {"services:\n  web:\n    image: x\n", `has no service "api" (it has: web)`},
		"bad x-handoff":   {"services:\n  api:\n    image: x\n    x-handoff:\n      drian_timeout: 3s\n", `unknown key "drian_timeout" at the top level; did you mean "drain_timeout"?`},
		"ports, no route": {"services:\n  web:\n    image: caddy\n    ports: [\"80:80\"]\n", "web publishes ports (80:80) and no route leads to it"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			f := filepath.Join(dir, name+".yaml")
			require.NoError(t, os.WriteFile(f, []byte(c.yml), 0o644))
			p, err := Load(context.Background(), Options{Files: []string{f}, Name: "p"})
			require.NoError(t, err)
			svc := "web"
			if name == "no such service" || name == "bad x-handoff" {
				svc = "api"
			}
			_, err = Resolve(p, svc, config.Overrides{}, Tool{Hash: "h"})
			require.ErrorIs(t, err, deploy.ErrConfig)
			require.ErrorContains(t, err, c.want)
		})
	}
}

func TestIsComposeFile(t *testing.T) {
	require.True(t, IsComposeFile("testdata/shop/compose.yaml"))
	dir := t.TempDir()
	f := filepath.Join(dir, "handoff.yml")
	require.NoError(t, os.WriteFile(f, []byte("service: web\nimage: x\n"), 0o644))
	require.False(t, IsComposeFile(f))
}

// Without the compose tool's config hash a release still carries the
// label: docker compose v5 lists only containers that have one, so without
// it `ps` and `down` would not see the release, and `up` would start the
// service a second time beside it instead of recreating it.
func TestReleaseWithoutAHashIsSeenByCompose(t *testing.T) {
	o := loadShop(t, Options{})
	p, err := Load(context.Background(), *o)
	require.NoError(t, err)
	tg, err := Resolve(p, "web", config.Overrides{}, Tool{})
	require.NoError(t, err)
	require.NotEmpty(t, tg.Service.Labels[LabelConfigHash])
	require.Contains(t, tg.Notes[0], "the compose tool could not give web's config hash: a later `docker compose up` would recreate it")
}
