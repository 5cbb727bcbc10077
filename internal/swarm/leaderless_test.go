package swarm

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/client"
	"github.com/stretchr/testify/require"
)

// lossySwarm is fakeSwarm as a whole manager, whose answers to creates and removes
// may be lost after they were made. The calls the tests here never make are nil.
type lossySwarm struct {
	ManagerAPI
	f *fakeSwarm

	mu       sync.Mutex
	inspects int
	creates  int
	// createLost and removeLost are how many creates and removes more are made but
	// answered as a follower does whose leader was lost.
	createLost, removeLost int
	// dropCreate, when set, runs instead of the next create, which is answered as
	// createLost's are but not made.
	dropCreate func()
}

// errAnswerLost is a follower's answer to a request it passed on to a leader lost.
var errAnswerLost = errors.New("Error response from daemon: rpc error: code = DeadlineExceeded desc = context deadline exceeded")

func (m *lossySwarm) ServiceInspect(ctx context.Context, id string, opts client.ServiceInspectOptions) (client.ServiceInspectResult, error) {
	m.mu.Lock()
	m.inspects++
	m.mu.Unlock()
	return m.f.ServiceInspect(ctx, id, opts)
}

func (m *lossySwarm) ServiceUpdate(ctx context.Context, id string, opts client.ServiceUpdateOptions) (client.ServiceUpdateResult, error) {
	return m.f.ServiceUpdate(ctx, id, opts)
}

func (m *lossySwarm) ServiceCreate(ctx context.Context, opts client.ServiceCreateOptions) (client.ServiceCreateResult, error) {
	m.mu.Lock()
	drop := m.dropCreate
	m.dropCreate = nil
	m.mu.Unlock()
	if drop != nil {
		drop()
		return client.ServiceCreateResult{}, errAnswerLost
	}
	res, err := m.f.ServiceCreate(ctx, opts)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.creates++
	if err == nil && m.createLost > 0 {
		m.createLost--
		return client.ServiceCreateResult{}, errAnswerLost
	}
	return res, err
}

func (m *lossySwarm) ServiceRemove(_ context.Context, id string, _ client.ServiceRemoveOptions) (client.ServiceRemoveResult, error) {
	m.f.mu.Lock()
	defer m.f.mu.Unlock()
	for name, svc := range m.f.services {
		if svc.ID == id || name == id {
			delete(m.f.services, name)
			m.mu.Lock()
			defer m.mu.Unlock()
			if m.removeLost > 0 {
				m.removeLost--
				return client.ServiceRemoveResult{}, errAnswerLost
			}
			return client.ServiceRemoveResult{}, nil
		}
	}
	return client.ServiceRemoveResult{}, cerrdefs.ErrNotFound
}

// testPatient is a Patient of m that waits a millisecond between tries.
func testPatient(m *lossySwarm) *Patient {
	return &Patient{API: m, Retry: time.Millisecond, Try: 50 * time.Millisecond}
}

func TestPatientAsksAReadAgainWhileTheSwarmHasNoLeader(t *testing.T) {
	m := &lossySwarm{f: newFakeSwarm()}
	spec := mustSpec(t, testRelease(1))
	_, err := m.f.ServiceCreate(context.Background(), client.ServiceCreateOptions{Spec: spec})
	require.NoError(t, err)
	m.f.unavailable = 2

	got, err := testPatient(m).ServiceInspect(context.Background(), spec.Name, client.ServiceInspectOptions{})
	require.NoError(t, err)
	require.Equal(t, spec.Name, got.Service.Spec.Name)
	require.Equal(t, 3, m.inspects, "asked twice without a leader, answered the third time")
}

// An update whose answer was lost went through: sent again at the version it was
// decided at, it is refused as stale, and the colour read again is found as asked.
func TestPatientUpdateWhoseAnswerWasLostIsNotWrittenTwice(t *testing.T) {
	m := &lossySwarm{f: newFakeSwarm()}
	ctx := context.Background()
	colours := &Colours{API: testPatient(m)}
	require.NoError(t, colours.Start(ctx, mustSpec(t, testRelease(1)), ""))
	m.f.answerLost = 1

	spec := mustSpec(t, testRelease(2))
	require.NoError(t, colours.Start(ctx, spec, ""))
	require.Equal(t, 1, m.f.updates[spec.Name], "written once")
	require.Equal(t, 1, m.f.stale, "the try sent again was refused as stale")
	require.Equal(t, "2", m.f.labels(spec.Name)[LabelRelease])
}

// A stale refusal after a lost answer says the write may have gone through, and is
// still a stale refusal to its caller.
func TestPatientStaleAfterALostAnswerSaysSo(t *testing.T) {
	m := &lossySwarm{f: newFakeSwarm()}
	ctx := context.Background()
	spec := mustSpec(t, testRelease(1))
	made, err := m.f.ServiceCreate(ctx, client.ServiceCreateOptions{Spec: spec})
	require.NoError(t, err)
	got, err := m.f.ServiceInspect(ctx, made.ID, client.ServiceInspectOptions{})
	require.NoError(t, err)
	m.f.answerLost = 1

	_, err = testPatient(m).ServiceUpdate(ctx, made.ID, client.ServiceUpdateOptions{Version: got.Service.Version, Spec: spec})
	require.Error(t, err)
	require.True(t, isStale(err), "%v", err)
	require.Contains(t, err.Error(), "may have been made")
	require.Equal(t, 1, m.f.updates[spec.Name])
}

func TestPatientCreateWhoseAnswerWasLostIsFoundByName(t *testing.T) {
	m := &lossySwarm{f: newFakeSwarm(), createLost: 1}
	ctx := context.Background()
	spec := mustSpec(t, testRelease(1))

	require.NoError(t, (&Colours{API: testPatient(m)}).Start(ctx, spec, ""))
	require.Equal(t, 1, m.creates, "created once, then found by name")
	require.Equal(t, "1", m.f.labels(spec.Name)[LabelRelease])

	// Lost without being made, and one of that name made meanwhile by someone else
	// (other labels): that one is not taken for it.
	other := mustSpec(t, testRelease(2))
	other.Name = "web-other"
	m.dropCreate = func() {
		theirs := mustSpec(t, testRelease(3))
		theirs.Name = other.Name
		_, err := m.f.ServiceCreate(ctx, client.ServiceCreateOptions{Spec: theirs})
		require.NoError(t, err)
	}
	_, err := testPatient(m).ServiceCreate(ctx, client.ServiceCreateOptions{Spec: other})
	require.True(t, cerrdefs.IsAlreadyExists(err), "%v", err)
	require.Equal(t, "3", m.f.labels(other.Name)[LabelRelease], "theirs is left as it is")
}

// A remove whose answer was lost, sent again, finds nothing: it was made.
func TestPatientRemoveWhoseAnswerWasLostIsDone(t *testing.T) {
	m := &lossySwarm{f: newFakeSwarm(), removeLost: 1}
	ctx := context.Background()
	spec := mustSpec(t, testRelease(1))
	_, err := m.f.ServiceCreate(ctx, client.ServiceCreateOptions{Spec: spec})
	require.NoError(t, err)

	_, err = testPatient(m).ServiceRemove(ctx, spec.Name, client.ServiceRemoveOptions{})
	require.NoError(t, err)
	_, err = testPatient(m).ServiceRemove(ctx, spec.Name, client.ServiceRemoveOptions{})
	require.True(t, cerrdefs.IsNotFound(err), "one not there without a lost answer is still not found: %v", err)
}

// A swarm without a leader for longer than the bound fails the call with one line
// that says what to do, and that no caller takes for a manager to ask again.
func TestPatientGivesUpAtItsBound(t *testing.T) {
	m := &lossySwarm{f: newFakeSwarm()}
	m.f.unavailable = 1 << 30
	p := testPatient(m)
	p.Timeout = 100 * time.Millisecond
	start := time.Now()

	err := (&Colours{API: p}).Start(context.Background(), mustSpec(t, testRelease(1)), "")
	took := time.Since(start)
	require.ErrorIs(t, err, errUnanswered)
	require.False(t, isTransient(err), "not to be asked again: %v", err)
	require.NotContains(t, err.Error(), "\n")
	require.Contains(t, err.Error(), "without a leader")
	require.Contains(t, err.Error(), "docker node ls")
	require.Contains(t, err.Error(), "; last: ", "the last cause is named")
	require.Less(t, took, time.Second, "bounded by Timeout")
	t.Logf("after %s: %v", took.Round(time.Millisecond), err)
}
