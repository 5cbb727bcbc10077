package docker

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/moby/moby/client"
	"github.com/stretchr/testify/require"
)

// countingWriter counts the bytes written through it.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// dockerCLI runs the docker command in dir, failing the test with its output.
func dockerCLI(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("docker", args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "docker %s: %s", strings.Join(args, " "), out)
	return strings.TrimSpace(string(out))
}

// layeredImages builds base (FROM scratch: a static program and 50 MB of random bytes,
// which no compression makes smaller) and app (base and a one-line file), and removes
// both when the test ends.
func layeredImages(t *testing.T) (base, app string) {
	t.Helper()
	_, err := exec.LookPath("docker")
	need(t, "docker command", err)
	tag := hex.EncodeToString([]byte(t.Name()))[:8] + randomHex(t)
	base, app = "handoff-test-base:"+tag, "handoff-test-app:"+tag
	t.Cleanup(func() { exec.Command("docker", "image", "rm", "-f", app, base).Run() })
	dir := t.TempDir()
	prog := "package main\n\nimport (\n\t\"fmt\"\n\t\"os\"\n)\n\nfunc main() {\n\tb, err := os.ReadFile(\"/line\")\n\tfmt.Printf(\"%s%v\", b, err)\n}\n"
	require.NoError(t, os.WriteFile(filepath.Join(dir, "main.go"), []byte(prog), 0o644))
	build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", "show", "main.go")
	build.Dir, build.Env = dir, append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "%s", out)
	big := make([]byte, 50<<20)
	_, _ = rand.Read(big)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "big"), big, 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "Dockerfile.base"), []byte("FROM scratch\nCOPY show /show\nCOPY big /big\nENTRYPOINT [\"/show\"]\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "line"), []byte("v2\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "Dockerfile.app"), []byte("FROM "+base+"\nCOPY line /line\n"), 0o644))
	dockerCLI(t, dir, "build", "-q", "-f", "Dockerfile.base", "-t", base, ".")
	dockerCLI(t, dir, "build", "-q", "-f", "Dockerfile.app", "-t", app, ".")
	return base, app
}

func randomHex(t *testing.T) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// The design's premise, on the real engine: `docker load` takes a tar without the layer
// files of the layers the engine has (it looks each chain up before it opens the file).
// The "server" is this engine with the app image removed and its base kept: the reduced
// tar carries one layer of three, and the app's image ID is then there and runs.
func TestReducedSaveLoadsWhereTheBaseIs(t *testing.T) {
	r := engine(t)
	ctx := context.Background()
	base, app := layeredImages(t)
	local, err := r.LocalImage(ctx, app)
	require.NoError(t, err)
	id, diffs := local.ID, local.DiffIDs
	require.Len(t, diffs, 3)
	require.Empty(t, local.RepoDigests, "built here, in no registry")
	require.Equal(t, runtime.GOOS+"/"+runtime.GOARCH, local.Platform)

	saved, err := os.Create(filepath.Join(t.TempDir(), "app.tar"))
	require.NoError(t, err)
	defer saved.Close()
	require.NoError(t, r.SaveImage(ctx, app, saved))
	full, err := saved.Seek(0, io.SeekEnd)
	require.NoError(t, err)

	// The chain IDs are the engine's: each names a directory of its layer store.
	if info, err := r.api.Info(ctx, client.InfoOptions{}); err == nil {
		store := filepath.Join(info.Info.DockerRootDir, "image", info.Info.Driver, "layerdb", "sha256")
		if _, err := os.Stat(store); err == nil {
			for _, c := range ChainIDs(diffs) {
				require.DirExists(t, filepath.Join(store, strings.TrimPrefix(c, "sha256:")))
			}
		}
	}

	dockerCLI(t, "", "image", "rm", app)
	server, err := r.Images(ctx)
	require.NoError(t, err)
	require.NotContains(t, server.Images, id)
	require.Equal(t, "linux/"+runtime.GOARCH, server.Platform)
	require.False(t, server.Tagged(id, app))

	var packed bytes.Buffer
	wire := &countingWriter{w: &packed}
	gz := gzip.NewWriter(wire)
	red, err := ReduceSave(saved, gz, server.Has())
	require.NoError(t, err)
	require.NoError(t, gz.Close())
	require.Equal(t, []string{id}, red.Images)
	require.Equal(t, 3, red.Layers)
	require.Equal(t, 1, red.Sent, "only the one-line layer")
	require.Less(t, wire.n, int64(64<<10), "a one-line change sends kilobytes, not the base")

	zr, err := gzip.NewReader(&packed)
	require.NoError(t, err)
	loaded, err := r.LoadImage(ctx, zr)
	require.NoError(t, err)
	require.Equal(t, []string{"Loaded image: " + app}, loaded)
	got, err := r.LocalImage(ctx, app)
	require.NoError(t, err)
	require.Equal(t, id, got.ID, "the same image ID as here")
	require.Equal(t, "v2\n<nil>", dockerCLI(t, "", "run", "--rm", app))

	// What the other ways would have sent, for the README.
	var gzFull, first countingWriter
	gzFull.w, first.w = io.Discard, io.Discard
	gz = gzip.NewWriter(&gzFull)
	_, err = io.Copy(gz, io.NewSectionReader(saved, 0, full))
	require.NoError(t, err)
	require.NoError(t, gz.Close())
	gz = gzip.NewWriter(&first)
	all, err := ReduceSave(saved, gz, func(string) bool { return false })
	require.NoError(t, err)
	require.NoError(t, gz.Close())
	require.Equal(t, 3, all.Sent)
	t.Logf("one-line change on a 50 MB base: sent %d bytes gzip'd (%d of %d layers, %d layer bytes); docker save: %d bytes, gzip'd %d; first send (all layers) gzip'd %d",
		wire.n, red.Sent, red.Layers, red.SentBytes, full, gzFull.n, first.n)
	_ = base
}

// A load the engine refuses says why.
func TestLoadImageSaysWhyTheEngineRefused(t *testing.T) {
	r := engine(t)
	m := `[{"Config":"c.json","RepoTags":["handoff-test-refused:x"],"Layers":["nope/layer.tar"]}]`
	cfg := `{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:` + strings.Repeat("0", 64) + `"]}}`
	f := writeTar(t, []tarEntry{{name: "c.json", data: []byte(cfg)}, {name: "manifest.json", data: []byte(m)}})
	_, err := f.Seek(0, io.SeekStart)
	require.NoError(t, err)
	_, err = r.LoadImage(context.Background(), f)
	require.Error(t, err)
	require.Contains(t, err.Error(), "load image: ")
	t.Log(err)
}

// fakeEngineAPI is a Runtime whose engine is handler.
func fakeEngineAPI(t *testing.T, handler http.HandlerFunc) *Runtime {
	t.Helper()
	srv := httptest.NewServer(handler)
	t.Cleanup(srv.Close)
	api, err := client.New(client.WithHost("tcp://"+strings.TrimPrefix(srv.URL, "http://")), client.WithAPIVersion("1.41"))
	require.NoError(t, err)
	t.Cleanup(func() { api.Close() })
	return &Runtime{api: api}
}

// A ref without a tag is saved as :latest: the engine saves every tag of a bare name,
// and each would move on the server.
func TestSaveImageSavesTheTaggedName(t *testing.T) {
	var asked []string
	r := fakeEngineAPI(t, func(w http.ResponseWriter, req *http.Request) {
		asked = append(asked, req.URL.Query()["names"]...)
		io.WriteString(w, "tar")
	})
	for ref, want := range map[string]string{
		"myapp":                            "myapp:latest",
		"myapp:v2":                         "myapp:v2",
		"docker.io/library/myapp":          "myapp:latest",
		"registry.example.com:5000/team/a": "registry.example.com:5000/team/a:latest",
	} {
		asked = nil
		var out bytes.Buffer
		require.NoError(t, r.SaveImage(context.Background(), ref, &out))
		require.Equal(t, []string{want}, asked, ref)
		require.Equal(t, "tar", out.String())
	}
}

// An error anywhere in the engine's answer to a load fails it, a stream line too (the
// containerd image store answers 200 and "Error unpacking image ...").
func TestLoadImageFailsOnAnErrorInTheAnswer(t *testing.T) {
	for name, tc := range map[string]struct {
		answer string
		err    string
	}{
		"loaded":       {answer: `{"stream":"Loaded image: app:v2\n"}`},
		"errorDetail":  {answer: `{"errorDetail":{"message":"open /var/lib/docker/tmp/x: no space left on device"},"error":"open /var/lib/docker/tmp/x: no space left on device"}`, err: "load image: open /var/lib/docker/tmp/x: no space left on device"},
		"error only":   {answer: `{"error":"unexpected EOF"}`, err: "load image: unexpected EOF"},
		"stream error": {answer: `{"stream":"Loaded image: app:v2\n"}` + "\n" + `{"stream":"Error unpacking image app:v2: content digest sha256:abc: not found\n"}`, err: "load image: Error unpacking image app:v2: content digest sha256:abc: not found"},
	} {
		t.Run(name, func(t *testing.T) {
			r := fakeEngineAPI(t, func(w http.ResponseWriter, req *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				io.Copy(io.Discard, req.Body)
				io.WriteString(w, tc.answer)
			})
			loaded, err := r.LoadImage(context.Background(), strings.NewReader("tar"))
			if tc.err == "" {
				require.NoError(t, err)
				require.Equal(t, []string{"Loaded image: app:v2"}, loaded)
				return
			}
			require.EqualError(t, err, tc.err)
		})
	}
}

// What the server's engine holds carries its platform; a local image its own.
func TestImagesSayTheirPlatform(t *testing.T) {
	r := fakeEngineAPI(t, func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch p := req.URL.Path; {
		case strings.HasSuffix(p, "/version"):
			io.WriteString(w, `{"Os":"linux","Arch":"amd64","ApiVersion":"1.41"}`)
		case strings.HasSuffix(p, "/images/json"):
			io.WriteString(w, `[{"Id":"sha256:1"}]`)
		case strings.HasSuffix(p, "/images/sha256:1/json"), strings.HasSuffix(p, "/images/mysql:8/json"):
			io.WriteString(w, `{"Id":"sha256:1","RepoTags":["mysql:8"],"RepoDigests":["mysql@sha256:2"],"Os":"linux","Architecture":"arm64","RootFS":{"Type":"layers","Layers":["sha256:a"]}}`)
		default:
			http.NotFound(w, req)
		}
	})
	s, err := r.Images(context.Background())
	require.NoError(t, err)
	require.Equal(t, ServerImages{Images: map[string][]string{"sha256:1": {"mysql:8"}}, Chains: []string{"sha256:a"}, Platform: "linux/amd64"}, s)
	img, err := r.LocalImage(context.Background(), "mysql:8")
	require.NoError(t, err)
	require.Equal(t, LocalImage{ID: "sha256:1", DiffIDs: []string{"sha256:a"}, Platform: "linux/arm64", RepoDigests: []string{"mysql@sha256:2"}}, img)
}

// On the real engine: a bare name saves name:latest alone, not every local tag of it.
func TestSaveImageOfABareNameOnTheEngine(t *testing.T) {
	r := engine(t)
	_, err := exec.LookPath("docker")
	need(t, "docker command", err)
	name := "handoff-test-bare-" + randomHex(t)
	t.Cleanup(func() { exec.Command("docker", "image", "rm", "-f", name+":latest", name+":old").Run() })
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "f"), []byte("1"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte("FROM scratch\nCOPY f /f\n"), 0o644))
	dockerCLI(t, dir, "build", "-q", "-t", name+":old", ".")
	require.NoError(t, os.WriteFile(filepath.Join(dir, "f"), []byte("2"), 0o644))
	dockerCLI(t, dir, "build", "-q", "-t", name+":latest", ".")

	saved, err := os.Create(filepath.Join(t.TempDir(), "bare.tar"))
	require.NoError(t, err)
	defer saved.Close()
	require.NoError(t, r.SaveImage(context.Background(), name, saved))
	red, err := ReduceSave(saved, io.Discard, func(string) bool { return false })
	require.NoError(t, err)
	require.Len(t, red.Images, 1, "one image, not every tag of %s", name)
	id, err := r.LocalImage(context.Background(), name+":latest")
	require.NoError(t, err)
	require.Equal(t, []string{id.ID}, red.Images)
}
