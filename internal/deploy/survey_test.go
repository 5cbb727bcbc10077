package deploy

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The proxy forgot the service (handoff proxy could not restore it at boot,
// or its state file was moved aside): the release in service still runs.
// Nothing stops it; status says what is wrong and what to run, and repair
// points the proxy at it again.
func TestAProxyThatForgotTheRouteStopsNothingAndRepairPointsItBack(t *testing.T) {
	r := newRig(t)
	_, err := r.d.Deploy(context.Background(), testService())
	require.NoError(t, err)
	r.proxy.route = nil // the proxy has no route for web any more
	r.rt.calls = nil

	st, err := r.d.Status(context.Background(), testService())
	require.NoError(t, err)
	require.False(t, st.Agree)
	require.Equal(t, "fake proxy has no route for web, while web-2, the release in service, runs on 127.0.0.1:40001; run `handoff repair web` to point the proxy at it again", st.Problem)

	rec, err := r.d.Repair(context.Background(), testService())
	require.NoError(t, err)
	require.Equal(t, OutcomeSucceeded, rec.Outcome)
	require.Empty(t, r.rt.calls, "nothing started, stopped or removed")
	require.Equal(t, "127.0.0.1:40001", r.proxy.at())
	require.Equal(t, " → 127.0.0.1:40001", r.proxy.switches[len(r.proxy.switches)-1])
	require.Contains(t, strings.Join(rec.Notes, "\n"), "fake proxy has no route for web")

	st, err = r.d.Status(context.Background(), testService())
	require.NoError(t, err)
	require.True(t, st.Agree, st.Problem)
}

// A deploy while the route is lost replaces the release in service as it
// would the live one; it never takes it for a leftover to stop first.
func TestADeployWhileTheProxyForgotTheRouteReplacesTheReleaseInService(t *testing.T) {
	r := newRig(t)
	_, err := r.d.Deploy(context.Background(), testService())
	require.NoError(t, err)
	r.proxy.route = nil
	r.rt.calls = nil

	rec, err := r.d.Deploy(context.Background(), testService())
	require.NoError(t, err)
	require.Equal(t, []string{"run web-3", "stop web-2"}, r.rt.calls, "web-2 is stopped only once web-3 serves")
	require.Equal(t, "web-2", rec.From)
	require.NotContains(t, strings.Join(rec.Notes, "\n"), "an earlier release left running")
}
