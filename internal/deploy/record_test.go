package deploy

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The history each procedure saves is what it saved before the run state
// left the Record: testdata/history.golden is it, with what changes from
// run to run put in words. HANDOFF_UPDATE_GOLDEN=1 writes it anew; a diff
// of it is a change of what users' history files hold.
func TestTheHistoryIsSavedAsBefore(t *testing.T) {
	var b strings.Builder
	for _, sc := range historyScenarios() {
		fmt.Fprintf(&b, "=== %s\n%s\n", sc.name, savedJSON(t, sc.run(t)))
	}
	golden := filepath.Join("testdata", "history.golden")
	if os.Getenv("HANDOFF_UPDATE_GOLDEN") != "" {
		require.NoError(t, os.MkdirAll("testdata", 0o755))
		require.NoError(t, os.WriteFile(golden, []byte(b.String()), 0o644))
	}
	want, err := os.ReadFile(golden)
	require.NoError(t, err)
	require.Equal(t, string(want), b.String())
}

// A history file an earlier version wrote loads, and drives status and the
// next procedure as it did: a deploy killed in its drain, after its switch,
// with the requests of its release job still held.
func TestAHistoryAnEarlierVersionSavedStillDrivesStatusAndRepair(t *testing.T) {
	const saved = `[{"id":"20261130T101500.000000-deploy","service":"web","kind":"deploy",
"started":"2026-11-30T10:15:00Z","outcome":"running","phase":"drain","image":"app:v2","image_id":"sha256:v2",
"from_release":1,"to_release":2,"from_container":"web-1","from_image":"app:v1","from_image_id":"sha256:v1",
"to_container":"web-2","old_upstream":"127.0.0.1:30001","new_upstream":"127.0.0.1:30002","switched":true,
"held_requests":true,"phases":[{"name":"image","started":"2026-11-30T10:15:00Z","duration_ns":1000000},
{"name":"release","started":"2026-11-30T10:15:00.001Z","duration_ns":2000000,"exit_code":0},
{"name":"start","started":"2026-11-30T10:15:00.003Z","duration_ns":3000000},
{"name":"health","started":"2026-11-30T10:15:00.006Z","duration_ns":4000000},
{"name":"switch","started":"2026-11-30T10:15:00.010Z","duration_ns":5000000},
{"name":"drain","started":"2026-11-30T10:15:00.015Z","duration_ns":0}],"pid":4242}]`
	r := newRig(t)
	p := &fakePauser{}
	r.d.Pauser = p
	require.NoError(t, json.Unmarshal([]byte(saved), &r.history.recs))
	require.Equal(t, 0, *r.history.recs[0].Phases[1].ExitCode)
	r.rt.add(Container{ID: "id-web-2", Name: "web-2", Service: "web", Release: 2, Running: true, Port: 8000, Upstream: "127.0.0.1:30002"})
	r.proxy.route = Only("", "127.0.0.1:30002")

	st, err := r.d.Status(context.Background(), testService())
	require.NoError(t, err)
	require.Equal(t, "web-2", st.Live.Name)
	require.Equal(t, "the deploy 20261130T101500.000000-deploy was interrupted in phase drain (pid 4242 is gone); `handoff repair web` or the next deploy repairs what it left", st.Problem)

	rec, err := r.d.Repair(context.Background(), testService())
	require.NoError(t, err)
	require.Equal(t, []string{"stop web-1"}, r.rt.calls, "web-1, left running after the switch, drained and stopped; web-2 serves on")
	require.Equal(t, []string{"resume"}, p.calls, "the held requests let go")
	require.Equal(t, "web-2", rec.To)
	require.Equal(t, PhaseRecover, rec.Phase, "what it did is a recorded phase")
	require.Len(t, rec.Phases, 1)
	require.Equal(t, "127.0.0.1:30002", rec.NewUpstream, "repaired: web-2 serves there")
	require.Contains(t, rec.Notes, "stopping web-1: an earlier release left running after its switch")
	old := r.history.recs[1]
	require.Equal(t, OutcomeInterrupted, old.Outcome)
	require.False(t, old.Held)

	st, err = r.d.Status(context.Background(), testService())
	require.NoError(t, err)
	require.True(t, st.Agree, st.Problem)
	require.Empty(t, st.Problem)

	rec, err = r.d.Rollback(context.Background(), testService(), 0)
	require.NoError(t, err)
	require.Equal(t, "web-1", rec.To, "the release the old record replaced is the one to go back to")
}

// savedJSON is the history of r as internal/state writes it, with what
// changes from run to run (IDs, times, durations, ports) put in words.
func savedJSON(t *testing.T, r *rig) string {
	t.Helper()
	recs := make([]Record, len(r.history.recs))
	copy(recs, r.history.recs)
	ids := map[string]string{}
	for i := range recs {
		n := len(recs) - i
		ids[recs[i].ID] = fmt.Sprintf("ID-%d", n)
		recs[i].ID = ids[recs[i].ID]
		recs[i].Started, recs[i].Finished = time.Time{}, time.Time{}
		for j := range recs[i].Phases {
			recs[i].Phases[j].Started, recs[i].Phases[j].Duration = time.Time{}, 0
		}
		recs[i].PID = 0
	}
	b, err := json.MarshalIndent(recs, "", " ")
	require.NoError(t, err)
	s := string(b)
	for id, name := range ids {
		if id != "" {
			s = strings.ReplaceAll(s, id, name)
		}
	}
	return regexp.MustCompile(`\d+(\.\d+)?(ms|µs|ns|s)\b`).ReplaceAllString(s, "TIME")
}

type historyScenario struct {
	name string
	run  func(t *testing.T) *rig
}

// historyScenarios are procedures whose saved history TestTheHistoryIsSavedAsBefore pins.
func historyScenarios() []historyScenario {
	ctx := context.Background()
	deployed := func(t *testing.T) *rig {
		r := newRig(t)
		_, err := r.d.Deploy(ctx, testService())
		require.NoError(t, err)
		return r
	}
	return []historyScenario{
		{"a deploy", deployed},
		{"deploys of three replicas, then a rollback", func(t *testing.T) *rig {
			r := newRig(t)
			for range 2 {
				_, err := r.d.Deploy(ctx, replicated(3))
				require.NoError(t, err)
			}
			_, err := r.d.Rollback(ctx, replicated(3), 0)
			require.NoError(t, err)
			return r
		}},
		{"a deploy whose new release fails its health check", func(t *testing.T) *rig {
			r := newRig(t)
			r.rt.healthy = func(c Container) Container { c.Health = "unhealthy"; return c }
			_, err := r.d.Deploy(ctx, testService())
			require.ErrorIs(t, err, ErrUnhealthy)
			return r
		}},
		{"release jobs that hold requests, passing and failing", func(t *testing.T) *rig {
			r := newRig(t)
			r.d.Pauser = &fakePauser{}
			svc := testService()
			svc.Release = &Job{Command: []string{"migrate"}, Pause: true, Timeout: time.Minute}
			_, err := r.d.Deploy(ctx, svc)
			require.NoError(t, err)
			r.rt.jobExit = 3
			_, err = r.d.Deploy(ctx, svc)
			require.ErrorIs(t, err, ErrReleaseJob)
			return r
		}},
		{"a deploy after one killed before its switch", func(t *testing.T) *rig {
			r := newRig(t)
			r.rt.add(Container{ID: "id-web-2", Name: "web-2", Service: "web", Release: 2, Running: true, Upstream: "127.0.0.1:30002"})
			r.rt.add(Container{ID: "id-web-3", Name: "web-3", Service: "web", Release: 3, Upstream: "127.0.0.1:30003"})
			r.history.recs = []Record{
				{ID: "killed-3", Service: "web", Kind: KindDeploy, Outcome: OutcomeRunning, Phase: PhaseStart, ToRelease: 3},
				{ID: "killed-2", Service: "web", Kind: KindDeploy, Outcome: OutcomeRunning, Phase: PhaseHealth, ToRelease: 2, Held: true},
			}
			r.d.Pauser = &fakePauser{}
			_, err := r.d.Deploy(ctx, testService())
			require.NoError(t, err)
			return r
		}},
		{"a deploy after one killed in its drain", func(t *testing.T) *rig {
			r := newRig(t)
			r.rt.add(Container{ID: "id-web-2", Name: "web-2", Service: "web", Release: 2, Running: true, Upstream: "127.0.0.1:30002"})
			r.proxy.route = Only("", "127.0.0.1:30002")
			r.history.recs = []Record{{ID: "killed", Service: "web", Kind: KindDeploy, Outcome: OutcomeRunning, Phase: PhaseDrain, ToRelease: 2, To: "web-2", Switched: true}}
			_, err := r.d.Deploy(ctx, testService())
			require.NoError(t, err)
			return r
		}},
		{"an interrupt after the switch took, then a deploy", func(t *testing.T) *rig {
			r := newRig(t)
			cctx, cancel := context.WithCancel(ctx)
			r.proxy.switchErr, r.proxy.applyAnyway, r.proxy.onSwitch = context.Canceled, true, cancel
			_, err := r.d.Deploy(cctx, testService())
			require.ErrorIs(t, err, context.Canceled)
			_, err = r.d.Deploy(ctx, testService())
			require.NoError(t, err)
			return r
		}},
		{"an unclear switch", func(t *testing.T) *rig {
			r := newRig(t)
			r.proxy.switchErr, r.proxy.applyAnyway = errLostReply, true
			r.proxy.readBackErr = fmt.Errorf("connection refused")
			_, err := r.d.Deploy(ctx, testService())
			require.ErrorIs(t, err, ErrUnclear)
			return r
		}},
		{"rollbacks: a kept release, a failing one", func(t *testing.T) *rig {
			r := deployed(t)
			_, err := r.d.Rollback(ctx, testService(), 0)
			require.NoError(t, err)
			r.rt.healthy = func(c Container) Container { c.Health = "unhealthy"; return c }
			_, err = r.d.Rollback(ctx, testService(), 2)
			require.ErrorIs(t, err, ErrUnhealthy)
			return r
		}},
		{"a rollback that runs an earlier image again", func(t *testing.T) *rig {
			r := newRig(t)
			svc := testService()
			svc.RemoveRetired = true
			r.rt.images["app:v3"] = "sha256:v3"
			_, err := r.d.Deploy(ctx, svc)
			require.NoError(t, err)
			svc.Image = "app:v3"
			_, err = r.d.Deploy(ctx, svc)
			require.NoError(t, err)
			r.rt.images["sha256:v2"] = "sha256:v2"
			_, err = r.d.Rollback(ctx, svc, 0)
			require.NoError(t, err)
			return r
		}},
		{"workers: start-first, then stop-first failing", func(t *testing.T) *rig {
			r, svc := workerRig(t, RolloutStartFirst)
			_, err := r.d.Deploy(ctx, svc)
			require.NoError(t, err)
			svc.Rollout = RolloutStopFirst
			r.rt.healthy = func(c Container) Container {
				if c.Release == 3 {
					c.Running, c.ExitCode = false, 1
				}
				return c
			}
			_, err = r.d.Deploy(ctx, svc)
			require.ErrorIs(t, err, ErrUnhealthy)
			return r
		}},
		{"repairs: a lost route, a stopped release, nothing to repair", func(t *testing.T) *rig {
			r := deployed(t)
			r.proxy.route = nil
			_, err := r.d.Repair(ctx, testService())
			require.NoError(t, err)
			r.rt.find("web-2").Running = false
			_, err = r.d.Repair(ctx, testService())
			require.NoError(t, err)
			_, err = r.d.Repair(ctx, testService())
			require.NoError(t, err)
			return r
		}},
	}
}
