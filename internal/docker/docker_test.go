package docker

import (
	"net/netip"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/stretchr/testify/require"
)

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
