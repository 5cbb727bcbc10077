package swarm

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/client"

	"github.com/handoff-dev/handoff/internal/deploy"
)

// RuntimeAPI is what the swarm runtime needs of a manager; *client.Client has it.
type RuntimeAPI interface {
	API
	TaskAPI
	ServiceRemove(ctx context.Context, id string, opts client.ServiceRemoveOptions) (client.ServiceRemoveResult, error)
	ServiceLogs(ctx context.Context, id string, opts client.ServiceLogsOptions) (client.ServiceLogsResult, error)
	ServiceList(ctx context.Context, opts client.ServiceListOptions) (client.ServiceListResult, error)
	TaskLogs(ctx context.Context, id string, opts client.TaskLogsOptions) (client.TaskLogsResult, error)
	DistributionInspect(ctx context.Context, ref string, opts client.DistributionInspectOptions) (client.DistributionInspectResult, error)
}

// Runtime is deploy.Runtime on a swarm. The procedure sees a release as one
// "container", its colour service: Run writes the idle colour with the release's
// image (pinned by digest) and Replicas tasks, Inspect says it is healthy once that
// many tasks of the release run on ready nodes (their HEALTHCHECK passed: Swarm runs a
// task only then), Stop and Start scale it to 0 and back, Remove removes it. Its
// endpoint is tasks.<colour>:<port>, which every node's proxy resolves itself.
//
// It has none of the optional roles: nothing is adopted (a swarm's first deploy starts
// from nothing), names come with the colour's tasks, and health is the tasks' own
// HEALTHCHECK (a check from this host cannot reach other nodes).
type Runtime struct {
	API      RuntimeAPI
	Network  string // the overlay; DefaultNetwork when ""
	Replicas uint64 // tasks per release; 1 when 0
	// Constraints and MaxPerNode place the tasks (Swarm's placement).
	Constraints []string
	MaxPerNode  uint64
	// Auth gives the registry login (X-Registry-Auth) for an image, sent with every
	// write so that every node can pull; nil: none.
	Auth func(ref string) (string, error)
	// Timeout bounds each call to the manager, tries again included; DefaultTimeout when 0.
	Timeout time.Duration
	// Now is the clock of the containers' times; time.Now when nil.
	Now func() time.Time
}

var _ deploy.Runtime = (*Runtime)(nil)

func (r *Runtime) colours() *Colours { return &Colours{API: r.API, Timeout: r.Timeout} }

func (r *Runtime) replicas() uint64 { return max(r.Replicas, 1) }

func (r *Runtime) auth(ref string) (string, error) {
	if r.Auth == nil {
		return "", nil
	}
	return r.Auth(ref)
}

// Build is refused: every node pulls a release's image from a registry.
func (r *Runtime) Build(context.Context, deploy.BuildSpec, string, io.Writer) error {
	return fmt.Errorf("%w: engine swarm deploys an image from a registry every node pulls from: build and push it first, then deploy it by its name (remove build:)", deploy.ErrConfig)
}

// ImageID resolves ref to the image every node will run: its name pinned by the
// registry's digest (name@sha256:…), asked of the registry through the manager.
func (r *Runtime) ImageID(ctx context.Context, ref string) (string, error) {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return "", fmt.Errorf("%w: image %q is not an image reference: %v", deploy.ErrConfig, ref, err)
	}
	auth, err := r.auth(ref)
	if err != nil {
		return "", fmt.Errorf("%w: %s: %v", deploy.ErrPull, ref, err)
	}
	ctx, cancel := context.WithTimeout(ctx, cmp.Or(r.Timeout, DefaultTimeout))
	defer cancel()
	res, err := r.API.DistributionInspect(ctx, named.String(), client.DistributionInspectOptions{EncodedRegistryAuth: auth})
	if err != nil {
		return "", fmt.Errorf("%w: %s: the registry did not give its digest: %v (push it first, or check the name and `docker login %s` on this machine; nothing was changed)", deploy.ErrPull, ref, err, reference.Domain(named))
	}
	if d, ok := named.(reference.Digested); ok && d.Digest() != res.Descriptor.Digest {
		return "", fmt.Errorf("%w: %s: the registry has %s under that name, not this digest (nothing was changed)", deploy.ErrPull, ref, res.Descriptor.Digest)
	}
	pinned, err := reference.WithDigest(reference.TrimNamed(named), res.Descriptor.Digest)
	if err != nil {
		return "", fmt.Errorf("%w: %s: %v", deploy.ErrPull, ref, err)
	}
	return pinned.String(), nil
}

// Pull checks the registry has ref: the nodes pull it themselves.
func (r *Runtime) Pull(ctx context.Context, ref string, _ io.Writer) error {
	_, err := r.ImageID(ctx, ref)
	return err
}

// Digest is the pinned reference ImageID gave.
func (r *Runtime) Digest(_ context.Context, imageID, _ string) (string, error) {
	return imageID, nil
}

// Releases lists service's colour services that carry a release, newest release first.
func (r *Runtime) Releases(ctx context.Context, service string) ([]deploy.Container, error) {
	states, err := r.colours().Inspect(ctx, service)
	if err != nil {
		return nil, err
	}
	var out []deploy.Container
	for _, st := range []ColourState{states.Blue, states.Green} {
		if st.Exists && st.Release > 0 {
			c := r.container(service, st, portOf(st))
			// Its tasks' health, as Inspect reads it: status reports it for the live one.
			if err := r.tally(ctx, st, &c); err != nil {
				return nil, err
			}
			out = append(out, c)
		}
	}
	if len(out) == 2 && out[1].Release > out[0].Release {
		out[0], out[1] = out[1], out[0]
	}
	return out, nil
}

// LabelPort is the app's port, on a colour service: its endpoint's port.
const LabelPort = "handoff.port"

func portOf(st ColourState) int {
	p, _ := strconv.Atoi(st.Labels[LabelPort])
	return p
}

// container is a colour service as the procedure sees a release's container.
func (r *Runtime) container(service string, st ColourState, port int) deploy.Container {
	c := deploy.Container{
		ID: st.Name, Name: st.Name, Service: service, Release: st.Release,
		Image: st.Image, ImageID: st.Image, Running: st.Replicas > 0,
		HasCheck: true, Port: port, Created: st.Created, StartedAt: st.Updated,
	}
	if port > 0 {
		c.Upstream = "tasks." + st.Name + ":" + strconv.Itoa(port)
	}
	if c.Running {
		c.Health = "starting"
	}
	return c
}

// Run writes release of svc into the idle colour: the one not running. Both running
// means an earlier deploy left both up, and what the proxies point at is not this
// runtime's to guess: it refuses, changing nothing.
func (r *Runtime) Run(ctx context.Context, svc deploy.Service, release, replica int, imageID string) (deploy.Container, error) {
	if replica > 1 {
		return deploy.Container{}, fmt.Errorf("%w: on a swarm a release's replicas are one colour service's tasks (replicas: %d there)", deploy.ErrConfig, r.replicas())
	}
	states, err := r.colours().Inspect(ctx, svc.Name)
	if err != nil {
		return deploy.Container{}, err
	}
	idle, err := idleColour(states)
	if err != nil {
		return deploy.Container{}, err
	}
	check, err := healthOf(svc)
	if err != nil {
		return deploy.Container{}, err
	}
	spec, err := ColourSpec(Release{
		Service: svc.Name, Colour: idle.Colour, Number: release, Image: imageID, Replicas: r.replicas(),
		Network: r.Network, Health: check, StopGracePeriod: svc.StopTimeout, Env: svc.Env,
		Constraints: r.Constraints, MaxPerNode: r.MaxPerNode,
	})
	if err != nil {
		return deploy.Container{}, fmt.Errorf("%w: %v", deploy.ErrConfig, err)
	}
	spec.Labels[LabelPort] = strconv.Itoa(svc.Port)
	if len(svc.Command) > 0 {
		spec.TaskTemplate.ContainerSpec.Args = svc.Command
	}
	if len(svc.Entrypoint) > 0 {
		spec.TaskTemplate.ContainerSpec.Command = svc.Entrypoint
	}
	auth, err := r.auth(imageID)
	if err != nil {
		return deploy.Container{}, err
	}
	if err := r.colours().Start(ctx, spec, auth); err != nil {
		return deploy.Container{}, err
	}
	now := r.now()
	st := ColourState{Colour: idle.Colour, Name: idle.Name, Exists: true, Release: release, Image: imageID, Replicas: r.replicas(), Created: now, Updated: now}
	return r.container(svc.Name, st, svc.Port), nil
}

// idleColour is the colour a new release goes to: the one that runs nothing.
func idleColour(s ColourStates) (ColourState, error) {
	switch {
	case s.Blue.Replicas > 0 && s.Green.Replicas > 0:
		return ColourState{}, fmt.Errorf("both colours run (%s release %d, %s release %d): an earlier deploy left them so; run handoff repair first (nothing was changed)", s.Blue.Name, s.Blue.Release, s.Green.Name, s.Green.Release)
	case s.Blue.Replicas > 0:
		return s.Green, nil
	case s.Green.Replicas > 0:
		return s.Blue, nil
	case s.Green.Exists && s.Green.Release > s.Blue.Release:
		// Neither runs: keep the newest release there, for a rollback to it.
		return s.Blue, nil
	case s.Blue.Exists:
		return s.Green, nil
	}
	return s.Blue, nil
}

// healthOf is the tasks' HEALTHCHECK: health.command, run by each node's engine.
func healthOf(svc deploy.Service) (HealthCheck, error) {
	h := svc.Health
	if len(h.Command) == 0 {
		return HealthCheck{}, fmt.Errorf("%w: engine swarm needs health: {type: cmd, command: [...]}, run by each node in the task (Swarm sends a task requests only once it passes, and no check from this host reaches other nodes)", deploy.ErrConfig)
	}
	// Failures in the start period do not count (the app boots); after it, three in a
	// row make the task unhealthy, and Swarm replaces it.
	return HealthCheck{Command: h.Command, Interval: h.Interval, Timeout: h.Timeout, StartPeriod: h.StartTimeout, Retries: 3}, nil
}

// Start scales a colour back up to its replicas: a rollback to the release it holds.
func (r *Runtime) Start(ctx context.Context, id, _ string) (deploy.Container, error) {
	st, _, err := r.read(ctx, id)
	if err != nil {
		return deploy.Container{}, err
	}
	// The registry login is sent again: the one stored at the colour's write may
	// have run out (a cloud registry's tokens last hours).
	auth, err := r.auth(st.Image)
	if err != nil {
		return deploy.Container{}, err
	}
	if err := r.colours().Scale(ctx, id, r.replicas(), auth); err != nil {
		return deploy.Container{}, err
	}
	return r.Inspect(ctx, id)
}

// Watch has no events to give: Inspect reads the tasks at every check.
func (r *Runtime) Watch(context.Context, string) <-chan string { return nil }

// Inspect reads a colour and its tasks: healthy once Replicas tasks of its release run
// on ready nodes, unhealthy once they failed too often (FailureLimit), else starting,
// with what the tasks are doing as the check's output.
func (r *Runtime) Inspect(ctx context.Context, id string) (deploy.Container, error) {
	st, service, err := r.read(ctx, id)
	if err != nil {
		return deploy.Container{}, err
	}
	c := r.container(service, st, portOf(st))
	if err := r.tally(ctx, st, &c); err != nil {
		return deploy.Container{}, err
	}
	return c, nil
}

// tally sets c's health from its colour's tasks, when it runs.
func (r *Runtime) tally(ctx context.Context, st ColourState, c *deploy.Container) error {
	if !c.Running {
		return nil
	}
	tctx, cancel := context.WithTimeout(ctx, cmp.Or(r.Timeout, DefaultTimeout))
	defer cancel()
	tasks, err := r.API.TaskList(tctx, client.TaskListOptions{Filters: make(client.Filters).Add("service", st.Name)})
	if err != nil {
		return fmt.Errorf("list the tasks of %s: %w", st.Name, err)
	}
	nodes, err := r.API.NodeList(tctx, client.NodeListOptions{})
	if err != nil {
		return fmt.Errorf("list the swarm's nodes: %w", err)
	}
	// Tasks that ended before the colour's last write (an earlier life of a release
	// scaled up again for a rollback) are not this start's failures.
	t := CountSince(st.Name, tasks.Items, nodes.Items, st.Release, int(st.Replicas), cmp.Or(r.Network, DefaultNetwork), st.Updated)
	switch t.Verdict {
	case Ready:
		c.Health = "healthy"
	case Failed:
		c.Health, c.HealthOutput = "unhealthy", t.Err().Error()
	default:
		c.HealthOutput = t.Progress()
	}
	return nil
}

// errNoColour is a colour service that is not there.
var errNoColour = errors.New("no such colour service")

// read is colour service id as a ColourState, and the app service it is a colour of.
func (r *Runtime) read(ctx context.Context, id string) (ColourState, string, error) {
	ctx, cancel := context.WithTimeout(ctx, cmp.Or(r.Timeout, DefaultTimeout))
	defer cancel()
	svc, found, err := r.colours().read(ctx, id, "")
	if err != nil {
		return ColourState{}, "", err
	}
	if !found {
		return ColourState{}, "", fmt.Errorf("%w: service %s", errNoColour, id)
	}
	return stateOf(Colour(svc.Spec.Labels[LabelColour]), id, svc, true), svc.Spec.Labels[LabelService], nil
}

// Stop scales the colour to 0: its tasks get SIGTERM and StopGracePeriod.
func (r *Runtime) Stop(ctx context.Context, id string, _ time.Duration) error {
	return r.colours().Scale(ctx, id, 0, "")
}

// Remove removes the colour service; the next deploy to that colour makes it again.
func (r *Runtime) Remove(ctx context.Context, id string) error {
	ctx, cancel := context.WithTimeout(ctx, cmp.Or(r.Timeout, DefaultTimeout))
	defer cancel()
	if _, _, err := r.read(ctx, id); errors.Is(err, errNoColour) {
		return nil
	} else if err != nil {
		return err
	}
	if _, err := r.API.ServiceRemove(ctx, id, client.ServiceRemoveOptions{}); err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("remove %s: %w", id, err)
	}
	return nil
}

// Logs is the colour's last lines, from every task.
func (r *Runtime) Logs(ctx context.Context, id string, lines int) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	rc, err := r.API.ServiceLogs(ctx, id, client.ServiceLogsOptions{ShowStdout: true, ShowStderr: true, Tail: strconv.Itoa(lines)})
	if err != nil {
		return "", err
	}
	defer rc.Close()
	var out bytes.Buffer
	if _, err := stdcopy.StdCopy(&out, &out, rc); err != nil && out.Len() == 0 {
		return "", err
	}
	return strings.TrimRight(out.String(), "\n"), nil
}

func (r *Runtime) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}
