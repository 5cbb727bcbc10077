package proxyclient

import (
	"context"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/deploy"
	"github.com/handoff-dev/handoff/internal/proxy/wire"
)

// Stats reads the service's counts through the control socket; two of
// them make a window.
func TestStatsThroughTheSocket(t *testing.T) {
	_, socket, listen := serveOne(t)
	c := NewControl(socket, "web")
	before, err := c.Stats(context.Background())
	require.NoError(t, err)
	require.Len(t, before.Endpoints, 1)
	for range 3 {
		resp, err := http.Get("http://" + listen + "/")
		require.NoError(t, err)
		resp.Body.Close()
	}
	after, err := c.Stats(context.Background())
	require.NoError(t, err)
	w := wire.Between(before, after, after.Endpoints[0].Release)
	require.Equal(t, uint64(3), w.Requests)
	require.Zero(t, w.Errors)
	require.Positive(t, w.P99)

	_, err = NewControl(socket, "nope").Stats(context.Background())
	require.ErrorIs(t, err, deploy.ErrConfig, "no such service")
}

// The proxy is a deploy.Counter: a window of the endpoints asked for,
// from two readings.
func TestTheProxyCountsForTheAnalysis(t *testing.T) {
	_, socket, listen := serveOne(t)
	p := newProxy(t, socket, "web", listen)
	var counter deploy.Counter = p
	before, err := counter.Counts(context.Background())
	require.NoError(t, err)
	for range 5 {
		resp, err := http.Get("http://" + listen + "/")
		require.NoError(t, err)
		resp.Body.Close()
	}
	after, err := counter.Counts(context.Background())
	require.NoError(t, err)
	st, err := NewControl(socket, "web").Stats(context.Background())
	require.NoError(t, err)
	ep := st.Endpoints[0].Endpoint
	require.Equal(t, 5, after.Since(before, []string{ep}).Requests)
	require.Equal(t, 5, after.Since(nil, []string{ep}).Requests, "nil: since the endpoint entered the route")
	require.Zero(t, after.Since(before, []string{"127.0.0.1:1"}).Requests, "not the route's")
}

// A release that hangs answers nothing: its clients leave, and the
// analysis sees them as failed requests, not as no data.
func TestClientsThatLeftUnansweredCountAsFailed(t *testing.T) {
	st := wire.ServiceStats{Endpoints: []wire.EndpointStats{{Endpoint: "127.0.0.1:4001", Generation: 1, ClientLeft: 150}}}
	w := counts(st).Since(nil, []string{"127.0.0.1:4001"})
	require.Equal(t, deploy.Window{Requests: 150, Errors: 150}, w)
	require.Equal(t, deploy.VerdictFail, deploy.Judge(deploy.Window{Requests: 1000}, w, deploy.Thresholds{}).Verdict)
}
