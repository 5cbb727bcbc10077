// Package state keeps what handoff must remember between runs on the host:
// the history of deploys (one JSON file per service, written atomically)
// and the per-service lock that keeps two deploys from interleaving.
//
// Docker itself is the source of truth for which releases exist; the
// history only adds what Docker cannot know: when, how long, and how it went.
package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/gofrs/flock"

	"github.com/handoff-dev/handoff/internal/atomicfile"
	"github.com/handoff-dev/handoff/internal/deploy"
)

// MaxRecords bounds a service's history file; older records are dropped.
const MaxRecords = 200

// Store keeps history files under Dir.
type Store struct {
	Dir string
}

// DefaultDir is where state lives unless --state-dir or HANDOFF_STATE_DIR says otherwise.
func DefaultDir() string {
	if d := os.Getenv("HANDOFF_STATE_DIR"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "handoff")
	}
	if os.Geteuid() == 0 {
		return "/var/lib/handoff"
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "state", "handoff")
	}
	return filepath.Join(os.TempDir(), "handoff")
}

// path is the service's history file. The name is checked again here, so
// that no caller can make it reach outside Dir.
func (s Store) path(service string) (string, error) {
	if err := deploy.CheckName(service); err != nil {
		return "", err
	}
	return filepath.Join(s.Dir, service+".history.json"), nil
}

// List returns the service's records, newest first. A missing file is an empty history.
func (s Store) List(service string) ([]deploy.Record, error) {
	path, err := s.path(service)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read history: %w", err)
	}
	var recs []deploy.Record
	if err := json.Unmarshal(data, &recs); err != nil {
		return nil, fmt.Errorf("read history %s: %w (move the file aside to start a new history)", path, err)
	}
	return recs, nil
}

// Save inserts or replaces rec (by ID) and writes the file atomically.
// The read, change and write hold the history's own lock: the service's
// deploy lock does not cover every save (post_deploy runs after it is let
// go, while a deploy waiting with --wait starts saving).
func (s Store) Save(rec *deploy.Record) error {
	unlock, err := s.lock(rec.Service)
	if err != nil {
		return err
	}
	defer unlock()
	recs, err := s.List(rec.Service)
	if err != nil {
		return err
	}
	i := slices.IndexFunc(recs, func(r deploy.Record) bool { return r.ID == rec.ID })
	if i >= 0 {
		recs[i] = *rec
	} else {
		recs = append([]deploy.Record{*rec}, recs...)
	}
	if len(recs) > MaxRecords {
		recs = recs[:MaxRecords]
	}
	data, err := json.MarshalIndent(recs, "", "  ")
	if err != nil {
		return err
	}
	path, err := s.path(rec.Service)
	if err != nil {
		return err
	}
	return atomicfile.Write(path, data, 0o644)
}

// lock takes the lock of the service's history file, waiting for another
// writer (a save takes milliseconds). The file itself cannot carry the
// lock: each save renames a new file over it.
func (s Store) lock(service string) (func(), error) {
	path, err := s.path(service)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	fl := flock.New(strings.TrimSuffix(path, ".json") + ".lock")
	if err := fl.Lock(); err != nil {
		return nil, fmt.Errorf("lock history of %s: %w", service, err)
	}
	return func() { _ = fl.Unlock() }, nil
}
