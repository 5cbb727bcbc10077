package itest

import (
	"io"
	"testing"
)

// A POST cut, and a request or a WebSocket handshake cut on a new connection, are put down to a reload of
// Caddy in front (ReloadCuts), but they are failures when nothing in front reloads.
func TestCutsAreFailuresWhenTheFrontNeverReloads(t *testing.T) {
	for _, tc := range []struct {
		name                 string
		cutsFail             bool
		failures, reloadCuts int
	}{
		{"caddy reloads in front", false, 0, 3},
		{"front never reloads", true, 3, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := &Load{cutsFail: tc.cutsFail}
			l.count("post", 0, "", "", io.ErrUnexpectedEOF, false)
			l.count("get", 0, "", "", io.EOF, true)
			l.countWS(io.EOF, true)
			got := l.Snapshot()
			if got.Failures() != tc.failures || got.ReloadCuts() != tc.reloadCuts || got.Requests() != 3 {
				t.Errorf("failures %d, reload cuts %d of %d requests; want %d, %d of 3: %s",
					got.Failures(), got.ReloadCuts(), got.Requests(), tc.failures, tc.reloadCuts, got)
			}
		})
	}
}
