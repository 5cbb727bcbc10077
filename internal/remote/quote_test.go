package remote

import (
	"os/exec"
	"testing"
)

func TestQuoteThroughShell(t *testing.T) {
	words := []string{"plain", "", "two words", "it's", `"double"`, "$HOME", "`id`", "a\nb", "*", "~", "-n", `back\slash`, "'", "''"}
	for _, w := range words {
		out, err := exec.Command("/bin/sh", "-c", "printf %s "+Quote(w)).Output()
		if err != nil {
			t.Fatalf("sh -c printf %%s %s: %v", Quote(w), err)
		}
		if string(out) != w {
			t.Errorf("Quote(%q) = %s; the shell read it as %q", w, Quote(w), out)
		}
	}
	if got := Command("handoff", "deploy", "--tag", "it's"); got != `handoff deploy --tag 'it'\''s'` {
		t.Errorf("Command = %s", got)
	}
}
