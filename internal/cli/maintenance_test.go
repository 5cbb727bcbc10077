package cli

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// The paths maintenance lets through are matched without a query (by
// Caddy and by handoff proxy alike): a health path written with one must
// still reach the app.
func TestAllowedPaths(t *testing.T) {
	cases := []struct {
		name   string
		allow  []string
		health string
		want   []string
	}{
		{"the health path by default", nil, "/health", []string{"/health"}},
		{"its query cut off", nil, "/health?probe=1&full=1", []string{"/health"}},
		{"no default for /", nil, "/", nil},
		{"nor for / with a query", nil, "/?probe=1", nil},
		{"nor without a health path", nil, "", nil},
		{"--allow instead of the health path", []string{"/ping"}, "/health", []string{"/ping"}},
		{"--allow with a query", []string{"/status?x=1", "/status", "/ready"}, "/health", []string{"/status", "/ready"}},
	}
	for _, c := range cases {
		require.Equal(t, c.want, allowedPaths(c.allow, c.health), c.name)
	}
}
