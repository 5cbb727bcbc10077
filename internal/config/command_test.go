package config

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSplitCommandSplitsAsAShellWould(t *testing.T) {
	cases := map[string][]string{
		`./app migrate --yes`:                          {"./app", "migrate", "--yes"},
		`gunicorn app:app -c "gunicorn conf.py"`:       {"gunicorn", "app:app", "-c", "gunicorn conf.py"},
		`sh -c './app migrate && ./app seed'`:          {"sh", "-c", "./app migrate && ./app seed"},
		`echo "a; b | c > d" 'e & f'`:                  {"echo", "a; b | c > d", "e & f"},
		`echo a\;b \>c`:                                {"echo", "a;b", ">c"},
		`printf '$(not run) and ` + "`nor this`" + `'`: {"printf", "$(not run) and `nor this`"},
		`echo $HOME`:                                   {"echo", "$HOME"},
		``:                                             {},
	}
	for in, want := range cases {
		got, err := SplitCommand(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
}

// go-shellwords stops at the first operator: "./app migrate && ./app seed"
// came out as [./app migrate], and the deploy ran the migration alone.
func TestSplitCommandRefusesShellOperators(t *testing.T) {
	cases := map[string]string{
		`./app migrate && ./app seed`:          "&&",
		`./app migrate || true`:                "||",
		`./app migrate; ./app seed`:            ";",
		`./app export | gzip`:                  "|",
		`gunicorn app:app > /var/log/app.log`:  ">",
		`gunicorn app:app >> /var/log/app.log`: ">>",
		`./app import < dump.sql`:              "<",
		`./worker & ./web`:                     "&",
		`./app 2>&1`:                           ">",
		"echo `date`":                          "`",
		`echo $(date)`:                         "$(",
		`echo "today is $(date)"`:              "$(",
		"echo \"now `date`\"":                  "`",
		`echo 'ok' && echo "also"`:             "&&",
	}
	for in, op := range cases {
		_, err := SplitCommand(in)
		require.ErrorIs(t, err, ErrShellOperator, in)
		require.ErrorContains(t, err, `: "`+op+`" in `, in)
		require.ErrorContains(t, err, "write it as a list, or as [sh, -c, '", in)
	}
	_, err := SplitCommand(`./app migrate && echo 'done'`)
	require.EqualError(t, err, `a shell operator in a command that no shell runs: "&&" in "./app migrate && echo 'done'"; `+
		`write it as a list, or as [sh, -c, './app migrate && echo ''done''']`, "the suggestion is valid YAML, quotes doubled")
}

func TestSplitCommandRefusesUnclosedQuotes(t *testing.T) {
	_, err := SplitCommand(`echo "unclosed`)
	require.ErrorContains(t, err, `split "echo \"unclosed" into words`)
	require.ErrorContains(t, err, "write it as a list")
}

// A command on several lines (YAML's `|`) is several commands to a shell;
// shellwords would run them as one, the later lines its arguments. A
// trailing newline, or one inside quotes, is not a second command.
func TestSplitCommandRefusesSeveralLines(t *testing.T) {
	_, err := SplitCommand("./app migrate\n./app seed\n")
	require.ErrorIs(t, err, ErrShellOperator)
	require.ErrorContains(t, err, `"\n" in "./app migrate\n./app seed\n"`)

	words, err := SplitCommand("./app migrate --all\n")
	require.NoError(t, err)
	require.Equal(t, []string{"./app", "migrate", "--all"}, words)
	words, err = SplitCommand("./app say 'two\nlines'")
	require.NoError(t, err)
	require.Equal(t, []string{"./app", "say", "two\nlines"}, words)
	words, err = SplitCommand("./app migrate \\\n  --all")
	require.NoError(t, err, "a backslash-newline continues the line")
	require.Equal(t, []string{"./app", "migrate", "--all"}, words)
}
