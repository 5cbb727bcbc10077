// Package docker runs handoff's containers on the Docker Engine API: it is
// the deploy.Runtime. Containers carry labels, so Docker itself is the
// source of truth for which releases of a service exist.
package docker

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
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
	LabelReplica = "handoff.replica" // which of a release's containers (absent: its only one)
	LabelImage   = "handoff.image"
	LabelImageID = "handoff.image-id"
	LabelPort    = "handoff.port"
	LabelReach   = "handoff.reach" // "network": reached by name on its networks, not published
)

// startAttempts bounds how often Run picks another host port when the one
// it picked was taken between the pick and the start.
const startAttempts = 5

// Runtime is the deploy.Runtime on a Docker engine.
type Runtime struct {
	api *client.Client
	// ports is held from picking a host port until the container that
	// publishes it is created (and so holds it): a release's replicas
	// start at once, and must not pick the same one.
	ports sync.Mutex
}

var (
	_ deploy.Runtime   = (*Runtime)(nil)
	_ deploy.Adopter   = (*Runtime)(nil)
	_ deploy.Announcer = (*Runtime)(nil)
	_ deploy.Execer    = (*Runtime)(nil)
)

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
	rp := restartPolicy(policy)
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
		c.Replica, _ = strconv.Atoi(in.Config.Labels[LabelReplica])
		c.Port, _ = strconv.Atoi(in.Config.Labels[LabelPort])
		c.HasCheck, c.CheckWindow = checkWindow(in.Config.Healthcheck)
		c.CheckCommand = checkCommand(in.Config.Healthcheck)
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
	switch {
	case in.Config != nil && in.Config.Labels[LabelReach] == string(deploy.ReachNetwork):
		// Reached by its name on its networks: the same address for its
		// whole life; checks from the host dial its address there.
		if c.Port != 0 {
			c.Upstream = net.JoinHostPort(c.Name, strconv.Itoa(c.Port))
			if ip := firstIP(in); ip != "" && c.Running {
				c.Probe = net.JoinHostPort(ip, strconv.Itoa(c.Port))
			}
		}
	case in.NetworkSettings != nil && c.Running:
		c.Port, c.Upstream = published(in.NetworkSettings.Ports, c.Port)
	}
	if c.Upstream == "" && in.HostConfig != nil {
		// Not running: where it will listen when started, if its port is pinned.
		c.Upstream = pinned(in.HostConfig.PortBindings, c.Port)
	}
	return c
}

// firstIP is the container's address on its first network, by name order
// (the one a check from the host dials).
func firstIP(in container.InspectResponse) string {
	if in.NetworkSettings == nil {
		return ""
	}
	names := slices.Sorted(maps.Keys(in.NetworkSettings.Networks))
	if in.HostConfig != nil && in.NetworkSettings.Networks[string(in.HostConfig.NetworkMode)] != nil {
		names = append([]string{string(in.HostConfig.NetworkMode)}, names...)
	}
	for _, n := range names {
		if ep := in.NetworkSettings.Networks[n]; ep != nil && ep.IPAddress.IsValid() {
			return ep.IPAddress.String()
		}
	}
	return ""
}

// Docker's HEALTHCHECK defaults, applied when the image leaves them at 0.
const (
	dockerCheckInterval = 30 * time.Second
	dockerCheckTimeout  = 30 * time.Second
	dockerCheckRetries  = 3
)

// checkWindow says whether hc is a real check, and how long it gives a
// container to become healthy before Docker calls it unhealthy.
// checkCommand is a HEALTHCHECK's test as an exec runs it, as Docker
// itself runs it: CMD's words, or CMD-SHELL's string through /bin/sh -c.
func checkCommand(hc *container.HealthConfig) []string {
	switch {
	case hc == nil || len(hc.Test) < 2:
		return nil
	case hc.Test[0] == "CMD":
		return hc.Test[1:]
	case hc.Test[0] == "CMD-SHELL":
		return []string{"/bin/sh", "-c", hc.Test[1]}
	}
	return nil
}

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
