package remote

import (
	"strings"
	"testing"
)

func TestPgidWriter(t *testing.T) {
	cases := []struct {
		name   string
		chunks []string
		pgid   int
		out    string
	}{
		{"alone", []string{pgidMarker + "42\n"}, 42, ""},
		{"then output", []string{pgidMarker + "42\nerr 1\n", "err 2"}, 42, "err 1\nerr 2"},
		{"split", []string{"handoff-rem", "ote-pgid 4", "2\nrest"}, 42, "rest"},
		{"startup noise first", []string{"bashrc: warning\n", pgidMarker + "7\n", "after\n"}, 7, "bashrc: warning\nafter\n"},
		{"no line at all", []string{"sh: 1: syntax error\n"}, 0, "sh: 1: syntax error\n"},
		{"unfinished line", []string{"no newline"}, 0, "no newline"},
	}
	for _, c := range cases {
		var out strings.Builder
		w := newPgidWriter(&out)
		for _, ch := range c.chunks {
			if n, err := w.Write([]byte(ch)); n != len(ch) || err != nil {
				t.Fatalf("%s: Write = %d, %v", c.name, n, err)
			}
		}
		w.flush()
		if w.pgid() != c.pgid || out.String() != c.out {
			t.Errorf("%s: pgid %d, passed %q; want %d, %q", c.name, w.pgid(), out.String(), c.pgid, c.out)
		}
		select {
		case <-w.known:
		default:
			t.Errorf("%s: known still open after flush", c.name)
		}
	}
	w := newPgidWriter(nil)
	w.Write([]byte(strings.Repeat("noise\n", maxStartupLines)))
	select {
	case <-w.known:
	default:
		t.Errorf("still looking for the line after %d lines", maxStartupLines)
	}
}
