package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// These run the repository's install.sh with sh against a file server on
// loopback that serves a dist directory.

// fileServer serves dir on loopback and records the paths asked for.
type fileServer struct {
	URL  string
	mu   sync.Mutex
	asks []string
}

func serveDir(t *testing.T, dir string) *fileServer {
	t.Helper()
	fs := &fileServer{}
	files := http.FileServer(http.Dir(dir))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fs.mu.Lock()
		fs.asks = append(fs.asks, r.URL.Path)
		fs.mu.Unlock()
		files.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	fs.URL = srv.URL
	return fs
}

func (fs *fileServer) asked() []string {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return append([]string(nil), fs.asks...)
}

// fakeUname is a uname that says install.sh runs on machine ("Darwin
// arm64").
func fakeUname(machine string) map[string]string {
	osName, arch, _ := strings.Cut(machine, " ")
	return map[string]string{"uname": fmt.Sprintf(`case "$1" in -s) echo %s ;; -m) echo %s ;; *) exit 1 ;; esac`, osName, arch)}
}

// installRun is one run of install.sh.
type installRun struct {
	Stdout, Stderr string
	Err            error
}

// runInstall runs install.sh with env added, and with fakes (a command's
// name → its shell script) first in PATH.
func runInstall(t *testing.T, env map[string]string, fakes map[string]string) installRun {
	t.Helper()
	repo, err := findRepo()
	require.NoError(t, err)
	cmd := exec.Command("sh", filepath.Join(repo, "install.sh"))
	cmd.Env = append(os.Environ(), "TMPDIR="+t.TempDir())
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	if len(fakes) > 0 {
		bin := t.TempDir()
		for name, script := range fakes {
			require.NoError(t, os.WriteFile(filepath.Join(bin, name), []byte("#!/bin/sh\n"+script+"\n"), 0o755))
		}
		cmd.Env = append(cmd.Env, "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	}
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	done := make(chan error, 1)
	require.NoError(t, cmd.Start())
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-time.After(2 * time.Minute):
		_ = cmd.Process.Kill()
		t.Fatalf("install.sh still running after 2 minutes; stderr: %s", stderr.String())
	}
	return installRun{stdout.String(), stderr.String(), err}
}

// requireRefused checks that a run failed with the one line want starts
// with, and left dir without a handoff.
func requireRefused(t *testing.T, r installRun, want, dir string) {
	t.Helper()
	require.Error(t, r.Err, "stdout: %s", r.Stdout)
	require.True(t, strings.HasPrefix(r.Stderr, "install.sh: "+want), "stderr: %q", r.Stderr)
	require.Equal(t, 1, strings.Count(r.Stderr, "\n"), "one line: %q", r.Stderr)
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		require.NotEqual(t, "handoff", e.Name(), "refused, yet %s/handoff is there", dir)
		require.NotEqual(t, ".handoff.new", e.Name())
	}
}

func TestInstallScriptInstallsTheSnapshotForThisMachine(t *testing.T) {
	dist, r := snapshot(t)
	srv := serveDir(t, dist)
	dir := filepath.Join(t.TempDir(), "bin") // made by install.sh
	run := runInstall(t, map[string]string{"HANDOFF_BASE_URL": srv.URL + "/", "HANDOFF_INSTALL_DIR": dir}, nil)
	require.NoError(t, run.Err, "stderr: %s", run.Stderr)
	require.Contains(t, run.Stdout, "installed "+dir+"/handoff ("+ArchiveName(hostTarget)+", sha256 checked)\nhandoff "+r.Version+" (commit "+r.Commit)
	require.Equal(t, []string{"/" + ChecksumsFile, "/" + ArchiveName(hostTarget)}, srv.asked())

	info, err := os.Stat(filepath.Join(dir, "handoff"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o755), info.Mode().Perm())
	out, err := exec.Command(filepath.Join(dir, "handoff"), "version", "--json").Output()
	require.NoError(t, err)
	var v map[string]string
	require.NoError(t, json.Unmarshal(out, &v))
	require.Equal(t, r.Version, v["version"])

	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, entries, 1, "only the binary: no temporary file left")
}

func TestInstallScriptRefusesACorruptedArchive(t *testing.T) {
	dist, _ := snapshot(t)
	bad := t.TempDir()
	for _, name := range []string{ChecksumsFile, ArchiveName(hostTarget)} {
		data, err := os.ReadFile(filepath.Join(dist, name))
		require.NoError(t, err)
		if name != ChecksumsFile {
			data[len(data)/2] ^= 0xff // one byte of the archive, in transit
		}
		require.NoError(t, os.WriteFile(filepath.Join(bad, name), data, 0o644))
	}
	srv := serveDir(t, bad)
	dir := t.TempDir()
	// A handoff installed before stays as it was.
	old := []byte("#!/bin/sh\necho old handoff\n")
	require.NoError(t, os.WriteFile(filepath.Join(dir, "handoff"+".old"), old, 0o755))

	run := runInstall(t, map[string]string{"HANDOFF_BASE_URL": srv.URL, "HANDOFF_INSTALL_DIR": dir}, nil)
	requireRefused(t, run, "checksum mismatch for "+ArchiveName(hostTarget)+" (sha256 ", dir)
	require.Contains(t, run.Stderr, "nothing installed")
	kept, err := os.ReadFile(filepath.Join(dir, "handoff.old"))
	require.NoError(t, err)
	require.Equal(t, old, kept)
}

// fakeDist writes a dist with an archive for each of targets, each
// holding a handoff that is a shell script naming its target, and their
// checksums.
func fakeDist(t *testing.T, targets ...Target) string {
	t.Helper()
	dir := t.TempDir()
	var names []string
	for _, tg := range targets {
		src := filepath.Join(t.TempDir(), "handoff")
		require.NoError(t, os.WriteFile(src, []byte("#!/bin/sh\necho fake handoff for "+tg.String()+"\n"), 0o755))
		name := ArchiveName(tg)
		require.NoError(t, writeArchive(filepath.Join(dir, name), []archiveFile{{"handoff", src, 0o755}}, time.Unix(0, 0)))
		names = append(names, name)
	}
	require.NoError(t, writeChecksums(dir, names))
	return dir
}

func TestInstallScriptPicksTheArchiveForTheMachine(t *testing.T) {
	srv := serveDir(t, fakeDist(t, DefaultTargets...))
	for uname, target := range map[string]Target{
		"Linux x86_64":   {"linux", "amd64"},
		"Linux aarch64":  {"linux", "arm64"},
		"Linux arm64":    {"linux", "arm64"},
		"Darwin x86_64":  {"darwin", "amd64"},
		"Darwin arm64":   {"darwin", "arm64"},
		"Darwin aarch64": {"darwin", "arm64"},
	} {
		t.Run(uname, func(t *testing.T) {
			dir := t.TempDir()
			run := runInstall(t, map[string]string{"HANDOFF_BASE_URL": srv.URL, "HANDOFF_INSTALL_DIR": dir}, fakeUname(uname))
			require.NoError(t, run.Err, "stderr: %s", run.Stderr)
			require.Contains(t, run.Stdout, "installed "+dir+"/handoff ("+ArchiveName(target)+", sha256 checked)")
			got, err := os.ReadFile(filepath.Join(dir, "handoff"))
			require.NoError(t, err)
			require.Contains(t, string(got), "fake handoff for "+target.String())
		})
	}
}

func TestInstallScriptRefusesAnUnknownPlatform(t *testing.T) {
	srv := serveDir(t, fakeDist(t, DefaultTargets...))
	for _, uname := range []string{"FreeBSD amd64", "Linux riscv64", "Linux armv7l", "MINGW64_NT-10.0 x86_64"} {
		t.Run(uname, func(t *testing.T) {
			dir := t.TempDir()
			run := runInstall(t, map[string]string{"HANDOFF_BASE_URL": srv.URL, "HANDOFF_INSTALL_DIR": dir}, fakeUname(uname))
			osName, arch, _ := strings.Cut(uname, " ")
			requireRefused(t, run, "no handoff build for "+osName+"/"+arch+" (there are Linux and Darwin, on x86_64 and arm64)", dir)
		})
	}
	require.Empty(t, srv.asked(), "nothing downloaded for a platform with no build")
}

func TestInstallScriptDownloadFailed(t *testing.T) {
	// The checksums are there, the archive for this machine is not.
	only := fakeDist(t, Target{"plan9", "amd64"})
	srv := serveDir(t, only)
	dir := t.TempDir()
	run := runInstall(t, map[string]string{"HANDOFF_BASE_URL": srv.URL, "HANDOFF_INSTALL_DIR": dir}, fakeUname("Linux x86_64"))
	requireRefused(t, run, "download failed: "+srv.URL+"/handoff_linux_amd64.tar.gz", dir)

	// Nothing listens there at all.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	gone := "http://" + l.Addr().String()
	require.NoError(t, l.Close())
	run = runInstall(t, map[string]string{"HANDOFF_BASE_URL": gone, "HANDOFF_INSTALL_DIR": dir}, fakeUname("Linux x86_64"))
	requireRefused(t, run, "download failed: "+gone+"/checksums.txt", dir)
}

func TestInstallScriptRefusesAnArchiveTheChecksumsDoNotList(t *testing.T) {
	dist := fakeDist(t, Target{"linux", "amd64"})
	require.NoError(t, writeChecksums(dist, nil)) // an empty list
	srv := serveDir(t, dist)
	dir := t.TempDir()
	run := runInstall(t, map[string]string{"HANDOFF_BASE_URL": srv.URL, "HANDOFF_INSTALL_DIR": dir}, fakeUname("Linux x86_64"))
	requireRefused(t, run, srv.URL+"/checksums.txt lists no handoff_linux_amd64.tar.gz: nothing installed", dir)
}

func TestInstallScriptSaysWhatToDoWhenItCannotWrite(t *testing.T) {
	srv := serveDir(t, fakeDist(t, Target{"linux", "amd64"}))
	// A directory that cannot be made, even by root: its parent is a file.
	file := filepath.Join(t.TempDir(), "file")
	require.NoError(t, os.WriteFile(file, nil, 0o644))
	dir := filepath.Join(file, "bin")
	run := runInstall(t, map[string]string{"HANDOFF_BASE_URL": srv.URL, "HANDOFF_INSTALL_DIR": dir}, fakeUname("Linux x86_64"))
	requireRefused(t, run, "cannot create "+dir+": run as root (curl ... | sudo sh), or set HANDOFF_INSTALL_DIR=$HOME/.local/bin", dir)
}

func TestInstallScriptDownloadsFromTheGitHubRelease(t *testing.T) {
	// A curl that fails as a 404 does, so that nothing leaves this machine:
	// the error names the URL install.sh asked for.
	fakes := fakeUname("Linux x86_64")
	fakes["curl"] = "exit 22"
	for version, url := range map[string]string{
		"":       "https://github.com/handoff-dev/handoff/releases/latest/download/checksums.txt",
		"latest": "https://github.com/handoff-dev/handoff/releases/latest/download/checksums.txt",
		"v1.2.3": "https://github.com/handoff-dev/handoff/releases/download/v1.2.3/checksums.txt",
	} {
		dir := t.TempDir()
		run := runInstall(t, map[string]string{"HANDOFF_VERSION": version, "HANDOFF_INSTALL_DIR": dir}, fakes)
		requireRefused(t, run, "download failed: "+url, dir)
	}
}
