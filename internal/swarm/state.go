package swarm

import (
	"context"
	"sync"
	"time"
)

// storeState is which locks a Store holds, which it lost while holding them, and the
// leases of others it has seen.
type storeState struct {
	mu   sync.Mutex
	held map[string]*holding   // service → our lock
	lost map[string]*lostError // service → how its lock was lost, until it is taken again
	seen map[string]sighting   // service → another's lease as first seen
}

// holding is a lock of ours.
type holding struct {
	token string
	// renewed is when (by Store.Now) the last take or renewal that went through was
	// decided: the lease as others see it started after that.
	renewed time.Time
	lost    context.CancelCauseFunc // ends LockContext's context
}

// sighting is another's lease, and when we first saw it as it is.
type sighting struct {
	token   string
	expires time.Time
	at      time.Time
}

func newStoreState() *storeState {
	return &storeState{held: map[string]*holding{}, lost: map[string]*lostError{}, seen: map[string]sighting{}}
}

func (st *storeState) hold(service, token string, at time.Time, lost context.CancelCauseFunc) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.held[service] = &holding{token: token, renewed: at, lost: lost}
	delete(st.lost, service)
	delete(st.seen, service)
}

func (st *storeState) renewed(service, token string, at time.Time) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if h := st.held[service]; h != nil && h.token == token {
		h.renewed = at
	}
}

func (st *storeState) release(service, token string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if h := st.held[service]; h != nil && h.token == token {
		delete(st.held, service)
		h.lost(context.Canceled)
	}
}

func (st *storeState) lose(service, token string, how *lostError, cause error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if h := st.held[service]; h != nil && h.token == token {
		delete(st.held, service)
		st.lost[service] = how
		h.lost(cause)
	}
}

// holding is the token of our lock of service ("" for none) and when it was last
// renewed, or how it was lost since it was taken (nil if not).
func (st *storeState) holding(service string) (token string, renewed time.Time, lost *lostError) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if h := st.held[service]; h != nil {
		return h.token, h.renewed, nil
	}
	return "", time.Time{}, st.lost[service]
}

// unchangedFor says l, another's lease of service, has been seen as it is for d by
// now; a lease not seen before, or changed since, is seen from now.
func (st *storeState) unchangedFor(service string, l lease, now time.Time, d time.Duration) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	saw, ok := st.seen[service]
	if !ok || saw.token != l.Token || !saw.expires.Equal(l.Expires) {
		st.seen[service] = sighting{token: l.Token, expires: l.Expires, at: now}
		return false
	}
	return now.Sub(saw.at) >= d
}
