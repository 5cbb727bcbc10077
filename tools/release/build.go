package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

const modulePath = "github.com/handoff-dev/handoff"

// Target is a platform handoff is built for.
type Target struct{ OS, Arch string }

// String names the target as the archives do: linux_amd64.
func (t Target) String() string { return t.OS + "_" + t.Arch }

// DefaultTargets are linux servers, and a Mac as a client of --host.
var DefaultTargets = []Target{{"linux", "amd64"}, {"linux", "arm64"}, {"darwin", "amd64"}, {"darwin", "arm64"}}

// Options say what to build from where.
type Options struct {
	Repo     string // the handoff checkout
	Out      string // where the release goes; emptied first
	Version  string // v1.2.3; empty with Snapshot
	Snapshot bool   // a local build of whatever the checkout holds
	Targets  []Target
}

// Stamp is what a build writes into the binary (and the packages).
type Stamp struct {
	Version string // v1.2.3, or v0.0.0-snapshot+<commit>
	Commit  string // the full commit hash; noCommit for a snapshot without git
	Date    time.Time
	Note    string // what the build could not read, for its output
}

// noCommit is the commit a snapshot of a directory git cannot read names.
var noCommit = strings.Repeat("0", 40)

// Artifact is a file of the release that a user downloads.
type Artifact struct {
	Name string // its file name in Out
	Size int64
}

// Result is what Build made.
type Result struct {
	Stamp
	Artifacts []Artifact // the archives and packages, then checksums.txt
}

// ChecksumsFile lists the sha256 of every other artifact, as sha256sum
// writes them (so `sha256sum -c --ignore-missing checksums.txt` checks a
// download).
const ChecksumsFile = "checksums.txt"

// marker marks a directory this program wrote, so that it may empty it
// again and nothing else.
const marker = ".handoff-release"

// ArchiveName is the name of a target's archive. It carries no version,
// so that a release's ".../releases/latest/download/" URL names it
// (install.sh relies on that).
func ArchiveName(t Target) string { return "handoff_" + t.String() + ".tar.gz" }

// Build makes the release: for each target the static binary, its
// archive and (linux) its .deb and .rpm, then the checksums of them all.
func Build(ctx context.Context, o Options) (Result, error) {
	s, err := readStamp(ctx, o)
	if err != nil {
		return Result{}, err
	}
	if err := emptyOut(o.Out); err != nil {
		return Result{}, err
	}
	d, err := writeDocs(filepath.Join(o.Out, "docs"), s)
	if err != nil {
		return Result{}, err
	}
	r := Result{Stamp: s}
	var names []string
	for _, t := range o.Targets {
		bin := filepath.Join(o.Out, t.String(), "handoff")
		if err := goBuild(ctx, o.Repo, t, s, bin); err != nil {
			return r, err
		}
		archive := ArchiveName(t)
		if err := writeArchive(filepath.Join(o.Out, archive), archiveFiles(o.Repo, bin, d), s.Date); err != nil {
			return r, fmt.Errorf("write %s: %w", archive, err)
		}
		names = append(names, archive)
		if t.OS != "linux" {
			continue
		}
		pkgs, err := writePackages(o, t, s, bin, d)
		if err != nil {
			return r, err
		}
		names = append(names, pkgs...)
	}
	if err := writeChecksums(o.Out, names); err != nil {
		return r, err
	}
	for _, n := range append(names, ChecksumsFile) {
		info, err := os.Stat(filepath.Join(o.Out, n))
		if err != nil {
			return r, err
		}
		r.Artifacts = append(r.Artifacts, Artifact{Name: n, Size: info.Size()})
	}
	return r, nil
}

// semver is the shape of a release's version: v1.2.3 or v1.2.3-rc.1.
var semver = regexp.MustCompile(`^v\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?$`)

// readStamp reads the commit and its date from git: the date is the
// commit's, so that two builds of one commit are the same bytes.
func readStamp(ctx context.Context, o Options) (Stamp, error) {
	switch {
	case o.Snapshot && o.Version != "":
		return Stamp{}, errors.New("--snapshot names its own version: leave out --version")
	case !o.Snapshot && !semver.MatchString(o.Version):
		return Stamp{}, fmt.Errorf("version %q is not like v1.2.3: pass --version vX.Y.Z, or --snapshot", o.Version)
	}
	commit, err := git(ctx, o.Repo, "rev-parse", "HEAD")
	if _, serr := os.Stat(filepath.Join(o.Repo, ".git")); err != nil && o.Snapshot && errors.Is(serr, fs.ErrNotExist) {
		// A snapshot of files without their git history (an export, a CI checkout of
		// the files alone): no commit to name, and the date SOURCE_DATE_EPOCH's or fixed,
		// so two builds of the same files are the same bytes.
		date, err := sourceDate()
		if err != nil {
			return Stamp{}, err
		}
		return Stamp{Version: "v0.0.0-snapshot+nogit", Commit: noCommit, Date: date,
			Note: "no .git in " + o.Repo + ": the snapshot names no commit"}, nil
	}
	if err != nil {
		if strings.Contains(err.Error(), "dubious ownership") {
			err = fmt.Errorf("%w (the checkout belongs to another user: git config --global --add safe.directory %s)", err, o.Repo)
		}
		return Stamp{}, err
	}
	secs, err := git(ctx, o.Repo, "log", "-1", "--format=%ct", "HEAD")
	if err != nil {
		return Stamp{}, err
	}
	unix, err := strconv.ParseInt(secs, 10, 64)
	if err != nil {
		return Stamp{}, fmt.Errorf("read the commit's date: %q: %w", secs, err)
	}
	changes, err := git(ctx, o.Repo, "status", "--porcelain")
	if err != nil {
		return Stamp{}, err
	}
	s := Stamp{Version: o.Version, Commit: commit, Date: time.Unix(unix, 0).UTC()}
	if o.Snapshot {
		s.Version = "v0.0.0-snapshot+" + commit[:12]
		if changes != "" {
			s.Version += ".dirty"
		}
	} else if changes != "" {
		return Stamp{}, fmt.Errorf("the checkout %s has changes not committed: commit them, or build a --snapshot", o.Repo)
	}
	return s, nil
}

// sourceDate is SOURCE_DATE_EPOCH (reproducible-builds.org) when set, else the epoch.
func sourceDate() (time.Time, error) {
	v := os.Getenv("SOURCE_DATE_EPOCH")
	if v == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	secs, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q is not seconds since 1970: %w", v, err)
	}
	return time.Unix(secs, 0).UTC(), nil
}

func git(ctx context.Context, repo string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "git", append([]string{"-C", repo}, args...)...)
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%w: %s", err, strings.TrimSpace(string(ee.Stderr)))
		}
		return "", fmt.Errorf("git %s: %w", strings.Join(args, " "), err)
	}
	return strings.TrimSpace(string(out)), nil
}

// emptyOut makes out an empty directory, refusing to empty one that a
// previous run did not write.
func emptyOut(out string) error {
	entries, err := os.ReadDir(out)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return err
	case len(entries) > 0:
		if _, err := os.Stat(filepath.Join(out, marker)); err != nil {
			return fmt.Errorf("%s holds files a release build did not write: remove it, or pass another --out", out)
		}
		if err := os.RemoveAll(out); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(out, marker), nil, 0o644)
}

// goBuild cross-compiles the handoff binary with the checkout's own
// module: static (no cgo), no local paths in it (-trimpath), the stamp
// written into internal/cli's version variables.
func goBuild(ctx context.Context, repo string, t Target, s Stamp, bin string) error {
	pkg := modulePath + "/internal/cli"
	ldflags := fmt.Sprintf("-s -w -X %[1]s.Version=%[2]s -X %[1]s.Commit=%[3]s -X %[1]s.Date=%[4]s",
		pkg, s.Version, s.Commit, s.Date.Format(time.RFC3339))
	// -mod=readonly: whatever GOFLAGS says (make release-snapshot runs
	// this program with -mod=mod), the checkout's go.mod is never changed.
	cmd := exec.CommandContext(ctx, "go", "build", "-mod=readonly", "-trimpath", "-ldflags", ldflags, "-o", bin, "./cmd/handoff")
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+t.OS, "GOARCH="+t.Arch, "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build handoff for %s: %w\n%s", t, err, out)
	}
	// The stamp beside the binary too: -trimpath leaves -ldflags out of
	// the build information (go.dev/issue/52372), so `handoff --host`
	// could not tell which version a binary for another platform is
	// without running it; it reads this file (VersionFile).
	stamp, err := json.Marshal(map[string]string{"version": s.Version, "commit": s.Commit, "date": s.Date.Format(time.RFC3339)})
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(filepath.Dir(bin), VersionFile), append(stamp, '\n'), 0o644)
}

// VersionFile is the stamp written beside each binary in Out: its
// version, commit and date, as `handoff version --json` prints them.
const VersionFile = "version.json"

func parseTargets(list string) ([]Target, error) {
	var ts []Target
	for _, p := range strings.Split(list, ",") {
		goos, arch, ok := strings.Cut(strings.TrimSpace(p), "/")
		if !ok || goos == "" || arch == "" {
			return nil, fmt.Errorf("target %q is not os/arch, like linux/amd64", p)
		}
		ts = append(ts, Target{goos, arch})
	}
	return ts, nil
}

func targetNames(ts []Target) []string {
	names := make([]string, len(ts))
	for i, t := range ts {
		names[i] = t.OS + "/" + t.Arch
	}
	return names
}
