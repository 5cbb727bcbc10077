package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/handoff-dev/handoff/internal/atomicfile"
	"github.com/handoff-dev/handoff/internal/deploy"
)

// Steering is how `handoff canary` reaches a canary another handoff runs
// (deploy.Steering): two small files beside the history, the canary's
// state as the deploy last published it, and what a person asked. Files,
// not a socket: they need no process listening, and they work the same
// when the deploy and the command are one SSH hop apart.
type Steering struct {
	Dir string
}

func (s Steering) file(service, suffix string) (string, error) {
	if err := deploy.CheckName(service); err != nil {
		return "", err
	}
	return filepath.Join(s.Dir, service+suffix), nil
}

// Asked takes what `handoff canary promote|abort` asked, once.
func (s Steering) Asked(service string) (string, error) {
	path, err := s.file(service, ".canary-ask")
	if err != nil {
		return "", err
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	switch ask := string(data); ask {
	case deploy.AskPromote, deploy.AskAbort:
		return ask, nil
	default:
		return "", fmt.Errorf("%s holds %q, neither %s nor %s: ignored", path, ask, deploy.AskPromote, deploy.AskAbort)
	}
}

// Show writes the canary's state for `handoff canary status`; nil removes it.
func (s Steering) Show(service string, st *deploy.CanaryStatus) error {
	path, err := s.file(service, ".canary.json")
	if err != nil {
		return err
	}
	if st == nil {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	}
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(path, data, 0o644)
}

// Ask leaves what a person asks of the canary for the deploy to take at
// its next reading (within a second).
func (s Steering) Ask(service, ask string) error {
	path, err := s.file(service, ".canary-ask")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		return err
	}
	return atomicfile.Write(path, []byte(ask), 0o644)
}

// Status is the canary's state as the deploy last published it; nil when
// no canary or watch runs.
func (s Steering) Status(service string) (*deploy.CanaryStatus, error) {
	path, err := s.file(service, ".canary.json")
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var st deploy.CanaryStatus
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return &st, nil
}

// Pending says whether an ask waits for the deploy to take it.
func (s Steering) Pending(service string) bool {
	path, err := s.file(service, ".canary-ask")
	if err != nil {
		return false
	}
	_, err = os.Stat(path)
	return err == nil
}
