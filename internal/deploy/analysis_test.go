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
