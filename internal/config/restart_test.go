package config

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseRestart(t *testing.T) {
	good := map[string]RestartPolicy{
		"":               {},
		"no":             {Name: "no"},
		"always":         {Name: "always"},
		"unless-stopped": {Name: "unless-stopped"},
		"on-failure":     {Name: "on-failure"},
		"on-failure:0":   {Name: "on-failure"},
		"on-failure:3":   {Name: "on-failure", MaximumRetryCount: 3},
	}
	for in, want := range good {
		got, err := ParseRestart(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
		if in != "on-failure:0" {
			require.Equal(t, in, got.String())
		}
	}
	bad := map[string]string{
		"sometimes":       `restart "sometimes": use no, always, unless-stopped, on-failure or on-failure:N (at most N retries)`,
		"On-Failure":      `restart "On-Failure": use no`,
		"on-failure:":     `restart "on-failure:" (the retry count is a whole number, 0 or more): use no`,
		"on-failure:-1":   `(the retry count is a whole number, 0 or more)`,
		"on-failure:+1":   `(the retry count is a whole number, 0 or more)`,
		"on-failure:1.5":  `(the retry count is a whole number, 0 or more)`,
		"on-failure:3:4":  `(the retry count is a whole number, 0 or more)`,
		"on-failure:many": `(the retry count is a whole number, 0 or more)`,
		"always:3":        `restart "always:3" (a retry count goes with on-failure only, not always)`,
		"no:1":            `(a retry count goes with on-failure only, not no)`,
	}
	for in, want := range bad {
		_, err := ParseRestart(in)
		require.ErrorContains(t, err, want, in)
	}
}
