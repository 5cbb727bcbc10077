package deploy

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Status is what `handoff status` shows: the live release and whether
// Docker and the proxy agree on it.
type Status struct {
	Service   string            `json:"service"`
	Proxy     string            `json:"proxy"`
	Routed    bool              `json:"routed"` // a proxy routes to it; false: a worker
	Upstream  string            `json:"proxy_upstream"`
	Endpoints []string          `json:"proxy_endpoints,omitempty"` // the route's endpoints, when it has several
	Live      *ContainerStatus  `json:"live,omitempty"`            // the live release's (first) container
	Replicas  []ContainerStatus `json:"live_replicas,omitempty"`   // every container of the live release, when it has several
	Agree     bool              `json:"agree"`
	Check     string            `json:"health_check,omitempty"` // the service's health check on the live release, run once
	Problem   string            `json:"problem,omitempty"`
	Releases  []ContainerStatus `json:"releases"`
	Advice    []string          `json:"advice,omitempty"`
	Canary    string            `json:"canary,omitempty"` // a canary under way, or what was done about an interrupted one
	LastEvent *Record           `json:"last,omitempty"`
	// Parts is a row per part of a proxy made of several (Parts: a swarm's
	// nodes), in the order the proxy gives them.
	Parts []PartStatus `json:"nodes,omitempty"`
}

// PartStatus is one part of a proxy made of several, as status shows it:
// on a swarm, a node and its handoff proxy.
type PartStatus struct {
	Name         string `json:"name"`                   // the node's hostname
	Role         string `json:"role,omitempty"`         // manager, worker
	State        string `json:"state,omitempty"`        // ready, down…
	Availability string `json:"availability,omitempty"` // active, pause, drain
	Proxy        string `json:"proxy"`                  // its proxy's task state: running, starting…; "" none
	// What its proxy serves, when it was read: the switch's generation it
	// holds and its route; InFlight counts the requests on the route and
	// on what drains, Draining those of them on what drains.
	Generation uint64 `json:"generation,omitempty"`
	Route      string `json:"route,omitempty"`
	InFlight   *int64 `json:"in_flight,omitempty"` // nil: not read
	Draining   int64  `json:"draining,omitempty"`
	Note       string `json:"note,omitempty"` // why it was not read, or what is amiss
}

// OneReading is a proxy whose reading is slow (a job on every node of a
// swarm). Optional: status holds one reading for all it asks, so it asks once
// and what it shows agrees.
type OneReading interface {
	// Hold answers the reads that follow from the first, until release;
	// a switch in between is read afresh.
	Hold() (release func())
}

// ContainerStatus is one container of a service, for status.
type ContainerStatus struct {
	Release  int           `json:"release"`
	Replica  int           `json:"replica,omitempty"`
	Name     string        `json:"container"`
	Image    string        `json:"image"`
	ImageID  string        `json:"image_id"`
	Running  bool          `json:"running"`
	Health   string        `json:"health,omitempty"`
	Upstream string        `json:"upstream,omitempty"`
	Uptime   time.Duration `json:"uptime_ns,omitempty"`
	Restarts int           `json:"restarts,omitempty"`
	InFlight *int          `json:"in_flight,omitempty"` // requests the proxy has in flight on it; nil: not asked, or it cannot tell
	Adopted  bool          `json:"adopted,omitempty"`
}

// Status reports the service without changing anything. It runs the
// service's health check once against each container of the live release.
func (d *Deployer) Status(ctx context.Context, svc Service) (*Status, error) {
	svc = svc.WithDefaults()
	if o, ok := d.Proxy.(OneReading); ok {
		defer o.Hold()()
	}
	v, err := d.readView(ctx, svc)
	if p, ok := d.Proxy.(Parts); ok && errors.Is(err, ErrProxyUnreached) && ctx.Err() == nil {
		return d.partsUnread(ctx, svc, p, err)
	}
	if err != nil {
		return nil, err
	}
	st := &Status{Service: svc.Name, Proxy: d.describe(), Routed: d.Proxy != nil}
	if v.canary != nil {
		if st.Canary, err = d.canaryStatus(ctx, svc, v); err != nil {
			return nil, err
		}
		if v.canary != nil && v.canary.watch {
			v.live = v.canary.next // a watch under way: the new release serves
		}
	}
	st.Upstream, st.Endpoints = firstOf(v.endpoints())
	now := d.now()
	for _, c := range v.containers {
		st.Releases = append(st.Releases, d.containerStatus(c, now))
	}
	lagging := "" // parts of the proxy that missed a switch: named whatever else is amiss
	switch {
	case v.live == nil && v.expected != nil && !v.routed():
		st.Problem = d.routeLost(svc, v)
	case v.live == nil && v.expected != nil:
		st.Problem = fmt.Sprintf("%s points at %s, where no container answers: %s, the release in service, %s; run `handoff repair %s`", d.describe(), v.at(), v.expected.Name, v.expected.whereNow(), svc.Name)
	case v.live == nil && !v.routed():
		st.Problem = "nothing deployed yet through " + d.describe()
	case v.live == nil:
		st.Problem = "no container serves " + v.at() + ", which the proxy points at; deploy a release (`handoff deploy`)"
	default:
		d.liveStatus(ctx, st, v.live, now)
		st.Agree = true
		if down := notRunning(v.live); len(down) > 0 {
			// The proxy points at the live release, which serves on the rest.
			st.Problem = fmt.Sprintf("%s of %s not running (its restart policy may bring it back; `handoff repair %s` starts it)", strings.Join(down, ", "), v.live.Name, svc.Name)
		}
		if behind, err := d.behind(ctx, v.route); err != nil {
			lagging = fmt.Sprintf("which parts of the proxy serve another route is not known: %v", err)
		} else if len(behind) > 0 {
			lagging = fmt.Sprintf("%s; run `handoff repair %s`", strings.Join(behind, "; "), svc.Name)
		}
		st.Check = "passing: " + d.releaseHealthDetail(svc, v.live)
		for _, c := range v.live.Containers {
			if !c.Running {
				continue
			}
			if ok, why := d.probe(ctx, effectiveKind(svc.Health.Kind, c), svc.Health, c); !ok {
				st.Check = "failing: " + why
				if len(v.live.Containers) > 1 {
					st.Check = "failing on " + c.Name + ": " + why
				}
				break
			}
		}
	}
	if running := runningOthers(v); len(running) > 0 && st.Agree {
		st.Problem = "also running: " + running[0] + " (an interrupted deploy? the next deploy repairs it)"
	}
	if len(v.history) > 0 {
		st.LastEvent = &v.history[0]
		if why := d.interrupted(ctx, st.LastEvent); why != "" && st.Agree {
			st.Problem = why
		}
	}
	if lagging != "" {
		st.Problem = strings.TrimPrefix(st.Problem+"; "+lagging, "; ")
	}
	if d.Proxy == nil {
		return st, nil
	}
	if p, ok := d.Proxy.(Parts); ok {
		if st.Parts, err = p.PartStatus(ctx); err != nil {
			return nil, err
		}
	}
	st.Advice, err = d.Proxy.Advice(ctx, st.Upstream)
	return st, err
}

// partsUnread is status when a proxy of several parts (a swarm's nodes) could
// not be read on every part: what it serves is not known, so nothing is said to
// agree, but the containers, the last record and a row per part (which says
// which part did not answer) are shown with why.
func (d *Deployer) partsUnread(ctx context.Context, svc Service, p Parts, unread error) (*Status, error) {
	st := &Status{Service: svc.Name, Proxy: d.describe(), Routed: true,
		Problem: fmt.Sprintf("%v; what the proxy serves is not known until every part answers", unread)}
	releases, err := d.Runtime.Releases(ctx, svc.Name)
	if err != nil {
		return nil, err
	}
	now := d.now()
	for _, c := range releases {
		st.Releases = append(st.Releases, d.containerStatus(c, now))
	}
	history, err := d.History.List(svc.Name)
	if err != nil {
		return nil, err
	}
	if len(history) > 0 {
		st.LastEvent = &history[0]
	}
	if st.Parts, err = p.PartStatus(ctx); err != nil {
		return nil, fmt.Errorf("%w; %w", unread, err)
	}
	return st, nil
}

// liveStatus fills in the live release: its first container, and every
// replica with what the proxy has in flight on it.
func (d *Deployer) liveStatus(ctx context.Context, st *Status, live *Release, now time.Time) {
	for _, c := range live.Containers {
		cs := d.containerStatus(c, now)
		if d.Proxy != nil && c.Upstream != "" {
			if in, err := d.Proxy.InFlight(ctx, c.Upstream); err == nil && in.Reported {
				cs.InFlight = &in.Requests
			}
		}
		st.Replicas = append(st.Replicas, cs)
	}
	st.Live = &st.Replicas[0]
	if len(st.Replicas) == 1 {
		st.Replicas = nil
	}
}

func notRunning(rel *Release) []string {
	var out []string
	for _, c := range rel.Containers {
		if !c.Running {
			out = append(out, c.Name)
		}
	}
	return out
}

// interrupted says whether the newest record is of a procedure that was
// killed (it says running, but nobody holds the service's lock), or runs now.
func (d *Deployer) interrupted(ctx context.Context, rec *Record) string {
	if rec.Outcome != OutcomeRunning {
		return ""
	}
	unlock, err := d.Locker.Lock(ctx, rec.Service)
	if err != nil {
		return fmt.Sprintf("a %s is running now (pid %d, phase %s)", rec.Kind, rec.PID, rec.Phase)
	}
	unlock()
	return fmt.Sprintf("the %s %s was interrupted in phase %s (pid %d is gone); `handoff repair %s` or the next deploy repairs what it left", rec.Kind, rec.ID, rec.Phase, rec.PID, rec.Service)
}

func (d *Deployer) containerStatus(c Container, now time.Time) ContainerStatus {
	r := ContainerStatus{Release: c.Release, Replica: c.Replica, Name: c.Name, Image: c.Image, ImageID: c.ImageID,
		Running: c.Running, Health: c.Health, Upstream: c.Upstream, Restarts: c.RestartCount, Adopted: c.Adopted}
	if c.Running && !c.StartedAt.IsZero() {
		r.Uptime = now.Sub(c.StartedAt).Round(time.Second)
	}
	return r
}

func runningOthers(v *view) []string {
	var out []string
	for _, c := range v.containers {
		if c.Running && !v.live.Has(c) {
			out = append(out, c.Name)
		}
	}
	return out
}

// canaryStatus says how the canary whose split the route serves is: under
// way in another handoff, or interrupted, in which case every request goes
// back on the old release (or the new one, if it had been promoted) before
// anything else is said, as repair and deploy would do first.
func (d *Deployer) canaryStatus(ctx context.Context, svc Service, v *view) (string, error) {
	c := v.canary
	h := v.history[c.rec]
	unlock, err := d.Locker.Lock(ctx, svc.Name)
	if err != nil && c.watch {
		return fmt.Sprintf("a watch is under way (pid %d): %s serves every request, %s kept running to switch back to; `handoff canary status %s` shows how it goes", h.PID, c.next.Name, c.old.Name, svc.Name), nil
	}
	if err != nil {
		return fmt.Sprintf("a canary is under way (pid %d): %s gets %d%% of new requests, step %d of %d; `handoff canary status %s` shows how it goes",
			h.PID, c.next.Name, h.Canary.Weight, h.Canary.Step, len(h.Canary.Steps), svc.Name), nil
	}
	defer unlock()
	// Read again under the lock: the handoff that ran it may have ended
	// it, and saved its record, since the first read.
	now, err := d.readView(ctx, svc)
	if err != nil {
		return "", err
	}
	*v = *now
	if v.canary == nil {
		return "", nil
	}
	c, h = v.canary, v.history[v.canary.rec]
	r := &run{svc: svc, kind: KindRepair, view: v, rec: newRecord(svc.Name, KindRepair, d.pid(), d.now())}
	if err := d.endCanary(ctx, r); err != nil {
		return "", err
	}
	if err := d.History.Save(&v.history[c.rec]); err != nil {
		return "", fmt.Errorf("record the end of the interrupted canary %s: %w", h.ID, err)
	}
	return fmt.Sprintf("%s; `handoff repair %s` removes what it left", strings.Join(r.rec.Notes, "; "), svc.Name), nil
}
