package caddy

import (
	"context"
	"strings"
)

// Advice lists the Caddy settings a deploy without failures needs that the
// route's reverse_proxy lacks, and a Caddyfile out of step.
func (p *Proxy) Advice(ctx context.Context, upstream string) ([]string, error) {
	_, hs, _, err := p.handlers(ctx, []string{upstream})
	if err != nil {
		return nil, err
	}
	advice := advise(hs[0].handler, p.admin.address)
	if p.caddyfile != nil {
		if _, err := p.caddyfile.planRoute(p.host(), hs[0].dials, hs[0].dials); err != nil {
			msg := "out of step: " + err.Error()
			if prev, ok := p.caddyfile.previous(); ok {
				msg += "; the version before handoff's last switch is " + prev
			}
			advice = append(advice, msg)
		}
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
