package deploy

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// partsProxy is a proxy of several parts that each take a switch on their own
// (a swarm's nodes): deploy.Parts. Every switch reaches the nodes named in
// reached, and the others are not reached.
type partsProxy struct {
	*fakeProxy
	reached   []string
	missed    []string
	rows      []PartStatus
	statusErr error
	routeErr  error // Route fails with it, if set: a part did not answer
	sent      int
	last      []PartResult
	// holds counts Hold's calls (OneReading); holding says one is not released,
	// heldRows whether it was as the rows were read.
	holds             int
	holding, heldRows bool
}

func (p *partsProxy) Route(ctx context.Context, known []string) (Route, error) {
	if p.routeErr != nil {
		return nil, p.routeErr
	}
	return p.fakeProxy.Route(ctx, known)
}

func (p *partsProxy) Hold() func() {
	p.holds++
	p.holding = true
	return func() { p.holding = false }
}

func (p *partsProxy) SetRoute(ctx context.Context, from, to Route) error {
	p.last = nil
	if len(to) == 0 {
		return p.fakeProxy.SetRoute(ctx, from, to) // refused before any node is told
	}
	p.sent++
	for _, n := range p.reached {
		p.last = append(p.last, PartResult{Node: n, Route: to.String(), Generation: uint64(p.sent), Result: PartSwitched})
	}
	for _, n := range p.missed {
		p.last = append(p.last, PartResult{Node: n, Route: to.String(), Generation: uint64(p.sent), Result: PartNotReached, Detail: "node down"})
	}
	return p.fakeProxy.SetRoute(ctx, from, to)
}

func (p *partsProxy) LastSwitch() []PartResult { return p.last }

func (p *partsProxy) PartStatus(context.Context) ([]PartStatus, error) {
	p.heldRows = p.holding
	return p.rows, p.statusErr
}

func nodesOf(results []PartResult) []string {
	var out []string
	for _, r := range results {
		out = append(out, r.Node+" "+r.Result)
	}
	return out
}

func TestADeployRecordsHowEachPartTookItsSwitch(t *testing.T) {
	r := newRig(t)
	pp := &partsProxy{fakeProxy: r.proxy, reached: []string{"hn1", "hn2"}, missed: []string{"hn3"}}
	r.d.Proxy = pp
	rec, err := r.d.Deploy(context.Background(), testService())
	require.NoError(t, err)
	require.Equal(t, []string{"hn1 switched", "hn2 switched", "hn3 not reached"}, nodesOf(rec.Nodes))
	require.Equal(t, "web-2 (127.0.0.1:40001):100", rec.Nodes[0].Route, "which switch each row belongs to")
	require.Equal(t, "node down", rec.Nodes[2].Detail)
	require.Equal(t, rec.Nodes, r.history.recs[0].Nodes, "saved with the record")

	// A rollback's record has its own switch's rows.
	rb, err := r.d.Rollback(context.Background(), testService(), 0)
	require.NoError(t, err)
	require.Len(t, rb.Nodes, 3)
	require.Equal(t, uint64(2), rb.Nodes[0].Generation)
	require.Contains(t, rb.Nodes[0].Route, "127.0.0.1:30001")
}

// A switch whose answer was lost is sent again to finish it: the record keeps
// both sends' rows, in order.
func TestASwitchSentAgainKeepsTheRowsOfBoth(t *testing.T) {
	r := newRig(t)
	pp := &partsProxy{fakeProxy: r.proxy, reached: []string{"hn1"}}
	r.d.Proxy = pp
	LoseNextReply(r.proxy)
	rec, err := r.d.Deploy(context.Background(), testService())
	require.NoError(t, err)
	require.Equal(t, []string{"hn1 switched", "hn1 switched"}, nodesOf(rec.Nodes))
	require.Equal(t, []uint64{1, 2}, []uint64{rec.Nodes[0].Generation, rec.Nodes[1].Generation})
}

// Repair's route sent again to the nodes that missed it is recorded as any switch.
func TestRepairRecordsTheRouteItSentAgain(t *testing.T) {
	r := newRig(t)
	pp := &partsProxy{fakeProxy: r.proxy, reached: []string{"hn1", "hn3"}}
	lp := &partsLagging{partsProxy: pp}
	r.d.Proxy = lp
	_, err := r.d.Deploy(context.Background(), testService())
	require.NoError(t, err)
	lp.lagging = []string{"the proxy on hn3 serves an older switch (generation 1: web-1)"}

	rec, err := r.d.Repair(context.Background(), testService())
	require.NoError(t, err)
	require.Equal(t, []string{"hn1 switched", "hn3 switched"}, nodesOf(rec.Nodes))
	require.Equal(t, uint64(2), rec.Nodes[1].Generation)
}

// partsLagging is a parts proxy some of whose parts missed a switch.
type partsLagging struct {
	*partsProxy
	lagging   []string
	behindErr error
}

// Behind is asked of the route the proxy serves, as the procedure read it.
func (p *partsLagging) Behind(_ context.Context, route Route) ([]string, error) {
	if !Same(route, p.fakeProxy.route) {
		return nil, fmt.Errorf("asked who is behind %s; the proxy serves %s", route, p.fakeProxy.route)
	}
	return p.lagging, p.behindErr
}

func TestAProxyWithoutPartsRecordsNoNodes(t *testing.T) {
	r := newRig(t)
	rec, err := r.d.Deploy(context.Background(), testService())
	require.NoError(t, err)
	require.Nil(t, rec.Nodes)
	st, err := r.d.Status(context.Background(), testService())
	require.NoError(t, err)
	require.Nil(t, st.Parts)
}

func TestStatusHasARowPerPart(t *testing.T) {
	r := newRig(t)
	n := int64(2)
	pp := &partsProxy{fakeProxy: r.proxy, rows: []PartStatus{
		{Name: "hn1", Role: "manager", State: "ready", Availability: "active", Proxy: "running", Generation: 4, Route: "web-1 (tasks.web-blue:8000):100", InFlight: &n},
		{Name: "hn2", Role: "worker", State: "down", Availability: "active", Note: "not reached: node down"},
	}}
	r.d.Proxy = pp
	st, err := r.d.Status(context.Background(), testService())
	require.NoError(t, err)
	require.Equal(t, pp.rows, st.Parts)

	pp.statusErr = errors.New("no proxy image (swarm.proxy_image)")
	_, err = r.d.Status(context.Background(), testService())
	require.ErrorIs(t, err, pp.statusErr)
}

// One status reads the parts once: every question it asks of the proxy is
// answered from one reading, held until it ends.
func TestStatusHoldsOneReadingOfTheParts(t *testing.T) {
	r := newRig(t)
	pp := &partsProxy{fakeProxy: r.proxy, rows: []PartStatus{{Name: "hn1"}}}
	r.d.Proxy = pp
	_, err := r.d.Status(context.Background(), testService())
	require.NoError(t, err)
	require.Equal(t, 1, pp.holds)
	require.True(t, pp.heldRows, "the rows read from the reading held")
	require.False(t, pp.holding, "released when status ends")
}

// A part that does not answer does not end status: it shows the rows (which
// say which part) and why what the proxy serves is not known. A deploy still
// refuses to go on: it must not stop what that part may point at.
func TestStatusWithAPartUnreadShowsTheRowsAndWhy(t *testing.T) {
	r := newRig(t)
	pp := &partsProxy{fakeProxy: r.proxy, reached: []string{"hn1", "hn2"}}
	r.d.Proxy = pp
	_, err := r.d.Deploy(context.Background(), testService())
	require.NoError(t, err)
	pp.routeErr = fmt.Errorf("%w: the proxies of web could not be read: hn2 (failed, exit 1: no socket)", ErrProxyUnreached)
	pp.rows = []PartStatus{{Name: "hn1", Proxy: "running", Generation: 1}, {Name: "hn2", Proxy: "running", Note: "its proxy did not answer: failed, exit 1: no socket"}}

	st, err := r.d.Status(context.Background(), testService())
	require.NoError(t, err)
	require.False(t, st.Agree)
	require.Contains(t, st.Problem, "hn2 (failed, exit 1: no socket)")
	require.Contains(t, st.Problem, "not known until every part answers")
	require.Equal(t, pp.rows, st.Parts)
	require.Equal(t, "web-2", st.Releases[0].Name, "the containers are shown")
	require.NotNil(t, st.LastEvent)
	require.Equal(t, 1, pp.holds)

	pp.statusErr = fmt.Errorf("%w: no node answered", ErrProxyUnreached)
	_, err = r.d.Status(context.Background(), testService())
	require.ErrorIs(t, err, ErrProxyUnreached, "no row to show: an error")
	pp.statusErr = nil

	r.rt.calls = nil
	_, err = r.d.Deploy(context.Background(), testService())
	require.ErrorIs(t, err, ErrProxyUnreached)
	require.Empty(t, r.rt.calls, "nothing started or stopped")

	r.d.Proxy = &laggingProxy{fakeProxy: r.proxy} // one proxy: its error is status's
	r.proxy.readBackErr, r.proxy.switchesTried = pp.routeErr, []string{"x"}
	_, err = r.d.Status(context.Background(), testService())
	require.ErrorIs(t, err, ErrProxyUnreached)
}

// Who is behind that cannot be read is said, not fatal to status.
func TestStatusSaysWhenItCannotTellWhichPartsAreBehind(t *testing.T) {
	r := newRig(t)
	lp := &partsLagging{partsProxy: &partsProxy{fakeProxy: r.proxy}, behindErr: errors.New("hn2 did not answer")}
	r.d.Proxy = lp
	st, err := r.d.Status(context.Background(), testService())
	require.NoError(t, err)
	require.True(t, st.Agree)
	require.Equal(t, "which parts of the proxy serve another route is not known: hn2 did not answer", st.Problem)
}

// With a replica down as well, status names the parts behind, and repair
// starts the replica again and then sends them the route.
func TestRepairOfAReplicaDownSendsTheRouteAgainToThePartsBehind(t *testing.T) {
	r := newRig(t)
	lp := &laggingProxy{fakeProxy: r.proxy}
	r.d.Proxy = lp
	_, err := r.d.Deploy(context.Background(), replicated(2))
	require.NoError(t, err)
	r.rt.find("web-2-2").Running = false
	lp.lagging = []string{"the proxy on hn3 serves an older switch (generation 3: web-1)"}

	st, err := r.d.Status(context.Background(), replicated(2))
	require.NoError(t, err)
	require.Contains(t, st.Problem, "web-2-2 of web-2 not running")
	require.Contains(t, st.Problem, "hn3 serves an older switch")

	r.rt.calls = nil
	startedFirst := false
	lp.onResend = func() { startedFirst = slices.Contains(r.rt.calls, "start web-2-2") }
	rec, err := r.d.Repair(context.Background(), replicated(2))
	require.NoError(t, err)
	require.Equal(t, []string{"start web-2-2"}, r.rt.calls)
	require.Len(t, lp.resent, 1, "the route sent again")
	require.True(t, startedFirst, "after the replica is started again")
	require.Contains(t, strings.Join(rec.Notes, "\n"), "hn3 serves an older switch")
}
