package itest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// An image pushed to a registry with htpasswd auth is pulled with the
// credentials of a Docker config in DOCKER_CONFIG; no or wrong credentials
// fail before anything starts; --pull always takes a tag that moved; a
// rollback after the tag moved runs the old image, by digest.
func TestImagesFromARegistry(t *testing.T) {
	Build(t)
	reg := StartRegistry(t)
	repo := reg.Addr + "/" + UniqueName() + "/app"
	oldTag, newTag := UniqueName()+":old", UniqueName()+":new"
	t.Cleanup(func() { RemoveImages(repo+":1", oldTag, newTag) })
	oldID := VariantImage(t, oldTag, "old")
	newID := VariantImage(t, newTag, "new")
	oldDigest := reg.Push(oldTag, repo+":1")

	s := NewScenario(t, ScenarioOptions{})
	good := []string{"DOCKER_CONFIG=" + reg.DockerConfig(reg.User, reg.Password)}
	deploy := func(env []string, release string, args ...string) Result {
		t.Helper()
		s.WriteConfig(Config{Release: release, Image: repo + ":1"})
		return HandoffEnv(t, s.Bin, s.Dir, s.State, env, append([]string{"deploy"}, args...)...)
	}

	r := deploy([]string{"DOCKER_CONFIG=" + t.TempDir()}, "v1")
	require.Equal(t, 6, r.Code, r.String())
	require.Contains(t, r.Stderr, reg.Addr+" wants a login")
	require.Contains(t, r.Stderr, "run `docker login "+reg.Addr+"`")
	r = deploy([]string{"DOCKER_CONFIG=" + reg.DockerConfig(reg.User, "wrong")}, "v1")
	require.Equal(t, 6, r.Code, r.String())
	require.Contains(t, r.Stderr, reg.Addr+" refused the credentials from")
	require.NotContains(t, r.Stderr, "wrong", "no credential is ever printed")
	require.Empty(t, Containers(t, s.API, s.Service), "nothing was started")
	require.Equal(t, "v0", s.Serving())

	// A credential helper (credHelpers) that gives the wrong password: the
	// helper was asked, and its answer refused.
	cfg, bin := reg.HelperConfig("handofftest", reg.User, "wrong")
	r = deploy([]string{"DOCKER_CONFIG=" + cfg, "PATH=" + bin + ":" + os.Getenv("PATH")}, "v1")
	require.Equal(t, 6, r.Code, r.String())
	require.Contains(t, r.Stderr, reg.Addr+" refused the credentials from docker-credential-handofftest")

	// The right password through the helper: pulled, deployed.
	cfg, bin = reg.HelperConfig("handofftest", reg.User, reg.Password)
	r = deploy([]string{"DOCKER_CONFIG=" + cfg, "PATH=" + bin + ":" + os.Getenv("PATH")}, "v1")
	require.Equal(t, 0, r.Code, r.String())
	require.Contains(t, r.Stderr, "Status: Downloaded newer image for "+repo+":1", "pull progress is shown")
	require.Equal(t, "v1", s.Serving())
	hist := s.history()
	require.Equal(t, oldID, hist[0].ImageID)
	require.Equal(t, oldDigest, hist[0].Digest, "the pulled digest is recorded")
	r = s.Run("history")
	require.Contains(t, r.Stdout, strings.SplitN(oldDigest, "@", 2)[1][:19], "history shows the digest")

	// The tag moves in the registry; this host still has the old image under it.
	newDigest := reg.Push(newTag, repo+":1")
	require.NoError(t, exec.Command("docker", "tag", oldTag, repo+":1").Run())
	r = deploy(good, "v2") // --pull missing: the image is here, it is not pulled
	require.Equal(t, 0, r.Code, r.String())
	require.Equal(t, oldID, s.history()[0].ImageID)
	r = deploy(good, "v3", "--pull", "always")
	require.Equal(t, 0, r.Code, r.String())
	hist = s.history()
	require.Equal(t, newID, hist[0].ImageID, "always takes the tag as the registry has it now")
	require.Equal(t, newDigest, hist[0].Digest)
	require.Equal(t, "v3", s.Serving())

	r = s.Run("rollback")
	require.Equal(t, 0, r.Code, r.String())
	require.Equal(t, "v2", s.Serving())
	live := s.status().Live
	require.Equal(t, oldID, live.ImageID, "the rollback runs the image it ran, not what the tag names now")

	// --pull never with an image that is not here: a clear error, nothing started.
	RemoveImages(repo + ":1")
	s.WriteConfig(Config{Release: "v4", Image: repo + ":2"})
	r = HandoffEnv(t, s.Bin, s.Dir, s.State, good, "deploy", "--pull", "never")
	require.Equal(t, 6, r.Code, r.String())
	require.Contains(t, r.Stderr, "is not on this Docker host")
	_, err := os.Stat(filepath.Join(s.Dir, "handoff.yml"))
	require.NoError(t, err)
}
