package itest

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/client"
	"github.com/stretchr/testify/require"
)

// A compose service of two replicas (deploy.replicas: 2), started by
// `docker compose up`: the first deploy adopts both containers as one
// release, and each deploy after it runs two again, through the Caddy
// container and through handoff proxy run as a compose service, with
// compose v5 and with Debian's docker-compose 1.29.2. Under load no
// request fails; after each deploy `docker compose ps` lists exactly the
// new release's two containers, the proxy sends to both, and `docker
// compose up` finds them up to date.
func TestComposeReplicasAreAdoptedAndDeployedWhole(t *testing.T) {
	for _, c := range []struct {
		name, tool string
		viaProxy   bool
	}{{"caddy", "v5", false}, {"handoff proxy", "v5", true}, {"handoff proxy, compose v1", "v1", true}} {
		t.Run(c.name, func(t *testing.T) {
			p := NewComposeProject(t, ComposeOptions{ViaProxy: c.viaProxy, Tool: c.tool})
			scaleWeb(t, p, 2)
			ReleaseImage(t, "web1")
			ReleaseImage(t, "web2")
			p.Up()
			started := p.running("web")
			sep := map[string]string{"v5": "-", "v1": "_"}[c.tool] // compose v1 names containers project_service_1
			require.Equal(t, []string{p.Name + sep + "web" + sep + "1", p.Name + sep + "web" + sep + "2"}, started, "docker compose up started two")

			p.Env["WEB_RELEASE"] = "web1"
			var load *Load
			if !p.ViaProxy {
				load = StartLoad(t, p.SiteURL, SiteHost, LoadOptions{Workers: 2, Posts: 1})
				WaitFor(t, 10*time.Second, "load to flow", func() bool { return load.Snapshot().OK > 20 })
			}
			r := p.Deploy("web")
			require.Contains(t, r.Stderr, "adopting "+strings.Join(started, ", "), "both adopted as one release:\n%s", r)
			require.Contains(t, r.Stdout, strings.Join(started, ", ")+" stopped and removed")
			p.WaitServing("web1")
			first := p.requireReplicas("web", 2)
			if load == nil {
				// Through handoff proxy, nothing answered before the first deploy.
				load = StartLoad(t, p.SiteURL, SiteHost, LoadOptions{Workers: 2, Posts: 1, FrontNeverReloads: true})
				WaitFor(t, 10*time.Second, "load to flow", func() bool { return load.Snapshot().OK > 20 })
			}

			p.Env["WEB_RELEASE"] = "web2"
			p.Deploy("web")
			p.WaitServing("web2")
			require.Empty(t, intersect(p.requireReplicas("web", 2), first), "the second release's own two")

			before := p.Containers()
			out, err := p.Compose("up", "-d")
			require.NoError(t, err, out)
			require.Equal(t, before, p.Containers(), "compose up recreated, started or stopped nothing:\n%s", out)

			got := load.Stop()
			t.Logf("compose service of 2 replicas, adopted and deployed twice via %s: %d requests, %d failed, %d requests cut by a Caddy reload; hosts %v",
				c.name, got.Requests(), got.Failures(), got.ReloadCuts(), got.Hosts)
			require.Zero(t, got.Failures(), "%s", got)
		})
	}
}

// scaleWeb makes the project's web service one of n containers.
func scaleWeb(t *testing.T, p *ComposeProject, n int) {
	t.Helper()
	path := filepath.Join(p.Dir, "compose.yaml")
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	const expose = "    expose: [\"8000\"]\n"
	require.Contains(t, string(data), expose)
	scaled := strings.Replace(string(data), expose, expose+"    deploy: {replicas: "+Itoa(n)+"}\n", 1)
	require.NoError(t, os.WriteFile(path, []byte(scaled), 0o644))
}

// running lists the names of the service's running containers, in order.
func (p *ComposeProject) running(service string) []string {
	var out []string
	for name, c := range p.Of(service) {
		if c.Running {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// requireReplicas checks that the service runs n containers of one
// release, that `docker compose ps` lists exactly those, and that the
// proxy sends requests to every one of them; it returns their names.
func (p *ComposeProject) requireReplicas(service string, n int) []string {
	p.T.Helper()
	all := p.Of(service)
	names := p.running(service)
	require.Len(p.T, names, n, "running containers of %s: %v", service, all)
	require.Len(p.T, all, n, "no other container of %s, stopped or not: %v", service, all)
	// Named as compose names a service's containers, one number each:
	// release×100+replica (proj-web-401, proj-web-402).
	first := names[0][:strings.LastIndex(names[0], "-")+1]
	number, err := strconv.Atoi(strings.TrimPrefix(names[0], first))
	require.NoError(p.T, err, names[0])
	for i, name := range names {
		require.Equal(p.T, first+Itoa(number-number%100+i+1), name, "replicas of one release, numbered as compose numbers them")
	}
	out, err := p.Compose("ps", "-q", service)
	require.NoError(p.T, err, out)
	listed := strings.Fields(out)
	require.Len(p.T, listed, n, "docker compose ps lists the live release's containers:\n%s", out)
	for _, id := range listed {
		require.True(p.T, slices.ContainsFunc(names, func(name string) bool { return strings.HasPrefix(all[name].ID, id) }),
			"docker compose ps lists %s, not one of %v", id, names)
	}

	hosts := map[string]string{} // hostname → container
	for _, name := range names {
		res, err := p.API.ContainerInspect(context.Background(), all[name].ID, client.ContainerInspectOptions{})
		require.NoError(p.T, err)
		hosts[res.Container.Config.Hostname] = name
	}
	seen := answeredBy(p.T, p.SiteURL+"/", SiteHost, 60)
	for host, name := range hosts {
		require.NotZero(p.T, seen[host], "%s answered none of 60 requests through the proxy: %v", name, seen)
	}
	for host := range seen {
		require.Contains(p.T, hosts, host, "a container not of the live release answered")
	}
	return names
}

// answeredBy sends n requests, four at a time, and counts which container
// answered each (its X-Host, the container's hostname).
func answeredBy(t testing.TB, url, host string, n int) map[string]int {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	var mu sync.Mutex
	seen := map[string]int{}
	var wg sync.WaitGroup
	jobs := make(chan struct{}, n)
	for range n {
		jobs <- struct{}{}
	}
	close(jobs)
	for range 4 {
		wg.Go(func() {
			for range jobs {
				req, err := http.NewRequest(http.MethodGet, url, nil)
				if err != nil {
					continue
				}
				req.Host = host
				resp, err := c.Do(req)
				if err != nil {
					continue
				}
				resp.Body.Close()
				mu.Lock()
				seen[resp.Header.Get("X-Host")]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return seen
}

func intersect(a, b []string) []string {
	var out []string
	for _, x := range a {
		if slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}
