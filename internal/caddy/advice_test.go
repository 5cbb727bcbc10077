package caddy

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// What the advice says to Caddy 2.11.9 of reverse_proxy handlers as it
// adapts them (Debian's 2.6.2 adapts each to the same, but
// stream_close_delay, which it does not have).
func TestAdvice(t *testing.T) {
	const (
		closes    = "reverse_proxy has no stream_close_delay: every deploy (any Caddy reload) closes open WebSockets and SSE streams; add `stream_close_delay 5m`"
		noWait    = "reverse_proxy has no lb_try_duration: a request that meets a connection error fails instead of waiting; add `lb_try_duration 5s` and `lb_try_interval 100ms`"
		noRetry   = "reverse_proxy has 3 upstreams and no lb_try_duration: a request sent to one that is down (a replica that crashed or is restarting) fails instead of going to another; add `lb_try_duration 5s` and `lb_try_interval 100ms`"
		noPassive = "reverse_proxy has 3 upstreams and no fail_duration: Caddy goes on sending requests to one that is down, each tried again elsewhere after lb_try_interval, or failed; add `fail_duration 10s`, so that one failed request keeps Caddy off it for 10s"
		oneFails  = "reverse_proxy has one upstream and a fail_duration: after one failed request Caddy answers 503 for that long, even once the app is back; take fail_duration away (it helps a route of several upstreams)"
		tcp       = "Caddy's admin API is on TCP: any local process (or container, on 0.0.0.0) can reconfigure Caddy; prefer `admin unix//run/caddy/admin.sock`"
	)
	for _, c := range []struct {
		name, handler string // the reverse_proxy line, and its handler
		admin         string
		want          []string
	}{
		{"reverse_proxy 127.0.0.1:40001",
			`{"handler":"reverse_proxy","upstreams":[{"dial":"127.0.0.1:40001"}]}`,
			"localhost:2019", []string{closes, noWait, tcp}},
		{"reverse_proxy 127.0.0.1:40001 { lb_try_duration 5s; stream_close_delay 5m }",
			`{"handler":"reverse_proxy","load_balancing":{"try_duration":5000000000},"stream_close_delay":300000000000,"upstreams":[{"dial":"127.0.0.1:40001"}]}`,
			"unix:/run/caddy.sock", nil},
		{"reverse_proxy 127.0.0.1:40001 { lb_try_duration 5s; stream_close_delay 5m; fail_duration 10s }",
			`{"handler":"reverse_proxy","health_checks":{"passive":{"fail_duration":10000000000}},"load_balancing":{"try_duration":5000000000},"stream_close_delay":300000000000,"upstreams":[{"dial":"127.0.0.1:40001"}]}`,
			"unix:/run/caddy.sock", []string{oneFails}},
		{"reverse_proxy 127.0.0.1:40001 127.0.0.1:40002 127.0.0.1:40003",
			`{"handler":"reverse_proxy","upstreams":[{"dial":"127.0.0.1:40001"},{"dial":"127.0.0.1:40002"},{"dial":"127.0.0.1:40003"}]}`,
			"unix:/run/caddy.sock", []string{closes, noRetry, noPassive}},
		{"reverse_proxy 127.0.0.1:40001 127.0.0.1:40002 127.0.0.1:40003 { lb_retries 2 }",
			`{"handler":"reverse_proxy","load_balancing":{"retries":2},"upstreams":[{"dial":"127.0.0.1:40001"},{"dial":"127.0.0.1:40002"},{"dial":"127.0.0.1:40003"}]}`,
			"unix:/run/caddy.sock", []string{closes, noWait, noPassive}},
		{"reverse_proxy 127.0.0.1:40001 127.0.0.1:40002 127.0.0.1:40003 { lb_try_duration 5s; lb_try_interval 100ms; fail_duration 10s; stream_close_delay 5m }",
			`{"handler":"reverse_proxy","health_checks":{"passive":{"fail_duration":10000000000}},"load_balancing":{"try_duration":5000000000,"try_interval":100000000},"stream_close_delay":300000000000,"upstreams":[{"dial":"127.0.0.1:40001"},{"dial":"127.0.0.1:40002"},{"dial":"127.0.0.1:40003"}]}`,
			"unix:/run/caddy.sock", nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			require.Equal(t, c.want, advise(decodeNumbers(t, c.handler).(map[string]any), c.admin, "v2.11.9"))
		})
	}
}

// stream_close_delay is advised only to a Caddy that has it (2.7 and
// later, or one whose version cannot be read); Caddy 2.6.2 rejects the
// setting, so it is told to upgrade instead.
func TestAdviceOfStreamCloseDelayByVersion(t *testing.T) {
	const (
		add     = "reverse_proxy has no stream_close_delay: every deploy (any Caddy reload) closes open WebSockets and SSE streams; add `stream_close_delay 5m`"
		upgrade = "Caddy v2.6.2 has no stream_close_delay (it came with 2.7): every deploy (any Caddy reload) closes open WebSockets and SSE streams; upgrade Caddy to keep them open"
		tcp     = "Caddy's admin API is on TCP: any local process (or container, on 0.0.0.0) can reconfigure Caddy; prefer `admin unix//run/caddy/admin.sock`"
	)
	cfg := `{"apps":{"http":{"servers":{"srv0":{"listen":[":8080"],"routes":[{"match":[{"host":["app.test"]}],"handle":[{"handler":"reverse_proxy","load_balancing":{"try_duration":5000000000},"upstreams":[{"dial":"127.0.0.1:40001"}]}],"terminal":true}]}}}}}`
	for version, want := range map[string]string{"v2.6.2": upgrade, "v2.7.0": add, "v2.11.9": add} {
		t.Run(version, func(t *testing.T) {
			p, err := New(startConfigAdmin(t, cfg, version).address, "app.test", "", "")
			require.NoError(t, err)
			advice, err := p.Advice(t.Context(), "127.0.0.1:40001")
			require.NoError(t, err)
			require.Equal(t, []string{want, tcp}, advice)
		})
	}
	handler := decodeNumbers(t, `{"handler":"reverse_proxy","load_balancing":{"try_duration":5000000000},"upstreams":[{"dial":"127.0.0.1:40001"}]}`).(map[string]any)
	require.Equal(t, []string{add}, advise(handler, "unix:/run/caddy.sock", ""), "a Caddy whose version cannot be read is assumed to have it")
}
