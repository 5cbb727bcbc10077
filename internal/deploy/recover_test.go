package deploy

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
)

// leftRig has release 1 live, and what a deploy of release 2 killed in its
// health wait left: web-2 running, its record still running, the requests
// of its release job held.
func leftRig(t *testing.T) (*rig, *fakePauser) {
	t.Helper()
	r := newRig(t)
	p := &fakePauser{}
	r.d.Pauser = p
	r.rt.add(Container{ID: "id-web-2", Name: "web-2", Service: "web", Release: 2, Running: true, Upstream: "127.0.0.1:30002"})
	r.history.recs = []Record{{ID: "killed", Service: "web", Kind: KindDeploy, Outcome: OutcomeRunning, Phase: PhaseHealth, ToRelease: 2, Held: true}}
	return r, p
}

// survey reads: it changes nothing in Docker, the proxy or the history,
// and says what recoverInterrupted is to finish.
func TestSurveyChangesNothing(t *testing.T) {
	r, p := leftRig(t)
	run := r.d.newRun(testService(), KindDeploy)
	left, err := r.d.survey(context.Background(), run)
	require.NoError(t, err)
	require.Empty(t, r.rt.calls)
	require.Empty(t, p.calls)
	require.Empty(t, r.history.phasesSaved)
	require.Equal(t, OutcomeRunning, r.history.recs[0].Outcome)
	require.Equal(t, "web-1", run.view.live.Name)
	require.True(t, left.toRecover())
	require.Equal(t, "the deploy killed, interrupted in phase health; web-2", left.describe(run.view))
}

// What an interrupted deploy left is finished in a recorded phase, the
// first, before anything else acts; a clean start records none.
func TestRecoveryIsARecordedPhaseOnlyWhenThereIsSomethingToRecover(t *testing.T) {
	r, p := leftRig(t)
	rec, err := r.d.Deploy(context.Background(), testService())
	require.NoError(t, err)
	require.Equal(t, []string{"remove web-2", "run web-3", "stop web-1"}, r.rt.calls)
	require.Equal(t, []string{"resume"}, p.calls)
	require.Equal(t, PhaseRecover, rec.Phases[0].Name)
	require.Equal(t, "recover:running", r.history.phasesSaved[0], "recorded before it acted")
	require.Equal(t, []string{
		"an earlier deploy (killed) was interrupted in phase health; repairing",
		"letting go the requests its release job held",
		"removing web-2: left running by an interrupted deploy, never in service",
	}, rec.Notes)

	rec, err = r.d.Deploy(context.Background(), testService())
	require.NoError(t, err)
	require.Equal(t, PhaseImage, rec.Phases[0].Name, "nothing left: no recover phase")

	// A container another route uses is only noted: nothing to recover.
	r = newRig(t)
	r.rt.add(Container{ID: "id-web-2", Name: "web-2", Service: "web", Release: 2, Running: true, Upstream: "127.0.0.1:30002"})
	r.proxy.others = map[string]string{"site b.test": "127.0.0.1:30002"}
	rec, err = r.d.Rollback(context.Background(), testService(), 0)
	require.ErrorIs(t, err, ErrNothingToRoll)
	require.Empty(t, rec.Phases)
	require.Equal(t, []string{"leaving web-2 running: 127.0.0.1:30002 is still the upstream of site b.test"}, rec.Notes)
}

// A recovery that fails is the recover phase's failure: nothing is started.
func TestARecoveryThatFailsStartsNothing(t *testing.T) {
	r, _ := leftRig(t)
	r.history.failFrom = PhaseRecover
	rec, err := r.d.Deploy(context.Background(), testService())
	require.ErrorContains(t, err, "record phase recover before acting: no space left on device")
	require.Empty(t, r.rt.calls, "not recorded, so not acted")
	require.Equal(t, PhaseRecover, rec.Phase)
}
