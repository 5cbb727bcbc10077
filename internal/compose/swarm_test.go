package compose

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/types"
	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/config"
	"github.com/handoff-dev/handoff/internal/deploy"
)

// loadProject loads one compose file written in dir, as docker compose would.
func loadProject(t *testing.T, dir, yml string) *types.Project {
	t.Helper()
	f := filepath.Join(dir, "compose.yaml")
	require.NoError(t, os.WriteFile(f, []byte(yml), 0o644))
	p, err := Load(context.Background(), Options{Files: []string{f}})
	require.NoError(t, err)
	return p
}

const swarmProject = `name: shop
services:
  api:
    image: reg.example.com/shop/api:1.4
    command: [serve, --port, "8000"]
    expose: ["8000"]
    environment: {MODE: prod, REGION: eu}
    stop_grace_period: 20s
    healthcheck:
      test: [CMD, /app, check]
      interval: 2s
      timeout: 1s
      start_period: 30s
      retries: 3
    deploy:
      replicas: 3
      placement:
        constraints: [node.role==worker]
        max_replicas_per_node: 1
    x-handoff:
      engine: swarm
      drain_timeout: 45s
      release: [/app, migrate]
      swarm: {proxy_image: reg.example.com/team/handoff:1, constraints: [node.labels.web==true], port: 9002}
`

// The same service, said in handoff.yml's words.
const swarmHandoffYml = `service: shop-api
engine: swarm
image: reg.example.com/shop/api:1.4
command: [serve, --port, "8000"]
port: 8000
env: {MODE: prod, REGION: eu}
stop_timeout: 20s
replicas: 3
drain_timeout: 45s
release: [/app, migrate]
health: {type: cmd, command: [/app, check], interval: 2s, timeout: 1s, start_timeout: 2m}
swarm:
  proxy_image: reg.example.com/team/handoff:1
  constraints: [node.role==worker, node.labels.web==true]
  max_per_node: 1
  port: 9002
`

// A compose service with x-handoff engine: swarm runs on the swarm with what
// its own definition says where Swarm means the same: it resolves to what a
// handoff.yml of the same meaning does, so the procedure and the swarm
// runtime cannot tell them apart (the tasks' HEALTHCHECK is made of
// Service.Health alone).
func TestSwarmServiceIsTheHandoffYmlOfTheSameMeaning(t *testing.T) {
	dir := t.TempDir()
	p := loadProject(t, dir, swarmProject)
	got, err := Resolve(p, "api", config.Overrides{}, Tool{})
	require.NoError(t, err)

	path := filepath.Join(dir, "handoff.yml")
	f, err := config.Parse(path, []byte(swarmHandoffYml))
	require.NoError(t, err)
	want, err := config.Resolve(f, config.Overrides{})
	require.NoError(t, err)

	require.Equal(t, want, got.Settings)
	require.Empty(t, got.Notes, "no compose tool is asked: a swarm service carries no compose labels")
	require.Equal(t, config.EngineSwarm, got.Engine)
	require.False(t, got.Compose, "docker compose does not act on a swarm's services")
	require.Equal(t, deploy.RolloutBlueGreen, got.Service.Rollout, "no route, and still blue-green: every node's proxy serves it")
	require.Equal(t, config.Swarm{Network: "handoff", ProxyImage: "reg.example.com/team/handoff:1", Port: 9002,
		Constraints: []string{"node.role==worker", "node.labels.web==true"}, MaxPerNode: 1, Replicas: 3}, got.Swarm)
	require.Nil(t, got.Service.Adopt)
	require.Nil(t, got.Service.Labels)
	require.False(t, got.Service.RemoveRetired)
}

// The deploy waits for health as compose does on one engine: the start period and
// three failed checks, at least two minutes; what the file leaves out is Docker's
// default, as docker stack deploy would run it.
func TestSwarmServiceHealthWindow(t *testing.T) {
	for _, tc := range []struct{ hc, want string }{
		{"{test: [CMD, /app, check], interval: 10s, timeout: 5s, start_period: 3m}", "3m45s 10s 5s"},
		{"{test: [CMD, /app, check], interval: 30s, timeout: 10s, start_period: 10s}", "2m10s 30s 10s"},
		{"{test: [CMD, /app, check], interval: 2s, start_period: 5s}", "2m0s 2s 30s"},
		{"{test: [CMD, /app, check]}", "3m0s 30s 30s"},
	} {
		t.Run(tc.hc, func(t *testing.T) {
			yml := "name: shop\nservices:\n  api:\n    image: r/api:1\n    expose: [\"8000\"]\n    healthcheck: " + tc.hc + "\n    x-handoff: {engine: swarm, swarm: {proxy_image: r/handoff:1}}\n"
			got, err := Resolve(loadProject(t, t.TempDir(), yml), "api", config.Overrides{}, Tool{})
			require.NoError(t, err)
			h := got.Service.Health
			require.Equal(t, tc.want, h.StartTimeout.String()+" "+h.Interval.String()+" "+h.Timeout.String())
		})
	}
}

// The project's x-handoff says for its services on one engine how they are
// proxied (caddy:): a service of it on the swarm is not refused for that;
// only its own block saying so is.
func TestSwarmServiceIgnoresTheProjectsOneEngineSettings(t *testing.T) {
	yml := `name: shop
x-handoff:
  caddy: {admin: "unix:./caddy/admin.sock"}
services:
  api:
    image: r/api:1
    expose: ["8000"]
    healthcheck: {test: [CMD, /app, check]}
    x-handoff: {engine: swarm, swarm: {proxy_image: r/handoff:1}}
  web:
    image: r/web:1
    x-handoff: {route: shop.example.com}
`
	p := loadProject(t, t.TempDir(), yml)
	api, err := Resolve(p, "api", config.Overrides{}, Tool{})
	require.NoError(t, err)
	require.Equal(t, config.EngineSwarm, api.Engine)
	web, err := Resolve(p, "web", config.Overrides{}, Tool{Hash: "h"})
	require.NoError(t, err)
	require.Equal(t, "unix:"+filepath.Join(p.WorkingDir, "caddy/admin.sock"), web.Caddy.Admin, "the others keep it")

	own := strings.Replace(yml, "x-handoff: {engine: swarm, swarm: {proxy_image: r/handoff:1}}", "x-handoff: {engine: swarm, strategy: start-first, swarm: {proxy_image: r/handoff:1}}", 1)
	_, err = Resolve(loadProject(t, t.TempDir(), own), "api", config.Overrides{}, Tool{})
	require.ErrorContains(t, err, "strategy", "its own block saying so is refused")
}

// The flags: --image deploys another image (a CI's build), --replicas is refused
// (the compose file counts them); Swarm's rolling-update settings are left to it.
func TestSwarmServiceFlagsAndUpdateConfig(t *testing.T) {
	p := loadProject(t, t.TempDir(), swarmProject)
	got, err := Resolve(p, "api", config.Overrides{Image: "reg.example.com/shop/api:1.5"}, Tool{})
	require.NoError(t, err)
	require.Equal(t, "reg.example.com/shop/api:1.5", got.Service.Image)
	_, err = Resolve(p, "api", config.Overrides{Replicas: 5}, Tool{})
	require.ErrorContains(t, err, "--replicas 5: api runs 3")

	yml := strings.Replace(swarmProject, "      replicas: 3\n", "      replicas: 3\n      update_config: {parallelism: 1, order: start-first}\n      rollback_config: {parallelism: 1}\n", 1)
	_, err = Resolve(loadProject(t, t.TempDir(), yml), "api", config.Overrides{}, Tool{})
	require.NoError(t, err, "ignored: handoff deploys blue-green, never by Swarm's rolling update")

	long := strings.Replace(swarmProject, "name: shop", "name: acme-payments-production-europe-west", 1)
	long = strings.Replace(long, "  api:", "  checkout-gw-api:", 1)
	_, err = Resolve(loadProject(t, t.TempDir(), long), "checkout-gw-api", config.Overrides{}, Tool{})
	require.ErrorContains(t, err, "release job runs on the swarm as acme-payments-production-europe-west-checkout-gw-api-release-job, longer than Swarm's 63 characters")
}

// What handoff.yml has no word for reaches the tasks too: entrypoint, and an
// x-handoff health: over the compose healthcheck, key by key.
func TestSwarmServiceEntrypointAndHealthOverride(t *testing.T) {
	yml := strings.Replace(swarmProject, "    command:", "    entrypoint: [/bin/app]\n    command:", 1)
	yml = strings.Replace(yml, "      engine: swarm\n", "      engine: swarm\n      port: 8080\n      health: {command: [/app, ready], start_timeout: 2m}\n", 1)
	p := loadProject(t, t.TempDir(), yml)
	got, err := Resolve(p, "api", config.Overrides{}, Tool{})
	require.NoError(t, err)
	require.Equal(t, []string{"/bin/app"}, got.Service.Entrypoint)
	require.Equal(t, 8080, got.Service.Port, "x-handoff port: over expose:")
	h := got.Service.Health
	require.Equal(t, deploy.HealthDocker, h.Kind)
	require.Equal(t, []string{"/app", "ready"}, h.Command)
	require.Equal(t, "2m0s 2s 1s", h.StartTimeout.String()+" "+h.Interval.String()+" "+h.Timeout.String(), "x-handoff's keys win, the compose healthcheck's others stay")
}

// A check written for a shell runs in the task's /bin/sh, as Docker runs CMD-SHELL.
func TestSwarmServiceShellHealthcheck(t *testing.T) {
	for name, test := range map[string]string{
		"list":   `[CMD-SHELL, "wget -qO- localhost:8000/up || exit 1"]`,
		"string": `"wget -qO- localhost:8000/up || exit 1"`,
	} {
		t.Run(name, func(t *testing.T) {
			yml := strings.Replace(swarmProject, "test: [CMD, /app, check]", "test: "+test, 1)
			p := loadProject(t, t.TempDir(), yml)
			got, err := Resolve(p, "api", config.Overrides{}, Tool{})
			require.NoError(t, err)
			require.Equal(t, []string{"/bin/sh", "-c", "wget -qO- localhost:8000/up || exit 1"}, got.Service.Health.Command)
			require.Equal(t, deploy.HealthDocker, got.Service.Health.Kind)
		})
	}
}

// The project's x-handoff says engine: swarm for every service; one service
// may still say engine: docker for itself.
func TestSwarmEngineFromTheProject(t *testing.T) {
	p := loadProject(t, t.TempDir(), `name: shop
x-handoff:
  engine: swarm
  swarm: {proxy_image: reg.example.com/team/handoff:1}
services:
  api:
    image: reg.example.com/shop/api:1.4
    expose: ["8000"]
    healthcheck: {test: [CMD, /app, check]}
  web:
    image: reg.example.com/shop/web:2
    healthcheck: {test: [CMD, /web, check]}
    x-handoff: {port: 3000, swarm: {max_per_node: 2}}
  cron:
    image: reg.example.com/shop/cron:2
    x-handoff: {engine: docker}
`)
	require.True(t, OnSwarm(p, "api"))
	require.False(t, OnSwarm(p, "cron"))
	api, err := Resolve(p, "api", config.Overrides{}, Tool{})
	require.NoError(t, err)
	require.Equal(t, config.EngineSwarm, api.Engine)
	require.Equal(t, "shop-api", api.Service.Name)
	require.Equal(t, config.Swarm{Network: "handoff", ProxyImage: "reg.example.com/team/handoff:1", Port: 9001, Replicas: 1}, api.Swarm)

	web, err := Resolve(p, "web", config.Overrides{}, Tool{})
	require.NoError(t, err)
	require.Equal(t, config.EngineSwarm, web.Engine)
	require.Equal(t, 3000, web.Service.Port)
	require.Equal(t, 2, web.Swarm.MaxPerNode)
	require.Equal(t, "reg.example.com/team/handoff:1", web.Swarm.ProxyImage, "the project's swarm: under the service's")

	cron, err := Resolve(p, "cron", config.Overrides{}, Tool{Hash: "h"})
	require.NoError(t, err)
	require.Equal(t, config.EngineDocker, cron.Engine)
	require.True(t, cron.Compose)
	require.Equal(t, deploy.RolloutStartFirst, cron.Service.Rollout)
}

// A service of the project without engine swarm resolves exactly as it did
// before another service of it went onto the swarm.
func TestSwarmNeighbourIsUnchanged(t *testing.T) {
	web := `
  web:
    image: reg.example.com/shop/web:2
    ports: ["8080:3000"]
    volumes: [data:/data]
    labels: {team: shop}
    x-handoff: {route: shop.example.com}
volumes: {data: {}}
`
	docker := loadProject(t, t.TempDir(), "name: shop\nservices:\n  api:\n    image: reg.example.com/shop/api:1.4\n"+web)
	swarm := loadProject(t, t.TempDir(), "name: shop\nservices:\n  api:\n    image: reg.example.com/shop/api:1.4\n    expose: [\"8000\"]\n    healthcheck: {test: [CMD, /app, check]}\n    x-handoff: {engine: swarm, swarm: {proxy_image: r/handoff:1}}\n"+web)
	want, err := Resolve(docker, "web", config.Overrides{}, Tool{Hash: "h", Version: "5.0.0"})
	require.NoError(t, err)
	got, err := Resolve(swarm, "web", config.Overrides{}, Tool{Hash: "h", Version: "5.0.0"})
	require.NoError(t, err)
	want.Service.Labels[LabelWorkingDir], want.Service.Labels[LabelConfigFiles] = "", ""
	got.Service.Labels[LabelWorkingDir], got.Service.Labels[LabelConfigFiles] = "", ""
	want.Service.Hooks.Dir, got.Service.Hooks.Dir = "", ""
	require.Equal(t, want, got)
	require.Equal(t, config.EngineDocker, got.Engine)
	require.True(t, got.Compose)
}

// What engine swarm cannot carry into the tasks is refused, one line naming
// the key and what to do; nothing is dropped in silence.
func TestSwarmServiceRefusals(t *testing.T) {
	const good = "    image: r/api:1\n    expose: [\"8000\"]\n    healthcheck: {test: [CMD, /app, check]}\n"
	const ext = "    x-handoff:\n      engine: swarm\n      swarm: {proxy_image: r/handoff:1}\n"
	svc := func(lines string) string { return "name: p\nservices:\n  api:\n" + good + lines + ext }
	withExt := func(lines string) string { return "name: p\nservices:\n  api:\n" + good + ext + lines }
	cases := map[string]struct{ yml, want string }{
		"build":          {"name: p\nservices:\n  api:\n    build: .\n    image: r/api:1\n    expose: [\"8000\"]\n    healthcheck: {test: [CMD, c]}\n" + ext, "engine swarm deploys an image every node pulls from a registry: build and push it, and name it in image: (remove build:)"},
		"no port":        {"name: p\nservices:\n  api:\n    image: r/api:1\n    healthcheck: {test: [CMD, c]}\n" + ext, "engine swarm needs port:"},
		"no check":       {"name: p\nservices:\n  api:\n    image: r/api:1\n    expose: [\"8000\"]\n" + ext, "api has no healthcheck: engine swarm needs one"},
		"check disabled": {"name: p\nservices:\n  api:\n    image: r/api:1\n    expose: [\"8000\"]\n    healthcheck: {disable: true}\n" + ext, "api's healthcheck is disabled: engine swarm needs one"},
		"check NONE":     {"name: p\nservices:\n  api:\n    image: r/api:1\n    expose: [\"8000\"]\n    healthcheck: {test: [NONE]}\n" + ext, "api's healthcheck is disabled: engine swarm needs one"},
		"retries":        {"name: p\nservices:\n  api:\n    image: r/api:1\n    expose: [\"8000\"]\n    healthcheck: {test: [CMD, c], retries: 5}\n" + ext, "api's healthcheck sets retries: 5: engine swarm's tasks are judged unhealthy after 3"},
		"start_interval": {"name: p\nservices:\n  api:\n    image: r/api:1\n    expose: [\"8000\"]\n    healthcheck: {test: [CMD, c], start_interval: 1s}\n" + ext, "api's healthcheck sets start_interval"},
		"ports":          {svc("    ports: [\"80:8000\"]\n"), "api sets ports (every node's handoff proxy publishes it, at swarm.port"},
		"volumes":        {svc("    volumes: [/srv:/srv]\n"), "api sets volumes (engine swarm mounts no volumes into the tasks yet"},
		"networks":       {svc("    networks: [back]\n") + "networks: {back: {}}\n", "api joins network back: engine swarm runs the tasks on the overlay of swarm.network only"},
		"aliases":        {svc("    networks: {default: {aliases: [x]}}\n"), "api sets networks.aliases, which engine swarm does not carry into the tasks yet"},
		"labels":         {svc("    labels: {a: b}\n"), "api sets labels (engine swarm labels the tasks with the release only"},
		"deploy.labels":  {svc("    deploy: {labels: {a: b}}\n"), "api sets deploy.labels (engine swarm labels"},
		"resources":      {svc("    deploy: {resources: {limits: {memory: 1g}}}\n"), "api sets deploy.resources (engine swarm writes no limits"},
		"mem_limit":      {svc("    mem_limit: 1g\n"), "api sets mem_limit (engine swarm writes no limits"},
		"restart":        {svc("    restart: always\n"), "api sets restart (Swarm restarts the tasks on any exit"},
		"restart_policy": {svc("    deploy: {restart_policy: {condition: on-failure}}\n"), "api sets deploy.restart_policy (Swarm restarts the tasks on any exit"},
		"extra_hosts":    {svc("    extra_hosts: [\"a:10.0.0.1\"]\n"), "api sets extra_hosts, which engine swarm does not carry into the tasks yet; remove it, or deploy api with engine docker"},
		"user":           {svc("    user: \"1000\"\n    working_dir: /app\n    cap_add: [NET_ADMIN]\n"), "api sets cap_add, user, working_dir, which engine swarm does not carry"},
		"global":         {svc("    deploy: {mode: global}\n"), "api sets deploy.mode: global: engine swarm runs deploy.replicas tasks of each release"},
		"preferences":    {svc("    deploy: {placement: {preferences: [{spread: node.labels.zone}]}}\n"), "api sets deploy.placement.preferences, which engine swarm does not carry"},
		"endpoint_mode":  {svc("    deploy: {endpoint_mode: vip}\n"), "api sets deploy.endpoint_mode: vip: the proxies reach the tasks by DNS (dnsrr)"},
		"max per node":   {svc("    deploy: {placement: {max_replicas_per_node: 1}}\n") + "x-handoff: {swarm: {max_per_node: 2}}\n", "api sets deploy.placement.max_replicas_per_node: 1 and x-handoff swarm.max_per_node: 2; say it once"},
		"long name":      {strings.Replace(svc(""), "  api:", "  "+strings.Repeat("a", 60)+":", 1), "runs on the swarm as p-" + strings.Repeat("a", 60) + "-blue and -green, longer than 63"},
		"x-replicas":     {withExt("      replicas: 2\n"), "api's x-handoff sets replicas: a compose service's containers are counted by its deploy.replicas"},
		"proxy":          {withExt("      proxy: handoff\n"), "engine swarm switches handoff proxy on every node (handoff swarm setup): remove proxy:, caddy: and handoff_proxy:"},
		"caddy":          {withExt("      caddy: {admin: localhost:2019}\n"), "engine swarm switches handoff proxy on every node"},
		"handoff_proxy":  {withExt("      handoff_proxy: {listen: \":9001\"}\n"), "engine swarm switches handoff proxy on every node"},
		"route":          {withExt("      route: shop.example.com\n"), "api's x-handoff sets route: engine swarm serves api on every node's handoff proxy at swarm.port (9001)"},
		"reach":          {withExt("      reach: network\n"), "api's x-handoff sets reach: engine swarm's proxies reach the tasks on the overlay"},
		"strategy":       {withExt("      strategy: start-first\n"), `strategy "start-first" on engine swarm`},
		"release_pause":  {withExt("      release: migrate\n      release_pause: true\n"), "release_pause on engine swarm is not supported yet"},
		"watch":          {withExt("      watch: 1m\n"), "canaries and the watch on engine swarm are not supported yet"},
		"host_ports":     {withExt("      host_ports: 20000-20100\n"), "engine swarm does not carry volumes, network, labels, resources, restart or host_ports"},
		"proxy_image":    {"name: p\nservices:\n  api:\n" + good + "    x-handoff: {engine: swarm}\n", "engine swarm needs swarm.proxy_image"},
		"engine":         {"name: p\nservices:\n  api:\n" + good + "    x-handoff: {engine: nomad}\n", `engine "nomad": use docker or swarm`},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			f := filepath.Join(dir, "compose.yaml")
			require.NoError(t, os.WriteFile(f, []byte(c.yml), 0o644))
			p, err := Load(context.Background(), Options{Files: []string{f}})
			require.NoError(t, err)
			tg, err := Resolve(p, p.ServiceNames()[0], config.Overrides{}, Tool{Hash: "h"})
			require.ErrorIs(t, err, deploy.ErrConfig, "resolved to %+v", tg.Settings)
			require.ErrorContains(t, err, c.want)
			require.NotContains(t, err.Error(), "\n", "one line")
		})
	}
}
