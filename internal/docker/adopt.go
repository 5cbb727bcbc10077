package docker

import (
	"cmp"
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/moby/moby/client"

	"github.com/handoff-dev/handoff/internal/deploy"
)

// Serving finds the running container that upstream reaches, for adopting
// the container a user started by hand (or compose started): one that
// publishes the upstream's address on the host, or, for an upstream by
// name, the container of that name or network alias.
func (r *Runtime) Serving(ctx context.Context, upstream string) (*deploy.Container, error) {
	host, portStr, err := net.SplitHostPort(upstream)
	if err != nil {
		return nil, nil // a unix socket: not a container's
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, nil
	}
	// Every spelling of this host's own address (:P, 0.0.0.0:P, [::]:P,
	// localhost:P, 127.0.0.1:P, [::1]:P) is one, as for the rest of handoff.
	if !deploy.SameUpstream(upstream, net.JoinHostPort("127.0.0.1", portStr)) {
		if _, err := netip.ParseAddr(host); err != nil {
			return r.named(ctx, host, port, upstream)
		}
		return nil, nil // only loopback upstreams are containers on this host
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
			c.Adopted = c.Service == ""
			c.Port = int(p.PrivatePort)
			c.Upstream = upstream
			return &c, nil
		}
	}
	return nil, nil
}

// named finds the running container a proxy in a container reaches as
// name:port: the container called name, or one with name as a network alias.
func (r *Runtime) named(ctx context.Context, name string, port int, upstream string) (*deploy.Container, error) {
	list, err := r.api.ContainerList(ctx, client.ContainerListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	for _, s := range list.Items {
		res, err := r.api.ContainerInspect(ctx, s.ID, client.ContainerInspectOptions{})
		if err != nil {
			continue // gone meanwhile
		}
		in := res.Container
		match := strings.TrimPrefix(in.Name, "/") == name
		if in.NetworkSettings != nil {
			for _, ep := range in.NetworkSettings.Networks {
				match = match || ep != nil && slices.Contains(ep.Aliases, name)
			}
		}
		if !match {
			continue
		}
		c := fromInspect(in)
		c.Adopted = c.Service == ""
		c.Port, c.Upstream = port, upstream
		if ip := firstIP(in); ip != "" {
			c.Probe = net.JoinHostPort(ip, strconv.Itoa(port))
		}
		return &c, nil
	}
	return nil, nil
}

// Find lists the running containers that carry every label given and that
// handoff did not start (a compose service's), for adoption: all of them,
// as one release, in compose's order of container numbers (web-1, web-2,
// web-10; then by name for containers without one).
func (r *Runtime) Find(ctx context.Context, labels map[string]string) ([]deploy.Container, error) {
	f := make(client.Filters)
	for k, v := range labels {
		f = f.Add("label", k+"="+v)
	}
	list, err := r.api.ContainerList(ctx, client.ContainerListOptions{Filters: f})
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	type numbered struct {
		deploy.Container
		number int
	}
	var found []numbered
	for _, s := range list.Items {
		if s.Labels[LabelService] != "" {
			continue
		}
		c, err := r.Inspect(ctx, s.ID)
		if err != nil {
			continue
		}
		c.Adopted = true
		n, _ := strconv.Atoi(s.Labels[composeNumber])
		found = append(found, numbered{c, n})
	}
	slices.SortFunc(found, func(a, b numbered) int {
		return cmp.Or(cmp.Compare(a.number, b.number), strings.Compare(a.Name, b.Name))
	})
	out := make([]deploy.Container, len(found))
	for i, c := range found {
		out[i] = c.Container
	}
	return out, nil
}

// composeNumber is the label docker compose numbers a service's containers
// by (web-1, web-2), and orders them by.
const composeNumber = "com.docker.compose.container-number"

// reaches says whether a port bound on ip answers a dial to host, a local
// address: bound on that very address, or on every address. A host that
// names no one address ("localhost", "", 0.0.0.0, ::) is this host, on
// any loopback address.
func reaches(ip netip.Addr, host string) bool {
	if !ip.IsValid() || ip.IsUnspecified() {
		return true
	}
	want, err := netip.ParseAddr(host)
	if err != nil || want.IsUnspecified() {
		return ip.IsLoopback()
	}
	return ip.Unmap() == want.Unmap()
}

// Description is what `handoff init` writes down about a running container.
type Description struct {
	Name     string
	Image    string
	Port     int
	Env      []string // names only: values may be secrets
	Binds    []string
	Restart  string
	Networks []string
}

// Describe reads what a handoff.yml for container id would say.
func (r *Runtime) Describe(ctx context.Context, id string, port int) (Description, error) {
	res, err := r.api.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
	if err != nil {
		return Description{}, err
	}
	in := res.Container
	d := Description{Name: strings.TrimPrefix(in.Name, "/"), Port: port}
	if in.Config != nil {
		d.Image = in.Config.Image
		for _, kv := range in.Config.Env {
			name, _, _ := strings.Cut(kv, "=")
			if name != "PATH" {
				d.Env = append(d.Env, name)
			}
		}
	}
	if in.HostConfig != nil {
		d.Binds = in.HostConfig.Binds
		d.Restart = string(in.HostConfig.RestartPolicy.Name)
		if n := in.HostConfig.RestartPolicy.MaximumRetryCount; n > 0 {
			d.Restart += ":" + strconv.Itoa(n) // on-failure:N, as restartPolicy takes it
		}
		if m := string(in.HostConfig.NetworkMode); m != "" && m != "default" && m != "bridge" {
			d.Networks = append(d.Networks, m)
		}
	}
	return d, nil
}
