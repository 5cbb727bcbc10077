package testhost

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
)

// A test swarm is Docker Swarm across test servers: each server's engine a node, joined
// over the test's switch by the servers' own addresses, the way three machines on one LAN
// would be; the registry on the host's address there is where the nodes pull from. Nothing
// of it is on the host but that registry: the swarm's raft, gossip (7946) and VXLAN
// (4789) run inside the servers' namespaces, each with a port of its own.
//
// Two things differ from Swarm's defaults, both found on this machine (see
// /work/shared/notes/swarm.md §4): the ingress network is removed, since its routing
// mesh needs IPVS and this kernel has none (services publish in host mode, or are reached
// over the overlay); and the dispatcher's heartbeat is 2 s, not 5 s, so a dead node is
// marked down in about 6 s (three heartbeats) instead of 15, which keeps failure tests
// short.

// SwarmOptions say how a test's swarm differs from the default one.
type SwarmOptions struct {
	// Managers is how many nodes, from node 1, are managers; the others join as workers.
	// 0: 3 when there are 3 nodes or more (one manager can be lost, frozen or cut, and the
	// other two still make a majority, which leader-loss tests need), else 1.
	Managers int
	// Server is how each node differs from a default test server.
	Server ServerOptions
}

// The swarm's settings, fixed: the namespaces make each swarm's addresses its own, so
// parallel swarms never clash.
const (
	// SwarmNetwork is the attachable overlay network every swarm has, for services in
	// dnsrr mode (Swarm's VIPs need IPVS); SwarmSubnet its addresses.
	SwarmNetwork = "handoff"
	SwarmSubnet  = "10.240.0.0/20"
	// SwarmAddrPool is where Swarm takes other overlays' subnets from.
	SwarmAddrPool = "10.20.0.0/16"
	// SwarmHeartbeat is the dispatcher's heartbeat period; a node that misses three is down.
	SwarmHeartbeat = 2 * time.Second
	// SwarmPort is the managers' raft and API port.
	SwarmPort = 2377
)

// Swarm is a test swarm. StartSwarm makes it; it is gone when the test ends.
type Swarm struct {
	// Nodes are its servers, node 1 first; Nodes[:Managers] are managers.
	Nodes    []*Server
	Managers int
	// Registry listens on the host's address of the swarm's switch; every node may pull
	// from it over plain HTTP.
	Registry *Registry
	// ReadyIn is how long StartSwarm took, from nothing to every node ready; StoppedIn
	// how long its cleanup took to stop the engines.
	ReadyIn, StoppedIn time.Duration
}

// StartSwarm starts n test servers and a registry, makes node 1's engine a swarm's first
// manager, joins the others, removes the ingress network, creates SwarmNetwork, and waits
// until every node is ready. Everything is removed when t ends, also when a step fails.
func StartSwarm(t testing.TB, n int, opts SwarmOptions) *Swarm {
	t.Helper()
	start := time.Now()
	managers, err := managerCount(n, opts.Managers)
	if err != nil {
		t.Fatalf("test swarm: %v", err)
	}
	if opts.Server.NoDocker {
		t.Fatal("test swarm: its nodes need Docker (ServerOptions.NoDocker set)")
	}
	sw := &Swarm{Nodes: StartServers(t, n, opts.Server), Managers: managers}
	sw.Registry = StartRegistry(t, sw.Nodes[0].Net)
	// Before the servers' own cleanups, which would stop the engines one by one.
	t.Cleanup(sw.stop)
	if err := sw.form(); err != nil {
		t.Fatalf("test swarm: %v", err)
	}
	sw.ReadyIn = time.Since(start)
	return sw
}

// managerCount is how many of n nodes are managers when asked is (0: the default).
func managerCount(n, asked int) (int, error) {
	switch {
	case asked == 0 && n >= 3:
		return 3, nil
	case asked == 0:
		// Two managers are worse than one: losing either loses the majority.
		return 1, nil
	case asked < 1 || asked > n:
		return 0, fmt.Errorf("%d managers asked of %d nodes", asked, n)
	}
	return asked, nil
}

// form makes the swarm of the started servers.
func (sw *Swarm) form() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	first := sw.Nodes[0]
	_, err := first.Docker().SwarmInit(ctx, client.SwarmInitOptions{
		ListenAddr: first.Addr(SwarmPort), AdvertiseAddr: first.Addr(SwarmPort), DataPathAddr: first.IP,
		DefaultAddrPool: []netip.Prefix{netip.MustParsePrefix(SwarmAddrPool)}, SubnetSize: 24,
		Spec: swarm.Spec{Dispatcher: swarm.DispatcherConfig{HeartbeatPeriod: SwarmHeartbeat}},
	})
	if err != nil {
		return fmt.Errorf("node 1: swarm init: %w", err)
	}
	info, err := first.Docker().SwarmInspect(ctx, client.SwarmInspectOptions{})
	if err != nil {
		return fmt.Errorf("node 1: swarm inspect: %w", err)
	}
	// One at a time: raft adds one member at a time, and a join answers once it is in.
	for i, s := range sw.Nodes[1:] {
		token := info.Swarm.JoinTokens.Worker
		if i+1 < sw.Managers {
			token = info.Swarm.JoinTokens.Manager
		}
		if _, err := s.Docker().SwarmJoin(ctx, client.SwarmJoinOptions{ListenAddr: s.Addr(SwarmPort), AdvertiseAddr: s.Addr(SwarmPort),
			DataPathAddr: s.IP, RemoteAddrs: []string{first.Addr(SwarmPort)}, JoinToken: token}); err != nil {
			return fmt.Errorf("node %d: swarm join: %w", s.Index, err)
		}
	}
	if err := retry(ctx, func() error {
		_, err := first.Docker().NetworkRemove(ctx, "ingress", client.NetworkRemoveOptions{})
		return err
	}); err != nil {
		return fmt.Errorf("node 1: remove the ingress network: %w", err)
	}
	if _, err := first.Docker().NetworkCreate(ctx, SwarmNetwork, client.NetworkCreateOptions{Driver: "overlay", Attachable: true,
		IPAM: &network.IPAM{Config: []network.IPAMConfig{{Subnet: netip.MustParsePrefix(SwarmSubnet)}}}}); err != nil {
		return fmt.Errorf("node 1: create the overlay network %s: %w", SwarmNetwork, err)
	}
	return retry(ctx, func() error {
		nodes, err := first.Docker().NodeList(ctx, client.NodeListOptions{})
		if err != nil {
			return err
		}
		var notReady []string
		for _, node := range nodes.Items {
			if node.Status.State != swarm.NodeStateReady || node.ManagerStatus != nil && node.ManagerStatus.Reachability != swarm.ReachabilityReachable {
				notReady = append(notReady, node.Description.Hostname+" "+string(node.Status.State))
			}
		}
		if len(notReady) > 0 || len(nodes.Items) != len(sw.Nodes) {
			return fmt.Errorf("%d of %d nodes in the swarm, not ready: %s", len(nodes.Items), len(sw.Nodes), strings.Join(notReady, ", "))
		}
		return nil
	})
}

// retry calls f every 100ms until it succeeds or ctx ends, and returns its last error.
func retry(ctx context.Context, f func() error) error {
	for {
		err := f()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// managerTimeout is how long Manager waits for a manager with a leader: longer than an
// election (10 ticks of 1 s).
const managerTimeout = 30 * time.Second

// Manager is a client of the engine of a manager that is neither frozen nor cut and whose
// swarm has a leader (it lists the nodes), waiting up to 30 s for one, as through an
// election after the leader is lost. Right after a loss, a call of a manager that had
// just answered may still hang on the old leader: give calls a deadline, and retry.
func (sw *Swarm) Manager(t testing.TB) *client.Client {
	t.Helper()
	_, s, err := sw.nodeList(managerTimeout)
	if err != nil {
		t.Fatalf("test swarm: %v", err)
	}
	return s.Docker()
}

// nodeList lists the nodes through the first manager, neither frozen nor cut, that
// answers within 3 s, trying each in turn until timeout; it returns the nodes and that
// manager.
func (sw *Swarm) nodeList(timeout time.Duration) ([]swarm.Node, *Server, error) {
	deadline := time.Now().Add(timeout)
	for {
		var errs []error
		for _, s := range sw.Nodes[:sw.Managers] {
			if s.Frozen() || s.IsCut() {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			list, err := s.Docker().NodeList(ctx, client.NodeListOptions{})
			cancel()
			if err == nil {
				return list.Items, s, nil
			}
			errs = append(errs, fmt.Errorf("node %d: %w", s.Index, err))
		}
		if time.Now().After(deadline) {
			return nil, nil, fmt.Errorf("no manager of the swarm answers with a leader within %s: %w", timeout, errors.Join(errs...))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// NodeStates are the swarm's nodes as a manager sees them now, by the server whose
// address each has.
func (sw *Swarm) NodeStates(t testing.TB) map[*Server]swarm.Node {
	t.Helper()
	list, _, err := sw.nodeList(managerTimeout)
	if err != nil {
		t.Fatalf("test swarm: %v", err)
	}
	nodes := map[*Server]swarm.Node{}
	for _, node := range list {
		for _, s := range sw.Nodes {
			if node.Status.Addr == s.IP {
				nodes[s] = node
			}
		}
	}
	return nodes
}

// Leader is the server whose node leads the swarm now.
func (sw *Swarm) Leader(t testing.TB) *Server {
	t.Helper()
	for s, node := range sw.NodeStates(t) {
		if node.ManagerStatus != nil && node.ManagerStatus.Leader {
			return s
		}
	}
	t.Fatal("test swarm: no node is the leader")
	return nil
}

// WaitNodeState waits until the swarm's managers see s's node in state ("down",
// "ready") and returns how long that took; t fails after timeout.
func (sw *Swarm) WaitNodeState(t testing.TB, s *Server, state swarm.NodeState, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		node, ok := sw.NodeStates(t)[s]
		if ok && node.Status.State == state {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("test swarm: node %d still %s after %s, not %s", s.Index, node.Status.State, timeout, state)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stop removes the swarm's services, so no task is rescheduled while engines stop, and
// stops every engine at once: one by one, each manager's shutdown would wait on a raft
// that loses its majority. The servers' own cleanups remove the rest.
func (sw *Swarm) stop() {
	start := time.Now()
	if _, s, err := sw.nodeList(0); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if list, err := s.Docker().ServiceList(ctx, client.ServiceListOptions{}); err == nil {
			for _, svc := range list.Items {
				s.Docker().ServiceRemove(ctx, svc.ID, client.ServiceRemoveOptions{})
			}
		}
		cancel()
	}
	var wg sync.WaitGroup
	for _, s := range sw.Nodes {
		if s.Dockerd != nil {
			wg.Go(s.Dockerd.stop)
		}
	}
	wg.Wait()
	sw.StoppedIn = time.Since(start)
}

// SwarmRun is the environment variable that lets a test start a swarm: three engines
// are more than a machine of two cores runs beside the other integration tests'
// load, so such tests run apart, after them (scripts/test.sh, make test-swarm).
const SwarmRun = "HANDOFF_TEST_SWARM"

// RequireSwarmRun skips t unless SwarmRun is 1.
func RequireSwarmRun(t testing.TB) {
	t.Helper()
	if os.Getenv(SwarmRun) != "1" {
		t.Skipf("starts a swarm of test servers: run apart, with %s=1 (scripts/test.sh and make test-swarm do)", SwarmRun)
	}
}
