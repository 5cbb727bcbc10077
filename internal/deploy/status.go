package deploy

import (
	"context"
	"time"
)

// Status is what `handoff status` shows: the live release and whether
// Docker and the proxy agree on it.
type Status struct {
	Service   string    `json:"service"`
	Proxy     string    `json:"proxy"`
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
	v, err := d.look(ctx, svc.Name)
	if err != nil {
		return nil, err
	}
	st := &Status{Service: svc.Name, Proxy: d.Proxy.Describe(), Upstream: v.upstream}
	now := d.now()
	for _, c := range v.releases {
		st.Releases = append(st.Releases, d.release(c, now))
	}
	switch {
	case v.live == nil:
		st.Problem = "no container serves " + v.upstream + ", which the proxy points at"
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
	}
	st.Advice, err = d.Proxy.Advice(ctx, v.upstream)
	return st, err
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
