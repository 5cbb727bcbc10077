package swarm

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/deploy"
)

func TestHistorySavesAndListsNewestFirst(t *testing.T) {
	s := testStore(newFakeSwarm(), newFakeClock(), "a")
	recs, err := s.List("web")
	require.NoError(t, err)
	require.Empty(t, recs, "never deployed")

	started := time.Date(2026, 12, 3, 14, 0, 0, 0, time.UTC)
	one := &deploy.Record{ID: "1", Service: "web", Kind: deploy.KindDeploy, Started: started, Outcome: deploy.OutcomeRunning, Phase: deploy.PhaseStart}
	two := &deploy.Record{ID: "2", Service: "web", Kind: deploy.KindRollback, Started: started.Add(time.Minute), Outcome: deploy.OutcomeRunning}
	require.NoError(t, s.Save(one))
	require.NoError(t, s.Save(two))
	one.Outcome, one.Phase = deploy.OutcomeSucceeded, deploy.PhaseRetire
	require.NoError(t, s.Save(one))

	recs, err = s.List("web")
	require.NoError(t, err)
	require.Equal(t, []deploy.Record{*two, *one}, recs, "replaced in its place by ID, the new first")
	other, err := s.List("api")
	require.NoError(t, err)
	require.Empty(t, other)
}

func TestHistoryKeepsTheNewestMaxRecords(t *testing.T) {
	s := testStore(newFakeSwarm(), newFakeClock(), "a")
	for i := range MaxRecords + 5 {
		require.NoError(t, s.Save(&deploy.Record{ID: fmt.Sprint(i), Service: "web"}))
	}
	recs, err := s.List("web")
	require.NoError(t, err)
	require.Len(t, recs, MaxRecords)
	require.Equal(t, fmt.Sprint(MaxRecords+4), recs[0].ID)
	require.Equal(t, "5", recs[MaxRecords-1].ID)
}

func TestHistoryLeavesOutTheOldestPastMaxHistoryBytes(t *testing.T) {
	api := newFakeSwarm()
	s := testStore(api, newFakeClock(), "a")
	note := strings.Repeat("n", MaxHistoryBytes/4)
	for i := range 5 {
		require.NoError(t, s.Save(&deploy.Record{ID: fmt.Sprint(i), Service: "web", Notes: []string{note}}))
	}
	recs, err := s.List("web")
	require.NoError(t, err)
	require.Len(t, recs, 3)
	require.Equal(t, "4", recs[0].ID)
	require.LessOrEqual(t, len(api.labels("handoff-record-web")[LabelHistory]), MaxHistoryBytes)

	err = s.Save(&deploy.Record{ID: "huge", Service: "web", Notes: []string{note + note + note + note}})
	require.ErrorContains(t, err, "record huge is more than")
}

func TestHistorySaveDecidedAgainAfterAnotherWriterWins(t *testing.T) {
	api, clock := newFakeSwarm(), newFakeClock()
	a, b := testStore(api, clock, "a"), testStore(api, clock, "b")
	require.NoError(t, a.Save(&deploy.Record{ID: "1", Service: "web"}))
	// Between b's read and b's write, a saves another record: b's write is refused
	// for its version, read again, and both records are kept.
	api.beforeWrite = func() { require.NoError(t, a.Save(&deploy.Record{ID: "2", Service: "web"})) }
	require.NoError(t, b.Save(&deploy.Record{ID: "3", Service: "web"}))
	require.Equal(t, 1, api.stale)
	recs, err := b.List("web")
	require.NoError(t, err)
	require.Equal(t, []string{"3", "2", "1"}, ids(recs))
}

func TestHistorySaveKeepsTheLock(t *testing.T) {
	api, clock := newFakeSwarm(), newFakeClock()
	a, b := testStore(api, clock, "a"), testStore(api, clock, "b")
	unlock := mustLock(t, a, "web")
	defer unlock()
	require.NoError(t, b.Save(&deploy.Record{ID: "1", Service: "web"}), "a save needs no lock (post_deploy saves after unlock)")
	l, held, err := readLease(api.labels("handoff-lock-web"))
	require.NoError(t, err)
	require.True(t, held)
	require.Equal(t, "a", l.Holder)
}

func TestHistoryRefusesALabelNotHandoffs(t *testing.T) {
	api := newFakeSwarm()
	s := testStore(api, newFakeClock(), "a")
	require.NoError(t, s.Save(&deploy.Record{ID: "1", Service: "web"}))
	api.services["handoff-record-web"].Spec.Labels[LabelHistory] = "{"
	_, err := s.List("web")
	require.ErrorContains(t, err, "read history of web: the label handoff.history is not a history handoff wrote")
	err = s.Save(&deploy.Record{ID: "2", Service: "web"})
	require.ErrorContains(t, err, "--label-rm handoff.history")
}

func ids(recs []deploy.Record) []string {
	var out []string
	for _, r := range recs {
		out = append(out, r.ID)
	}
	return out
}

func TestHistorySaveChecksTheLockRecordFirst(t *testing.T) {
	api, clock := newFakeSwarm(), newFakeClock()
	a := testStore(api, clock, "a")
	unlock := mustLock(t, a, "web")
	defer unlock()
	require.NoError(t, a.Save(&deploy.Record{ID: "1", Service: "web"}))
	// Someone frees the lock by hand (docker service update --label-rm handoff.lock).
	delete(api.services["handoff-lock-web"].Spec.Labels, LabelLock)
	err := a.Save(&deploy.Record{ID: "2", Service: "web"})
	require.ErrorIs(t, err, deploy.ErrLocked)
	require.ErrorContains(t, err, "the lock was released by someone else")
	recs, err := a.List("web")
	require.NoError(t, err)
	require.Equal(t, []string{"1"}, ids(recs), "not saved")
}
