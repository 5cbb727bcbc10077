package itest

import (
	"crypto/rand"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/deploy"
)

// build: in handoff.yml with --host builds the image here, as a deploy here would, and
// the server deploys the image built (its working directory has no build context). The
// "server" of this harness is this machine, so the image is there already: the line says
// nothing was sent, over the command's one connection.
func TestHostDeployBuildsHereAndDeploysTheImageBuilt(t *testing.T) {
	s := NewScenario(t, ScenarioOptions{})
	v := newViaSSH(t, s)
	tag := s.Service + ":built"
	t.Cleanup(func() { _ = run(".", nil, "docker", "image", "rm", "-f", tag) })
	require.NoError(t, os.WriteFile(filepath.Join(s.Dir, "Dockerfile"), []byte("FROM "+TestImage+"\nLABEL handoff-test=built-here\n"), 0o644))
	s.WriteConfig(Config{Release: "v1", Image: tag, Extra: "build: .\n"})

	r := v.Run("deploy", "--json")
	t.Logf("deploy --host:\n%s", r)
	require.Equal(t, 0, r.Code, r.String())
	var rec deploy.Record
	require.NoError(t, json.Unmarshal([]byte(r.Stdout), &rec), r.Stdout)
	require.Equal(t, deploy.OutcomeSucceeded, rec.Outcome)
	require.Equal(t, tag, rec.Image, "the server deployed the image built here")
	require.Contains(t, r.Stderr, "image "+tag+" on "+v.URL+" already: nothing sent")
	require.Equal(t, "v1", s.Serving())
	require.Equal(t, 1, v.sshd.Connections(), "one SSH connection for the command")
}

// laptopEngine is the Docker engine of "a laptop" as handoff's local side sees it at
// DOCKER_HOST: one image, served from a tar `docker save` wrote (the harness's server is
// this machine's own engine, so the laptop's has to be another one).
type laptopEngine struct {
	ref, id string
	diffs   []string
	saved   string // the file
	sock    string
}

func startLaptopEngine(t *testing.T, e *laptopEngine) {
	t.Helper()
	e.sock = filepath.Join(t.TempDir(), "docker.sock")
	l, err := net.Listen("unix", e.sock)
	require.NoError(t, err)
	version := regexp.MustCompile(`^/v[0-9.]+`)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Api-Version", "1.41")
		p := version.ReplaceAllString(r.URL.Path, "")
		switch {
		case p == "/_ping":
			io.WriteString(w, "OK")
		case p == "/images/"+e.ref+"/json" || p == "/images/"+e.id+"/json":
			json.NewEncoder(w).Encode(map[string]any{"Id": e.id, "RepoTags": []string{e.ref}, "RootFS": map[string]any{"Type": "layers", "Layers": e.diffs}})
		case p == "/images/get" && r.URL.Query().Get("names") == e.ref:
			http.ServeFile(w, r, e.saved)
		default:
			http.Error(w, `{"message":"No such image: `+p+`"}`, http.StatusNotFound)
		}
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
}

// An image on the laptop and not on the server goes there with only the layers the
// server lacks: a one-line change on a 50 MB base sends one layer, kilobytes, over the
// command's one connection; the server then runs the very image (its ID) and serves.
func TestHostDeploySendsOnlyTheLayersTheServerLacks(t *testing.T) {
	s := NewScenario(t, ScenarioOptions{})
	v := newViaSSH(t, s)
	tag := randomHex(4)
	base, app := "handoff-test-base:"+tag, "handoff-test-app:"+tag
	t.Cleanup(func() { _ = run(".", nil, "docker", "image", "rm", "-f", app, base) })
	dir := t.TempDir()
	big := make([]byte, 50<<20)
	_, _ = rand.Read(big)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "big"), big, 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "line"), []byte("v2\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "Dockerfile.base"), []byte("FROM "+TestImage+"\nCOPY big /big\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "Dockerfile.app"), []byte("FROM "+base+"\nCOPY line /line\n"), 0o644))
	require.NoError(t, run(dir, nil, "docker", "build", "-q", "-f", "Dockerfile.base", "-t", base, "."))
	require.NoError(t, run(dir, nil, "docker", "build", "-q", "-f", "Dockerfile.app", "-t", app, "."))
	img, err := s.API.ImageInspect(t.Context(), app)
	require.NoError(t, err)
	laptop := &laptopEngine{ref: app, id: img.ID, diffs: img.RootFS.Layers, saved: filepath.Join(dir, "app.tar")}
	require.NoError(t, run(dir, nil, "docker", "save", "-o", laptop.saved, app))
	// The server has the base, not the app.
	require.NoError(t, run(dir, nil, "docker", "image", "rm", app))
	startLaptopEngine(t, laptop)

	s.WriteConfig(Config{Release: "v2", Image: app})
	v.env = append(v.env, "DOCKER_HOST=unix://"+laptop.sock)
	r := v.Run("deploy", "--json")
	t.Logf("deploy --host:\n%s", r)
	require.Equal(t, 0, r.Code, r.String())
	line := regexp.MustCompile(`image ` + regexp.QuoteMeta(app) + ` to ` + regexp.QuoteMeta(v.URL) + `: 1 of 3 layers sent, ([0-9.]+) kB \(all layers: 5[0-9.]+ MB\)\n`)
	require.Regexp(t, line, r.Stderr)
	var rec deploy.Record
	require.NoError(t, json.Unmarshal([]byte(r.Stdout), &rec), r.Stdout)
	require.Equal(t, deploy.OutcomeSucceeded, rec.Outcome)
	now, err := s.API.ImageInspect(t.Context(), app)
	require.NoError(t, err)
	require.Equal(t, img.ID, now.ID, "the server has the laptop's image")
	require.Equal(t, "v2", s.Serving())
	require.Equal(t, 1, v.sshd.Connections(), "one SSH connection for the command")
	st, err := os.Stat(laptop.saved)
	require.NoError(t, err)
	t.Logf("sent: %s; docker save | ssh docker load would send %d bytes", line.FindString(r.Stderr), st.Size())

	// Deployed again: the server has it under its tag, nothing crosses.
	r = v.Run("deploy")
	require.Equal(t, 0, r.Code, r.String())
	require.Contains(t, r.Stderr, "image "+app+" on "+v.URL+" already: nothing sent")
}
