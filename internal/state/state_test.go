package state

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/deploy"
)

func TestHistorySavesNewestFirstAndReplacesByID(t *testing.T) {
	s := Store{Dir: t.TempDir()}
	recs, err := s.List("web")
	require.NoError(t, err)
	require.Empty(t, recs)

	a := &deploy.Record{ID: "a", Service: "web", Outcome: deploy.OutcomeRunning}
	require.NoError(t, s.Save(a))
	require.NoError(t, s.Save(&deploy.Record{ID: "b", Service: "web"}))
	a.Outcome = deploy.OutcomeSucceeded
	require.NoError(t, s.Save(a))

	recs, err = s.List("web")
	require.NoError(t, err)
	require.Len(t, recs, 2)
	require.Equal(t, "b", recs[0].ID)
	require.Equal(t, deploy.OutcomeSucceeded, recs[1].Outcome)

	files, _ := filepath.Glob(filepath.Join(s.Dir, "*"))
	require.Equal(t, []string{filepath.Join(s.Dir, "web.history.json")}, files, "no temporary file left behind")
}

func TestCorruptHistorySaysWhatToDo(t *testing.T) {
	s := Store{Dir: t.TempDir()}
	require.NoError(t, os.WriteFile(filepath.Join(s.Dir, "web.history.json"), []byte("{"), 0o644))
	_, err := s.List("web")
	require.ErrorContains(t, err, "move the file aside")
}

func TestLockIsExclusiveAndNamesItsHolder(t *testing.T) {
	l := Locker{Dir: t.TempDir()}
	unlock, err := l.Lock(context.Background(), "web")
	require.NoError(t, err)

	_, err = l.Lock(context.Background(), "web")
	require.ErrorIs(t, err, deploy.ErrLocked)
	require.ErrorContains(t, err, "pid ")

	other, err := l.Lock(context.Background(), "api")
	require.NoError(t, err, "services lock apart")
	other()

	waiting := Locker{Dir: l.Dir, Wait: 5 * time.Second}
	time.AfterFunc(100*time.Millisecond, unlock)
	unlock2, err := waiting.Lock(context.Background(), "web")
	require.NoError(t, err, "--wait waits for the holder")
	unlock2()
}

func TestNamesThatLeaveTheStateDirAreRefused(t *testing.T) {
	s := Store{Dir: t.TempDir()}
	require.ErrorIs(t, s.Save(&deploy.Record{ID: "a", Service: "../x"}), deploy.ErrConfig)
	_, err := s.List("a/b")
	require.ErrorIs(t, err, deploy.ErrConfig)
	_, err = Locker{Dir: s.Dir}.Lock(context.Background(), "../x")
	require.ErrorIs(t, err, deploy.ErrConfig)
}
