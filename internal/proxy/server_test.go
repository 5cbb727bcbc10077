package proxy

import (
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A switch that lands between a request's reading of the current target
// and its counting there must not let the request reach the old target
// after a drain saw nothing in flight on it: the deploy would stop that
// container under it. The hook runs exactly in that window.
func TestRequestNeverReachesATargetItWasNotCountedOn(t *testing.T) {
	p, a, listen := serveOne(t)
	b := newBackend(t, "b")
	var hitsA atomic.Int64
	a.Config.Handler = countingHandler(a.Config.Handler, &hitsA)

	var sawInFlightOnA int64 = -1
	var once sync.Once
	acquireHook = func() {
		once.Do(func() {
			_, err := p.Switch("web", a.addr(), b.addr())
			require.NoError(t, err)
			st, _ := p.Get("web")
			sawInFlightOnA = st.Draining[0].InFlight // what a deploy's drain would see now
		})
	}
	t.Cleanup(func() { acquireHook = nil })

	rel, _ := get(t, http.DefaultClient, "http://"+listen+"/")
	require.Zero(t, sawInFlightOnA, "the drain saw nothing in flight on a")
	require.Equal(t, "b", rel, "so the request went to b")
	require.Zero(t, hitsA.Load(), "and a never saw it")
	st, _ := p.Get("web")
	require.Zero(t, st.Draining[0].InFlight)
	require.Zero(t, st.InFlight)
}

func countingHandler(h http.Handler, n *atomic.Int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { n.Add(1); h.ServeHTTP(w, r) })
}

// While a restart hands over, changes are refused with ErrRestarting (the
// client tries again and reaches the new process), so none is lost.
func TestFrozenServerRefusesChanges(t *testing.T) {
	p, a, _ := serveOne(t)
	p.Freeze()
	_, err := p.Switch("web", a.addr(), "127.0.0.1:2")
	require.ErrorIs(t, err, ErrRestarting)
	_, err = p.Pause("web", time.Second, 0)
	require.ErrorIs(t, err, ErrRestarting)
	p.Thaw()
	_, err = p.Switch("web", a.addr(), "127.0.0.1:2")
	require.NoError(t, err)
}

// A pause that lands between a request's look at the pause gate and its
// counting in flight must still hold it: the deploy that paused and then
// saw nothing in flight runs its release job, and this request would run
// old code against a half-migrated database. The hook runs in that window.
func TestAPauseNeverLetsARequestItDidNotCountReachTheOldRelease(t *testing.T) {
	p, a, listen := serveOne(t)
	var hitsA atomic.Int64
	a.Config.Handler = countingHandler(a.Config.Handler, &hitsA)

	var sawInFlight int64 = -1
	var once sync.Once
	acquireHook = func() {
		once.Do(func() {
			_, err := p.Pause("web", time.Minute, time.Hour)
			require.NoError(t, err)
			st, _ := p.Get("web")
			sawInFlight = st.InFlight // what a deploy's wait before the job sees now
		})
	}
	t.Cleanup(func() { acquireHook = nil })

	done := make(chan string, 1)
	go func() { rel, _ := get(t, http.DefaultClient, "http://"+listen+"/"); done <- rel }()
	require.Eventually(t, func() bool { st, _ := p.Get("web"); return st.Held == 1 }, 5*time.Second, time.Millisecond, "the request is held")
	require.Zero(t, sawInFlight, "the deploy saw nothing in flight")
	require.Zero(t, hitsA.Load(), "and nothing reached the old release while paused")
	_, err := p.Resume("web")
	require.NoError(t, err)
	require.Equal(t, "a", <-done, "resumed, it went on")
}
