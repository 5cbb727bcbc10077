package caddy

import (
	"context"
	"fmt"
	"strings"
)

// Advice lists the Caddy settings a deploy without failures needs that the
// route's reverse_proxy lacks, and a Caddyfile out of step.
func (p *Proxy) Advice(ctx context.Context, upstream string) ([]string, error) {
	_, hs, _, err := p.handlers(ctx, []string{upstream})
	if err != nil {
		return nil, err
	}
	version, _ := p.caddyVersion(ctx)
	advice := advise(hs[0].handler, p.admin.address, version)
	if p.caddyfile != nil {
		if _, err := p.caddyfile.plan(p.host(), hs[0].dials, hs[0].dials); err != nil {
			msg := "out of step: " + err.Error()
			if prev, ok := p.caddyfile.previous(); ok {
				msg += "; the version before handoff's last switch is " + prev
			}
			advice = append(advice, msg)
		}
	}
	return advice, nil
}

// advise reads one reverse_proxy handler. A handler of several upstreams
// (a release of replicas, or a user's `reverse_proxy a b`) needs two
// settings more, so that a replica that dies between deploys fails no
// request: Caddy tries a request again, on the upstream its policy picks
// next, only with lb_try_duration or lb_retries (a refused connection for
// any method, other errors for GET); and without a passive health check
// (fail_duration) it goes on picking the replica that is down. Caddy
// 2.6.2 has all three. With one upstream, fail_duration only turns a
// failure into 503s for its duration: nothing is left to pick.
//
// version is Caddy's ("" when it cannot be read): stream_close_delay came
// with 2.7, and an older Caddy refuses a Caddyfile that sets it, so there
// the advice is to upgrade. One whose version cannot be read is assumed
// to have it, as canWeigh assumes weights.
func advise(handler map[string]any, adminAddress, version string) []string {
	var out []string
	if _, ok := handler["stream_close_delay"]; !ok {
		if version != "" && versionBefore(version, 2, 7, 0) {
			out = append(out, "Caddy "+version+" has no stream_close_delay (it came with 2.7): every deploy (any Caddy reload) closes open WebSockets and SSE streams; upgrade Caddy to keep them open")
		} else {
			out = append(out, "reverse_proxy has no stream_close_delay: every deploy (any Caddy reload) closes open WebSockets and SSE streams; add `stream_close_delay 5m`")
		}
	}
	n := len(dials(handler))
	tries := dig(handler, "load_balancing", "try_duration") != nil
	retries := tries || dig(handler, "load_balancing", "retries") != nil
	switch {
	case n > 1 && !retries:
		out = append(out, fmt.Sprintf("reverse_proxy has %d upstreams and no lb_try_duration: a request sent to one that is down (a replica that crashed or is restarting) fails instead of going to another; add `lb_try_duration 5s` and `lb_try_interval 100ms`", n))
	case !tries:
		out = append(out, "reverse_proxy has no lb_try_duration: a request that meets a connection error fails instead of waiting; add `lb_try_duration 5s` and `lb_try_interval 100ms`")
	}
	switch passive := dig(handler, "health_checks", "passive", "fail_duration") != nil; {
	case n > 1 && !passive:
		out = append(out, fmt.Sprintf("reverse_proxy has %d upstreams and no fail_duration: Caddy goes on sending requests to one that is down, each tried again elsewhere after lb_try_interval, or failed; add `fail_duration 10s`, so that one failed request keeps Caddy off it for 10s", n))
	case n == 1 && passive:
		out = append(out, "reverse_proxy has one upstream and a fail_duration: after one failed request Caddy answers 503 for that long, even once the app is back; take fail_duration away (it helps a route of several upstreams)")
	}
	if !strings.HasPrefix(adminAddress, "unix:") {
		out = append(out, "Caddy's admin API is on TCP: any local process (or container, on 0.0.0.0) can reconfigure Caddy; prefer `admin unix//run/caddy/admin.sock`")
	}
	return out
}
