package testhost

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/image"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
	"github.com/stretchr/testify/require"
)

// A test swarm is three nodes that are hosts of their own, joined over the test's switch:
// all ready; an image built on node 1 and pushed to the registry on the host's address is
// pulled by the others; a service of three healthy tasks, one a node, in dnsrr mode on the
// overlay, which a container on node 1 finds at tasks.<service> and reaches on every node,
// and which answers on each node's address in host mode; a frozen node, and a cut one, is
// marked down within 15 s and ready again when thawed or restored; the leader frozen,
// another manager is elected. When the test ends nothing of it is left.
func TestSwarmOfThreeNodes(t *testing.T) {
	RequireSwarmRun(t)
	requireServerTools(t, true)
	before := hostState(t)
	sysctls := hostSysctls()
	var sw *Swarm
	t.Run("swarm", func(t *testing.T) {
		sw = StartSwarm(t, 3, SwarmOptions{})
		var rss []string
		for _, s := range sw.Nodes {
			rss = append(rss, fmt.Sprintf("%d MB", s.Dockerd.RSS()>>20))
		}
		t.Logf("a ready swarm of 3 managers in %s (engines answered in %s, %s, %s); dockerd+containerd RSS %s",
			sw.ReadyIn.Round(time.Millisecond), sw.Nodes[0].Dockerd.ReadyIn.Round(time.Millisecond),
			sw.Nodes[1].Dockerd.ReadyIn.Round(time.Millisecond), sw.Nodes[2].Dockerd.ReadyIn.Round(time.Millisecond), strings.Join(rss, ", "))
		nodes := sw.NodeStates(t)
		require.Len(t, nodes, 3, "every server is a node, found by its address")
		for s, node := range nodes {
			require.Equal(t, swarm.NodeStateReady, node.Status.State, "node %d", s.Index)
			require.NotNil(t, node.ManagerStatus, "node %d is a manager", s.Index)
			require.Equal(t, s.NS, node.Description.Hostname, "node %d has a hostname of its own", s.Index)
		}
		require.Equal(t, sw.Nodes[0], sw.Leader(t), "node 1 made the swarm and leads it")

		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		first := sw.Nodes[0]
		first.BuildTestImage(t, "hoff-testapp:swarm")
		ref := sw.Registry.Push(t, first, "hoff-testapp:swarm")
		require.Equal(t, first.Net.HostIP+":5000/hoff-testapp:swarm", ref)

		// Three replicas, at most one a node, healthy through the app's own check,
		// published in host mode on each node.
		replicas := uint64(3)
		created, err := sw.Manager(t).ServiceCreate(ctx, client.ServiceCreateOptions{Spec: swarm.ServiceSpec{
			Annotations: swarm.Annotations{Name: "web"},
			TaskTemplate: swarm.TaskSpec{
				ContainerSpec: &swarm.ContainerSpec{Image: ref, Env: []string{"RELEASE=swarm"},
					Healthcheck: &container.HealthConfig{Test: []string{"CMD", "/testapp", "check"}, Interval: time.Second, Timeout: 2 * time.Second, Retries: 3}},
				Placement: &swarm.Placement{MaxReplicas: 1},
				Networks:  []swarm.NetworkAttachmentConfig{{Target: SwarmNetwork}},
			},
			Mode: swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: &replicas}},
			EndpointSpec: &swarm.EndpointSpec{Mode: swarm.ResolutionModeDNSRR,
				Ports: []swarm.PortConfig{{Protocol: "tcp", TargetPort: 8000, PublishedPort: 8080, PublishMode: swarm.PortConfigPublishModeHost}}},
		}})
		require.NoError(t, err)
		start := time.Now()
		waitTasksRunning(t, sw, created.ID, 3, time.Minute)
		rss = rss[:0]
		for _, s := range sw.Nodes {
			rss = append(rss, fmt.Sprintf("%d MB", s.Dockerd.RSS()>>20))
		}
		t.Logf("3 tasks running healthy, one a node, %s after the service's create (nodes 2 and 3 pulled the image); dockerd+containerd+shim RSS %s",
			time.Since(start).Round(time.Millisecond), strings.Join(rss, ", "))
		for _, s := range sw.Nodes[1:] {
			images, err := s.Docker().ImageList(ctx, client.ImageListOptions{})
			require.NoError(t, err)
			require.True(t, slices.ContainsFunc(images.Items, func(i image.Summary) bool { return slices.Contains(i.RepoTags, ref) }),
				"node %d pulled %s from the registry", s.Index, ref)
		}

		// From node 1, over the overlay: tasks.web is the three tasks, and each answers.
		lines := runOnOverlay(t, first, "tasks.web", "8000", "3")
		require.Len(t, lines, 3, "tasks.web resolves to the 3 tasks: %q", lines)
		hosts := map[string]bool{}
		for _, line := range lines {
			f := strings.Fields(line)
			require.Len(t, f, 2, "task %s answers over the overlay: %q", f[0], line)
			require.True(t, strings.HasPrefix(f[0], "10.240."), "a task's address is on %s: %s", SwarmSubnet, f[0])
			hosts[f[1]] = true
		}
		require.Len(t, hosts, 3, "three containers answered: %q", lines)
		// From the host, each node's address in host mode: a task of that node.
		for _, s := range sw.Nodes {
			res, err := http.Get("http://" + s.Addr(8080) + "/")
			require.NoError(t, err, "node %d answers on :8080", s.Index)
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
			require.Equal(t, http.StatusOK, res.StatusCode)
			require.True(t, hosts[res.Header.Get("X-Host")], "node %d's task %s is one of tasks.web", s.Index, res.Header.Get("X-Host"))
		}

		// A dead node: frozen, the others mark it down; thawed, it is ready again and
		// runs its task again.
		dead := sw.Nodes[2]
		dead.Freeze(t)
		frozen := pidsIn(filepath.Join(freezerRoot, dead.cgroup))
		require.Contains(t, frozen, dead.Dockerd.cmd.Process.Pid, "its engine is frozen")
		require.Contains(t, frozen, dead.SSH.cmd.Process.Pid, "its sshd is frozen")
		c, err := (&http.Client{Timeout: time.Second}).Get("http://" + dead.Addr(8080) + "/")
		if err == nil {
			c.Body.Close()
		}
		require.Error(t, err, "a frozen node's task answers nothing")
		down := sw.WaitNodeState(t, dead, swarm.NodeStateDown, 15*time.Second)
		dead.Thaw(t)
		ready := sw.WaitNodeState(t, dead, swarm.NodeStateReady, 30*time.Second)
		start = time.Now()
		waitTasksRunning(t, sw, created.ID, 3, time.Minute)
		t.Logf("frozen node 3 marked down in %s (heartbeat %s); thawed, ready in %s, its task running again %s later",
			down.Round(time.Millisecond), SwarmHeartbeat, ready.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))

		// A partitioned node: cut from the switch, the others mark it down and a manager
		// still answers; restored, it is ready again.
		cut := sw.Nodes[1]
		cut.Cut(t)
		down = sw.WaitNodeState(t, cut, swarm.NodeStateDown, 15*time.Second)
		cut.Restore(t)
		ready = sw.WaitNodeState(t, cut, swarm.NodeStateReady, 30*time.Second)
		// Ready is the others' word; its own raft catches up after. The election below
		// needs its vote: once it answers as a manager with a leader, it has one (in CI,
		// freezing the leader at once left nodes 2 and 3 without one for 30 s).
		caughtUp := time.Now()
		require.Eventually(t, func() bool {
			lctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := cut.Docker().NodeList(lctx, client.NodeListOptions{})
			return err == nil
		}, time.Minute, 200*time.Millisecond, "restored node 2 answers as a manager")
		t.Logf("cut node 2 marked down in %s; restored, ready in %s, answering as a manager %s later", down.Round(time.Millisecond), ready.Round(time.Millisecond), time.Since(caughtUp).Round(time.Millisecond))

		// The leader lost: another manager is elected and answers; the old leader, thawed,
		// is a manager of the swarm again.
		leader := sw.Leader(t)
		leader.Freeze(t)
		start = time.Now()
		next := sw.Leader(t)
		elected := time.Since(start)
		require.NotEqual(t, leader, next, "another manager leads")
		// A new leader's dispatcher gives every node a fresh grace (~12 s measured).
		down = sw.WaitNodeState(t, leader, swarm.NodeStateDown, 30*time.Second)
		leader.Thaw(t)
		ready = sw.WaitNodeState(t, leader, swarm.NodeStateReady, 30*time.Second)
		require.Equal(t, swarm.ReachabilityReachable, sw.NodeStates(t)[leader].ManagerStatus.Reachability)
		t.Logf("leader node %d frozen: node %d leads %s later, node %d down %s after the freeze; thawed, ready in %s",
			leader.Index, next.Index, elected.Round(time.Millisecond), leader.Index, (elected + down).Round(time.Millisecond), ready.Round(time.Millisecond))
	})
	if sw == nil || len(sw.Nodes) < 3 {
		t.Fatal("no swarm started")
	}
	t.Logf("the swarm's engines stopped together in %s", sw.StoppedIn.Round(time.Millisecond))
	net := sw.Nodes[0].Net
	requireHostAsBefore(t, before, tokens(net.id, net.Prefix+".")...)
	require.Equal(t, sysctls, hostSysctls(), "the host's sysctls are as before")
	for _, s := range sw.Nodes {
		d := s.Dockerd
		require.Empty(t, processes(func(pid int) bool { return strings.Contains(cmdline(pid), d.ExecRoot) }), "no dockerd, containerd or shim left")
		require.Empty(t, mountsUnder(d.DataRoot, d.ExecRoot), "no mount left")
		cgroups, _ := filepath.Glob("/sys/fs/cgroup/*" + s.cgroup)
		require.Empty(t, cgroups, "no cgroup left, the freezer's neither")
		for _, p := range []string{d.ExecRoot, d.Socket, d.DataRoot, netnsPath(s.NS)} {
			_, err := os.Stat(p)
			require.ErrorIs(t, err, os.ErrNotExist, "%s left", p)
		}
	}
	registryDir := filepath.Dir(sw.Registry.LogPath)
	require.Empty(t, processes(func(pid int) bool { return strings.Contains(cmdline(pid), registryDir) }), "no registry left")
}

// Three managers by default, so one can be lost; fewer nodes have one, since a second
// manager adds a way to lose the majority and none to keep it.
func TestSwarmManagerCount(t *testing.T) {
	for _, c := range []struct{ n, asked, want int }{
		{1, 0, 1}, {2, 0, 1}, {3, 0, 3}, {5, 0, 3}, {5, 5, 5}, {3, 1, 1}, {2, 2, 2},
	} {
		got, err := managerCount(c.n, c.asked)
		require.NoError(t, err)
		require.Equal(t, c.want, got, "%d nodes, %d managers asked", c.n, c.asked)
	}
	for _, c := range []struct{ n, asked int }{{3, 4}, {3, -1}} {
		_, err := managerCount(c.n, c.asked)
		require.EqualError(t, err, fmt.Sprintf("%d managers asked of %d nodes", c.asked, c.n))
	}
}

// waitTasksRunning waits until service id has want tasks running, each on another node.
func waitTasksRunning(t *testing.T, sw *Swarm, id string, want int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		tasks, err := sw.Manager(t).TaskList(ctx, client.TaskListOptions{Filters: make(client.Filters).Add("service", id).Add("desired-state", "running")})
		cancel()
		require.NoError(t, err)
		nodes := map[string]bool{}
		var states []string
		for _, task := range tasks.Items {
			if task.Status.State == swarm.TaskStateRunning {
				nodes[task.NodeID] = true
			}
			states = append(states, fmt.Sprintf("%s %s", task.Status.State, task.Status.Err))
		}
		if len(nodes) == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("service %s: %d of %d tasks running on nodes of their own after %s: %q", id, len(nodes), want, timeout, states)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// runOnOverlay runs testdata/resolve with args in a container on s attached to
// SwarmNetwork, and returns its output's lines.
func runOnOverlay(t *testing.T, s *Server, args ...string) []string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(dir, "resolve"), "./internal/testhost/testdata/resolve")
	cmd.Dir, cmd.Env = repoRoot(), append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "build testdata/resolve: %s", out)
	bin, err := os.ReadFile(filepath.Join(dir, "resolve"))
	require.NoError(t, err)
	s.BuildImage(t, "hoff-resolve:1", "FROM scratch\nCOPY resolve /resolve\nENTRYPOINT [\"/resolve\"]\n", map[string][]byte{"resolve": bin})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	created, err := s.Docker().ContainerCreate(ctx, client.ContainerCreateOptions{
		Config:     &container.Config{Image: "hoff-resolve:1", Cmd: args, Tty: true},
		HostConfig: &container.HostConfig{NetworkMode: SwarmNetwork},
	})
	require.NoError(t, err)
	wait := s.Docker().ContainerWait(ctx, created.ID, client.ContainerWaitOptions{Condition: container.WaitConditionNextExit})
	_, err = s.Docker().ContainerStart(ctx, created.ID, client.ContainerStartOptions{})
	require.NoError(t, err)
	select {
	case res := <-wait.Result:
		require.Zero(t, res.StatusCode)
	case err := <-wait.Error:
		t.Fatal(err)
	}
	logs, err := s.Docker().ContainerLogs(ctx, created.ID, client.ContainerLogsOptions{ShowStdout: true})
	require.NoError(t, err)
	defer logs.Close()
	b, err := io.ReadAll(logs)
	require.NoError(t, err)
	return strings.Split(strings.TrimSpace(strings.ReplaceAll(string(b), "\r\n", "\n")), "\n")
}
