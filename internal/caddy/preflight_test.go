package caddy

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/deploy"
)

// A Caddyfile that an interrupted switch left naming an earlier release
// (of three, or of one) while Caddy serves a release of three is brought
// in step by the preflight, and the preflight says so.
func TestPreflightBringsACaddyfileBehindAReleaseOfThreeInStep(t *testing.T) {
	serving := strings.Replace(threeConfig, `{"dial":"127.0.0.1:40001"},{"dial":"127.0.0.1:40002"},{"dial":"127.0.0.1:40003"}`, `{"dial":"127.0.0.1:40004"},{"dial":"127.0.0.1:40005"},{"dial":"127.0.0.1:40006"}`, 1)
	inStep := strings.Replace(threeCaddyfile, "127.0.0.1:40001 127.0.0.1:40002 127.0.0.1:40003", "127.0.0.1:40004 127.0.0.1:40005 127.0.0.1:40006", 1)
	for _, c := range []struct {
		name, behind, named string
	}{
		{"behind a release of three", threeCaddyfile, "127.0.0.1:40001 127.0.0.1:40002 127.0.0.1:40003"},
		{"behind a release of one", strings.Replace(threeCaddyfile, "127.0.0.1:40001 127.0.0.1:40002 127.0.0.1:40003", "127.0.0.1:40001", 1), "127.0.0.1:40001"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ca := startConfigAdmin(t, serving, "v2.11.9")
			file := writeCaddyfile(t, c.behind)
			p, err := New(ca.address, "app.test", file, t.TempDir())
			require.NoError(t, err)
			known := append(release1.Endpoints(), release2.Endpoints()...)
			notes, err := p.Preflight(t.Context(), release2, known)
			require.NoError(t, err)
			require.Equal(t, []string{"the Caddyfile " + file + " still named " + c.named + ", an earlier release (an interrupted switch); it now names 127.0.0.1:40004 127.0.0.1:40005 127.0.0.1:40006, as Caddy does"}, notes)
			require.Equal(t, inStep, readFile(t, file))
		})
	}
}

// An endpoint of a release of three that another site dials too is
// refused before anything starts: the deploy would stop it under that site.
func TestPreflightRefusesAnEndpointOfThreeAnotherSiteDials(t *testing.T) {
	shared := strings.Replace(threeConfig, `[{"dial":"127.0.0.1:40009"}]`, `[{"dial":"127.0.0.1:40002"}]`, 1)
	ca := startConfigAdmin(t, shared, "v2.11.9")
	p, err := New(ca.address, "app.test", writeCaddyfile(t, threeCaddyfile), t.TempDir())
	require.NoError(t, err)
	_, err = p.Preflight(t.Context(), release1, release1.Endpoints())
	require.ErrorIs(t, err, deploy.ErrConfig)
	require.ErrorContains(t, err, "refused before the deploy started anything: 127.0.0.1:40002 is also the upstream of site admin.test")
}
