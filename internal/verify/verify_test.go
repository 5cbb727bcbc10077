package verify

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestKindOf(t *testing.T) {
	require.Equal(t, "ok", kindOf(200, nil))
	require.Equal(t, "ok", kindOf(302, nil))
	require.Equal(t, "5xx", kindOf(502, nil))
	require.Equal(t, "status", kindOf(404, nil))
	require.Equal(t, "refused", kindOf(0, fmt.Errorf("dial: %w", syscall.ECONNREFUSED)))
	require.Equal(t, "reset", kindOf(0, fmt.Errorf("read: %w", syscall.ECONNRESET)))
	require.Equal(t, "eof", kindOf(0, fmt.Errorf("Get: %w", io.EOF)))
	require.Equal(t, "timeout", kindOf(0, fmt.Errorf("Get: %w", os.ErrDeadlineExceeded)))
	require.Equal(t, "error", kindOf(0, errors.New("odd")))
}

func TestSummarizeSplitsAtTheSwitch(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	samples := []Sample{
		{At: at(0), Took: 10 * time.Millisecond, Kind: "ok"},
		{At: at(200), Took: 10 * time.Millisecond, Kind: "5xx", Status: 502},
		{At: at(400), Took: 10 * time.Millisecond, Kind: "ok"},
		{At: at(600), Took: 10 * time.Millisecond, Kind: "ok"},
	}
	r := Summarize("http://x/", samples, "web-1", "web-2", at(500))
	require.Equal(t, 4, r.Requests)
	require.Equal(t, 3, r.OK)
	require.Equal(t, map[string]int{"5xx": 1}, r.ByKind)
	require.Equal(t, 400*time.Millisecond, r.LongestGap)
	require.Equal(t, []Answered{{Release: "web-1", Requests: 3, Failed: 1, Until: at(500)}, {Release: "web-2", Requests: 1}}, r.Answered)
	require.Contains(t, r.String(), "verify: 4 requests to http://x/: 3 ok, 1 failed (1 5xx); longest gap between two successes 400ms")
	require.Contains(t, r.String(), "verify: web-1 answered 2 until the switch at 00:00:00.500")
}

func TestWatchAgainstAServer(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
	defer srv.Close()
	w, err := Start(srv.URL, 100)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return hits.Load() >= 3 }, 10*time.Second, 5*time.Millisecond)
	samples := w.Stop()
	require.GreaterOrEqual(t, len(samples), 3)
	for _, s := range samples {
		require.Equal(t, "ok", s.Kind)
	}
	_, err = Start("example.com", 1)
	require.ErrorContains(t, err, "give a full http:// or https:// URL")
}
