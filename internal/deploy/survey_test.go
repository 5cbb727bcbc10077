package deploy

import (
	"context"
	"fmt"
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

// laggingProxy is a proxy of several parts, some of which missed the last switch
// (a swarm's node that was down): deploy.Laggards.
type laggingProxy struct {
	*fakeProxy
	lagging  []string
	resent   []string // the routes sent again
	onResend func()   // runs as the route is sent again
	behindAt string   // while some are lagging, they point at this upstream
}

// PointsAt adds the parts behind, while they are, to what points at upstream.
func (p *laggingProxy) PointsAt(ctx context.Context, upstream string) ([]string, error) {
	out, err := p.fakeProxy.PointsAt(ctx, upstream)
	if len(p.lagging) > 0 && upstream != "" && upstream == p.behindAt {
		out = append(out, "the proxy on hn3")
	}
	return out, err
}

// Behind is asked of the route the proxy serves, as the procedure read it.
func (p *laggingProxy) Behind(_ context.Context, route Route) ([]string, error) {
	if !Same(route, p.fakeProxy.route) {
		return nil, fmt.Errorf("asked who is behind %s; the proxy serves %s", route, p.fakeProxy.route)
	}
	return p.lagging, nil
}

func (p *laggingProxy) SetRoute(ctx context.Context, from, to Route) error {
	if Same(from, to) {
		p.resent = append(p.resent, to.String())
		p.lagging = nil
		if p.onResend != nil {
			p.onResend()
		}
	}
	return p.fakeProxy.SetRoute(ctx, from, to)
}

// A part of the proxy that missed a switch is named by status, and repair sends it
// the route again, starting and stopping nothing.
func TestStatusNamesAPartOfTheProxyBehindAndRepairSendsTheRouteAgain(t *testing.T) {
	r := newRig(t)
	lp := &laggingProxy{fakeProxy: r.proxy}
	r.d.Proxy = lp
	_, err := r.d.Deploy(context.Background(), testService())
	require.NoError(t, err)
	lp.lagging = []string{"the proxy on hn3 serves an older switch (generation 3: web-1)"}
	r.rt.calls = nil

	st, err := r.d.Status(context.Background(), testService())
	require.NoError(t, err)
	require.True(t, st.Agree)
	require.Equal(t, "the proxy on hn3 serves an older switch (generation 3: web-1); run `handoff repair web`", st.Problem)

	rec, err := r.d.Repair(context.Background(), testService())
	require.NoError(t, err)
	require.Equal(t, OutcomeSucceeded, rec.Outcome)
	require.Empty(t, r.rt.calls, "nothing started, stopped or removed")
	require.Len(t, lp.resent, 1, "the route sent again")
	require.Contains(t, strings.Join(rec.Notes, "\n"), "hn3 serves an older switch")

	st, err = r.d.Status(context.Background(), testService())
	require.NoError(t, err)
	require.Empty(t, st.Problem)
	rec, err = r.d.Repair(context.Background(), testService())
	require.NoError(t, err)
	require.Len(t, lp.resent, 1, "in step: nothing sent")
	require.Contains(t, strings.Join(rec.Notes, "\n"), "nothing to repair")
}

// A switch one part of the proxy missed leaves the release before running (a deploy
// that failed with both kept): once repair has sent that part the route, nothing
// points at the release before any more, and repair drains and stops it as it would
// any release left running after its switch.
func TestRepairRetiresWhatOnlyThePartsBehindPointedAt(t *testing.T) {
	r := newRig(t)
	lp := &laggingProxy{fakeProxy: r.proxy}
	r.d.Proxy = lp
	_, err := r.d.Deploy(context.Background(), testService())
	require.NoError(t, err)
	old := r.rt.find("web-1")
	old.Running = true // kept, as a switch that failed on hn3 keeps it
	lp.lagging = []string{"the proxy on hn3 serves an older switch (generation 3: web-1)"}
	lp.behindAt = old.Upstream
	r.rt.calls = nil

	rec, err := r.d.Repair(context.Background(), testService())
	require.NoError(t, err)
	require.Len(t, lp.resent, 1, "the route sent again")
	require.Equal(t, []string{"stop web-1"}, r.rt.calls, "then the release before, which nothing points at now, is stopped")
	notes := strings.Join(rec.Notes, "\n")
	require.Contains(t, notes, "leaving web-1 running", "left alone while hn3 pointed at it")
	require.Contains(t, notes, "stopping web-1")

	st, err := r.d.Status(context.Background(), testService())
	require.NoError(t, err)
	require.Empty(t, st.Problem)
}
