package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/spf13/cobra/doc"

	"github.com/handoff-dev/handoff/internal/cli"
)

// Docs are the files written from handoff's command tree, the same for
// every target.
type Docs struct {
	Completions map[string]string // shell → script file
	ManPages    []string          // section 1 pages, one per command
	ManPagesGz  []string          // the same gzipped, as packages install them
}

// completionFiles are the file names each shell looks for.
var completionFiles = map[string]string{"bash": "handoff", "zsh": "_handoff", "fish": "handoff.fish"}

// writeDocs writes the completion scripts (what `handoff completion SHELL`
// prints) and a man page for each command into dir. They come from the
// command tree in this process, not from running a built binary, which
// may be for another platform; and so the man-page generator (cobra/doc)
// is in this program, not in the binary.
func writeDocs(dir string, s Stamp) (Docs, error) {
	d := Docs{Completions: map[string]string{}}
	for shell, name := range completionFiles {
		var out, errb bytes.Buffer
		if code := cli.Main(context.Background(), []string{"completion", shell}, &cli.IO{Out: &out, Err: &errb}); code != 0 {
			return d, fmt.Errorf("handoff completion %s: exit %d: %s", shell, code, errb.String())
		}
		path := filepath.Join(dir, "completions", shell, name)
		if err := writeFile(path, out.Bytes(), 0o644); err != nil {
			return d, err
		}
		d.Completions[shell] = path
	}

	man := filepath.Join(dir, "man", "man1")
	if err := os.MkdirAll(man, 0o755); err != nil {
		return d, err
	}
	// Flag help names the state directory's default as it is for whoever
	// runs the command; a man page is read by anyone, so it says both.
	restore := setenv("HANDOFF_STATE_DIR", "/var/lib/handoff for root, ~/.local/state/handoff for others")
	root := cli.NewRoot(&cli.IO{Out: io.Discard, Err: io.Discard})
	restore()
	root.DisableAutoGenTag = true // its date would differ from build to build
	date := s.Date
	header := &doc.GenManHeader{Title: "HANDOFF", Section: "1", Date: &date, Source: "handoff " + s.Version, Manual: "handoff manual"}
	if err := doc.GenManTree(root, header, man); err != nil {
		return d, fmt.Errorf("write the man pages: %w", err)
	}
	pages, err := filepath.Glob(filepath.Join(man, "*.1"))
	if err != nil {
		return d, err
	}
	sort.Strings(pages)
	d.ManPages = pages
	for _, page := range pages {
		gz := filepath.Join(dir, "man-gz", filepath.Base(page)+".gz")
		if err := writeGzip(gz, page); err != nil {
			return d, err
		}
		d.ManPagesGz = append(d.ManPagesGz, gz)
	}
	return d, nil
}

// writeGzip writes a gzip of src with no name or time in its header, so
// that the same page is the same bytes.
func writeGzip(dst, src string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	var b bytes.Buffer
	zw, err := gzip.NewWriterLevel(&b, gzip.BestCompression)
	if err != nil {
		return err
	}
	if _, err := zw.Write(data); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	return writeFile(dst, b.Bytes(), 0o644)
}

// setenv sets an environment variable and returns what puts it back.
func setenv(key, value string) (restore func()) {
	old, had := os.LookupEnv(key)
	_ = os.Setenv(key, value)
	return func() {
		if had {
			_ = os.Setenv(key, old)
		} else {
			_ = os.Unsetenv(key)
		}
	}
}

func writeFile(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, data, mode)
}
