package swarm

import (
	"cmp"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/deploy"
)

func TestTakeDecidesByHolderAndLease(t *testing.T) {
	clock := newFakeClock()
	now := clock.Now()
	other := lease{Holder: "other", Token: "t-other", Since: now.Add(-time.Hour), Expires: now.Add(time.Second)}
	ours := lease{Holder: "me", Token: "t-me", Since: now.Add(-time.Hour), Expires: now.Add(time.Second)}
	labelsOf := func(l *lease) map[string]string {
		labels := map[string]string{"keep": "this"}
		if l != nil {
			require.NoError(t, writeLease(labels, *l))
		}
		return labels
	}
	expired := other
	expired.Expires = now.Add(-time.Hour)
	renewed := other
	renewed.Expires = now.Add(2 * time.Second)
	short := other
	short.For = time.Second
	oursExpired := ours
	oursExpired.Expires = now.Add(-time.Hour)

	for _, tc := range []struct {
		name string
		cur  *lease
		// seen is the lease as this Store saw it seenAgo (a minute, its lease, if 0) earlier.
		seen      *lease
		seenAgo   time.Duration
		held      bool
		runOut    bool
		wantSince time.Time
	}{
		{name: "free", wantSince: now},
		{name: "held by another, lease running", cur: &other, held: true},
		{name: "held by another, run out by our clock, first seen", cur: &expired, held: true, runOut: true},
		{name: "held by another, seen unchanged for a lease", cur: &other, seen: &other, wantSince: now},
		{name: "held by another, seen unchanged for less than a lease", cur: &other, seen: &other, seenAgo: time.Minute - time.Millisecond, held: true},
		{name: "held by another, renewed since seen", cur: &renewed, seen: &other, held: true},
		{name: "held by another, seen unchanged for its own shorter lease", cur: &short, seen: &short, seenAgo: time.Second, wantSince: now},
		{name: "ours: renewed, since kept", cur: &ours, wantSince: ours.Since},
		{name: "ours, run out and nobody took it", cur: &oursExpired, wantSince: ours.Since},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := newFakeClock()
			s := testStore(nil, clock, "me")
			if tc.seen != nil {
				ago := cmp.Or(tc.seenAgo, time.Minute)
				clock.Advance(-ago)
				require.Error(t, s.take("web", labelsOf(tc.seen), &lease{Token: "t-me"}), "first seen")
				clock.Advance(ago)
			}
			labels := labelsOf(tc.cur)
			mine := lease{Holder: "me", Token: "t-me", Since: ours.Since}
			err := s.take("web", labels, &mine)
			if tc.held {
				var held *heldError
				require.ErrorAs(t, err, &held)
				require.Equal(t, "other", held.by.Holder)
				require.Equal(t, tc.runOut, held.runOut)
				return
			}
			require.NoError(t, err)
			got, ok, err := readLease(labels)
			require.NoError(t, err)
			require.True(t, ok)
			require.Equal(t, "t-me", got.Token)
			require.Equal(t, tc.wantSince, got.Since)
			require.Equal(t, now.Add(time.Minute), got.Expires)
			require.Equal(t, time.Minute, got.For)
			require.Equal(t, "this", labels["keep"], "other labels are kept")
		})
	}
}

func TestTakeRefusesALabelNotHandoffs(t *testing.T) {
	s := testStore(nil, newFakeClock(), "me")
	err := s.take("web", map[string]string{LabelLock: "someone's"}, &lease{Token: "t"})
	require.ErrorContains(t, err, "--label-rm handoff.lock")
}

func TestRenewOnlyOurs(t *testing.T) {
	clock := newFakeClock()
	s := testStore(nil, clock, "me")
	labels := map[string]string{}
	require.NoError(t, writeLease(labels, lease{Holder: "me", Token: "t-me", Since: clock.Now(), Expires: clock.Now().Add(time.Minute)}))
	clock.Advance(20 * time.Second)
	require.NoError(t, s.renew(labels, "t-me"))
	got, _, _ := readLease(labels)
	require.Equal(t, clock.Now().Add(time.Minute), got.Expires)

	var lost *lostError
	require.ErrorAs(t, s.renew(labels, "t-old"), &lost)
	require.Equal(t, "me", lost.by.Holder)
	require.ErrorAs(t, s.renew(map[string]string{}, "t-me"), &lost)
	require.True(t, lost.free)
}

func TestReleaseOnlyOurs(t *testing.T) {
	labels := map[string]string{}
	require.NoError(t, writeLease(labels, lease{Holder: "other", Token: "t-other"}))
	require.ErrorIs(t, release(labels, "t-me"), errNoChange)
	require.Contains(t, labels, LabelLock)
	require.NoError(t, release(labels, "t-other"))
	require.NotContains(t, labels, LabelLock)
	require.ErrorIs(t, release(labels, "t-other"), errNoChange)
}

func TestLockHeldByAnotherNamesTheHolder(t *testing.T) {
	api, clock := newFakeSwarm(), newFakeClock()
	a, b := testStore(api, clock, "handoff on m1 pid 10"), testStore(api, clock, "handoff on m2 pid 20")
	unlockA := mustLock(t, a, "web")

	_, err := b.Lock(context.Background(), "web")
	require.ErrorIs(t, err, deploy.ErrLocked)
	require.EqualError(t, err, deploy.ErrLocked.Error()+": web (handoff on m1 pid 10 since 2026-12-03T14:00:00Z, lease until 2026-12-03T14:01:00Z); wait for it to finish, or pass --wait 5m")

	unlockA()
	require.NotContains(t, api.labels("handoff-lock-web"), LabelLock)
	unlockB := mustLock(t, b, "web")
	unlockB()
}

func TestLockRunOutIsTakenOverAndTheOldHolderStopsAtItsNextSave(t *testing.T) {
	api, clock := newFakeSwarm(), newFakeClock()
	a, b := testStore(api, clock, "a"), testStore(api, clock, "b")
	unlockA := mustLock(t, a, "web")
	defer unlockA()
	rec := &deploy.Record{ID: "1", Service: "web", Kind: deploy.KindDeploy, Outcome: deploy.OutcomeRunning}
	require.NoError(t, a.Save(rec))

	// a stops renewing (it hangs, or its manager is cut off): b sees its lease
	// unchanged for a whole lease, and takes it.
	unlockB := takeOver(t, b, clock, "web")

	err := a.Save(rec)
	require.ErrorIs(t, err, deploy.ErrLocked)
	require.ErrorContains(t, err, "its lease was not renewed for 1m0s by this handoff's clock")
	// It says so again, without asking the swarm, until a takes the lock anew.
	err = a.Save(rec)
	require.ErrorContains(t, err, "record was not saved")

	unlockA() // not ours any more: b's lock stays
	lease, held, _ := readLease(api.labels("handoff-lock-web"))
	require.True(t, held)
	require.Equal(t, "b", lease.Holder)
	unlockB()
}

func TestRenewalThatFindsAnotherHolderMarksTheLockLost(t *testing.T) {
	api, clock := newFakeSwarm(), newFakeClock()
	a, b := testStore(api, clock, "a"), testStore(api, clock, "b")
	unlockA := mustLock(t, a, "web")
	defer unlockA()
	token, _, _ := a.st().holding("web")

	clock.Advance(20 * time.Second)
	require.True(t, a.renewOnce(context.Background(), "web", token), "ours: go on renewing")
	unlockB := takeOver(t, b, clock, "web")
	defer unlockB()

	require.False(t, a.renewOnce(context.Background(), "web", token), "another's: stop")
	_, _, lost := a.st().holding("web")
	require.NotNil(t, lost)
	err := a.Save(&deploy.Record{ID: "1", Service: "web"})
	require.ErrorIs(t, err, deploy.ErrLocked)
	require.ErrorContains(t, err, "taken by b")
}

func TestLockDecidedAgainAfterAnotherWriterWins(t *testing.T) {
	api, clock := newFakeSwarm(), newFakeClock()
	a, b := testStore(api, clock, "a"), testStore(api, clock, "b")
	// The record exists; between b's read and b's write, a takes the lock.
	mustLock(t, a, "web")()
	var unlockA func()
	api.beforeWrite = func() {
		var err error
		unlockA, err = a.Lock(context.Background(), "web")
		require.NoError(t, err)
	}
	_, err := b.Lock(context.Background(), "web")
	require.ErrorIs(t, err, deploy.ErrLocked, "b read again, and found a holding it")
	require.ErrorContains(t, err, "(a since")
	require.Equal(t, 1, api.stale)
	unlockA()
}

func TestLockCreatesTheRecordOnceWhenTwoRace(t *testing.T) {
	api, clock := newFakeSwarm(), newFakeClock()
	a, b := testStore(api, clock, "a"), testStore(api, clock, "b")
	// Neither finds a record; a creates it between b's read and b's create.
	var unlockA func()
	api.beforeWrite = func() {
		var err error
		unlockA, err = a.Lock(context.Background(), "web")
		require.NoError(t, err)
	}
	_, err := b.Lock(context.Background(), "web")
	require.ErrorIs(t, err, deploy.ErrLocked)
	require.Len(t, api.services, 1)
	unlockA()
}

func TestLockWaitsForTheHolder(t *testing.T) {
	api, clock := newFakeSwarm(), newFakeClock()
	a, b := testStore(api, clock, "a"), testStore(api, clock, "b")
	b.Wait = time.Minute
	unlockA := mustLock(t, a, "web")
	api.beforeWrite = nil
	done := make(chan error)
	go func() {
		unlock, err := b.Lock(context.Background(), "web")
		if err == nil {
			unlock()
		}
		done <- err
	}()
	unlockA()
	require.NoError(t, <-done)
}

func TestHolderFencesItselfByItsOwnClock(t *testing.T) {
	api, clock := newFakeSwarm(), newFakeClock()
	a := testStore(api, clock, "a")
	unlockA := mustLock(t, a, "web")
	defer unlockA()
	rec := &deploy.Record{ID: "1", Service: "web"}
	require.NoError(t, a.Save(rec))

	// No renewal went through (a's manager is cut off) for most of the lease: before
	// anyone else may take the lock, a stops itself, without asking the swarm.
	clock.Advance(time.Minute - time.Minute/3)
	api.refuse = errors.New("must not be asked")
	err := a.Save(rec)
	require.ErrorIs(t, err, deploy.ErrLocked)
	require.ErrorContains(t, err, "not renewed for 40s by this handoff's clock")
}

func TestLockContextEndsWhenTheLockIsLost(t *testing.T) {
	api, clock := newFakeSwarm(), newFakeClock()
	a := testStore(api, clock, "a")
	ctx, unlock, err := a.LockContext(context.Background(), "web")
	require.NoError(t, err)
	defer unlock()
	require.NoError(t, ctx.Err())
	clock.Advance(time.Minute)
	require.ErrorIs(t, a.Save(&deploy.Record{ID: "1", Service: "web"}), deploy.ErrLocked)
	<-ctx.Done()
	require.ErrorIs(t, context.Cause(ctx), deploy.ErrLocked)
}

func TestAnotherHoldersLeaseIsJudgedByTheObserversClock(t *testing.T) {
	api := newFakeSwarm()
	clockA, clockB := newFakeClock(), newFakeClock()
	clockB.Advance(time.Hour) // b's clock is an hour ahead: a's written expiry looks long past
	a, b := testStore(api, clockA, "a"), testStore(api, clockB, "b")
	unlockA := mustLock(t, a, "web")
	defer unlockA()
	b.Wait = time.Minute
	done := make(chan error, 1)
	go func() {
		_, err := b.Lock(context.Background(), "web")
		done <- err
	}()
	// b watches the lease unchanged, but not yet for a lease by its own clock.
	select {
	case err := <-done:
		t.Fatalf("b took or gave up on a's running lease at once: %v", err)
	case <-time.After(3 * lockRetry):
	}
	clockB.Advance(time.Minute)
	require.NoError(t, <-done, "unchanged for a full lease as b saw it: taken over")
}

func TestLockIsBoundedWhenTheManagersDoNotAnswer(t *testing.T) {
	api, clock := newFakeSwarm(), newFakeClock()
	s := testStore(api, clock, "a")
	s.Timeout = 50 * time.Millisecond
	api.unavailable = 1 << 30 // no quorum, for good
	done := make(chan error, 1)
	go func() {
		_, err := s.Lock(context.Background(), "web")
		done <- err
	}()
	select {
	case err := <-done:
		require.ErrorContains(t, err, "lock web: the swarm's managers did not answer in 50ms")
		require.ErrorContains(t, err, "docker node ls")
	case <-time.After(3 * time.Second):
		t.Fatal("Lock did not end on a swarm without a leader")
	}
}

func TestLockWhoseAnswerWasLostReleasesWhatMayBeOurs(t *testing.T) {
	api, clock := newFakeSwarm(), newFakeClock()
	s := testStore(api, clock, "a")
	s.Timeout = 50 * time.Millisecond
	mustLock(t, s, "web")() // the lock record exists, free
	api.answerLost = 1      // our lease is written, its answer never comes
	_, err := s.Lock(context.Background(), "web")
	require.ErrorContains(t, err, "did not answer")
	require.NotContains(t, api.labels("handoff-lock-web"), LabelLock, "released by our token")
}

func TestRenewalWritesOnlyTheLockRecord(t *testing.T) {
	api, clock := newFakeSwarm(), newFakeClock()
	s := testStore(api, clock, "a")
	require.NoError(t, s.Save(&deploy.Record{ID: "1", Service: "web", Notes: []string{strings.Repeat("n", 100<<10)}}))
	unlock := mustLock(t, s, "web")
	defer unlock()
	before := api.updates["handoff-record-web"]
	token, _, _ := s.st().holding("web")
	require.True(t, s.renewOnce(context.Background(), "web", token))
	require.Equal(t, before, api.updates["handoff-record-web"], "the history's record is not written by a renewal")
	require.NotContains(t, api.labels("handoff-lock-web"), LabelHistory)
	require.NoError(t, s.Save(&deploy.Record{ID: "2", Service: "web"}), "a save checks the lock record, writes the history's")
}

// takeOver takes s's lock of service from its holder, once s has seen the holder's
// lease unchanged for a whole lease by clock, which it moves on.
func takeOver(t *testing.T, s *Store, clock *fakeClock, service string) func() {
	t.Helper()
	type result struct {
		unlock func()
		err    error
	}
	done := make(chan result, 1)
	s.Wait = time.Minute // so that a running lease is watched too
	go func() {
		unlock, err := s.Lock(context.Background(), service)
		done <- result{unlock, err}
	}()
	require.Eventually(t, func() bool {
		st := s.st()
		st.mu.Lock()
		defer st.mu.Unlock()
		_, seen := st.seen[service]
		return seen
	}, 5*time.Second, time.Millisecond)
	clock.Advance(s.lease())
	r := <-done
	require.NoError(t, r.err)
	return r.unlock
}
