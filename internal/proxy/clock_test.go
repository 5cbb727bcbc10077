package proxy

import (
	"slices"
	"sync"
	"time"
)

// fakeClock is a Clock that moves only when a test says: Advance calls
// the timers that come due, in order, in the test's goroutine.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	at      time.Time
	f       func()
	stopped bool
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 12, 1, 20, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) func() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{at: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		was := !t.stopped
		t.stopped = true
		return was
	}
}

// Advance moves the clock by d, calling each timer as its time comes.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	end := c.now.Add(d)
	c.mu.Unlock()
	for {
		c.mu.Lock()
		c.timers = slices.DeleteFunc(c.timers, func(t *fakeTimer) bool { return t.stopped })
		slices.SortStableFunc(c.timers, func(a, b *fakeTimer) int { return a.at.Compare(b.at) })
		if len(c.timers) == 0 || c.timers[0].at.After(end) {
			c.now = end
			c.mu.Unlock()
			return
		}
		t := c.timers[0]
		t.stopped = true
		if t.at.After(c.now) {
			c.now = t.at
		}
		c.mu.Unlock()
		t.f()
	}
}

// passingClock is a Clock on which time passes as it is read (each Now is
// a millisecond after the last), so a lease that has not ended when it is
// checked may have ended by the time its timer is set. A timer set for a
// time already past is due at once: RunDue fires it, in its own goroutine
// as a timer does, wherever the test says the scheduler may run it. Later
// timers never fire.
type passingClock struct {
	mu    sync.Mutex
	now   time.Time
	due   []func()
	fired sync.WaitGroup
	fires int
}

func newPassingClock(now time.Time) *passingClock { return &passingClock{now: now} }

func (c *passingClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now
	c.now = c.now.Add(time.Millisecond)
	return now
}

func (c *passingClock) AfterFunc(d time.Duration, f func()) func() bool {
	if d > 0 {
		return func() bool { return true }
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.due = append(c.due, f)
	return func() bool { return false } // due at once: as good as fired
}

// RunDue fires the timers due and gives them up to wait to finish (one
// may be blocked until its caller goes on).
func (c *passingClock) RunDue(wait time.Duration) {
	c.mu.Lock()
	due := c.due
	c.due, c.fires = nil, c.fires+len(due)
	c.mu.Unlock()
	var done sync.WaitGroup
	for _, f := range due {
		done.Add(1)
		c.fired.Add(1)
		go func() {
			defer c.fired.Done()
			defer done.Done()
			f()
		}()
	}
	finished := make(chan struct{})
	go func() { done.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(wait):
	}
}

// Fired is how many timers have fired; Wait waits for them to finish.
func (c *passingClock) Fired() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.fires
}

func (c *passingClock) Wait() { c.fired.Wait() }

// jumpingClock is a Clock whose timers fire at once, time jumping ahead
// to them: a wait costs a test nothing, and Waits counts them (so a test
// can say that no request waited its dial retry, without timing it).
type jumpingClock struct {
	*fakeClock
	waits int
}

func newJumpingClock() *jumpingClock { return &jumpingClock{fakeClock: newFakeClock()} }

func (c *jumpingClock) AfterFunc(d time.Duration, f func()) func() bool {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.waits++
	c.mu.Unlock()
	go f()
	return func() bool { return false }
}

// Waits is how many timers were set.
func (c *jumpingClock) Waits() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.waits
}
