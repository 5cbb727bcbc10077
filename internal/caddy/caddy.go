package caddy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/handoff-dev/handoff/internal/atomicfile"
	"github.com/handoff-dev/handoff/internal/deploy"
)

// Proxy is the deploy.Proxy for one route of a running Caddy.
type Proxy struct {
	admin     *admin
	route     Route
	caddyfile string // "" : do not keep a Caddyfile in step

	mu            sync.Mutex
	tracksDrained bool // Caddy lists removed upstreams until they drain (2.11.2+)
	versionRead   bool
}

var _ deploy.Proxy = (*Proxy)(nil)

// New returns the Proxy for route through the admin API at address
// (http://host:port, host:port or unix:/path). caddyfile, when set, is kept
// in step with every switch.
func New(address string, route string, caddyfile string) (*Proxy, error) {
	if route == "" {
		return nil, fmt.Errorf("%w: no Caddy route: set caddy.route in handoff.yml or pass --caddy-route (the site host, or the upstream Caddy proxies to today, like localhost:8000)", deploy.ErrConfig)
	}
	a, err := newAdmin(address)
	if err != nil {
		return nil, err
	}
	return &Proxy{admin: a, route: Route(route), caddyfile: caddyfile}, nil
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

// Upstream returns the route's current upstream.
func (p *Proxy) Upstream(ctx context.Context, known []string) (string, error) {
	cfg, _, err := p.config(ctx)
	if err != nil {
		return "", err
	}
	h, err := selectHandler(findProxies(cfg), p.route, known)
	if err != nil {
		return "", err
	}
	return h.dials[0], nil
}

// Preflight refuses, before anything starts, a switch the Caddyfile could
// not follow.
func (p *Proxy) Preflight(_ context.Context, upstream string) error {
	if p.caddyfile == "" {
		return nil
	}
	_, _, err := p.planCaddyfile(upstream, upstream)
	return err
}

// Switch points the route from one upstream to the other in one admin call
// (one Caddy reload), guarded by the config's Etag, reads it back, and
// writes the Caddyfile. The Caddyfile is checked before Caddy is touched.
func (p *Proxy) Switch(ctx context.Context, from, to string) error {
	cfg, etag, err := p.config(ctx)
	if err != nil {
		return err
	}
	h, err := selectHandler(findProxies(cfg), p.route, []string{from})
	if err != nil {
		return err
	}
	if !deploy.SameUpstream(h.dials[0], from) {
		return fmt.Errorf("%w: Caddy now points %s at %s, not %s; run the deploy again", deploy.ErrConflict, p.route, h.dials[0], from)
	}
	from = h.dials[0] // as Caddy spells it, which is how the Caddyfile spells it

	var newFile []byte
	var perm os.FileMode
	if p.caddyfile != "" {
		newFile, perm, err = p.planCaddyfile(from, to)
		if err != nil {
			return err
		}
	}

	if err := p.patchUpstream(ctx, h, to, etag); err != nil {
		return err
	}

	if p.caddyfile != "" {
		if err := p.writeCaddyfile(newFile, perm); err != nil {
			// Caddy and the file must not disagree: put Caddy back.
			if rerr := p.patchUpstream(context.WithoutCancel(ctx), h, from, ""); rerr != nil {
				return fmt.Errorf("%w: wrote Caddy but not the Caddyfile (%v), and could not switch Caddy back (%v): Caddy serves %s, the file says %s", deploy.ErrProxy, err, rerr, to, from)
			}
			return fmt.Errorf("%w: write the Caddyfile %s: %v; Caddy switched back to %s", deploy.ErrProxy, p.caddyfile, err, from)
		}
	}
	return nil
}

// patchUpstream replaces the handler's upstreams with [to] and reads them
// back. PATCH, because a POST on an array appends.
func (p *Proxy) patchUpstream(ctx context.Context, h proxyHandler, to, etag string) error {
	path := h.path + "/upstreams"
	header := http.Header{}
	if etag != "" {
		header.Set("If-Match", etag)
	}
	body := []map[string]string{{"dial": to}}
	if _, err := p.admin.call(ctx, http.MethodPatch, path, body, header, nil); err != nil {
		if errors.Is(err, deploy.ErrConflict) || errors.Is(err, deploy.ErrProxyUnreached) {
			return err
		}
		return fmt.Errorf("%w: %v", deploy.ErrProxy, err)
	}
	var got []map[string]any
	if _, err := p.admin.call(ctx, http.MethodGet, path, nil, nil, &got); err != nil {
		return fmt.Errorf("%w: read back %s: %v", deploy.ErrProxy, path, err)
	}
	if len(got) != 1 || got[0]["dial"] != to {
		return fmt.Errorf("%w: Caddy took the change but reads back %v at %s, not %s", deploy.ErrProxy, got, path, to)
	}
	return nil
}

// planCaddyfile computes the file with the new upstream, or refuses.
func (p *Proxy) planCaddyfile(from, to string) ([]byte, os.FileMode, error) {
	info, err := os.Stat(p.caddyfile)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: Caddyfile: %v (fix --caddyfile, or leave it out)", deploy.ErrConfig, err)
	}
	src, err := os.ReadFile(p.caddyfile)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: Caddyfile: %v", deploy.ErrConfig, err)
	}
	host := ""
	if !p.route.byUpstream() {
		host = string(p.route)
	}
	out, n := rewriteUpstream(string(src), host, from, to)
	if n == 0 {
		return nil, 0, fmt.Errorf("%w: %v", deploy.ErrProxy, errNotInCaddyfile(p.caddyfile, host, from))
	}
	return []byte(out), info.Mode().Perm(), nil
}

// writeCaddyfile keeps the previous file as <path>.handoff-previous and
// writes the new one atomically.
func (p *Proxy) writeCaddyfile(data []byte, perm os.FileMode) error {
	old, err := os.ReadFile(p.caddyfile)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(p.caddyfile+".handoff-previous", old, perm); err != nil {
		return err
	}
	return atomicfile.Write(p.caddyfile, data, perm)
}

// InFlight reports the requests still running on upstream. Caddy 2.11.2
// and later keep listing a removed upstream until it drains; older ones
// forget it at once, so its absence there proves nothing.
func (p *Proxy) InFlight(ctx context.Context, upstream string) (deploy.InFlight, error) {
	var list []struct {
		Address     string `json:"address"`
		NumRequests int    `json:"num_requests"`
	}
	if _, err := p.admin.call(ctx, http.MethodGet, "/reverse_proxy/upstreams", nil, nil, &list); err != nil {
		return deploy.InFlight{}, err
	}
	for _, u := range list {
		if u.Address == upstream {
			if u.NumRequests > 0 {
				p.mu.Lock()
				p.tracksDrained = true // an upstream not in the config, yet listed
				p.mu.Unlock()
			}
			return deploy.InFlight{Requests: u.NumRequests, Reported: true}, nil
		}
	}
	return deploy.InFlight{Reported: p.reportsDrain(ctx)}, nil
}

// reportsDrain says whether this Caddy lists removed upstreams until they
// drain: seen doing it, or a version of 2.11.2 or later.
func (p *Proxy) reportsDrain(ctx context.Context) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.versionRead {
		p.versionRead = true
		if v, ok := p.version(ctx); ok && !versionBefore(v, 2, 11, 2) {
			p.tracksDrained = true
		}
	}
	return p.tracksDrained
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

// Advice lists the Caddy settings a deploy without failures needs that the
// route's reverse_proxy lacks.
func (p *Proxy) Advice(ctx context.Context, upstream string) ([]string, error) {
	cfg, _, err := p.config(ctx)
	if err != nil {
		return nil, err
	}
	h, err := selectHandler(findProxies(cfg), p.route, []string{upstream})
	if err != nil {
		return nil, err
	}
	advice := advise(h.handler, p.admin.address)
	if err := p.Preflight(ctx, h.dials[0]); err != nil {
		advice = append(advice, "out of step: "+err.Error())
	}
	return advice, nil
}

func advise(handler map[string]any, adminAddress string) []string {
	var out []string
	if _, ok := handler["stream_close_delay"]; !ok {
		out = append(out, "reverse_proxy has no stream_close_delay: every deploy (any Caddy reload) closes open WebSockets and SSE streams; add `stream_close_delay 5m`")
	}
	if dig(handler, "load_balancing", "try_duration") == nil {
		out = append(out, "reverse_proxy has no lb_try_duration: a request that meets a connection error fails instead of waiting; add `lb_try_duration 5s` and `lb_try_interval 100ms`")
	}
	if !strings.HasPrefix(adminAddress, "unix:") {
		out = append(out, "Caddy's admin API is on TCP: any local process (or container, on 0.0.0.0) can reconfigure Caddy; prefer `admin unix//run/caddy/admin.sock`")
	}
	return out
}
