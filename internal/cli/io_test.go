package cli

import (
	"bytes"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/deploy"
)

// what a health wait and a drain report, in order.
func waitOnce(r *reporter) {
	r.PhaseStart("health", "GET http://127.0.0.1:40001/health")
	r.Progress("health", "GET /health: connection refused", "check 1")
	r.Progress("health", "GET /health: connection refused", "check 2")
	r.Progress("health", "passing (1 of 2 in a row)", "check 3")
	r.PhaseDone("health", 3*time.Second, nil)
	r.PhaseStart("drain", "127.0.0.1:30001")
	r.Progress("drain", "2 request(s) still in flight on 127.0.0.1:30001", "up to 30s")
	r.Progress("drain", "1 request(s) still in flight on 127.0.0.1:30001", "up to 30s")
	r.Note("a note in the middle")
	r.PhaseDone("drain", 2*time.Second, nil)
}

// On a terminal the wait is one line rewritten in place, cleared before
// anything else is printed; elsewhere (CI, a log) a line per change.
func TestWaitingIsShownLiveOnATerminalAndAsLinesElsewhere(t *testing.T) {
	ptmx, tty, err := pty.Open()
	require.NoError(t, err)
	defer ptmx.Close()
	streams := &IO{Out: io.Discard, Err: tty, ErrTerminal: isTerminal(tty)}
	require.True(t, streams.ErrTerminal, "a pseudo-terminal is a terminal")
	got := make(chan string)
	go func() {
		b, _ := io.ReadAll(ptmx) // ends with EIO once the terminal side is closed
		got <- string(b)
	}()
	waitOnce(&reporter{io: streams})
	tty.Close()
	out := strings.ReplaceAll(<-got, "\r\n", "\n") // the terminal's own newline translation
	for _, want := range []string{
		"\r\x1b[K  … GET /health: connection refused · check 1 · ",
		"\r\x1b[K  … GET /health: connection refused · check 2 · ",
		"\r\x1b[K  … passing (1 of 2 in a row) · check 3 · ",
		"\r\x1b[K✓ health  3s\n",
		"\r\x1b[K  … 1 request(s) still in flight on 127.0.0.1:30001 · up to 30s · ",
		"\r\x1b[K  a note in the middle\n✓ drain   2s\n",
	} {
		require.Contains(t, out, want)
	}

	var plain bytes.Buffer
	waitOnce(&reporter{io: &IO{Out: io.Discard, Err: &plain}})
	require.NotContains(t, plain.String(), "\r")
	var waits []string
	for _, line := range strings.Split(plain.String(), "\n") {
		if _, rest, ok := strings.Cut(line, " wait   "); ok {
			waits = append(waits, rest)
		}
	}
	require.Equal(t, []string{
		"GET /health: connection refused", "passing (1 of 2 in a row)",
		"2 request(s) still in flight on 127.0.0.1:30001", "1 request(s) still in flight on 127.0.0.1:30001",
	}, waits, "a line per change, not per check")
}

// What showing a wait costs a health check (every 25 ms at most) or a
// drain poll: go test -bench Progress ./internal/cli
func BenchmarkProgress(b *testing.B) {
	ptmx, tty, err := pty.Open()
	if err != nil {
		b.Skip(err)
	}
	defer ptmx.Close()
	defer tty.Close()
	go func() { _, _ = io.Copy(io.Discard, ptmx) }()
	for _, c := range []struct {
		name string
		io   *IO
	}{{"terminal", &IO{Err: tty, ErrTerminal: true}}, {"lines", &IO{Err: io.Discard}}} {
		b.Run(c.name, func(b *testing.B) {
			r := &reporter{io: c.io}
			r.PhaseStart("health", "GET /health")
			for i := range b.N {
				r.Progress("health", "GET /health: connection refused", "check "+strconv.Itoa(i))
			}
		})
	}
}

// history --chart draws every deploy to one scale: the slow health phase
// of the second stands out.
func TestHistoryChartShowsWhichPhaseTookLong(t *testing.T) {
	at := time.Date(2026, 11, 30, 9, 0, 0, 0, time.Local)
	rec := func(to string, health time.Duration, failed bool) deploy.Record {
		r := deploy.Record{Kind: deploy.KindDeploy, To: to, Started: at, Outcome: deploy.OutcomeSucceeded, Phases: []deploy.PhaseRecord{
			{Name: deploy.PhaseImage, Duration: 10 * time.Millisecond},
			{Name: deploy.PhaseStart, Duration: 200 * time.Millisecond},
			{Name: deploy.PhaseHealth, Duration: health},
			{Name: deploy.PhaseSwitch, Duration: 5 * time.Millisecond},
			{Name: deploy.PhaseDrain, Duration: 400 * time.Millisecond},
			{Name: deploy.PhaseRetire, Duration: 200 * time.Millisecond},
		}}
		if failed {
			r.Phases, r.Outcome = r.Phases[:3], deploy.OutcomeFailed
			r.Phases[2].Error = "not healthy"
		}
		return r
	}
	out := phaseChart([]deploy.Record{rec("web-3", time.Second, false), rec("web-2", 4*time.Second, false), rec("web-4", 2*time.Second, true)}, 48)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.Len(t, lines, 4)
	require.Contains(t, lines[0], "one column ≈ 100ms")
	require.Contains(t, lines[0], "h health")
	require.Regexp(t, `web-3 +succeeded +1.815s +ssh{10}d{4}tt$`, lines[1])
	require.Regexp(t, `web-2 +succeeded +4.815s +ssh{40}d{4}tt$`, lines[2])
	require.Regexp(t, `web-4 +failed +2.21s +ss!{20}$`, lines[3], "the failed phase is drawn with !")
}
