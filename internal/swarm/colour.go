package swarm

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"regexp"
	"strconv"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/handoff-dev/handoff/internal/deploy"
)

// An app service runs on a swarm as two colour services, <service>-blue and
// <service>-green: the live one serves, a deploy writes the idle one, waits until its
// tasks are healthy, switches the proxies to it and scales the other to 0. Swarm's own
// rolling update never runs: each write replaces a whole colour that serves nothing.

// Colour is one of an app service's two colour services.
type Colour string

const (
	Blue  Colour = "blue"
	Green Colour = "green"
)

// Other is the colour that is not c: the idle one when c is live.
func (c Colour) Other() Colour {
	if c == Blue {
		return Green
	}
	return Blue
}

// Labels of a colour service, on the service and on its tasks' containers.
const (
	LabelService = "handoff.service" // the app service it is a colour of
	LabelRelease = "handoff.release" // the release number it runs
	LabelColour  = "handoff.colour"  // blue or green
)

// DefaultNetwork is the overlay network of the colour services and the proxies.
const DefaultNetwork = "handoff"

// ColourName is the name of service's colour service: "api-green". Proxies resolve
// tasks.<that name>, so it must be a name Swarm takes as it is.
func ColourName(service string, c Colour) (string, error) {
	if err := deploy.CheckName(service); err != nil {
		return "", err
	}
	if c != Blue && c != Green {
		return "", fmt.Errorf("colour %q: blue or green", c)
	}
	name := service + "-" + string(c)
	if len(name) > 63 || !swarmName.MatchString(name) {
		return "", fmt.Errorf("service %q cannot run on a swarm: its colour service %s must be at most 63 letters, digits, '-' and '_'; rename it", service, name)
	}
	return name, nil
}

// HealthCheck is a release's HEALTHCHECK, run by each node's engine in the task's
// container.
type HealthCheck struct {
	Command                        []string // run as is, no shell: ["/app", "check"]
	Interval, Timeout, StartPeriod time.Duration
	Retries                        int
}

// Release is what a deploy writes into a colour service.
type Release struct {
	Service string
	Colour  Colour
	Number  int
	// Image is pinned by its digest, name@sha256:<hex>: every node runs the same bytes.
	Image    string
	Replicas uint64
	// Network is the overlay of the colours and the proxies; DefaultNetwork when empty.
	Network         string
	Health          HealthCheck
	StopGracePeriod time.Duration
	Env             []string
	Constraints     []string
	MaxPerNode      uint64
}

var pinned = regexp.MustCompile(`^[^@\s]+@sha256:[0-9a-f]{64}$`)

// ColourSpec is the service spec of r's colour: replicated, dnsrr on the overlay (VIP
// needs IPVS), labelled with the release on the service and on each task's container.
// Its tasks restart on any exit, not only on failure: a task found unhealthy is
// stopped, and an app that drains on SIGTERM then exits 0, "complete", which
// on-failure never replaces (seen on 20.10: one task, then an empty slot for good).
func ColourSpec(r Release) (swarm.ServiceSpec, error) {
	name, err := ColourName(r.Service, r.Colour)
	if err != nil {
		return swarm.ServiceSpec{}, err
	}
	if !pinned.MatchString(r.Image) {
		return swarm.ServiceSpec{}, fmt.Errorf("release %d of %s: image %q is not pinned by its digest (name@sha256:…); resolve its digest first", r.Number, r.Service, r.Image)
	}
	if len(r.Health.Command) == 0 {
		return swarm.ServiceSpec{}, fmt.Errorf("release %d of %s: a health check command is required on a swarm (a task joins DNS only once healthy, and no check from this host reaches other nodes); set health.command", r.Number, r.Service)
	}
	labels := map[string]string{LabelService: r.Service, LabelRelease: strconv.Itoa(r.Number), LabelColour: string(r.Colour)}
	replicas, grace := r.Replicas, r.StopGracePeriod
	return swarm.ServiceSpec{
		Annotations: swarm.Annotations{Name: name, Labels: labels},
		TaskTemplate: swarm.TaskSpec{
			ContainerSpec: &swarm.ContainerSpec{
				Image:  r.Image,
				Labels: maps.Clone(labels),
				Env:    r.Env,
				Healthcheck: &container.HealthConfig{
					Test:     append([]string{"CMD"}, r.Health.Command...),
					Interval: r.Health.Interval, Timeout: r.Health.Timeout, StartPeriod: r.Health.StartPeriod, Retries: r.Health.Retries,
				},
				StopGracePeriod: &grace,
			},
			RestartPolicy: &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionAny},
			Placement:     &swarm.Placement{Constraints: r.Constraints, MaxReplicas: r.MaxPerNode},
			Networks:      []swarm.NetworkAttachmentConfig{{Target: cmp.Or(r.Network, DefaultNetwork)}},
		},
		Mode: swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: &replicas}},
		// A write to a colour that still has tasks replaces them all at once and goes on
		// past a failing one: the tally judges the release, and Swarm's rolling update
		// must never pause one half way (its default: one at a time, pause on failure).
		UpdateConfig: &swarm.UpdateConfig{Parallelism: 0, Order: swarm.UpdateOrderStopFirst, FailureAction: swarm.UpdateFailureActionContinue},
		EndpointSpec: &swarm.EndpointSpec{Mode: swarm.ResolutionModeDNSRR},
	}, nil
}

// ColourState is a colour service as read.
type ColourState struct {
	Colour Colour
	Name   string
	Exists bool
	ID     string
	// Version is the one to write at.
	Version  swarm.Version
	Release  int // 0 when it carries none
	Image    string
	Replicas uint64
	Labels   map[string]string // the service's
	// Created and Updated are when the service was created and last written.
	Created, Updated time.Time
}

// ColourStates are both colours of a service.
type ColourStates struct{ Blue, Green ColourState }

// Of is c's state.
func (s ColourStates) Of(c Colour) ColourState {
	if c == Blue {
		return s.Blue
	}
	return s.Green
}

// Colours reads and writes colour services on one manager. Every call is bounded by
// Timeout, its tries again included.
type Colours struct {
	API     API
	Timeout time.Duration // DefaultTimeout when 0
}

func (c *Colours) bounded(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, cmp.Or(c.Timeout, DefaultTimeout))
}

// Inspect reads both colours of service.
func (c *Colours) Inspect(ctx context.Context, service string) (ColourStates, error) {
	ctx, cancel := c.bounded(ctx)
	defer cancel()
	var states ColourStates
	for _, col := range []Colour{Blue, Green} {
		name, err := ColourName(service, col)
		if err != nil {
			return ColourStates{}, err
		}
		svc, found, err := c.read(ctx, name, service)
		if err != nil {
			return ColourStates{}, err
		}
		st := stateOf(col, name, svc, found)
		if col == Blue {
			states.Blue = st
		} else {
			states.Green = st
		}
	}
	return states, nil
}

func stateOf(col Colour, name string, svc swarm.Service, found bool) ColourState {
	st := ColourState{Colour: col, Name: name, Exists: found}
	if !found {
		return st
	}
	st.ID, st.Version, st.Labels = svc.ID, svc.Version, svc.Spec.Labels
	st.Created, st.Updated = svc.CreatedAt, svc.UpdatedAt
	st.Release, _ = strconv.Atoi(svc.Spec.Labels[LabelRelease])
	if cs := svc.Spec.TaskTemplate.ContainerSpec; cs != nil {
		st.Image = cs.Image
	}
	if r := svc.Spec.Mode.Replicated; r != nil && r.Replicas != nil {
		st.Replicas = *r.Replicas
	}
	return st
}

// read is the colour service name of service, asked again while the manager cannot
// answer. A service of that name that is not handoff's colour of service (of any
// service, when service is "") is an error.
func (c *Colours) read(ctx context.Context, name, service string) (swarm.Service, bool, error) {
	res, err := c.API.ServiceInspect(ctx, name, client.ServiceInspectOptions{})
	for err != nil && isTransient(err) && ctx.Err() == nil {
		wait(ctx, transientRetry)
		res, err = c.API.ServiceInspect(ctx, name, client.ServiceInspectOptions{})
	}
	switch {
	case err != nil && ctx.Err() != nil:
		return swarm.Service{}, false, fmt.Errorf("read service %s: %w (%v)", name, errUnanswered, err)
	case cerrdefs.IsNotFound(err):
		return swarm.Service{}, false, nil
	case err != nil:
		return swarm.Service{}, false, fmt.Errorf("read service %s: %w", name, err)
	}
	if got := res.Service.Spec.Labels[LabelService]; got == "" || service != "" && got != service {
		return swarm.Service{}, false, fmt.Errorf("service %s is not handoff's colour of %s (label %s=%q); remove or rename it", name, cmp.Or(service, "a service"), LabelService, got)
	}
	if res.Service.Spec.Mode.Replicated == nil {
		return swarm.Service{}, false, fmt.Errorf("service %s is not replicated; remove it, handoff creates it again", name)
	}
	return res.Service, true, nil
}

// Start writes spec (ColourSpec's) into its colour service: creates it, or updates it
// at the version read, sending auth (EncodedRegistryAuth) so every node can pull. A
// write refused as stale is read and decided again: if the service now carries another
// release than the one first read, someone else wrote it, and Start stops naming it.
func (c *Colours) Start(ctx context.Context, spec swarm.ServiceSpec, auth string) error {
	ctx, cancel := c.bounded(ctx)
	defer cancel()
	name, service, release := spec.Name, spec.Labels[LabelService], spec.Labels[LabelRelease]
	return c.write(ctx, name, service, func(now swarm.Service, found bool) (*swarm.ServiceSpec, error) {
		if found && now.Spec.Labels[LabelRelease] == release && sameImage(now.Spec, spec) && replicasOf(now.Spec) == replicasOf(spec) {
			return nil, nil // as asked already: a write whose answer was lost went through
		}
		return &spec, nil
	}, auth, "start release "+release+" in "+name)
}

// Scale sets the replicas of colour service name, its spec otherwise kept as it is: 0
// retires it, N brings a retired colour back for a rollback.
func (c *Colours) Scale(ctx context.Context, name string, n uint64, auth string) error {
	ctx, cancel := c.bounded(ctx)
	defer cancel()
	return c.write(ctx, name, "", func(now swarm.Service, found bool) (*swarm.ServiceSpec, error) {
		if !found {
			if n == 0 {
				return nil, nil
			}
			return nil, fmt.Errorf("scale %s to %d: there is no such service; deploy first", name, n)
		}
		if replicasOf(now.Spec) == n {
			return nil, nil
		}
		spec := now.Spec
		spec.Mode.Replicated = &swarm.ReplicatedService{Replicas: &n}
		return &spec, nil
	}, auth, fmt.Sprintf("scale %s to %d", name, n))
}

// decision is what a write makes of the service as now read: the spec to write, nil
// to write nothing.
type decision func(now swarm.Service, found bool) (*swarm.ServiceSpec, error)

// write reads name, lets decide, and writes at the version read; refused as stale, or
// not known to have gone through, it reads and decides again, stopping if the service
// carries another release than first read. service "" is any app service's colour.
func (c *Colours) write(ctx context.Context, name, service string, decide decision, auth, what string) error {
	var first swarm.Service
	var firstFound bool
	for try := 0; ; try++ {
		now, found, err := c.read(ctx, name, service)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if try == 0 {
			first, firstFound = now, found
		} else if was, is := first.Spec.Labels[LabelRelease], now.Spec.Labels[LabelRelease]; found && (!firstFound || was != is) {
			if spec, _ := decide(now, found); spec == nil {
				return nil // what this write asked for is there
			}
			return fmt.Errorf("%s: another deploy wrote release %s to it meanwhile; left as it is, nothing written", what, is)
		}
		spec, err := decide(now, found)
		if err != nil || spec == nil {
			return err
		}
		if found {
			_, err = c.API.ServiceUpdate(ctx, now.ID, client.ServiceUpdateOptions{Version: now.Version, Spec: *spec, EncodedRegistryAuth: auth})
		} else {
			_, err = c.API.ServiceCreate(ctx, client.ServiceCreateOptions{Spec: *spec, EncodedRegistryAuth: auth})
		}
		switch {
		case err == nil:
			return nil
		case ctx.Err() != nil:
			return fmt.Errorf("%s: %w (%w)", what, errUnanswered, ctx.Err())
		case isTransient(err):
			wait(ctx, transientRetry)
		case isStale(err) || cerrdefs.IsAlreadyExists(err) || cerrdefs.IsConflict(err):
		default:
			return fmt.Errorf("%s: %w", what, err)
		}
		if try == maxWrites {
			return fmt.Errorf("%s: %d writes in a row lost to other writers; try again", what, maxWrites)
		}
	}
}

func replicasOf(spec swarm.ServiceSpec) uint64 {
	if r := spec.Mode.Replicated; r != nil && r.Replicas != nil {
		return *r.Replicas
	}
	return 0
}

func sameImage(a, b swarm.ServiceSpec) bool {
	return a.TaskTemplate.ContainerSpec != nil && b.TaskTemplate.ContainerSpec != nil &&
		a.TaskTemplate.ContainerSpec.Image == b.TaskTemplate.ContainerSpec.Image
}
