package proxy

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/proxy/wire"

	"github.com/handoff-dev/handoff/internal/deploy"
)

// controlSocket serves p's control API on a unix socket.
func controlSocket(t *testing.T, p *Server) string {
	t.Helper()
	socket := filepath.Join(t.TempDir(), "c.sock")
	ln, err := net.Listen("unix", socket)
	require.NoError(t, err)
	srv := &http.Server{Handler: ControlHandler(p)}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return socket
}

// The deploy side never takes a service the proxy knows but does not
// serve for one it has no route for: a service it cannot listen for has
// its upstream, and an entry it could not restore is an error, not "".
func TestTheClientTellsAKnownServiceFromNoRoute(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { held.Close() })
	path := filepath.Join(t.TempDir(), "proxy.json")
	data := fmt.Sprintf(`{"services": [{"name": "web", "listen": %q, "upstream": "127.0.0.1:7001"}, {"name": "api", "listen": "127.0.0.1:9002", "upstream": 7002}]}`, held.Addr().String())
	require.NoError(t, os.WriteFile(path, []byte(data), 0o600))
	p := NewServer(net.Listen, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{Clock: newFakeClock()})
	t.Cleanup(func() { _ = p.Delete("web") })
	require.NoError(t, p.Restore(path))
	socket := controlSocket(t, p)
	ctx := context.Background()

	web, err := NewClient(socket, "web", held.Addr().String())
	require.NoError(t, err)
	up, err := web.Upstream(ctx, nil)
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1:7001", up)
	notes, err := web.Preflight(ctx, up, nil)
	require.NoError(t, err)
	require.Len(t, notes, 1)
	require.Contains(t, notes[0], "cannot listen on "+held.Addr().String())

	api, err := NewClient(socket, "api", "127.0.0.1:9002")
	require.NoError(t, err)
	_, err = api.Upstream(ctx, nil)
	require.ErrorIs(t, err, wire.ErrUnrestored)
	require.ErrorIs(t, err, deploy.ErrProxy)
	require.ErrorContains(t, err, "handoff proxy could not restore api from its state file")
	require.ErrorIs(t, api.Switch(ctx, "", "127.0.0.1:7003"), deploy.ErrProxy, "a first deploy does not overwrite the entry")

	shop, err := NewClient(socket, "shop", "127.0.0.1:9003")
	require.NoError(t, err)
	up, err = shop.Upstream(ctx, nil)
	require.NoError(t, err, "a named entry is not shop's")
	require.Empty(t, up)

	require.NoError(t, p.Delete("api"), "an entry kept is deleted by its name")
	_, err = api.Upstream(ctx, nil)
	require.NoError(t, err)
}

// An entry without a name may be any service's: none is taken for a
// first deploy while it is there.
func TestAnUnnamedEntryStopsFirstDeploys(t *testing.T) {
	path := filepath.Join(t.TempDir(), "proxy.json")
	require.NoError(t, os.WriteFile(path, []byte(`{"services": [{"name": 7}]}`), 0o600))
	p := NewServer(net.Listen, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{})
	require.NoError(t, p.Restore(path))
	shop, err := NewClient(controlSocket(t, p), "shop", "127.0.0.1:9003")
	require.NoError(t, err)
	_, err = shop.Upstream(context.Background(), nil)
	require.ErrorIs(t, err, wire.ErrUnrestored)
	require.ErrorContains(t, err, "which may be shop's")
}

// A change to a name the proxy holds only an unrestored entry for says
// so, not "no such service".
func TestAChangeToAnUnrestoredEntrySaysWhy(t *testing.T) {
	path := filepath.Join(t.TempDir(), "proxy.json")
	require.NoError(t, os.WriteFile(path, []byte(`{"services": [{"name": "api", "listen": "127.0.0.1:9002", "upstream": 7002}]}`), 0o600))
	p := NewServer(net.Listen, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{})
	require.NoError(t, p.Restore(path))
	_, err := NewControl(controlSocket(t, p), "api").Pause(context.Background(), 0, 0)
	require.ErrorContains(t, err, "422")
	require.ErrorContains(t, err, "could not be restored")
}
