package itest

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A compose project with Caddy in a container in front of the app, a
// worker and a dependency: the first deploy adopts what `docker compose
// up` started; then the app is deployed 10 times and the worker 3 times
// under load, all through the Caddy container, and rolled back once. No
// request fails, the dependency is never touched, and `docker compose up`,
// `ps` and `down` see exactly the live releases. Through handoff proxy run
// as a compose service too (then not even a POST is reset).
func TestComposeProjectDeploysWithoutAFailure(t *testing.T) {
	for _, via := range []string{"caddy", "handoff proxy"} {
		t.Run(via, func(t *testing.T) {
			p := NewComposeProject(t, ComposeOptions{ViaProxy: via == "handoff proxy"})
			p.Up()
			db := p.Of("db")
			require.Len(t, db, 1)

			for i := 1; i <= 10; i++ {
				ReleaseImage(t, "web"+strconv.Itoa(i))
			}
			if p.ViaProxy {
				// The proxy has nothing to serve until the first deploy.
				p.Env["WEB_RELEASE"] = "web1"
				r := p.Deploy("web")
				require.Contains(t, r.Stderr, "first deploy through handoff proxy")
				p.WaitServing("web1")
			}
			load := StartLoad(t, p.SiteURL, SiteHost, LoadOptions{Workers: 2, Posts: 1, Slow: 1, SlowFor: 1500 * time.Millisecond, WebSockets: 1})
			WaitFor(t, 10*time.Second, "load to flow", func() bool { return load.Snapshot().OK > 20 })

			first := 1
			if p.ViaProxy {
				first = 2
			} else {
				p.Env["WEB_RELEASE"] = "web1"
				r := p.Deploy("web")
				require.Contains(t, r.Stderr, "adopting "+p.Name+"-web-1 (serving web:8000)")
				require.Contains(t, r.Stdout, p.Name+"-web-1 stopped and removed")
				first = 2
			}
			for i := first; i <= 10; i++ {
				p.Env["WEB_RELEASE"] = "web" + strconv.Itoa(i)
				p.Deploy("web")
				require.Len(t, p.Of("web"), 1, "one container of web after deploy %d", i)
			}
			for i := 1; i <= 3; i++ {
				p.Env["WORKER_RELEASE"] = "worker" + strconv.Itoa(i)
				r := p.Deploy("worker")
				if i == 1 {
					require.Contains(t, r.Stderr, "adopting "+p.Name+"-worker-1 as the current release")
				}
				require.Len(t, p.Of("worker"), 1)
			}
			ticks, err := os.ReadFile(filepath.Join(p.Dir, "ticks", "ticks.log"))
			require.NoError(t, err)
			require.Contains(t, string(ticks), "worker3", "the last worker runs")

			// docker compose after handoff's deploys: up changes nothing.
			before := p.Containers()
			out, err := p.Compose("up", "-d")
			require.NoError(t, err, out)
			require.Equal(t, before, p.Containers(), "compose up recreated, started or stopped nothing:\n%s", out)

			r := p.Handoff("rollback", "web")
			require.Equal(t, 0, r.Code, r.String())
			require.Contains(t, r.Stderr, "the compose file names "+TestImage+"-web10")
			p.WaitServing("web9")
			got := load.Stop()
			t.Logf("matrix: compose project, 10 deploys of web, 3 of the worker and a rollback via %s: %d requests (%d GET/h2, %d POST, %d slow, %d WebSockets), %d failed, %d requests cut by a Caddy reload",
				via, got.Requests(), got.OK, got.PostOK+got.ReloadCuts()+got.Post5xx, got.SlowOK+got.SlowCut, got.WSOK+got.WSGoingAway+got.WSCut, got.Failures(), got.ReloadCuts())
			require.Zero(t, got.Failures(), "%s", got)
			if p.ViaProxy {
				require.Zero(t, got.ReloadCuts(), "%s", got)
			}
			require.Equal(t, db, p.Of("db"), "the dependency was never touched: same container, never restarted")

			// ps shows the live releases, down removes them.
			before = p.Containers()
			out, err = p.Compose("ps")
			require.NoError(t, err, out)
			for name := range before {
				require.Contains(t, out, name)
			}
			out, err = p.Compose("down", "-t", "2")
			require.NoError(t, err, out)
			require.Empty(t, p.Containers(), "compose down removed handoff's releases too")
		})
	}
}

// Debian's docker-compose 1.29.2 lives with handoff's releases as well:
// `up -d` finds them up to date, `ps` lists them, `down` removes them.
func TestComposeV1LivesWithHandoff(t *testing.T) {
	p := NewComposeProject(t, ComposeOptions{Tool: "v1"})
	ReleaseImage(t, "web1")
	p.Up()

	// handoff init reads the running Caddy and says what each service is.
	r := p.Handoff("init", "--caddy-admin", "unix:"+filepath.Join(p.Dir, "caddy", "admin.sock"))
	require.Equal(t, 0, r.Code, r.String())
	require.Contains(t, r.Stdout, "  web:\n    x-handoff:\n      route: "+SiteHost)
	require.Contains(t, r.Stdout, "  worker:\n    x-handoff:\n      strategy: start-first")
	require.NotContains(t, r.Stdout, "  caddy:\n    x-handoff")
	p.Env["WEB_RELEASE"], p.Env["WORKER_RELEASE"] = "web1", "worker1"
	p.Deploy("web", "worker")
	p.WaitServing("web1")
	before := p.Containers()
	out, err := p.Compose("up", "-d")
	require.NoError(t, err, out)
	require.Equal(t, before, p.Containers(), "up recreated nothing:\n%s", out)
	require.Contains(t, out, "is up-to-date")
	out, err = p.Compose("ps")
	require.NoError(t, err, out)
	require.Contains(t, out, p.Name+"-web-")
	out, err = p.Compose("down", "-t", "2")
	require.NoError(t, err, out)
	require.Empty(t, p.Containers())
	require.False(t, strings.Contains(out, "Traceback"), out)
}
