package caddy

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"

	"github.com/handoff-dev/handoff/internal/deploy"
)

// proxyHandler is one reverse_proxy handler found in Caddy's JSON config.
type proxyHandler struct {
	path    string   // admin path of the handler, "/config/apps/http/servers/srv0/routes/0/handle/0"
	hosts   []string // host matchers that lead to it, outer to inner
	dials   []string // its static upstreams
	handler map[string]any
}

// findProxies walks every HTTP server's routes, subroutes included, and
// returns the reverse_proxy handlers with the hosts that lead to them.
// Caddyfile-made configs carry no @id, so this is how a route is found.
func findProxies(cfg map[string]any) []proxyHandler {
	var out []proxyHandler
	servers, _ := dig(cfg, "apps", "http", "servers").(map[string]any)
	names := make([]string, 0, len(servers))
	for name := range servers {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		srv, _ := servers[name].(map[string]any)
		routes, _ := srv["routes"].([]any)
		out = walkRoutes(out, routes, "/config/apps/http/servers/"+name+"/routes", nil)
	}
	return out
}

func walkRoutes(out []proxyHandler, routes []any, path string, hosts []string) []proxyHandler {
	for i, r := range routes {
		route, _ := r.(map[string]any)
		rpath := path + "/" + strconv.Itoa(i)
		rhosts := append(slices.Clip(hosts), routeHosts(route)...)
		handle, _ := route["handle"].([]any)
		for j, h := range handle {
			handler, _ := h.(map[string]any)
			hpath := rpath + "/handle/" + strconv.Itoa(j)
			switch handler["handler"] {
			case "reverse_proxy":
				out = append(out, proxyHandler{path: hpath, hosts: rhosts, dials: dials(handler), handler: handler})
			case "subroute":
				sub, _ := handler["routes"].([]any)
				out = walkRoutes(out, sub, hpath+"/routes", rhosts)
			}
		}
	}
	return out
}

func routeHosts(route map[string]any) []string {
	var hosts []string
	matchers, _ := route["match"].([]any)
	for _, m := range matchers {
		set, _ := m.(map[string]any)
		list, _ := set["host"].([]any)
		for _, h := range list {
			if s, ok := h.(string); ok {
				hosts = append(hosts, s)
			}
		}
	}
	return hosts
}

func dials(handler map[string]any) []string {
	var out []string
	ups, _ := handler["upstreams"].([]any)
	for _, u := range ups {
		m, _ := u.(map[string]any)
		if d, ok := m["dial"].(string); ok {
			out = append(out, d)
		}
	}
	return out
}

func dig(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

// Route names the reverse_proxy a service is behind: a site host
// ("api.example.com") or the upstream it points at ("localhost:8000").
type Route string

// byUpstream says whether the route is given as an upstream address.
func (r Route) byUpstream() bool {
	_, port, err := net.SplitHostPort(string(r))
	return err == nil && port != ""
}

// selectHandlers picks the handlers the route names. known are the
// upstreams of the service's own containers: after the first deploy the
// route's upstream is one of them, no longer the address the user gave.
// A site host names its one reverse_proxy; an upstream names every
// reverse_proxy that dials it, switched together. They must agree on one
// upstream.
func selectHandlers(all []proxyHandler, route Route, known []string) ([]proxyHandler, error) {
	var found []proxyHandler
	for _, h := range all {
		if route.matches(h, known) {
			found = append(found, h)
		}
	}
	if len(found) == 0 {
		return nil, fmt.Errorf("%w: no reverse_proxy for %s in Caddy's config (it has: %s); set --caddy-route to a site host or the current upstream", deploy.ErrNoRoute, route, summary(all))
	}
	if len(found) > 1 && !route.byUpstream() {
		return nil, fmt.Errorf("%w: %d reverse_proxy handlers match %s (%s); handoff switches a site with one", deploy.ErrNoRoute, len(found), route, summary(found))
	}
	for _, h := range found {
		if len(h.dials) != 1 {
			return nil, fmt.Errorf("%w: the reverse_proxy for %s has %d upstreams (%s); handoff switches a route with exactly one", deploy.ErrNoRoute, route, len(h.dials), strings.Join(h.dials, ", "))
		}
		if !deploy.SameUpstream(h.dials[0], found[0].dials[0]) {
			return nil, fmt.Errorf("%w: the reverse_proxy handlers for %s point at different upstreams (%s); point them at one, or name a site host with --caddy-route", deploy.ErrNoRoute, route, summary(found))
		}
	}
	return found, nil
}

// dialing lists the handlers of all that send traffic to upstream.
func dialing(all []proxyHandler, upstream string) []proxyHandler {
	var out []proxyHandler
	for _, h := range all {
		if slices.ContainsFunc(h.dials, func(d string) bool { return deploy.SameUpstream(d, upstream) }) {
			out = append(out, h)
		}
	}
	return out
}

// describe names a handler for messages: the sites that lead to it.
func (h proxyHandler) describe() string {
	if len(h.hosts) == 0 {
		return "the reverse_proxy for any host at " + h.path
	}
	return "site " + strings.Join(h.hosts, ",")
}

func (r Route) matches(h proxyHandler, known []string) bool {
	if r.byUpstream() {
		for _, d := range h.dials {
			if deploy.SameUpstream(d, string(r)) || slices.ContainsFunc(known, func(k string) bool { return deploy.SameUpstream(d, k) }) {
				return true
			}
		}
		return false
	}
	return slices.ContainsFunc(h.hosts, func(host string) bool { return strings.EqualFold(host, string(r)) })
}

func summary(hs []proxyHandler) string {
	if len(hs) == 0 {
		return "no reverse_proxy at all"
	}
	var parts []string
	for _, h := range hs {
		where := "any host"
		if len(h.hosts) > 0 {
			where = strings.Join(h.hosts, ",")
		}
		parts = append(parts, where+" → "+strings.Join(h.dials, ","))
	}
	return strings.Join(parts, "; ")
}
