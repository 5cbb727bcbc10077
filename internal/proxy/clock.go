package proxy

import "time"

// Clock is what the switch reads the time from and sets its timers on (a
// pause's lease, a listen or a refused dial tried again): the system's, or
// a test's.
type Clock interface {
	Now() time.Time
	// AfterFunc calls f in its own goroutine once d has passed; stop
	// cancels it, and says whether it did so before f was called.
	AfterFunc(d time.Duration, f func()) (stop func() bool)
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

func (systemClock) AfterFunc(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }
