package caddy

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/deploy"
)

// What Caddy 2.11.9 adapts a site's Caddyfile to (apps.http.servers).
const (
	// example.com { handle /api/* { reverse_proxy 127.0.0.1:8001 } handle { reverse_proxy 127.0.0.1:8000 } }
	hostHandles = `{"srv0":{"listen":[":8080"],"routes":[{"match":[{"host":["example.com"]}],"handle":[{"handler":"subroute","routes":[{"group":"group2","handle":[{"handler":"subroute","routes":[{"handle":[{"handler":"reverse_proxy","upstreams":[{"dial":"127.0.0.1:8001"}]}]}]}],"match":[{"path":["/api/*"]}]},{"group":"group2","handle":[{"handler":"subroute","routes":[{"handle":[{"handler":"reverse_proxy","upstreams":[{"dial":"127.0.0.1:8000"}]}]}]}]}]}],"terminal":true}],"automatic_https":{"disable":true,"skip":["example.com"]}}}`
	// the same site without a host: each handle is a top-level route
	hostlessHandles = `{"srv0":{"listen":[":8080"],"routes":[{"group":"group2","match":[{"path":["/api/*"]}],"handle":[{"handler":"subroute","routes":[{"handle":[{"handler":"reverse_proxy","upstreams":[{"dial":"127.0.0.1:8001"}]}]}]}]},{"group":"group2","handle":[{"handler":"subroute","routes":[{"handle":[{"handler":"reverse_proxy","upstreams":[{"dial":"127.0.0.1:8000"}]}]}]}]}],"automatic_https":{"disable":true}}}`
	// example.com { @api path /api/*; reverse_proxy @api 127.0.0.1:8001; @v2 path /v2/*; reverse_proxy @v2 :8001; reverse_proxy 127.0.0.1:8000 }
	hostMatchers = `{"srv0":{"listen":[":8080"],"routes":[{"match":[{"host":["example.com"]}],"handle":[{"handler":"subroute","routes":[{"handle":[{"handler":"reverse_proxy","upstreams":[{"dial":"127.0.0.1:8001"}]}],"match":[{"path":["/api/*"]}]},{"handle":[{"handler":"reverse_proxy","upstreams":[{"dial":":8001"}]}],"match":[{"path":["/v2/*"]}]},{"handle":[{"handler":"reverse_proxy","upstreams":[{"dial":"127.0.0.1:8000"}]}]}]}],"terminal":true}],"automatic_https":{"disable":true,"skip":["example.com"]}}}`
	// example.com { route { header X-Site app; handle_path /api/* { reverse_proxy 127.0.0.1:8001 }; reverse_proxy 127.0.0.1:8000 } }
	hostNested = `{"srv0":{"listen":[":8080"],"routes":[{"match":[{"host":["example.com"]}],"handle":[{"handler":"subroute","routes":[{"handle":[{"handler":"subroute","routes":[{"handle":[{"handler":"headers","response":{"set":{"X-Site":["app"]}}}]},{"handle":[{"handler":"subroute","routes":[{"handle":[{"handler":"rewrite","strip_path_prefix":"/api"}]},{"handle":[{"handler":"reverse_proxy","upstreams":[{"dial":"127.0.0.1:8001"}]}]}]}],"match":[{"path":["/api/*"]}]},{"handle":[{"handler":"reverse_proxy","upstreams":[{"dial":"127.0.0.1:8000"}]}]}]}]}]}],"terminal":true}],"automatic_https":{"disable":true,"skip":["example.com"]}}}`
)

// The page answers exactly the requests the service's own handler would
// get, wherever in the site that handler is: a handle block, a matcher, a
// nested route or handle_path, a site with or without a host; the other
// handlers answer as before, the allowed paths reach the app, and off
// gives back the servers exactly as they were.
func TestMaintenanceCoversOnlyTheServicesHandler(t *testing.T) {
	api, web := "127.0.0.1:8001", "127.0.0.1:8000"
	cases := []struct {
		name    string
		servers string
		route   string
		allow   []string
		answers map[string]string // path → who answers it in maintenance
	}{
		{"host site, API's handle block", hostHandles, api, []string{"/api/health"},
			map[string]string{"/api/orders": "page", "/api/health": api, "/": web, "/orders": web}},
		{"host site, the catch-all handle block", hostHandles, web, []string{"/health"},
			map[string]string{"/api/orders": api, "/": "page", "/orders": "page", "/health": web}},
		{"site without a host", hostlessHandles, api, nil,
			map[string]string{"/api/orders": "page", "/": web}},
		{"matchers, two of them dialing the API (spelt two ways)", hostMatchers, api, []string{"/api/health"},
			map[string]string{"/api/orders": "page", "/v2/orders": "page", "/api/health": api, "/": web}},
		{"matchers, the last reverse_proxy", hostMatchers, web, nil,
			map[string]string{"/api/orders": api, "/v2/x": ":8001", "/": "page"}},
		{"nested route and handle_path: the allowed path is the app's", hostNested, api, []string{"/health"},
			map[string]string{"/api/orders": "page", "/api/health": api, "/health": web, "/": web}},
		{"nested route, the reverse_proxy after handle_path", hostNested, web, nil,
			map[string]string{"/api/orders": api, "/": "page"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fa := startFakeAdmin(t, c.servers)
			p, err := New(fa.address, c.route, "", "")
			require.NoError(t, err)
			for path, who := range c.answers {
				if who == "page" {
					who = api
					if c.route == web {
						who = web
					}
				}
				got := answer(t, fa.get(t), "example.com", path)
				require.True(t, deploy.SameUpstream(who, got), "before maintenance: %s: %s", path, got)
			}
			m := deploy.Maintenance{Service: "svc", Allow: c.allow}
			require.NoError(t, p.MaintenanceOn(t.Context(), m, nil))
			on := fa.get(t)
			for path, who := range c.answers {
				require.Equal(t, who, answer(t, on, "example.com", path), "in maintenance: %s", path)
			}
			require.NoError(t, p.MaintenanceOn(t.Context(), m, nil), "on again replaces the page")
			require.Equal(t, on, fa.get(t))

			was, err := p.MaintenanceOff(t.Context(), "svc")
			require.NoError(t, err)
			require.True(t, was)
			require.JSONEq(t, c.servers, string(fa.servers), "off gives back the servers exactly")
			was, err = p.MaintenanceOff(t.Context(), "svc")
			require.NoError(t, err)
			require.False(t, was)
		})
	}
}

// Two services of one site in maintenance each have their own page, and
// each off takes away its own only.
func TestMaintenanceOfTwoServicesOfOneSite(t *testing.T) {
	for _, servers := range []string{hostHandles, hostMatchers, hostNested} {
		fa := startFakeAdmin(t, servers)
		api, err := New(fa.address, "127.0.0.1:8001", "", "")
		require.NoError(t, err)
		web, err := New(fa.address, "127.0.0.1:8000", "", "")
		require.NoError(t, err)
		require.NoError(t, api.MaintenanceOn(t.Context(), deploy.Maintenance{Service: "api"}, nil))
		require.NoError(t, web.MaintenanceOn(t.Context(), deploy.Maintenance{Service: "web"}, nil))
		require.Equal(t, "page", answer(t, fa.get(t), "example.com", "/api/orders"))
		require.Equal(t, "page", answer(t, fa.get(t), "example.com", "/"))

		was, err := api.MaintenanceOff(t.Context(), "api")
		require.NoError(t, err)
		require.True(t, was)
		require.Equal(t, "127.0.0.1:8001", answer(t, fa.get(t), "example.com", "/api/orders"))
		require.Equal(t, "page", answer(t, fa.get(t), "example.com", "/"), "web's page stays")
		was, err = web.MaintenanceOff(t.Context(), "web")
		require.NoError(t, err)
		require.True(t, was)
		require.JSONEq(t, servers, string(fa.servers))
	}
}

// A page route takes its route's turn in a handle group: when an earlier
// route of the group was taken, the page is skipped as the route would be.
func TestMaintenanceRouteKeepsTheGroup(t *testing.T) {
	of := map[string]any{"group": "group2", "match": []any{map[string]any{"path": []any{"/api/*"}}}}
	page := maintenanceRoute("handoff-maintenance-svc-0", of, deploy.Maintenance{Allow: []string{"/api/health"}})
	require.Equal(t, "group2", page["group"])
	require.Equal(t, []any{map[string]any{"path": []any{"/api/*"}, "not": []any{map[string]any{"path": []string{"/api/health"}}}}}, page["match"])
	require.Equal(t, map[string]any{"path": []any{"/api/*"}}, of["match"].([]any)[0], "the service's own route is not changed")
}

// fakeAdmin serves apps.http.servers as Caddy's admin API does: GET with an
// Etag, PATCH guarded by If-Match.
type fakeAdmin struct {
	address string
	mu      sync.Mutex
	servers []byte
	version int
}

func startFakeAdmin(t *testing.T, servers string) *fakeAdmin {
	fa := &fakeAdmin{servers: []byte(servers)}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fa.mu.Lock()
		defer fa.mu.Unlock()
		if r.URL.Path != "/config/apps/http/servers" {
			http.Error(w, `{"error":"unknown path"}`, http.StatusBadRequest)
			return
		}
		etag := fmt.Sprintf(`"%s %d"`, r.URL.Path, fa.version)
		switch r.Method {
		case http.MethodGet:
			w.Header().Set("Etag", etag)
			_, _ = w.Write(fa.servers)
		case http.MethodPatch:
			if m := r.Header.Get("If-Match"); m != "" && m != etag {
				w.WriteHeader(http.StatusPreconditionFailed)
				return
			}
			body, _ := io.ReadAll(r.Body)
			fa.servers = body
			fa.version++
		}
	}))
	t.Cleanup(srv.Close)
	fa.address = strings.TrimPrefix(srv.URL, "http://")
	return fa
}

func (fa *fakeAdmin) get(t *testing.T) map[string]any {
	t.Helper()
	fa.mu.Lock()
	defer fa.mu.Unlock()
	var servers map[string]any
	require.NoError(t, json.Unmarshal(fa.servers, &servers))
	return servers
}

// answer follows a request through the servers' routes as Caddy does, as
// far as these configs need (host and path matchers, not, handle groups,
// terminal routes, subroutes, strip_path_prefix), and says who answers it:
// the upstream a reverse_proxy dials, or "page". The integration test
// TestMaintenanceOfOneHandlerOfASite checks the same shapes through a
// real Caddy.
func answer(t *testing.T, servers map[string]any, host, path string) string {
	t.Helper()
	srv, _ := servers["srv0"].(map[string]any)
	routes, _ := srv["routes"].([]any)
	who, _ := follow(routes, host, &path)
	return who
}

func follow(routes []any, host string, path *string) (string, bool) {
	taken := map[string]bool{}
	for _, r := range routes {
		route, _ := r.(map[string]any)
		sets, _ := route["match"].([]any)
		if len(sets) > 0 && !anySetMatches(sets, host, *path) {
			continue
		}
		if g, _ := route["group"].(string); g != "" {
			if taken[g] {
				continue
			}
			taken[g] = true
		}
		handle, _ := route["handle"].([]any)
		for _, h := range handle {
			handler, _ := h.(map[string]any)
			switch handler["handler"] {
			case "reverse_proxy":
				return dials(handler)[0], true
			case "static_response":
				return "page", true
			case "subroute":
				sub, _ := handler["routes"].([]any)
				if who, done := follow(sub, host, path); done {
					return who, true
				}
			case "rewrite":
				prefix, _ := handler["strip_path_prefix"].(string)
				*path = strings.TrimPrefix(*path, prefix)
			}
		}
		if route["terminal"] == true {
			return "", true
		}
	}
	return "", false
}

func anySetMatches(sets []any, host, path string) bool {
	for _, s := range sets {
		set, _ := s.(map[string]any)
		if setMatches(set, host, path) {
			return true
		}
	}
	return false
}

func setMatches(set map[string]any, host, path string) bool {
	for kind, v := range set {
		list, _ := v.([]any)
		switch kind {
		case "host":
			if !containsFunc(list, func(h string) bool { return strings.EqualFold(h, host) }) {
				return false
			}
		case "path":
			if !containsFunc(list, func(p string) bool {
				prefix, wild := strings.CutSuffix(p, "*")
				return path == p || wild && strings.HasPrefix(path, prefix)
			}) {
				return false
			}
		case "not":
			if anySetMatches(list, host, path) {
				return false
			}
		default:
			panic("matcher not followed by these tests: " + kind)
		}
	}
	return true
}

func containsFunc(list []any, f func(string) bool) bool {
	for _, v := range list {
		if s, ok := v.(string); ok && f(s) {
			return true
		}
	}
	return false
}

// A reverse_proxy in a named route (`&(app) {…}`, reached by `invoke`) has
// no route list to put a page in front of it alone: refused with what to
// do, and Caddy's config is left as it was.
func TestMaintenanceOfANamedRouteIsRefusedClearly(t *testing.T) {
	// &(app) { reverse_proxy 127.0.0.1:8001 }  example.com:8080 { invoke app }
	const named = `{"srv0":{"listen":[":8080"],"routes":[{"match":[{"host":["example.com"]}],"handle":[{"handler":"subroute","routes":[{"handle":[{"handler":"invoke","name":"app"}]}]}],"terminal":true}],"named_routes":{"app":{"handle":[{"handler":"reverse_proxy","upstreams":[{"dial":"127.0.0.1:8001"}]}]}},"automatic_https":{"disable":true}}}`
	fa := startFakeAdmin(t, named)
	api, err := New(fa.address, "127.0.0.1:8001", "", "")
	require.NoError(t, err)
	err = api.MaintenanceOn(t.Context(), deploy.Maintenance{Service: "api"}, nil)
	require.ErrorIs(t, err, deploy.ErrProxy)
	require.Contains(t, err.Error(), "named route app")
	require.Contains(t, err.Error(), "move the reverse_proxy into the site")
	require.JSONEq(t, named, string(fa.servers))
}

// A service whose reverse_proxy has several upstreams (a release of
// replicas, or a user's own `reverse_proxy a b`) goes into maintenance
// and out of it like one of one.
func TestMaintenanceOfAReverseProxyOfTwo(t *testing.T) {
	// example.com:8080 { reverse_proxy 127.0.0.1:8001 127.0.0.1:8002 }, as Caddy 2.11.9 adapts it
	const two = `{"srv0":{"listen":[":8080"],"routes":[{"match":[{"host":["example.com"]}],"handle":[{"handler":"subroute","routes":[{"handle":[{"handler":"reverse_proxy","upstreams":[{"dial":"127.0.0.1:8001"},{"dial":"127.0.0.1:8002"}]}]}]}],"terminal":true}],"automatic_https":{"skip":["example.com"]}}}`
	for _, route := range []string{"example.com", "127.0.0.1:8002"} {
		fa := startFakeAdmin(t, two)
		p, err := New(fa.address, route, "", "")
		require.NoError(t, err)
		require.NoError(t, p.MaintenanceOn(t.Context(), deploy.Maintenance{Service: "web", Allow: []string{"/health"}}, nil), route)
		require.Equal(t, "page", answer(t, fa.get(t), "example.com", "/"))
		require.Equal(t, "127.0.0.1:8001", answer(t, fa.get(t), "example.com", "/health"))
		was, err := p.MaintenanceOff(t.Context(), "web")
		require.NoError(t, err)
		require.True(t, was)
		require.JSONEq(t, two, string(fa.servers))
	}
}
