package proxy

import (
	"math"
	"sync/atomic"
	"time"

	"github.com/handoff-dev/handoff/internal/proxy/wire"
)

// endpointStats are the counts of one target, since it entered its route:
// what a canary's analysis compares between releases (GET .../stats). On
// a request's path they cost an atomic add or two; a window is the
// difference of two snapshots the client takes.
type endpointStats struct {
	generation uint64
	status5xx  atomic.Uint64
	failed     atomic.Uint64 // answered 502 by the proxy: the app not reached, or gone before answering
	moved      atomic.Uint64 // refused, and answered by another endpoint
	clientLeft atomic.Uint64 // the client went away before the app answered
	// latency counts the answered requests by time to response headers;
	// its sum is how many were answered.
	latency [len(latencyBounds) + 1]atomic.Uint64
}

// latencyBounds are the latency histogram's bucket upper bounds: ten a
// decade from 1 ms (10^(i/10) ms) to 63 s, so that an estimate
// interpolated within a bucket is off by at most a quarter of it.
var latencyBounds = func() (b [49]time.Duration) {
	for i := range b {
		b[i] = time.Duration(math.Round(math.Pow(10, float64(i)/10) * float64(time.Millisecond)))
	}
	return b
}()

// generations numbers the targets' counts, from the process's start, so
// that a restarted proxy's fresh counts do not take an old number.
var generations atomic.Uint64

func init() { generations.Store(uint64(time.Now().UnixNano())) }

func newEndpointStats() *endpointStats {
	return &endpointStats{generation: generations.Add(1)}
}

// answered counts a request the app answered with status, its headers
// after took.
func (s *endpointStats) answered(status int, took time.Duration) {
	s.latency[latencyBucket(took)].Add(1) // first: see snapshot
	if status >= 500 {
		s.status5xx.Add(1)
	}
}

// latencyBucket is the index of d's bucket: the first bound at least d,
// or the one above every bound.
func latencyBucket(d time.Duration) int {
	lo, hi := 0, len(latencyBounds)
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if d <= latencyBounds[mid] {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo
}

// snapshot is s as the control API shows it.
func (s *endpointStats) snapshot() wire.EndpointStats {
	out := wire.EndpointStats{Generation: s.generation, Latency: wire.Histogram{Bounds: make([]float64, len(latencyBounds)), Counts: make([]uint64, len(s.latency))}}
	for i, b := range latencyBounds {
		out.Latency.Bounds[i] = b.Seconds()
	}
	// The counts before the histogram, which answered adds to first: a
	// request answered meanwhile shows in Answered, never only as a 5xx.
	out.Status5xx = s.status5xx.Load()
	out.ConnFailures = s.failed.Load()
	out.Moved = s.moved.Load()
	out.ClientLeft = s.clientLeft.Load()
	for i := range s.latency {
		out.Latency.Counts[i] = s.latency[i].Load()
	}
	out.Answered = out.Latency.Total()
	return out
}

// Stats are the counts of every endpoint of the service's route, weight 0
// included; an endpoint that left the route is not in them.
func (p *Server) Stats(name string) (wire.ServiceStats, error) {
	s, err := p.get(name)
	if err != nil {
		return wire.ServiceStats{}, err
	}
	out := wire.ServiceStats{Name: name, Endpoints: []wire.EndpointStats{}}
	for _, b := range s.route.Load().backends {
		for _, t := range b.endpoints {
			e := t.stats.snapshot()
			e.Release, e.Endpoint, e.Weight = b.release, t.upstream, b.weight
			out.Endpoints = append(out.Endpoints, e)
		}
	}
	return out, nil
}
