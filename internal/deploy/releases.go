package deploy

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Release is one release of a service as it runs: its containers (its
// replicas), each with an endpoint of its own. A release is started,
// waited on, switched to, drained and retired whole.
type Release struct {
	Number     int    // handoff's release number; 0 for one handoff adopted
	Name       string // the release's name (web-4), its container's for a release of one
	Containers []Container
}

// releaseOf makes a release of containers of one release number, ordered
// by replica; nil when there are none.
func releaseOf(name string, cs ...Container) *Release {
	if len(cs) == 0 {
		return nil
	}
	cs = slices.Clone(cs)
	slices.SortStableFunc(cs, func(a, b Container) int { return cmp.Compare(a.Replica, b.Replica) })
	if name == "" {
		name = releaseName(cs[0])
	}
	return &Release{Number: cs[0].Release, Name: name, Containers: cs}
}

// releaseName is the name of c's release, read off c's own: web-4 of
// web-4-2, or of compose's shop-web-402; a release of one is named as its
// container.
func releaseName(c Container) string {
	if c.Replica == 0 {
		return c.Name
	}
	if strings.HasSuffix(c.Name, fmt.Sprintf("-%d-%d", c.Release, c.Replica)) { // handoff's: web-4-2
		return strings.TrimSuffix(c.Name, fmt.Sprintf("-%d", c.Replica))
	}
	if prefix, ok := strings.CutSuffix(c.Name, fmt.Sprintf("-%d", ContainerNumber(c.Release, c.Replica))); ok { // compose's: shop-web-402
		return fmt.Sprintf("%s-%d", prefix, c.Release)
	}
	return c.Name
}

// groupReleases groups a service's containers (newest first) by release,
// newest first; containers of one release keep their replica order.
func groupReleases(cs []Container) []Release {
	var out []Release
	at := map[int]int{}
	for _, c := range cs {
		i, ok := at[c.Release]
		if !ok {
			i = len(out)
			at[c.Release] = i
			out = append(out, Release{Number: c.Release})
		}
		out[i].Containers = append(out[i].Containers, c)
	}
	for i := range out {
		out[i] = *releaseOf("", out[i].Containers...)
	}
	return out
}

// Endpoints lists the endpoints of the release's containers, in replica
// order; a container not published has none.
func (r *Release) Endpoints() []string {
	var out []string
	for _, c := range r.Containers {
		if c.Upstream != "" {
			out = append(out, c.Upstream)
		}
	}
	return out
}

// Route is the route that sends every request to the release.
func (r *Release) Route() Route { return Only(r.Name, r.Endpoints()...) }

// Running says whether every container of the release runs.
func (r *Release) Running() bool {
	for _, c := range r.Containers {
		if !c.Running {
			return false
		}
	}
	return len(r.Containers) > 0
}

// anyRunning says whether a container of the release runs.
func (r *Release) anyRunning() bool {
	return slices.ContainsFunc(r.Containers, func(c Container) bool { return c.Running })
}

// Has says whether c is one of the release's containers.
func (r *Release) Has(c Container) bool {
	return r != nil && slices.ContainsFunc(r.Containers, func(m Container) bool { return m.ID == c.ID })
}

// Adopted says whether handoff adopted the release (someone else started it).
func (r *Release) Adopted() bool { return len(r.Containers) > 0 && r.Containers[0].Adopted }

// Image is what the release runs (every replica runs one image).
func (r *Release) Image() (ref, id string) { return r.Containers[0].Image, r.Containers[0].ImageID }

// Names lists the release's container names.
func (r *Release) Names() []string { return names(r.Containers) }

// Serves says whether the route sends to exactly the release's endpoints.
func (r *Release) Serves(route Route) bool {
	return len(r.Endpoints()) > 0 && Same(route, r.Route())
}

// several lists the names of a release of more than one container, for
// the record ("" for one: its name says it).
func (r *Release) several() []string {
	if len(r.Containers) < 2 {
		return nil
	}
	return r.Names()
}

// endpointList is endpoints for messages: "127.0.0.1:40001" for one,
// "127.0.0.1:40001, 127.0.0.1:40002" for several, "none" for none.
func endpointList(eps []string) string {
	if len(eps) == 0 {
		return "none"
	}
	return strings.Join(eps, ", ")
}

// names lists the containers' names.
func names(cs []Container) []string {
	out := make([]string, 0, len(cs))
	for _, c := range cs {
		out = append(out, c.Name)
	}
	return out
}
