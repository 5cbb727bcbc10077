package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/proxy/wire"
)

// A service whose address cannot be listened on at start (the port still
// held, a LAN address not up yet) is kept: a change to another service
// writes it back to the state file instead of deleting it. It is listed as
// not listening, with why and since when, can be switched meanwhile, and
// is served as soon as its address is free, tried again with a backoff.
// Its failure is logged once, not at every attempt.
func TestAServiceThatCannotListenAtStartIsKeptInTheStateFile(t *testing.T) {
	a, b := newBackend(t, "a"), newBackend(t, "b")
	path := filepath.Join(t.TempDir(), "proxy.json")
	held, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { held.Close() })
	web, api := held.Addr().String(), freeAddr(t)
	data := fmt.Sprintf(`{"services": [{"name": "web", "listen": %q, "upstream": %q}, {"name": "api", "listen": %q, "upstream": %q}]}`, web, a.addr(), api, a.addr())
	require.NoError(t, os.WriteFile(path, []byte(data), 0o600))

	clock, logs := newFakeClock(), &syncWriter{w: &bytes.Buffer{}}
	p := NewServer(net.Listen, slog.New(slog.NewTextHandler(logs, nil)), Options{Clock: clock, Save: func(st []ServiceState) error { return SaveState(path, st) }})
	t.Cleanup(func() {
		for _, s := range p.List() {
			_ = p.Delete(s.Name)
		}
	})
	start := clock.Now()
	require.NoError(t, p.Restore(path))
	_, err = p.Switch("api", a.addr(), "127.0.0.1:2")
	require.NoError(t, err)
	require.ElementsMatch(t, []string{"web", "api"}, names(readState(t, path)), "web is still in the file")

	st, err := p.Get("web")
	require.NoError(t, err)
	require.Equal(t, a.addr(), st.Upstream, "the deploy side sees its route")
	require.NotNil(t, st.NotListening)
	require.Contains(t, st.NotListening.Error, "address already in use")
	require.Equal(t, start, st.NotListening.Since)
	clock.Advance(time.Second)
	clock.Advance(2 * time.Second)
	st, _ = p.Get("web")
	require.Equal(t, 3, st.NotListening.Attempts, "tried again after 1 s, then 2 s")
	require.Equal(t, start, st.NotListening.Since)
	require.Equal(t, 1, strings.Count(logs.String(), "cannot listen for the service"), "logged once:\n%s", logs)

	_, err = p.Switch("web", a.addr(), b.addr())
	require.NoError(t, err, "a deploy switches it as any other")
	held.Close()
	clock.Advance(4 * time.Second)
	st, _ = p.Get("web")
	require.Nil(t, st.NotListening)
	rel, _ := get(t, http.DefaultClient, "http://"+web+"/")
	require.Equal(t, "b", rel)
	require.Contains(t, logs.String(), "listening for the service at last")
	saved := readState(t, path)
	require.ElementsMatch(t, []string{"web", "api"}, names(saved))
	for _, s := range saved {
		if s.Name == "web" {
			require.Equal(t, b.addr(), s.Upstream)
		}
	}
}

// Retrying stops with the service: a deleted one is not listened for.
func TestADeletedServiceIsNotListenedForAgain(t *testing.T) {
	path := filepath.Join(t.TempDir(), "proxy.json")
	require.NoError(t, SaveState(path, []ServiceState{{ServiceState: wire.ServiceState{Name: "web", Listen: "127.0.0.1:9001", Upstream: "127.0.0.1:1"}}}))
	var tries atomic.Int64
	refuse := func(string, string) (net.Listener, error) {
		tries.Add(1)
		return nil, errors.New("address already in use")
	}
	clock := newFakeClock()
	p := NewServer(refuse, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{Clock: clock})
	require.NoError(t, p.Restore(path))
	clock.Advance(time.Second)
	require.EqualValues(t, 2, tries.Load())
	require.NoError(t, p.Delete("web"))
	clock.Advance(time.Hour)
	require.EqualValues(t, 2, tries.Load(), "not tried again")
	require.Empty(t, p.List())
}

// Entries the proxy cannot use at all are written back as they were on
// every later save, never dropped.
func TestUnusableEntriesAreKeptAsTheyWere(t *testing.T) {
	a := newBackend(t, "a")
	path := filepath.Join(t.TempDir(), "proxy.json")
	good := freeAddr(t)
	bad := []string{`{"name": 42}`, `{"name": "api", "listen": "not an address", "upstream": "x"}`, `{"name": "web", "listen": "127.0.0.1:1", "upstream": "127.0.0.1:2"}`}
	data := fmt.Sprintf(`{"services": [{"name": "web", "listen": %q, "upstream": %q}, %s, %s, %s]}`, good, a.addr(), bad[0], bad[1], bad[2])
	require.NoError(t, os.WriteFile(path, []byte(data), 0o600))

	p := NewServer(net.Listen, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{Save: func(st []ServiceState) error { return SaveState(path, st) }})
	t.Cleanup(func() { _ = p.Delete("web") })
	require.NoError(t, p.Restore(path))
	_, err := p.Switch("web", a.addr(), "127.0.0.1:3")
	require.NoError(t, err)
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	for _, b := range bad {
		require.Contains(t, compactJSON(t, raw), compactJSON(t, []byte(b)), "kept as it was")
	}
}

// A state file that is not JSON does not stop the proxy, and nothing of it
// is lost: the services it can read are served, and the file as found is
// kept beside it.
func TestADamagedStateFileLosesNothing(t *testing.T) {
	a := newBackend(t, "a")
	path := filepath.Join(t.TempDir(), "proxy.json")
	good := freeAddr(t)
	data := fmt.Sprintf(`{"services": [{"name": "web", "listen": %q, "upstream": %q}, {"name": "api", "listen": "127.0.0.1:1", "upstr`, good, a.addr())
	require.NoError(t, os.WriteFile(path, []byte(data), 0o600))

	p := NewServer(net.Listen, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{Save: func(st []ServiceState) error { return SaveState(path, st) }})
	t.Cleanup(func() { _ = p.Delete("web") })
	require.NoError(t, p.Restore(path))
	rel, _ := get(t, http.DefaultClient, "http://"+good+"/")
	require.Equal(t, "a", rel)
	copies, _ := filepath.Glob(path + ".damaged-*")
	require.Len(t, copies, 1)
	kept, err := os.ReadFile(copies[0])
	require.NoError(t, err)
	require.Equal(t, data, string(kept))
}

func compactJSON(t *testing.T, raw []byte) string {
	t.Helper()
	var b bytes.Buffer
	require.NoError(t, json.Compact(&b, raw))
	return b.String()
}

// FuzzStateFile: whatever the state file holds, the proxy starts without
// a panic and loses nothing of it: every entry it read is served or kept
// as it was, a file it could not read whole is copied aside byte for
// byte, and what it writes back it reads again the same way.
func FuzzStateFile(f *testing.F) {
	for _, seed := range []string{
		`{"services": []}`,
		`{"services": [{"name": "web", "listen": "127.0.0.1:9001", "upstream": "127.0.0.1:32768"}]}`,
		`{"services": [{"name": "web", "listen": "127.0.0.1:8001", "upstream": "127.0.0.1:1", "paused": true, "pause_max_wait": "30s", "pause_until": "2026-12-01T20:10:00Z"}, {"name": "web", "listen": "127.0.0.1:8002", "upstream": "127.0.0.1:2"}]}`,
		`{"services": [{"name": 42}, "x", null, [], {"name": "api", "listen": "nope", "upstream": "x"}]}`,
		`{"services": [{"name": "web", "listen": "127.0.0.1:8001", "upstream": "127.0.0.1:1", "maintenance": {"page": "<p>down</p>", "retry_after": 60}}], "version": 2}`,
		`{"services": [{"name": "web", "listen": "127.0.0.1:8001", "upstr`,
		`{"unreadable": "at byte 3", "copy": "/x"}`,
		`{"services": [{"unreadable": "at byte 3: unexpected EOF", "copy": "/var/lib/handoff/proxy.json.damaged-1"}]}`,
		`{"Services": [{"name": "a", "listen": ":8003", "upstream": "[::1]:80", "pause_max_wait": "-1s", "paused": true}]}`,
		``, `null`, `[]`, `{"services": {}}`, `{} {}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		path := filepath.Join(dir, "proxy.json")
		require.NoError(t, os.WriteFile(path, data, 0o600))
		in, damage := readStateFile(data)

		p := fuzzServer(t, path)
		require.NoError(t, p.Restore(path))
		p.change.Lock()
		require.NoError(t, p.save(func(l []ServiceState) []ServiceState { return l }))
		p.change.Unlock()

		out, err := os.ReadFile(path)
		require.NoError(t, err)
		saved, outDamage := readStateFile(out)
		require.NoError(t, outDamage, "what the proxy writes it reads whole:\n%s", out)
		kept := map[string]int{}
		for _, raw := range saved {
			kept[compact(raw)]++
		}
		served := map[string]bool{}
		for _, raw := range in {
			st, why := readEntry(raw)
			if why == "" && served[st.Name] {
				why = "a second entry"
			}
			served[st.Name] = served[st.Name] || why == ""
			if why != "" {
				require.Positive(t, kept[compact(raw)], "entry %s is kept as it was in:\n%s", raw, out)
				continue
			}
			got, err := p.Get(st.Name)
			require.NoError(t, err)
			require.Equal(t, st.Listen, got.Listen)
			if got.Unrestored == "" {
				require.Equal(t, st.Upstream, got.Upstream)
			}
		}
		if damage != nil {
			copies, _ := filepath.Glob(path + ".damaged-*")
			require.Len(t, copies, 1)
			found, err := os.ReadFile(copies[0])
			require.NoError(t, err)
			require.Equal(t, data, found, "the damaged file is copied as it was")
		}

		again := fuzzServer(t, path)
		require.NoError(t, again.Restore(path))
		require.Equal(t, describe(p.List()), describe(again.List()), "restored the same from what it wrote")
	})
}

// fuzzServer is a server whose listeners are make-believe: an address
// with a 9 in it cannot be listened on, the others accept nothing.
func fuzzServer(t *testing.T, path string) *Server {
	listen := func(_, addr string) (net.Listener, error) {
		if strings.Contains(addr, "9") {
			return nil, errors.New("address already in use")
		}
		return newIdleListener(), nil
	}
	p := NewServer(listen, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{Clock: newFakeClock(), Save: func(st []ServiceState) error { return SaveState(path, st) }})
	p.probe = func(*slog.Logger, string, string) {}
	t.Cleanup(func() {
		for _, s := range p.List() {
			if s.Unrestored == "" {
				_ = p.Delete(s.Name)
			}
		}
	})
	return p
}

func compact(raw []byte) string {
	var b bytes.Buffer
	if json.Compact(&b, raw) != nil {
		return string(raw)
	}
	return b.String()
}

func describe(list []ServiceState) []string {
	var out []string
	for _, s := range list {
		out = append(out, fmt.Sprintf("%q %q %q paused=%v until=%s maint=%v listening=%v unrestored=%q", s.Name, s.Listen, s.Upstream, s.Paused, s.PauseUntil, s.Maintenance != nil, s.NotListening == nil, s.Unrestored))
	}
	return out
}

// idleListener accepts nothing until it is closed.
type idleListener struct {
	done chan struct{}
	once sync.Once
}

func newIdleListener() *idleListener { return &idleListener{done: make(chan struct{})} }

func (l *idleListener) Accept() (net.Conn, error) { <-l.done; return nil, net.ErrClosed }
func (l *idleListener) Close() error              { l.once.Do(func() { close(l.done) }); return nil }
func (l *idleListener) Addr() net.Addr            { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

// Saves are one at a time and in order: after switching two services at
// once, the file holds both new upstreams, every round.
func TestConcurrentSwitchesAllReachTheStateFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "proxy.json")
	p := NewServer(net.Listen, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{Save: func(st []ServiceState) error { return SaveState(path, st) }})
	t.Cleanup(func() {
		for _, s := range p.List() {
			_ = p.Delete(s.Name)
		}
	})
	for _, name := range []string{"web", "api"} {
		_, err := p.Put(name, freeAddr(t), "127.0.0.1:1")
		require.NoError(t, err)
	}
	for round := range 200 {
		to := fmt.Sprintf("127.0.0.1:%d", 2000+round)
		var wg sync.WaitGroup
		for _, name := range []string{"web", "api"} {
			wg.Go(func() {
				_, err := p.Switch(name, "", to)
				require.NoError(t, err)
			})
		}
		wg.Wait()
		for _, st := range readState(t, path) {
			require.Equal(t, to, st.Upstream, "round %d: %s", round, st.Name)
		}
	}
}

// A change that cannot be saved is not made, and the caller is told: a
// deploy must never believe a switch that a restart would undo.
func TestAChangeThatCannotBeSavedIsNotMade(t *testing.T) {
	failing := false
	p := NewServer(net.Listen, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{Save: func([]ServiceState) error {
		if failing {
			return errors.New("no space left on device")
		}
		return nil
	}})
	t.Cleanup(func() { failing = false; _ = p.Delete("web") })
	a, b := newBackend(t, "a"), newBackend(t, "b")
	listen := freeAddr(t)
	_, err := p.Put("web", listen, a.addr())
	require.NoError(t, err)

	failing = true
	_, err = p.Switch("web", a.addr(), b.addr())
	require.ErrorIs(t, err, ErrNotSaved)
	require.ErrorContains(t, err, "no space left on device")
	st, _ := p.Get("web")
	require.Equal(t, a.addr(), st.Upstream, "still on a")
	rel, _ := get(t, http.DefaultClient, "http://"+listen+"/")
	require.Equal(t, "a", rel)
	_, err = p.Pause("web", time.Second, 0)
	require.ErrorIs(t, err, ErrNotSaved)
	st, _ = p.Get("web")
	require.False(t, st.Paused)

	srv := httptest.NewServer(ControlHandler(p))
	defer srv.Close()
	resp, err := http.Post(srv.URL+"/v1/services/web/switch", "application/json", bytes.NewReader([]byte(fmt.Sprintf(`{"from": %q, "to": %q}`, a.addr(), b.addr()))))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusInternalServerError, resp.StatusCode, "the control call fails")
}
