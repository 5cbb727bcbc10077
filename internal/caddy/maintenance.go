package caddy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/handoff-dev/handoff/internal/deploy"
)

// maintenancePrefix starts the @id of every route handoff adds for a
// maintenance page; nothing else of Caddy's config is touched by one.
const maintenancePrefix = "handoff-maintenance-"

// MaintenanceOn puts a page route right before each route that holds one
// of the service's handlers, in the same list (a site's subroute, a
// handle block's): with that route's matchers, but the allowed paths, and
// in its group, it answers exactly the requests the handler would get
// with 503, the page and Retry-After. The rest of the site, other handle
// blocks and other matchers of the same site included, is served as
// before. The service's own route is left exactly as it is (a deploy
// still switches it, the allowed paths still reach it), so
// MaintenanceOff takes the added routes away and nothing else. The page
// lives in Caddy's running config only: a reload of the Caddyfile ends
// it, and the site serves the app again.
func (p *Proxy) MaintenanceOn(ctx context.Context, m deploy.Maintenance, known []string) error {
	return p.editServers(ctx, func(servers map[string]any) error {
		removeMaintenance(servers, m.Service)
		all := findProxies(map[string]any{"apps": map[string]any{"http": map[string]any{"servers": servers}}})
		hs, err := selectHandlers(all, p.route, known)
		if err != nil {
			return err
		}
		return addMaintenance(servers, hs, m)
	})
}

// routeList is one list of routes in Caddy's HTTP servers: a server's own
// or a subroute's, held under "routes" by parent.
type routeList struct {
	key    string // the list's path below the servers, "srv0/routes/0/handle/0/routes"
	parent map[string]any
}

// addMaintenance inserts a page route before the route of each handler.
// Every list is found before any is changed (an insertion moves the
// indices of the routes after it, not the maps below them), and each list
// is changed from its last route to its first.
func addMaintenance(servers map[string]any, hs []proxyHandler, m deploy.Maintenance) error {
	type place struct {
		list  routeList
		index int
	}
	var places []place
	for _, h := range hs {
		list, index, err := handlerRoute(servers, h.path)
		if err != nil {
			return err
		}
		if !slices.ContainsFunc(places, func(p place) bool { return p.list.key == list.key && p.index == index }) {
			places = append(places, place{list, index})
		}
	}
	slices.SortFunc(places, func(a, b place) int {
		return cmp.Or(strings.Compare(a.list.key, b.list.key), b.index-a.index)
	})
	for n, pl := range places {
		routes, _ := pl.list.parent["routes"].([]any)
		route, _ := routes[pl.index].(map[string]any)
		page := maintenanceRoute(fmt.Sprintf("%s%s-%d", maintenancePrefix, m.Service, n), route, m)
		pl.list.parent["routes"] = slices.Insert(routes, pl.index, any(page))
	}
	return nil
}

// handlerRoute is the list and index of the route a handler's admin path
// lies in directly, the innermost one:
// /config/apps/http/servers/srv0/routes/0/handle/0/routes/1/handle/0 →
// the routes of srv0's route 0's subroute, 1.
func handlerRoute(servers map[string]any, path string) (routeList, int, error) {
	bad := fmt.Errorf("%w: unexpected handler path %s in Caddy's config; run the command again", deploy.ErrProxy, path)
	parts := strings.Split(strings.TrimPrefix(path, "/config/apps/http/servers/"), "/")
	if i := slices.Index(parts, "named_routes"); i >= 0 && i+1 < len(parts) {
		// A named route is one route, invoked from the sites: there is no
		// list to put a page route in front of it without changing what
		// every site that invokes it does.
		return routeList{}, 0, fmt.Errorf("%w: the service's reverse_proxy is in the named route %s (`&(%s)`, reached by `invoke`), where handoff cannot put a maintenance page in front of it alone; move the reverse_proxy into the site, or answer with a page in the Caddyfile (`respond` or `file_server` in a handle block) while it is down", deploy.ErrProxy, parts[i+1], parts[i+1])
	}
	k := len(parts) - 4 // …/routes/I/handle/J
	if k < 1 || parts[k] != "routes" || parts[k+2] != "handle" {
		return routeList{}, 0, bad
	}
	index, err := strconv.Atoi(parts[k+1])
	if err != nil {
		return routeList{}, 0, bad
	}
	parent, _ := at(servers, parts[:k]).(map[string]any)
	routes, _ := parent["routes"].([]any)
	if index < 0 || index >= len(routes) {
		return routeList{}, 0, bad
	}
	return routeList{key: strings.Join(parts[:k+1], "/"), parent: parent}, index, nil
}

// MaintenanceOff removes the routes MaintenanceOn added for service.
func (p *Proxy) MaintenanceOff(ctx context.Context, service string) (bool, error) {
	removed := false
	err := p.editServers(ctx, func(servers map[string]any) error {
		removed = removeMaintenance(servers, service)
		if !removed {
			return errUnchanged
		}
		return nil
	})
	return removed, err
}

var errUnchanged = errors.New("nothing to change")

// editServers reads Caddy's HTTP servers, lets edit change them, and
// writes them back in one change if nothing else changed them meanwhile
// (tried again a few times when something did).
func (p *Proxy) editServers(ctx context.Context, edit func(map[string]any) error) error {
	const path = "/config/apps/http/servers"
	for attempt := 1; ; attempt++ {
		var servers map[string]any
		h, err := p.admin.call(ctx, http.MethodGet, path, nil, nil, &servers)
		if err != nil {
			return err
		}
		if servers == nil {
			return fmt.Errorf("%w: Caddy serves no HTTP site", deploy.ErrNoRoute)
		}
		if err := edit(servers); errors.Is(err, errUnchanged) {
			return nil
		} else if err != nil {
			return err
		}
		header := http.Header{}
		if etag := h.Get("Etag"); etag != "" {
			header.Set("If-Match", etag)
		}
		_, err = p.admin.call(ctx, http.MethodPatch, path, servers, header, nil)
		if errors.Is(err, deploy.ErrConflict) && attempt < switchAttempts {
			continue
		}
		return err
	}
}

// removeMaintenance drops service's page routes from every server, at
// any depth of subroutes.
func removeMaintenance(servers map[string]any, service string) bool {
	removed := false
	for _, v := range servers {
		srv, _ := v.(map[string]any)
		removed = removeFrom(srv, service) || removed
	}
	return removed
}

// removeFrom drops service's page routes from parent's routes and from
// the subroutes below them.
func removeFrom(parent map[string]any, service string) bool {
	routes, _ := parent["routes"].([]any)
	kept := slices.DeleteFunc(slices.Clone(routes), func(r any) bool {
		route, _ := r.(map[string]any)
		id, _ := route["@id"].(string)
		return isMaintenanceOf(id, service)
	})
	removed := len(kept) != len(routes)
	if removed {
		parent["routes"] = kept
	}
	for _, r := range kept {
		route, _ := r.(map[string]any)
		handle, _ := route["handle"].([]any)
		for _, h := range handle {
			if handler, _ := h.(map[string]any); handler["handler"] == "subroute" {
				removed = removeFrom(handler, service) || removed
			}
		}
	}
	return removed
}

// isMaintenanceOf says whether @id names one of service's page routes:
// handoff-maintenance-<service>-<n>, exactly, so that service web never
// takes away the page of a service named web-2.
func isMaintenanceOf(id, service string) bool {
	n, ok := strings.CutPrefix(id, maintenancePrefix+service+"-")
	if !ok || n == "" {
		return false
	}
	_, err := strconv.Atoi(n)
	return err == nil
}

// maintenanceRoute answers what the service's route matches, but the
// allowed paths, with the page. Each matcher set of the route gets "not
// the allowed paths"; a route with no matcher gets just that. It is in
// the route's group, so that it is skipped when an earlier route of the
// group was taken, as the route would be, and takes the route's turn.
func maintenanceRoute(id string, of map[string]any, m deploy.Maintenance) map[string]any {
	sets, _ := of["match"].([]any)
	if len(sets) == 0 {
		sets = []any{map[string]any{}}
	}
	var out []any
	for _, s := range sets {
		set := map[string]any{}
		if orig, ok := s.(map[string]any); ok {
			for k, v := range orig {
				set[k] = v
			}
		}
		if len(m.Allow) > 0 {
			not, _ := set["not"].([]any)
			set["not"] = append(slices.Clone(not), map[string]any{"path": m.Allow})
		}
		out = append(out, set)
	}
	route := map[string]any{
		"@id": id,
		"handle": []any{map[string]any{
			"handler":     "static_response",
			"status_code": http.StatusServiceUnavailable,
			"headers": map[string]any{
				"Content-Type":  []string{"text/html; charset=utf-8"},
				"Cache-Control": []string{"no-store"},
				"Retry-After":   []string{strconv.Itoa(m.RetryAfterSeconds())},
			},
			"body": m.Body(),
		}},
		"terminal": true,
	}
	if group, ok := of["group"].(string); ok && group != "" {
		route["group"] = group
	}
	if len(out) > 0 && !(len(out) == 1 && len(out[0].(map[string]any)) == 0) {
		route["match"] = out
	}
	return route
}
