package caddy

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/deploy"
)

func TestUpstreamsFor(t *testing.T) {
	for _, c := range []struct {
		name    string
		route   deploy.Route
		dials   []string
		weights []int
	}{
		{"one release", deploy.Only("web-3", "a:1"), []string{"a:1"}, nil},
		{"one release of two", deploy.Only("web-3", "a:1", "a:2"), []string{"a:1", "a:2"}, nil},
		{"a canary", deploy.Route{{Release: "web-3", Endpoints: []string{"a:1"}, Weight: 90}, {Release: "web-4", Endpoints: []string{"b:1"}, Weight: 10}},
			[]string{"a:1", "b:1"}, []int{9, 1}},
		{"shares hold over releases of different sizes", deploy.Route{{Endpoints: []string{"a:1", "a:2", "a:3"}, Weight: 50}, {Endpoints: []string{"b:1", "b:2"}, Weight: 50}},
			[]string{"a:1", "a:2", "a:3", "b:1", "b:2"}, []int{2, 2, 2, 3, 3}},
		{"a release draining", deploy.Route{{Endpoints: []string{"a:1"}, Weight: 100}, {Endpoints: []string{"b:1"}, Weight: 0}},
			[]string{"a:1", "b:1"}, []int{1, 0}},
		{"equal in the end", deploy.Route{{Endpoints: []string{"a:1", "a:2"}, Weight: 50}, {Endpoints: []string{"b:1", "b:2"}, Weight: 50}},
			[]string{"a:1", "a:2", "b:1", "b:2"}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			u, err := upstreamsFor(c.route)
			require.NoError(t, err)
			require.Equal(t, c.dials, u.dials)
			require.Equal(t, c.weights, u.weights)
			h := map[string]any{"handler": "reverse_proxy"}
			u.apply(h)
			require.True(t, u.matches(h))
			require.True(t, deploy.Same(routeOf(proxyHandler{dials: dials(h), handler: h}), c.route), "read back as written")
		})
	}
	for _, bad := range []deploy.Route{nil, {{Endpoints: []string{"a:1"}, Weight: 0}}, {{Endpoints: []string{"a:1"}, Weight: 1}, {Endpoints: []string{"localhost:1", "a:1"}, Weight: 1}}} {
		_, err := upstreamsFor(bad)
		require.ErrorIs(t, err, deploy.ErrProxy, "%s", bad)
	}
}

func TestWrrWeightsAsCaddyAnswers(t *testing.T) {
	var h map[string]any
	dec := json.NewDecoder(strings.NewReader(`{"load_balancing":{"selection_policy":{"policy":"weighted_round_robin","weights":[9,1]}}}`))
	dec.UseNumber() // as the admin client decodes
	require.NoError(t, dec.Decode(&h))
	ws, ok := wrrWeights(h)
	require.True(t, ok)
	require.Equal(t, []int{9, 1}, ws)
}

// Equal weights take away the weighted_round_robin handoff wrote, and
// keep a policy of the user's own.
func TestApplyKeepsTheUsersPolicy(t *testing.T) {
	h := map[string]any{"load_balancing": map[string]any{"try_duration": 5e9}}
	canary := upstreams{dials: []string{"a:1", "b:1"}, weights: []int{9, 1}}
	canary.apply(h)
	require.Equal(t, map[string]any{"policy": "weighted_round_robin", "weights": []any{9, 1}}, dig(h, "load_balancing", "selection_policy"))
	upstreams{dials: []string{"b:1"}}.apply(h)
	require.Equal(t, map[string]any{"try_duration": 5e9}, h["load_balancing"], "handoff's policy gone, the rest kept")

	own := map[string]any{"load_balancing": map[string]any{"selection_policy": map[string]any{"policy": "least_conn"}}}
	u := upstreams{dials: []string{"a:1", "a:2"}}
	require.False(t, u.policyChanges(own))
	u.apply(own)
	require.Equal(t, "least_conn", dig(own, "load_balancing", "selection_policy", "policy"))
}

func TestCanWeighByVersion(t *testing.T) {
	canary := upstreams{dials: []string{"a:1", "b:1"}, weights: []int{9, 1}}
	drain := upstreams{dials: []string{"a:1", "b:1"}, weights: []int{1, 0}}
	for _, c := range []struct {
		version       string
		canary, drain bool
	}{
		{"v2.6.2", false, false}, {"v2.7.6", true, false}, {"v2.9.1", true, true}, {"v2.11.9", true, true}, {"", true, true},
	} {
		p := proxyAt(t, c.version)
		require.Equal(t, c.canary, p.canWeigh(context.Background(), canary) == nil, "%s canary", c.version)
		err := p.canWeigh(context.Background(), drain)
		require.Equal(t, c.drain, err == nil, "%s weight 0: %v", c.version, err)
		if err != nil {
			require.ErrorIs(t, err, deploy.ErrProxy)
			require.ErrorContains(t, err, "Caddy "+c.version)
		}
		require.NoError(t, p.canWeigh(context.Background(), upstreams{dials: []string{"a:1", "a:2"}}), "equal weights need nothing")
	}
}

// proxyAt is a Proxy whose admin API says it is Caddy version ("": a
// build that does not say).
func proxyAt(t *testing.T, version string) *Proxy {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/metrics" && version != "" {
			w.Write([]byte(`go_build_info{checksum="",path="github.com/caddyserver/caddy/v2/cmd/caddy",version="` + version + `"} 1` + "\n"))
		}
	}))
	t.Cleanup(srv.Close)
	p, err := New(srv.URL, "app.test", "", "")
	require.NoError(t, err)
	return p
}

// Weights over a reverse_proxy with an lb_policy of the user's own are
// refused before anything is written: the weights' policy would take its
// place, and it could not be given back when the weights are equal again.
// Equal weights keep it.
func TestWeightsAreRefusedOverTheUsersOwnPolicy(t *testing.T) {
	handler := map[string]any{"handler": "reverse_proxy", "upstreams": []any{map[string]any{"dial": "127.0.0.1:8001"}},
		"load_balancing": map[string]any{"selection_policy": map[string]any{"policy": "least_conn"}}}
	hs := []proxyHandler{{path: "/config/apps/http/servers/srv0/routes/0/handle/0", handler: handler}}
	p := &Proxy{} // no admin API: a refusal must come before any call
	err := p.write(t.Context(), hs, upstreams{dials: []string{"127.0.0.1:8001", "127.0.0.1:8002"}, weights: []int{9, 1}}, "")
	require.ErrorIs(t, err, deploy.ErrProxy)
	require.ErrorContains(t, err, "lb_policy least_conn")
	require.Equal(t, "least_conn", ownPolicy(handler))
	require.Equal(t, "", ownPolicy(map[string]any{"load_balancing": map[string]any{"selection_policy": map[string]any{"policy": "weighted_round_robin"}}}))
	require.Equal(t, "", ownPolicy(map[string]any{}))
}
