package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/cli"
)

// The snapshot the tests share: a real build for this machine's platform,
// made once by the first test that asks (about a minute with a cold build
// cache) and removed when the tests end.
var (
	snapOnce sync.Once
	snapDir  string
	snapRes  Result
	snapErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if snapDir != "" {
		_ = os.RemoveAll(snapDir)
	}
	os.Exit(code)
}

var hostTarget = Target{runtime.GOOS, runtime.GOARCH}

// snapshot returns the shared snapshot's dist directory and what Build
// said of it.
func snapshot(t *testing.T) (string, Result) {
	t.Helper()
	snapOnce.Do(func() {
		repo, err := findRepo()
		if err != nil {
			snapErr = err
			return
		}
		if snapDir, snapErr = os.MkdirTemp("", "handoff-dist-"); snapErr != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
		defer cancel()
		began := time.Now()
		snapRes, snapErr = Build(ctx, Options{Repo: repo, Out: snapDir, Snapshot: true, Targets: []Target{hostTarget}})
		fmt.Fprintf(os.Stderr, "snapshot for %s built in %s\n", hostTarget, time.Since(began).Round(100*time.Millisecond))
	})
	require.NoError(t, snapErr)
	return snapDir, snapRes
}

func TestSnapshotBinaryIsStaticStampedAndLinksNoNfpm(t *testing.T) {
	dist, r := snapshot(t)
	bin := filepath.Join(dist, hostTarget.String(), "handoff")

	out, err := exec.Command(bin, "version", "--json").Output()
	require.NoError(t, err)
	var v map[string]string
	require.NoError(t, json.Unmarshal(out, &v))
	require.Equal(t, r.Version, v["version"])
	// CI may check out the files without their git history: a snapshot of those names
	// no commit (TestASnapshotWithoutGitNamesNoCommit).
	require.Regexp(t, `^v0\.0\.0-snapshot\+([0-9a-f]{12}(\.dirty)?|nogit)$`, r.Version)
	require.Equal(t, r.Commit, v["commit"])
	require.Len(t, r.Commit, 40)
	require.Equal(t, r.Date.Format(time.RFC3339), v["date"])
	require.Equal(t, hostTarget.OS+"/"+hostTarget.Arch, v["platform"])
	stamp, err := os.ReadFile(filepath.Join(filepath.Dir(bin), VersionFile))
	require.NoError(t, err)
	var beside map[string]string
	require.NoError(t, json.Unmarshal(stamp, &beside))
	require.Equal(t, map[string]string{"version": v["version"], "commit": v["commit"], "date": v["date"]}, beside, "the stamp beside the binary is what it prints")

	// What the toolchain recorded of the build: no cgo, no local paths,
	// and none of the release program's modules.
	mods, err := exec.Command("go", "version", "-m", bin).Output()
	require.NoError(t, err)
	require.Contains(t, string(mods), "build\tCGO_ENABLED=0")
	require.Contains(t, string(mods), "build\t-trimpath=true")
	for _, m := range []string{"nfpm", "goreleaser", "go-md2man", "go-git"} {
		require.NotContains(t, string(mods), m)
	}

	if hostTarget.OS == "linux" {
		f, err := elf.Open(bin)
		require.NoError(t, err)
		defer f.Close()
		for _, p := range f.Progs {
			require.NotEqual(t, elf.PT_INTERP, p.Type, "a static binary names no dynamic loader")
		}
		libs, err := f.ImportedLibraries()
		require.NoError(t, err)
		require.Empty(t, libs)
	}
}

// tarEntries reads a tar.gz: each entry's name and (for files) content.
func tarEntries(t *testing.T, path string) map[string][]byte {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	zr, err := gzip.NewReader(f)
	require.NoError(t, err)
	tr := tar.NewReader(zr)
	entries := map[string][]byte{}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return entries
		}
		require.NoError(t, err)
		data, err := io.ReadAll(tr)
		require.NoError(t, err)
		entries[hdr.Name] = data
	}
}

func TestArchiveHoldsTheBinaryItsUnitCompletionsAndManPages(t *testing.T) {
	dist, _ := snapshot(t)
	entries := tarEntries(t, filepath.Join(dist, ArchiveName(hostTarget)))
	var names []string
	for n := range entries {
		if !strings.HasPrefix(n, "man/man1/handoff-") { // one per command: checked below
			names = append(names, n)
		}
	}
	sort.Strings(names)
	require.Equal(t, []string{
		"README.md",
		"completions/", "completions/bash/", "completions/bash/handoff",
		"completions/fish/", "completions/fish/handoff.fish",
		"completions/zsh/", "completions/zsh/_handoff",
		"handoff",
		"man/", "man/man1/", "man/man1/handoff.1",
		"systemd/", "systemd/handoff-proxy.service",
	}, names)

	bin, err := os.ReadFile(filepath.Join(dist, hostTarget.String(), "handoff"))
	require.NoError(t, err)
	require.True(t, bytes.Equal(bin, entries["handoff"]), "the archive's binary is the one built")

	// The scripts are what the binary itself prints.
	for shell, name := range map[string]string{"bash": "completions/bash/handoff", "zsh": "completions/zsh/_handoff", "fish": "completions/fish/handoff.fish"} {
		var out bytes.Buffer
		require.Equal(t, 0, cli.Main(context.Background(), []string{"completion", shell}, &cli.IO{Out: &out, Err: io.Discard}))
		require.Equal(t, out.String(), string(entries[name]), shell)
	}

	// A man page for every command users run, and each names it.
	for _, cmd := range []string{"deploy", "rollback", "status", "proxy", "proxy-status", "canary", "version", "completion"} {
		page, ok := entries["man/man1/handoff-"+cmd+".1"]
		require.True(t, ok, "man page of handoff %s", cmd)
		require.Contains(t, string(page), `.TH "HANDOFF"`)
		require.Contains(t, string(page), "handoff "+strings.ReplaceAll(cmd, "-", " "))
	}
	require.Contains(t, string(entries["man/man1/handoff-status.1"]), "/var/lib/handoff for root, ~/.local/state/handoff for others",
		"a man page names the state directory of every user, not the builder's")
}

func TestChecksumsListEveryDownload(t *testing.T) {
	dist, r := snapshot(t)
	f, err := os.Open(filepath.Join(dist, ChecksumsFile))
	require.NoError(t, err)
	defer f.Close()
	listed := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		sum, name, ok := strings.Cut(sc.Text(), "  ")
		require.True(t, ok, "line %q is not sha256sum's", sc.Text())
		listed[name] = sum
	}
	var want []string
	for _, a := range r.Artifacts {
		if a.Name != ChecksumsFile {
			want = append(want, a.Name)
			sum, err := sha256File(filepath.Join(dist, a.Name))
			require.NoError(t, err)
			require.Equal(t, sum, listed[a.Name], a.Name)
		}
	}
	require.Len(t, listed, len(want))
	if hostTarget.OS == "linux" {
		require.Len(t, want, 3, "an archive, a .deb and an .rpm: %v", want)
	}
	if _, err := exec.LookPath("sha256sum"); err == nil {
		cmd := exec.Command("sha256sum", "-c", ChecksumsFile)
		cmd.Dir = dist
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s", out)
	}
}

func TestArchivesOfTheSameFilesAreTheSameBytes(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "handoff")
	require.NoError(t, os.WriteFile(src, []byte("#!/bin/sh\necho handoff\n"), 0o700))
	files := []archiveFile{{"handoff", src, 0o755}, {"a/b/c", src, 0o644}}
	at := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	require.NoError(t, writeArchive(filepath.Join(dir, "1.tar.gz"), files, at))
	require.NoError(t, os.Chmod(src, 0o755))
	require.NoError(t, writeArchive(filepath.Join(dir, "2.tar.gz"), []archiveFile{files[1], files[0]}, at))
	one, err := os.ReadFile(filepath.Join(dir, "1.tar.gz"))
	require.NoError(t, err)
	two, err := os.ReadFile(filepath.Join(dir, "2.tar.gz"))
	require.NoError(t, err)
	require.Equal(t, one, two)
}

func TestAReleaseVersionIsLikeV123AndASnapshotNamesItsOwn(t *testing.T) {
	for _, o := range []Options{
		{Version: ""},
		{Version: "1.2.3"},
		{Version: "v1.2"},
		{Version: "v1.2.3 "},
		{Version: "v1.2.3", Snapshot: true},
	} {
		_, err := readStamp(context.Background(), o)
		require.Error(t, err, "%+v", o)
	}
	require.True(t, semver.MatchString("v1.2.3"))
	require.True(t, semver.MatchString("v1.2.3-rc.1"))
}

func TestOutIsEmptiedOnlyWhenAReleaseBuildWroteIt(t *testing.T) {
	out := filepath.Join(t.TempDir(), "dist")
	require.NoError(t, emptyOut(out)) // absent: made
	require.NoError(t, os.WriteFile(filepath.Join(out, "old.tar.gz"), nil, 0o644))
	require.NoError(t, emptyOut(out)) // its own: emptied
	require.NoFileExists(t, filepath.Join(out, "old.tar.gz"))

	mine := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(mine, "notes.txt"), []byte("keep"), 0o644))
	err := emptyOut(mine)
	require.ErrorContains(t, err, "holds files a release build did not write")
	require.FileExists(t, filepath.Join(mine, "notes.txt"))
}

// A snapshot of files without .git still builds, naming no commit and saying so; a
// release refuses, and so does a snapshot of a .git that git cannot read.
func TestASnapshotWithoutGitNamesNoCommit(t *testing.T) {
	dir := t.TempDir()
	s, err := readStamp(context.Background(), Options{Repo: dir, Snapshot: true})
	require.NoError(t, err)
	require.Equal(t, "v0.0.0-snapshot+nogit", s.Version)
	require.Equal(t, noCommit, s.Commit)
	require.Contains(t, s.Note, "no .git in")
	require.Equal(t, time.Unix(0, 0).UTC(), s.Date)
	t.Setenv("SOURCE_DATE_EPOCH", "1764806400")
	s, err = readStamp(context.Background(), Options{Repo: dir, Snapshot: true})
	require.NoError(t, err)
	require.Equal(t, time.Unix(1764806400, 0).UTC(), s.Date)
	_, err = readStamp(context.Background(), Options{Repo: dir, Version: "v1.2.3"})
	require.ErrorContains(t, err, "git rev-parse HEAD", "a release needs its commit")

	// A .git that git cannot read is an error, never a snapshot naming no commit.
	require.NoError(t, os.Mkdir(filepath.Join(dir, ".git"), 0o755))
	_, err = readStamp(context.Background(), Options{Repo: dir, Snapshot: true})
	require.ErrorContains(t, err, "git rev-parse HEAD")
}
