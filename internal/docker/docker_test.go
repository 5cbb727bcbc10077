package docker

import (
	"net/netip"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/network"
	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/deploy"
)

func TestCheckCommand(t *testing.T) {
	require.Nil(t, checkCommand(nil))
	require.Nil(t, checkCommand(&container.HealthConfig{Test: []string{"NONE"}}))
	require.Equal(t, []string{"/app", "check"}, checkCommand(&container.HealthConfig{Test: []string{"CMD", "/app", "check"}}))
	require.Equal(t, []string{"/bin/sh", "-c", "curl -f localhost || exit 1"}, checkCommand(&container.HealthConfig{Test: []string{"CMD-SHELL", "curl -f localhost || exit 1"}}))
}

func TestCheckWindow(t *testing.T) {
	ok, _ := checkWindow(nil)
	require.False(t, ok)
	ok, _ = checkWindow(&container.HealthConfig{Test: []string{"NONE"}})
	require.False(t, ok)
	ok, w := checkWindow(&container.HealthConfig{Test: []string{"CMD", "/check"}, StartPeriod: time.Minute, Interval: 5 * time.Second, Timeout: time.Second, Retries: 3})
	require.True(t, ok)
	require.Equal(t, time.Minute+18*time.Second, w)
	_, w = checkWindow(&container.HealthConfig{Test: []string{"CMD", "/check"}})
	require.Equal(t, 3*time.Minute, w, "Docker's defaults: 3 × (30s + 30s)")
}

func TestPublished(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	ports := network.PortMap{
		network.MustParsePort("9000/tcp"): {{HostIP: lo, HostPort: "32001"}},
		network.MustParsePort("8000/tcp"): {{HostIP: netip.Addr{}, HostPort: "32000"}},
		network.MustParsePort("53/udp"):   {{HostIP: lo, HostPort: "32002"}},
		network.MustParsePort("7000/tcp"): nil,
	}
	port, up := published(ports, 9000)
	require.Equal(t, 9000, port)
	require.Equal(t, "127.0.0.1:32001", up)
	port, up = published(ports, 0)
	require.Equal(t, 8000, port, "no label: the lowest published TCP port")
	require.Equal(t, "127.0.0.1:32000", up, "an unspecified host IP is reached on loopback")
	_, up = published(ports, 7000)
	require.Empty(t, up)
}

// Adoption matches the exact published address, not only the port.
func TestReaches(t *testing.T) {
	any4, lo, other := netip.MustParseAddr("0.0.0.0"), netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("192.168.1.5")
	require.True(t, reaches(any4, "127.0.0.1"))
	require.True(t, reaches(netip.Addr{}, "127.0.0.1"))
	require.True(t, reaches(lo, "127.0.0.1"))
	require.True(t, reaches(lo, "localhost"))
	require.True(t, reaches(netip.IPv6Loopback(), "localhost"))
	require.False(t, reaches(other, "127.0.0.1"), "published on another address: not what Caddy dials")
	require.False(t, reaches(netip.MustParseAddr("127.0.0.2"), "127.0.0.1"))
	require.False(t, reaches(netip.IPv6Loopback(), "127.0.0.1"))
}

// A stopped release's address is known from its pinned binding.
func TestPinned(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	b := network.PortMap{network.MustParsePort("8000/tcp"): {{HostIP: lo, HostPort: "41234"}}}
	require.Equal(t, "127.0.0.1:41234", pinned(b, 8000))
	require.Empty(t, pinned(network.PortMap{network.MustParsePort("8000/tcp"): {{HostIP: lo}}}, 8000), "Docker picks anew each start")
	require.Empty(t, pinned(b, 9000))
}

// on-failure:3 is a name and a retry count to Docker (the name
// "on-failure:3" is refused at create, after the release job ran).
func TestRestartPolicy(t *testing.T) {
	require.Equal(t, container.RestartPolicy{Name: "on-failure", MaximumRetryCount: 3}, restartPolicy("on-failure:3"))
	require.Equal(t, container.RestartPolicy{Name: "unless-stopped"}, restartPolicy("unless-stopped"))
	require.Equal(t, container.RestartPolicy{Name: "no"}, restartPolicy("no"))
}

// A volume's subpath is a mount of its own; an engine before API 1.45
// would mount the whole volume, so the release is refused there.
func TestSubpathMounts(t *testing.T) {
	svc := deploy.Service{Name: "p-web", Mounts: []deploy.Mount{{Source: "p_tenants", Target: "/data", Subpath: "acme", ReadOnly: true}}}
	require.Equal(t, []mount.Mount{{Type: mount.TypeVolume, Source: "p_tenants", Target: "/data", ReadOnly: true, VolumeOptions: &mount.VolumeOptions{Subpath: "acme"}}}, mounts(svc.Mounts))
	err := mountsSupported(svc, "1.41")
	require.ErrorIs(t, err, deploy.ErrConfig)
	require.ErrorContains(t, err, "p-web mounts acme of volume p_tenants at /data, and this Docker engine (API 1.41) cannot mount part of a volume")
	require.NoError(t, mountsSupported(svc, "1.45"))
	require.NoError(t, mountsSupported(svc, "1.52"))
	require.NoError(t, mountsSupported(deploy.Service{Mounts: []deploy.Mount{{Source: "v", Target: "/v", NoCopy: true}}}, "1.41"))
	require.True(t, apiAtLeast("1.100", "1.45"))
	require.False(t, apiAtLeast("1.9", "1.45"))
}
