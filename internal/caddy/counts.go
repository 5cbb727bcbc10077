package caddy

import (
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"github.com/handoff-dev/handoff/internal/deploy"
)

// Caddy counts requests in its Prometheus metrics on the admin API's
// /metrics, once HTTP metrics are turned on (they are off by default):
//
//	caddy_http_requests_total{server, handler[, host]}
//	caddy_http_request_duration_seconds{server, handler, code, method[, host]}
//	caddy_http_response_duration_seconds{...}  (time to the response's headers)
//
// server is the name of the HTTP server in Caddy's JSON (srv0); handler
// is not the reverse_proxy but the top-level route's handler that leads to
// it: "subroute" for every site block of a Caddyfile. host (per_host only)
// is the request's Host header, lowercased, when it is exactly one of a
// site's hosts, and "_other" otherwise (a Host with a port, say). So Caddy
// counts a site as a whole, never one upstream apart from another: the
// counts are the route's, whichever endpoints serve it (PerEndpoint false).
//
// Caddy 2.11 keeps these counts per loaded config: every reload (every
// switch of handoff's is one) starts them again at 0, and its
// caddy_config_last_reload_success_timestamp_seconds names the config
// they belong to. Caddy 2.6 counts on across reloads, and starts again
// only with a new process (process_start_time_seconds).

var _ deploy.Counter = (*Proxy)(nil)

// Counts reads Caddy's HTTP metrics of the route's site.
func (p *Proxy) Counts(ctx context.Context) (deploy.Counts, error) {
	r, _, err := p.readCounts(ctx)
	if err != nil {
		return nil, err
	}
	return r, nil
}

// PerEndpoint: Caddy counts the route's site as a whole.
func (p *Proxy) PerEndpoint() bool { return false }

// CanCount says, before a deploy that watches starts anything, whether
// Counts can tell what the route's users get: Caddy's HTTP metrics are
// on, they tell the route's site from the others of its server, and its
// requests are not all counted under host "_other". Its errors are
// deploy.ErrConfig and say what to change.
func (p *Proxy) CanCount(ctx context.Context) error {
	r, site, err := p.readCounts(ctx)
	if err != nil {
		return err
	}
	if site.byHost() && r.requests() == 0 && r.other > 0 {
		return fmt.Errorf("%w: Caddy counts every request of %s under host \"_other\": per_host names a request's host only when its Host header is exactly one of the site's (%s), without a port; add `observe_catchall_hosts` to the Caddyfile's global `metrics { per_host }` and reload Caddy", deploy.ErrConfig, p.route, strings.Join(site.hosts, ", "))
	}
	return nil
}

// readCounts reads Caddy's config, to know where its metrics count the
// route, and its metrics.
func (p *Proxy) readCounts(ctx context.Context) (*caddyCounts, countedSite, error) {
	cfg, _, err := p.config(ctx)
	if err != nil {
		return nil, countedSite{}, err
	}
	site, err := p.countedSite(cfg)
	if err != nil {
		return nil, countedSite{}, err
	}
	fams, err := p.metrics(ctx)
	if err != nil {
		return nil, countedSite{}, err
	}
	perConfig := fams["caddy_config_last_reload_success_timestamp_seconds"] != nil
	if !site.metricsOn && !site.seen(fams) {
		return nil, countedSite{}, p.metricsOff(perConfig)
	}
	if mixed := site.mixed(); mixed != "" {
		return nil, countedSite{}, p.sitesMixed(site, mixed, perConfig)
	}
	return site.read(fams), site, nil
}

// metrics reads and parses Caddy's /metrics.
func (p *Proxy) metrics(ctx context.Context) (map[string]*dto.MetricFamily, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.admin.base+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := p.admin.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: GET /metrics at %s: %v (is Caddy running with its admin API there? set --caddy-admin)", deploy.ErrProxyUnreached, p.admin.address, unwrapURL(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, &apiError{method: http.MethodGet, path: "/metrics", status: resp.StatusCode, msg: caddyMessage(body)}
	}
	var parser expfmt.TextParser
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("%w: read Caddy's /metrics at %s: %v", deploy.ErrProxy, p.admin.address, err)
	}
	return fams, nil
}

// metricsOff is the error for a Caddy whose HTTP metrics are off, with
// the Caddyfile lines that turn them on in its version: the global option
// where counts are kept per config (2.11), the servers option before.
func (p *Proxy) metricsOff(perConfig bool) error {
	turnOn := "add `metrics { per_host }` to the Caddyfile's global options"
	if !perConfig {
		turnOn = "add `metrics` to the `servers { }` block of the Caddyfile's global options (this Caddy, like 2.6, has no global `metrics` option; newer ones take `metrics { per_host }`)"
	}
	return fmt.Errorf("%w: watch: judges the new release by Caddy's HTTP metrics, and %s has them off: %s and reload Caddy; or put `handoff proxy` in front (proxy: handoff)", deploy.ErrConfig, p.Describe(), turnOn)
}

// sitesMixed is the error for counts Caddy keeps for several sites together.
func (p *Proxy) sitesMixed(site countedSite, others string, perConfig bool) error {
	fix := "add `per_host` to the Caddyfile's global `metrics` option (`metrics { per_host }`) and reload Caddy"
	if !perConfig {
		fix = "this Caddy, like 2.6, has no per_host: give the site a port of its own, or upgrade Caddy and turn on `metrics { per_host }`"
	}
	if site.perHost {
		fix = "Caddy tells sites apart by host, and the route's reverse_proxy is reached for any host: give its site a host, or a port of its own"
	}
	return fmt.Errorf("%w: watch: Caddy's metrics count the requests of %s together with those of %s (one server, and no host to tell them apart); %s, or put `handoff proxy` in front (proxy: handoff)", deploy.ErrConfig, p.route, others, fix)
}

// countedSite is where Caddy's metrics count the route's requests: the
// servers and top-level routes that lead to its reverse_proxy handlers.
type countedSite struct {
	servers   map[string]*countedServer
	hosts     []string // the site's hosts, lowercased; none: any host
	perHost   bool     // the counts carry a host label
	metricsOn bool     // Caddy's config turns metrics on for every server of the route
}

// countedServer is one server of the route and what its counts are labelled.
type countedServer struct {
	routes  []int    // the top-level routes that lead to the route's handlers
	handler []string // their handler label, in order of preference
	others  []string // the sites of other top-level routes counted under the same label
	label   string   // the label the counts carry (one of handler), once read
}

// countedSite finds the route's handlers in cfg (by site host, or by the
// upstream they dial) and the counts that are theirs.
func (p *Proxy) countedSite(cfg map[string]any) (countedSite, error) {
	all := findProxies(cfg)
	var hs []proxyHandler
	for _, h := range all {
		if p.route.matches(h, nil) {
			hs = append(hs, h)
		}
	}
	if len(hs) == 0 {
		if p.route.byUpstream() {
			return countedSite{}, fmt.Errorf("%w: watch: Caddy's counts are found through the reverse_proxy that dials %s, and none does now (the service's containers took its place); set caddy.route to the site's host", deploy.ErrConfig, p.route)
		}
		_, err := selectHandlers(all, p.route, nil)
		return countedSite{}, err
	}
	app, _ := dig(cfg, "apps", "http").(map[string]any)
	servers, _ := app["servers"].(map[string]any)
	appMetrics, _ := app["metrics"].(map[string]any)
	site := countedSite{servers: map[string]*countedServer{}, perHost: appMetrics["per_host"] == true, metricsOn: true}
	for _, h := range hs {
		for _, host := range h.hosts {
			host = strings.ToLower(strings.Trim(host, "[]"))
			if !slices.Contains(site.hosts, host) {
				site.hosts = append(site.hosts, host)
			}
		}
		name, route, handler, ok := topLevel(h.path)
		srv, _ := servers[name].(map[string]any)
		if _, on := srv["metrics"]; appMetrics == nil && !on {
			site.metricsOn = false
		}
		cs := site.servers[name]
		if cs == nil {
			cs = &countedServer{}
			site.servers[name] = cs
		}
		if !ok { // a named route: its invoke may be anywhere
			continue
		}
		routes, _ := srv["routes"].([]any)
		if route >= len(routes) {
			continue
		}
		top, _ := routes[route].(map[string]any)
		handle, _ := top["handle"].([]any)
		// Caddy 2.6 counts each handler of a top-level route under its own
		// name; 2.11 counts the route once, under its first handler's.
		for _, i := range []int{handler, 0} {
			if l := handlerName(handle, i); l != "" && !slices.Contains(cs.handler, l) {
				cs.handler = append(cs.handler, l)
			}
		}
		if !slices.Contains(cs.routes, route) {
			cs.routes = append(cs.routes, route)
		}
	}
	for name, cs := range site.servers {
		srv, _ := servers[name].(map[string]any)
		routes, _ := srv["routes"].([]any)
		for i, r := range routes {
			route, _ := r.(map[string]any)
			handle, _ := route["handle"].([]any)
			if slices.Contains(cs.routes, i) || !slices.ContainsFunc(cs.handler, func(l string) bool {
				return slices.ContainsFunc(handle, func(h any) bool { return dig(h, "handler") == l })
			}) {
				continue
			}
			other := "the route for any host at /config/apps/http/servers/" + name + "/routes/" + strconv.Itoa(i)
			if hosts := routeHosts(route); len(hosts) > 0 {
				other = "site " + strings.Join(hosts, ",")
			}
			cs.others = append(cs.others, other)
		}
	}
	return site, nil
}

// topLevel cuts a handler's admin path into its server, the top-level
// route that leads to it and that route's handler; ok false for a named
// route's handler.
func topLevel(path string) (server string, route, handler int, ok bool) {
	parts := strings.Split(strings.TrimPrefix(path, "/config/apps/http/servers/"), "/")
	server = parts[0]
	if len(parts) < 5 || parts[1] != "routes" || parts[3] != "handle" {
		return server, 0, 0, false
	}
	route, err1 := strconv.Atoi(parts[2])
	handler, err2 := strconv.Atoi(parts[4])
	return server, route, handler, err1 == nil && err2 == nil
}

func handlerName(handle []any, i int) string {
	if i >= len(handle) {
		return ""
	}
	name, _ := dig(handle[i], "handler").(string)
	return name
}

// byHost says whether the counts are told apart by the site's host.
func (s countedSite) byHost() bool { return s.perHost && len(s.hosts) > 0 }

// mixed names the other sites counted with the route's, when no host
// tells them apart.
func (s countedSite) mixed() string {
	if s.byHost() {
		return ""
	}
	var others []string
	for _, cs := range s.servers {
		others = append(others, cs.others...)
	}
	slices.Sort(others)
	return strings.Join(others, ", ")
}

// seen says whether Caddy counted any request of the route's servers:
// metrics are on, whatever the config seemed to say (Caddy 2.11 turns a
// server's `metrics` on for every server).
func (s countedSite) seen(fams map[string]*dto.MetricFamily) bool {
	for _, m := range fams["caddy_http_requests_total"].GetMetric() {
		if s.servers[label(m, "server")] != nil {
			return true
		}
	}
	return false
}

// onRoute says whether a series counts the top-level route that leads to
// the route's handlers: one of its servers, under its handler label.
func (s countedSite) onRoute(m *dto.Metric) bool {
	cs := s.servers[label(m, "server")]
	return cs != nil && (cs.label == "" || label(m, "handler") == cs.label)
}

// ours says whether a series is the route's: on its route, and of one of
// its site's hosts when the counts tell hosts apart.
func (s countedSite) ours(m *dto.Metric) bool {
	return s.onRoute(m) && (!s.byHost() || slices.Contains(s.hosts, hostname(label(m, "host"))))
}

// settle picks each server's handler label: the first of its candidates
// that counted anything (2.6 counts under the handler that holds the
// proxy, 2.11 under the route's first); the first when none did yet.
func (s countedSite) settle(requests []*dto.Metric) {
	for _, cs := range s.servers {
		cs.label = ""
		for _, l := range cs.handler {
			if slices.ContainsFunc(requests, func(m *dto.Metric) bool { return s.servers[label(m, "server")] == cs && label(m, "handler") == l }) {
				cs.label = l
				break
			}
		}
		if cs.label == "" && len(cs.handler) > 0 {
			cs.label = cs.handler[0]
		}
	}
}

// read keeps the route's series of one reading of /metrics.
func (s countedSite) read(fams map[string]*dto.MetricFamily) *caddyCounts {
	requests := fams["caddy_http_requests_total"].GetMetric()
	s.settle(requests)
	c := &caddyCounts{series: map[seriesKey]*tally{}}
	c.generation[0] = gauge(fams["process_start_time_seconds"])
	c.generation[1] = gauge(fams["caddy_config_last_reload_success_timestamp_seconds"])
	at := func(m *dto.Metric) *tally {
		k := seriesKey{label(m, "server"), label(m, "handler"), label(m, "host")}
		if c.series[k] == nil {
			c.series[k] = &tally{}
		}
		return c.series[k]
	}
	for _, m := range requests {
		switch {
		case s.ours(m):
			at(m).requests += m.GetCounter().GetValue()
		case s.byHost() && s.onRoute(m) && label(m, "host") == "_other":
			c.other += m.GetCounter().GetValue()
		}
	}
	for _, m := range fams["caddy_http_request_duration_seconds"].GetMetric() {
		if s.ours(m) {
			t, n := at(m), float64(m.GetHistogram().GetSampleCount())
			t.answered += n
			if strings.HasPrefix(label(m, "code"), "5") {
				t.status5xx += n
			}
		}
	}
	for _, m := range fams["caddy_http_response_duration_seconds"].GetMetric() {
		if s.ours(m) {
			at(m).latency.add(m.GetHistogram())
		}
	}
	return c
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func gauge(f *dto.MetricFamily) float64 {
	if ms := f.GetMetric(); len(ms) > 0 {
		return ms[0].GetGauge().GetValue()
	}
	return 0
}

// hostname is a host label without its port, as a site's hosts are written.
func hostname(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return strings.Trim(hostport, "[]")
}

// caddyCounts is one reading of Caddy's counts of the route's site
// (deploy.Counts).
type caddyCounts struct {
	// generation names the counts: a new process, or (Caddy 2.11) a new
	// config, begins them again at 0.
	generation [2]float64
	series     map[seriesKey]*tally
	other      float64 // requests of the route's servers counted under host "_other"
}

type seriesKey struct{ server, handler, host string }

// Since is what the route's site got between earlier and c. endpoints
// are not looked at: Caddy counts the site as a whole, which is what
// every endpoint of the route got together (PerEndpoint). Counts of
// another generation than earlier's began again after it: all of them
// are since earlier; so are those of a series whose counts went down. So
// across a reload of Caddy 2.11 a window holds only what came after the
// reload: Caddy kept nothing of before.
func (c *caddyCounts) Since(earlier deploy.Counts, _ []string) deploy.Window {
	before, _ := earlier.(*caddyCounts)
	if before != nil && before.generation != c.generation {
		before = nil
	}
	var sum tally
	for k, t := range c.series {
		d := *t
		if before != nil && before.series[k] != nil {
			d = t.since(*before.series[k])
		}
		sum = sum.plus(d)
	}
	return sum.window()
}

func (c *caddyCounts) requests() float64 {
	var n float64
	for _, t := range c.series {
		n += t.requests
	}
	return n
}

// tally is one series' counts (or a sum of them, or a difference).
type tally struct {
	requests  float64 // caddy_http_requests_total: every request the route ended
	answered  float64 // those whose status Caddy recorded
	status5xx float64 // of them with a 5xx
	latency   buckets // time to the response's headers
}

// since is t less earlier, a reading of the same series before; all of
// t when any count went down (they began again).
func (t tally) since(earlier tally) tally {
	if earlier.requests > t.requests || earlier.answered > t.answered || earlier.status5xx > t.status5xx || !t.latency.covers(earlier.latency) {
		return t
	}
	return tally{requests: t.requests - earlier.requests, answered: t.answered - earlier.answered,
		status5xx: t.status5xx - earlier.status5xx, latency: t.latency.less(earlier.latency)}
}

func (t tally) plus(o tally) tally {
	t.requests += o.requests
	t.answered += o.answered
	t.status5xx += o.status5xx
	t.latency = t.latency.plus(o.latency)
	return t
}

// window is t as the analysis judges it. A request Caddy ended without
// recording a status is an error: Caddy 2.6 records none for a request
// that ends in a handler's error (its own 502 when the upstream cannot be
// reached, a client that left), 2.11 none for an error that carries no
// status.
func (t tally) window() deploy.Window {
	unrecorded := max(0, t.requests-t.answered)
	return deploy.Window{
		Requests: int(t.requests),
		Errors:   int(min(t.requests, t.status5xx+unrecorded)),
		P50:      t.latency.quantile(0.50),
		P99:      t.latency.quantile(0.99),
	}
}

// buckets is a Prometheus histogram: cumulative[i] durations of at most
// bounds[i] seconds, count in all (above the last bound too).
type buckets struct {
	bounds     []float64
	cumulative []float64
	count      float64
}

// add sums h into b; a histogram of other bounds than b's is left out.
func (b *buckets) add(h *dto.Histogram) {
	var bounds, cumulative []float64
	for _, bk := range h.GetBucket() {
		if !math.IsInf(bk.GetUpperBound(), +1) {
			bounds = append(bounds, bk.GetUpperBound())
			cumulative = append(cumulative, float64(bk.GetCumulativeCount()))
		}
	}
	*b = b.plus(buckets{bounds: bounds, cumulative: cumulative, count: float64(h.GetSampleCount())})
}

func (b buckets) plus(o buckets) buckets {
	switch {
	case o.count == 0:
		return b
	case b.bounds == nil:
		return buckets{bounds: o.bounds, cumulative: slices.Clone(o.cumulative), count: o.count}
	case !slices.Equal(b.bounds, o.bounds):
		return b
	}
	b.cumulative = slices.Clone(b.cumulative)
	for i, n := range o.cumulative {
		b.cumulative[i] += n
	}
	b.count += o.count
	return b
}

// covers says whether b could have grown from earlier: the same bounds,
// no count lower.
func (b buckets) covers(earlier buckets) bool {
	if earlier.count == 0 {
		return true
	}
	if !slices.Equal(b.bounds, earlier.bounds) || earlier.count > b.count {
		return false
	}
	for i, n := range earlier.cumulative {
		if n > b.cumulative[i] {
			return false
		}
	}
	return true
}

func (b buckets) less(earlier buckets) buckets {
	if earlier.count == 0 {
		return b
	}
	d := buckets{bounds: b.bounds, cumulative: slices.Clone(b.cumulative), count: b.count - earlier.count}
	for i, n := range earlier.cumulative {
		d.cumulative[i] -= n
	}
	return d
}

// quantile estimates the q-quantile (0 < q ≤ 1) of the durations b counts,
// interpolated linearly within its bucket (the first starts at 0), as
// handoff proxy's histograms are read (wire.Histogram.Quantile). Above
// every bound it is the last bound: a lower bound of the truth. 0 when b
// counts nothing.
func (b buckets) quantile(q float64) time.Duration {
	if b.count == 0 || len(b.bounds) == 0 {
		return 0
	}
	rank := q * b.count
	lower, below := 0.0, 0.0
	for i, upper := range b.bounds {
		in := b.cumulative[i] - below
		if in > 0 && b.cumulative[i] >= rank {
			frac := math.Max(0, (rank-below)/in)
			return seconds(lower + (upper-lower)*frac)
		}
		lower, below = upper, b.cumulative[i]
	}
	return seconds(b.bounds[len(b.bounds)-1])
}

func seconds(s float64) time.Duration { return time.Duration(math.Round(s * float64(time.Second))) }
