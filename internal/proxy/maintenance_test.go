package proxy

import (
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/proxy/wire"

	"github.com/handoff-dev/handoff/internal/deploy"
)

func fetch(t *testing.T, url string) (int, http.Header, string) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

// A maintenance page answers every path but the allowed ones, is kept in
// the state file across a restart, and off serves the app again.
func TestMaintenancePageIsServedSavedAndTakenAway(t *testing.T) {
	p, path, _, listen := savingOne(t)

	m := deploy.Maintenance{Service: "web", Message: "Back at 10 <b>sharp</b>", RetryAfter: 90 * time.Second, Allow: []string{"/healthz"}}
	_, err := p.Maintenance("web", &wire.MaintenanceState{Page: m.Body(), RetryAfter: m.RetryAfterSeconds(), Allow: m.Allow})
	require.NoError(t, err)
	code, h, body := fetch(t, "http://"+listen+"/orders?id=1")
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Equal(t, "90", h.Get("Retry-After"))
	require.Contains(t, body, "Back at 10 &lt;b&gt;sharp&lt;/b&gt;", "the message is escaped")
	code, _, body = fetch(t, "http://"+listen+"/healthz")
	require.Equal(t, http.StatusOK, code, "an allowed path reaches the app")
	require.True(t, strings.HasPrefix(body, "a "), body)

	// A restarted proxy finds it in the state file.
	saved := readState(t, path)
	require.NotNil(t, saved[0].Maintenance)
	require.NoError(t, p.Delete("web"))
	q := NewServer(net.Listen, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{Save: func(st []ServiceState) error { return SaveState(path, st) }})
	require.NoError(t, SaveState(path, saved))
	require.NoError(t, q.Restore(path))
	t.Cleanup(func() { _ = q.Delete("web") })
	code, _, _ = fetch(t, "http://"+listen+"/")
	require.Equal(t, http.StatusServiceUnavailable, code)

	_, err = q.Maintenance("web", nil)
	require.NoError(t, err)
	code, _, body = fetch(t, "http://"+listen+"/")
	require.Equal(t, http.StatusOK, code)
	require.True(t, strings.HasPrefix(body, "a "), body)
	require.Nil(t, readState(t, path)[0].Maintenance)

	_, err = q.Maintenance("web", &wire.MaintenanceState{})
	require.ErrorIs(t, err, ErrBadInput, "an empty page is refused")
}
