package testhost

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/client"
)

// RegistryVersion is the reference registry (distribution v3) scripts/install-registry.sh
// builds into .tools/.
const RegistryVersion = "3.1.2"

// RegistryPort is the port a test network's registry listens on, on the host's address
// there: each server's dockerd starts with --insecure-registry <HostIP>:5000, which must be
// known before any registry is, and every network has a /24 of its own, so the fixed port
// never clashes between tests.
const RegistryPort = 5000

// Registry is the reference registry on the host's address of a test network, plain HTTP
// and no login: the registry the servers pull from, as a cluster pulls from its team's.
// Its storage is a directory of the test's; it is stopped when the test ends.
type Registry struct {
	// Addr is "<HostIP>:5000", the prefix of every image pushed to it.
	Addr    string
	LogPath string
	cmd     *exec.Cmd
	exited  chan struct{}
}

// StartRegistry starts a registry on network's host address and waits until it answers.
func StartRegistry(t testing.TB, network *Network) *Registry {
	t.Helper()
	r, err := startRegistry(t, network)
	if err != nil {
		t.Fatalf("test registry: %v", err)
	}
	return r
}

func startRegistry(t testing.TB, network *Network) (*Registry, error) {
	t.Helper()
	bin, err := registryBinary()
	if err != nil {
		unavailable(t, "test registry: %v", err)
	}
	dir := t.TempDir()
	r := &Registry{Addr: net.JoinHostPort(network.HostIP, fmt.Sprint(RegistryPort)), LogPath: filepath.Join(dir, "registry.log"),
		exited: make(chan struct{})}
	config := fmt.Sprintf("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\nhttp:\n  addr: %s\n",
		filepath.Join(dir, "data"), r.Addr)
	if err := os.WriteFile(filepath.Join(dir, "config.yml"), []byte(config), 0o600); err != nil {
		return nil, err
	}
	logf, err := os.Create(r.LogPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	r.cmd = exec.Command(bin, "serve", filepath.Join(dir, "config.yml"))
	// No tracing exporter dialling localhost:4318 and logging its failures.
	r.cmd.Env = append(os.Environ(), "OTEL_TRACES_EXPORTER=none")
	r.cmd.Stdout, r.cmd.Stderr = logf, logf
	if err := r.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	go func() { r.cmd.Wait(); close(r.exited) }()
	t.Cleanup(func() {
		r.cmd.Process.Kill()
		<-r.exited
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		res, err := http.Get("http://" + r.Addr + "/v2/")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return r, nil
			}
			err = fmt.Errorf("GET /v2/: %s", res.Status)
		}
		select {
		case <-r.exited:
			return nil, fmt.Errorf("the registry exited at start (%v): %s", r.cmd.ProcessState, tail(r.LogPath, 5))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the registry did not answer on %s within 20s: %v: %s", r.Addr, err, tail(r.LogPath, 5))
		}
	}
}

var (
	registryOnce sync.Once
	registryBin  string
	registryErr  error
)

// registryBinary is the registry's path, installed by scripts/install-registry.sh the
// first time (once per test binary).
func registryBinary() (string, error) {
	registryOnce.Do(func() {
		registryBin = filepath.Join(repoRoot(), ".tools", "registry-"+RegistryVersion, "registry")
		if _, err := os.Stat(registryBin); err == nil {
			return
		}
		out, err := exec.Command("bash", filepath.Join(repoRoot(), "scripts", "install-registry.sh")).CombinedOutput()
		if err != nil {
			registryErr = fmt.Errorf("scripts/install-registry.sh failed: %v: %s", err, strings.TrimSpace(string(out)))
		}
	})
	return registryBin, registryErr
}

// Push pushes image (a tag on server s's engine, "hoff-testapp:1") to the registry from
// s and returns the reference every server pulls it by, "<Addr>/hoff-testapp:1". The
// host's engine cannot push here: it does not trust this address over plain HTTP, and
// its configuration is not the test's to change.
func (r *Registry) Push(t testing.TB, s *Server, image string) string {
	t.Helper()
	ref := r.Addr + "/" + image
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := s.Docker().ImageTag(ctx, client.ImageTagOptions{Source: image, Target: ref}); err != nil {
		t.Fatalf("server %d: tag %s as %s: %v", s.Index, image, ref, err)
	}
	// An empty auth ("{}"), as the docker CLI sends for a registry it has no login for.
	res, err := s.Docker().ImagePush(ctx, ref, client.ImagePushOptions{RegistryAuth: "e30="})
	if err == nil {
		err = res.Wait(ctx)
	}
	if err != nil {
		t.Fatalf("server %d: push %s: %v (registry log: %s)", s.Index, ref, err, tail(r.LogPath, 3))
	}
	return ref
}
