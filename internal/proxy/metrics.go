package proxy

import (
	"net/http"
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are what `handoff proxy --metrics ADDR` serves to Prometheus
// (docs/metrics.md lists them). The per-request work is a counter and a
// histogram observation on children looked up once per target; what is
// in flight is read from the switch's own counts when scraped.
type Metrics struct {
	reg       *prometheus.Registry
	requests  *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	errors    *prometheus.CounterVec
	switches  *prometheus.CounterVec
	handovers prometheus.Counter

	// refs counts the targets of each (service, upstream): its series go
	// when the last is forgotten, so that they do not grow with every
	// deploy, and a rollback to an upstream still draining counts on.
	mu   sync.Mutex
	refs map[[2]string]int
}

// NewMetrics makes the metrics of server p (nil: none are kept).
func NewMetrics() *Metrics {
	m := &Metrics{
		reg:  prometheus.NewRegistry(),
		refs: map[[2]string]int{},
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "handoff_proxy_requests_total",
			Help: "Requests answered, by service, target (an endpoint of a release: the upstream it listens on) and status class (2xx, 3xx, 4xx, 5xx).",
		}, []string{"service", "target", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "handoff_proxy_request_duration_seconds",
			Help:    "Time from the request's arrival to the end of its answer, by service.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"service"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "handoff_proxy_upstream_errors_total",
			Help: "Requests the app did not answer (each answered 502 and logged), by service and target.",
		}, []string{"service", "target"}),
		switches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "handoff_proxy_switches_total",
			Help: "Switches of a service's target (one per deploy or rollback).",
		}, []string{"service"}),
		handovers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "handoff_proxy_handovers_total",
			Help: "Restarts (SIGHUP) this process took over from a previous one.",
		}),
	}
	m.reg.MustRegister(m.requests, m.duration, m.errors, m.switches, m.handovers,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the metrics in Prometheus's text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// watch adds what server p knows when scraped: requests in flight and held.
func (m *Metrics) watch(p *Server) {
	m.reg.MustRegister(&liveCollector{p: p})
}

// targetMetrics are one target's children, looked up once.
type targetMetrics struct {
	codes    [6]prometheus.Counter // by status / 100; [0]: anything else
	errors   prometheus.Counter
	duration prometheus.Observer

	m                 *Metrics
	service, upstream string
	once              sync.Once
}

func codeClass(i int) string {
	if i == 0 {
		return "other"
	}
	return strconv.Itoa(i) + "xx"
}

func (m *Metrics) forTarget(service, upstream string) *targetMetrics {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	m.refs[[2]string{service, upstream}]++
	m.mu.Unlock()
	tm := &targetMetrics{errors: m.errors.WithLabelValues(service, upstream), duration: m.duration.WithLabelValues(service), m: m, service: service, upstream: upstream}
	for i := range tm.codes {
		tm.codes[i] = m.requests.WithLabelValues(service, upstream, codeClass(i))
	}
	return tm
}

// forget lets go of the target's series: deleted with the last target of
// their service and upstream.
func (tm *targetMetrics) forget() {
	if tm == nil {
		return
	}
	tm.once.Do(func() {
		m, key := tm.m, [2]string{tm.service, tm.upstream}
		m.mu.Lock()
		defer m.mu.Unlock()
		if m.refs[key]--; m.refs[key] > 0 {
			return
		}
		delete(m.refs, key)
		for i := range tm.codes {
			m.requests.DeleteLabelValues(tm.service, tm.upstream, codeClass(i))
		}
		m.errors.DeleteLabelValues(tm.service, tm.upstream)
	})
}

// deleted forgets the series of a deleted service.
func (m *Metrics) deleted(service string) {
	if m != nil {
		m.duration.DeleteLabelValues(service)
		m.switches.DeleteLabelValues(service)
	}
}

func (tm *targetMetrics) observe(status int, seconds float64) {
	if tm == nil {
		return
	}
	i := status / 100
	if i < 1 || i > 5 {
		i = 0
	}
	tm.codes[i].Inc()
	tm.duration.Observe(seconds)
}

func (tm *targetMetrics) upstreamError() {
	if tm != nil {
		tm.errors.Inc()
	}
}

func (m *Metrics) switched(service string) {
	if m != nil {
		m.switches.WithLabelValues(service).Inc()
	}
}

// HandedOver counts a restart this process took over.
func (m *Metrics) HandedOver() {
	if m != nil {
		m.handovers.Inc()
	}
}

// liveCollector reads the switch's own counts at scrape time, so that
// nothing is added to a request's path for them.
type liveCollector struct{ p *Server }

var (
	inFlightDesc = prometheus.NewDesc("handoff_proxy_requests_in_flight",
		"Requests running now, by service and target (a draining target's count falls to 0 before its release stops).",
		[]string{"service", "target"}, nil)
	heldDesc = prometheus.NewDesc("handoff_proxy_requests_held",
		"Requests a pause holds now, by service.", []string{"service"}, nil)
	pausedDesc = prometheus.NewDesc("handoff_proxy_paused",
		"1 while the service is paused, else 0.", []string{"service"}, nil)
	maintenanceDesc = prometheus.NewDesc("handoff_proxy_maintenance",
		"1 while the service answers with its maintenance page, else 0.", []string{"service"}, nil)
	listeningDesc = prometheus.NewDesc("handoff_proxy_listening",
		"1 while the service listens; 0 while its address cannot be listened on (the proxy tries again).", []string{"service"}, nil)
)

func (c *liveCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- inFlightDesc
	ch <- heldDesc
	ch <- pausedDesc
	ch <- maintenanceDesc
	ch <- listeningDesc
}

func (c *liveCollector) Collect(ch chan<- prometheus.Metric) {
	for _, st := range c.p.List() {
		if st.Unrestored != "" {
			continue
		}
		ch <- prometheus.MustNewConstMetric(listeningDesc, prometheus.GaugeValue, boolValue(st.NotListening == nil), st.Name)
		// One series per endpoint: an endpoint taking requests again while
		// its old target still drains is counted once, with both.
		perEndpoint, order := map[string]int64{}, []string{}
		count := func(endpoint string, n int64) {
			if _, ok := perEndpoint[endpoint]; !ok {
				order = append(order, endpoint)
			}
			perEndpoint[endpoint] += n
		}
		for _, b := range st.Route {
			if b.Weight > 0 {
				for _, e := range b.Endpoints {
					count(e.Endpoint, e.InFlight)
				}
			}
		}
		for _, d := range st.Draining {
			count(d.Upstream, d.InFlight)
		}
		for _, e := range order {
			ch <- prometheus.MustNewConstMetric(inFlightDesc, prometheus.GaugeValue, float64(perEndpoint[e]), st.Name, e)
		}
		ch <- prometheus.MustNewConstMetric(heldDesc, prometheus.GaugeValue, float64(st.Held), st.Name)
		ch <- prometheus.MustNewConstMetric(pausedDesc, prometheus.GaugeValue, boolValue(st.Paused), st.Name)
		ch <- prometheus.MustNewConstMetric(maintenanceDesc, prometheus.GaugeValue, boolValue(st.Maintenance != nil), st.Name)
	}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
