package docker

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/moby/moby/api/types/registry"
	"github.com/moby/moby/client"
	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/deploy"
)

// A build argument's value is readable by every local user in the process
// list when it is on the command line: the value goes in the docker
// command's environment, the name alone on its command line.
func TestBuildArgValuesAreNotOnTheCommandLine(t *testing.T) {
	r := engine(t)
	real, err := exec.LookPath("docker")
	need(t, "docker command", err)
	// A docker on PATH that writes down its command line, then runs the real one.
	bin, argv := t.TempDir(), filepath.Join(t.TempDir(), "argv")
	wrapper := "#!/bin/sh\nprintf '%s\\n' \"$@\" >>'" + argv + "'\nexec '" + real + "' \"$@\"\n"
	require.NoError(t, os.WriteFile(filepath.Join(bin, "docker"), []byte(wrapper), 0o755))
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	t.Setenv("NPM_TOKEN", "what the shell had")

	dir := t.TempDir()
	dockerfile := "FROM scratch\nARG NPM_TOKEN\nARG MODE=default\nARG UNSET=kept\nLABEL token=\"$NPM_TOKEN\" mode=\"$MODE\" unset=\"$UNSET\"\n"
	require.NoError(t, os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(dockerfile), 0o644))
	tag := "handoff-test-buildarg:" + strconv.FormatInt(time.Now().UnixNano(), 36)
	ctx := context.Background()
	t.Cleanup(func() {
		_, _ = r.api.ImageRemove(context.Background(), tag, client.ImageRemoveOptions{Force: true, PruneChildren: true})
	})

	var out bytes.Buffer
	spec := deploy.BuildSpec{Context: dir, Args: map[string]string{"NPM_TOKEN": "npm_s3cr3t with spaces", "MODE": "prod"}}
	require.NoError(t, r.Build(ctx, spec, tag, &out), out.String())

	img, err := r.api.ImageInspect(ctx, tag)
	require.NoError(t, err)
	labels := img.Config.Labels
	require.Equal(t, "npm_s3cr3t with spaces", labels["token"], "the value reached the build, over the shell's own")
	require.Equal(t, "prod", labels["mode"])
	require.Equal(t, "kept", labels["unset"], "an argument not given keeps the Dockerfile's default")
	cmdline, err := os.ReadFile(argv)
	require.NoError(t, err)
	require.NotContains(t, string(cmdline), "npm_s3cr3t", "the value is not on the command line")
	require.Contains(t, string(cmdline), "--build-arg\nNPM_TOKEN\n")
}

// engine connects to the Docker engine, or skips the test where there is
// none (except in CI, where a skipped integration test would hide a failure).
func engine(t *testing.T) *Runtime {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := New(ctx)
	need(t, "docker engine", err)
	t.Cleanup(func() { r.Close() })
	return r
}

func need(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if os.Getenv("CI") != "" || os.Getenv("HANDOFF_REQUIRE_INTEGRATION") != "" {
		t.Fatalf("%s: %v", what, err)
	}
	t.Skipf("%s: %v", what, err)
}

func TestBuildCommandPutsValuesInTheEnvironment(t *testing.T) {
	spec := deploy.BuildSpec{Context: "/src", Dockerfile: "/src/Dockerfile.prod", Target: "app",
		Args: map[string]string{"NPM_TOKEN": "s3cr3t", "EMPTY": "", "HTTP_PROXY": "http://proxy:3128", "DOCKER_HOST": "x"}}
	args, env := buildCommand(spec, "web:latest", []string{"HOME=/root", "NPM_TOKEN=old", "PATH=/bin"})
	require.Equal(t, []string{"build", "--tag", "web:latest", "--file", "/src/Dockerfile.prod", "--target", "app",
		"--build-arg", "DOCKER_HOST=x", "--build-arg", "EMPTY", "--build-arg", "HTTP_PROXY=http://proxy:3128", "--build-arg", "NPM_TOKEN", "/src"}, args,
		"names the docker command reads for itself keep their value on the command line")
	require.Equal(t, []string{"HOME=/root", "PATH=/bin", "EMPTY=", "NPM_TOKEN=s3cr3t"}, env, "the build's value wins over the shell's")
}

func TestRegistryAuthFindsDockerHubsCredentialsUnderItsIndexServer(t *testing.T) {
	dir := t.TempDir()
	// What `docker login` writes for Docker Hub, and a login to another registry.
	config := `{"auths": {"https://index.docker.io/v1/": {"auth": "` + base64.StdEncoding.EncodeToString([]byte("hubuser:hubpass")) + `"},
		"reg.example.com": {"auth": "` + base64.StdEncoding.EncodeToString([]byte("reguser:regpass")) + `"}}}`
	require.NoError(t, os.WriteFile(filepath.Join(dir, "config.json"), []byte(config), 0o600))
	t.Setenv("DOCKER_CONFIG", dir)
	for ref, user := range map[string]string{"team/app:1": "hubuser", "docker.io/team/app:1": "hubuser", "nginx": "hubuser",
		"reg.example.com/team/app:1": "reguser", "other.example.com/app": ""} {
		encoded, err := RegistryAuth(ref)
		require.NoError(t, err)
		if user == "" {
			require.Empty(t, encoded, ref)
			continue
		}
		raw, err := base64.URLEncoding.DecodeString(encoded)
		require.NoError(t, err, ref)
		var ac registry.AuthConfig
		require.NoError(t, json.Unmarshal(raw, &ac), ref)
		require.Equal(t, user, ac.Username, ref)
	}
}
