package swarm

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/handoff-dev/handoff/internal/deploy"
)

// lease is the lock as its label holds it. No kernel drops a label when its process
// dies, as one drops a flock: a holder renews its lease while it runs, and a lease not
// renewed in time is free to take. No manager's clock is compared with another's:
// Expires is by the holder's clock and is read as news (a lease whose Token and
// Expires stay the same is not being renewed), and each side measures time on its own
// monotonic clock. The holder counts from its last renewal that went through and stops
// once Lease-Lease/3 have passed (fence); another takes the lease over once it has
// seen it unchanged for a whole Lease (For) by its clock. Clocks that run at all alike
// keep the holder stopped before anyone else starts, whatever their offsets.
type lease struct {
	Holder  string        `json:"holder"`
	Token   string        `json:"token"` // this taking of the lock, so that a holder knows its own
	Since   time.Time     `json:"since"`
	Expires time.Time     `json:"expires"`
	For     time.Duration `json:"lease,omitempty"` // the holder's lease, which others wait out
	Proc    *process      `json:"proc,omitempty"`  // the holder's process, for a handoff on its machine to see it gone
}

func (l lease) String() string {
	return fmt.Sprintf("%s since %s, lease until %s", l.Holder, l.Since.UTC().Format(time.RFC3339), l.Expires.UTC().Format(time.RFC3339))
}

// heldError is the lock held by another, whose lease runs as far as we can tell.
// runOut says its expiry has passed by our clock: it is being watched for a lease.
type heldError struct {
	by     lease
	runOut bool
}

func (e *heldError) Error() string { return "held by " + e.by.String() }

// lostError is a lock of ours found taken by another (after our lease ran out
// unrenewed) or released by someone else, or given up by us: not renewed for
// unrenewed, past our fence.
type lostError struct {
	by        lease
	free      bool
	unrenewed time.Duration
}

func (e *lostError) Error() string {
	switch {
	case e.unrenewed > 0:
		return fmt.Sprintf("its lease was not renewed for %s by this handoff's clock (the swarm's managers did not answer), so another handoff may take it over; this one stops", e.unrenewed)
	case e.free:
		return "the lock was released by someone else"
	}
	return "the lock was taken by " + e.by.String()
}

// lostLock is what a caller of a lock lost is told.
func lostLock(service string, how *lostError, lease time.Duration) error {
	if how.unrenewed > 0 {
		return fmt.Errorf("%w: %s: %s", deploy.ErrLocked, service, how)
	}
	return fmt.Errorf("%w: %s: %s while this handoff ran (its lease of %s ran out unrenewed)", deploy.ErrLocked, service, how, lease)
}

// lockRetry is how often Lock tries again while it waits.
const lockRetry = 500 * time.Millisecond

// Lock takes service's lock, or says who holds it (deploy.ErrLocked), as LockContext.
func (s *Store) Lock(ctx context.Context, service string) (func(), error) {
	_, unlock, err := s.LockContext(ctx, service)
	return unlock, err
}

// LockContext takes service's lock, or says who holds it (deploy.ErrLocked). While
// held, a goroutine renews the lease every sixth of it; unlock stops that and frees
// the lock if it is still ours. The context returned, made from ctx, ends when the
// lock is lost (its cause a deploy.ErrLocked saying how) or unlocked: a deploy that
// runs its steps under it stops when another handoff may be taking over, not at its
// next Save.
//
// A lease of another holder is taken over once this Store has seen it unchanged for
// the holder's lease: without --wait (Wait 0), Lock watches for that long when its
// expiry has passed by our clock, and fails at once when it has not. Each read and
// write is bounded by Timeout: managers that do not answer fail Lock, after it tried
// to release what its unanswered write may have left.
func (s *Store) LockContext(ctx context.Context, service string) (context.Context, func(), error) {
	name, err := LockName(service)
	if err != nil {
		return nil, nil, err
	}
	mine := lease{Holder: cmp.Or(s.Holder, defaultHolder()), Token: newToken(), For: s.lease()}
	if me, ok := s.procsOf().self(); ok {
		mine.Proc = &me
	}
	var wait <-chan time.Time
	if s.Wait > 0 {
		wait = time.After(s.Wait)
	}
	var decided, watching time.Time
	for {
		err := s.bounded(ctx, func(ctx context.Context) error {
			return s.modify(ctx, name, service, func(labels map[string]string) error {
				decided = s.now()
				return s.take(service, labels, &mine)
			})
		})
		var held *heldError
		if errors.As(err, &held) {
			if watching.IsZero() {
				watching = s.now()
			}
			// Watched for a whole lease and still refused: renewed, by a clock behind ours.
			watchedOut := s.now().Sub(watching) > s.leaseOf(held.by)+lockRetry
			if wait == nil && (!held.runOut || watchedOut) {
				return nil, nil, fmt.Errorf("%w: %s (%s); wait for it to finish, or pass --wait 5m", deploy.ErrLocked, service, held.by)
			}
			select {
			case <-ctx.Done():
				return nil, nil, ctx.Err()
			case <-wait:
				wait = nil // one more try, then say who holds it
			case <-time.After(lockRetry):
			}
			continue
		}
		if errors.Is(err, errUnanswered) {
			// Our lease may have been written, its answer lost: free it if it is ours.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), min(s.timeout(), 10*time.Second))
			_ = s.modify(rctx, name, service, func(labels map[string]string) error { return release(labels, mine.Token) })
			cancel()
			if ctx.Err() != nil {
				return nil, nil, ctx.Err()
			}
			return nil, nil, fmt.Errorf("lock %s: the swarm's managers did not answer in %s; check `docker node ls` on a manager (more than half of the managers must be reachable): %w", service, s.timeout(), err)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("lock %s: %w", service, err)
		}
		break
	}
	lctx, lost := context.WithCancelCause(ctx)
	s.st().hold(service, mine.Token, decided, lost)
	rctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.renewWhileHeld(rctx, service, mine.Token)
	}()
	return lctx, sync.OnceFunc(func() {
		stop()
		<-done
		s.st().release(service, mine.Token)
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.timeout())
		defer cancel()
		// A release that fails leaves the lease to run out.
		_ = s.modify(ctx, name, service, func(labels map[string]string) error {
			return release(labels, mine.Token)
		})
	}), nil
}

// bounded runs f under ctx with Timeout.
func (s *Store) bounded(ctx context.Context, f func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout())
	defer cancel()
	return f(ctx)
}

// take decides whether the lock in labels can be ours: free, ours already, another's
// lease seen unchanged for the whole of it, or another's whose process, on this
// machine, has ended (killed: nothing renews it, as a kernel drops a dead process's
// flock). It sets mine's lease from now and writes it into labels.
func (s *Store) take(service string, labels map[string]string, mine *lease) error {
	cur, held, err := readLease(labels)
	if err != nil {
		return err
	}
	now := s.now()
	if held && cur.Token != mine.Token && !gone(s.procsOf(), cur.Proc) && !s.st().unchangedFor(service, cur, now, s.leaseOf(cur)) {
		return &heldError{by: cur, runOut: !now.Before(cur.Expires)}
	}
	if !held || cur.Token != mine.Token {
		mine.Since = now
	}
	mine.Expires = now.Add(s.lease())
	mine.For = s.lease()
	return writeLease(labels, *mine)
}

// leaseOf is how long l's holder renews it within: its own lease, or ours for a lease
// that does not say.
func (s *Store) leaseOf(l lease) time.Duration {
	if l.For > 0 {
		return l.For
	}
	return s.lease()
}

// fenceAfter is how long after its last renewal a holder gives its lock up: a third
// of the lease before anyone else may take it, for the Save under way and for clocks
// that do not run quite alike.
func (s *Store) fenceAfter() time.Duration { return s.lease() - s.lease()/3 }

// fence is our lock of service: its token ("" for none), how long it holds by our
// clock, or how it was lost. A lock past its fence is lost from now on.
func (s *Store) fence(service string) (token string, left time.Duration, lost *lostError) {
	token, renewed, lost := s.st().holding(service)
	if token == "" {
		return "", 0, lost
	}
	since := s.now().Sub(renewed)
	if left = s.fenceAfter() - since; left > 0 {
		return token, left, nil
	}
	how := &lostError{unrenewed: since.Round(time.Millisecond)}
	s.lose(service, token, how)
	return "", 0, how
}

// lose marks our lock of service lost, and ends its context.
func (s *Store) lose(service, token string, how *lostError) {
	s.st().lose(service, token, how, lostLock(service, how, s.lease()))
}

// renew decides a renewal of the lease token: still ours, it runs a lease from now.
func (s *Store) renew(labels map[string]string, token string) error {
	cur, held, err := readLease(labels)
	if err != nil {
		return err
	}
	if !held || cur.Token != token {
		return &lostError{by: cur, free: !held}
	}
	cur.Expires = s.now().Add(s.lease())
	cur.For = s.lease()
	return writeLease(labels, cur)
}

// release frees the lock if it is still token's; another's is left alone.
func release(labels map[string]string, token string) error {
	cur, held, err := readLease(labels)
	if err != nil || !held || cur.Token != token {
		return errNoChange
	}
	delete(labels, LabelLock)
	return nil
}

// renewEvery is how often a holder renews its lease, and how long a renewal may take.
// A renewal is a few hundred bytes, so it is often: a manager that passes a write on
// to a leader just lost hangs on it (20 s on 20.10), and a renewal cut off early and
// sent again reaches the new leader (elected in ~12 s) before the fence, two thirds
// of the lease after the last one that went through.
func (s *Store) renewEvery() time.Duration { return max(s.lease()/6, time.Millisecond) }

// renewWhileHeld renews the lease every renewEvery until ctx ends or the lock is
// lost: found another's, or not renewed by its fence.
func (s *Store) renewWhileHeld(ctx context.Context, service, token string) {
	tick := time.NewTicker(s.renewEvery())
	defer tick.Stop()
	for {
		_, left, lost := s.fence(service)
		if lost != nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-time.After(left):
			continue // fence decides
		}
		if !s.renewOnce(ctx, service, token) {
			return
		}
	}
}

// renewOnce renews the lease and says whether to go on. A renewal that finds the lock
// another's marks it lost; one that cannot reach the manager is tried again at the
// next tick (three more before the fence).
func (s *Store) renewOnce(ctx context.Context, service, token string) bool {
	name, err := LockName(service)
	if err != nil {
		return false
	}
	rctx, cancel := context.WithTimeout(ctx, s.renewEvery())
	defer cancel()
	var decided time.Time
	err = s.modify(rctx, name, service, func(labels map[string]string) error {
		decided = s.now()
		return s.renew(labels, token)
	})
	var lost *lostError
	if errors.As(err, &lost) {
		s.lose(service, token, lost)
		return false
	}
	if err == nil {
		s.st().renewed(service, token, decided)
	}
	return true
}

// readLease is the lock in labels; held is false when it is free.
func readLease(labels map[string]string) (l lease, held bool, err error) {
	v, ok := labels[LabelLock]
	if !ok || v == "" {
		return lease{}, false, nil
	}
	if err := json.Unmarshal([]byte(v), &l); err != nil || l.Token == "" {
		return lease{}, false, fmt.Errorf("the label %s is not handoff's lock (%q); remove it with `docker service update --label-rm %s` once no deploy runs", LabelLock, v, LabelLock)
	}
	return l, true, nil
}

func writeLease(labels map[string]string, l lease) error {
	b, err := json.Marshal(l)
	if err != nil {
		return err
	}
	labels[LabelLock] = string(b)
	return nil
}

func (s *Store) now() time.Time {
	if s.Now == nil {
		return time.Now()
	}
	return s.Now()
}

func (s *Store) procsOf() procs {
	if s.procs == nil {
		return kernel{}
	}
	return s.procs
}

func (s *Store) lease() time.Duration {
	if s.Lease <= 0 {
		return DefaultLease
	}
	return s.Lease
}

// DefaultTimeout bounds each read-and-write of a record, its tries again included. A
// follower passes each request on to the leader; with the leader lost it answered
// DeadlineExceeded after 20 s, and asked again, the new leader (elected in ~12 s)
// answered at once: a save took 20.3 s through the loss of a leader.
const DefaultTimeout = time.Minute

func (s *Store) timeout() time.Duration {
	if s.Timeout > 0 {
		return s.Timeout
	}
	return DefaultTimeout
}

func newToken() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func defaultHolder() string {
	host, err := os.Hostname()
	if err != nil {
		host = "unknown host"
	}
	return fmt.Sprintf("handoff on %s pid %d", host, os.Getpid())
}
