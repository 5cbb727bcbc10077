package itest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestSwarmAProxyWhoseDNSNeverShowsTheTasks cuts node 3's gossip (7946, TCP and UDP),
// by which a node's DNS learns of tasks on other nodes, and deploys a release whose
// tasks may run only on nodes 1 and 2. Their proxies switch; node 3's waits for its DNS
// to answer with the new tasks, which it never does, and refuses: the deploy fails with
// exit 5 naming node 3, both colours kept, node 3 serving the release before. With its
// gossip back, repair finishes the switch there. No request fails on any node.
func TestSwarmAProxyWhoseDNSNeverShowsTheTasks(t *testing.T) {
	requireSwarmFaults(t)
	a := startSwarmApp(t)
	n3 := a.sw.Nodes[2]
	loads := a.load(a.sw.Nodes...)

	gossip := func(op string) {
		t.Helper()
		for _, chain := range []string{"INPUT", "OUTPUT"} {
			for _, proto := range []string{"tcp", "udp"} {
				for _, dir := range []string{"--dport", "--sport"} {
					n3.Exec(t, "iptables", op, chain, "-p", proto, dir, "7946", "-j", "DROP")
				}
			}
		}
	}
	gossip("-I")
	cut := true
	t.Cleanup(func() {
		if cut {
			gossip("-D")
		}
	})

	a.write("v2", "")
	yml := filepath.Join(a.dir, "handoff.yml")
	b, err := os.ReadFile(yml)
	require.NoError(t, err)
	elsewhere := strings.Replace(string(b), "swarm: {", `swarm: {max_per_node: 1, constraints: ["node.hostname!=`+n3.NS+`"], `, 1)
	require.NoError(t, os.WriteFile(yml, []byte(elsewhere), 0o644))
	res := a.handoff("deploy")
	t.Logf("a deploy node 3's DNS never learns of: %s", res)
	require.Equal(t, 5, res.Code, "a switch node 3 cannot make: %s", res)
	require.Contains(t, lastLine(res.Stderr), n3.NS+": its DNS never answered", "the node is named: %s", res)
	a.servesOn("v2", a.sw.Nodes[:2]...)
	a.servesOn("v1", n3)

	gossip("-D")
	cut = false
	var repaired Result
	WaitFor(t, 2*time.Minute, "repair once node 3's DNS knows the tasks", func() bool {
		repaired = a.handoff("repair")
		return repaired.Code == 0
	})
	t.Logf("repair: %s", repaired)
	a.servesOn("v2", a.sw.Nodes...)
	res = a.handoff("status")
	require.Zero(t, res.Code, "status: %s", res)
	require.NotContains(t, res.Stdout, "warning", "every node in step: %s", res)

	a.noneFailed(loads, "a node whose DNS lags, then repair: %d requests, %d failed")
}
