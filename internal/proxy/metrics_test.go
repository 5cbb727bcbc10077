package proxy

import (
	"fmt"
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

// A target's series go when the target is forgotten: 300 deploys leave
// as many series as 3 do.
func TestMetricsOfForgottenTargetsAreDeleted(t *testing.T) {
	m := NewMetrics()
	p := NewServer(net.Listen, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{Metrics: m})
	t.Cleanup(func() { _ = p.Delete("web") })
	_, err := p.Put("web", freeAddr(t), "127.0.0.1:1000")
	require.NoError(t, err)
	for i := 1; i <= 300; i++ {
		_, err := p.Switch("web", "", fmt.Sprintf("127.0.0.1:%d", 1000+i))
		require.NoError(t, err)
	}
	require.LessOrEqual(t, targetSeries(t, m), 2*7, "the current target and one draining")
}

// A rollback to an upstream still draining counts into the same series
// as before, and they stay when the draining target is forgotten.
func TestARollbackToADrainingUpstreamKeepsItsSeries(t *testing.T) {
	m := NewMetrics()
	p := NewServer(net.Listen, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{Metrics: m})
	t.Cleanup(func() { _ = p.Delete("web") })
	a, b := newBackend(t, "a"), newBackend(t, "b")
	listen := freeAddr(t)
	_, err := p.Put("web", listen, a.addr())
	require.NoError(t, err)
	fetchOK := func() {
		code, _, _ := fetch(t, "http://"+listen+"/")
		require.Equal(t, 200, code)
	}
	fetchOK()
	_, err = p.Switch("web", a.addr(), b.addr())
	require.NoError(t, err)
	_, err = p.Switch("web", b.addr(), a.addr()) // back to a, whose old target still drains
	require.NoError(t, err)
	fetchOK()
	_, err = p.Switch("web", a.addr(), b.addr()) // forgets the drained-out a and b targets
	require.NoError(t, err)
	_, err = p.Switch("web", b.addr(), a.addr())
	require.NoError(t, err)
	fetchOK()
	require.Contains(t, scrape(m), `handoff_proxy_requests_total{code="2xx",service="web",target="`+a.addr()+`"} 3`)
}

func scrape(m *Metrics) string {
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	return rec.Body.String()
}

// targetSeries counts the series labelled with a target that the
// registry keeps (not those read live at scrape time).
func targetSeries(t *testing.T, m *Metrics) int {
	t.Helper()
	families, err := m.reg.Gather()
	require.NoError(t, err)
	n := 0
	for _, f := range families {
		if f.GetName() == "handoff_proxy_requests_in_flight" {
			continue
		}
		for _, s := range f.GetMetric() {
			for _, l := range s.GetLabel() {
				if l.GetName() == "target" {
					n++
				}
			}
		}
	}
	return n
}
