package testhost

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
)

// A test network is a switch the test's servers and the host are plugged into: a network
// namespace holding a bridge (br0), one namespace per server joined to it by a veth pair
// (eth0 inside the server), and the host joined by one more pair as .254. Every name is
// the test binary's own (its pid and a counter) and the /24 is held by a lock file for as
// long as the network lives, so parallel test binaries never share a name or an address.
// Nothing is made in the host's namespace but its end of one veth pair: no bridge there,
// whose FORWARD policy is DROP, and no iptables rule anywhere but inside the servers.

// Network is a test's switch. Its zero value is not usable; StartServers makes one.
type Network struct {
	// Prefix is the /24's first three octets, "192.168.207"; a server's address is
	// Prefix.1N, the host's Prefix.254.
	Prefix string
	// HostIP is the host's address on the switch (a registry for the servers listens here).
	HostIP string
	// NS is the switch namespace's name (ip netns).
	NS string
	// HostLink is the host's end of its veth pair; the other end is "host" on br0.
	HostLink string
	id       string
	lock     *os.File
}

// Subnets tried, 192.168.<first>..<last>.0/24: far from the usual home and cloud ranges.
const firstSubnet, lastSubnet = 200, 249

var networkSeq atomic.Int64

// newID is a name part unique on this machine while the process lives: its pid and a
// counter, in base 36 to keep interface and socket paths short (≤ 7 characters).
func newID() string {
	return strconv.FormatInt(int64(os.Getpid())*1000+networkSeq.Add(1)%1000, 36)
}

// startNetwork makes the switch and joins the host to it; t's cleanup removes both,
// also when it fails halfway.
func startNetwork(t testing.TB) *Network {
	t.Helper()
	n := &Network{id: newID()}
	n.NS, n.HostLink = "hoff-"+n.id+"-sw", "ho"+n.id
	if err := n.lockSubnet(); err != nil {
		t.Fatalf("test network: %v", err)
	}
	t.Cleanup(n.remove)
	n.HostIP = n.Prefix + ".254"
	steps := [][]string{
		{"netns", "add", n.NS},
		{"-n", n.NS, "link", "set", "lo", "up"},
		{"-n", n.NS, "link", "add", "br0", "type", "bridge"},
		{"-n", n.NS, "link", "set", "br0", "up"},
		{"link", "add", n.HostLink, "type", "veth", "peer", "name", "host", "netns", n.NS},
		{"-n", n.NS, "link", "set", "host", "master", "br0", "up"},
		{"addr", "add", n.HostIP + "/24", "dev", n.HostLink},
		{"link", "set", n.HostLink, "up"},
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			t.Fatalf("test network: %v", err)
		}
	}
	return n
}

// lockSubnet takes the first /24 no other process holds and the host has no address or
// route in (a network a killed test left behind still has its host veth).
func (n *Network) lockSubnet() error {
	out, _ := exec.Command("ip", "-4", "-o", "addr").Output()
	routes, _ := exec.Command("ip", "-4", "route", "show", "table", "all").Output()
	inUse := string(out) + string(routes)
	for x := firstSubnet; x <= lastSubnet; x++ {
		prefix := "192.168." + strconv.Itoa(x)
		if strings.Contains(inUse, prefix+".") {
			continue
		}
		f, err := os.OpenFile("/run/lock/handoff-testhost-"+prefix+".lock", os.O_CREATE|os.O_RDWR, 0o644)
		if err != nil {
			return fmt.Errorf("lock a subnet: %w", err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close()
			continue
		}
		n.Prefix, n.lock = prefix, f
		return nil
	}
	return fmt.Errorf("no free subnet in 192.168.%d-%d.0/24: remove the namespaces (ip netns list) and links (ip link) of killed tests", firstSubnet, lastSubnet)
}

// remove deletes the switch, with the host's veth (its peer goes with the namespace),
// and lets the subnet go.
func (n *Network) remove() {
	if n.NS != "" {
		ip("link", "del", n.HostLink)
		removeNetNS(n.NS)
	}
	if n.lock != nil {
		n.lock.Close()
	}
}

// plug makes namespace ns and joins it to the switch as port s<i>, with eth0 at
// Prefix.1<i>, loopback up and a default route through the host. Any user may listen on
// ports below 1024 there (a sysctl of the namespace's own), as root on a server could:
// the servers' login user is not root.
func (n *Network) plug(ns string, i int) (addr string, err error) {
	addr = fmt.Sprintf("%s.%d", n.Prefix, 10+i)
	port := "s" + strconv.Itoa(i)
	steps := [][]string{
		{"netns", "add", ns},
		{"-n", ns, "link", "set", "lo", "up"},
		{"-n", n.NS, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"-n", n.NS, "link", "set", port, "master", "br0", "up"},
		{"-n", ns, "addr", "add", addr + "/24", "dev", "eth0"},
		{"-n", ns, "link", "set", "eth0", "up"},
		{"-n", ns, "route", "add", "default", "via", n.HostIP},
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return "", err
		}
	}
	if out, err := inNetNS(ns, "sysctl", "-q", "-w", "net.ipv4.ip_unprivileged_port_start=0").CombinedOutput(); err != nil {
		return "", fmt.Errorf("sysctl in %s: %v: %s", ns, err, strings.TrimSpace(string(out)))
	}
	return addr, nil
}

// setPort brings server i's port on the switch up or down: down, its packets go nowhere,
// as when a server's cable is pulled; its connections are not reset.
func (n *Network) setPort(i int, up bool) error {
	return ip("-n", n.NS, "link", "set", "s"+strconv.Itoa(i), map[bool]string{true: "up", false: "down"}[up])
}

// removeNetNS ends what still runs in namespace ns and deletes it.
func removeNetNS(ns string) {
	if out, err := exec.Command("ip", "netns", "pids", ns).Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	ip("netns", "del", ns)
}

// netnsPath is where ip netns keeps namespace ns, for nsenter --net.
func netnsPath(ns string) string { return "/run/netns/" + ns }

// inNetNS is a command that runs name in namespace ns. It uses nsenter, which changes
// the network namespace only: ip netns exec also mounts a /sys of its own, which hides
// /sys/fs/cgroup from dockerd.
func inNetNS(ns, name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=" + netnsPath(ns), "--", name}, args...)...)
}

// ip runs ip(8) with args.
func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
