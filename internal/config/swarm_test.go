package config

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/deploy"
)

const swarmFile = `service: web
engine: swarm
image: reg.example.com/team/web:1.4
port: 8000
replicas: 3
health: {type: cmd, command: ["/app", "check"], interval: 1s}
swarm: {proxy_image: reg.example.com/team/handoff:1, constraints: ["node.role==worker"], max_per_node: 1}
`

func TestSwarmEngineIsRead(t *testing.T) {
	f, err := Parse("handoff.yml", []byte(swarmFile))
	require.NoError(t, err)
	s, err := Resolve(f, Overrides{})
	require.NoError(t, err)
	require.Equal(t, EngineSwarm, s.Engine)
	require.Equal(t, Swarm{Network: "handoff", ProxyImage: "reg.example.com/team/handoff:1", Port: 9001, Constraints: []string{"node.role==worker"}, MaxPerNode: 1, Replicas: 3}, s.Swarm)
	require.Zero(t, s.Service.Replicas, "the procedure sees one colour service per release; its tasks are the replicas")
	require.Equal(t, deploy.HealthDocker, s.Service.Health.Kind, "the tasks' HEALTHCHECK, waited on as Docker's")
	require.Equal(t, []string{"/app", "check"}, s.Service.Health.Command)

	f, err = Parse("handoff.yml", []byte("service: web\nengine: swarm\nimage: r/x:1\nport: 8000\nhealth: {type: cmd, command: [/app, check]}\nswarm: {proxy_image: r/handoff:1}\nrelease: [/app, migrate]\n"))
	require.NoError(t, err)
	s, err = Resolve(f, Overrides{})
	require.NoError(t, err, "a release job runs as a replicated job")
	require.Equal(t, []string{"/app", "migrate"}, s.Service.Release.Command)

	plain, err := Parse("handoff.yml", []byte("service: web\nimage: x\n"))
	require.NoError(t, err)
	s, err = Resolve(plain, Overrides{})
	require.NoError(t, err)
	require.Equal(t, EngineDocker, s.Engine)
}

func TestSwarmEngineRefusesWhatItCannotRun(t *testing.T) {
	base := "service: web\nengine: swarm\nimage: r/x:1\nport: 8000\nhealth: {type: cmd, command: [/app, check]}\nswarm: {proxy_image: r/handoff:1}\n"
	cases := map[string]struct{ yml, want string }{
		"engine":   {"service: web\nengine: nomad\n", `handoff.yml:2: engine "nomad": use docker or swarm`},
		"build":    {"service: web\nengine: swarm\nbuild: .\nimage: r/x:1\n", "handoff.yml:3: engine swarm deploys an image every node pulls from a registry"},
		"health":   {"service: web\nengine: swarm\nimage: r/x:1\nport: 8000\n", "engine swarm needs health: {type: cmd"},
		"port":     {"service: web\nengine: swarm\nimage: r/x:1\n", "engine swarm needs port:"},
		"pause":    {base + "release: migrate\nrelease_pause: true\n", "release_pause on engine swarm is not supported yet"},
		"canary":   {base + "watch: 1m\n", "canaries and the watch on engine swarm are not supported yet"},
		"proxy":    {base + "proxy: caddy\n", "engine swarm switches handoff proxy on every node"},
		"image":    {"service: web\nengine: swarm\nimage: r/x:1\nport: 8000\nhealth: {type: cmd, command: [c]}\n", "needs swarm.proxy_image"},
		"typo":     {base + "swarm: {proxy_imag: x}\n", "proxy_imag"},
		"strategy": {base + "strategy: start-first\n", `strategy "start-first" on engine swarm`},
		"volumes":  {base + "volumes: [data:/data]\n", "engine swarm does not carry volumes"},
		"memory":   {base + "resources: {memory: 1g}\n", "engine swarm does not carry volumes, network, labels, resources"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			f, err := Parse("handoff.yml", []byte(c.yml))
			if err == nil {
				_, err = Resolve(f, Overrides{})
			}
			require.ErrorIs(t, err, deploy.ErrConfig)
			require.ErrorContains(t, err, c.want)
		})
	}
}

// A compose service's x-handoff says engine and swarm: as handoff.yml does; what
// describes the container (image, replicas, volumes) stays the compose file's.
func TestSwarmEngineInAnExtension(t *testing.T) {
	f, err := ParseExtension("compose.yaml (x-handoff of web)", "/srv", []byte("engine: swarm\nswarm: {proxy_image: r/handoff:1, network: apps, port: 9002, constraints: [node.role==worker], max_per_node: 2}\n"))
	require.NoError(t, err)
	require.Equal(t, EngineSwarm, f.Engine)
	require.Equal(t, Swarm{Network: "apps", ProxyImage: "r/handoff:1", Port: 9002, Constraints: []string{"node.role==worker"}, MaxPerNode: 2}, f.Swarm)
	s, err := f.Apply(deploy.Service{Name: "shop-web", Image: "r/web:1", Port: 8000, Replicas: 2}, Overrides{})
	require.ErrorContains(t, err, "engine swarm needs health: {type: cmd", "checked as handoff.yml's")
	require.Zero(t, s)

	for yml, want := range map[string]string{
		"swarm: {proxy_imag: x}\n":  `unknown key "proxy_imag" in swarm; did you mean "proxy_image"?`,
		"engine: swarm\nimage: x\n": `unknown key "image" at the top level`,
	} {
		_, err := ParseExtension("compose.yaml (x-handoff of web)", "/srv", []byte(yml))
		require.ErrorIs(t, err, deploy.ErrConfig)
		require.ErrorContains(t, err, want)
	}
}
