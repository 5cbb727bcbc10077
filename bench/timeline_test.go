package bench

import (
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/handoff-dev/handoff/internal/deploy"
)

// second is one second of a strategy's run, as the chart draws it.
type second struct {
	T       float64 `json:"t"`           // seconds since the load started
	OK      int     `json:"ok"`          // answered 2xx
	S5xx    int     `json:"status_5xx"`  // answered 5xx
	ConnErr int     `json:"conn_errors"` // GET and POST connection errors
	Cut     int     `json:"streams_cut"` // slow requests, SSE streams and WebSockets cut
	P99     float64 `json:"p99_ms"`      // of the requests answered in that second
}

// mark is a span of a deploy: one of handoff's phases (from its history),
// a whole deploy of a strategy that records none, or a restart of handoff
// proxy.
type mark struct {
	Deploy int     `json:"deploy"`
	Phase  string  `json:"phase"` // start, health, switch, drain, retire...; deploy; restart
	From   float64 `json:"from"`  // seconds since the load started
	To     float64 `json:"to"`
}

// timeline sorts the run into seconds, and marks the restarts of handoff
// proxy and the deploys of a strategy that keeps no record of its phases
// (recorded: it does, they are marked from it).
func (r *strategyResult) timeline(origin time.Time, windows []window, results []vegeta.Result, events []event, recorded bool) {
	r.Origin = origin
	at := func(t time.Time) int { return max(0, int(t.Sub(origin)/time.Second)) }
	grow := func(i int) *second {
		for len(r.Timeline) <= i {
			r.Timeline = append(r.Timeline, second{T: float64(len(r.Timeline))})
		}
		return &r.Timeline[i]
	}
	lat := map[int][]time.Duration{}
	for _, res := range results {
		i := at(res.Timestamp.Add(res.Latency))
		s := grow(i)
		switch {
		case res.Code == 0:
			s.ConnErr++
		case res.Code >= 500:
			s.S5xx++
		case res.Code >= 200 && res.Code < 300:
			s.OK++
			lat[i] = append(lat[i], res.Latency)
		}
	}
	for _, e := range events {
		if !e.Complete {
			grow(at(e.End)).Cut++
		}
	}
	for i, ds := range lat {
		r.Timeline[i].P99 = float64(percentiles(ds).P99) / float64(time.Millisecond)
	}
	n := 0
	for _, w := range windows {
		kind := "deploy"
		if w.Restart {
			kind = "restart"
		} else {
			n++
		}
		if kind == "deploy" && recorded {
			continue // handoff: its phases are marked from its history
		}
		r.Marks = append(r.Marks, mark{Deploy: n, Phase: kind, From: w.Start.Sub(origin).Seconds(), To: w.End.Sub(origin).Seconds()})
	}
}

// markPhases marks deploy n's phases from handoff's record of it.
func (r *strategyResult) markPhases(n int, rec deploy.Record) {
	for _, p := range rec.Phases {
		from := p.Started.Sub(r.Origin).Seconds()
		r.Marks = append(r.Marks, mark{Deploy: n, Phase: p.Name, From: from, To: from + p.Duration.Seconds()})
	}
}
