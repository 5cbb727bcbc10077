package proxy

import (
	"fmt"
	"net/http"
	"slices"
	"strconv"
)

// MaintenanceState is a service's maintenance page, as the control API
// takes it and the state file keeps it.
type MaintenanceState struct {
	Page       string   `json:"page"`
	RetryAfter int      `json:"retry_after"` // seconds
	Allow      []string `json:"allow,omitempty"`
}

// MaxPage bounds a maintenance page, which every answer carries (and the
// control API reads at most 1 MiB of JSON).
const MaxPage = 512 << 10

func (m *MaintenanceState) allows(path string) bool { return slices.Contains(m.Allow, path) }

func (m *MaintenanceState) serve(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("Retry-After", strconv.Itoa(m.RetryAfter))
	w.WriteHeader(http.StatusServiceUnavailable)
	_, _ = w.Write([]byte(m.Page))
}

// Maintenance answers the service's requests with m (nil: ends it). It is
// saved first: it holds across a restart of the proxy.
func (p *Server) Maintenance(name string, m *MaintenanceState) (ServiceState, error) {
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
