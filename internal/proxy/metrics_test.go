package proxy

import (
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The metrics count requests by service, target and status class, upstream
// errors and switches, and read what is in flight when scraped.
func TestMetricsCountWhatTheSwitchDoes(t *testing.T) {
	m := NewMetrics()
	p := NewServer(net.Listen, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{Metrics: m, DialRetry: 1})
	t.Cleanup(func() { _ = p.Delete("web") })
	a := newBackend(t, "a")
	listen := freeAddr(t)
	_, err := p.Put("web", listen, a.addr())
	require.NoError(t, err)
	for range 3 {
		code, _, _ := fetch(t, "http://"+listen+"/")
		require.Equal(t, 200, code)
	}
	dead := freeAddr(t) // nothing listens there: a 502
	_, err = p.Switch("web", a.addr(), dead)
	require.NoError(t, err)
	code, _, _ := fetch(t, "http://"+listen+"/")
	require.Equal(t, http.StatusBadGateway, code)

	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	text := rec.Body.String()
	for _, want := range []string{
		`handoff_proxy_requests_total{code="2xx",service="web",target="` + a.addr() + `"} 3`,
		`handoff_proxy_requests_total{code="5xx",service="web",target="` + dead + `"} 1`,
		`handoff_proxy_upstream_errors_total{service="web",target="` + dead + `"} 1`,
		`handoff_proxy_switches_total{service="web"} 1`,
		`handoff_proxy_request_duration_seconds_count{service="web"} 4`,
		`handoff_proxy_requests_in_flight{service="web",target="` + dead + `"} 0`,
		`handoff_proxy_paused{service="web"} 0`,
		`handoff_proxy_maintenance{service="web"} 0`,
		`handoff_proxy_handovers_total 0`,
	} {
		require.True(t, strings.Contains(text, want), "missing %s in:\n%s", want, text)
	}
}
