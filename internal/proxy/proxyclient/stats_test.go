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
