package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// needTool skips a test when a tool is missing, but fails it where the
// run requires every integration test (scripts/test.sh sets
// HANDOFF_REQUIRE_INTEGRATION=1).
func needTool(t *testing.T, tool, why string) {
	t.Helper()
	if _, err := exec.LookPath(tool); err == nil {
		return
	}
	if os.Getenv("HANDOFF_REQUIRE_INTEGRATION") == "1" {
		t.Fatalf("%s is not installed (%s), and HANDOFF_REQUIRE_INTEGRATION=1", tool, why)
	}
	t.Skipf("%s is not installed (%s): skipped", tool, why)
}

func distPackage(t *testing.T, dist, ext string) string {
	t.Helper()
	pkgs, err := filepath.Glob(filepath.Join(dist, "*"+ext))
	require.NoError(t, err)
	require.Len(t, pkgs, 1, "one %s in %s", ext, dist)
	return pkgs[0]
}

func TestDebInstallsIntoACleanRootAndRuns(t *testing.T) {
	if hostTarget.OS != "linux" {
		t.Skip("packages are built for linux only")
	}
	needTool(t, "dpkg", "it installs the .deb")
	dist, r := snapshot(t)
	deb := distPackage(t, dist, ".deb")
	require.Equal(t, "handoff_0.0.0~snapshot+"+strings.TrimPrefix(r.Version, "v0.0.0-snapshot+")+"_"+hostTarget.Arch+".deb", filepath.Base(deb))

	// An empty root with only dpkg's own database: nothing of this
	// machine's /usr is there, so what runs is what the package brought.
	root := t.TempDir()
	for _, d := range []string{"var/lib/dpkg/info", "var/lib/dpkg/updates"} {
		require.NoError(t, os.MkdirAll(filepath.Join(root, d), 0o755))
	}
	require.NoError(t, os.WriteFile(filepath.Join(root, "var/lib/dpkg/status"), nil, 0o644))
	dpkg := func(args ...string) string {
		t.Helper()
		return mustRun(t, "dpkg", append([]string{"--root=" + root, "--log=/dev/null"}, args...)...)
	}
	dpkg("--install", deb)
	status := dpkg("--status", "handoff")
	require.Contains(t, status, "Status: install ok installed")
	require.Contains(t, status, "Architecture: "+hostTarget.Arch)

	requireInstalled(t, root, "deb", strings.Split(strings.TrimSpace(dpkg("--listfiles", "handoff")), "\n"), r)

	// And it goes away whole.
	dpkg("--remove", "handoff")
	require.NoFileExists(t, filepath.Join(root, BinPath))
	require.NoFileExists(t, filepath.Join(root, UnitPath))
}

func TestRPMInstallsIntoACleanRootAndRuns(t *testing.T) {
	if hostTarget.OS != "linux" {
		t.Skip("packages are built for linux only")
	}
	dist, r := snapshot(t)
	pkg := distPackage(t, dist, ".rpm")
	arch := map[string]string{"amd64": "x86_64", "arm64": "aarch64"}[hostTarget.Arch]
	require.Equal(t, "handoff-0.0.0~snapshot+"+strings.TrimPrefix(r.Version, "v0.0.0-snapshot+")+"-1."+arch+".rpm", filepath.Base(pkg))
	if _, err := exec.LookPath("rpm"); err != nil {
		// Not needed even with HANDOFF_REQUIRE_INTEGRATION: scripts/test.sh
		// installs Debian's rpm where it can, the .deb's test is the one
		// that must run.
		t.Skip("rpm is not installed: the .rpm's name is checked, not its install")
	}

	root := t.TempDir()
	rpm := func(args ...string) string {
		t.Helper()
		return mustRun(t, "rpm", append([]string{"--root", root}, args...)...)
	}
	rpm("--initdb")
	rpm("--install", "--nodeps", pkg) // nodeps: the empty root provides not even /bin/sh
	requireInstalled(t, root, "rpm", strings.Split(strings.TrimSpace(rpm("--query", "--list", "handoff")), "\n"), r)
	rpm("--erase", "--nodeps", "handoff")
	require.NoFileExists(t, filepath.Join(root, BinPath))
}

// mustRun runs a command and returns its standard output.
func mustRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	var stdout, stderr strings.Builder
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoError(t, cmd.Run(), "%s %s: %s", name, strings.Join(args, " "), stderr.String())
	return stdout.String()
}

// requireInstalled checks a package of format installed into root, whose
// package manager lists listed: the files it should have are there, the
// unit starts the binary it put there, and that binary runs from the root.
func requireInstalled(t *testing.T, root, format string, listed []string, r Result) {
	t.Helper()
	want := []string{BinPath, UnitPath, ManDir + "/handoff.1.gz", ManDir + "/handoff-deploy.1.gz"}
	for _, shell := range []string{"bash", "zsh", "fish"} {
		want = append(want, CompletionPath(format, shell))
	}
	for _, f := range want {
		require.Contains(t, listed, f)
	}
	for _, f := range listed {
		_, err := os.Lstat(filepath.Join(root, f))
		require.NoError(t, err, "the package lists %s", f)
	}

	unit, err := os.ReadFile(filepath.Join(root, UnitPath))
	require.NoError(t, err)
	start := regexp.MustCompile(`(?m)^ExecStart=(\S+) proxy `).FindStringSubmatch(string(unit))
	require.NotNil(t, start, "the unit's ExecStart runs handoff proxy:\n%s", unit)
	require.Equal(t, BinPath, start[1])
	info, err := os.Stat(filepath.Join(root, start[1]))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o755), info.Mode().Perm())
	require.NotContains(t, string(unit), "/usr/local/bin")

	// handoff version from the root: chrooted where this test may, so that
	// no library of this machine's could be lent to it.
	run := []string{filepath.Join(root, BinPath), "version", "--json"}
	if os.Geteuid() == 0 {
		run = []string{"chroot", root, BinPath, "version", "--json"}
	}
	var v map[string]string
	require.NoError(t, json.Unmarshal([]byte(mustRun(t, run[0], run[1:]...)), &v))
	require.Equal(t, r.Version, v["version"])
	require.Equal(t, r.Commit, v["commit"])
}

func TestPackagedUnitStartsThePackagedBinary(t *testing.T) {
	repo, err := findRepo()
	require.NoError(t, err)
	unit, err := os.ReadFile(filepath.Join(repo, "deploy", "handoff-proxy.service"))
	require.NoError(t, err)
	got, err := packagedUnit(unit)
	require.NoError(t, err)
	require.Contains(t, string(got), "\nExecStart=/usr/bin/handoff proxy --socket /run/handoff/proxy.sock")
	require.True(t, strings.HasPrefix(string(got), "# systemd unit for `handoff proxy`, installed by the handoff package."))
	require.NotContains(t, string(got), "/usr/local/bin")
	_, after, _ := strings.Cut(string(unit), "[Unit]")
	_, gotAfter, _ := strings.Cut(string(got), "[Unit]")
	require.Equal(t, strings.Replace(after, "/usr/local/bin/handoff", "/usr/bin/handoff", 1), gotAfter, "only the binary's path changes")

	_, err = packagedUnit([]byte("[Unit]\n[Service]\nExecStart=/opt/handoff proxy\n"))
	require.ErrorContains(t, err, "no line \"ExecStart=/usr/local/bin/handoff\"")
}
