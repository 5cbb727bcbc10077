package deploy

import (
	"net"
	"slices"
	"strconv"
	"strings"
)

// Route is where a service's requests go: a weighted list of releases,
// each a set of endpoints the proxy dials (host:port). Blue/green is
// [new:100], a canary [old:90, new:10]; a release of weight 0 gets no new
// requests (it drains). An empty route sends nowhere: no route yet.
type Route []Backend

// Backend is one release in a route.
type Backend struct {
	Release   string   // e.g. "web-3"; "" when read back from a proxy that cannot tell
	Endpoints []string // host:port
	Weight    int      // share of new requests, relative to the others; 0: none (draining)
}

// Only is the route that sends every request to release's endpoints; no
// route when it has none ("" is none: a container not published).
func Only(release string, endpoints ...string) Route {
	endpoints = slices.DeleteFunc(slices.Clone(endpoints), func(e string) bool { return e == "" })
	if len(endpoints) == 0 {
		return nil
	}
	return Route{{Release: release, Endpoints: endpoints, Weight: 100}}
}

// Endpoints lists every endpoint of the route, weight 0 included, in order.
func (r Route) Endpoints() []string {
	var out []string
	for _, b := range r {
		out = append(out, b.Endpoints...)
	}
	return out
}

// Serving lists the endpoints that get new requests (weight above 0).
func (r Route) Serving() []string {
	var out []string
	for _, b := range r {
		if b.Weight > 0 {
			out = append(out, b.Endpoints...)
		}
	}
	return out
}

// Has says whether endpoint is one of the route's, of any weight.
func (r Route) Has(endpoint string) bool {
	return slices.ContainsFunc(r.Endpoints(), func(e string) bool { return SameUpstream(e, endpoint) })
}

// shares is what each endpoint receives of new requests, as a fraction of
// the whole: a release's weight split evenly over its endpoints. Endpoints
// are keyed as SameUpstream compares them.
func (r Route) shares() map[string]float64 {
	total := 0
	for _, b := range r {
		if len(b.Endpoints) > 0 {
			total += b.Weight
		}
	}
	out := map[string]float64{}
	for _, b := range r {
		for _, e := range b.Endpoints {
			k := endpointKey(e)
			if _, ok := out[k]; !ok {
				out[k] = 0
			}
			if total > 0 {
				out[k] += float64(b.Weight) / float64(total) / float64(len(b.Endpoints))
			}
		}
	}
	return out
}

// endpointKey spells an endpoint so that two SameUpstream ones are equal:
// every loopback host is one.
func endpointKey(e string) string {
	if host, port, err := net.SplitHostPort(e); err == nil && isLoopback(host) {
		return "loopback:" + port
	}
	return e
}

// Same says whether a and b send the same share of new requests to each
// endpoint, and have the same endpoints (a weight-0 one included): release
// names and how the endpoints are grouped are ignored, so that a route
// read back from a proxy that keeps only endpoints and weights equals the
// one written to it.
func Same(a, b Route) bool {
	sa, sb := a.shares(), b.shares()
	if len(sa) != len(sb) {
		return false
	}
	for k, v := range sa {
		w, ok := sb[k]
		if !ok || diff(v, w) > 1e-9 {
			return false
		}
	}
	return true
}

func diff(a, b float64) float64 {
	if a > b {
		return a - b
	}
	return b - a
}

// String is the route for messages: "web-3 (127.0.0.1:40001):100", a
// canary "web-3 (…):90, web-4 (…):10"; "no route" when empty.
func (r Route) String() string {
	if len(r) == 0 {
		return "no route"
	}
	parts := make([]string, 0, len(r))
	for _, b := range r {
		eps := strings.Join(b.Endpoints, ", ")
		if b.Release != "" {
			eps = b.Release + " (" + eps + ")"
		}
		parts = append(parts, eps+":"+strconv.Itoa(b.Weight))
	}
	return strings.Join(parts, ", ")
}
