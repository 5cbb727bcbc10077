package itest

import (
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// deploysUnderLoad is how many consecutive deploys the zero-downtime test
// makes; HANDOFF_IT_DEPLOYS overrides it.
func deploysUnderLoad(t *testing.T) int {
	if v := os.Getenv("HANDOFF_IT_DEPLOYS"); v != "" {
		n, err := strconv.Atoi(v)
		require.NoError(t, err)
		return n
	}
	return 20
}

// Under a steady load through Caddy, consecutive deploys fail no request:
// no 5xx, no connection error for clients that retry as HTTP allows
// (keep-alive GETs, HTTP/2), and every slow request in flight at a switch
// completes with 200. The app is told to drop its requests at once on
// SIGTERM, so only handoff's drain keeps the slow ones alive: this test
// fails if the drain does not wait.
//
// Connection errors of non-retrying keep-alive POSTs are counted apart:
// Caddy's reload closes idle client connections (see docs/caddy.md).
func TestZeroFailedRequestsOverConsecutiveDeploys(t *testing.T) {
	s := NewScenario(t, ScenarioOptions{})
	n := deploysUnderLoad(t)
	appEnv := map[string]string{"DRAIN_GRACE": "0s"}
	s.Deploy(Config{Release: "r0", Env: appEnv})

	load := StartLoad(t, s.Caddy.URL, SiteHost, LoadOptions{Workers: 4, H2: 2, Posts: 2, Slow: 3, SlowFor: 1500 * time.Millisecond})
	WaitFor(t, 10*time.Second, "load to flow", func() bool { return load.Snapshot().OK > 100 })

	var postErrs []int
	prev := load.Snapshot()
	start := time.Now()
	for i := 1; i <= n; i++ {
		release := "r" + strconv.Itoa(i)
		r := s.Deploy(Config{Release: release, Env: appEnv})
		require.Contains(t, r.Stdout, "deployed")
		now := load.Snapshot()
		postErrs = append(postErrs, now.ReloadCuts()-prev.ReloadCuts())
		prev = now
		require.Zero(t, now.Failures(), "after deploy %d: %s", i, now)
	}
	took := time.Since(start)
	time.Sleep(200 * time.Millisecond) // let the last release serve a little, for the count below
	got := load.Stop()

	t.Logf("%d deploys under load in %s (%.2fs each)", n, took.Round(time.Millisecond), took.Seconds()/float64(n))
	t.Logf("requests: ok=%d (GET+h2) post_ok=%d slow_ok=%d", got.OK, got.PostOK, got.SlowOK)
	t.Logf("failures: 5xx=%d conn_errors=%d slow_cut=%d other=%d", got.Status5xx, got.ConnErrors, got.SlowCut, got.OtherStatus)
	t.Logf("non-retried keep-alive POST connection errors per switch (Caddy reload): %v", postErrs)
	require.Zero(t, got.Failures(), "%s", got)
	require.Positive(t, got.Releases["r"+strconv.Itoa(n)], "the last release served: %v", got.Releases)
	require.Equal(t, "r"+strconv.Itoa(n), s.Serving())
	require.Len(t, Containers(t, s.API, s.Service), 4, "the live release and keep=3 stopped ones")
}
