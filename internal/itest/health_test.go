package itest

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// Each kind of health check lets a healthy release through and refuses a
// sick one with the check's own words.
func TestHealthCheckKinds(t *testing.T) {
	s := NewScenario(t, ScenarioOptions{})
	hcImage := TestImage + "-hc"
	buildDerived(t, hcImage, "HEALTHCHECK --interval=1s --timeout=1s --start-period=2s --retries=2 CMD [\"/testapp\", \"check\"]\n")

	sick := map[string]string{"HEALTH_STATUS": "503"}
	cases := []struct {
		name   string
		cfg    Config
		reason string // "" : the deploy succeeds
	}{
		{"tcp", Config{Health: "health:\n  type: tcp\n  interval: 100ms\n", Env: map[string]string{"BOOT_DELAY": "1s"}}, ""},
		{"cmd", Config{Health: "health:\n  type: cmd\n  command: /testapp check\n  interval: 100ms\n"}, ""},
		{"cmd sick", Config{Health: "health:\n  type: cmd\n  command: [/testapp, check]\n  interval: 100ms\n  start_timeout: 5s\n", Env: sick},
			"last check: /testapp check exited 1: health 503 Service Unavailable"},
		{"docker", Config{Health: "health:\n  interval: 100ms\n", Image: hcImage}, ""},
		{"docker sick", Config{Health: "health:\n  interval: 100ms\n", Image: hcImage, Env: sick},
			"Docker HEALTHCHECK reports unhealthy: Docker HEALTHCHECK status unhealthy: health 503 Service Unavailable"},
		{"http with host", Config{Health: "health:\n  path: /health\n  host: api.example.com\n  status: 200-399\n  interval: 100ms\n"}, ""},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.cfg.Release = "k" + Itoa(i)
			s.WriteConfig(c.cfg)
			r := s.Run("deploy")
			if c.reason == "" {
				require.Equal(t, 0, r.Code, r.String())
				require.Equal(t, c.cfg.Release, s.Serving())
				return
			}
			require.Equal(t, 3, r.Code, r.String())
			require.Contains(t, r.Stderr, c.reason)
		})
	}
}

// Everything the service file says reaches the container.
func TestContainerGetsTheServiceSettings(t *testing.T) {
	// The network and the volume are removed after the scenario's
	// containers, which use them: cleanups run last registered, first.
	net, vol := UniqueName()+"-net", UniqueName()+"-data"
	Docker(t)
	require.NoError(t, run(t.TempDir(), nil, "docker", "network", "create", net))
	t.Cleanup(func() {
		if err := run(".", nil, "docker", "network", "rm", net); err != nil {
			t.Errorf("remove network %s: %v", net, err)
		}
	})
	t.Cleanup(func() {
		if err := run(".", nil, "docker", "volume", "rm", "-f", vol); err != nil {
			t.Errorf("remove volume %s: %v", vol, err)
		}
	})
	s := NewScenario(t, ScenarioOptions{})
	require.NoError(t, os.WriteFile(filepath.Join(s.Dir, "app.env"), []byte("FROM_FILE=1\nOVERRIDDEN=file\n"), 0o644))

	s.Deploy(Config{Release: "v1", Env: map[string]string{"OVERRIDDEN": "env"}, Extra: `command: ["--ignored-arg", "two words"]
env_file: app.env
volumes: ["` + vol + `:/data", "./:/host:ro"]
network: ` + net + `
labels: {team: web}
restart: unless-stopped
resources: {memory: 64m, cpus: 0.5}
`})
	res, err := s.API.ContainerInspect(t.Context(), s.Service+"-1", clientInspect)
	require.NoError(t, err)
	c := res.Container
	require.Subset(t, c.Config.Env, []string{"FROM_FILE=1", "OVERRIDDEN=env", "RELEASE=v1"})
	require.Equal(t, []string{"--ignored-arg", "two words"}, []string(c.Config.Cmd))
	require.Equal(t, []string{vol + ":/data", s.Dir + ":/host:ro"}, c.HostConfig.Binds)
	require.Equal(t, net, string(c.HostConfig.NetworkMode))
	require.Equal(t, "web", c.Config.Labels["team"])
	require.Equal(t, s.Service, c.Config.Labels["handoff.service"])
	require.Equal(t, "1", c.Config.Labels["handoff.release"])
	require.Equal(t, "unless-stopped", string(c.HostConfig.RestartPolicy.Name))
	require.Equal(t, int64(64<<20), c.HostConfig.Memory)
	require.Equal(t, int64(5e8), c.HostConfig.NanoCPUs)
	for _, bindings := range c.HostConfig.PortBindings {
		for _, b := range bindings {
			require.Equal(t, "127.0.0.1", b.HostIP.String(), "never published on 0.0.0.0")
		}
	}
	require.Equal(t, "v1", s.Serving())
}

// With build:, handoff runs the user's own docker build and deploys its image.
func TestBuildThenDeploy(t *testing.T) {
	s := NewScenario(t, ScenarioOptions{})
	ctxDir := filepath.Join(s.Dir, "app")
	require.NoError(t, os.MkdirAll(ctxDir, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(ctxDir, "Dockerfile.web"), []byte("FROM "+TestImage+"\nARG NOTE\nLABEL note=$NOTE\n"), 0o644))
	tag := s.Service + ":built"
	t.Cleanup(func() { _ = run(".", nil, "docker", "image", "rm", "-f", tag) })

	s.WriteConfig(Config{Release: "b1", Image: tag, Extra: "build:\n  context: app\n  dockerfile: app/Dockerfile.web\n  args: {NOTE: from-handoff}\n"})
	r := s.Run("deploy")
	require.Equal(t, 0, r.Code, r.String())
	require.Equal(t, "b1", s.Serving())
	res, err := s.API.ContainerInspect(t.Context(), s.Service+"-1", clientInspect)
	require.NoError(t, err)
	img, err := s.API.ImageInspect(t.Context(), tag)
	require.NoError(t, err)
	require.Equal(t, img.ID, res.Container.Image, "the image handoff resolved runs (a tag moved meanwhile is refused)")
	require.Equal(t, tag, res.Container.Config.Image, "docker ps shows the name")
	require.Equal(t, tag, res.Container.Config.Labels["handoff.image"])
	require.Equal(t, "from-handoff", res.Container.Config.Labels["note"], "the build arg reached docker build")

	s.WriteConfig(Config{Release: "b2", Image: tag, Extra: "build: app/nope\n"})
	r = s.Run("deploy")
	require.NotEqual(t, 0, r.Code)
	require.Contains(t, r.Stderr, "its output is above")
	require.Equal(t, "b1", s.Serving())
}

// buildDerived builds tag FROM the test image with more Dockerfile lines.
func buildDerived(t *testing.T, tag, lines string) {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte("FROM "+TestImage+"\n"+lines), 0o644))
	require.NoError(t, run(dir, nil, "docker", "build", "-q", "-t", tag, "."))
	t.Cleanup(func() { _ = run(".", nil, "docker", "image", "rm", "-f", tag) })
}
