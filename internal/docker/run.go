package docker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"

	"github.com/handoff-dev/handoff/internal/deploy"
)

// Run creates release of svc from imageID and starts it, published on
// 127.0.0.1 only, so nothing reaches it but through the proxy. Its host
// port is picked once, here, and written into the container: Docker keeps
// it across every restart of the container, of dockerd and of the machine,
// so the proxy's upstream stays right for the release's whole life. The
// container is created from the image ID, so a tag moved meanwhile cannot
// make it run another image.
func (r *Runtime) Run(ctx context.Context, svc deploy.Service, release, replica int, imageID string) (deploy.Container, error) {
	name := svc.ContainerName(release, replica)
	tried := map[int]bool{}
	for attempt := 1; ; attempt++ {
		c, err := r.createOnAPort(ctx, svc, name, release, replica, imageID, tried)
		if err != nil {
			return deploy.Container{}, err
		}
		// Created with its restart policy: started as it is.
		started, err := r.Start(ctx, c, "")
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

// createOnAPort picks a host port and creates the container on it, one
// at a time: a created container holds its port (heldPorts), so the next
// pick passes it by.
func (r *Runtime) createOnAPort(ctx context.Context, svc deploy.Service, name string, release, replica int, imageID string, tried map[int]bool) (string, error) {
	hostPort := 0
	if svc.Reach != deploy.ReachNetwork && svc.Port != 0 {
		r.ports.Lock()
		defer r.ports.Unlock()
		var err error
		if hostPort, err = r.pickPort(ctx, svc.HostPorts, tried); err != nil {
			return "", fmt.Errorf("start %s: %w", name, err)
		}
		tried[hostPort] = true
	}
	return r.create(ctx, svc, name, release, replica, imageID, hostPort)
}

// create makes the container: published on 127.0.0.1:hostPort (0: not
// published, the proxy reaches it by name on its networks), on its first
// network only by its own name, and labelled so that Docker knows it.
func (r *Runtime) create(ctx context.Context, svc deploy.Service, name string, release, replica int, imageID string, hostPort int) (string, error) {
	labels := map[string]string{}
	for k, v := range svc.Labels {
		labels[k] = v
	}
	for k, stamp := range svc.Stamps {
		labels[k] = map[deploy.Stamp]string{deploy.StampNumber: strconv.Itoa(deploy.ContainerNumber(release, replica)), deploy.StampImageID: imageID}[stamp]
	}
	labels[LabelService] = svc.Name
	labels[LabelRelease] = strconv.Itoa(release)
	if replica != 0 {
		labels[LabelReplica] = strconv.Itoa(replica)
	}
	labels[LabelImage] = svc.Image
	labels[LabelImageID] = imageID
	labels[LabelPort] = strconv.Itoa(svc.Port)
	if svc.Reach == deploy.ReachNetwork {
		labels[LabelReach] = string(deploy.ReachNetwork)
	}
	cfg, host, netCfg := r.spec(ctx, svc, imageID)
	cfg.Labels = labels
	cfg.Healthcheck = healthConfig(svc.Check)
	host.RestartPolicy = restartPolicy(svc.Restart)
	if svc.Port != 0 {
		port, err := network.ParsePort(strconv.Itoa(svc.Port) + "/tcp")
		if err != nil {
			return "", err
		}
		cfg.ExposedPorts = network.PortSet{port: {}}
		if hostPort != 0 {
			binding := network.PortBinding{HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: strconv.Itoa(hostPort)}
			host.PortBindings = network.PortMap{port: {binding}}
		}
	}
	return r.createVerified(ctx, svc, name, imageID, cfg, host, netCfg)
}

// spec is what every container of svc runs with, a release or its release
// job: the image, command, environment, volumes, networks and limits.
func (r *Runtime) spec(ctx context.Context, svc deploy.Service, imageID string) (*container.Config, *container.HostConfig, *network.NetworkingConfig) {
	stopSeconds := int(svc.StopTimeout.Seconds())
	// Created by its tag when the tag still names imageID (so `docker ps`
	// shows the name), else by the ID; checked after create either way, so
	// a tag moved meanwhile can never run another image.
	ref := imageID
	if svc.Image != "" {
		if id, err := r.ImageID(ctx, svc.Image); err == nil && id == imageID {
			ref = svc.Image
		}
	}
	cfg := &container.Config{
		Image:       ref,
		Cmd:         svc.Command,
		Entrypoint:  svc.Entrypoint,
		Env:         svc.Env,
		User:        svc.User,
		WorkingDir:  svc.WorkingDir,
		StopSignal:  svc.StopSignal,
		StopTimeout: &stopSeconds,
		Tty:         svc.TTY,
		OpenStdin:   svc.StdinOpen,
	}
	host := &container.HostConfig{
		Init:   svc.Init,
		Binds:  svc.Volumes,
		Mounts: mounts(svc.Mounts),
		Resources: container.Resources{
			Memory:   svc.Memory,
			NanoCPUs: int64(svc.CPUs * 1e9),
		},
		ExtraHosts: svc.ExtraHosts,
		CapAdd:     svc.CapAdd,
		CapDrop:    svc.CapDrop,
	}
	if svc.PidsLimit != 0 {
		host.Resources.PidsLimit = &svc.PidsLimit
	}
	if svc.Logging != nil {
		host.LogConfig = container.LogConfig{Type: svc.Logging.Driver, Config: svc.Logging.Options}
	}
	var netCfg *network.NetworkingConfig
	if len(svc.Networks) > 0 {
		// The service's aliases come with Announce, once it is healthy:
		// until then nobody may reach it by the service's names.
		host.NetworkMode = container.NetworkMode(svc.Networks[0].Name)
		netCfg = &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{svc.Networks[0].Name: {}}}
	}
	return cfg, host, netCfg
}

// createVerified creates name, checks it runs imageID, and joins svc's
// other networks; on any error nothing is left behind.
func (r *Runtime) createVerified(ctx context.Context, svc deploy.Service, name, imageID string, cfg *container.Config, host *container.HostConfig, netCfg *network.NetworkingConfig) (string, error) {
	if err := mountsSupported(svc, r.api.ClientVersion()); err != nil {
		return "", fmt.Errorf("create %s: %w", name, err)
	}
	created, err := r.api.ContainerCreate(ctx, client.ContainerCreateOptions{Name: name, Config: cfg, HostConfig: host, NetworkingConfig: netCfg})
	if cerrdefs.IsConflict(err) {
		return "", fmt.Errorf("create %s: a container of that name exists and handoff did not expect it; rename or remove it (`docker rm -f %s`) and deploy again", name, name)
	}
	if err != nil {
		return "", fmt.Errorf("create %s: %w", name, err)
	}
	if got, err := r.api.ContainerInspect(ctx, created.ID, client.ContainerInspectOptions{}); err != nil || got.Container.Image != imageID {
		_, _ = r.api.ContainerRemove(context.WithoutCancel(ctx), created.ID, client.ContainerRemoveOptions{Force: true})
		if err != nil {
			return "", fmt.Errorf("create %s: %w", name, err)
		}
		return "", fmt.Errorf("create %s: %s names another image since handoff resolved it (%s, now %s); nothing was started: deploy again", name, svc.Image, shortID(imageID), shortID(got.Container.Image))
	}
	// Docker before API 1.44 takes one network at create: join the others now.
	for _, n := range svc.Networks[min(1, len(svc.Networks)):] {
		if _, err := r.api.NetworkConnect(ctx, n.Name, client.NetworkConnectOptions{Container: created.ID}); err != nil {
			_, _ = r.api.ContainerRemove(context.WithoutCancel(ctx), created.ID, client.ContainerRemoveOptions{Force: true})
			return "", fmt.Errorf("create %s: join network %s: %w", name, n.Name, err)
		}
	}
	return created.ID, nil
}

// Announce gives a healthy release the service's aliases on each of its
// networks. It joined them all when it was created, with its own name
// only (other services find the service by its aliases: they must not
// reach a release before it is healthy), so its connections out (a
// database pool) are made there from its first moment. No Docker engine
// changes the aliases of a running container's endpoint (up to API 1.52
// a container already on a network cannot join it again): it leaves the
// network and joins it again. A TCP connection lives through that only
// when the release gets its address back: handoff asks for it where the
// engine lets a container ask for an address (a network with a subnet of
// its own), and else takes what the engine gives back, which is the same
// address unless one below it was freed meanwhile. When the address did
// change, the release's connections on that network are cut: Announce
// refuses, so that the deploy does not switch to it.
func (r *Runtime) Announce(ctx context.Context, c deploy.Container, svc deploy.Service) error {
	res, err := r.api.ContainerInspect(ctx, c.ID, client.ContainerInspectOptions{})
	if err != nil {
		return err
	}
	joined := map[string]*network.EndpointSettings{}
	if ns := res.Container.NetworkSettings; ns != nil {
		joined = ns.Networks
	}
	for _, n := range svc.Networks {
		if len(n.Aliases) == 0 {
			continue
		}
		was := joined[n.Name]
		if was == nil {
			return fmt.Errorf("%s is not on network %s, which it joined when it was created; deploy again", c.Name, n.Name)
		}
		if _, err := r.api.NetworkDisconnect(ctx, n.Name, client.NetworkDisconnectOptions{Container: c.ID}); err != nil {
			return fmt.Errorf("leave network %s: %w", n.Name, err)
		}
		if err := r.rejoin(ctx, c.ID, n, was); err != nil {
			return err
		}
		res, err := r.api.ContainerInspect(ctx, c.ID, client.ContainerInspectOptions{})
		if err != nil {
			return err
		}
		now := res.Container.NetworkSettings.Networks[n.Name]
		if now == nil || now.IPAddress != was.IPAddress || now.GlobalIPv6Address != was.GlobalIPv6Address {
			return fmt.Errorf("%w: %s came back on network %s at another address (%s, was %s) when it was given the service's names there (Docker gives them only as a container joins a network), which cut the connections it had open there; give network %s a subnet of its own (compose: ipam: config: [{subnet: …}]) so that handoff can keep the address, and deploy again",
				ErrAddressChanged, c.Name, n.Name, address(now), address(was), n.Name)
		}
	}
	return nil
}

// ErrAddressChanged says a release lost its address on a network as it
// was given the service's aliases there: it is not switched to.
var ErrAddressChanged = errors.New("address changed")

// rejoin joins network n again with its aliases, at the address it had
// where the engine takes an address asked for.
func (r *Runtime) rejoin(ctx context.Context, id string, n deploy.Network, was *network.EndpointSettings) error {
	ep := &network.EndpointSettings{Aliases: n.Aliases}
	if was.IPAddress.IsValid() || was.GlobalIPv6Address.IsValid() {
		ep.IPAMConfig = &network.EndpointIPAMConfig{IPv4Address: was.IPAddress, IPv6Address: was.GlobalIPv6Address}
	}
	_, err := r.api.NetworkConnect(ctx, n.Name, client.NetworkConnectOptions{Container: id, EndpointConfig: ep})
	if err != nil && ep.IPAMConfig != nil && cerrdefs.IsInvalidArgument(err) {
		// No subnet of its own: the engine picks (API 1.41 to 1.52 alike).
		ep.IPAMConfig = nil
		_, err = r.api.NetworkConnect(ctx, n.Name, client.NetworkConnectOptions{Container: id, EndpointConfig: ep})
	}
	if err != nil {
		return fmt.Errorf("join network %s as %s: %w", n.Name, strings.Join(n.Aliases, ", "), err)
	}
	return nil
}

func address(ep *network.EndpointSettings) string {
	if ep == nil {
		return "none"
	}
	var out []string
	for _, a := range []netip.Addr{ep.IPAddress, ep.GlobalIPv6Address} {
		if a.IsValid() {
			out = append(out, a.String())
		}
	}
	return cmp.Or(strings.Join(out, ", "), "none")
}

// restartPolicy is Docker's restart policy for one written as `docker run
// --restart` takes it ("on-failure:3"), checked when the settings were read.
func restartPolicy(s string) container.RestartPolicy {
	name, count, _ := strings.Cut(s, ":")
	n, _ := strconv.Atoi(count)
	return container.RestartPolicy{Name: container.RestartPolicyMode(name), MaximumRetryCount: n}
}

// mounts are svc's volume mounts that -v cannot say.
func mounts(ms []deploy.Mount) []mount.Mount {
	var out []mount.Mount
	for _, m := range ms {
		out = append(out, mount.Mount{
			Type: mount.TypeVolume, Source: m.Source, Target: m.Target, ReadOnly: m.ReadOnly,
			VolumeOptions: &mount.VolumeOptions{NoCopy: m.NoCopy, Subpath: m.Subpath},
		})
	}
	return out
}

// subpathAPI is the first Engine API that mounts a part of a volume; an
// older engine ignores the field and mounts the whole volume.
const subpathAPI = "1.45"

// mountsSupported refuses a mount the engine would not apply as asked: a
// volume's subpath on an engine before API 1.45 would expose the whole
// volume (every tenant's data, where subpaths separate tenants).
func mountsSupported(svc deploy.Service, apiVersion string) error {
	for _, m := range svc.Mounts {
		if m.Subpath != "" && !apiAtLeast(apiVersion, subpathAPI) {
			return fmt.Errorf("%w: %s mounts %s of volume %s at %s, and this Docker engine (API %s) cannot mount part of a volume (API %s, Docker 26, can): it would mount the whole volume; upgrade Docker, or mount the volume without subpath", deploy.ErrConfig, svc.Name, m.Subpath, m.Source, m.Target, apiVersion, subpathAPI)
		}
	}
	return nil
}

// apiAtLeast compares Engine API versions ("1.41" < "1.45" < "1.100").
func apiAtLeast(v, want string) bool {
	vMajor, vMinor, _ := strings.Cut(v, ".")
	wMajor, wMinor, _ := strings.Cut(want, ".")
	a, _ := strconv.Atoi(vMajor)
	b, _ := strconv.Atoi(wMajor)
	if a != b {
		return a > b
	}
	c, _ := strconv.Atoi(vMinor)
	d, _ := strconv.Atoi(wMinor)
	return c >= d
}

// healthConfig is the Docker HEALTHCHECK of a service's check; nil keeps the image's.
func healthConfig(c *deploy.DockerCheck) *container.HealthConfig {
	if c == nil {
		return nil
	}
	return &container.HealthConfig{Test: c.Test, Interval: c.Interval, Timeout: c.Timeout, StartPeriod: c.StartPeriod, StartInterval: c.StartInterval, Retries: c.Retries}
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

func shortID(id string) string {
	id = strings.TrimPrefix(id, "sha256:")
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
