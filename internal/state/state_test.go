package state

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
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
	require.Equal(t, []string{filepath.Join(s.Dir, "web.history.json"), filepath.Join(s.Dir, "web.history.lock")}, files, "no temporary file left behind")
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

// Saves from two writers at once each read, change and write the whole
// file: none may lose what the other saved.
func TestConcurrentSavesKeepEveryRecord(t *testing.T) {
	s := Store{Dir: t.TempDir()}
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Go(func() {
			for i := range 100 {
				require.NoError(t, s.Save(&deploy.Record{ID: fmt.Sprintf("w%d-%d", w, i), Service: "web"}))
			}
		})
	}
	wg.Wait()
	recs, err := s.List("web")
	require.NoError(t, err)
	require.Equal(t, 200, len(recs), "records kept")
}

// The same across processes: a deploy waiting with --wait saves while the
// one before it still runs its post_deploy hook and saves.
func TestConcurrentSavesFromTwoProcessesKeepEveryRecord(t *testing.T) {
	if dir := os.Getenv("HANDOFF_TEST_SAVE_DIR"); dir != "" {
		s := Store{Dir: dir}
		for i := range 100 {
			if err := s.Save(&deploy.Record{ID: fmt.Sprintf("%s-%d", os.Getenv("HANDOFF_TEST_SAVER"), i), Service: "web"}); err != nil {
				t.Fatal(err)
			}
		}
		return
	}
	dir := t.TempDir()
	var cmds []*exec.Cmd
	for w := range 2 {
		c := exec.Command(os.Args[0], "-test.run=^TestConcurrentSavesFromTwoProcessesKeepEveryRecord$")
		c.Env = append(os.Environ(), "HANDOFF_TEST_SAVE_DIR="+dir, fmt.Sprintf("HANDOFF_TEST_SAVER=p%d", w))
		c.Stdout, c.Stderr = os.Stderr, os.Stderr
		require.NoError(t, c.Start())
		cmds = append(cmds, c)
	}
	for _, c := range cmds {
		require.NoError(t, c.Wait())
	}
	recs, err := Store{Dir: dir}.List("web")
	require.NoError(t, err)
	require.Equal(t, 200, len(recs), "records kept")
}
