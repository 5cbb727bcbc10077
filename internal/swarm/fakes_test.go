package swarm

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
)

// fakeSwarm keeps services as a manager does, by name, and refuses a write at a
// version that is not the service's own, as Swarm does.
type fakeSwarm struct {
	mu       sync.Mutex
	services map[string]*swarm.Service
	index    uint64
	// beforeWrite, when set, runs before each create or update is applied, as
	// another manager writing between a read and a write.
	beforeWrite func()
	stale       int // writes refused for their version
	// unavailable is how many calls more fail as a manager without a leader does.
	unavailable int
	// refuse, when set, is what every update fails with.
	refuse error
	// answerLost is how many updates more are applied but never answered: the call
	// returns only when its ctx ends, as a write whose answer was lost.
	answerLost int
	// updates counts the updates applied, by service name.
	updates map[string]int
}

// down fails the call as a manager of a swarm without a leader, while unavailable lasts.
func (f *fakeSwarm) down() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.unavailable == 0 {
		return nil
	}
	f.unavailable--
	return errors.New("Error response from daemon: rpc error: code = Unknown desc = The swarm does not have a leader. It's possible that too few managers are online. Make sure more than half of the managers are online.")
}

func newFakeSwarm() *fakeSwarm { return &fakeSwarm{services: map[string]*swarm.Service{}} }

func (f *fakeSwarm) ServiceInspect(_ context.Context, id string, _ client.ServiceInspectOptions) (client.ServiceInspectResult, error) {
	if err := f.down(); err != nil {
		return client.ServiceInspectResult{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, svc := range f.services {
		if svc.ID == id || svc.Spec.Name == id {
			return client.ServiceInspectResult{Service: copyService(*svc)}, nil
		}
	}
	return client.ServiceInspectResult{}, fmt.Errorf("service %s not found: %w", id, cerrdefs.ErrNotFound)
}

func (f *fakeSwarm) ServiceCreate(_ context.Context, opts client.ServiceCreateOptions) (client.ServiceCreateResult, error) {
	f.hook()
	f.mu.Lock()
	defer f.mu.Unlock()
	name := opts.Spec.Name
	if _, ok := f.services[name]; ok {
		return client.ServiceCreateResult{}, errors.New("Error response from daemon: rpc error: code = AlreadyExists desc = name conflicts with an existing object: service " + name + " already exists")
	}
	f.index++
	svc := swarm.Service{ID: fmt.Sprintf("id%d", f.index), Meta: swarm.Meta{Version: swarm.Version{Index: f.index}}, Spec: opts.Spec}
	svc = copyService(svc)
	f.services[name] = &svc
	return client.ServiceCreateResult{ID: svc.ID}, nil
}

func (f *fakeSwarm) ServiceUpdate(ctx context.Context, id string, opts client.ServiceUpdateOptions) (client.ServiceUpdateResult, error) {
	f.hook()
	if err := f.down(); err != nil {
		return client.ServiceUpdateResult{}, err
	}
	if f.refuse != nil {
		return client.ServiceUpdateResult{}, f.refuse
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for name, svc := range f.services {
		if svc.ID != id {
			continue
		}
		if opts.Version.Index != svc.Version.Index {
			f.stale++
			return client.ServiceUpdateResult{}, errors.New("Error response from daemon: rpc error: code = Unknown desc = update out of sequence")
		}
		f.index++
		next := copyService(swarm.Service{ID: id, Meta: swarm.Meta{Version: swarm.Version{Index: f.index}}, Spec: opts.Spec})
		f.services[name] = &next
		if f.updates == nil {
			f.updates = map[string]int{}
		}
		f.updates[name]++
		if f.answerLost > 0 {
			f.answerLost--
			f.mu.Unlock()
			<-ctx.Done()
			f.mu.Lock()
			return client.ServiceUpdateResult{}, ctx.Err()
		}
		return client.ServiceUpdateResult{}, nil
	}
	return client.ServiceUpdateResult{}, fmt.Errorf("service %s not found: %w", id, cerrdefs.ErrNotFound)
}

// hook runs beforeWrite once: the other writer writes once, then leaves the field alone.
func (f *fakeSwarm) hook() {
	f.mu.Lock()
	h := f.beforeWrite
	f.beforeWrite = nil
	f.mu.Unlock()
	if h != nil {
		h()
	}
}

func (f *fakeSwarm) labels(name string) map[string]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if svc, ok := f.services[name]; ok {
		return maps.Clone(svc.Spec.Labels)
	}
	return nil
}

func copyService(svc swarm.Service) swarm.Service {
	svc.Spec.Labels = maps.Clone(svc.Spec.Labels)
	return svc
}

// fakeClock is a clock that moves only when told.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 12, 3, 14, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// testStore is a Store on api named holder, on clock, with a lease of a minute.
func testStore(api API, clock *fakeClock, holder string) *Store {
	return &Store{API: api, Lease: time.Minute, Holder: holder, Now: clock.Now}
}

// mustLock takes s's lock of service, or fails t.
func mustLock(t *testing.T, s *Store, service string) func() {
	t.Helper()
	unlock, err := s.Lock(context.Background(), service)
	if err != nil {
		t.Fatalf("lock %s: %v", service, err)
	}
	return unlock
}
