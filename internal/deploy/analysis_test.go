package deploy

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestJudge(t *testing.T) {
	ms := time.Millisecond
	base := Window{Requests: 2000, Errors: 2, P50: 5 * ms, P99: 40 * ms} // 0.1%
	for _, c := range []struct {
		name    string
		release Window
		th      Thresholds
		want    Verdict
		reason  string
	}{
		{"as good as the baseline", Window{Requests: 200, P50: 5 * ms, P99: 42 * ms}, Thresholds{}, VerdictPass,
			"error rate 0.00% against 0.10%, p99 42ms against 40ms, over 200 requests"},
		{"failing 5% of its requests", Window{Requests: 200, Errors: 10, P99: 40 * ms}, Thresholds{}, VerdictFail,
			"error rate 5.00% (10 of 200) against 0.10% (2 of 2000) for the baseline: more than 1 percentage points over"},
		{"within the allowed rise", Window{Requests: 1000, Errors: 10, P99: 40 * ms}, Thresholds{}, VerdictPass, ""},
		{"a stricter threshold", Window{Requests: 1000, Errors: 10, P99: 40 * ms}, Thresholds{MaxErrorRate: 0.005}, VerdictFail, ""},
		{"p99 doubled", Window{Requests: 200, P99: 80 * ms}, Thresholds{}, VerdictFail,
			"p99 80ms against 40ms for the baseline: more than 1.5x"},
		{"p99 up, within the ratio", Window{Requests: 200, P99: 55 * ms}, Thresholds{}, VerdictPass, ""},
		{"p99 doubled, but by less than the floor", Window{Requests: 200, P99: 2 * ms}, Thresholds{}, VerdictPass, ""},
		{"too few requests: never a pass", Window{Requests: 99, P99: 40 * ms}, Thresholds{}, VerdictWait,
			"99 of the 100 requests needed to judge the release have been answered"},
		{"too few requests, however bad", Window{Requests: 10, Errors: 10}, Thresholds{}, VerdictWait, ""},
		{"fewer needed when told", Window{Requests: 30, Errors: 3}, Thresholds{MinRequests: 20}, VerdictFail, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := base
			if c.name == "p99 doubled, but by less than the floor" {
				b.P99 = ms
			}
			j := Judge(b, c.release, c.th)
			require.Equal(t, c.want, j.Verdict, j.Reason)
			if c.reason != "" {
				require.Equal(t, c.reason, j.Reason)
			}
		})
	}
}

// A baseline that answered nothing (a watch right after a first deploy)
// judges errors against none, and latency not at all.
func TestJudgeWithoutABaseline(t *testing.T) {
	require.Equal(t, VerdictPass, Judge(Window{}, Window{Requests: 500, P99: time.Second}, Thresholds{}).Verdict)
	require.Equal(t, VerdictFail, Judge(Window{}, Window{Requests: 500, Errors: 25}, Thresholds{}).Verdict)
}

// A baseline too small to compare with counts as no errors, and the reason
// says latency was not compared; a bad release does not pass on it.
func TestJudgeAgainstATinyBaseline(t *testing.T) {
	j := Judge(Window{Requests: 3, Errors: 1}, Window{Requests: 1000, Errors: 300}, Thresholds{})
	require.Equal(t, VerdictFail, j.Verdict, j.Reason)
	require.Contains(t, j.Reason, "(no baseline: the old release answered 3 of the 100 requests one needs; judged against 0%, latency not compared)")
	j = Judge(Window{Requests: 3, P99: time.Millisecond}, Window{Requests: 1000, P99: time.Second}, Thresholds{})
	require.Equal(t, VerdictPass, j.Verdict)
	require.Contains(t, j.Reason, "latency not compared")
}

// Before a window's time is up only evidence fails a release: 5% errors
// of 200 does, 2% of 100 (as likely at a 0.5% error rate on both as noise
// can make it) does not yet; at the end Judge fails it.
func TestJudgeEarlyFailsOnlyBeyondDoubt(t *testing.T) {
	base := Window{Requests: 2000, Errors: 10, P99: 40 * time.Millisecond} // 0.5%
	require.Equal(t, VerdictFail, JudgeEarly(base, Window{Requests: 200, Errors: 10, P99: 40 * time.Millisecond}, Thresholds{}).Verdict)
	early := JudgeEarly(base, Window{Requests: 100, Errors: 2, P99: 40 * time.Millisecond}, Thresholds{})
	require.Equal(t, VerdictPass, early.Verdict)
	require.Contains(t, early.Reason, "so far: error rate 2.00%")
	require.Contains(t, early.Reason, "(not yet beyond doubt)")
	require.Equal(t, VerdictFail, Judge(base, Window{Requests: 100, Errors: 2, P99: 40 * time.Millisecond}, Thresholds{}).Verdict)
	// p99 early only with five times the requests: a p99 of 100 is their maximum.
	require.Equal(t, VerdictPass, JudgeEarly(base, Window{Requests: 200, P99: 90 * time.Millisecond}, Thresholds{}).Verdict)
	require.Equal(t, VerdictFail, JudgeEarly(base, Window{Requests: 500, P99: 90 * time.Millisecond}, Thresholds{}).Verdict)
	require.Equal(t, VerdictWait, JudgeEarly(base, Window{Requests: 50, Errors: 50}, Thresholds{}).Verdict)
}

// A simulation of the early check every second over a 2-minute step at
// 5% of 300 requests a second, both releases at the same error rate: good
// releases are seldom failed (the point estimate failed 15% at 0.5%).
func TestJudgeEarlySeldomFailsAGoodRelease(t *testing.T) {
	for _, rate := range []float64{0.002, 0.005, 0.01} {
		failed := 0
		const steps = 400
		rng := newLCG(uint64(rate * 1e6))
		for range steps {
			var rel, base Window
			for sec := 0; sec < 120; sec++ {
				for range 15 {
					rel.Requests++
					if rng.float() < rate {
						rel.Errors++
					}
				}
				for range 285 {
					base.Requests++
					if rng.float() < rate {
						base.Errors++
					}
				}
				if JudgeEarly(base, rel, Thresholds{}).Verdict == VerdictFail {
					failed++
					break
				}
			}
		}
		t.Logf("background %.1f%%: %d of %d good steps failed early (%.1f%%)", 100*rate, failed, steps, 100*float64(failed)/steps)
		require.LessOrEqual(t, failed, steps/100, "at most 1%% of good steps")
	}
}

// lcg is a tiny deterministic random source for the simulation.
type lcg struct{ s uint64 }

func newLCG(seed uint64) *lcg { return &lcg{seed*6364136223846793005 + 1442695040888963407} }

func (l *lcg) float() float64 {
	l.s = l.s*6364136223846793005 + 1442695040888963407
	return float64(l.s>>11) / (1 << 53)
}
