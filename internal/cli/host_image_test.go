package cli

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/deploy"
	"github.com/handoff-dev/handoff/internal/docker"
	"github.com/handoff-dev/handoff/internal/remote"
)

func hexSum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// savedImage is a small `docker save` tar (OCI layout) of three layers, their diff IDs
// and the image ID.
func savedImage(t *testing.T) ([]byte, []string, string) {
	t.Helper()
	var diffs, paths []string
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(name string, data []byte) {
		require.NoError(t, tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}))
		_, err := tw.Write(data)
		require.NoError(t, err)
	}
	for i := range 3 {
		data := bytes.Repeat([]byte{byte('a' + i)}, 10000)
		diffs = append(diffs, "sha256:"+hexSum(data))
		paths = append(paths, "blobs/sha256/"+hexSum(data))
		add(paths[i], data)
	}
	cfg, _ := json.Marshal(map[string]any{"rootfs": map[string]any{"type": "layers", "diff_ids": diffs}})
	add("blobs/sha256/"+hexSum(cfg), cfg)
	m, _ := json.Marshal([]map[string]any{{"Config": "blobs/sha256/" + hexSum(cfg), "RepoTags": []string{"app:v2"}, "Layers": paths}})
	add("manifest.json", m)
	require.NoError(t, tw.Close())
	return buf.Bytes(), diffs, "sha256:" + hexSum(cfg)
}

type fakeEngine struct {
	saved    []byte
	diffs    []string
	id       string
	platform string   // os/arch of the image
	digests  []string // its RepoDigests
	saveErr  error
	built    []string
	closed   bool
	files    []string // the files saved to
}

func (e *fakeEngine) LocalImage(_ context.Context, ref string) (docker.LocalImage, error) {
	if e.saved == nil {
		return docker.LocalImage{}, cerrdefs.ErrNotFound
	}
	return docker.LocalImage{ID: e.id, DiffIDs: e.diffs, Platform: e.platform, RepoDigests: e.digests}, nil
}
func (e *fakeEngine) SaveImage(_ context.Context, _ string, w io.Writer) error {
	if f, ok := w.(*os.File); ok {
		e.files = append(e.files, f.Name())
	}
	if e.saveErr != nil {
		return e.saveErr
	}
	_, err := w.Write(e.saved)
	return err
}
func (e *fakeEngine) Build(_ context.Context, spec deploy.BuildSpec, tag string, _ io.Writer) error {
	e.built = append(e.built, tag+" "+spec.Context)
	return nil
}
func (e *fakeEngine) Close() error { e.closed = true; return nil }

// imageServer is a server whose handoff answers `image present` with what it has and
// reads what `image load` is sent.
type imageServer struct {
	mu      sync.Mutex
	cmds    []string
	has     docker.ServerImages
	refuse  bool       // the first load fails, as an engine that wants every layer
	fail    bool       // every load fails
	noList  bool       // image present fails
	loads   [][]string // the entries of each tar loaded
	crossed int64
}

func (s *imageServer) Run(_ context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cmds = append(s.cmds, cmd)
	switch {
	case strings.HasSuffix(cmd, " image present --host=local"):
		if s.noList {
			fmt.Fprintln(stderr, "handoff: cannot reach the Docker engine at unix:///var/run/docker.sock")
			return 1, nil
		}
		return 0, json.NewEncoder(stdout).Encode(s.has)
	case strings.HasSuffix(cmd, " image load --host=local"):
		raw, err := io.ReadAll(stdin)
		if err != nil {
			return 0, err
		}
		s.crossed += int64(len(raw))
		// As the server's handoff: a stream cut short is its error.
		zr, err := gzip.NewReader(bytes.NewReader(raw))
		if err != nil {
			fmt.Fprintf(stderr, "handoff: load image: read the stream: %v\n", err)
			return 1, nil
		}
		var names []string
		tr := tar.NewReader(zr)
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				fmt.Fprintf(stderr, "handoff: load image: %v\n", err)
				return 1, nil
			}
			names = append(names, h.Name)
		}
		s.loads = append(s.loads, names)
		if s.fail {
			fmt.Fprintln(stdout, "Loaded image: app:v2")
			fmt.Fprintln(stderr, "handoff: load image: Error unpacking image app:v2: no space left on device")
			return 1, nil
		}
		if s.refuse && len(s.loads) == 1 {
			fmt.Fprintln(stderr, "handoff: load image: content digest sha256:abc: not found")
			return 1, nil
		}
		return 0, nil
	}
	return 127, nil
}
func (s *imageServer) Upload(context.Context, io.Reader, string, fs.FileMode) error { return nil }
func (s *imageServer) Done() <-chan struct{}                                        { return nil }
func (s *imageServer) Close() error                                                 { return nil }
func (s *imageServer) String() string                                               { return "root@server:22" }

func imageRun(t *testing.T, srv *imageServer, eng *fakeEngine, engErr error, images ...imageToSend) (*hostRun, *bytes.Buffer) {
	t.Helper()
	t.Setenv("XDG_CACHE_HOME", t.TempDir()) // where the saved image goes
	var errb bytes.Buffer
	tg, err := remote.Parse("ssh://root@server")
	require.NoError(t, err)
	h := &hostRun{common: &common{io: &IO{Out: io.Discard, Err: &errb}}, target: tg, conn: srv, images: images,
		args: []string{"deploy", "--host=local", "--json=true"},
		dialEngine: func(context.Context) (localEngine, error) {
			if engErr != nil {
				return nil, engErr
			}
			return eng, nil
		}}
	return h, &errb
}

func TestImageSentWithTheLayersTheServerLacks(t *testing.T) {
	saved, diffs, id := savedImage(t)
	chains := docker.ChainIDs(diffs)
	bin := ".cache/handoff/bin/handoff-v1"

	t.Run("the base is there: one layer crosses", func(t *testing.T) {
		srv := &imageServer{has: docker.ServerImages{Images: map[string][]string{"sha256:base": {"base:1"}}, Chains: chains[:2]}}
		eng := &fakeEngine{saved: saved, diffs: diffs, id: id}
		h, errb := imageRun(t, srv, eng, nil, imageToSend{ref: "app:v2"})
		require.NoError(t, h.sendImages(context.Background(), bin))
		require.Equal(t, []string{bin + " image present --host=local", bin + " image load --host=local"}, srv.cmds)
		require.Len(t, srv.loads, 1)
		require.Equal(t, []string{"blobs/sha256/" + strings.TrimPrefix(diffs[2], "sha256:"), "blobs/sha256/" + strings.TrimPrefix(id, "sha256:"), "manifest.json"}, srv.loads[0])
		require.Equal(t, fmt.Sprintf("image app:v2 to ssh://root@server: 1 of 3 layers sent, %s (all layers: 30.0 kB)\n", byteSize(srv.crossed)), errb.String())
		require.True(t, eng.closed)
	})
	t.Run("the image is there under its tag: nothing crosses", func(t *testing.T) {
		srv := &imageServer{has: docker.ServerImages{Images: map[string][]string{id: {"app:v2"}}, Chains: chains}}
		h, errb := imageRun(t, srv, &fakeEngine{saved: saved, diffs: diffs, id: id}, nil, imageToSend{ref: "docker.io/library/app:v2"})
		require.NoError(t, h.sendImages(context.Background(), bin))
		require.Len(t, srv.cmds, 1)
		require.Equal(t, "image docker.io/library/app:v2 on ssh://root@server already: nothing sent\n", errb.String())
	})
	t.Run("there under another tag: the tar without any layer tags it", func(t *testing.T) {
		srv := &imageServer{has: docker.ServerImages{Images: map[string][]string{id: {"app:old"}}, Chains: chains}}
		h, errb := imageRun(t, srv, &fakeEngine{saved: saved, diffs: diffs, id: id}, nil, imageToSend{ref: "app:v2"})
		require.NoError(t, h.sendImages(context.Background(), bin))
		require.Equal(t, []string{"blobs/sha256/" + strings.TrimPrefix(id, "sha256:"), "manifest.json"}, srv.loads[0])
		require.Contains(t, errb.String(), ": 0 of 3 layers sent, ")
	})
	t.Run("an engine that wants every layer is sent the whole image once", func(t *testing.T) {
		srv := &imageServer{refuse: true, has: docker.ServerImages{Chains: chains[:2]}}
		h, errb := imageRun(t, srv, &fakeEngine{saved: saved, diffs: diffs, id: id}, nil, imageToSend{ref: "app:v2"})
		require.NoError(t, h.sendImages(context.Background(), bin))
		require.Len(t, srv.loads, 2)
		require.Len(t, srv.loads[1], 5, "every layer, the config and the manifest")
		require.Contains(t, errb.String(), ": 3 of 3 layers sent, ")
		require.Contains(t, errb.String(), "(its engine refused the image without the layers it has: handoff: load image: content digest sha256:abc: not found; sent whole)")
	})
	t.Run("not on the local engine: the server pulls it", func(t *testing.T) {
		srv := &imageServer{}
		h, errb := imageRun(t, srv, &fakeEngine{}, nil, imageToSend{ref: "registry.example.com/app:v2"})
		require.NoError(t, h.sendImages(context.Background(), bin))
		require.Empty(t, srv.cmds)
		require.Empty(t, errb.String())
	})
	t.Run("no local engine: said, and the deploy goes on", func(t *testing.T) {
		srv := &imageServer{}
		h, errb := imageRun(t, srv, nil, errors.New("cannot reach the Docker engine at unix:///var/run/docker.sock"), imageToSend{ref: "app:v2"})
		require.NoError(t, h.sendImages(context.Background(), bin))
		require.Empty(t, srv.cmds)
		require.Equal(t, "image app:v2 not sent to ssh://root@server: cannot reach the Docker engine at unix:///var/run/docker.sock; the server's deploy pulls it from its registry\n", errb.String())
	})
	t.Run("build: here, and the server deploys what was built", func(t *testing.T) {
		srv := &imageServer{has: docker.ServerImages{Chains: chains[:2]}}
		eng := &fakeEngine{saved: saved, diffs: diffs, id: id}
		h, _ := imageRun(t, srv, eng, nil, imageToSend{ref: "web:latest", build: &deploy.BuildSpec{Context: "/src"}})
		require.NoError(t, h.sendImages(context.Background(), bin))
		require.Equal(t, []string{"web:latest /src"}, eng.built)
		require.Equal(t, []string{"deploy", "--host=local", "--image=web:latest", "--pull=never", "--json=true"}, h.args)
		require.Len(t, srv.loads, 1)
	})
	t.Run("two services of one image: it crosses once", func(t *testing.T) {
		srv := &imageServer{has: docker.ServerImages{Chains: chains[:2]}}
		h, errb := imageRun(t, srv, &fakeEngine{saved: saved, diffs: diffs, id: id}, nil, imageToSend{ref: "app:v2"}, imageToSend{ref: "app:v2"})
		require.NoError(t, h.sendImages(context.Background(), bin))
		require.Len(t, srv.loads, 1)
		require.Contains(t, errb.String(), "image app:v2 on ssh://root@server already: nothing sent\n")
	})
	t.Run("build: with no local engine stops the command", func(t *testing.T) {
		h, _ := imageRun(t, &imageServer{}, nil, errors.New("cannot reach the Docker engine"), imageToSend{ref: "web:latest", build: &deploy.BuildSpec{Context: "/src"}})
		require.ErrorContains(t, h.sendImages(context.Background(), bin), "build web:latest here for ssh://root@server: cannot reach the Docker engine")
	})
}

// An image a registry has (RepoDigests), of which the server has another image under
// the tag, is left to the server, so a stale copy here does not replace a newer one
// there; the server having none under the tag, it is sent (an engine with the
// containerd image store lists digests for the images it built too).
func TestImageOfARegistryIsLeftToTheServer(t *testing.T) {
	saved, diffs, id := savedImage(t)
	bin := ".cache/handoff/bin/handoff-v1"
	srv := &imageServer{has: docker.ServerImages{Images: map[string][]string{"sha256:newer": {"mysql:8"}}}}
	h, errb := imageRun(t, srv, &fakeEngine{saved: saved, diffs: diffs, id: id, digests: []string{"mysql@sha256:1"}}, nil, imageToSend{ref: "mysql:8"})
	require.NoError(t, h.sendImages(context.Background(), bin))
	require.Empty(t, srv.loads)
	require.Equal(t, "image mysql:8 here is not ssh://root@server's image of that tag, which it deploys (pull: always fetches the registry's newest; a tag of its own for each build sends yours)\n", errb.String())

	srv = &imageServer{}
	h, _ = imageRun(t, srv, &fakeEngine{saved: saved, diffs: diffs, id: id, digests: []string{"app@sha256:1"}}, nil, imageToSend{ref: "app:v2"})
	require.NoError(t, h.sendImages(context.Background(), bin))
	require.Len(t, srv.loads, 1, "none under the tag there: sent")

	// Built here for the deploy, it is sent whatever its digests (the server deploys it
	// with --pull=never).
	srv = &imageServer{}
	h, _ = imageRun(t, srv, &fakeEngine{saved: saved, diffs: diffs, id: id, digests: []string{"web@sha256:1"}}, nil, imageToSend{ref: "web:latest", build: &deploy.BuildSpec{Context: "/src"}})
	require.NoError(t, h.sendImages(context.Background(), bin))
	require.Len(t, srv.loads, 1)
}

// An image of another platform than the server's engine is not sent (it would replace
// the server's tag with one that fails with "exec format error"), and the command stops:
// the server would deploy what it has under the tag.
func TestImageOfAnotherPlatformIsNotSent(t *testing.T) {
	saved, diffs, id := savedImage(t)
	bin := ".cache/handoff/bin/handoff-v1"
	const line = "image app:v2 is linux/arm64 here and ssh://root@server runs linux/amd64: nothing sent, nothing was deployed; build it for the server (docker build --platform linux/amd64, or DOCKER_DEFAULT_PLATFORM=linux/amd64) or push it to a registry the server pulls from"

	for _, build := range []*deploy.BuildSpec{nil, {Context: "/src"}} {
		srv := &imageServer{has: docker.ServerImages{Platform: "linux/amd64"}}
		h, _ := imageRun(t, srv, &fakeEngine{saved: saved, diffs: diffs, id: id, platform: "linux/arm64"}, nil, imageToSend{ref: "app:v2", build: build})
		err := h.sendImages(context.Background(), bin)
		require.ErrorIs(t, err, deploy.ErrConfig)
		require.Equal(t, ExitUsage, ExitCode(err))
		require.EqualError(t, err, "invalid configuration: "+line)
		require.Empty(t, srv.loads)
	}

	// A registry's image pulled here for this machine: the server pulls its own platform's.
	srv := &imageServer{has: docker.ServerImages{Platform: "linux/amd64"}}
	h, errb := imageRun(t, srv, &fakeEngine{saved: saved, diffs: diffs, id: id, platform: "linux/arm64", digests: []string{"postgres@sha256:1"}}, nil, imageToSend{ref: "postgres:16"})
	require.NoError(t, h.sendImages(context.Background(), bin))
	require.Empty(t, srv.loads)
	require.Equal(t, "image postgres:16 is linux/arm64 here and ssh://root@server runs linux/amd64: not sent, the server pulls it from its registry\n", errb.String())

	srv = &imageServer{has: docker.ServerImages{Platform: "linux/amd64"}}
	h, _ = imageRun(t, srv, &fakeEngine{saved: saved, diffs: diffs, id: id, platform: "linux/amd64"}, nil, imageToSend{ref: "app:v2", build: &deploy.BuildSpec{Context: "/src"}})
	require.NoError(t, h.sendImages(context.Background(), bin))
	require.Len(t, srv.loads, 1, "the same platform: sent")
}

// An image from no registry that cannot be sent stops the deploy: the server cannot
// pull it, and would deploy what it has under the tag or fail later.
func TestImageNotSentStopsTheDeploy(t *testing.T) {
	saved, diffs, id := savedImage(t)
	bin := ".cache/handoff/bin/handoff-v1"
	t.Run("the server's engine fails the load", func(t *testing.T) {
		srv := &imageServer{fail: true, has: docker.ServerImages{Images: map[string][]string{"sha256:old": {"app:v2"}}}}
		h, _ := imageRun(t, srv, &fakeEngine{saved: saved, diffs: diffs, id: id}, nil, imageToSend{ref: "app:v2"})
		err := h.sendImages(context.Background(), bin)
		require.EqualError(t, err, "image app:v2 not sent to ssh://root@server: handoff: load image: Error unpacking image app:v2: no space left on device; nothing was deployed (the image is in no registry the server could pull it from)")
	})
	t.Run("the server cannot say what it has", func(t *testing.T) {
		srv := &imageServer{noList: true}
		h, _ := imageRun(t, srv, &fakeEngine{saved: saved, diffs: diffs, id: id}, nil, imageToSend{ref: "app:v2"})
		err := h.sendImages(context.Background(), bin)
		require.ErrorContains(t, err, "image app:v2 not sent to ssh://root@server: ")
		require.ErrorContains(t, err, "cannot reach the Docker engine at unix:///var/run/docker.sock; nothing was deployed")
		require.Len(t, srv.cmds, 1)
	})
	t.Run("saved here, it cannot be read", func(t *testing.T) {
		srv := &imageServer{}
		h, _ := imageRun(t, srv, &fakeEngine{saved: []byte("not a tar"), diffs: diffs, id: id}, nil, imageToSend{ref: "app:v2"})
		err := h.sendImages(context.Background(), bin)
		require.ErrorIs(t, err, errCutHere)
		require.ErrorContains(t, err, "image app:v2 not sent to ssh://root@server: cut down the image saved here: not a docker save tar")
		require.NotContains(t, err.Error(), "read the stream", "the local error, not the server's of the stream cut short")
		require.Equal(t, 1, strings.Count(strings.Join(srv.cmds, "\n"), "image load"), "not sent whole after")
	})
}

// The whole image is saved under the user's cache directory (the temp directory is
// RAM on many systems), and removed after, also when the save fails or is stopped.
func TestImageSavedInTheCacheDirAndRemoved(t *testing.T) {
	saved, diffs, id := savedImage(t)
	bin := ".cache/handoff/bin/handoff-v1"
	for name, tc := range map[string]struct {
		saveErr error
		ctx     func() context.Context
	}{
		"sent":       {},
		"save fails": {saveErr: errors.New("save image app:v2: no space left on device")},
		"Ctrl-C": {saveErr: context.Canceled, ctx: func() context.Context {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx
		}},
	} {
		t.Run(name, func(t *testing.T) {
			eng := &fakeEngine{saved: saved, diffs: diffs, id: id, saveErr: tc.saveErr}
			h, _ := imageRun(t, &imageServer{}, eng, nil, imageToSend{ref: "app:v2"})
			ctx := context.Background()
			if tc.ctx != nil {
				ctx = tc.ctx()
			}
			err := h.sendImages(ctx, bin)
			if tc.saveErr == nil {
				require.NoError(t, err)
			} else {
				require.Error(t, err)
			}
			dir := filepath.Join(os.Getenv("XDG_CACHE_HOME"), "handoff", "tmp")
			require.Len(t, eng.files, 1)
			require.Equal(t, dir, filepath.Dir(eng.files[0]))
			require.NoFileExists(t, eng.files[0])
			st, err := os.Stat(dir)
			require.NoError(t, err)
			require.Equal(t, os.FileMode(0o700), st.Mode().Perm())
		})
	}
}

func TestByteSize(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 999: "999 B", 1518: "1.5 kB", 1_200_000: "1.2 MB", 104_900_000: "104.9 MB", 2_500_000_000: "2.50 GB"} {
		require.Equal(t, want, byteSize(n))
	}
}

// A deploy through --host sends the image handoff.yml names, or --image, or builds
// build: here; other commands send nothing.
func TestDeployImagesFromTheLocalFiles(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	write(t, dir+"/handoff.yml", "service: web\nimage: registry.example.com/web:v2\nport: 8000\n")
	c := &common{}
	require.Equal(t, []imageToSend{{ref: "registry.example.com/web:v2"}}, c.deployImages(context.Background(), nil))
	require.Equal(t, []imageToSend{{ref: "registry.example.com/web:v2"}}, c.deployImages(context.Background(), []string{"https://web.example.com/"}), "--verify's URL")
	c.overrides.Image = "web:v3"
	require.Equal(t, []imageToSend{{ref: "web:v3"}}, c.deployImages(context.Background(), nil))
	write(t, dir+"/handoff.yml", "service: web\nbuild: .\nport: 8000\n")
	c = &common{}
	require.Equal(t, []imageToSend{{ref: "web:latest", build: &deploy.BuildSpec{Context: "."}}}, c.deployImages(context.Background(), nil))
	c.overrides.Image = "web:v3"
	require.Equal(t, []imageToSend{{ref: "web:v3"}}, c.deployImages(context.Background(), nil), "an explicit image is not built")
}

// A compose deploy sends each service's image; a service with build: is left to the
// server, which builds it whatever is sent.
func TestDeployImagesOfAComposeProject(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	write(t, dir+"/compose.yaml", "services:\n  web:\n    image: registry.example.com/web:v2\n  worker:\n    build: .\n    image: worker:dev\n")
	c := &common{files: []string{"compose.yaml"}}
	got := c.deployImages(context.Background(), []string{"web", "worker"})
	require.Equal(t, []imageToSend{{ref: "registry.example.com/web:v2"}}, got)
}

// A save a killed handoff left (older than a day) goes at the next send; one of
// today, perhaps another send's, stays.
func TestSaveFilesAKilledSendLeftAreSwept(t *testing.T) {
	dir := t.TempDir()
	old, fresh := filepath.Join(dir, "image-1.tar"), filepath.Join(dir, "image-2.tar")
	for _, f := range []string{old, fresh} {
		require.NoError(t, os.WriteFile(f, []byte("tar"), 0o600))
	}
	yesterday := time.Now().Add(-25 * time.Hour)
	require.NoError(t, os.Chtimes(old, yesterday, yesterday))
	sweepSaveFiles(dir, time.Now().Add(-staleSave))
	_, err := os.Stat(old)
	require.ErrorIs(t, err, os.ErrNotExist)
	_, err = os.Stat(fresh)
	require.NoError(t, err)
}
