package testhost

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/client"
)

// A server's engine pulls nothing (it reaches no registry but the host's, if a test
// starts one), so its images are built on it, FROM scratch, by the test.

// TestAppDockerfile makes the test app's image, as internal/itest builds TestImage.
const TestAppDockerfile = "FROM scratch\nCOPY testapp /testapp\nEXPOSE 8000\nENTRYPOINT [\"/testapp\"]\n"

// BuildImage builds an image tagged tag on the server's engine from dockerfile and files
// (name → content, each a file of mode 0755, so binaries run). Nothing can be pulled
// there: FROM scratch, or an image already on the server.
func (s *Server) BuildImage(t testing.TB, tag, dockerfile string, files map[string][]byte) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	all := map[string][]byte{"Dockerfile": []byte(dockerfile)}
	for name, b := range files {
		all[name] = b
	}
	names := make([]string, 0, len(all))
	for name := range all {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o755, Size: int64(len(all[name])), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write(all[name])
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := s.Docker().ImageBuild(ctx, &buf, client.ImageBuildOptions{Tags: []string{tag}, Remove: true, ForceRemove: true})
	if err == nil {
		err = buildError(res.Body)
		res.Body.Close()
	}
	if err != nil {
		t.Fatalf("server %d: build %s: %v", s.Index, tag, err)
	}
}

// buildError reads a build's JSON message stream to its end and returns the error it
// reports, if any.
func buildError(r io.Reader) error {
	dec := json.NewDecoder(r)
	for {
		var m struct {
			Error       string
			ErrorDetail struct{ Message string }
		}
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return err
		}
		if m.Error != "" {
			return errors.New(m.Error)
		}
	}
}

// BuildTestImage builds the test app (./testapp, static) into an image tagged tag on the
// server, the same image internal/itest tags TestImage on the host.
func (s *Server) BuildTestImage(t testing.TB, tag string) {
	t.Helper()
	s.BuildImage(t, tag, TestAppDockerfile, map[string][]byte{"testapp": testApp(t)})
}

// BuildTestImageVersion is BuildTestImage with a label of version's own, so the image's
// digest is no other version's: a node must pull it before it runs it.
func (s *Server) BuildTestImageVersion(t testing.TB, tag, version string) {
	t.Helper()
	s.BuildImage(t, tag, TestAppDockerfile+"LABEL version="+strconv.Quote(version)+"\n", map[string][]byte{"testapp": testApp(t)})
}

// ProxyDockerfile is the Dockerfile users build handoff's proxy image from, relative
// to the repository's root: what a swarm runs its proxies and their switch jobs from.
const ProxyDockerfile = "deploy/Dockerfile.proxy"

// BuildHandoffImage builds handoff (./cmd/handoff, static) into an image tagged tag on
// the server, from deploy/Dockerfile.proxy as users do: its entrypoint is the user's,
// so a job or service that leans on it runs in tests as it would for them.
func (s *Server) BuildHandoffImage(t testing.TB, tag string) {
	t.Helper()
	dockerfile, err := os.ReadFile(filepath.Join(repoRoot(), ProxyDockerfile))
	if err != nil {
		t.Fatalf("the proxy image's Dockerfile: %v", err)
	}
	s.BuildImage(t, tag, string(dockerfile), map[string][]byte{"handoff": staticBinary(t, "./cmd/handoff")})
}

// testApp is the test app built static for Linux, once per test binary.
func testApp(t testing.TB) []byte { return staticBinary(t, "./testapp") }

var (
	buildsMu sync.Mutex
	builds   = map[string]*staticBuild{}
)

type staticBuild struct {
	once sync.Once
	bin  []byte
	err  error
}

// staticBinary is the package pkg of this module built static for Linux, once per
// test binary.
func staticBinary(t testing.TB, pkg string) []byte {
	t.Helper()
	buildsMu.Lock()
	b := builds[pkg]
	if b == nil {
		b = &staticBuild{}
		builds[pkg] = b
	}
	buildsMu.Unlock()
	b.once.Do(func() {
		dir, err := os.MkdirTemp("", "handoff-build-")
		if err != nil {
			b.err = err
			return
		}
		defer os.RemoveAll(dir)
		out := filepath.Join(dir, filepath.Base(pkg))
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
		cmd.Dir, cmd.Env = repoRoot(), append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
		if o, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("build %s: %v: %s", pkg, err, o)
			return
		}
		b.bin, b.err = os.ReadFile(out)
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.bin
}
