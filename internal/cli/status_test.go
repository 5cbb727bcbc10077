package cli

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/deploy"
)

func TestStatusPrintsARowPerNode(t *testing.T) {
	five, none := int64(5), int64(0)
	parts := []deploy.PartStatus{
		{Name: "hn1", Role: "manager", State: "ready", Availability: "active", Proxy: "running", Generation: 8, Route: "web-4 (tasks.web-green:8000):100", InFlight: &five, Draining: 2},
		{Name: "hn2", Role: "worker", State: "ready", Availability: "active", Proxy: "running", Generation: 8, Route: "web-4 (tasks.web-green:8000):100", InFlight: &none},
		{Name: "hn3", Role: "worker", State: "down", Availability: "active", Proxy: "running", Note: "not reached: node down"},
		{Name: "hn4", Role: "worker", State: "ready", Availability: "active", Note: "its proxy did not answer: failed, exit 1: no socket"},
		{Name: "hn5", Generation: 8, Route: "web-4 (tasks.web-green:8000):100", InFlight: &none, Note: "the node left the swarm after its proxy was read"},
	}
	var out bytes.Buffer
	printParts(&out, parts)
	require.Equal(t, `  NODE  ROLE     STATE  AVAILABILITY  PROXY    GENERATION  SERVES                            IN FLIGHT       NOTE
  hn1   manager  ready  active        running  8           web-4 (tasks.web-green:8000):100  5 (2 draining)  -
  hn2   worker   ready  active        running  8           web-4 (tasks.web-green:8000):100  0               -
  hn3   worker   down   active        running  -           -                                 -               not reached: node down
  hn4   worker   ready  active        none     -           -                                 -               its proxy did not answer: failed, exit 1: no socket
  hn5   -        -      -             -        8           web-4 (tasks.web-green:8000):100  0               the node left the swarm after its proxy was read
`, out.String())

	// --json: the rows as nodes, in flight 0 kept, a row not read without it.
	b, err := json.Marshal(deploy.Status{Parts: parts[1:3]})
	require.NoError(t, err)
	require.Contains(t, string(b), `"nodes":[{"name":"hn2","role":"worker","state":"ready","availability":"active","proxy":"running","generation":8,"route":"web-4 (tasks.web-green:8000):100","in_flight":0},{"name":"hn3",`)
	require.Contains(t, string(b), `"proxy":"running","note":"not reached: node down"}]`)
}
