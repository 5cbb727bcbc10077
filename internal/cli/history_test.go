package cli

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/deploy"
	"github.com/handoff-dev/handoff/internal/state"
)

// A record of a swarm's deploy shows how each node took each of its switches,
// under the table; --json has them as nodes.
func TestHistoryShowsEachNodesSwitch(t *testing.T) {
	dir := t.TempDir()
	started := time.Date(2026, 12, 4, 1, 2, 3, 0, time.UTC)
	green, blue := "web-4 (tasks.web-green:8000):100", "web-3 (tasks.web-blue:8000):100"
	recs := []deploy.Record{
		{ID: "a", Service: "web", Kind: deploy.KindDeploy, Started: started, Finished: started.Add(5 * time.Second), Outcome: deploy.OutcomeFailed,
			From: "web-3", To: "web-4", Phases: []deploy.PhaseRecord{{Name: deploy.PhaseSwitch, Duration: 3 * time.Second}},
			Nodes: []deploy.PartResult{
				{Node: "hn1", Route: green, Generation: 8, Result: deploy.PartSwitched, Detail: "drained tasks.web-blue:8000", Took: 2100 * time.Millisecond},
				{Node: "hn2", Route: green, Generation: 8, Result: deploy.PartRefused, ExitCode: 3, Detail: "its DNS never answered", Took: 2100 * time.Millisecond},
				{Node: "hn3", Route: green, Generation: 8, Result: deploy.PartNotReached, Detail: "node down"},
				{Node: "hn1", Route: blue, Generation: 9, Result: deploy.PartSwitched, Detail: "nothing to drain", Took: time.Second},
			}},
		{ID: "b", Service: "web", Kind: deploy.KindDeploy, Started: started.Add(-time.Hour), Finished: started.Add(-time.Hour + time.Second),
			Outcome: deploy.OutcomeSucceeded, To: "web-3"},
	}
	for i := len(recs) - 1; i >= 0; i-- {
		require.NoError(t, state.Store{Dir: dir}.Save(&recs[i]))
	}
	out, stderr, code := run(t, "history", "--service", "web", "--state-dir", dir)
	require.Equal(t, 0, code, stderr)
	_, nodes, ok := strings.Cut(out, "\n\n")
	require.True(t, ok, out)
	require.Equal(t, started.Local().Format("2006-01-02 15:04:05")+` deploy web-4, per node:
  switch to web-4 (tasks.web-green:8000):100 (generation 8)
    hn1  switched          2.1s  drained tasks.web-blue:8000
    hn2  refused (exit 3)  2.1s  its DNS never answered
    hn3  not reached       -     node down
  switch to web-3 (tasks.web-blue:8000):100 (generation 9)
    hn1  switched  1s  nothing to drain
`, nodes, "only the record with nodes")

	out, _, code = run(t, "history", "--service", "web", "--state-dir", dir, "--json")
	require.Equal(t, 0, code)
	var got []struct {
		Nodes []struct {
			Node       string `json:"node"`
			Result     string `json:"result"`
			Generation uint64 `json:"generation"`
		} `json:"nodes"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &got))
	require.Len(t, got[0].Nodes, 4)
	require.Equal(t, "refused", got[0].Nodes[1].Result)
	require.Equal(t, uint64(9), got[0].Nodes[3].Generation)
	require.Nil(t, got[1].Nodes)
	require.NotContains(t, strings.SplitN(out, `"id": "b"`, 2)[1], `"nodes"`, "a record without nodes has no nodes field")
}
