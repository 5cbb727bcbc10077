package caddy

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/deploy"
)

// What Caddy 2.11 serves at /config/ for a Caddyfile with two sites.
const twoSites = `{"apps":{"http":{"servers":{"srv0":{"listen":[":443"],"routes":[
 {"match":[{"host":["api.example.com"]}],"handle":[{"handler":"subroute","routes":[
   {"handle":[{"handler":"reverse_proxy","upstreams":[{"dial":"localhost:8000"}],
     "stream_close_delay":300000000000,"load_balancing":{"try_duration":5000000000}}]}]}],"terminal":true},
 {"match":[{"host":["www.example.com","example.com"]}],"handle":[{"handler":"subroute","routes":[
   {"handle":[{"handler":"encode"}]},
   {"handle":[{"handler":"reverse_proxy","upstreams":[{"dial":"localhost:3000"},{"dial":"localhost:3001"}]}]}]}],"terminal":true}
]}}}}}`

func proxies(t *testing.T) []proxyHandler {
	var cfg map[string]any
	require.NoError(t, json.Unmarshal([]byte(twoSites), &cfg))
	return findProxies(cfg)
}

func TestFindProxiesWalksSubroutes(t *testing.T) {
	hs := proxies(t)
	require.Len(t, hs, 2)
	require.Equal(t, "/config/apps/http/servers/srv0/routes/0/handle/0/routes/0/handle/0", hs[0].path)
	require.Equal(t, []string{"api.example.com"}, hs[0].hosts)
	require.Equal(t, []string{"localhost:8000"}, hs[0].dials)
	require.Equal(t, "/config/apps/http/servers/srv0/routes/1/handle/0/routes/1/handle/0", hs[1].path)
}

func TestSelectHandlers(t *testing.T) {
	hs := proxies(t)
	h, err := selectHandlers(hs, "api.example.com", nil)
	require.NoError(t, err)
	require.Equal(t, "localhost:8000", h[0].dials[0])

	_, err = selectHandlers(hs, "API.example.com", nil)
	require.NoError(t, err, "host names are case-insensitive")

	h, err = selectHandlers(hs, "127.0.0.1:8000", nil)
	require.NoError(t, err, "by upstream, loopback spellings are one")
	require.Equal(t, []string{"api.example.com"}, h[0].hosts)

	// After the first deploy the upstream is the container's; the route is found through known.
	hs[0].dials = []string{"127.0.0.1:32768"}
	_, err = selectHandlers(hs, "localhost:8000", []string{"127.0.0.1:32768"})
	require.NoError(t, err)

	_, err = selectHandlers(hs, "nope.example.com", nil)
	require.ErrorIs(t, err, deploy.ErrNoRoute)
	require.ErrorContains(t, err, "it has: api.example.com → 127.0.0.1:32768; www.example.com,example.com → localhost:3000,localhost:3001")

	h, err = selectHandlers(hs, "example.com", nil)
	require.NoError(t, err, "a route of several upstreams is read")
	require.Equal(t, deploy.Route{{Endpoints: []string{"localhost:3000", "localhost:3001"}, Weight: 100}}, routeOf(h[0]))
	require.ErrorContains(t, oneUpstream(h, "example.com"), "has 2 upstreams", "and refused where it would be acted on as one")
}

// A route named by its upstream is every site that dials it: they move together.
func TestRouteByUpstreamTakesEverySiteThatDialsIt(t *testing.T) {
	hs := proxies(t)
	hs[1].dials = []string{"127.0.0.1:8000"}
	found, err := selectHandlers(hs, "localhost:8000", nil)
	require.NoError(t, err)
	require.Len(t, found, 2)

	hs[1].dials = []string{"127.0.0.1:9000"}
	_, err = selectHandlers(hs, "localhost:8000", []string{"127.0.0.1:9000"})
	require.ErrorContains(t, err, "point at different upstreams")
}

func TestAdvice(t *testing.T) {
	hs := proxies(t)
	require.Empty(t, advise(hs[0].handler, "unix:/run/caddy.sock"))
	got := advise(hs[1].handler, "localhost:2019")
	require.Len(t, got, 3)
	require.Contains(t, got[0], "stream_close_delay")
	require.Contains(t, got[1], "lb_try_duration")
	require.Contains(t, got[2], "unix")
}

const sampleCaddyfile = `{
	admin unix//run/caddy/admin.sock # localhost:8000 in a comment stays
}

api.example.com {
	reverse_proxy localhost:8000 {
		lb_try_duration 5s
	}
}

www.example.com, example.com {
	reverse_proxy http://localhost:8000
	# localhost:8000
}
`

func TestRewriteUpstreamInHostsBlockOnly(t *testing.T) {
	rewrite := func(src, host, from, to string) (string, int) {
		t.Helper()
		rw, err := rewriteUpstream(src, host, from, to, noEnv)
		require.NoError(t, err)
		return rw.out, len(rw.edits)
	}
	out, n := rewrite(sampleCaddyfile, "api.example.com", "localhost:8000", "127.0.0.1:32768")
	require.Equal(t, 1, n)
	require.Contains(t, out, "api.example.com {\n\treverse_proxy 127.0.0.1:32768 {\n")
	require.Contains(t, out, "reverse_proxy http://localhost:8000\n", "another site is not touched")
	require.Contains(t, out, "# localhost:8000 in a comment stays")

	out, n = rewrite(sampleCaddyfile, "example.com", "localhost:8000", "127.0.0.1:1")
	require.Equal(t, 1, n)
	require.Contains(t, out, "reverse_proxy http://127.0.0.1:1\n\t# localhost:8000\n", "the scheme is kept, comments are not code")

	out, n = rewrite(sampleCaddyfile, "", "localhost:8000", "127.0.0.1:2")
	require.Equal(t, 2, n, "by upstream: every site")
	_, n = rewrite(out, "", "localhost:8000", "x")
	require.Zero(t, n)

	_, n = rewrite(sampleCaddyfile, "api.example.com", "localhost:800", "x")
	require.Zero(t, n, "only whole tokens")
}

func noEnv(string) (string, bool) { return "", false }

func TestVersionBefore(t *testing.T) {
	require.False(t, versionBefore("v2.11.9", 2, 11, 2))
	require.False(t, versionBefore("v2.11.2", 2, 11, 2))
	require.True(t, versionBefore("v2.11.1", 2, 11, 2))
	require.True(t, versionBefore("v2.6.2", 2, 11, 2))
	require.False(t, versionBefore("v3.0.0-beta.1", 2, 11, 2))
	require.True(t, versionBefore("(devel)", 2, 11, 2))
}

func TestNewRefusesHTTPSAndEmptyRoute(t *testing.T) {
	_, err := New("https://localhost:2019", "a", "", "")
	require.ErrorIs(t, err, deploy.ErrConfig)
	_, err = New("", "", "", "")
	require.ErrorIs(t, err, deploy.ErrConfig)
}

// A service's maintenance routes are its own: web's off never removes the
// page of web-2 (whose @ids start with web's too).
func TestMaintenanceRoutesAreTheServicesOwn(t *testing.T) {
	require.True(t, isMaintenanceOf("handoff-maintenance-web-0", "web"))
	require.True(t, isMaintenanceOf("handoff-maintenance-web-12", "web"))
	require.False(t, isMaintenanceOf("handoff-maintenance-web-2-0", "web"))
	require.False(t, isMaintenanceOf("handoff-maintenance-web-", "web"))
	require.False(t, isMaintenanceOf("handoff-maintenance-web-2-0", "web-20"))
	require.True(t, isMaintenanceOf("handoff-maintenance-web-2-0", "web-2"))
}

// What Caddy 2.11 serves for a site with a forward_auth, a php_fastcgi and
// the app (caddy adapt of such a site, trimmed).
const siteWithHelpers = `{"apps":{"http":{"servers":{"srv0":{"routes":[
 {"match":[{"host":["app.example.com"]}],"handle":[{"handler":"subroute","routes":[
   {"handle":[
     {"handler":"reverse_proxy","handle_response":[{"match":{"status_code":[2]}}],"rewrite":{"method":"GET","uri":"/verify"},"upstreams":[{"dial":"auth:9091"}]},
     {"handler":"reverse_proxy","upstreams":[{"dial":"app:8000"}]}]},
   {"match":[{"path":["/ws/*"]}],"handle":[{"handler":"reverse_proxy","upstreams":[{"dial":"app:8000"}]}]},
   {"match":[{"path":["*.php"]}],"handle":[{"handler":"reverse_proxy","transport":{"protocol":"fastcgi"},"upstreams":[{"dial":"php:9000"}]}]}]}]}
]}}}}}`

// A site's handlers that dial the service's upstream are switched
// together; its forward_auth and php_fastcgi are not the service.
func TestSelectHandlersOfASiteWithSeveral(t *testing.T) {
	var cfg map[string]any
	require.NoError(t, json.Unmarshal([]byte(siteWithHelpers), &cfg))
	all := findProxies(cfg)
	require.Len(t, all, 4)

	hs, err := selectHandlers(all, "app.example.com", nil)
	require.NoError(t, err)
	require.Len(t, hs, 2)
	for _, h := range hs {
		require.Equal(t, []string{"app:8000"}, h.dials)
	}

	// After the first deploy the app is at a container's address.
	all[1].dials, all[2].dials = []string{"127.0.0.1:32768"}, []string{"127.0.0.1:32768"}
	hs, err = selectHandlers(all, "app.example.com", []string{"127.0.0.1:32768"})
	require.NoError(t, err)
	require.Len(t, hs, 2)

	// Two plain handlers for two upstreams: say which route would name each.
	all[2].dials = []string{"api:9000"}
	_, err = selectHandlers(all, "app.example.com", nil)
	require.ErrorIs(t, err, deploy.ErrNoRoute)
	require.ErrorContains(t, err, "name it with --caddy-route 127.0.0.1:32768 or --caddy-route api:9000")
	hs, err = selectHandlers(all, "app.example.com", []string{"api:9000"})
	require.NoError(t, err, "the service's own upstream tells")
	require.Equal(t, []string{"api:9000"}, hs[0].dials)
}

// fakeCaddy answers GET /config/ with cfg, as Caddy's admin API would.
func fakeCaddy(t *testing.T, cfg string) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != "/config/" {
			http.Error(w, "not in this fake", http.StatusNotImplemented)
			return
		}
		io.WriteString(w, cfg)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// A Caddyfile that does not name the upstream is refused by the preflight,
// before anything starts, and the refusal says it is one: it is not a
// failed switch. Status then says where the version before handoff's last
// write is.
func TestPreflightRefusalSaysItIsOne(t *testing.T) {
	dir, state := t.TempDir(), t.TempDir()
	file := filepath.Join(dir, "Caddyfile")
	require.NoError(t, os.WriteFile(file, []byte("api.example.com {\n\treverse_proxy 127.0.0.1:9\n}\n"), 0o644))
	p, err := New(fakeCaddy(t, twoSites), "api.example.com", file, state)
	require.NoError(t, err)

	_, err = p.Preflight(context.Background(), deploy.Only("web-1", "localhost:8000"), nil)
	require.ErrorIs(t, err, deploy.ErrProxy, "exit 5, as the README says for a Caddyfile out of step")
	require.ErrorContains(t, err, "refused before the deploy started anything: the Caddyfile "+file+" does not name upstream localhost:8000")
	require.NotContains(t, err.Error(), "proxy switch failed")

	real, err := filepath.EvalSymlinks(file)
	require.NoError(t, err)
	require.NoError(t, os.MkdirAll(filepath.Dir(BackupPath(state, real)), 0o700))
	require.NoError(t, os.WriteFile(BackupPath(state, real), []byte("before\n"), 0o600))
	advice, err := p.Advice(context.Background(), "localhost:8000")
	require.NoError(t, err)
	require.Contains(t, advice[len(advice)-1], "out of step: ")
	require.Contains(t, advice[len(advice)-1], "the version before handoff's last switch is "+BackupPath(state, real))
}
