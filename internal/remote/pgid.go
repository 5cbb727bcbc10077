package remote

import (
	"bytes"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"
)

// A remote command's shell prints its pid, which is its process group, as the first
// line on stderr; a cancelled Run kills that group.
const pgidMarker = "handoff-remote-pgid "

// killWait bounds how long a cancelled Run waits for the command's process group.
const killWait = 5 * time.Second

// pgidWriter takes the process group line off the start of a command's stderr and passes
// the rest on.
type pgidWriter struct {
	w     io.Writer
	mu    sync.Mutex
	buf   []byte
	id    int
	lines int
	seen  bool          // the process group line has been read, or given up on
	known chan struct{} // closed once it has
}

func newPgidWriter(w io.Writer) *pgidWriter { return &pgidWriter{w: w, known: make(chan struct{})} }

func (p *pgidWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	if p.seen {
		p.mu.Unlock()
		return p.pass(b)
	}
	p.buf = append(p.buf, b...)
	var out []byte
	for !p.seen {
		i := bytes.IndexByte(p.buf, '\n')
		if i < 0 {
			break
		}
		line := p.buf[:i+1]
		p.buf = p.buf[i+1:]
		p.lines++
		if id, ok := strings.CutPrefix(string(line[:i]), pgidMarker); ok {
			p.id, _ = strconv.Atoi(id)
			p.markSeen()
			continue
		}
		// What a login shell's startup files print comes before the line: it passes.
		out = append(out, line...)
		if p.lines >= maxStartupLines {
			p.markSeen() // not a POSIX shell, or it failed before the line
		}
	}
	if p.seen {
		out, p.buf = append(out, p.buf...), nil
	}
	p.mu.Unlock()
	if _, err := p.pass(out); err != nil {
		return 0, err
	}
	return len(b), nil
}

// maxStartupLines bounds the stderr lines looked through for the process group line.
const maxStartupLines = 64

func (p *pgidWriter) markSeen() {
	p.seen = true
	close(p.known)
}

func (p *pgidWriter) pass(b []byte) (int, error) {
	if p.w == nil || len(b) == 0 {
		return len(b), nil
	}
	return p.w.Write(b)
}

// flush passes on what is held when the command ended before a full first line.
func (p *pgidWriter) flush() {
	p.mu.Lock()
	b := p.buf
	if !p.seen {
		p.buf = nil
		p.markSeen()
	}
	p.mu.Unlock()
	p.pass(b)
}

func (p *pgidWriter) pgid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.id
}
