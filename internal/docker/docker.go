// Package docker runs handoff's containers on the Docker Engine API: it is
// the deploy.Runtime. Containers carry labels, so Docker itself is the
// source of truth for which releases of a service exist.
package docker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"

	"github.com/handoff-dev/handoff/internal/deploy"
)

// Labels handoff puts on every container it starts.
const (
	LabelService = "handoff.service"
	LabelRelease = "handoff.release"
	LabelImage   = "handoff.image"
	LabelImageID = "handoff.image-id"
	LabelPort    = "handoff.port"
)

// startAttempts bounds how often Run picks another host port when the one
// it picked was taken between the pick and the start.
const startAttempts = 5

// Runtime is the deploy.Runtime on a Docker engine.
type Runtime struct {
	api *client.Client
}

var _ deploy.Runtime = (*Runtime)(nil)

// New connects to the engine named by DOCKER_HOST (or the default socket)
// and negotiates the API version (the client does by default), so engines
// from API 1.41 up work.
func New(ctx context.Context) (*Runtime, error) {
	api, err := client.New(client.FromEnv) // negotiates the API version with the engine
	if err != nil {
		return nil, fmt.Errorf("docker client: %w", err)
	}
	if _, err := api.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true}); err != nil {
		return nil, fmt.Errorf("cannot reach the Docker engine at %s: %w (is Docker running, and DOCKER_HOST right?)", api.DaemonHost(), err)
	}
	return &Runtime{api: api}, nil
}

// Close releases the client's connections.
func (r *Runtime) Close() error { return r.api.Close() }

// Releases lists the service's containers, newest release first.
func (r *Runtime) Releases(ctx context.Context, service string) ([]deploy.Container, error) {
	list, err := r.api.ContainerList(ctx, client.ContainerListOptions{
		All:     true,
		Filters: make(client.Filters).Add("label", LabelService+"="+service),
	})
	if err != nil {
		return nil, fmt.Errorf("list containers of %s: %w", service, err)
	}
	out := make([]deploy.Container, 0, len(list.Items))
	for _, s := range list.Items {
		c, err := r.Inspect(ctx, s.ID)
		if cerrdefs.IsNotFound(err) {
			continue // removed while we looked
		}
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b deploy.Container) int { return b.Release - a.Release })
	return out, nil
}

// Serving finds the running container that publishes upstream on the
// host, for adopting the container a user started by hand. The binding must
// be the upstream's own address (or all addresses), not just its port.
func (r *Runtime) Serving(ctx context.Context, upstream string) (*deploy.Container, error) {
	host, portStr, err := net.SplitHostPort(upstream)
	if err != nil {
		return nil, nil // a unix socket or a name: not a published port
	}
	if ip, err := netip.ParseAddr(host); host != "localhost" && (err != nil || !ip.IsLoopback()) {
		return nil, nil // only loopback upstreams are containers on this host
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, nil
	}
	list, err := r.api.ContainerList(ctx, client.ContainerListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	for _, s := range list.Items {
		for _, p := range s.Ports {
			if int(p.PublicPort) != port || p.Type != "tcp" || !reaches(p.IP, host) {
				continue
			}
			c, err := r.Inspect(ctx, s.ID)
			if err != nil {
				return nil, err
			}
			if c.Service == "" {
				c.Adopted = true
			}
			c.Port = int(p.PrivatePort)
			c.Upstream = upstream
			return &c, nil
		}
	}
	return nil, nil
}

// reaches says whether a port bound on ip answers a dial to host: bound on
// that very address, or on every address. "localhost" is any loopback.
func reaches(ip netip.Addr, host string) bool {
	if !ip.IsValid() || ip.IsUnspecified() {
		return true
	}
	if host == "localhost" {
		return ip.IsLoopback()
	}
	want, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap() == want.Unmap()
}

// Build runs the docker CLI, so that BuildKit, buildx and the user's
// builder settings apply exactly as when they build by hand.
func (r *Runtime) Build(ctx context.Context, spec deploy.BuildSpec, tag string, out io.Writer) error {
	args := []string{"build", "--tag", tag}
	if spec.Dockerfile != "" {
		args = append(args, "--file", spec.Dockerfile)
	}
	if spec.Target != "" {
		args = append(args, "--target", spec.Target)
	}
	keys := make([]string, 0, len(spec.Args))
	for k := range spec.Args {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		args = append(args, "--build-arg", k+"="+spec.Args[k])
	}
	args = append(args, spec.Context)
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Run(); err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return fmt.Errorf("build %s: the docker command is not installed; build the image yourself and pass --image", tag)
		}
		return fmt.Errorf("docker build %s: %w (its output is above)", spec.Context, err)
	}
	return nil
}

// ImageID resolves ref to the local image's ID. handoff never pulls.
func (r *Runtime) ImageID(ctx context.Context, ref string) (string, error) {
	img, err := r.api.ImageInspect(ctx, ref)
	if cerrdefs.IsNotFound(err) {
		return "", fmt.Errorf("%w: %q is not on this Docker host: build it, `docker pull` it, or set `build:` in handoff.yml", deploy.ErrImageNotFound, ref)
	}
	if err != nil {
		return "", fmt.Errorf("inspect image %s: %w", ref, err)
	}
	return img.ID, nil
}

// Run creates release of svc from imageID and starts it, published on
// 127.0.0.1 only, so nothing reaches it but through the proxy. Its host
// port is picked once, here, and written into the container: Docker keeps
// it across every restart of the container, of dockerd and of the machine,
// so the proxy's upstream stays right for the release's whole life. The
// container is created from the image ID, so a tag moved meanwhile cannot
// make it run another image.
func (r *Runtime) Run(ctx context.Context, svc deploy.Service, release int, imageID string) (deploy.Container, error) {
	name := fmt.Sprintf("%s-%d", svc.Name, release)
	tried := map[int]bool{}
	for attempt := 1; ; attempt++ {
		hostPort, err := r.pickPort(ctx, svc.HostPorts, tried)
		if err != nil {
			return deploy.Container{}, fmt.Errorf("start %s: %w", name, err)
		}
		tried[hostPort] = true
		c, err := r.create(ctx, svc, name, release, imageID, hostPort)
		if err != nil {
			return deploy.Container{}, err
		}
		started, err := r.Start(ctx, c, svc.Restart)
		if err == nil {
			return started, nil
		}
		rmCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		_, _ = r.api.ContainerRemove(rmCtx, c, client.ContainerRemoveOptions{Force: true})
		cancel()
		if portTaken(err) && attempt < startAttempts {
			continue // taken since we looked: pick another
		}
		return deploy.Container{}, fmt.Errorf("start %s: %w", name, err)
	}
}

func (r *Runtime) create(ctx context.Context, svc deploy.Service, name string, release int, imageID string, hostPort int) (string, error) {
	port, err := network.ParsePort(strconv.Itoa(svc.Port) + "/tcp")
	if err != nil {
		return "", err
	}
	labels := map[string]string{}
	for k, v := range svc.Labels {
		labels[k] = v
	}
	labels[LabelService] = svc.Name
	labels[LabelRelease] = strconv.Itoa(release)
	labels[LabelImage] = svc.Image
	labels[LabelImageID] = imageID
	labels[LabelPort] = strconv.Itoa(svc.Port)
	stopSeconds := int(svc.StopTimeout.Seconds())

	cfg := &container.Config{
		Image:        imageID,
		Cmd:          svc.Command,
		Env:          svc.Env,
		Labels:       labels,
		ExposedPorts: network.PortSet{port: {}},
		StopTimeout:  &stopSeconds,
	}
	binding := network.PortBinding{HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: strconv.Itoa(hostPort)}
	host := &container.HostConfig{
		Binds:         svc.Volumes,
		PortBindings:  network.PortMap{port: {binding}},
		RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyMode(svc.Restart)},
		Resources: container.Resources{
			Memory:   svc.Memory,
			NanoCPUs: int64(svc.CPUs * 1e9),
		},
	}
	if svc.Network != "" {
		host.NetworkMode = container.NetworkMode(svc.Network)
	}
	created, err := r.api.ContainerCreate(ctx, client.ContainerCreateOptions{Name: name, Config: cfg, HostConfig: host})
	if cerrdefs.IsConflict(err) {
		return "", fmt.Errorf("create %s: a container of that name exists and handoff did not expect it; rename or remove it (`docker rm -f %s`) and deploy again", name, name)
	}
	if err != nil {
		return "", fmt.Errorf("create %s: %w", name, err)
	}
	return created.ID, nil
}

// pickPort picks a loopback host port for a new release: free now, and
// held by no container, running or not (a stopped release keeps its port
// for a rollback). From ports when set, else one the kernel offers, as
// Docker itself would pick.
func (r *Runtime) pickPort(ctx context.Context, ports deploy.PortRange, tried map[int]bool) (int, error) {
	held, err := r.heldPorts(ctx)
	if err != nil {
		return 0, err
	}
	usable := func(p int) bool { return !tried[p] && !held[p] && free(p) }
	if ports.Low == 0 {
		for range 50 {
			p, err := kernelPort()
			if err != nil {
				return 0, err
			}
			if usable(p) {
				return p, nil
			}
		}
		return 0, errors.New("no free loopback port found")
	}
	n := ports.High - ports.Low + 1
	start := rand.IntN(n) // spread concurrent deploys over the range
	for i := range n {
		if p := ports.Low + (start+i)%n; usable(p) {
			return p, nil
		}
	}
	return 0, fmt.Errorf("no free host port in %d-%d (host_ports): every port there is in use or held by a container; widen the range or remove old containers", ports.Low, ports.High)
}

// heldPorts lists the host ports every container on this engine publishes
// or will publish when it starts again.
func (r *Runtime) heldPorts(ctx context.Context) (map[int]bool, error) {
	list, err := r.api.ContainerList(ctx, client.ContainerListOptions{All: true})
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	held := map[int]bool{}
	for _, s := range list.Items {
		for _, p := range s.Ports {
			held[int(p.PublicPort)] = true
		}
		if s.State == container.StateRunning {
			continue
		}
		res, err := r.api.ContainerInspect(ctx, s.ID, client.ContainerInspectOptions{})
		if err != nil || res.Container.HostConfig == nil {
			continue // removed while we looked
		}
		for _, bindings := range res.Container.HostConfig.PortBindings {
			for _, b := range bindings {
				if n, err := strconv.Atoi(b.HostPort); err == nil {
					held[n] = true
				}
			}
		}
	}
	return held, nil
}

func kernelPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func free(port int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// portTaken says whether a start failed because the host port is in use.
func portTaken(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "port is already allocated") || strings.Contains(msg, "address already in use")
}

// Start starts a container with restart policy restart ("" : as it is).
// A release handoff made keeps its host port; a container started by hand
// with a port Docker picked may come back on another one.
func (r *Runtime) Start(ctx context.Context, id string, restart string) (deploy.Container, error) {
	if restart != "" {
		if err := r.setRestart(ctx, id, restart); err != nil {
			return deploy.Container{}, err
		}
	}
	if _, err := r.api.ContainerStart(ctx, id, client.ContainerStartOptions{}); err != nil {
		return deploy.Container{}, err
	}
	return r.Inspect(ctx, id)
}

func (r *Runtime) setRestart(ctx context.Context, id, policy string) error {
	rp := container.RestartPolicy{Name: container.RestartPolicyMode(policy)}
	if _, err := r.api.ContainerUpdate(ctx, id, client.ContainerUpdateOptions{RestartPolicy: &rp}); err != nil {
		return fmt.Errorf("set the restart policy of %s to %s: %w", id, policy, err)
	}
	return nil
}

// Watch reports the container's state changes as Docker sees them (die,
// oom, restart, start, health_status), so that a crash is seen at once.
func (r *Runtime) Watch(ctx context.Context, id string) <-chan string {
	res := r.api.Events(ctx, client.EventsListOptions{
		Filters: make(client.Filters).Add("type", "container").Add("container", id),
	})
	out := make(chan string, 16)
	go func() {
		defer close(out)
		for {
			select {
			case m := <-res.Messages:
				select {
				case out <- string(m.Action):
				default: // the watcher is behind; it re-inspects anyway
				}
			case <-res.Err:
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

// Inspect reads a container's state.
func (r *Runtime) Inspect(ctx context.Context, id string) (deploy.Container, error) {
	res, err := r.api.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
	if err != nil {
		return deploy.Container{}, err
	}
	return fromInspect(res.Container), nil
}

// Exec runs cmd in the container and returns its exit code and output.
func (r *Runtime) Exec(ctx context.Context, id string, cmd []string) (int, string, error) {
	ex, err := r.api.ExecCreate(ctx, id, client.ExecCreateOptions{Cmd: cmd, AttachStdout: true, AttachStderr: true})
	if err != nil {
		return -1, "", err
	}
	att, err := r.api.ExecAttach(ctx, ex.ID, client.ExecAttachOptions{})
	if err != nil {
		return -1, "", err
	}
	defer att.Close()
	var out bytes.Buffer
	if _, err := stdcopy.StdCopy(&out, &out, att.Reader); err != nil {
		return -1, out.String(), err
	}
	res, err := r.api.ExecInspect(ctx, ex.ID, client.ExecInspectOptions{})
	if err != nil {
		return -1, out.String(), err
	}
	return res.ExitCode, out.String(), nil
}

// Logs returns the container's last lines of stdout and stderr.
func (r *Runtime) Logs(ctx context.Context, id string, lines int) (string, error) {
	rc, err := r.api.ContainerLogs(ctx, id, client.ContainerLogsOptions{ShowStdout: true, ShowStderr: true, Tail: strconv.Itoa(lines)})
	if err != nil {
		return "", err
	}
	defer rc.Close()
	var out bytes.Buffer
	_, err = stdcopy.StdCopy(&out, &out, rc)
	return out.String(), err
}

// Stop sends SIGTERM (or the image's STOPSIGNAL) and SIGKILL after
// timeout. It first sets the restart policy to no: a stopped release with
// `always` would otherwise come back at the next dockerd restart or boot,
// beside the live one. Start puts the service's policy back.
func (r *Runtime) Stop(ctx context.Context, id string, timeout time.Duration) error {
	if err := r.setRestart(ctx, id, string(container.RestartPolicyDisabled)); err != nil {
		return err
	}
	secs := int(timeout.Seconds())
	_, err := r.api.ContainerStop(ctx, id, client.ContainerStopOptions{Timeout: &secs})
	return err
}

// Remove deletes a container, running or not; named volumes are kept.
func (r *Runtime) Remove(ctx context.Context, id string) error {
	_, err := r.api.ContainerRemove(ctx, id, client.ContainerRemoveOptions{Force: true})
	if cerrdefs.IsNotFound(err) {
		return nil
	}
	return err
}

func fromInspect(in container.InspectResponse) deploy.Container {
	c := deploy.Container{
		ID:           in.ID,
		Name:         strings.TrimPrefix(in.Name, "/"),
		RestartCount: in.RestartCount,
		ImageID:      in.Image,
	}
	if in.Config != nil {
		c.Image = in.Config.Image
		if ref := in.Config.Labels[LabelImage]; ref != "" {
			c.Image = ref // created from the image ID; the label has the name
		}
		c.Service = in.Config.Labels[LabelService]
		c.Release, _ = strconv.Atoi(in.Config.Labels[LabelRelease])
		c.Port, _ = strconv.Atoi(in.Config.Labels[LabelPort])
		c.HasCheck, c.CheckWindow = checkWindow(in.Config.Healthcheck)
	}
	c.Created, _ = time.Parse(time.RFC3339Nano, in.Created)
	if s := in.State; s != nil {
		c.Running, c.Restarting, c.ExitCode, c.OOMKilled = s.Running, s.Restarting, s.ExitCode, s.OOMKilled
		if s.Running {
			c.StartedAt, _ = time.Parse(time.RFC3339Nano, s.StartedAt)
		}
		if s.Health != nil {
			c.Health = string(s.Health.Status)
			if n := len(s.Health.Log); n > 0 && s.Health.Log[n-1] != nil {
				c.HealthOutput = strings.TrimSpace(s.Health.Log[n-1].Output)
			}
		}
	}
	if in.NetworkSettings != nil && c.Running {
		c.Port, c.Upstream = published(in.NetworkSettings.Ports, c.Port)
	}
	if c.Upstream == "" && in.HostConfig != nil {
		// Not running: where it will listen when started, if its port is pinned.
		c.Upstream = pinned(in.HostConfig.PortBindings, c.Port)
	}
	return c
}

// Docker's HEALTHCHECK defaults, applied when the image leaves them at 0.
const (
	dockerCheckInterval = 30 * time.Second
	dockerCheckTimeout  = 30 * time.Second
	dockerCheckRetries  = 3
)

// checkWindow says whether hc is a real check, and how long it gives a
// container to become healthy before Docker calls it unhealthy.
func checkWindow(hc *container.HealthConfig) (bool, time.Duration) {
	if hc == nil || len(hc.Test) == 0 || hc.Test[0] == "NONE" {
		return false, 0
	}
	interval, timeout, retries := hc.Interval, hc.Timeout, hc.Retries
	if interval == 0 {
		interval = dockerCheckInterval
	}
	if timeout == 0 {
		timeout = dockerCheckTimeout
	}
	if retries == 0 {
		retries = dockerCheckRetries
	}
	return true, hc.StartPeriod + time.Duration(retries)*(interval+timeout)
}

// published finds where port is published on the host. A container handoff
// did not start has no port label: its lowest published TCP port is taken.
func published(ports network.PortMap, port int) (int, string) {
	var candidates []network.Port
	for p, bindings := range ports {
		if p.Proto() == network.TCP && len(bindings) > 0 && (port == 0 || int(p.Num()) == port) {
			candidates = append(candidates, p)
		}
	}
	slices.SortFunc(candidates, func(a, b network.Port) int { return int(a.Num()) - int(b.Num()) })
	for _, p := range candidates {
		for _, b := range ports[p] {
			if b.HostPort != "" {
				return int(p.Num()), net.JoinHostPort(hostIP(b.HostIP), b.HostPort)
			}
		}
	}
	return port, ""
}

// pinned is the address a container's port is bound to at every start, or
// "" when Docker picks a new host port each time.
func pinned(bindings network.PortMap, port int) string {
	if port == 0 {
		return ""
	}
	for p, list := range bindings {
		if p.Proto() != network.TCP || int(p.Num()) != port {
			continue
		}
		for _, b := range list {
			if b.HostPort != "" && b.HostPort != "0" {
				return net.JoinHostPort(hostIP(b.HostIP), b.HostPort)
			}
		}
	}
	return ""
}

func hostIP(a netip.Addr) string {
	if !a.IsValid() || a.IsUnspecified() {
		return "127.0.0.1"
	}
	return a.String()
}
