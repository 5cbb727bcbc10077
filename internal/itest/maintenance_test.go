package itest

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"testing"

	"github.com/stretchr/testify/require"
)

// A site with two handlers, each a service of its own: maintenance of one
// answers exactly the requests its handler would get with the page, and
// the other handler goes on answering; the allowed paths still reach the
// app; off gives Caddy back its whole config as it was. The same for
// handle blocks, for matchers on reverse_proxy and for nested
// route/handle_path (where the app sees the path without its prefix).
func TestMaintenanceOfOneHandlerOfASite(t *testing.T) {
	s := NewScenario(t, ScenarioOptions{}) // the API: RELEASE=v0 on s.UserPort
	web := s.Sibling()
	webPort := UserContainer(t, s.API, web.Service+"-byhand", "RELEASE=web")
	api, webUp := "127.0.0.1:"+Itoa(s.UserPort), "127.0.0.1:"+Itoa(webPort)
	s.WriteConfig(Config{Release: "v1", Route: api})
	web.WriteConfig(Config{Release: "web", Route: webUp})

	shapes := []struct {
		name, site string
		allow      []string // the API's --allow
		allowed    string   // a request to the API that it lets through
	}{
		{"handle blocks", "\thandle /api/* {\n\t\treverse_proxy " + api + "\n\t}\n\thandle {\n\t\treverse_proxy " + webUp + "\n\t}\n",
			[]string{"--allow", "/api/health"}, "/api/health"},
		{"matchers", "\t@api path /api/*\n\treverse_proxy @api :" + Itoa(s.UserPort) + "\n\treverse_proxy " + webUp + "\n",
			[]string{"--allow", "/api/health"}, "/api/health"},
		{"nested route and handle_path", "\troute {\n\t\theader X-Site app\n\t\thandle_path /api/* {\n\t\t\treverse_proxy " + api + "\n\t\t}\n\t\treverse_proxy " + webUp + "\n\t}\n",
			nil, "/api/health"}, // the app sees /health: its health path, allowed by default
	}
	for _, shape := range shapes {
		t.Logf("site of %s", shape.name)
		restartCaddyWith(t, s, shape.site)
		requireAnswer(t, s, "/api/orders", 200, "v0")
		requireAnswer(t, s, "/", 200, "web")
		before := caddyConfig(t, s)

		r := s.Run(append([]string{"maintenance", "on", "--message", "API back at 10"}, shape.allow...)...)
		require.Equal(t, 0, r.Code, r.String())
		code, h, body := getSite(t, s, "/api/orders")
		require.Equal(t, http.StatusServiceUnavailable, code, "%s: the API's own requests get the page", shape.name)
		require.Equal(t, "300", h.Get("Retry-After"))
		require.Contains(t, body, "API back at 10")
		requireAnswer(t, s, "/", 200, "web")
		requireAnswer(t, s, "/orders", 200, "web")
		requireAnswer(t, s, shape.allowed, 200, "v0")
		r = s.Run("maintenance", "off")
		require.Equal(t, 0, r.Code, r.String())
		require.Equal(t, before, caddyConfig(t, s), "%s: off restores Caddy's config exactly", shape.name)

		r = web.Run("maintenance", "on")
		require.Equal(t, 0, r.Code, r.String())
		requireAnswer(t, s, "/", http.StatusServiceUnavailable, "")
		requireAnswer(t, s, "/orders", http.StatusServiceUnavailable, "")
		requireAnswer(t, s, "/health", 200, "web")
		requireAnswer(t, s, "/api/orders", 200, "v0")
		r = web.Run("maintenance", "off")
		require.Equal(t, 0, r.Code, r.String())
		require.Equal(t, before, caddyConfig(t, s), "%s: off restores Caddy's config exactly", shape.name)
	}

	// A deploy of the API during its maintenance switches the handler
	// underneath the page; the rest of the site answers throughout.
	restartCaddyWith(t, s, shapes[0].site)
	r := s.Run("maintenance", "on")
	require.Equal(t, 0, r.Code, r.String())
	s.Deploy(Config{Release: "v1", Route: api})
	requireAnswer(t, s, "/api/orders", http.StatusServiceUnavailable, "")
	requireAnswer(t, s, "/", 200, "web")
	r = s.Run("maintenance", "off")
	require.Equal(t, 0, r.Code, r.String())
	requireAnswer(t, s, "/api/orders", 200, "v1")
	requireAnswer(t, s, "/", 200, "web")
}

// restartCaddyWith restarts the scenario's Caddy on a Caddyfile whose
// test site (its hosts, on its port) holds site.
func restartCaddyWith(t *testing.T, s *Scenario, site string) {
	t.Helper()
	_, port, err := net.SplitHostPort(s.Caddy.Addr)
	require.NoError(t, err)
	file := fmt.Sprintf("{\n\tadmin %s\n\tauto_https off\n\tservers {\n\t\tprotocols h1 h2c\n\t}\n}\n\nhttp://%s:%s, http://127.0.0.1:%s {\n\tbind 127.0.0.1\n%s}\n",
		s.Caddy.Admin, SiteHost, port, port, site)
	require.NoError(t, os.WriteFile(s.Caddy.File, []byte(file), 0o644))
	s.Caddy.Restart()
}

// requireAnswer GETs path of the test site and checks the status and,
// when release is set, which release answered.
func requireAnswer(t *testing.T, s *Scenario, path string, status int, release string) {
	t.Helper()
	code, h, body := getSite(t, s, path)
	require.Equal(t, status, code, "GET %s: %s", path, body)
	if release != "" {
		require.Equal(t, release, h.Get("X-Release"), "GET %s", path)
	}
}

// A health path with a query string (`/health?probe=1`) is still let
// through by maintenance's default allow, through Caddy and through
// handoff proxy: a front balancer's health check passes.
func TestMaintenanceAllowsAHealthPathWithAQuery(t *testing.T) {
	for name, o := range map[string]ScenarioOptions{"caddy": {}, "handoff proxy": {HandoffProxy: true}} {
		t.Run(name, func(t *testing.T) {
			s := NewScenario(t, o)
			s.Deploy(Config{Release: "v1", HealthPath: "/health?probe=1"})
			r := s.Run("maintenance", "on")
			require.Equal(t, 0, r.Code, r.String())
			requireAnswer(t, s, "/", http.StatusServiceUnavailable, "")
			requireAnswer(t, s, "/health?probe=1", 200, "v1")
			requireAnswer(t, s, "/health", 200, "v1")
			require.Contains(t, r.Stdout, "[/health] still reach the app")
			r = s.Run("maintenance", "off")
			require.Equal(t, 0, r.Code, r.String())
		})
	}
}
