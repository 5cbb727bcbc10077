package cli

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/proxy/wire"
)

// Status says, one line each, which services the proxy knows but does
// not serve, and why.
func TestProxyStatusSaysWhatIsNotServed(t *testing.T) {
	since := time.Date(2026, 12, 1, 20, 0, 0, 0, time.Local)
	got := proxyProblems([]wire.ServiceState{
		{Name: "web", Listen: "127.0.0.1:9001", Upstream: "127.0.0.1:32768"},
		{Name: "api", Listen: "10.0.0.5:9002", Upstream: "127.0.0.1:32769", NotListening: &wire.ListenFailure{Error: "listen tcp 10.0.0.5:9002: bind: cannot assign requested address", Since: since, Attempts: 4}},
		{Name: "shop", Unrestored: `listen "x" is not host:port`},
		{Unrestored: "not an entry this handoff can read: json: cannot unmarshal number into Go value of type proxy.savedService"},
	})
	require.Equal(t, []string{
		"api: not listening on 10.0.0.5:9002 since 2026-12-01 20:00:00 (4 attempts): listen tcp 10.0.0.5:9002: bind: cannot assign requested address; handoff proxy keeps trying",
		`shop: not restored from the state file, so not served: listen "x" is not host:port (the entry is kept in the file as it was)`,
		"(unnamed entry): not restored from the state file, so not served: not an entry this handoff can read: json: cannot unmarshal number into Go value of type proxy.savedService (the entry is kept in the file as it was)",
	}, got)
}
