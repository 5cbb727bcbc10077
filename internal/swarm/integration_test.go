package swarm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moby/moby/client"
	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/deploy"
	"github.com/handoff-dev/handoff/internal/testhost"
)

// TestStoreOnARealSwarm runs the lock and the history on a one-node swarm of a test
// server's own engine, from two clients as from two managers.
func TestStoreOnARealSwarm(t *testing.T) {
	start := time.Now()
	server := oneNodeSwarm(t)
	ctx := context.Background()
	t.Logf("one-node swarm ready in %s", time.Since(start).Round(time.Millisecond))
	second, err := client.New(client.WithHost(server.DockerHost))
	require.NoError(t, err)
	t.Cleanup(func() { second.Close() })
	apiA, apiB := &countingAPI{API: server.Docker()}, &countingAPI{API: second}
	newStore := func(api API, holder string, lease time.Duration) *Store {
		s := NewStore(api)
		s.Holder, s.Lease = holder, lease
		return s
	}

	t.Run("one holds, the other is told who, unlock frees it", func(t *testing.T) {
		a, b := newStore(apiA, "deploy from m1", time.Minute), newStore(apiB, "deploy from m2", time.Minute)
		t0 := time.Now()
		unlockA, err := a.Lock(ctx, "web")
		require.NoError(t, err)
		took := time.Since(t0)
		t0 = time.Now()
		_, err = b.Lock(ctx, "web")
		refused := time.Since(t0)
		require.ErrorIs(t, err, deploy.ErrLocked)
		require.ErrorContains(t, err, "web (deploy from m1 since ")
		t0 = time.Now()
		unlockA()
		released := time.Since(t0)
		unlockB, err := b.Lock(ctx, "web")
		require.NoError(t, err)
		a.Wait = time.Second
		t0 = time.Now()
		_, err = a.Lock(ctx, "web")
		require.ErrorIs(t, err, deploy.ErrLocked, "after waiting %s", a.Wait)
		require.ErrorContains(t, err, "web (deploy from m2 since ")
		require.GreaterOrEqual(t, time.Since(t0), a.Wait)
		unlockB()
		t.Logf("lock taken (record created) in %s, refused in %s, released in %s",
			took.Round(time.Millisecond), refused.Round(time.Millisecond), released.Round(time.Millisecond))
	})

	t.Run("a lease renewed holds past itself; one not renewed is taken over", func(t *testing.T) {
		const leaseFor = 1500 * time.Millisecond
		a, b := newStore(apiA, "deploy from m1", leaseFor), newStore(apiB, "deploy from m2", leaseFor)
		unlockA, err := a.Lock(ctx, "api")
		require.NoError(t, err)
		time.Sleep(2 * leaseFor)
		_, err = b.Lock(ctx, "api")
		require.ErrorIs(t, err, deploy.ErrLocked, "renewed every %s", leaseFor/3)
		unlockA()

		// A holder killed: its lease is in the label, and nothing renews it.
		dead := newStore(apiA, "deploy from m1, killed", leaseFor)
		lockName, _ := LockName("api")
		require.NoError(t, dead.modify(ctx, lockName, "api", func(labels map[string]string) error {
			return dead.take("api", labels, &lease{Holder: dead.Holder, Token: "killed"})
		}))
		_, err = b.Lock(ctx, "api")
		require.ErrorContains(t, err, "killed since")
		b.Wait = 10 * leaseFor
		t0 := time.Now()
		unlockB, err := b.Lock(ctx, "api")
		require.NoError(t, err)
		require.GreaterOrEqual(t, time.Since(t0), leaseFor, "seen unchanged for a whole lease first")
		t.Logf("a dead holder's lease of %s taken over after %s", leaseFor, time.Since(t0).Round(time.Millisecond))
		unlockB()
	})

	t.Run("a holder cut off stops before another takes over, whatever their clocks", func(t *testing.T) {
		const leaseFor = 1500 * time.Millisecond
		cut := &cutAPI{API: apiA}
		a := newStore(cut, "deploy from m1", leaseFor)
		// b's clock is an hour ahead: by it, a's written expiry ran out long ago.
		b := newStore(apiB, "deploy from m2", leaseFor)
		b.Now = func() time.Time { return time.Now().Add(time.Hour) }
		b.Wait = 10 * leaseFor
		actx, unlockA, err := a.LockContext(ctx, "shop")
		require.NoError(t, err)
		defer unlockA()
		rec := &deploy.Record{ID: "1", Service: "shop", Kind: deploy.KindDeploy, Outcome: deploy.OutcomeRunning}
		require.NoError(t, a.Save(rec))
		_, err = newStore(apiB, "deploy from m2", leaseFor).Lock(ctx, "shop")
		require.ErrorIs(t, err, deploy.ErrLocked, "renewed, it holds, even to a clock an hour ahead")

		t0 := time.Now()
		cut.cut.Store(true)        // a's manager answers no more: its renewals fail
		defer cut.cut.Store(false) // before unlockA, also when the test fails
		unlockB, err := b.Lock(ctx, "shop")
		require.NoError(t, err)
		defer unlockB()
		tookOver := time.Since(t0)
		select {
		case <-actx.Done():
		default:
			t.Fatal("b took the lock while a's context still ran")
		}
		require.ErrorIs(t, context.Cause(actx), deploy.ErrLocked)
		cut.cut.Store(false)
		err = a.Save(rec)
		require.ErrorIs(t, err, deploy.ErrLocked)
		require.ErrorContains(t, err, "not renewed for")
		t.Logf("lease %s: a cut off stopped itself, b took over %s after the cut", leaseFor, tookOver.Round(time.Millisecond))
	})

	t.Run("history round trip", func(t *testing.T) {
		s := newStore(apiA, "m1", time.Minute)
		at := time.Date(2026, 12, 3, 14, 0, 0, 0, time.UTC)
		rec := deploy.Record{ID: "20261203T140000-1", Service: "cart", Kind: deploy.KindDeploy, Started: at, Finished: at.Add(9 * time.Second),
			Outcome: deploy.OutcomeSucceeded, Phase: deploy.PhaseRetire, Image: "reg/cart:1.4", Digest: "reg/cart@sha256:ab", FromRelease: 3, ToRelease: 4,
			Switched: true, Phases: []deploy.PhaseRecord{{Name: deploy.PhaseStart}, {Name: deploy.PhaseHealth}}, Notes: []string{"a note"}, PID: 42}
		require.NoError(t, s.Save(&rec))
		recs, err := newStore(apiB, "m2", time.Minute).List("cart")
		require.NoError(t, err)
		require.Equal(t, []deploy.Record{rec}, recs)
	})

	t.Run("concurrent saves from two managers lose no record", func(t *testing.T) {
		a, b := newStore(apiA, "m1", time.Minute), newStore(apiB, "m2", time.Minute)
		const each = 8
		var wg sync.WaitGroup
		errs := make(chan error, 2*each)
		t0 := time.Now()
		for i := range each {
			for name, s := range map[string]*Store{"a": a, "b": b} {
				wg.Go(func() { errs <- s.Save(&deploy.Record{ID: fmt.Sprintf("%s%d", name, i), Service: "cart2"}) })
			}
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		recs, err := a.List("cart2")
		require.NoError(t, err)
		require.Len(t, recs, 2*each)
		t.Logf("%d saves at once in %s, %d writes refused for a stale version and decided again",
			2*each, time.Since(t0).Round(time.Millisecond), apiA.stale.Load()+apiB.stale.Load())
	})

	t.Run("a round trip each", func(t *testing.T) {
		s := newStore(apiA, "m1", time.Minute)
		unlock, err := s.Lock(ctx, "timing")
		require.NoError(t, err)
		token, _, _ := s.st().holding("timing")
		const n = 10
		t0 := time.Now()
		for range n {
			require.True(t, s.renewOnce(ctx, "timing", token))
		}
		renew := time.Since(t0) / n
		t0 = time.Now()
		for i := range n {
			require.NoError(t, s.Save(&deploy.Record{ID: fmt.Sprint(i), Service: "timing"}))
		}
		save := time.Since(t0) / n
		unlock()
		lockName, _ := LockName("timing")
		lock, err := server.Docker().ServiceInspect(ctx, lockName, client.ServiceInspectOptions{})
		require.NoError(t, err)
		require.NotContains(t, lock.Service.Spec.Labels, LabelHistory, "a renewal writes the lock's record alone")
		spec, err := json.Marshal(lock.Service.Spec)
		require.NoError(t, err)
		recordName, _ := RecordName("timing")
		record, err := server.Docker().ServiceInspect(ctx, recordName, client.ServiceInspectOptions{})
		require.NoError(t, err)
		history, err := json.Marshal(record.Service.Spec)
		require.NoError(t, err)
		t.Logf("renewal %s, save %s (mean of %d); a renewal writes a spec of %d bytes, the history's record (%d records) is %d",
			renew.Round(time.Millisecond), save.Round(time.Millisecond), n, len(spec), n, len(history))
	})

	tasks, err := server.Docker().TaskList(ctx, client.TaskListOptions{})
	require.NoError(t, err)
	require.Empty(t, tasks.Items, "no record service ever ran a task")
}

// cutAPI is a manager that answers no more while cut.
type cutAPI struct {
	API
	cut atomic.Bool
}

func (c *cutAPI) ServiceInspect(ctx context.Context, id string, opts client.ServiceInspectOptions) (client.ServiceInspectResult, error) {
	if c.cut.Load() {
		return client.ServiceInspectResult{}, errors.New("Error response from daemon: rpc error: code = Unknown desc = The swarm does not have a leader")
	}
	return c.API.ServiceInspect(ctx, id, opts)
}

func (c *cutAPI) ServiceUpdate(ctx context.Context, id string, opts client.ServiceUpdateOptions) (client.ServiceUpdateResult, error) {
	if c.cut.Load() {
		return client.ServiceUpdateResult{}, errors.New("Error response from daemon: rpc error: code = Unknown desc = The swarm does not have a leader")
	}
	return c.API.ServiceUpdate(ctx, id, opts)
}

// countingAPI counts the writes Swarm refused for a stale version.
type countingAPI struct {
	API
	stale atomic.Int64
}

func (c *countingAPI) ServiceUpdate(ctx context.Context, id string, opts client.ServiceUpdateOptions) (client.ServiceUpdateResult, error) {
	res, err := c.API.ServiceUpdate(ctx, id, opts)
	if err != nil && isStale(err) {
		c.stale.Add(1)
	}
	return res, err
}

// TestStoreAcrossManagersLosingTheLeader runs the lock and the history from two
// followers of a swarm of three managers, and on through the leader's loss.
func TestStoreAcrossManagersLosingTheLeader(t *testing.T) {
	testhost.RequireSwarmRun(t)
	sw := testhost.StartSwarm(t, 3, testhost.SwarmOptions{})
	t.Logf("a swarm of 3 managers ready in %s", sw.ReadyIn.Round(time.Millisecond))
	ctx := context.Background()
	// Node 1 made the swarm and leads it: every write from nodes 2 and 3 is passed on to it.
	a, b := NewStore(sw.Nodes[1].Docker()), NewStore(sw.Nodes[2].Docker())
	a.Holder, b.Holder = "deploy from node 2", "deploy from node 3"
	// A follower passes writes on to the lost leader and hangs on them for 20 s: the
	// default lease's fence (40 s) must outlast that. With a lease of 30 s (fence at
	// 20 s) this test failed: the save found the lock given up, not renewed for 20.0 s.

	t0 := time.Now()
	unlockA := mustLock(t, a, "web")
	took := time.Since(t0)
	t0 = time.Now()
	_, err := b.Lock(ctx, "web")
	refused := time.Since(t0)
	require.ErrorIs(t, err, deploy.ErrLocked)
	require.ErrorContains(t, err, "web (deploy from node 2 since ")
	t0 = time.Now()
	require.NoError(t, a.Save(&deploy.Record{ID: "1", Service: "web"}))
	t.Logf("through followers: lock taken (record created) in %s, refused in %s, a save in %s",
		took.Round(time.Millisecond), refused.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))

	sw.Nodes[0].Freeze(t)
	t0 = time.Now()
	require.NoError(t, a.Save(&deploy.Record{ID: "2", Service: "web"}), "saved through the new leader")
	t.Logf("the leader frozen: a save went through in %s", time.Since(t0).Round(time.Millisecond))
	require.Eventually(t, func() bool { _, renewed, _ := a.st().holding("web"); return renewed.After(t0) }, a.Lease, 100*time.Millisecond)
	_, renewed, _ := a.st().holding("web")
	t.Logf("the first renewal that went through after the freeze was decided %s after it", renewed.Sub(t0).Round(time.Millisecond))
	_, err = b.Lock(ctx, "web")
	require.ErrorIs(t, err, deploy.ErrLocked, "still a's: its lease held through the election")
	require.True(t, a.renewOnce(ctx, "web", mustToken(t, a, "web")))
	recs, err := b.List("web")
	require.NoError(t, err)
	require.Equal(t, []string{"2", "1"}, ids(recs))
	unlockA()
	mustLock(t, b, "web")()
}

func mustToken(t *testing.T, s *Store, service string) string {
	t.Helper()
	token, _, lost := s.st().holding(service)
	require.NotEmpty(t, token)
	require.Nil(t, lost)
	return token
}
