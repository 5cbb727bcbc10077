package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// IO is the one place user output goes through. It knows whether stderr is
// a terminal: symbols there, plain lines in logs and CI.
type IO struct {
	In          io.Reader
	Out         io.Writer // results: tables, or JSON with --json
	Err         io.Writer // progress and errors
	ErrTerminal bool
}

// System is the process's own streams.
func System() *IO {
	return &IO{In: os.Stdin, Out: os.Stdout, Err: os.Stderr, ErrTerminal: isTerminal(os.Stderr)}
}

func isTerminal(f *os.File) bool {
	info, err := f.Stat()
	return err == nil && info.Mode()&os.ModeCharDevice != 0
}

// JSON writes v as indented JSON to Out.
func (s *IO) JSON(v any) error {
	enc := json.NewEncoder(s.Out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// reporter prints the procedure's phases as they happen, with durations.
type reporter struct {
	io *IO
	mu sync.Mutex
}

func (r *reporter) PhaseStart(name, detail string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.io.ErrTerminal {
		fmt.Fprintf(r.io.Err, "→ %-7s %s\n", name, detail)
		return
	}
	fmt.Fprintf(r.io.Err, "%s %-7s start  %s\n", stamp(), name, detail)
}

func (r *reporter) PhaseDone(name string, took time.Duration, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	d := took.Round(time.Millisecond)
	switch {
	case r.io.ErrTerminal && err == nil:
		fmt.Fprintf(r.io.Err, "✓ %-7s %s\n", name, d)
	case r.io.ErrTerminal:
		fmt.Fprintf(r.io.Err, "✗ %-7s %s\n", name, d)
	case err == nil:
		fmt.Fprintf(r.io.Err, "%s %-7s done   %s\n", stamp(), name, d)
	default:
		fmt.Fprintf(r.io.Err, "%s %-7s failed %s\n", stamp(), name, d)
	}
}

func (r *reporter) Note(msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.io.ErrTerminal {
		fmt.Fprintf(r.io.Err, "  %s\n", msg)
		return
	}
	fmt.Fprintf(r.io.Err, "%s note    %s\n", stamp(), msg)
}

func (r *reporter) Output() io.Writer { return r.io.Err }

func stamp() string { return time.Now().UTC().Format("15:04:05.000") }
