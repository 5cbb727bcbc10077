package deploy

import (
	"context"
	"errors"
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
	sent      int
	last      []PartResult
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
	lagging []string
}

func (p *partsLagging) Behind(context.Context, Route) ([]string, error) { return p.lagging, nil }

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
