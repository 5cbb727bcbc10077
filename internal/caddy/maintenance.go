package caddy

import (
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

// MaintenanceOn puts a route in front of each site of the service's
// route, with the same matchers but the allowed paths: it answers 503
// with the page and Retry-After. The service's own route is left exactly
// as it is (a deploy still switches it, the allowed paths still reach
// it), so MaintenanceOff takes the added routes away and nothing else.
// The page lives in Caddy's running config only: a reload of the
// Caddyfile ends it, and the site serves the app again.
func (p *Proxy) MaintenanceOn(ctx context.Context, m deploy.Maintenance, known []string) error {
	return p.editServers(ctx, func(servers map[string]any) error {
		removeMaintenance(servers, m.Service)
		all := findProxies(map[string]any{"apps": map[string]any{"http": map[string]any{"servers": servers}}})
		hs, err := selectHandlers(all, p.route, known)
		if err != nil {
			return err
		}
		// One page route before each top-level route that leads to the
		// service, inserted from the last so that indices stay right.
		type site struct {
			server string
			index  int
		}
		var sites []site
		for _, h := range hs {
			server, index, err := topRoute(h.path)
			if err != nil {
				return err
			}
			if !slices.Contains(sites, site{server, index}) {
				sites = append(sites, site{server, index})
			}
		}
		slices.SortFunc(sites, func(a, b site) int { return b.index - a.index })
		for n, s := range sites {
			srv, _ := servers[s.server].(map[string]any)
			routes, _ := srv["routes"].([]any)
			top, _ := routes[s.index].(map[string]any)
			page := maintenanceRoute(fmt.Sprintf("%s%s-%d", maintenancePrefix, m.Service, n), top["match"], m)
			srv["routes"] = slices.Insert(routes, s.index, any(page))
		}
		return nil
	})
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

// removeMaintenance drops service's page routes from every server.
func removeMaintenance(servers map[string]any, service string) bool {
	removed := false
	for _, v := range servers {
		srv, _ := v.(map[string]any)
		routes, _ := srv["routes"].([]any)
		kept := slices.DeleteFunc(slices.Clone(routes), func(r any) bool {
			route, _ := r.(map[string]any)
			id, _ := route["@id"].(string)
			return isMaintenanceOf(id, service)
		})
		if len(kept) != len(routes) {
			srv["routes"] = kept
			removed = true
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

// topRoute is the server and index of the top-level route a handler's
// admin path lies in: /config/apps/http/servers/srv0/routes/3/handle/0 → srv0, 3.
func topRoute(path string) (string, int, error) {
	parts := strings.Split(strings.TrimPrefix(path, "/config/apps/http/servers/"), "/")
	if len(parts) < 3 || parts[1] != "routes" {
		return "", 0, fmt.Errorf("%w: unexpected handler path %s", deploy.ErrProxy, path)
	}
	i, err := strconv.Atoi(parts[2])
	return parts[0], i, err
}

// maintenanceRoute answers what match matches, but the allowed paths,
// with the page. Each matcher set of the site gets "not the allowed
// paths"; a site with no matcher gets just that.
func maintenanceRoute(id string, match any, m deploy.Maintenance) map[string]any {
	sets, _ := match.([]any)
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
	if len(out) > 0 && !(len(out) == 1 && len(out[0].(map[string]any)) == 0) {
		route["match"] = out
	}
	return route
}
