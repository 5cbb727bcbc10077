package docker

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// Every spelling of a local address is the one address: a container
// published on the port is adopted whichever one the proxy's upstream
// uses, as long as a dial of it reaches the binding (a dial of [::1]
// does not reach a port bound on 127.0.0.1 only; nothing reaches one
// bound on another address).
func TestServingTakesEveryFormOfALocalAddress(t *testing.T) {
	forms := []string{":8000", "0.0.0.0:8000", "[::]:8000", "localhost:8000", "127.0.0.1:8000", "[::1]:8000"}
	cases := []struct {
		bound   string // the host IP Docker publishes port 8000 on
		reached map[string]bool
	}{
		{"0.0.0.0", map[string]bool{":8000": true, "0.0.0.0:8000": true, "[::]:8000": true, "localhost:8000": true, "127.0.0.1:8000": true, "[::1]:8000": true}},
		{"::", map[string]bool{":8000": true, "0.0.0.0:8000": true, "[::]:8000": true, "localhost:8000": true, "127.0.0.1:8000": true, "[::1]:8000": true}},
		{"127.0.0.1", map[string]bool{":8000": true, "0.0.0.0:8000": true, "[::]:8000": true, "localhost:8000": true, "127.0.0.1:8000": true}},
		{"::1", map[string]bool{":8000": true, "0.0.0.0:8000": true, "[::]:8000": true, "localhost:8000": true, "[::1]:8000": true}},
		{"192.168.1.5", map[string]bool{}},
	}
	for _, c := range cases {
		r := fakeEngine(t, c.bound, 8000)
		for _, form := range forms {
			got, err := r.Serving(t.Context(), form)
			require.NoError(t, err)
			if !c.reached[form] {
				require.Nil(t, got, "%s does not reach a port published on %s", form, c.bound)
				continue
			}
			require.NotNil(t, got, "%s reaches the port published on %s", form, c.bound)
			require.Equal(t, "byhand", got.Name)
			require.True(t, got.Adopted)
			require.Equal(t, 80, got.Port, "the container's own port")
			require.Equal(t, form, got.Upstream, "as the proxy spells it")
		}
		got, err := r.Serving(t.Context(), "127.0.0.1:8001")
		require.NoError(t, err)
		require.Nil(t, got, "another port")
	}
}

// fakeEngine answers the Docker API's container list and inspect for one
// running container started by hand, publishing its port 80 on bound:port.
func fakeEngine(t *testing.T, bound string, port int) *Runtime {
	t.Helper()
	summary := map[string]any{"Id": "c1", "Names": []string{"/byhand"}, "State": "running",
		"Ports": []any{map[string]any{"IP": bound, "PrivatePort": 80, "PublicPort": port, "Type": "tcp"}}}
	inspect := map[string]any{"Id": "c1", "Name": "/byhand", "Created": "2026-12-01T10:00:00Z",
		"Config":          map[string]any{"Image": "app", "Labels": map[string]string{}},
		"State":           map[string]any{"Running": true, "Status": "running", "StartedAt": "2026-12-01T10:00:01Z"},
		"HostConfig":      map[string]any{"RestartPolicy": map[string]any{"Name": "on-failure", "MaximumRetryCount": 3}},
		"NetworkSettings": map[string]any{"Ports": map[string]any{"80/tcp": []any{map[string]any{"HostIp": bound, "HostPort": strconv.Itoa(port)}}}},
	}
	return fakeEngineAPI(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch {
		case strings.HasSuffix(r.URL.Path, "/containers/json"):
			_ = json.NewEncoder(w).Encode([]any{summary})
		case strings.HasSuffix(r.URL.Path, "/containers/c1/json"):
			_ = json.NewEncoder(w).Encode(inspect)
		default:
			http.Error(w, `{"message":"not in this fake"}`, http.StatusNotFound)
		}
	})
}

// What `handoff init` writes down keeps a restart policy's retry count:
// on-failure:3, not on-failure (which retries for ever).
func TestDescribeKeepsTheRetryCount(t *testing.T) {
	r := fakeEngine(t, "127.0.0.1", 8000)
	d, err := r.Describe(t.Context(), "c1", 80)
	require.NoError(t, err)
	require.Equal(t, "on-failure:3", d.Restart)
}

// The containers of a compose service of several (deploy.replicas: 2
// started web-1 and web-2) are found all, in compose's order of container
// numbers whichever was created first, and never one handoff started.
func TestFindListsEveryReplicaByContainerNumber(t *testing.T) {
	type ctr struct {
		id, name, number, created string
		handoff                   bool
	}
	ctrs := []ctr{
		{"c10", "shop-web-10", "10", "2026-12-01T10:00:00Z", false},
		{"c2", "shop-web-2", "2", "2026-12-01T10:00:02Z", false},
		{"h7", "shop-web-7", "7", "2026-12-01T10:00:03Z", true},
		{"c1", "shop-web-1", "1", "2026-12-01T10:00:01Z", false},
	}
	var filters string
	r := fakeEngineAPI(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if strings.HasSuffix(r.URL.Path, "/containers/json") {
			filters = r.URL.Query().Get("filters")
			var list []any
			for _, c := range ctrs {
				labels := map[string]string{"com.docker.compose.service": "web", "com.docker.compose.container-number": c.number}
				if c.handoff {
					labels[LabelService] = "shop-web"
				}
				list = append(list, map[string]any{"Id": c.id, "Names": []string{"/" + c.name}, "State": "running", "Labels": labels})
			}
			_ = json.NewEncoder(w).Encode(list)
			return
		}
		for _, c := range ctrs {
			if strings.HasSuffix(r.URL.Path, "/containers/"+c.id+"/json") {
				_ = json.NewEncoder(w).Encode(map[string]any{"Id": c.id, "Name": "/" + c.name, "Created": c.created,
					"Config": map[string]any{"Image": "app", "Labels": map[string]string{}},
					"State":  map[string]any{"Running": true, "Status": "running", "StartedAt": c.created}})
				return
			}
		}
		http.Error(w, `{"message":"not in this fake"}`, http.StatusNotFound)
	})

	got, err := r.Find(t.Context(), map[string]string{"com.docker.compose.project": "shop", "com.docker.compose.service": "web"})
	require.NoError(t, err)
	var names []string
	for _, c := range got {
		names = append(names, c.Name)
		require.True(t, c.Adopted, c.Name)
	}
	require.Equal(t, []string{"shop-web-1", "shop-web-2", "shop-web-10"}, names)
	require.Contains(t, filters, `"com.docker.compose.project=shop":true`)
	require.Contains(t, filters, `"com.docker.compose.service=web":true`)
}
