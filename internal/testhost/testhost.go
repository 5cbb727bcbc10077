// Package testhost builds the hosts that handoff's tests deploy to and connect to: today a
// real OpenSSH server on a loopback port, owned by the test. It is the one place for such
// harnesses, shared by the SSH and (later) the Swarm tests; a host in its own network
// namespace with its own dockerd belongs here too, beside SSHD.
package testhost

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

// RequireIntegration is the environment variable that turns a missing tool into a
// failure instead of a skip (scripts/test.sh and CI set it).
const RequireIntegration = "HANDOFF_REQUIRE_INTEGRATION"

// unavailable skips t, or fails it when integration tests are required.
func unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv(RequireIntegration) == "1" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

// repoRoot is the repository's top directory, found from this file's place in it.
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

var (
	installOnce sync.Once
	installErr  error
	installOut  []byte
)

// install runs one of scripts/install-*.sh once per test binary.
func install(script string) ([]byte, error) {
	installOnce.Do(func() {
		cmd := exec.Command("bash", filepath.Join(repoRoot(), "scripts", script))
		installOut, installErr = cmd.CombinedOutput()
	})
	return installOut, installErr
}
