package deploy

import (
	"context"
	"fmt"
	"time"
)

// Status is what `handoff status` shows: the live release and whether
// Docker and the proxy agree on it.
type Status struct {
	Service   string    `json:"service"`
	Proxy     string    `json:"proxy"`
	Routed    bool      `json:"routed"` // a proxy routes to it; false: a worker
	Upstream  string    `json:"proxy_upstream"`
	Live      *Release  `json:"live,omitempty"`
	Agree     bool      `json:"agree"`
	Check     string    `json:"health_check,omitempty"` // the service's health check on the live release, run once
	Problem   string    `json:"problem,omitempty"`
	Releases  []Release `json:"releases"`
	Advice    []string  `json:"advice,omitempty"`
	LastEvent *Record   `json:"last,omitempty"`
}

// Release is one container of a service, for status.
type Release struct {
	Release  int           `json:"release"`
	Name     string        `json:"container"`
	Image    string        `json:"image"`
	ImageID  string        `json:"image_id"`
	Running  bool          `json:"running"`
	Health   string        `json:"health,omitempty"`
	Upstream string        `json:"upstream,omitempty"`
	Uptime   time.Duration `json:"uptime_ns,omitempty"`
	Adopted  bool          `json:"adopted,omitempty"`
}

// Status reports the service without changing anything. It runs the
// service's health check once against the live release.
func (d *Deployer) Status(ctx context.Context, svc Service) (*Status, error) {
	svc = svc.WithDefaults()
	v, err := d.readView(ctx, svc)
	if err != nil {
		return nil, err
	}
	st := &Status{Service: svc.Name, Proxy: d.describe(), Routed: d.Proxy != nil, Upstream: v.upstream}
	now := d.now()
	for _, c := range v.releases {
		st.Releases = append(st.Releases, d.release(c, now))
	}
	switch {
	case v.live == nil && v.expected != nil && v.upstream == "":
		st.Problem = d.routeLost(svc, v)
	case v.live == nil && v.expected != nil:
		st.Problem = fmt.Sprintf("%s points at %s, where no container answers: %s, the release in service, %s; run `handoff repair %s`", d.describe(), v.upstream, v.expected.Name, v.expected.whereNow(), svc.Name)
	case v.live == nil && v.upstream == "":
		st.Problem = "nothing deployed yet through " + d.describe()
	case v.live == nil:
		st.Problem = "no container serves " + v.upstream + ", which the proxy points at; deploy a release (`handoff deploy`)"
	case !v.live.Running:
		st.Problem = v.live.Name + " is not running"
	default:
		r := d.release(*v.live, now)
		st.Live, st.Agree = &r, true
		st.Check = "passing: " + d.healthDetail(svc, *v.live)
		if ok, why := d.probe(ctx, effectiveKind(svc.Health.Kind, *v.live), svc.Health, *v.live); !ok {
			st.Check = "failing: " + why
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
	if d.Proxy == nil {
		return st, nil
	}
	st.Advice, err = d.Proxy.Advice(ctx, v.upstream)
	return st, err
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

func (d *Deployer) release(c Container, now time.Time) Release {
	r := Release{Release: c.Release, Name: c.Name, Image: c.Image, ImageID: c.ImageID,
		Running: c.Running, Health: c.Health, Upstream: c.Upstream, Adopted: c.Adopted}
	if c.Running && !c.StartedAt.IsZero() {
		r.Uptime = now.Sub(c.StartedAt).Round(time.Second)
	}
	return r
}

func runningOthers(v *view) []string {
	var out []string
	for _, c := range v.releases {
		if c.Running && (v.live == nil || c.ID != v.live.ID) {
			out = append(out, c.Name)
		}
	}
	return out
}
