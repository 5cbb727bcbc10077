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

// reporter prints the procedure's phases as they happen, with durations,
// and what a phase waits for: on a terminal one live line rewritten in
// place, elsewhere a line each time it changes.
type reporter struct {
	io *IO
	mu sync.Mutex

	began time.Time // the running phase's start
	live  bool      // a live line is on the terminal now
	last  string    // the last waiting state printed as a line (no terminal)
}

// liveWidth bounds the live line, so that it never wraps (a wrapped line
// could not be rewritten in place).
const liveWidth = 100

// clearLive takes the live line away before anything else is printed.
func (r *reporter) clearLive() {
	if r.live {
		fmt.Fprint(r.io.Err, "\r\033[K")
		r.live = false
	}
}

// Progress shows what phase is waiting for: state (a health check's
// answer, the requests still in flight) and detail (which check, shown on
// a terminal only, where the line is rewritten).
func (r *reporter) Progress(phase, state, detail string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.io.ErrTerminal {
		line := fmt.Sprintf("  … %s", state)
		if detail != "" {
			line += " · " + detail
		}
		line += fmt.Sprintf(" · %s", time.Since(r.began).Round(100*time.Millisecond))
		if n := []rune(line); len(n) > liveWidth {
			line = string(n[:liveWidth-1]) + "…"
		}
		fmt.Fprint(r.io.Err, "\r\033[K"+line)
		r.live = true
		return
	}
	if state == r.last {
		return
	}
	r.last = state
	fmt.Fprintf(r.io.Err, "%s %-7s wait   %s\n", stamp(), phase, state)
}

func (r *reporter) PhaseStart(name, detail string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.clearLive()
	r.began, r.last = time.Now(), ""
	if r.io.ErrTerminal {
		fmt.Fprintf(r.io.Err, "→ %-7s %s\n", name, detail)
		return
	}
	fmt.Fprintf(r.io.Err, "%s %-7s start  %s\n", stamp(), name, detail)
}

func (r *reporter) PhaseDone(name string, took time.Duration, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.clearLive()
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
	r.clearLive()
	if r.io.ErrTerminal {
		fmt.Fprintf(r.io.Err, "  %s\n", msg)
		return
	}
	fmt.Fprintf(r.io.Err, "%s note    %s\n", stamp(), msg)
}

func (r *reporter) Output() io.Writer { return r.io.Err }

func stamp() string { return time.Now().UTC().Format("15:04:05.000") }
