package cli

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// The completion command is cobra's own; these check it is there for each
// shell the packages install a script for, and that the script knows
// handoff's commands.
func TestCompletionScriptForEachShell(t *testing.T) {
	for shell, marker := range map[string]string{
		"bash": "__start_handoff",
		"zsh":  "#compdef handoff",
		"fish": "complete -c handoff",
	} {
		t.Run(shell, func(t *testing.T) {
			out, stderr, code := run(t, "completion", shell)
			require.Equal(t, 0, code, stderr)
			require.Contains(t, out, marker)
		})
	}
	// The scripts ask the binary itself for the words (cobra's __complete),
	// so check that answer too: the commands after `handoff `.
	out, _, code := run(t, "__complete", "")
	require.Equal(t, 0, code)
	for _, cmd := range []string{"deploy", "rollback", "status", "version", "proxy", "canary", "completion"} {
		require.Contains(t, "\n"+out, "\n"+cmd+"\t", "handoff __complete lists %s", cmd)
	}
	out, _, code = run(t, "__complete", "proxy", "")
	require.Equal(t, 0, code)
	require.Contains(t, out, "status\t")
}

func TestCompletionOfAnUnknownShellIsAUsageError(t *testing.T) {
	for _, args := range [][]string{{"completion", "tcsh"}, {"completion"}, {"completion", "bash", "zsh"}} {
		out, stderr, code := run(t, args...)
		require.Equal(t, ExitUsage, code, stderr)
		require.Empty(t, out)
		require.Equal(t, "handoff: usage: name one shell: handoff completion bash|zsh|fish|powershell\n", stderr)
	}
}
