package wire

import (
	"math"
	"sort"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// bounds are the proxy's: ten a decade from 1 ms to 63 s.
func bounds() []float64 {
	b := make([]float64, 49)
	for i := range b {
		b[i] = math.Pow(10, float64(i)/10) / 1000
	}
	return b
}

// histogramOf counts the n durations quantile((i+0.5)/n): a sample of the
// distribution whose quantile function that is, with no randomness.
func histogramOf(n int, quantile func(p float64) time.Duration) Histogram {
	h := Histogram{Bounds: bounds(), Counts: make([]uint64, 50)}
	for i := range n {
		s := quantile((float64(i) + 0.5) / float64(n)).Seconds()
		h.Counts[sort.SearchFloat64s(h.Bounds, s)]++ // the first bound ≥ s
	}
	return h
}

func ms(f float64) time.Duration { return time.Duration(f * float64(time.Millisecond)) }

func TestQuantilesOfKnownDistributions(t *testing.T) {
	for _, tc := range []struct {
		name     string
		quantile func(p float64) time.Duration
		within   float64 // relative error allowed
	}{
		// Linear interpolation is exact for a uniform distribution.
		{"uniform 0-100ms", func(p float64) time.Duration { return ms(100 * p) }, 0.01},
		{"exponential, mean 20ms", func(p float64) time.Duration { return ms(-20 * math.Log(1-p)) }, 0.05},
		{"log-normal, median 100ms, σ 1", func(p float64) time.Duration { return ms(100 * math.Exp(normalQuantile(p))) }, 0.05},
		{"bimodal: 90% 5-6ms, 10% 2-3s", func(p float64) time.Duration {
			if p < 0.9 {
				return ms(5 + p/0.9)
			}
			return ms(2000 + 1000*(p-0.9)/0.1)
		}, 0.05},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := histogramOf(100000, tc.quantile)
			for _, q := range []float64{0.5, 0.99} {
				want, got := tc.quantile(q), h.Quantile(q)
				require.InEpsilon(t, want.Seconds(), got.Seconds(), tc.within, "p%v: want %v, estimated %v", q*100, want, got)
			}
		})
	}
}

// normalQuantile is the standard normal's quantile function.
func normalQuantile(p float64) float64 { return math.Sqrt2 * math.Erfinv(2*p-1) }

func TestQuantileEdges(t *testing.T) {
	require.Zero(t, Histogram{Bounds: bounds(), Counts: make([]uint64, 50)}.Quantile(0.5), "nothing counted: 0")

	point := histogramOf(1000, func(float64) time.Duration { return 7 * time.Millisecond })
	got := point.Quantile(0.99)
	require.True(t, got > ms(6.30) && got <= ms(7.95), "one value: the estimate is within its bucket (6.31-7.94ms), not %v", got)

	slow := histogramOf(10, func(float64) time.Duration { return 2 * time.Minute })
	require.Equal(t, time.Duration(math.Round(bounds()[48]*1e9)), slow.Quantile(0.5), "above every bound: the last bound, a lower bound of the truth")

	one := Histogram{Bounds: []float64{0.001, 0.002}, Counts: []uint64{0, 4, 0}}
	require.Equal(t, 1500*time.Microsecond, one.Quantile(0.5), "the middle of the bucket holding the median")
	require.Equal(t, 2*time.Millisecond, one.Quantile(1))
}

// Between sums a release's endpoints' counts since the first snapshot,
// from 0 for an endpoint new to the route or whose counts began again.
func TestBetweenIsTheReleasesWindow(t *testing.T) {
	lat := func(counts ...uint64) Histogram { return Histogram{Bounds: []float64{0.01, 0.1}, Counts: counts} }
	before := ServiceStats{Endpoints: []EndpointStats{
		{Release: "old", Endpoint: "a:1", Generation: 1, Answered: 100, Status5xx: 1, Latency: lat(90, 10, 0)},
		{Release: "new", Endpoint: "b:1", Generation: 2, Answered: 10, Status5xx: 0, ConnFailures: 1, Latency: lat(10, 0, 0)},
		{Release: "new", Endpoint: "b:2", Generation: 3, Answered: 50, Latency: lat(50, 0, 0)},
	}}
	after := ServiceStats{Endpoints: []EndpointStats{
		{Release: "old", Endpoint: "a:1", Generation: 1, Answered: 300, Status5xx: 3, Latency: lat(270, 30, 0)},
		{Release: "new", Endpoint: "b:1", Generation: 2, Answered: 30, Status5xx: 2, ConnFailures: 3, Moved: 4, ClientLeft: 1, Latency: lat(20, 10, 0)},
		{Release: "new", Endpoint: "b:2", Generation: 9, Answered: 5, Status5xx: 1, Latency: lat(0, 4, 1)}, // it re-entered the route: counts from 0
		{Release: "new", Endpoint: "b:3", Generation: 10, Answered: 5, Latency: lat(5, 0, 0)},              // new to the route
	}}

	old := Between(before, after, "old")
	require.Equal(t, uint64(200), old.Requests)
	require.Equal(t, uint64(2), old.Errors)
	require.InDelta(t, 0.01, old.ErrorRate, 1e-12)
	require.Equal(t, []uint64{180, 20, 0}, old.Latency.Counts)

	canary := Between(before, after, "new")
	require.Equal(t, Window{
		Requests: 20 + 2 + 5 + 5, Errors: 2 + 2 + 1, Status5xx: 2 + 1, ConnFailures: 2, ClientLeft: 1,
		ErrorRate: 5.0 / 32, P50: canary.Latency.Quantile(0.5), P99: canary.Latency.Quantile(0.99),
		Latency: lat(10+5, 10+4, 1),
	}, canary)
	require.Equal(t, 10*time.Millisecond, canary.P50, "15 of 30 within 10ms")
	require.Equal(t, 100*time.Millisecond, canary.P99, "one above every bound: the last bound")

	require.Equal(t, Window{}, Between(before, after, "none"), "no such release: an empty window")

	reset := after.Endpoints[0]
	reset.Answered, reset.Latency = 1, lat(1, 0, 0) // a restarted proxy, same generation by chance
	require.Equal(t, uint64(1), reset.Since(after.Endpoints[0]).Window().Requests, "counts that went down began again")
}
