package itest

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/handoff-dev/handoff/internal/testhost"
)

// RegistryVersion is the reference registry scripts/install-registry.sh builds.
const RegistryVersion = testhost.RegistryVersion

// Registry is the reference container registry (distribution v3) on
// loopback, with htpasswd authentication: the registry a team pushes its
// images to from CI. Docker pulls from 127.0.0.1 over plain HTTP.
type Registry struct {
	Addr     string // 127.0.0.1:port
	User     string
	Password string
	t        testing.TB
}

// StartRegistry runs the registry with one user until the test ends.
func StartRegistry(t testing.TB) *Registry {
	t.Helper()
	bin := filepath.Join(RepoRoot(t), ".tools", "registry-"+RegistryVersion, "registry")
	_, err := os.Stat(bin)
	need(t, "registry binary (scripts/install-registry.sh)", err)
	dir := t.TempDir()
	r := &Registry{Addr: "127.0.0.1:" + Itoa(FreePort(t)), User: "ci", Password: randomHex(8), t: t}
	hash, err := bcrypt.GenerateFromPassword([]byte(r.Password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "htpasswd"), r.User+":"+string(hash)+"\n")
	write(t, filepath.Join(dir, "config.yml"), fmt.Sprintf(`version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: %s
http:
  addr: %s
auth:
  htpasswd:
    realm: handoff-test
    path: %s
`, filepath.Join(dir, "data"), r.Addr, filepath.Join(dir, "htpasswd")))
	cmd := exec.Command(bin, "serve", filepath.Join(dir, "config.yml"))
	logs := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	WaitFor(t, 20*time.Second, "the registry to answer", func() bool {
		resp, err := http.Get("http://" + r.Addr + "/v2/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusUnauthorized
	})
	return r
}

// DockerConfig writes a Docker CLI configuration directory (what
// DOCKER_CONFIG names) holding user:password for the registry, as
// `docker login` leaves it without a credential helper.
func (r *Registry) DockerConfig(user, password string) string {
	r.t.Helper()
	dir := r.t.TempDir()
	auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + password))
	cfg, _ := json.Marshal(map[string]any{"auths": map[string]any{r.Addr: map[string]string{"auth": auth}}})
	write(r.t, filepath.Join(dir, "config.json"), string(cfg))
	return dir
}

// HelperConfig writes a Docker CLI configuration that names a credential
// helper for the registry (credHelpers), and that helper: a script
// docker-credential-<name> in bin that answers `get` with user:password,
// as `docker login` with a helper leaves it. Put bin on PATH.
func (r *Registry) HelperConfig(name, user, password string) (dir, bin string) {
	r.t.Helper()
	dir, bin = r.t.TempDir(), r.t.TempDir()
	cfg, _ := json.Marshal(map[string]any{"credHelpers": map[string]string{r.Addr: name}})
	write(r.t, filepath.Join(dir, "config.json"), string(cfg))
	answer, _ := json.Marshal(map[string]string{"ServerURL": r.Addr, "Username": user, "Secret": password})
	script := fmt.Sprintf("#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\n[ \"$server\" = %q ] || { echo 'credentials not found in native keychain'; exit 1; }\necho '%s'\n", r.Addr, answer)
	path := filepath.Join(bin, "docker-credential-"+name)
	write(r.t, path, script)
	if err := os.Chmod(path, 0o755); err != nil {
		r.t.Fatal(err)
	}
	return dir, bin
}

// Push tags image as ref and pushes it, logged in with a private
// configuration; the local tag is removed again (the image stays), so a
// deploy of ref must pull it. It returns ref's digest (name@sha256:…).
func (r *Registry) Push(image, ref string) string {
	r.t.Helper()
	cfg := r.DockerConfig(r.User, r.Password)
	docker := func(args ...string) string {
		r.t.Helper()
		out, err := exec.Command("docker", append([]string{"--config", cfg}, args...)...).CombinedOutput()
		if err != nil {
			r.t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	docker("tag", image, ref)
	out := docker("push", ref)
	docker("rmi", ref)
	i := strings.Index(out, "digest: sha256:")
	if i < 0 {
		r.t.Fatalf("no digest in the push's output:\n%s", out)
	}
	digest := strings.Fields(out[i+len("digest: "):])[0]
	name, _, _ := strings.Cut(ref, ":"+lastTag(ref))
	return name + "@" + digest
}

func lastTag(ref string) string {
	i := strings.LastIndex(ref, ":")
	if i < 0 || strings.Contains(ref[i:], "/") {
		return "latest"
	}
	return ref[i+1:]
}

// VariantImage builds an image like TestImage with another ID (a label
// differs), for a tag that moves; removed when the test ends.
func VariantImage(t testing.TB, tag, mark string) string {
	t.Helper()
	cmd := exec.Command("docker", "build", "-q", "-t", tag, "-")
	cmd.Stdin = strings.NewReader("FROM " + TestImage + "\nLABEL handoff-test-variant=" + mark + "\n")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("build %s: %v\n%s", tag, err, errb.String())
	}
	id := strings.TrimSpace(out.String())
	t.Cleanup(func() { RemoveImages(tag, id) }) // by ID too: a pull by digest names it as well
	return id
}

// RemoveImages removes images by reference, quietly (what is already gone is fine).
func RemoveImages(refs ...string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = exec.CommandContext(ctx, "docker", append([]string{"rmi", "-f"}, refs...)...).Run()
}

func write(t testing.TB, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}
