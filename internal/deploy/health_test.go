package deploy

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestHealthChecksComeFastThenSlowDownToTheInterval(t *testing.T) {
	cases := []struct {
		waited   time.Duration
		passes   int
		interval time.Duration
		want     time.Duration
	}{
		{0, 0, time.Second, 25 * time.Millisecond},
		{time.Second, 0, time.Second, 25 * time.Millisecond},
		{3 * time.Second, 0, time.Second, 30 * time.Millisecond},
		{50 * time.Second, 0, time.Second, 500 * time.Millisecond},
		{5 * time.Minute, 0, time.Second, time.Second},                 // never more than the interval
		{10 * time.Millisecond, 1, time.Second, time.Second},           // ... however soon the first came
		{5 * time.Minute, 1, time.Second, time.Second},                 // passes in a row span the interval
		{time.Second, 0, 20 * time.Millisecond, 20 * time.Millisecond}, // a shorter interval wins
	}
	for _, c := range cases {
		require.Equal(t, c.want, nextCheck(c.waited, c.passes, c.interval), "%+v", c)
	}
}

// The ways an app that is not listening yet fails a check are one state: a
// line per change (no terminal) is not a line per check.
func TestNotAnsweringYetIsOneState(t *testing.T) {
	for _, why := range []string{"GET /health: EOF", "GET /health: read tcp 127.0.0.1:5->127.0.0.1:6: read: connection reset by peer",
		"GET /health: dial tcp 127.0.0.1:6: connect: connection refused", "GET /health: http: server closed idle connection"} {
		require.Equal(t, "GET /health: no answer yet", notAnswering(why))
	}
	require.Equal(t, "GET /health answered 503, want 200-299", notAnswering("GET /health answered 503, want 200-299"))
	require.Equal(t, "TCP connect 127.0.0.1:6: no answer yet", notAnswering("TCP connect 127.0.0.1:6: dial tcp 127.0.0.1:6: connect: connection refused"))
}
