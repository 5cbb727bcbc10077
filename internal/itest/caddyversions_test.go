package itest

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Debian's Caddy 2.6.2 switches as well, but does not report requests in
// flight to a removed upstream: handoff waits the whole drain timeout and
// says so. HANDOFF_TEST_CADDY_OLD names that binary (scripts/test.sh sets it).
func TestOldCaddyFallsBackToABoundedDrain(t *testing.T) {
	bin := os.Getenv("HANDOFF_TEST_CADDY_OLD")
	if bin == "" {
		t.Skip("HANDOFF_TEST_CADDY_OLD not set (scripts/test.sh sets it to Debian's caddy 2.6.2)")
	}
	s := NewScenario(t, ScenarioOptions{Caddy: CaddyOptions{Binary: bin, Plain: true}})
	load := StartLoad(t, s.Caddy.URL, SiteHost, LoadOptions{Workers: 2})

	r := s.Deploy(Config{Release: "v1", DrainTimeout: "2s"})
	require.Contains(t, r.Stderr, "does not report requests in flight to a removed upstream (Caddy 2.11.2 and later do); waiting the whole drain timeout, 2s")
	require.GreaterOrEqual(t, r.Took, 2*time.Second)
	require.Equal(t, "v1", s.Serving())
	s.Deploy(Config{Release: "v2", DrainTimeout: "1s"})
	require.Equal(t, "v2", s.Serving())

	got := load.Stop()
	require.Zero(t, got.Failures(), "%s", got)

	st := s.status()
	require.True(t, st.Agree)
	require.Len(t, st.Advice, 3, "2.6.2 has none of the recommended settings here: %v", st.Advice)
	require.True(t, strings.Contains(st.Advice[0], "stream_close_delay"))
}

// The current Caddy reports the drain, so a deploy does not wait for nothing.
func TestCurrentCaddyReportsTheDrain(t *testing.T) {
	s := NewScenario(t, ScenarioOptions{})
	r := s.Deploy(Config{Release: "v1", DrainTimeout: "20s"})
	require.NotContains(t, r.Stderr, "does not report")
	require.Less(t, r.Took, 10*time.Second)
}

// The admin API on a unix socket, as recommended, works the same.
func TestAdminOnUnixSocket(t *testing.T) {
	s := NewScenario(t, ScenarioOptions{Caddy: CaddyOptions{UnixAdmin: true}})
	s.Deploy(Config{Release: "v1"})
	require.Equal(t, "v1", s.Serving())
	st := s.status()
	require.True(t, st.Agree)
	require.Empty(t, st.Advice, "every recommended setting is there: %v", st.Advice)
}
