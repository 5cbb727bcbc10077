package deploy

import (
	"context"
	"slices"
	"strings"
)

// Adoption: the first deploy takes over what someone else started (a
// container started by hand, a compose service's containers) as the live
// release, found by what the route reaches or by the service's labels; the
// history keeps their names, since they carry no labels of handoff's.

// adoptTheRestByLabels widens an adopted live release to every container
// the service's labels name, when it holds those it was found by.
func (d *Deployer) adoptTheRestByLabels(ctx context.Context, svc Service, v *view) error {
	a, ok := d.Runtime.(Adopter)
	if len(svc.Adopt) == 0 || !ok || !v.live.Adopted() {
		return nil
	}
	labelled, err := a.Find(ctx, svc.Adopt)
	if err != nil || len(labelled) <= len(v.live.Containers) {
		return err
	}
	for _, c := range v.live.Containers {
		if !slices.ContainsFunc(labelled, func(l Container) bool { return l.ID == c.ID }) {
			return nil // found by the route, but not the service's: leave it as found
		}
	}
	for i := range labelled {
		labelled[i].Adopted = true
		if labelled[i].Port == 0 {
			// Reached by a name, not published: the route's port is the app's.
			labelled[i].Port = v.live.Containers[0].Port
		}
	}
	v.live = releaseOf(strings.Join(names(labelled), ", "), labelled...)
	return nil
}

// serving finds, for adoption, the running containers the route's
// endpoints reach: a release of them when every endpoint has one, else nil.
func (d *Deployer) serving(ctx context.Context, endpoints []string) (*Release, error) {
	a, ok := d.Runtime.(Adopter)
	if !ok {
		return nil, nil
	}
	var found []Container
	for _, e := range endpoints {
		c, err := a.Serving(ctx, e)
		if err != nil || c == nil {
			return nil, err
		}
		found = append(found, *c)
	}
	return releaseOf(strings.Join(names(found), ", "), found...), nil
}

// adoptByLabels takes over the containers the service's labels name (those
// compose started), as the live release of a first deploy.
func (d *Deployer) adoptByLabels(ctx context.Context, svc Service, v *view) error {
	a, ok := d.Runtime.(Adopter)
	if len(svc.Adopt) == 0 || !ok {
		return nil
	}
	labelled, err := a.Find(ctx, svc.Adopt)
	if err != nil || len(labelled) == 0 {
		return err
	}
	for i := range labelled {
		labelled[i].Adopted = true
	}
	v.live = releaseOf(strings.Join(names(labelled), ", "), labelled...)
	return nil
}

// adopted finds the release handoff adopted on its first deploy, if its
// containers still exist: they carry no labels, so only the history knows them.
func (d *Deployer) adopted(ctx context.Context, v *view) *Release {
	for _, r := range v.history {
		if r.FromRelease != 0 || r.From == "" || !r.Switched {
			continue
		}
		names := r.FromContainers
		if len(names) == 0 {
			names = []string{r.From}
		}
		var found []Container
		for _, name := range names {
			c, err := d.Runtime.Inspect(ctx, name)
			if err != nil {
				return nil
			}
			c.Adopted = true
			found = append(found, c)
		}
		return releaseOf(r.From, found...)
	}
	return nil
}
