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
		named, _ := srv["named_routes"].(map[string]any)
		w := walker{server: "/config/apps/http/servers/" + name, named: named}
		out = w.routes(out, routes, w.server+"/routes", nil, nil)
	}
	return out
}

// walker walks the routes of one server.
type walker struct {
	server string         // its admin path
	named  map[string]any // its named routes, which an invoke handler runs
}

func (w walker) routes(out []proxyHandler, routes []any, path string, hosts, invoked []string) []proxyHandler {
	for i, r := range routes {
		out = w.route(out, r, path+"/"+strconv.Itoa(i), hosts, invoked)
	}
	return out
}

// route walks one route; invoked are the named routes on the way to it,
// so that one invoking itself is walked once.
func (w walker) route(out []proxyHandler, r any, rpath string, hosts, invoked []string) []proxyHandler {
	route, _ := r.(map[string]any)
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
			out = w.routes(out, sub, hpath+"/routes", rhosts, invoked)
		case "invoke":
			name, _ := handler["name"].(string)
			if named, ok := w.named[name]; ok && !slices.Contains(invoked, name) {
				out = w.route(out, named, w.server+"/named_routes/"+name, rhosts, append(slices.Clip(invoked), name))
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
// An upstream names every reverse_proxy that dials it, switched together.
// A site host names every reverse_proxy of the site that dials the
// service's upstream (see siteHandlers). They must agree on one list of
// upstreams, of any length.
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
		var err error
		if found, err = siteHandlers(found, route, known); err != nil {
			return nil, err
		}
	}
	for _, h := range found {
		if len(h.dials) == 0 {
			return nil, noUpstreamList(h, route)
		}
		if !deploy.Same(routeOf(h), routeOf(found[0])) {
			return nil, fmt.Errorf("%w: the reverse_proxy handlers for %s point at different upstreams (%s); point them at one, or name a site host with --caddy-route", deploy.ErrNoRoute, route, summary(found))
		}
	}
	return found, nil
}

// noUpstreamList refuses a reverse_proxy that lists no upstreams: its
// upstreams are dynamic (`dynamic a …`), or it has none, and there is no
// list for a switch to write.
func noUpstreamList(h proxyHandler, route Route) error {
	return fmt.Errorf("%w: the reverse_proxy for %s at %s lists no upstreams: they are dynamic, or it has none; handoff switches a reverse_proxy's list of upstreams", deploy.ErrNoRoute, route, h.path)
}

// siteHandlers picks, among the reverse_proxy handlers of one site, the
// service's: every one that dials its upstream. That is the site's one
// upstream; or one of known (the service's containers); or the one left
// when the site's forward_auth and php_fastcgi handlers, which Caddy's
// JSON lists as reverse_proxy handlers too, are set aside. Anything else
// is a real ambiguity, and the route must name its upstream.
func siteHandlers(site []proxyHandler, route Route, known []string) ([]proxyHandler, error) {
	if len(upstreamsOf(site)) == 1 {
		return site, nil
	}
	ours := slices.DeleteFunc(slices.Clone(site), func(h proxyHandler) bool {
		return !slices.ContainsFunc(h.dials, func(d string) bool {
			return slices.ContainsFunc(known, func(k string) bool { return deploy.SameUpstream(d, k) })
		})
	})
	if len(ours) > 0 {
		return ours, nil
	}
	main := slices.DeleteFunc(slices.Clone(site), proxyHandler.auxiliary)
	if len(main) == 0 {
		main = site
	}
	ups := upstreamsOf(main)
	if len(ups) == 1 {
		return main, nil
	}
	var names []string
	for _, u := range ups {
		names = append(names, "--caddy-route "+u)
	}
	return nil, fmt.Errorf("%w: site %s proxies to %d upstreams (%s); handoff cannot tell which one is the service's: name it with %s", deploy.ErrNoRoute, route, len(ups), summary(main), strings.Join(names, " or "))
}

// upstreamsOf lists the distinct upstreams the handlers dial, in order;
// a handler with several is one entry, its dials joined.
func upstreamsOf(hs []proxyHandler) []string {
	var out []string
	for _, h := range hs {
		u := strings.Join(h.dials, ",")
		if !slices.ContainsFunc(out, func(o string) bool { return o == u || deploy.SameUpstream(o, u) }) {
			out = append(out, u)
		}
	}
	return out
}

// auxiliary says whether the handler is a forward_auth (it asks an
// authentication service, then goes on) or a php_fastcgi (a FastCGI
// transport) rather than a plain reverse_proxy.
func (h proxyHandler) auxiliary() bool {
	if dig(h.handler, "transport", "protocol") == "fastcgi" {
		return true
	}
	_, responds := h.handler["handle_response"]
	return responds && dig(h.handler, "rewrite", "method") == "GET"
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
