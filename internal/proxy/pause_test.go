package proxy

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/proxy/wire"
)

// A pause saved with a lease that ran out while the proxy was down is not
// restored: the deploy that made it is gone.
func TestARestoredPauseWhoseLeaseRanOutIsNotPaused(t *testing.T) {
	a := newBackend(t, "a")
	path := filepath.Join(t.TempDir(), "proxy.json")
	listen := freeAddr(t)
	ended := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339Nano)
	data := fmt.Sprintf(`{"services": [{"name": "web", "listen": %q, "upstream": %q, "paused": true, "pause_max_wait": "5m0s", "pause_until": %q}]}`, listen, a.addr(), ended)
	require.NoError(t, os.WriteFile(path, []byte(data), 0o600))
	p := NewServer(net.Listen, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{})
	t.Cleanup(func() { _ = p.Delete("web") })
	require.NoError(t, p.Restore(path))
	st, err := p.Get("web")
	require.NoError(t, err)
	require.False(t, st.Paused, "its lease ended a minute ago")
}

// A pause no one resumes (the deploy that made it was killed) ends with
// its lease: the held requests go on, not 503, the state file says it
// ended, and one log line says which service, why and how long.
func TestAPauseNobodyResumesEndsWithItsLease(t *testing.T) {
	clock, logs := newFakeClock(), &syncWriter{w: &bytes.Buffer{}}
	path := filepath.Join(t.TempDir(), "proxy.json")
	p := NewServer(net.Listen, slog.New(slog.NewTextHandler(logs, nil)), Options{Clock: clock, Save: func(st []ServiceState) error { return SaveState(path, st) }})
	t.Cleanup(func() { _ = p.Delete("web") })
	a := newBackend(t, "a")
	listen := freeAddr(t)
	_, err := p.Put("web", listen, a.addr())
	require.NoError(t, err)

	st, err := p.Pause("web", time.Minute, 10*time.Minute)
	require.NoError(t, err)
	require.Equal(t, clock.Now().Add(10*time.Minute), st.PauseUntil)
	require.Equal(t, clock.Now().Add(10*time.Minute), readState(t, path)[0].PauseUntil, "the lease is saved")
	done := make(chan int, 1)
	go func() {
		resp, err := http.Get("http://" + listen + "/")
		if err != nil {
			done <- 0
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	require.Eventually(t, func() bool { st, _ := p.Get("web"); return st.Held == 1 }, 5*time.Second, time.Millisecond)

	clock.Advance(5 * time.Minute)
	_, err = p.Pause("web", time.Minute, 10*time.Minute) // made again: a new lease, the same beginning
	require.NoError(t, err)
	clock.Advance(9 * time.Minute)
	st, _ = p.Get("web")
	require.True(t, st.Paused, "the second lease has a minute left")
	require.Equal(t, 1, int(st.Held))

	clock.Advance(time.Minute)
	require.Equal(t, http.StatusOK, <-done, "the held request went on")
	st, _ = p.Get("web")
	require.False(t, st.Paused)
	require.False(t, readState(t, path)[0].Paused, "saved: a restart does not pause it again")
	require.Equal(t, 1, strings.Count(logs.String(), "pause lease ended"))
	for _, want := range []string{"service=web", "held_for=15m0s", "no resume came"} {
		require.Contains(t, logs.String(), want)
	}
}

// A pause resumed in time leaves nothing for its lease to do.
func TestAResumedPauseOutlivesNoLease(t *testing.T) {
	clock, logs := newFakeClock(), &syncWriter{w: &bytes.Buffer{}}
	p := NewServer(net.Listen, slog.New(slog.NewTextHandler(logs, nil)), Options{Clock: clock})
	t.Cleanup(func() { _ = p.Delete("web") })
	_, err := p.Put("web", freeAddr(t), "127.0.0.1:1")
	require.NoError(t, err)
	_, err = p.Pause("web", 0, time.Minute)
	require.NoError(t, err)
	_, err = p.Resume("web")
	require.NoError(t, err)
	_, err = p.Pause("web", 0, time.Hour)
	require.NoError(t, err)
	clock.Advance(2 * time.Minute)
	st, _ := p.Get("web")
	require.True(t, st.Paused, "the first pause's lease does not end the second pause")
	require.NotContains(t, logs.String(), "pause lease ended")
	_, err = p.Pause("web", 0, 25*time.Hour)
	require.ErrorIs(t, err, ErrBadInput)
}

// A pause restored with time left on its lease ends when the lease does;
// a person's pause, made without a lease, gets wire.DefaultPauseLease.
func TestARestoredPauseKeepsItsLease(t *testing.T) {
	clock := newFakeClock()
	path := filepath.Join(t.TempDir(), "proxy.json")
	listen := freeAddr(t)
	require.NoError(t, SaveState(path, []ServiceState{{ServiceState: wire.ServiceState{Name: "web", Listen: listen, Upstream: "127.0.0.1:1", Paused: true, MaxWait: wire.Duration(time.Minute),
		PausedSince: clock.Now().Add(-time.Minute), PauseUntil: clock.Now().Add(time.Minute)}}}))
	p := NewServer(net.Listen, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{Clock: clock})
	t.Cleanup(func() { _ = p.Delete("web") })
	require.NoError(t, p.Restore(path))
	st, _ := p.Get("web")
	require.True(t, st.Paused)
	require.Equal(t, clock.Now().Add(-time.Minute), st.PausedSince)
	clock.Advance(time.Minute)
	st, _ = p.Get("web")
	require.False(t, st.Paused)

	st, err := p.Pause("web", 0, 0)
	require.NoError(t, err)
	require.Equal(t, clock.Now().Add(wire.DefaultPauseLease), st.PauseUntil)
}

// A pause is kept across a restart, and both its wait and the number of
// requests it holds are bounded.
func TestPauseIsSavedAndBounded(t *testing.T) {
	p, path, a, listen := savingOne(t)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	_, err := p.Pause("web", time.Hour, 0)
	require.ErrorIs(t, err, ErrBadInput, "a wait beyond wire.MaxPauseWait is refused")
	_, err = p.Pause("web", 2*time.Minute, 0)
	require.NoError(t, err)
	require.NoError(t, p.Delete("web"))

	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Contains(t, string(raw), `"services": []`)

	// As a restarted process finds it: paused, with its wait.
	require.NoError(t, SaveState(path, []ServiceState{{ServiceState: wire.ServiceState{Name: "web", Listen: listen, Upstream: a.addr(), Paused: true, MaxWait: wire.Duration(2 * time.Minute)}}}))
	q := NewServer(net.Listen, quiet, Options{})
	t.Cleanup(func() { _ = q.Delete("web") })
	require.NoError(t, q.Restore(path))
	st, err := q.Get("web")
	require.NoError(t, err)
	require.True(t, st.Paused)
	require.Equal(t, wire.Duration(2*time.Minute), st.MaxWait)

	s, _ := q.get("web")
	s.gate.waiting.Store(MaxHeld)
	resp, err := http.Get("http://" + listen + "/")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "beyond MaxHeld a request is answered at once")
	require.Contains(t, string(body), "too many requests held")
	s.gate.waiting.Store(0)
}

// A restored pause whose lease ends as it is restored lets its requests go
// on, and the state file it saves then still holds every service: the
// lease does not save while the services after it are being restored
// (the file would lose them until the next change, and a restart before
// that would forget them).
func TestALeaseEndingDuringRestoreSavesEveryService(t *testing.T) {
	start := time.Date(2026, 12, 1, 20, 0, 0, 0, time.UTC)
	clock := newPassingClock(start)
	path := filepath.Join(t.TempDir(), "proxy.json")
	require.NoError(t, SaveState(path, []ServiceState{
		{ServiceState: wire.ServiceState{Name: "web", Listen: "127.0.0.1:8001", Upstream: "127.0.0.1:1", Paused: true, MaxWait: wire.Duration(time.Minute),
			PausedSince: start.Add(-time.Minute), PauseUntil: start.Add(time.Millisecond)}},
		{ServiceState: wire.ServiceState{Name: "api", Listen: "127.0.0.1:8002", Upstream: "127.0.0.1:1"}},
		{ServiceState: wire.ServiceState{Name: "admin", Listen: "127.0.0.1:8003", Upstream: "127.0.0.1:1"}},
	}))
	// Each listen is where the lease's timer, due, runs.
	listen := func(_, _ string) (net.Listener, error) {
		clock.RunDue(200 * time.Millisecond)
		return newIdleListener(), nil
	}
	p := NewServer(listen, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{Clock: clock, Save: func(st []ServiceState) error { return SaveState(path, st) }})
	p.probe = func(*slog.Logger, string, string) {}
	t.Cleanup(func() {
		for _, s := range p.List() {
			_ = p.Delete(s.Name)
		}
	})

	require.NoError(t, p.Restore(path))
	clock.RunDue(0)
	clock.Wait()
	require.Equal(t, 1, clock.Fired(), "web's lease ended as it was restored")
	saved := readState(t, path)
	require.Equal(t, []string{"admin", "api", "web"}, names(saved), "every service is still in the state file")
	for _, s := range saved {
		require.False(t, s.Paused, "%s is saved not paused: its lease has ended", s.Name)
	}
	st, err := p.Get("web")
	require.NoError(t, err)
	require.False(t, st.Paused)
}
