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
		{5 * time.Minute, 1, time.Second, 25 * time.Millisecond},       // a pass is confirmed soon
		{time.Second, 0, 20 * time.Millisecond, 20 * time.Millisecond}, // a shorter interval wins
	}
	for _, c := range cases {
		require.Equal(t, c.want, nextCheck(c.waited, c.passes, c.interval), "%+v", c)
	}
}
