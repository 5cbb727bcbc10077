package cli

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
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

// History on a swarm reads the records from a manager and needs nothing else: a
// Docker configuration whose credentials cannot be read does not stop it. A
// --state-dir, not read there, is said to be.
func TestHistoryOnASwarmNeedsOnlyAManager(t *testing.T) {
	var mu sync.Mutex
	var asked []string
	manager := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		asked = append(asked, r.Method+" "+r.URL.Path)
		mu.Unlock()
		w.Header().Set("Api-Version", "1.47")
		w.Header().Set("Content-Type", "application/json")
		if strings.HasSuffix(r.URL.Path, "/_ping") {
			_, _ = w.Write([]byte("OK"))
			return
		}
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"message":"service not found"}`))
	}))
	t.Cleanup(manager.Close)
	t.Setenv("DOCKER_HOST", "tcp://"+manager.Listener.Addr().String())
	cfg := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(cfg, "config.json"), []byte("{not json"), 0o600))
	t.Setenv("DOCKER_CONFIG", cfg)
	file := filepath.Join(t.TempDir(), "handoff.yml")
	require.NoError(t, os.WriteFile(file, []byte("service: web\nengine: swarm\nimage: r.example.com/x:1\nport: 8000\nhealth: {type: cmd, command: [/app, check]}\nswarm: {proxy_image: r.example.com/handoff:1}\n"), 0o644))

	out, stderr, code := run(t, "-f", file, "history", "--state-dir", "/srv/state")
	require.Equal(t, 0, code, stderr)
	require.Equal(t, "no deploys of web recorded in the swarm's records\n", out)
	require.Equal(t, "note: --state-dir /srv/state is not read on a swarm: its records are the swarm's, shared by every manager\n", stderr)
	mu.Lock()
	defer mu.Unlock()
	require.Contains(t, asked, "GET /v1.47/services/handoff-record-web", "the record read from the manager")
}
