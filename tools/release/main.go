// Command release builds handoff's release into dist/: a static binary for
// each of linux and darwin on amd64 and arm64, a tar.gz of each with the
// shell completions and man pages, a .deb and an .rpm of each linux one
// (the binary, the `handoff proxy` systemd unit, completions, man pages),
// and checksums.txt, the sha256 of every file a user downloads.
//
//	make release-snapshot                         # every target, version v0.0.0-snapshot+<commit>
//	cd tools/release && go run . --version v1.2.3 # a release: a clean checkout only
//
// It is a module of its own (with a replace to the checkout), so that nfpm
// and everything it brings stay out of handoff's go.mod, and so out of the
// handoff binary, which is built by the checkout's own module.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "release: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("release", flag.ContinueOnError)
	var o Options
	var targets string
	fs.StringVar(&o.Repo, "repo", "", "the handoff checkout (default: the one this program sits in)")
	fs.StringVar(&o.Out, "out", "", "where to write the release (default <repo>/dist; emptied first)")
	fs.StringVar(&o.Version, "version", "", "the release's version, like v1.2.3 (or --snapshot)")
	fs.BoolVar(&o.Snapshot, "snapshot", false, "a local build: version v0.0.0-snapshot+<commit>, uncommitted changes allowed")
	fs.StringVar(&targets, "targets", strings.Join(targetNames(DefaultTargets), ","), "os/arch pairs to build, comma-separated")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (see --help)", fs.Arg(0))
	}
	var err error
	if o.Targets, err = parseTargets(targets); err != nil {
		return err
	}
	if o.Repo == "" {
		if o.Repo, err = findRepo(); err != nil {
			return err
		}
	}
	if o.Out == "" {
		o.Out = filepath.Join(o.Repo, "dist")
	}
	r, err := Build(ctx, o)
	if err != nil {
		return err
	}
	if r.Note != "" {
		fmt.Fprintln(os.Stderr, "release: warning: "+r.Note)
	}
	fmt.Printf("handoff %s (commit %s, built %s) in %s:\n", r.Version, r.Commit, r.Date.Format(time.RFC3339), o.Out)
	for _, a := range r.Artifacts {
		fmt.Printf("  %-56s %6.1f MB\n", a.Name, float64(a.Size)/1e6)
	}
	return nil
}

// findRepo finds the handoff checkout: the nearest directory, from here
// up, whose go.mod is handoff's.
func findRepo() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		mod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.HasPrefix(string(mod), "module "+modulePath+"\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("not inside a handoff checkout: run it from one, or pass --repo")
		}
		dir = parent
	}
}
