package caddy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
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
}

// A reverse_proxy of dynamic upstreams has no list to switch: refused,
// saying so. (app.test { reverse_proxy { dynamic a app.internal 8000 } },
// as Caddy 2.11.9 adapts it.)
func TestSelectHandlersRefusesDynamicUpstreams(t *testing.T) {
	const dynamic = `{"apps":{"http":{"servers":{"srv0":{"listen":[":8080"],"routes":[{"match":[{"host":["app.test"]}],"handle":[{"handler":"subroute","routes":[{"handle":[{"dynamic_upstreams":{"name":"app.internal","port":"8000","source":"a"},"handler":"reverse_proxy"}]}]}],"terminal":true}],"automatic_https":{"skip":["app.test"]}}}}}}`
	_, err := selectHandlers(findProxies(decodeNumbers(t, dynamic).(map[string]any)), "app.test", nil)
	require.ErrorIs(t, err, deploy.ErrNoRoute)
	require.ErrorContains(t, err, "the reverse_proxy for app.test at /config/apps/http/servers/srv0/routes/0/handle/0/routes/0/handle/0 lists no upstreams: they are dynamic, or it has none")
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

// configAdmin serves a whole config as Caddy's admin API does, as far as
// the adapter uses it: GET and PATCH of any path under /config/ (one Etag
// for the whole config, If-Match checked; a PATCH replaces what is there),
// /reverse_proxy/upstreams from upstreams, and /metrics saying version.
type configAdmin struct {
	address string

	mu        sync.Mutex
	cfg       map[string]any
	etag      int
	upstreams string // the JSON /reverse_proxy/upstreams answers
}

func startConfigAdmin(t *testing.T, cfg, version string) *configAdmin {
	ca := &configAdmin{upstreams: "[]"}
	ca.cfg = decodeNumbers(t, cfg).(map[string]any)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ca.mu.Lock()
		defer ca.mu.Unlock()
		switch {
		case r.URL.Path == "/metrics":
			fmt.Fprintf(w, `go_build_info{checksum="",path="github.com/caddyserver/caddy/v2/cmd/caddy",version=%q} 1`+"\n", version)
			return
		case r.URL.Path == "/reverse_proxy/upstreams":
			io.WriteString(w, ca.upstreams)
			return
		case !strings.HasPrefix(r.URL.Path, "/config/"):
			http.Error(w, `{"error":"not in this fake"}`, http.StatusNotFound)
			return
		}
		keys := strings.Split(strings.Trim(strings.TrimPrefix(r.URL.Path, "/config/"), "/"), "/")
		if keys[0] == "" {
			keys = nil
		}
		switch r.Method {
		case http.MethodGet:
			w.Header().Set("Etag", fmt.Sprintf(`"/config/ %d"`, ca.etag))
			_ = json.NewEncoder(w).Encode(at(ca.cfg, keys))
		case http.MethodPatch:
			if m := r.Header.Get("If-Match"); m != "" && m != fmt.Sprintf(`"/config/ %d"`, ca.etag) {
				http.Error(w, `{"error":"precondition failed"}`, http.StatusPreconditionFailed)
				return
			}
			body, _ := io.ReadAll(r.Body)
			if len(keys) == 0 || !replaceAt(ca.cfg, keys, decodeNumbers(t, string(body))) {
				http.Error(w, `{"error":"no such path"}`, http.StatusNotFound)
				return
			}
			ca.etag++
		default:
			http.Error(w, `{"error":"not in this fake"}`, http.StatusMethodNotAllowed)
		}
	}))
	t.Cleanup(srv.Close)
	ca.address = srv.URL
	return ca
}

// handler is the reverse_proxy handler at path as the fake holds it now.
func (ca *configAdmin) handler(t *testing.T, path string) map[string]any {
	t.Helper()
	ca.mu.Lock()
	defer ca.mu.Unlock()
	h, ok := at(ca.cfg, strings.Split(strings.TrimPrefix(path, "/config/"), "/")).(map[string]any)
	require.True(t, ok, "no handler at %s", path)
	return h
}

// replaceAt puts v where keys lead in cfg, if something is there.
func replaceAt(cfg map[string]any, keys []string, v any) bool {
	last := keys[len(keys)-1]
	switch parent := at(cfg, keys[:len(keys)-1]).(type) {
	case map[string]any:
		if _, ok := parent[last]; ok {
			parent[last] = v
			return true
		}
	case []any:
		if i, err := strconv.Atoi(last); err == nil && i >= 0 && i < len(parent) {
			parent[i] = v
			return true
		}
	}
	return false
}

func decodeNumbers(t *testing.T, s string) any {
	t.Helper()
	var v any
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	require.NoError(t, dec.Decode(&v))
	return v
}

// writeCaddyfile puts src in a Caddyfile of its own directory.
func writeCaddyfile(t *testing.T, src string) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "Caddyfile")
	require.NoError(t, os.WriteFile(file, []byte(src), 0o644))
	return file
}

// What Caddy 2.11.9 adapts these Caddyfiles to (caddy adapt); Debian's
// 2.6.2 adapts them to the same.
const (
	// A user's site of two upstreams, with a policy and settings of their own.
	usersTwoCaddyfile = "http://app.test:8080 {\n\treverse_proxy app1:8000 app2:8000 {\n\t\tlb_policy least_conn\n\t\tlb_try_duration 5s\n\t\theader_up X-Real-IP {remote_host}\n\t}\n}\n"
	usersTwoConfig    = `{"apps":{"http":{"servers":{"srv0":{"listen":[":8080"],"routes":[{"match":[{"host":["app.test"]}],"handle":[{"handler":"subroute","routes":[{"handle":[{"handler":"reverse_proxy","headers":{"request":{"set":{"X-Real-Ip":["{http.request.remote.host}"]}}},"load_balancing":{"selection_policy":{"policy":"least_conn"},"try_duration":5000000000},"upstreams":[{"dial":"app1:8000"},{"dial":"app2:8000"}]}]}]}],"terminal":true}],"automatic_https":{"skip":["app.test"]}}}}}}`
	usersTwoHandler   = "/config/apps/http/servers/srv0/routes/0/handle/0/routes/0/handle/0"

	// A release of three replicas as handoff writes it, beside another site.
	threeCaddyfile = "http://app.test:8080 {\n\treverse_proxy 127.0.0.1:40001 127.0.0.1:40002 127.0.0.1:40003 {\n\t\tlb_try_duration 5s\n\t}\n}\n\nhttp://admin.test:8080 {\n\treverse_proxy 127.0.0.1:40009\n}\n"
	threeConfig    = `{"apps":{"http":{"servers":{"srv0":{"listen":[":8080"],"routes":[{"match":[{"host":["admin.test"]}],"handle":[{"handler":"subroute","routes":[{"handle":[{"handler":"reverse_proxy","upstreams":[{"dial":"127.0.0.1:40009"}]}]}]}],"terminal":true},{"match":[{"host":["app.test"]}],"handle":[{"handler":"subroute","routes":[{"handle":[{"handler":"reverse_proxy","load_balancing":{"try_duration":5000000000},"upstreams":[{"dial":"127.0.0.1:40001"},{"dial":"127.0.0.1:40002"},{"dial":"127.0.0.1:40003"}]}]}]}],"terminal":true}],"automatic_https":{"skip":["admin.test","app.test"]}}}}}}`
	threeHandler   = "/config/apps/http/servers/srv0/routes/1/handle/0/routes/0/handle/0"
	adminHandler   = "/config/apps/http/servers/srv0/routes/0/handle/0/routes/0/handle/0"
)

var (
	release1 = deploy.Only("web-1", "127.0.0.1:40001", "127.0.0.1:40002", "127.0.0.1:40003")
	release2 = deploy.Only("web-2", "127.0.0.1:40004", "127.0.0.1:40005", "127.0.0.1:40006")
)

// A user's reverse_proxy of two upstreams is read back as one release of
// both, passes the preflight, and is switched to a release of three: in
// Caddy and in the Caddyfile the list is replaced, and the user's
// lb_policy, lb_try_duration and header_up are kept.
func TestAUsersReverseProxyOfTwoIsReadAndSwitched(t *testing.T) {
	ca := startConfigAdmin(t, usersTwoConfig, "v2.11.9")
	file := writeCaddyfile(t, usersTwoCaddyfile)
	p, err := New(ca.address, "app.test", file, t.TempDir())
	require.NoError(t, err)

	users, err := p.Route(t.Context(), nil)
	require.NoError(t, err)
	require.True(t, deploy.Same(deploy.Route{{Endpoints: []string{"app1:8000", "app2:8000"}, Weight: 100}}, users), "read back: %s", users)
	notes, err := p.Preflight(t.Context(), users, nil)
	require.NoError(t, err)
	require.Empty(t, notes)

	require.NoError(t, p.SetRoute(t.Context(), users, release1))
	got, err := p.Route(t.Context(), release1.Endpoints())
	require.NoError(t, err)
	require.True(t, deploy.Same(release1, got), "read back: %s", got)
	h := ca.handler(t, usersTwoHandler)
	require.Equal(t, release1.Endpoints(), dials(h))
	require.Equal(t, map[string]any{"selection_policy": map[string]any{"policy": "least_conn"}, "try_duration": json.Number("5000000000")}, h["load_balancing"], "the user's policy and retries are kept")
	require.NotNil(t, h["headers"], "and their header_up")
	require.Equal(t, "http://app.test:8080 {\n\treverse_proxy 127.0.0.1:40001 127.0.0.1:40002 127.0.0.1:40003 {\n\t\tlb_policy least_conn\n\t\tlb_try_duration 5s\n\t\theader_up X-Real-IP {remote_host}\n\t}\n}\n", readFile(t, file))

	notes, err = p.Preflight(t.Context(), got, release1.Endpoints())
	require.NoError(t, err, "the next deploy's preflight")
	require.Empty(t, notes)
}

// A release of three is switched to another of three and back: Caddy
// and the Caddyfile name the new three only, the other site is left as
// it was, a switch done already is done, one from a stale route is
// ErrConflict, and PointsAt and InFlight answer for each endpoint.
func TestSwitchBetweenReleasesOfThree(t *testing.T) {
	ca := startConfigAdmin(t, threeConfig, "v2.11.9")
	file := writeCaddyfile(t, threeCaddyfile)
	p, err := New(ca.address, "app.test", file, t.TempDir())
	require.NoError(t, err)
	known := append(release1.Endpoints(), release2.Endpoints()...)

	current, err := p.Route(t.Context(), known)
	require.NoError(t, err)
	require.True(t, deploy.Same(release1, current), "read back: %s", current)
	notes, err := p.Preflight(t.Context(), current, known)
	require.NoError(t, err)
	require.Empty(t, notes)

	require.NoError(t, p.SetRoute(t.Context(), current, release2))
	require.Equal(t, release2.Endpoints(), dials(ca.handler(t, threeHandler)))
	require.Equal(t, map[string]any{"try_duration": json.Number("5000000000")}, ca.handler(t, threeHandler)["load_balancing"])
	require.Equal(t, []string{"127.0.0.1:40009"}, dials(ca.handler(t, adminHandler)), "the other site is not touched")
	switched := strings.Replace(threeCaddyfile, "127.0.0.1:40001 127.0.0.1:40002 127.0.0.1:40003", "127.0.0.1:40004 127.0.0.1:40005 127.0.0.1:40006", 1)
	require.Equal(t, switched, readFile(t, file))

	require.NoError(t, p.SetRoute(t.Context(), current, release2), "a switch done already is done")
	require.Equal(t, switched, readFile(t, file))
	err = p.SetRoute(t.Context(), current, deploy.Only("web-3", "127.0.0.1:40007", "127.0.0.1:40008"))
	require.ErrorIs(t, err, deploy.ErrConflict, "the route is neither from nor to")

	for _, e := range release2.Endpoints() {
		at, err := p.PointsAt(t.Context(), e)
		require.NoError(t, err)
		require.Equal(t, []string{"Caddy's site app.test"}, at, e)
	}
	for _, e := range release1.Endpoints() {
		at, err := p.PointsAt(t.Context(), e)
		require.NoError(t, err)
		require.Empty(t, at, e)
	}
	// Caddy 2.11.2 and later list the upstreams it left until they drain.
	ca.mu.Lock()
	ca.upstreams = `[{"address":"127.0.0.1:40002","num_requests":2,"fails":0},{"address":"127.0.0.1:40004","num_requests":0,"fails":0},{"address":"127.0.0.1:40005","num_requests":1,"fails":0},{"address":"127.0.0.1:40006","num_requests":0,"fails":0},{"address":"127.0.0.1:40009","num_requests":3,"fails":0}]`
	ca.mu.Unlock()
	for e, want := range map[string]int{"127.0.0.1:40001": 0, "127.0.0.1:40002": 2, "localhost:40003": 0, "127.0.0.1:40004": 0, "localhost:40005": 1} {
		in, err := p.InFlight(t.Context(), e)
		require.NoError(t, err)
		require.Equal(t, deploy.InFlight{Requests: want, Reported: true}, in, e)
		require.NoError(t, p.Retire(t.Context(), e))
	}

	require.NoError(t, p.SetRoute(t.Context(), release2, release1), "and back")
	require.Equal(t, release1.Endpoints(), dials(ca.handler(t, threeHandler)))
	require.Equal(t, threeCaddyfile, readFile(t, file))
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return string(b)
}
