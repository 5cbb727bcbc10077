package swarm

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
)

// What `handoff swarm setup` makes, once per swarm: the overlay network the colour
// services and the proxies share, and handoff proxy as a global service on it.
const (
	// ProxyService is the global service of handoff proxy, one task per node.
	ProxyService = "handoff-proxy"
	// ProxyRunVolume is the node-local volume that holds each proxy's 0600 control
	// socket: a one-off job on that node mounts it to switch the proxy.
	ProxyRunVolume = "handoff-proxy-run"
	// ProxyStateVolume keeps each proxy's routes across its restarts.
	ProxyStateVolume = "handoff-proxy-state"
	// ProxySocket is the control socket inside the proxy's container (and a job's).
	ProxySocket = "/run/handoff/proxy.sock"
	// DefaultProxyPort is where each node's proxy serves the app, published on the node.
	DefaultProxyPort = 9001
	// LabelProxy marks the proxy service handoff made.
	LabelProxy = "handoff.proxy"
	// LabelNetwork marks the overlay handoff made.
	LabelNetwork = "handoff.network"
)

// SetupAPI is what setup needs of a swarm manager; *client.Client has it.
type SetupAPI interface {
	Info(ctx context.Context, opts client.InfoOptions) (client.SystemInfoResult, error)
	NetworkInspect(ctx context.Context, id string, opts client.NetworkInspectOptions) (client.NetworkInspectResult, error)
	NetworkCreate(ctx context.Context, name string, opts client.NetworkCreateOptions) (client.NetworkCreateResult, error)
	ServiceInspect(ctx context.Context, id string, opts client.ServiceInspectOptions) (client.ServiceInspectResult, error)
	ServiceCreate(ctx context.Context, opts client.ServiceCreateOptions) (client.ServiceCreateResult, error)
	ServiceUpdate(ctx context.Context, id string, opts client.ServiceUpdateOptions) (client.ServiceUpdateResult, error)
	NodeList(ctx context.Context, opts client.NodeListOptions) (client.NodeListResult, error)
	TaskList(ctx context.Context, opts client.TaskListOptions) (client.TaskListResult, error)
}

// SetupOptions say what to set up.
type SetupOptions struct {
	// ProxyImage holds a static handoff at /handoff (deploy/Dockerfile.proxy builds one);
	// every node pulls it, so it must be in a registry they reach.
	ProxyImage string
	Network    string // DefaultNetwork when ""
	Subnet     string // the overlay's subnet when it is created; Swarm picks one when ""
	// Ports the proxies serve on, each published in host mode on every node (the front
	// balancer points at every node's port once). DefaultProxyPort when empty. Adding
	// one later changes the proxies' task template: each proxy restarts.
	Ports []int
	// Trusted are the front balancers whose X-Forwarded-* headers the proxies keep.
	Trusted []string
	// Update lets setup change a proxy service that exists with another spec; each
	// node's proxy is replaced, stop-first (host ports), so the front should stop
	// sending to a node while its proxy restarts.
	Update bool
	// Auth is the registry credentials (X-Registry-Auth) every node pulls the image with.
	Auth string
	// Wait bounds the wait for one running proxy on every ready node; 2 minutes when 0.
	Wait time.Duration
	// Poll is how often the tasks are read while waiting; 500 ms when 0.
	Poll time.Duration
	// Now and After are the waits' clock; time.Now and time.After when nil.
	Now   func() time.Time
	After func(time.Duration) <-chan time.Time
}

// setupClock is the clock of setup's waits.
type setupClock struct {
	now   func() time.Time
	after func(time.Duration) <-chan time.Time
}

func (o SetupOptions) clock() setupClock {
	c := setupClock{now: o.Now, after: o.After}
	if c.now == nil {
		c.now = time.Now
	}
	if c.after == nil {
		c.after = time.After
	}
	return c
}

// SetupResult is what setup did and found.
type SetupResult struct {
	Network        string      `json:"network"`
	NetworkCreated bool        `json:"network_created"`
	Proxy          string      `json:"proxy"` // created, updated or unchanged
	Image          string      `json:"image"`
	Ports          []int       `json:"ports"`
	Nodes          []ProxyNode `json:"nodes"`
	// Warnings are what the client and the manager said of the write, one line each:
	// that the image could not be pinned by its digest, for one.
	Warnings []string `json:"warnings,omitempty"`
}

// ProxyNode is one node of the swarm and its proxy.
type ProxyNode struct {
	ID           string `json:"id"`
	Hostname     string `json:"hostname"`
	Role         string `json:"role"`
	State        string `json:"state"`        // ready, down, unknown, disconnected
	Availability string `json:"availability"` // active, pause, drain
	Proxy        string `json:"proxy"`        // the proxy task's state there: running, starting, rejected…; "" none
	Err          string `json:"error,omitempty"`
}

// eligible says the node is one a global service runs a task on now.
func (n ProxyNode) eligible() bool {
	return n.State == string(swarm.NodeStateReady) && n.Availability == string(swarm.NodeAvailabilityActive)
}

// Setup makes the overlay network and the proxy service if they are not there, and
// waits until every ready, active node runs its proxy. What exists as handoff made
// it is left as it is; what exists otherwise is refused, never changed.
func Setup(ctx context.Context, api SetupAPI, o SetupOptions) (SetupResult, error) {
	o.Network = cmp.Or(o.Network, DefaultNetwork)
	if len(o.Ports) == 0 {
		o.Ports = []int{DefaultProxyPort}
	}
	res := SetupResult{Network: o.Network, Image: o.ProxyImage, Ports: o.Ports}
	spec, err := ProxySpec(o)
	if err != nil {
		return res, err
	}
	if err := RequireManager(ctx, api); err != nil {
		return res, fmt.Errorf("swarm setup: %w", err)
	}
	if res.NetworkCreated, err = setupNetwork(ctx, api, o); err != nil {
		return res, err
	}
	var before *swarm.UpdateStatus
	if res.Proxy, res.Warnings, before, err = setupProxy(ctx, api, spec, o); err != nil {
		return res, err
	}
	wait, poll, clock := cmp.Or(o.Wait, 2*time.Minute), cmp.Or(o.Poll, 500*time.Millisecond), o.clock()
	if res.Proxy == "updated" {
		if res.Nodes, err = waitProxyUpdate(ctx, api, before, wait, poll, clock); err != nil {
			return res, err
		}
	}
	res.Nodes, err = waitProxies(ctx, api, wait, poll, clock)
	return res, err
}

// RequireManager fails unless api is a manager of a swarm: what every swarm command
// talks to.
func RequireManager(ctx context.Context, api interface {
	Info(context.Context, client.InfoOptions) (client.SystemInfoResult, error)
}) error {
	info, err := api.Info(ctx, client.InfoOptions{})
	if err != nil {
		return err
	}
	if !info.Info.Swarm.ControlAvailable {
		return fmt.Errorf("this engine is not a manager of a swarm (node state %q): point DOCKER_HOST or --host at a manager", cmp.Or(string(info.Info.Swarm.LocalNodeState), "inactive"))
	}
	return nil
}

// setupNetwork creates the overlay, or checks the one there is an overlay of the swarm.
func setupNetwork(ctx context.Context, api SetupAPI, o SetupOptions) (created bool, err error) {
	got, err := api.NetworkInspect(ctx, o.Network, client.NetworkInspectOptions{Scope: "swarm"})
	if err == nil {
		if n := got.Network; n.Driver != "overlay" || n.Scope != "swarm" {
			return false, fmt.Errorf("swarm setup: network %s exists as a %s network of scope %s; handoff needs an overlay of the swarm: remove it, or give another name with --network", o.Network, n.Driver, n.Scope)
		}
		return false, nil
	}
	if !cerrdefs.IsNotFound(err) {
		return false, fmt.Errorf("swarm setup: network %s: %w", o.Network, err)
	}
	opts := client.NetworkCreateOptions{Driver: "overlay", Scope: "swarm", Attachable: true, Labels: map[string]string{LabelNetwork: "1"}}
	if o.Subnet != "" {
		subnet, err := netip.ParsePrefix(o.Subnet)
		if err != nil {
			return false, fmt.Errorf("swarm setup: subnet %q: write it as 10.240.0.0/20", o.Subnet)
		}
		opts.IPAM = &network.IPAM{Config: []network.IPAMConfig{{Subnet: subnet}}}
	}
	if _, err := api.NetworkCreate(ctx, o.Network, opts); err != nil {
		return false, fmt.Errorf("swarm setup: create the overlay network %s: %w", o.Network, err)
	}
	return true, nil
}

// setupProxy creates the proxy service, leaves it as it is when it already runs this
// spec, and changes it only when asked to. It returns what it did, the warnings of
// the write, and the service's update status as it was before an update.
func setupProxy(ctx context.Context, api SetupAPI, spec swarm.ServiceSpec, o SetupOptions) (string, []string, *swarm.UpdateStatus, error) {
	got, err := api.ServiceInspect(ctx, ProxyService, client.ServiceInspectOptions{})
	if cerrdefs.IsNotFound(err) {
		res, err := api.ServiceCreate(ctx, client.ServiceCreateOptions{Spec: spec, EncodedRegistryAuth: o.Auth, QueryRegistry: true})
		if err != nil {
			return "", nil, nil, fmt.Errorf("swarm setup: create the proxy service %s: %w", ProxyService, err)
		}
		return "created", oneLineEach(res.Warnings), nil, nil
	}
	if err != nil {
		return "", nil, nil, fmt.Errorf("swarm setup: proxy service %s: %w", ProxyService, err)
	}
	svc := got.Service
	if svc.Spec.Labels[LabelProxy] == "" {
		return "", nil, nil, fmt.Errorf("swarm setup: a service %s exists that handoff did not make (no %s label); remove or rename it", ProxyService, LabelProxy)
	}
	// Swarm keeps a service's networks by ID.
	overlay := spec.TaskTemplate.Networks[0].Target
	if n, err := api.NetworkInspect(ctx, overlay, client.NetworkInspectOptions{Scope: "swarm"}); err == nil {
		for i, t := range svc.Spec.TaskTemplate.Networks {
			if t.Target == n.Network.ID {
				svc.Spec.TaskTemplate.Networks[i].Target = overlay
			}
		}
	}
	diff := proxyDiff(svc.Spec, spec)
	if diff == "" {
		return "unchanged", nil, nil, nil
	}
	if !o.Update {
		return "", nil, nil, fmt.Errorf("swarm setup: %s runs %s; --update changes it (every node's proxy restarts, stop-first: take each node out of the front balancer while it does)", ProxyService, diff)
	}
	// Every change setup makes replaces each proxy; the counter one up marks the new
	// tasks, so the wait knows them from the old (task specs carry it).
	spec.TaskTemplate.ForceUpdate = svc.Spec.TaskTemplate.ForceUpdate + 1
	res, err := api.ServiceUpdate(ctx, svc.ID, client.ServiceUpdateOptions{Version: svc.Version, Spec: spec, EncodedRegistryAuth: o.Auth, QueryRegistry: true})
	if err != nil {
		return "", nil, nil, fmt.Errorf("swarm setup: update %s: %w", ProxyService, err)
	}
	return "updated", oneLineEach(res.Warnings), svc.UpdateStatus, nil
}

// oneLineEach is warnings, each on one line (the client's digest warning spans four).
func oneLineEach(warnings []string) []string {
	var out []string
	for _, w := range warnings {
		if w = strings.Join(strings.Fields(w), " "); w != "" {
			out = append(out, w)
		}
	}
	return out
}

// waitProxyUpdate waits until the update of the proxy service has replaced the proxy
// of every ready, active node: each runs a task of the new spec. An update Swarm paused
// or rolled back fails with what Swarm said; before is the update status read before
// the write, so that one left by an earlier update is not taken for this one's.
func waitProxyUpdate(ctx context.Context, api SetupAPI, before *swarm.UpdateStatus, wait, poll time.Duration, clock setupClock) ([]ProxyNode, error) {
	deadline := clock.now().Add(wait)
	for {
		nodes, behind, err := proxyUpdated(ctx, api, before)
		switch {
		case err != nil:
			return nodes, err
		case len(behind) == 0:
			return nodes, nil
		case !clock.now().Before(deadline):
			return nodes, fmt.Errorf("swarm setup: %s not updated after %s on %s; `docker service ps %s` shows its tasks", ProxyService, wait, strings.Join(behind, "; "), ProxyService)
		}
		select {
		case <-ctx.Done():
			return nodes, ctx.Err()
		case <-clock.after(poll):
		}
	}
}

// proxyUpdated reads the proxy service and its tasks: the nodes, and those whose proxy
// does not run the new spec yet ("the manager" while it cannot answer).
func proxyUpdated(ctx context.Context, api SetupAPI, before *swarm.UpdateStatus) ([]ProxyNode, []string, error) {
	got, err := api.ServiceInspect(ctx, ProxyService, client.ServiceInspectOptions{})
	if err != nil {
		if isTransient(err) {
			return nil, []string{"the manager (" + err.Error() + ")"}, nil
		}
		return nil, nil, fmt.Errorf("swarm setup: read %s: %w", ProxyService, err)
	}
	svc := got.Service
	if us := svc.UpdateStatus; newUpdateStatus(before, us) {
		switch us.State {
		case swarm.UpdateStateCompleted:
			return nil, nil, nil
		case swarm.UpdateStatePaused, swarm.UpdateStateRollbackStarted, swarm.UpdateStateRollbackPaused, swarm.UpdateStateRollbackCompleted:
			return nil, nil, fmt.Errorf("swarm setup: the update of %s is %s: %s; `docker service ps %s` shows why, then run setup --update again", ProxyService, us.State, cmp.Or(strings.Join(strings.Fields(us.Message), " "), "Swarm gave no reason"), ProxyService)
		}
	}
	nodes, err := api.NodeList(ctx, client.NodeListOptions{})
	if err == nil {
		var tasks client.TaskListResult
		if tasks, err = api.TaskList(ctx, client.TaskListOptions{Filters: make(client.Filters).Add("service", ProxyService)}); err == nil {
			want := svc.Spec.TaskTemplate.ForceUpdate
			var current []swarm.Task
			for _, t := range tasks.Items {
				if t.Spec.ForceUpdate == want {
					current = append(current, t)
				}
			}
			pn := proxyNodes(nodes.Items, current)
			var behind []string
			for _, n := range pn {
				if n.eligible() && n.Proxy != string(swarm.TaskStateRunning) {
					behind = append(behind, n.describeMissing())
				}
			}
			return pn, behind, nil
		}
	}
	if isTransient(err) {
		return nil, []string{"the manager (" + err.Error() + ")"}, nil
	}
	return nil, nil, fmt.Errorf("swarm setup: list the nodes and tasks of %s: %w", ProxyService, err)
}

// newUpdateStatus says now is the status of an update begun after before was read.
func newUpdateStatus(before, now *swarm.UpdateStatus) bool {
	switch {
	case now == nil:
		return false
	case before == nil:
		return true
	}
	return now.StartedAt != nil && (before.StartedAt == nil || !now.StartedAt.Equal(*before.StartedAt))
}

// proxyDiff says how the proxy service's spec differs from want in what setup sets:
// "" when it does not. An image pinned by digest at creation is the same image.
func proxyDiff(have, want swarm.ServiceSpec) string {
	var diffs []string
	hc, wc := have.TaskTemplate.ContainerSpec, want.TaskTemplate.ContainerSpec
	if hc == nil {
		return "no container spec"
	}
	if img := hc.Image; !sameProxyImage(img, wc.Image) {
		diffs = append(diffs, fmt.Sprintf("image %s, not %s", img, wc.Image))
	}
	if !slices.Equal(hc.Command, wc.Command) {
		diffs = append(diffs, fmt.Sprintf("command %q, not %q", hc.Command, wc.Command))
	}
	if hp, wp := publishedPorts(have), publishedPorts(want); !slices.Equal(hp, wp) {
		diffs = append(diffs, fmt.Sprintf("ports %v, not %v", hp, wp))
	}
	if hn, wn := networkTargets(have), networkTargets(want); !slices.Equal(hn, wn) {
		diffs = append(diffs, fmt.Sprintf("networks %v, not %v", hn, wn))
	}
	if have.Mode.Global == nil {
		diffs = append(diffs, "not in global mode")
	}
	return strings.Join(diffs, ", ")
}

// sameProxyImage says the image a service runs is the one asked for. The client
// rewrites an image as it writes it (a tag added, docker.io/ and library/ dropped) and
// Swarm pins it by digest: both are compared normalised, by name and tag (latest when
// none), and by digest only when one was asked for.
func sameProxyImage(have, want string) bool {
	h, herr := reference.ParseNormalizedNamed(have)
	w, werr := reference.ParseNormalizedNamed(want)
	if herr != nil || werr != nil {
		return have == want || strings.HasPrefix(have, want+"@")
	}
	if h.Name() != w.Name() {
		return false
	}
	if wd, ok := w.(reference.Digested); ok {
		hd, ok := h.(reference.Digested)
		return ok && hd.Digest() == wd.Digest()
	}
	return tagOf(h) == tagOf(w)
}

// tagOf is the tag of ref, latest when it has none.
func tagOf(ref reference.Named) string {
	if t, ok := ref.(reference.Tagged); ok {
		return t.Tag()
	}
	return "latest"
}

func publishedPorts(s swarm.ServiceSpec) []string {
	var out []string
	if s.EndpointSpec != nil {
		for _, p := range s.EndpointSpec.Ports {
			out = append(out, fmt.Sprintf("%d:%d/%s(%s)", p.PublishedPort, p.TargetPort, p.Protocol, p.PublishMode))
		}
	}
	sort.Strings(out)
	return out
}

func networkTargets(s swarm.ServiceSpec) []string {
	var out []string
	for _, n := range s.TaskTemplate.Networks {
		out = append(out, n.Target)
	}
	sort.Strings(out)
	return out
}

// ProxySpec is the global service of handoff proxy: one task per node, on the overlay
// (only a node with a task on it resolves the colours' names), serving o.Ports
// published in host mode on its node (the routing mesh needs IPVS, and would add a
// hop), dnsrr (no VIP), its control socket and state on node-local volumes.
func ProxySpec(o SetupOptions) (swarm.ServiceSpec, error) {
	if o.ProxyImage == "" {
		return swarm.ServiceSpec{}, errors.New("swarm setup: no proxy image: give --proxy-image, an image with a static handoff at /handoff in a registry every node reaches (deploy/Dockerfile.proxy)")
	}
	overlay := cmp.Or(o.Network, DefaultNetwork)
	ports := o.Ports
	if len(ports) == 0 {
		ports = []int{DefaultProxyPort}
	}
	var published []swarm.PortConfig
	seen := map[int]bool{}
	for _, p := range ports {
		if p < 1 || p > 65535 || seen[p] {
			return swarm.ServiceSpec{}, fmt.Errorf("swarm setup: port %d: give each port once, from 1 to 65535", p)
		}
		seen[p] = true
		published = append(published, swarm.PortConfig{Protocol: network.TCP, TargetPort: uint32(p), PublishedPort: uint32(p), PublishMode: swarm.PortConfigPublishModeHost})
	}
	command := []string{"/handoff", "proxy", "--socket", ProxySocket, "--state-file", "/var/lib/handoff/proxy.json"}
	if len(o.Trusted) > 0 {
		command = append(command, "--trusted-proxies", strings.Join(o.Trusted, ","))
	}
	delay := time.Second
	labels := map[string]string{LabelProxy: "1"}
	return swarm.ServiceSpec{
		Annotations: swarm.Annotations{Name: ProxyService, Labels: labels},
		TaskTemplate: swarm.TaskSpec{
			ContainerSpec: &swarm.ContainerSpec{
				Image:   o.ProxyImage,
				Command: command,
				Labels:  maps.Clone(labels),
				Mounts: []mount.Mount{
					{Type: mount.TypeVolume, Source: ProxyRunVolume, Target: "/run/handoff"},
					{Type: mount.TypeVolume, Source: ProxyStateVolume, Target: "/var/lib/handoff"},
				},
			},
			RestartPolicy: &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionAny, Delay: &delay},
			Networks:      []swarm.NetworkAttachmentConfig{{Target: overlay}},
		},
		Mode: swarm.ServiceMode{Global: &swarm.GlobalService{}},
		// Host ports cannot be held by two tasks on one node: a new proxy starts after
		// the old one stopped, one node at a time.
		UpdateConfig: &swarm.UpdateConfig{Parallelism: 1, Order: swarm.UpdateOrderStopFirst, FailureAction: swarm.UpdateFailureActionPause},
		EndpointSpec: &swarm.EndpointSpec{Mode: swarm.ResolutionModeDNSRR, Ports: published},
	}, nil
}

// WaitProxies waits until every ready, active node runs a proxy task, and returns
// every node with its proxy's state. After wait it fails naming the nodes without one
// and what their tasks said.
// A manager that cannot answer (no leader) is asked again until then.
func WaitProxies(ctx context.Context, api SetupAPI, wait, poll time.Duration) ([]ProxyNode, error) {
	return waitProxies(ctx, api, wait, poll, SetupOptions{}.clock())
}

func waitProxies(ctx context.Context, api SetupAPI, wait, poll time.Duration, clock setupClock) ([]ProxyNode, error) {
	deadline := clock.now().Add(wait)
	for {
		nodes, err := ProxyNodes(ctx, api)
		var missing []string
		switch {
		case err != nil && !isTransient(err):
			return nodes, err
		case err != nil:
			missing = []string{"the manager (" + err.Error() + ")"}
		}
		for _, n := range nodes {
			if n.eligible() && n.Proxy != string(swarm.TaskStateRunning) {
				missing = append(missing, n.describeMissing())
			}
		}
		if len(missing) == 0 {
			return nodes, nil
		}
		if clock.now().After(deadline) {
			return nodes, fmt.Errorf("swarm setup: no running proxy after %s on %s; `docker service ps %s` shows its tasks", wait, strings.Join(missing, "; "), ProxyService)
		}
		select {
		case <-ctx.Done():
			return nodes, ctx.Err()
		case <-clock.after(poll):
		}
	}
}

func (n ProxyNode) describeMissing() string {
	s := n.Hostname + " (" + cmp.Or(n.Proxy, "no task") + ")"
	if n.Err != "" {
		s = n.Hostname + " (" + cmp.Or(n.Proxy, "no task") + ": " + n.Err + ")"
	}
	return s
}

// ProxyNodes lists the swarm's nodes, by hostname, each with the state of its newest
// proxy task.
func ProxyNodes(ctx context.Context, api TaskAPI) ([]ProxyNode, error) {
	nodes, err := api.NodeList(ctx, client.NodeListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list the swarm's nodes: %w", err)
	}
	tasks, err := api.TaskList(ctx, client.TaskListOptions{Filters: make(client.Filters).Add("service", ProxyService)})
	if err != nil {
		return nil, fmt.Errorf("list the tasks of %s: %w", ProxyService, err)
	}
	return proxyNodes(nodes.Items, tasks.Items), nil
}

// proxyNodes puts each node with its newest proxy task: the one meant to run
// (desired running) first, else the last that ended.
func proxyNodes(nodes []swarm.Node, tasks []swarm.Task) []ProxyNode {
	newest := map[string]swarm.Task{}
	for _, t := range tasks {
		cur, ok := newest[t.NodeID]
		meant, curMeant := t.DesiredState == swarm.TaskStateRunning, cur.DesiredState == swarm.TaskStateRunning
		if !ok || meant && !curMeant || meant == curMeant && t.Meta.CreatedAt.After(cur.Meta.CreatedAt) {
			newest[t.NodeID] = t
		}
	}
	out := make([]ProxyNode, 0, len(nodes))
	for _, n := range nodes {
		pn := ProxyNode{ID: n.ID, Hostname: cmp.Or(n.Description.Hostname, n.ID), Role: string(n.Spec.Role), State: string(n.Status.State), Availability: string(n.Spec.Availability)}
		if t, ok := newest[n.ID]; ok {
			pn.Proxy, pn.Err = string(t.Status.State), t.Status.Err
		}
		out = append(out, pn)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Hostname < out[j].Hostname })
	return out
}
