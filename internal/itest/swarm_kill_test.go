package itest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/client"
	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/deploy"
	"github.com/handoff-dev/handoff/internal/swarm"
)

// TestSwarmKillDeployAtEachPhaseThenRepair kills `handoff deploy` with SIGKILL in each
// phase of a deploy on a swarm of three (a lost SSH session, the OOM killer), under
// load on every node. `handoff repair`, run at once (the lease of a handoff of this
// machine that has ended is free without waiting it out), finishes what the deploy
// left: every node serves one release, status finds every node in step, one colour
// runs. The next deploy succeeds. No request fails on any node throughout.
func TestSwarmKillDeployAtEachPhaseThenRepair(t *testing.T) {
	requireSwarmFaults(t)
	a := startSwarmApp(t)
	loads := a.load(a.sw.Nodes...)
	store := swarm.NewStore(a.sw.Nodes[0].Docker())
	phase := func() (string, string, bool) {
		recs, err := store.List("web")
		if err != nil || len(recs) == 0 {
			return "", "", false
		}
		return recs[0].Phase, recs[0].Outcome, recs[0].Switched
	}
	replicas := func() (total uint64) {
		for _, colour := range []string{"web-blue", "web-green"} {
			got, err := a.sw.Nodes[0].Docker().ServiceInspect(context.Background(), colour, client.ServiceInspectOptions{})
			if cerrdefs.IsNotFound(err) {
				continue // removed: a colour that never served
			}
			require.NoError(t, err)
			total += *got.Service.Spec.Mode.Replicated.Replicas
		}
		return total
	}

	serving := "v1"
	n := 1
	for _, k := range []struct {
		phase string
		after time.Duration
	}{
		{deploy.PhaseStart, 300 * time.Millisecond},
		{deploy.PhaseHealth, time.Second},
		{deploy.PhaseSwitch, 500 * time.Millisecond}, // the switch job runs on
		{deploy.PhaseDrain, 0},
		{deploy.PhaseDrain, 2 * time.Second},
		{deploy.PhaseRetire, 0},
	} {
		n++
		release := fmt.Sprintf("k%d", n)
		a.write(release, `, BOOT_DELAY: "3s", STOP_DELAY: "1s"`)
		cmd := exec.Command(a.bin, "deploy")
		cmd.Dir = a.dir
		cmd.Env = append(append(os.Environ(), "HANDOFF_STATE_DIR="+a.state), a.env...)
		out := &syncBuffer{}
		cmd.Stdout, cmd.Stderr = out, out
		require.NoError(t, cmd.Start())
		WaitFor(t, 2*time.Minute, "the deploy of "+release+" to reach phase "+k.phase, func() bool {
			p, o, _ := phase()
			return p == k.phase && o == deploy.OutcomeRunning
		})
		time.Sleep(k.after)
		require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
		_ = cmd.Wait()
		p, _, switched := phase()
		t.Logf("killed in phase %s (+%s), recorded %s, switched %v; it printed:\n%s", k.phase, k.after, p, switched, out.String())

		res := a.handoff("repair")
		require.Zero(t, res.Code, "repair after a kill in phase %s: %s", k.phase, res)
		t.Logf("repair in %s: %s", res.Took.Round(time.Millisecond), strings.TrimSpace(res.Stderr+res.Stdout))
		if switched {
			serving = release
		}
		// Every node serves the same release: the one before, or this one if its switch
		// was recorded; a switch job that outran the record is repaired onto one of them.
		code, got, err := Get(plainClient, a.url(a.sw.Nodes[0]), SiteHost)
		require.NoError(t, err)
		require.Equal(t, 200, code)
		require.Contains(t, []string{serving, release}, got, "after a kill in phase %s", k.phase)
		serving = got
		a.servesOn(serving, a.sw.Nodes...)
		res = a.handoff("status")
		require.Zero(t, res.Code, "status: %s", res)
		require.NotContains(t, res.Stdout, "warning", "every node in step after repair: %s", res)
		require.Contains(t, res.Stdout, "health   passing", "the live release's tasks are healthy: %s", res)
		require.Equal(t, uint64(2), replicas(), "one colour of 2 replicas after repair: %s", res.Stdout)

		n++
		next := fmt.Sprintf("k%d", n)
		res = a.deploy(next)
		require.Zero(t, res.Code, "the deploy after repair: %s", res)
		a.servesOn(next, a.sw.Nodes...)
		serving = next
	}
	a.noneFailed(loads, "kill -9 of handoff deploy in each phase, then repair: %d requests, %d failed")
}
