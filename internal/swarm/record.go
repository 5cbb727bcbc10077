// Package swarm is handoff's second runtime, Docker Swarm, beside internal/docker. A
// deploy on a swarm may be run from any of its managers, so the lock that keeps two
// deploys of a service apart and the history of its deploys cannot live in files on one
// host, as internal/state keeps them: they live in the swarm itself.
//
// Each app service has two records, services of their own replicated with 0 replicas
// (no task ever runs; their image is never pulled), whose service labels (not their
// task template's, so a write restarts nothing) hold what is shared:
// handoff-lock-<service> the lock's holder and lease (handoff.lock), and
// handoff-record-<service> the newest deploy records (handoff.history). They are apart
// because a ServiceUpdate sends the whole spec and every manager's raft log keeps it:
// a renewal, every 10 s while a deploy runs, writes a few hundred bytes, not the
// history's up to 256 KiB. Swarm versions each service: every write is a
// ServiceUpdate at the Version just read, and a write at a stale version fails
// ("update out of sequence"), so each is read again and decided again, never written
// over what another manager wrote. Every read and write is bounded (Store.Timeout).
//
// The lock is a lease, and no manager's clock is taken to agree with another's: the
// holder judges its own lease by its own monotonic clock from its last renewal that
// went through, and stops (Save fails, LockContext's context ends) once two thirds of
// it have passed; another manager takes it over only after seeing it unchanged for a
// whole lease by its own clock. See lock.go.
//
// Store implements deploy.Locker and deploy.History on the Swarm API of one manager.
package swarm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"regexp"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/handoff-dev/handoff/internal/deploy"
)

// API is what the record needs of a swarm manager; *client.Client has it.
type API interface {
	ServiceInspect(ctx context.Context, id string, opts client.ServiceInspectOptions) (client.ServiceInspectResult, error)
	ServiceCreate(ctx context.Context, opts client.ServiceCreateOptions) (client.ServiceCreateResult, error)
	ServiceUpdate(ctx context.Context, id string, opts client.ServiceUpdateOptions) (client.ServiceUpdateResult, error)
}

// Labels of a record service.
const (
	LabelRecord  = "handoff.record"  // the app service it is the record of
	LabelLock    = "handoff.lock"    // the lock's holder and lease, JSON; absent when free
	LabelHistory = "handoff.history" // the newest records, newest first, JSON
)

// RecordImage is the record service's image. No task of it ever runs, so Swarm never
// pulls it; it names what the service is to someone reading `docker service ls`.
const RecordImage = "handoff-record:no-task-runs"

// Store keeps services' locks and histories in their record services on a swarm. Make
// it with NewStore; one Store may hold the locks of several services.
type Store struct {
	API API
	// Lease is how long a lock holds without a renewal; the holder renews it every
	// sixth of it, and stops once two thirds of it have passed unrenewed. A holder that
	// dies leaves the lock to the next deploy after a whole lease seen unrenewed.
	Lease time.Duration
	// Wait is how long Lock waits for another deploy; 0 fails at once.
	Wait time.Duration
	// Holder says who takes the lock ("deploy on m1 pid 123"); the default names this
	// host and process.
	Holder string
	// Now is the clock of lease decisions. Leases are judged by time elapsed between
	// its readings, so it must be monotonic: time.Now's readings are.
	Now func() time.Time
	// Timeout bounds each read-and-write of a record, its tries again included;
	// DefaultTimeout when 0.
	Timeout time.Duration

	procs procs // nil: the kernel's
	once  sync.Once
	state *storeState
}

// st is the Store's own state, made at first use so that a Store{} literal works too.
func (s *Store) st() *storeState {
	s.once.Do(func() {
		if s.state == nil {
			s.state = newStoreState()
		}
	})
	return s.state
}

var (
	_ deploy.Locker  = (*Store)(nil)
	_ deploy.History = (*Store)(nil)
)

// DefaultLease is a lock's lease unless Store.Lease says otherwise: a dead holder
// blocks the next deploy until it has seen the lease unrenewed this long. It outlasts
// the loss of a leader: a follower hangs on writes for 20 s then (the first renewal
// through was decided 20.0 s after the leader froze), past the fence of a 30 s lease
// (20 s) but not of a minute's (40 s).
const DefaultLease = time.Minute

// NewStore is a Store on api's manager with the default lease and clock.
func NewStore(api API) *Store {
	return &Store{API: api, Lease: DefaultLease, Holder: defaultHolder(), Now: time.Now}
}

// maxWrites bounds how often one decision is read and written again after losing to
// another writer: each loss means another write committed, so this many in a row
// means something keeps writing.
const maxWrites = 50

// errNoChange is what a change returns when the record is already as it should be.
var errNoChange = errors.New("no change")

// change decides a record's new labels from its current ones (a copy, to change in
// place). It returns errNoChange to write nothing, or an error to write nothing and
// fail. It may be called again with newer labels after another writer won.
type change func(labels map[string]string) error

// modify reads service's record, lets ch decide, and writes its labels at the version
// read, creating the record if there is none. A write that loses to another writer is
// read and decided again, and so is one not known to have been written (the manager
// could not answer): each change decided again on what is there is the same change.
func (s *Store) modify(ctx context.Context, name, service string, ch change) error {
	for lost := 0; ; {
		svc, found, err := s.read(ctx, name, service)
		if err != nil {
			return err
		}
		labels := map[string]string{}
		if found {
			maps.Copy(labels, svc.Spec.Labels)
		}
		if err := ch(labels); errors.Is(err, errNoChange) {
			return nil
		} else if err != nil {
			return err
		}
		err = s.write(ctx, name, service, svc, found, labels)
		switch {
		case err == nil:
			return nil
		case ctx.Err() != nil:
			return fmt.Errorf("write record %s: %w (%w)", name, errUnanswered, ctx.Err())
		case isTransient(err):
			wait(ctx, transientRetry)
			continue
		case !s.lostTo(ctx, name, service, svc, found, err):
			return fmt.Errorf("write record %s: %w", name, err)
		}
		if lost++; lost == maxWrites {
			return fmt.Errorf("write record %s: %d writes in a row lost to other writers; try again", name, maxWrites)
		}
		// Writers who keep colliding drift apart.
		wait(ctx, time.Duration(1+rand.IntN(10*min(lost, 10)))*time.Millisecond)
	}
}

// write creates service's record with labels, or updates svc's to them at its version.
func (s *Store) write(ctx context.Context, name, service string, svc swarm.Service, found bool, labels map[string]string) error {
	if !found {
		spec := recordSpec(name, service)
		spec.Labels = labels
		spec.Labels[LabelRecord] = service
		_, err := s.API.ServiceCreate(ctx, client.ServiceCreateOptions{Spec: spec})
		return err
	}
	spec := svc.Spec
	spec.Labels = labels
	_, err := s.API.ServiceUpdate(ctx, svc.ID, client.ServiceUpdateOptions{Version: svc.Version, Spec: spec})
	return err
}

// lostTo says a write that failed with err lost to another writer: its version was
// stale, or the record it did not find was created meanwhile, or the record's version
// moved (someone wrote, maybe this write whose answer was lost).
func (s *Store) lostTo(ctx context.Context, name, service string, svc swarm.Service, found bool, err error) bool {
	if isStale(err) {
		return true
	}
	now, there, rerr := s.read(ctx, name, service)
	if rerr != nil || !there {
		return false
	}
	return !found || now.Version.Index != svc.Version.Index
}

// errUnanswered is a read or write the managers did not answer before its deadline.
// A write may still have been made.
var errUnanswered = errors.New("the swarm's managers did not answer")

// read is the record service name of service; found is false when there is none. A
// manager that cannot answer now (its swarm electing a leader) is asked again until
// ctx ends.
func (s *Store) read(ctx context.Context, name, service string) (swarm.Service, bool, error) {
	res, err := s.API.ServiceInspect(ctx, name, client.ServiceInspectOptions{})
	for err != nil && isTransient(err) && ctx.Err() == nil {
		wait(ctx, transientRetry)
		res, err = s.API.ServiceInspect(ctx, name, client.ServiceInspectOptions{})
	}
	if err != nil && ctx.Err() != nil {
		return swarm.Service{}, false, fmt.Errorf("read record %s: %w (%v)", name, errUnanswered, err)
	}
	if cerrdefs.IsNotFound(err) {
		return swarm.Service{}, false, nil
	}
	if err != nil {
		return swarm.Service{}, false, fmt.Errorf("read record %s: %w", name, err)
	}
	if got := res.Service.Spec.Labels[LabelRecord]; got != service {
		return swarm.Service{}, false, fmt.Errorf("read record %s: that service is not handoff's record of %s (label %s=%q); remove or rename it", name, service, LabelRecord, got)
	}
	return res.Service, true, nil
}

// isStale says err is Swarm refusing a write at a version that is no longer the
// service's: someone else wrote since it was read.
func isStale(err error) bool {
	return strings.Contains(err.Error(), "update out of sequence")
}

// isTransient says err is a manager that could not answer now, but may soon: its swarm
// has no leader (an election takes about 10 s), or the leader it passes requests on to
// does not answer.
func isTransient(err error) bool {
	if cerrdefs.IsUnavailable(err) || cerrdefs.IsDeadlineExceeded(err) || client.IsErrConnectionFailed(err) {
		return true
	}
	msg := err.Error()
	for _, s := range []string{"code = Unavailable", "code = DeadlineExceeded", "does not have a leader", "no leader"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// transientRetry is how long a manager that could not answer is left before asking again.
const transientRetry = 250 * time.Millisecond

// wait waits d or until ctx ends.
func wait(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// recordSpec is a new record service: replicated with no replicas, so that nothing
// runs, its image is never pulled and no write of its labels restarts anything.
func recordSpec(name, service string) swarm.ServiceSpec {
	zero := uint64(0)
	return swarm.ServiceSpec{
		Annotations: swarm.Annotations{Name: name},
		TaskTemplate: swarm.TaskSpec{
			ContainerSpec: &swarm.ContainerSpec{Image: RecordImage, Labels: map[string]string{LabelRecord: service}},
		},
		Mode: swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: &zero}},
	}
}

// swarmName is what Swarm takes as a service's name: a DNS label of letters, digits,
// '-' and '_', starting and ending with a letter or digit, at most 63 characters.
var swarmName = regexp.MustCompile(`^[a-zA-Z0-9](?:[-_]*[A-Za-z0-9]+)*$`)

const (
	recordPrefix = "handoff-record-"
	lockPrefix   = "handoff-lock-"
)

// RecordName is the name of the record service of service's history.
func RecordName(service string) (string, error) { return recordName(recordPrefix, service) }

// LockName is the name of the record service of service's lock.
func LockName(service string) (string, error) { return recordName(lockPrefix, service) }

// recordName is prefix+service. handoff's service names may have '.' (and end in '-'
// or '_'), which Swarm's do not: such a name is cut to its letters and digits and a
// hash of the whole added, so that no two services share one.
func recordName(recordPrefix, service string) (string, error) {
	if err := deploy.CheckName(service); err != nil {
		return "", err
	}
	name := recordPrefix + service
	if len(name) <= 63 && swarmName.MatchString(name) {
		return name, nil
	}
	sum := sha256.Sum256([]byte(service))
	kept := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			return r
		}
		return '-'
	}, service)
	kept = strings.Trim(kept, "-")
	if len(kept) > 63-len(recordPrefix)-9 {
		kept = kept[:63-len(recordPrefix)-9]
	}
	return recordPrefix + kept + "-" + hex.EncodeToString(sum[:4]), nil
}
