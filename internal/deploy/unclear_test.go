package deploy

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

var errLostReply = errors.New("PATCH: read: connection reset by peer")

// The switch was applied but its reply was lost: the procedure reads the
// proxy back, sees the new upstream, and goes on; it never removes the
// container the proxy now points at.
func TestLostReplyAfterTheSwitchTookGoesOn(t *testing.T) {
	r := newRig(t)
	r.proxy.switchErr, r.proxy.applyAnyway = errLostReply, true
	rec, err := r.d.Deploy(context.Background(), testService())
	require.NoError(t, err)
	require.True(t, rec.Switched)
	require.Equal(t, "127.0.0.1:40001", r.proxy.at())
	require.Equal(t, []string{"run web-2", "stop web-1"}, r.rt.calls, "web-2 kept, web-1 drained and stopped")
	require.Contains(t, strings.Join(rec.Notes, "\n"), "points at 127.0.0.1:40001: it took")
}

// A switch that failed and did not apply removes the new container as before.
func TestFailedSwitchThatDidNotApplyRemovesTheNewContainer(t *testing.T) {
	r := newRig(t)
	r.proxy.switchErr = errLostReply
	_, err := r.d.Deploy(context.Background(), testService())
	require.ErrorIs(t, err, errLostReply)
	require.ErrorContains(t, err, "web-1 still serving")
	require.Equal(t, []string{"run web-2", "remove web-2"}, r.rt.calls)
}

// When the proxy cannot even be read back, nothing is removed or stopped:
// the command says so and what to run.
func TestUnclearSwitchLeavesBothRunning(t *testing.T) {
	r := newRig(t)
	r.proxy.switchErr, r.proxy.applyAnyway = errLostReply, true
	r.proxy.readBackErr = errors.New("connection refused")
	rec, err := r.d.Deploy(context.Background(), testService())
	require.ErrorIs(t, err, ErrUnclear)
	require.ErrorContains(t, err, "both are left running")
	require.ErrorContains(t, err, "handoff repair")
	require.Equal(t, []string{"run web-2"}, r.rt.calls, "nothing removed, nothing stopped")
	require.Contains(t, strings.Join(rec.Notes, "\n"), "web-2 left running: cannot tell whether fake proxy still points at")
}

// A Ctrl-C that lands after the switch took leaves the switch in place and
// stops there; the next deploy drains and stops the old release.
func TestInterruptAfterTheSwitchTookKeepsIt(t *testing.T) {
	r := newRig(t)
	ctx, cancel := context.WithCancel(context.Background())
	r.proxy.switchErr, r.proxy.applyAnyway = context.Canceled, true
	r.proxy.onSwitch = cancel
	rec, err := r.d.Deploy(ctx, testService())
	require.ErrorIs(t, err, context.Canceled)
	require.True(t, rec.Switched)
	require.Equal(t, OutcomeInterrupted, rec.Outcome)
	require.Equal(t, []string{"run web-2"}, r.rt.calls, "web-2 serves; web-1 left for the next deploy")

	r.rt.calls = nil
	_, err = r.d.Deploy(context.Background(), testService())
	require.NoError(t, err)
	require.Equal(t, []string{"stop web-1", "run web-3", "stop web-2"}, r.rt.calls)
}

// Another route still using the old container keeps it running.
func TestRetireNeverStopsWhatAnotherRouteUses(t *testing.T) {
	r := newRig(t)
	r.proxy.others = map[string]string{"site b.test": "127.0.0.1:30001"}
	rec, err := r.d.Deploy(context.Background(), testService())
	require.NoError(t, err)
	require.Equal(t, []string{"run web-2"}, r.rt.calls, "web-1 is not stopped")
	require.Contains(t, strings.Join(rec.Notes, "\n"), "not stopping web-1: 127.0.0.1:30001 is still the upstream of site b.test")
}

// The history cannot be written after the switch: the deploy still drains
// and retires, and says the history is behind.
func TestHistoryFailureAfterTheSwitchDoesNotStrandTheOldRelease(t *testing.T) {
	r := newRig(t)
	r.history.failFrom = PhaseDrain
	rec, err := r.d.Deploy(context.Background(), testService())
	require.NoError(t, err)
	require.Equal(t, []string{"run web-2", "stop web-1"}, r.rt.calls)
	require.Contains(t, strings.Join(rec.Notes, "\n"), "could not record phase drain in the history (no space left on device); going on")

	r = newRig(t)
	r.history.failFrom = PhaseStart
	_, err = r.d.Deploy(context.Background(), testService())
	require.ErrorContains(t, err, "record phase start before acting: no space left on device (nothing was changed for it)")
	require.Empty(t, r.rt.calls)
}

// The live release restarted on another address (made before handoff
// pinned ports): status says so and what to run; repair points the proxy
// at it again.
func TestRepairFollowsAReleaseThatMoved(t *testing.T) {
	r := newRig(t)
	_, err := r.d.Deploy(context.Background(), testService())
	require.NoError(t, err)
	r.rt.find("web-2").Upstream = "127.0.0.1:49999" // dockerd gave it another port

	st, err := r.d.Status(context.Background(), testService())
	require.NoError(t, err)
	require.False(t, st.Agree)
	require.Equal(t, "fake proxy points at 127.0.0.1:40001, where no container answers: web-2, the release in service, now listens on 127.0.0.1:49999; run `handoff repair web`", st.Problem)

	r.rt.calls = nil
	rec, err := r.d.Repair(context.Background(), testService())
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1:49999", r.proxy.at())
	require.Empty(t, r.rt.calls, "nothing started, stopped or removed")
	require.Equal(t, KindRepair, rec.Kind)
	st, err = r.d.Status(context.Background(), testService())
	require.NoError(t, err)
	require.True(t, st.Agree, st.Problem)

	rec, err = r.d.Repair(context.Background(), testService())
	require.NoError(t, err)
	require.Contains(t, rec.Notes[len(rec.Notes)-1], "nothing to repair")
}

// The live release stopped (restart: no, and the machine rebooted): repair
// starts it again where the proxy points.
func TestRepairStartsAStoppedLiveRelease(t *testing.T) {
	r := newRig(t)
	_, err := r.d.Deploy(context.Background(), testService())
	require.NoError(t, err)
	r.rt.find("web-2").Running = false
	st, err := r.d.Status(context.Background(), testService())
	require.NoError(t, err)
	require.Contains(t, st.Problem, "web-2, the release in service, is not running; run `handoff repair web`")

	r.rt.calls = nil
	_, err = r.d.Repair(context.Background(), testService())
	require.NoError(t, err)
	require.Equal(t, []string{"start web-2"}, r.rt.calls)
	require.Empty(t, r.proxy.switches[1:], "no switch: it came back where the proxy points")
}

// A deploy killed outright leaves its record running; status tells it
// from a deploy running now.
func TestStatusTellsAnInterruptedDeploy(t *testing.T) {
	r := newRig(t)
	r.history.recs = []Record{{ID: "x", Service: "web", Kind: KindDeploy, Outcome: OutcomeRunning, Phase: PhaseDrain, PID: 4242}}
	st, err := r.d.Status(context.Background(), testService())
	require.NoError(t, err)
	require.Equal(t, "the deploy x was interrupted in phase drain (pid 4242 is gone); `handoff repair web` or the next deploy repairs what it left", st.Problem)
	r.d.Locker = noLock{err: ErrLocked}
	st, err = r.d.Status(context.Background(), testService())
	require.NoError(t, err)
	require.Equal(t, "a deploy is running now (pid 4242, phase drain)", st.Problem)
}

// A deploy killed between creating its container and starting it leaves a
// container that never ran: the next deploy removes it too.
func TestContainerCreatedByAKilledDeployIsRemoved(t *testing.T) {
	r := newRig(t)
	r.rt.add(Container{ID: "id-web-2", Name: "web-2", Service: "web", Release: 2, Upstream: "127.0.0.1:30002"})
	r.history.recs = []Record{{ID: "old", Service: "web", Kind: KindDeploy, Outcome: OutcomeRunning, Phase: PhaseStart, ToRelease: 2}}
	rec, err := r.d.Deploy(context.Background(), testService())
	require.NoError(t, err)
	require.Equal(t, []string{"remove web-2", "run web-3", "stop web-1"}, r.rt.calls)
	require.Contains(t, strings.Join(rec.Notes, "\n"), "removing web-2: created by an interrupted deploy, never started")
}
