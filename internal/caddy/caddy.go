package caddy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/handoff-dev/handoff/internal/deploy"
)

// Proxy is the deploy.Proxy for one route of a running Caddy.
type Proxy struct {
	admin     *admin
	route     Route
	caddyfile *caddyfile // nil: do not keep a Caddyfile in step

	mu            sync.Mutex
	tracksDrained bool // Caddy lists removed upstreams until they drain (2.11.2+)
	versionRead   bool
	versionOK     bool   // its version could be read
	versionText   string // "v2.11.9"
}

var _ deploy.Proxy = (*Proxy)(nil)

// switchAttempts bounds how often a switch is tried again when Caddy's
// config changed elsewhere meanwhile (another service's deploy, say).
const switchAttempts = 5

// New returns the Proxy for route through the admin API at address
// (http://host:port, host:port or unix:/path). caddyfile, when set, is kept
// in step with every switch; its previous version is kept under stateDir.
func New(address, route, caddyfilePath, stateDir string) (*Proxy, error) {
	if route == "" {
		return nil, fmt.Errorf("%w: no Caddy route: set caddy.route in handoff.yml or pass --caddy-route (the site host, or the upstream Caddy proxies to today, like localhost:8000)", deploy.ErrConfig)
	}
	a, err := newAdmin(address)
	if err != nil {
		return nil, err
	}
	p := &Proxy{admin: a, route: Route(route)}
	if caddyfilePath != "" {
		p.caddyfile = &caddyfile{path: caddyfilePath, state: stateDir}
	}
	return p, nil
}

// Describe names the Caddy and route for messages.
func (p *Proxy) Describe() string {
	return fmt.Sprintf("Caddy at %s (route %s)", p.admin.address, p.route)
}

// config reads Caddy's whole running config and its Etag.
func (p *Proxy) config(ctx context.Context) (map[string]any, string, error) {
	var cfg map[string]any
	h, err := p.admin.call(ctx, http.MethodGet, "/config/", nil, nil, &cfg)
	if err != nil {
		return nil, "", err
	}
	return cfg, h.Get("Etag"), nil
}

// handlers reads the config and finds the route's handlers in it; this is
// how every command finds the route.
func (p *Proxy) handlers(ctx context.Context, known []string) (all, route []proxyHandler, etag string, err error) {
	cfg, etag, err := p.config(ctx)
	if err != nil {
		return nil, nil, "", err
	}
	all = findProxies(cfg)
	route, err = selectHandlers(all, p.route, known)
	return all, route, etag, err
}

// Route returns the route as Caddy serves it: the reverse_proxy's
// upstreams, one release whose name Caddy does not keep.
func (p *Proxy) Route(ctx context.Context, known []string) (deploy.Route, error) {
	_, hs, _, err := p.handlers(ctx, known)
	if err != nil {
		return nil, err
	}
	return routeOf(hs[0]), nil
}

// PointsAt names every reverse_proxy of Caddy that dials upstream.
func (p *Proxy) PointsAt(ctx context.Context, upstream string) ([]string, error) {
	cfg, _, err := p.config(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, h := range dialing(findProxies(cfg), upstream) {
		out = append(out, "Caddy's "+h.describe())
	}
	return out, nil
}

// host is the site whose blocks the Caddyfile rewrite may touch; "" when
// the route is an upstream (every block that names it).
func (p *Proxy) host() string {
	if p.route.byUpstream() {
		return ""
	}
	return string(p.route)
}

// SetRoute writes the route's upstreams (and, when their weights differ,
// a weighted_round_robin policy) in one admin call (one Caddy reload),
// guarded by the config's Etag, reads it back, and writes the Caddyfile.
// The Caddyfile is locked and checked before Caddy is touched. A route
// already at to is a change whose answer was lost: only the Caddyfile may
// be left to do. A route at neither is ErrConflict; weights this Caddy
// cannot split by are refused before anything changes.
func (p *Proxy) SetRoute(ctx context.Context, from, to deploy.Route) error {
	want, err := upstreamsFor(to)
	if err != nil {
		return err
	}
	if err := p.canWeigh(ctx, want); err != nil {
		return err
	}
	if p.caddyfile != nil {
		unlock, err := p.caddyfile.lock(ctx)
		if err != nil {
			return err
		}
		defer unlock()
	}
	known := append(from.Endpoints(), to.Endpoints()...)
	for attempt := 1; ; attempt++ {
		_, hs, etag, err := p.handlers(ctx, known)
		if err != nil {
			return err
		}
		now := hs[0].dials // as Caddy spells them, which is how the Caddyfile spells them
		if deploy.Same(routeOf(hs[0]), to) {
			return p.follow(from.Endpoints(), now, want.weights)
		}
		if !deploy.Same(routeOf(hs[0]), from) {
			return fmt.Errorf("%w: Caddy now points %s at %s, not %s; run the deploy again", deploy.ErrConflict, p.route, spell(routeOf(hs[0])), spell(from))
		}
		if p.caddyfile != nil {
			if _, err := p.caddyfile.plan(p.host(), now, now); err != nil {
				return fmt.Errorf("%w: %w", deploy.ErrProxy, err)
			}
		}
		err = p.write(ctx, hs, want, etag)
		if errors.Is(err, errChanged) && attempt < switchAttempts {
			continue // something else changed Caddy's config: look again
		}
		if err != nil {
			return p.assumedWeights(ctx, want, err)
		}
		if err := p.follow(now, want.dials, want.weights); err != nil {
			// Caddy and the file must not disagree: put Caddy back.
			if rerr := p.restore(context.WithoutCancel(ctx), hs); rerr != nil {
				return fmt.Errorf("%w: switched Caddy but could not write the Caddyfile (%v), and could not switch Caddy back (%v): Caddy serves %s, the file says %s", deploy.ErrProxy, err, rerr, want.describe(), strings.Join(now, " "))
			}
			return fmt.Errorf("%w: write the Caddyfile %s: %v; Caddy switched back to %s", deploy.ErrProxy, p.caddyfile.path, err, strings.Join(now, " "))
		}
		return nil
	}
}

// spell is a route for Caddy's messages: its upstreams, with their
// weights when these differ.
func spell(r deploy.Route) string {
	u, err := upstreamsFor(r)
	if err != nil {
		return r.String()
	}
	return u.describe()
}

// follow makes the Caddyfile say what Caddy now serves.
func (p *Proxy) follow(from, to []string, weights []int) error {
	if p.caddyfile == nil || slices.Equal(from, to) && len(to) == 1 {
		return nil
	}
	return p.caddyfile.replace(p.host(), from, to, weights)
}

// errChanged: the config's Etag no longer matched (412); not our route's doing.
var errChanged = errors.New("the config changed meanwhile")

// write puts u into the handlers in one change, and reads each back. One
// handler whose policy stays: PATCH its upstreams (a POST on an array
// would append); whose policy changes: PATCH the handler. Several: PATCH
// the servers they live in, so that every site moves in the same reload.
func (p *Proxy) write(ctx context.Context, hs []proxyHandler, u upstreams, etag string) error {
	if u.weights != nil {
		for _, h := range hs {
			if own := ownPolicy(h.handler); own != "" {
				return fmt.Errorf("%w: the reverse_proxy at %s chooses its upstreams by lb_policy %s; weights would replace that policy and it could not be given back; take lb_policy out of the Caddyfile to send requests by weight", deploy.ErrProxy, h.path, own)
			}
		}
	}
	path, body := hs[0].path+"/upstreams", any(nil)
	switch {
	case len(hs) > 1:
		var err error
		if path, body, err = p.serversWith(ctx, hs, func(_ proxyHandler, h map[string]any) { u.apply(h) }); err != nil {
			return err
		}
	case u.policyChanges(hs[0].handler):
		h := maps.Clone(hs[0].handler)
		u.apply(h)
		path, body = hs[0].path, h
	default:
		h := map[string]any{}
		u.apply(h)
		body = h["upstreams"]
	}
	if err := p.patch(ctx, path, body, etag); err != nil {
		return err
	}
	for _, h := range hs {
		var got map[string]any
		if _, err := p.admin.call(ctx, http.MethodGet, h.path, nil, nil, &got); err != nil {
			return fmt.Errorf("%w: read back %s: %v", deploy.ErrProxy, h.path, err)
		}
		if !u.matches(got) {
			return fmt.Errorf("%w: Caddy took the change but reads back %v at %s, not %s", deploy.ErrProxy, got["upstreams"], h.path, u.describe())
		}
	}
	return nil
}

// restore puts the handlers' upstreams and load balancing back as they
// were read, in one change.
func (p *Proxy) restore(ctx context.Context, hs []proxyHandler) error {
	put := func(was proxyHandler, h map[string]any) {
		for _, k := range []string{"upstreams", "load_balancing"} {
			if v, ok := was.handler[k]; ok {
				h[k] = v
			} else {
				delete(h, k)
			}
		}
	}
	if len(hs) == 1 {
		return p.patch(ctx, hs[0].path, hs[0].handler, "")
	}
	path, body, err := p.serversWith(ctx, hs, put)
	if err != nil {
		return err
	}
	return p.patch(ctx, path, body, "")
}

// patch is one change of Caddy's config, guarded by etag when set.
func (p *Proxy) patch(ctx context.Context, path string, body any, etag string) error {
	header := http.Header{}
	if etag != "" {
		header.Set("If-Match", etag)
	}
	if _, err := p.admin.call(ctx, http.MethodPatch, path, body, header, nil); err != nil {
		switch {
		case errors.Is(err, deploy.ErrConflict):
			return fmt.Errorf("%w: %w", errChanged, err)
		case errors.Is(err, deploy.ErrProxyUnreached):
			return err
		}
		return fmt.Errorf("%w: %v", deploy.ErrProxy, err)
	}
	return nil
}

// serversWith is Caddy's servers object with each of the handlers edited.
func (p *Proxy) serversWith(ctx context.Context, hs []proxyHandler, edit func(was proxyHandler, h map[string]any)) (string, any, error) {
	const servers = "/config/apps/http/servers"
	var cfg map[string]any
	if _, err := p.admin.call(ctx, http.MethodGet, servers, nil, nil, &cfg); err != nil {
		return "", nil, err
	}
	for _, h := range hs {
		rel := strings.TrimPrefix(h.path, servers+"/")
		handler, ok := at(cfg, strings.Split(rel, "/")).(map[string]any)
		if !ok {
			return "", nil, fmt.Errorf("%w: %s moved in Caddy's config; run the deploy again", deploy.ErrConflict, h.path)
		}
		edit(h, handler)
	}
	return servers, cfg, nil
}

// at walks a decoded JSON value along a path of keys and array indices.
func at(v any, path []string) any {
	for _, k := range path {
		switch t := v.(type) {
		case map[string]any:
			v = t[k]
		case []any:
			i, err := strconv.Atoi(k)
			if err != nil || i < 0 || i >= len(t) {
				return nil
			}
			v = t[i]
		default:
			return nil
		}
	}
	return v
}

// InFlight reports the requests still running on upstream, one endpoint
// of a route of any size: Caddy lists each upstream on its own, under
// every spelling some reverse_proxy dials it by (localhost:8000 and
// 127.0.0.1:8000 are two entries, one container). Caddy 2.11.2 and later
// keep listing a removed upstream until it drains; older ones forget it
// at once, so its absence there proves nothing.
func (p *Proxy) InFlight(ctx context.Context, upstream string) (deploy.InFlight, error) {
	var list []struct {
		Address     string `json:"address"`
		NumRequests int    `json:"num_requests"`
	}
	if _, err := p.admin.call(ctx, http.MethodGet, "/reverse_proxy/upstreams", nil, nil, &list); err != nil {
		return deploy.InFlight{}, err
	}
	in, listed := deploy.InFlight{Reported: true}, false
	for _, u := range list {
		if deploy.SameUpstream(u.Address, upstream) {
			in.Requests += u.NumRequests
			listed = true
		}
	}
	if !listed {
		return deploy.InFlight{Reported: p.reportsDrain(ctx)}, nil
	}
	if in.Requests > 0 {
		p.mu.Lock()
		p.tracksDrained = true // an upstream not in the config, yet listed
		p.mu.Unlock()
	}
	return in, nil
}

// reportsDrain says whether this Caddy lists removed upstreams until they
// drain: seen doing it, or a version of 2.11.2 or later.
func (p *Proxy) reportsDrain(ctx context.Context) bool {
	v, ok := p.caddyVersion(ctx)
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.tracksDrained || ok && !versionBefore(v, 2, 11, 2)
}

// caddyVersion is Caddy's version as read once from its /metrics.
func (p *Proxy) caddyVersion(ctx context.Context) (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.versionRead {
		p.versionRead = true
		p.versionText, p.versionOK = p.version(ctx)
	}
	return p.versionText, p.versionOK
}

// version reads Caddy's version from its admin /metrics (go_build_info),
// which Caddy fills for release builds; custom builds say "(devel)".
func (p *Proxy) version(ctx context.Context) (string, bool) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.admin.base+"/metrics", nil)
	if err != nil {
		return "", false
	}
	resp, err := p.admin.http.Do(req)
	if err != nil {
		return "", false
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Bytes()
		if !bytes.HasPrefix(line, []byte("go_build_info{")) || !bytes.Contains(line, []byte("caddyserver/caddy")) {
			continue
		}
		_, rest, ok := bytes.Cut(line, []byte(`version="`))
		if !ok {
			return "", false
		}
		v, _, _ := bytes.Cut(rest, []byte(`"`))
		return string(v), true
	}
	return "", false
}

// versionBefore says whether v ("v2.11.9") is older than major.minor.patch.
// An unreadable version counts as older.
func versionBefore(v string, major, minor, patch int) bool {
	parts := strings.SplitN(strings.TrimPrefix(v, "v"), ".", 3)
	if len(parts) != 3 {
		return true
	}
	var got [3]int
	for i, s := range parts {
		s, _, _ = strings.Cut(s, "-")
		n, err := strconv.Atoi(s)
		if err != nil {
			return true
		}
		got[i] = n
	}
	want := [3]int{major, minor, patch}
	for i := range got {
		if got[i] != want[i] {
			return got[i] < want[i]
		}
	}
	return false
}

// Retire does nothing: after a reload Caddy ends an old upstream's streams
// itself (at once, or after stream_close_delay).
func (p *Proxy) Retire(context.Context, string) error { return nil }

// Site is one reverse_proxy of a running Caddy: the hosts that lead to it
// and its upstreams.
type Site struct {
	Hosts     []string
	Upstreams []string
}

// Sites lists every reverse_proxy of the Caddy at address, for `handoff
// init` to describe what runs.
func Sites(ctx context.Context, address string) ([]Site, error) {
	a, err := newAdmin(address)
	if err != nil {
		return nil, err
	}
	var cfg map[string]any
	if _, err := a.call(ctx, http.MethodGet, "/config/", nil, nil, &cfg); err != nil {
		return nil, err
	}
	var out []Site
	for _, h := range findProxies(cfg) {
		out = append(out, Site{Hosts: h.hosts, Upstreams: h.dials})
	}
	return out, nil
}
