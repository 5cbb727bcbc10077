package wire

import (
	"math"
	"time"
)

// ServiceStats is what GET ServicesPath/{name}/stats answers: the
// proxy's own counts of every endpoint of the service's route, weight 0
// included. They are cumulative since the endpoint entered the route; a
// window is the difference of two snapshots (Between), so the proxy keeps
// no windows of its own.
type ServiceStats struct {
	Name      string          `json:"name"`
	Endpoints []EndpointStats `json:"endpoints"`
}

// EndpointStats are one endpoint's counts since it entered the route.
type EndpointStats struct {
	Release  string `json:"release"` // the backend of the route it belongs to
	Endpoint string `json:"endpoint"`
	Weight   int    `json:"weight"` // its backend's
	// Generation names these counts: a new number when the endpoint
	// (re)enters the route and its counts begin at 0 again (and in a new
	// process, after a restart). Between counts from 0 when it changed.
	Generation uint64 `json:"generation"`
	// Answered: requests the app answered (their response headers went
	// to the client), upgrades included; Status5xx of them with a 5xx.
	Answered  uint64 `json:"answered"`
	Status5xx uint64 `json:"status_5xx"`
	// ConnFailures: requests the proxy answered 502 itself, because the
	// app could not be reached or closed the connection before answering.
	ConnFailures uint64 `json:"conn_failures"`
	// Moved: requests this endpoint refused that went to another endpoint
	// of the route and were counted there; no error of this one's.
	Moved uint64 `json:"moved"`
	// ClientLeft: requests whose client went away before the app
	// answered; an app too slow for its clients shows here, not in
	// Latency.
	ClientLeft uint64 `json:"client_left"`
	// Latency is the time to response headers of the answered requests.
	Latency Histogram `json:"latency"`
}

// Histogram counts durations in buckets: Counts[i] those at most
// Bounds[i] (and above Bounds[i-1]); the last count, one beyond Bounds,
// those above every bound.
type Histogram struct {
	Bounds []float64 `json:"bounds_seconds"`
	Counts []uint64  `json:"counts"`
}

// Total is how many durations h counts.
func (h Histogram) Total() uint64 {
	var n uint64
	for _, c := range h.Counts {
		n += c
	}
	return n
}

// Quantile estimates the q-quantile (0 < q ≤ 1) of the durations h
// counts, interpolated linearly within its bucket (the first bucket
// starts at 0). In the bucket above every bound it is that last bound: a
// lower bound of the truth. 0 when h counts nothing.
func (h Histogram) Quantile(q float64) time.Duration {
	total := h.Total()
	if total == 0 || len(h.Counts) != len(h.Bounds)+1 {
		return 0
	}
	rank := q * float64(total)
	var below float64
	for i, c := range h.Counts {
		if c == 0 || below+float64(c) < rank {
			below += float64(c)
			continue
		}
		if i == len(h.Bounds) {
			break
		}
		lower := 0.0
		if i > 0 {
			lower = h.Bounds[i-1]
		}
		upper := h.Bounds[i]
		frac := math.Max(0, (rank-below)/float64(c))
		return seconds(lower + (upper-lower)*frac)
	}
	return seconds(h.Bounds[len(h.Bounds)-1])
}

func seconds(s float64) time.Duration { return time.Duration(math.Round(s * float64(time.Second))) }

// Window is what a release (or one endpoint) got between two snapshots.
type Window struct {
	// Requests: answered, or failed to be (ConnFailures).
	Requests     uint64
	Errors       uint64 // Status5xx + ConnFailures
	Status5xx    uint64
	ConnFailures uint64
	// ClientLeft: requests given up by their clients before an answer,
	// in neither Requests nor Errors (see EndpointStats).
	ClientLeft uint64
	// ErrorRate is Errors / Requests; 0 without requests.
	ErrorRate float64
	// P50 and P99 of the time to response headers, estimated from the
	// histogram (Histogram.Quantile); 0 when nothing was answered.
	P50, P99 time.Duration
	Latency  Histogram
}

// Between is the window of release between two snapshots of a service,
// before taken first: the sum over the release's endpoints in after of
// what each counted since before (from 0 for an endpoint that was not
// in before, or whose counts began again since).
func Between(before, after ServiceStats, release string) Window {
	return BetweenOf(before, after, func(e EndpointStats) bool { return e.Release == release })
}

// BetweenOf is Between for the endpoints of after that of says are the
// window's, whichever release they belong to.
func BetweenOf(before, after ServiceStats, of func(EndpointStats) bool) Window {
	var sum EndpointStats
	for _, e := range after.Endpoints {
		if !of(e) {
			continue
		}
		d := e
		for _, b := range before.Endpoints {
			if b.Endpoint == e.Endpoint && b.Generation == e.Generation {
				d = e.Since(b)
				break
			}
		}
		sum = sum.plus(d)
	}
	return sum.Window()
}

// Since is what e counted after earlier, a snapshot of the same counts;
// all of e when earlier is of other counts (another Generation), or when
// any count went down (they began again).
func (e EndpointStats) Since(earlier EndpointStats) EndpointStats {
	if earlier.Generation != e.Generation || len(earlier.Latency.Counts) != len(e.Latency.Counts) ||
		earlier.Answered > e.Answered || earlier.Status5xx > e.Status5xx || earlier.ConnFailures > e.ConnFailures || earlier.Moved > e.Moved || earlier.ClientLeft > e.ClientLeft {
		return e
	}
	d := e
	d.Answered -= earlier.Answered
	d.Status5xx -= earlier.Status5xx
	d.ConnFailures -= earlier.ConnFailures
	d.Moved -= earlier.Moved
	d.ClientLeft -= earlier.ClientLeft
	d.Latency.Counts = make([]uint64, len(e.Latency.Counts))
	for i, c := range e.Latency.Counts {
		d.Latency.Counts[i] = c - min(c, earlier.Latency.Counts[i])
	}
	return d
}

// plus adds o's counts to e's; histograms of other bounds than the first
// one added are left out.
func (e EndpointStats) plus(o EndpointStats) EndpointStats {
	e.Answered += o.Answered
	e.Status5xx += o.Status5xx
	e.ConnFailures += o.ConnFailures
	e.Moved += o.Moved
	e.ClientLeft += o.ClientLeft
	switch {
	case e.Latency.Bounds == nil:
		e.Latency = Histogram{Bounds: o.Latency.Bounds, Counts: append([]uint64(nil), o.Latency.Counts...)}
	case len(o.Latency.Counts) == len(e.Latency.Counts):
		for i, c := range o.Latency.Counts {
			e.Latency.Counts[i] += c
		}
	}
	return e
}

// Window is e's counts as a window: e is a difference (Since) of two
// snapshots, or a whole snapshot for everything since the endpoint
// entered the route.
func (e EndpointStats) Window() Window {
	w := Window{
		Requests:     e.Answered + e.ConnFailures,
		Errors:       e.Status5xx + e.ConnFailures,
		Status5xx:    e.Status5xx,
		ConnFailures: e.ConnFailures,
		ClientLeft:   e.ClientLeft,
		P50:          e.Latency.Quantile(0.50),
		P99:          e.Latency.Quantile(0.99),
		Latency:      e.Latency,
	}
	if w.Requests > 0 {
		w.ErrorRate = float64(w.Errors) / float64(w.Requests)
	}
	return w
}
