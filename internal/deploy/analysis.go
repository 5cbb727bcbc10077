package deploy

import (
	"fmt"
	"math"
	"time"
)

// The analysis a canary step and a watch after a switch decide by (issue
// 18): what users got from the new release, against what they got from
// the old one over the same stretch of time, as the proxy counted it.

// Window is what the proxy saw of one release over a stretch of time.
type Window struct {
	Requests int           `json:"requests"` // answered, by the app or by the proxy for it
	Errors   int           `json:"errors"`   // 5xx answers and connection failures
	P50      time.Duration `json:"p50_ns"`   // to the answer's headers
	P99      time.Duration `json:"p99_ns"`
}

// String is the window for a status: "0.20% errors of 1204, p99 12ms".
func (w Window) String() string {
	return fmt.Sprintf("%s errors of %d, p99 %s", percent(w.ErrorRate()), w.Requests, w.P99.Round(time.Millisecond))
}

// short is the window for a live line: "0.20% of 1204 p99 12ms".
func (w Window) short() string {
	return fmt.Sprintf("%s of %d p99 %s", percent(w.ErrorRate()), w.Requests, w.P99.Round(time.Millisecond))
}

// ErrorRate is the share of requests that failed; 0 with no requests.
func (w Window) ErrorRate() float64 {
	if w.Requests == 0 {
		return 0
	}
	return float64(w.Errors) / float64(w.Requests)
}

// Thresholds say how much worse than the baseline a release may do.
type Thresholds struct {
	// MaxErrorRate is how far the release's error rate may rise over the
	// baseline's, in absolute terms: 0.01 is one percentage point.
	MaxErrorRate float64
	// MaxP99 is how many times the baseline's p99 the release's may be.
	MaxP99 float64
	// P99Floor is a rise of the p99 too small to count whatever the
	// ratio: 1 ms against 2 ms is noise on a busy host, not a regression.
	P99Floor time.Duration
	// MinRequests is how many requests the release must have answered in
	// the window before it is judged at all; fewer, and the step waits.
	MinRequests int
	// MaxWait is how much longer than its own time a step (or the watch)
	// waits for MinRequests; 0: as long again as the step.
	MaxWait time.Duration
}

// Defaults of the analysis.
const (
	DefaultMaxErrorRate = 0.01
	DefaultMaxP99       = 1.5
	DefaultP99Floor     = 10 * time.Millisecond
	DefaultMinRequests  = 100
)

// WithDefaults fills what is not set.
func (t Thresholds) WithDefaults() Thresholds {
	if t.MaxErrorRate == 0 {
		t.MaxErrorRate = DefaultMaxErrorRate
	}
	if t.MaxP99 == 0 {
		t.MaxP99 = DefaultMaxP99
	}
	if t.P99Floor == 0 {
		t.P99Floor = DefaultP99Floor
	}
	if t.MinRequests == 0 {
		t.MinRequests = DefaultMinRequests
	}
	return t
}

// Verdict is what a window decides.
type Verdict string

// The verdicts.
const (
	VerdictPass Verdict = "pass" // as good as the baseline, within the thresholds
	VerdictFail Verdict = "fail" // worse: take it back
	VerdictWait Verdict = "wait" // too few requests to say: never a pass
)

// Judgement is a verdict with the numbers that decided it, for the user,
// the history and --json.
type Judgement struct {
	Verdict Verdict `json:"verdict"`
	Reason  string  `json:"reason"`
}

// Judge compares what the release got with what the baseline got over the
// same stretch, at the end of the stretch. Errors are looked at first: a
// release that fails requests is taken back however fast it fails them.
// A baseline too small to compare with (fewer than MinRequests: a proxy
// that just restarted) counts as no errors and no latency to compare, and
// the reason says so.
func Judge(baseline, release Window, t Thresholds) Judgement {
	return judge(baseline, release, t.WithDefaults(), release.ErrorRate(), release.Requests)
}

// JudgeEarly is the verdict while the stretch still runs, read every
// second: a fail only on evidence more requests would not overturn (the
// release's error rate is over even at the low end of its 99.7% Wilson
// interval; its p99 only once it has five times MinRequests), else what
// Judge says with the failure held back. Judging a point estimate every
// second aborted good releases: at 0.5% errors on both, one 2-minute step
// in seven.
func JudgeEarly(baseline, release Window, t Thresholds) Judgement {
	t = t.WithDefaults()
	j := judge(baseline, release, t, wilsonLow(release.Errors, release.Requests, 3), release.Requests/5)
	if j.Verdict == VerdictFail {
		return j
	}
	if end := judge(baseline, release, t, release.ErrorRate(), release.Requests); end.Verdict == VerdictFail {
		return Judgement{VerdictPass, "so far: " + end.Reason + " (not yet beyond doubt)"}
	}
	return j
}

// judge is Judge with the error rate taken as rate, and the p99 compared
// only when latencyN reaches MinRequests.
func judge(baseline, release Window, t Thresholds, rate float64, latencyN int) Judgement {
	if release.Requests < t.MinRequests {
		return Judgement{VerdictWait, fmt.Sprintf("%d of the %d requests needed to judge the release have been answered", release.Requests, t.MinRequests)}
	}
	base, against := baseline.ErrorRate(), "for the baseline"
	small := baseline.Requests < t.MinRequests
	if small {
		base, against = 0, fmt.Sprintf("(no baseline: the old release answered %d of the %d requests one needs; judged against 0%%, latency not compared)", baseline.Requests, t.MinRequests)
	}
	if rate-base > t.MaxErrorRate {
		return Judgement{VerdictFail, fmt.Sprintf("error rate %s (%d of %d) against %s (%d of %d) %s: more than %.2g percentage points over",
			percent(release.ErrorRate()), release.Errors, release.Requests, percent(base), baseline.Errors, baseline.Requests, against, 100*t.MaxErrorRate)}
	}
	if !small && latencyN >= t.MinRequests && release.P99-baseline.P99 > t.P99Floor && float64(release.P99) > t.MaxP99*float64(baseline.P99) {
		return Judgement{VerdictFail, fmt.Sprintf("p99 %s against %s for the baseline: more than %.2gx", release.P99.Round(time.Millisecond), baseline.P99.Round(time.Millisecond), t.MaxP99)}
	}
	reason := fmt.Sprintf("error rate %s against %s, p99 %s against %s, over %d requests",
		percent(release.ErrorRate()), percent(base), release.P99.Round(time.Millisecond), baseline.P99.Round(time.Millisecond), release.Requests)
	if small {
		reason += " " + against
	}
	return Judgement{VerdictPass, reason}
}

// wilsonLow is the low end of the Wilson score interval of errors out of
// n at z standard deviations: the least error rate the numbers allow.
func wilsonLow(errors, n int, z float64) float64 {
	if n == 0 {
		return 0
	}
	p, fn := float64(errors)/float64(n), float64(n)
	centre := p + z*z/(2*fn)
	margin := z * math.Sqrt(p*(1-p)/fn+z*z/(4*fn*fn))
	return max(0, (centre-margin)/(1+z*z/fn))
}

func percent(f float64) string { return fmt.Sprintf("%.2f%%", 100*f) }
