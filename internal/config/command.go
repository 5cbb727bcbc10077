package config

import (
	"errors"
	"fmt"
	"strings"

	"github.com/mattn/go-shellwords"
)

// ErrShellOperator is returned by SplitCommand for a string that only a
// shell could run as written: no shell runs a command handoff starts, and
// splitting it into words would silently drop or mangle the rest.
var ErrShellOperator = errors.New("a shell operator in a command that no shell runs")

// shellOperators are refused outside quotes, longest first so that "&&" is
// named rather than "&".
var shellOperators = []string{"&&", "||", ">>", "$(", ";", "|", ">", "<", "&", "`"}

// SplitCommand splits a command written as one string into words, as a
// shell would split them (quotes and backslashes), for a container's or a
// job's command. A string holding a shell operator outside quotes
// (`&&`, `;`, `|`, a redirect, `&`, a command substitution) is refused with
// ErrShellOperator: go-shellwords stops at the first one, so
// "./app migrate && ./app seed" would run the migration alone. The error
// says which operator and how to write the command instead. The error
// carries no ErrConfig and no file position: the caller adds both.
func SplitCommand(s string) ([]string, error) {
	if op := shellOperator(s); op != "" {
		return nil, fmt.Errorf("%w: %q in %q; write it as a list, or as [sh, -c, '%s']",
			ErrShellOperator, op, s, strings.ReplaceAll(s, "'", "''"))
	}
	words, err := shellwords.Parse(joinLines(s))
	if err != nil {
		return nil, fmt.Errorf("split %q into words: %w; write it as a list", s, err)
	}
	return words, nil
}

// shellOperator is the first operator in s outside quotes, or "". Inside
// double quotes a shell still substitutes `…` and $(…), so those are
// operators there too; inside single quotes nothing is.
func shellOperator(s string) string {
	var single, double bool
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case single:
			single = c != '\''
			continue
		case c == '\\':
			i++ // the next byte is literal (in double quotes too, near enough)
			continue
		case c == '\'' && !double:
			single = true
			continue
		case c == '"':
			double = !double
			continue
		case c == '\n' && !double && strings.TrimSpace(s[i:]) != "":
			// A shell runs the next line as a command of its own;
			// shellwords would pass it as more arguments. A trailing
			// newline (YAML's `|`) ends the command and is no operator.
			return "\n"
		}
		for _, op := range shellOperators {
			if !strings.HasPrefix(s[i:], op) {
				continue
			}
			if !double || op == "`" || op == "$(" {
				return op
			}
		}
	}
	return ""
}

// joinLines removes each backslash-newline outside single quotes, as a
// shell does (a line continued); shellwords would keep it as a word.
func joinLines(s string) string {
	var b strings.Builder
	single := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case single:
			single = c != '\''
		case c == '\\' && i+1 < len(s) && s[i+1] == '\n':
			i++
			continue
		case c == '\\' && i+1 < len(s):
			b.WriteByte(c)
			i++
			c = s[i]
		case c == '\'':
			single = true
		}
		b.WriteByte(c)
	}
	return b.String()
}
