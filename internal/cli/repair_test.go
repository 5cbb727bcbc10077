package cli

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// In a compose project of several services, repair is told which one, as
// status and rollback are.
func TestRepairTakesTheComposeServiceToRepair(t *testing.T) {
	t.Setenv("HANDOFF_COMPOSE", "false") // no compose tool to ask for hashes
	t.Setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
	dir := t.TempDir()
	compose := "name: shop\nservices:\n  web:\n    image: app:1\n    expose: [\"8000\"]\n    x-handoff: {route: shop.test}\n  worker:\n    image: app:1\n"
	file := filepath.Join(dir, "compose.yaml")
	require.NoError(t, os.WriteFile(file, []byte(compose), 0o644))

	_, stderr, code := run(t, "-f", file, "--state-dir", dir, "repair", "web")
	require.NotEqual(t, ExitUsage, code, stderr)
	require.Contains(t, stderr, "docker", "it got as far as asking Docker")

	_, stderr, _ = run(t, "-f", file, "--state-dir", dir, "repair", "web", "worker")
	require.Contains(t, stderr, "accepts at most 1 arg")
}

// handoff's messages say `handoff repair web` and `handoff proxy resume web`;
// with handoff.yml the service's own name is taken, another refused.
func TestTheServicesOwnNameIsTakenWithHandoffYML(t *testing.T) {
	t.Setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
	dir := t.TempDir()
	for _, args := range [][]string{{"repair", "web"}, {"proxy", "resume", "web", "--socket", filepath.Join(dir, "none.sock")}, {"proxy", "pause", "web", "--socket", filepath.Join(dir, "none.sock")}} {
		_, stderr, _ := run(t, append([]string{"--service", "web", "--state-dir", dir}, args...)...)
		require.NotContains(t, stderr, "unexpected argument", "%v", args)
		_, stderr, code := run(t, append([]string{"--service", "api", "--state-dir", dir}, args...)...)
		require.Equal(t, ExitUsage, code, "%v: %s", args, stderr)
		require.Contains(t, stderr, `unexpected argument "web": handoff.yml describes api`)
	}
}
