package proxy

import (
	"fmt"
	"net/http"
	"strconv"

	"github.com/handoff-dev/handoff/internal/proxy/wire"
)

// MaxPage bounds a maintenance page, which every answer carries (and the
// control API reads at most 1 MiB of JSON).
const MaxPage = 512 << 10

// serveMaintenance answers a request with the service's maintenance page.
func serveMaintenance(w http.ResponseWriter, m *wire.MaintenanceState) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("Retry-After", strconv.Itoa(m.RetryAfter))
	w.WriteHeader(http.StatusServiceUnavailable)
	_, _ = w.Write([]byte(m.Page))
}

// Maintenance answers the service's requests with m (nil: ends it). It is
// saved first: it holds across a restart of the proxy.
func (p *Server) Maintenance(name string, m *wire.MaintenanceState) (ServiceState, error) {
	if m != nil && (m.Page == "" || len(m.Page) > MaxPage || m.RetryAfter < 0) {
		return ServiceState{}, fmt.Errorf("%w: a maintenance page must have a body of at most %d bytes and a Retry-After of 0 s or more", ErrBadInput, MaxPage)
	}
	return p.update(name, func(st *ServiceState) { st.Maintenance = m }, func(s *service) {
		s.maint.Store(m)
		if m != nil {
			p.log.Info("maintenance on", "service", name, "retry_after", m.RetryAfter, "allow", m.Allow)
		} else {
			p.log.Info("maintenance off", "service", name)
		}
	})
}
