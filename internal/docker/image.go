package docker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"slices"
	"strings"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/docker/cli/cli/config"
	"github.com/moby/moby/api/pkg/authconfig"
	"github.com/moby/moby/api/types/registry"
	"github.com/moby/moby/client"
	"github.com/moby/moby/client/pkg/jsonmessage"

	"github.com/handoff-dev/handoff/internal/deploy"
	"github.com/handoff-dev/handoff/internal/hostcmd"
)

// Build runs the docker CLI, so that BuildKit, buildx and the user's
// builder settings apply exactly as when they build by hand.
func (r *Runtime) Build(ctx context.Context, spec deploy.BuildSpec, tag string, out io.Writer) error {
	args, env := buildCommand(spec, tag, os.Environ())
	cmd := hostcmd.CommandContext(ctx, "docker", args...) // a deploy's timeout ends the build whole
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Run(); err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return fmt.Errorf("build %s: the docker command is not installed; build the image yourself and pass --image", tag)
		}
		return fmt.Errorf("docker build %s: %w (its output is above)", spec.Context, err)
	}
	return nil
}

// buildCommand is `docker build`'s command line and environment (environ
// and the build arguments). A build argument goes on the command line as
// its name alone, `--build-arg NPM_TOKEN`, and its value in the command's
// environment, where the CLI (and buildx) read it: a command line is
// readable by every local user in the process list, an environment by the
// process's own user only. A name the docker command itself reads
// (DOCKER_HOST, PATH, a proxy, ...) would change how it runs: such an
// argument keeps its value on the command line.
func buildCommand(spec deploy.BuildSpec, tag string, environ []string) (args, env []string) {
	args = []string{"build", "--tag", tag}
	if spec.Dockerfile != "" {
		args = append(args, "--file", spec.Dockerfile)
	}
	if spec.Target != "" {
		args = append(args, "--target", spec.Target)
	}
	env = slices.Clone(environ)
	for _, k := range slices.Sorted(maps.Keys(spec.Args)) {
		if cliReads(k) {
			args = append(args, "--build-arg", k+"="+spec.Args[k])
			continue
		}
		env = slices.DeleteFunc(env, func(kv string) bool { return strings.HasPrefix(kv, k+"=") })
		env = append(env, k+"="+spec.Args[k])
		args = append(args, "--build-arg", k)
	}
	return append(args, spec.Context), env
}

// cliReads says whether the docker command (or a plugin, or the dynamic
// loader before it) reads the environment variable name for itself.
func cliReads(name string) bool {
	upper := strings.ToUpper(name)
	for _, prefix := range []string{"DOCKER_", "BUILDKIT_", "BUILDX_", "LD_"} {
		if strings.HasPrefix(upper, prefix) {
			return true
		}
	}
	switch upper {
	case "", "PATH", "HOME", "TMPDIR", "SSH_AUTH_SOCK",
		"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY",
		"GODEBUG", "GOGC", "GOMAXPROCS", "GOMEMLIMIT", "GOTRACEBACK":
		return true
	}
	return strings.ContainsAny(name, "=\x00")
}

// ImageID resolves ref to the local image's ID.
func (r *Runtime) ImageID(ctx context.Context, ref string) (string, error) {
	img, err := r.api.ImageInspect(ctx, ref)
	if cerrdefs.IsNotFound(err) {
		return "", fmt.Errorf("%w: %q is not on this Docker host: build it, `docker pull` it, set `build:` in handoff.yml, or let handoff pull it (--pull missing, the default)", deploy.ErrImageNotFound, ref)
	}
	if err != nil {
		return "", fmt.Errorf("inspect image %s: %w", ref, err)
	}
	return img.ID, nil
}

// Pull fetches ref from its registry. Credentials are the Docker CLI's,
// found as `docker pull` finds them: DOCKER_CONFIG (else ~/.docker), its
// config.json's auths, credsStore and credHelpers, read with the CLI's own
// config and credential-helper packages. Progress goes to out: a bar per
// layer on a terminal, a line per change elsewhere.
func (r *Runtime) Pull(ctx context.Context, ref string, out io.Writer) error {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return fmt.Errorf("%w: image %q is not an image reference: %v", deploy.ErrConfig, ref, err)
	}
	host := reference.Domain(named)
	creds, err := credentials(host)
	if err != nil {
		return fmt.Errorf("%w: %s: the Docker credentials for %s cannot be read: %v (check %s, or run `docker login %s` again)", deploy.ErrPull, ref, host, err, creds.file, host)
	}
	resp, err := r.api.ImagePull(ctx, named.String(), client.ImagePullOptions{RegistryAuth: creds.encoded})
	if err == nil {
		fd, term := terminal(out)
		err = jsonmessage.DisplayJSONMessages(resp.JSONMessages(ctx), out, fd, term, nil)
	}
	if err != nil {
		return pullError(ref, host, creds, err)
	}
	return nil
}

// RegistryAuth is the X-Registry-Auth value for ref's registry from the
// user's Docker credentials, as Pull finds them; "" when there are none.
// A swarm's nodes pull a service's image with what its every write carries.
func RegistryAuth(ref string) (string, error) {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return "", fmt.Errorf("%w: image %q is not an image reference: %v", deploy.ErrConfig, ref, err)
	}
	host := reference.Domain(named)
	creds, err := credentials(host)
	if err != nil {
		return "", fmt.Errorf("the Docker credentials for %s cannot be read: %v (check %s, or run `docker login %s` again)", host, err, creds.file, host)
	}
	return creds.encoded, nil
}

// found is what the user's Docker configuration holds for one registry.
type found struct {
	file    string // the config.json read
	encoded string // the X-Registry-Auth header's value; "" : none
	store   string // "" : the file's auths; else the helper that gave them
}

func credentials(host string) (found, error) {
	cfg, err := config.Load(os.Getenv(config.EnvOverrideConfigDir)) // "" : ~/.docker
	f := found{}
	if cfg != nil {
		f.file = cfg.Filename
	}
	if err != nil {
		return f, err
	}
	ac, err := cfg.GetAuthConfig(host)
	if err != nil {
		return f, err
	}
	if helper := cfg.CredentialHelpers[host]; helper != "" {
		f.store = "docker-credential-" + helper
	} else if cfg.CredentialsStore != "" {
		f.store = "docker-credential-" + cfg.CredentialsStore
	}
	if ac.Username == "" && ac.Password == "" && ac.IdentityToken == "" && ac.RegistryToken == "" {
		return f, nil
	}
	f.encoded, err = authconfig.Encode(registry.AuthConfig{
		Username: ac.Username, Password: ac.Password, Auth: ac.Auth, ServerAddress: ac.ServerAddress,
		IdentityToken: ac.IdentityToken, RegistryToken: ac.RegistryToken,
	})
	return f, err
}

// pullError says why a pull failed and what to run; it never prints a credential.
func pullError(ref, host string, creds found, err error) error {
	msg := err.Error()
	lower := strings.ToLower(msg)
	from := creds.file
	if creds.store != "" {
		from = creds.store + " (" + creds.file + ")"
	}
	switch {
	case cerrdefs.IsUnauthorized(err) || strings.Contains(lower, "unauthorized") || strings.Contains(lower, "authentication required") ||
		strings.Contains(lower, "no basic auth credentials") || strings.Contains(lower, "denied"):
		if creds.encoded == "" {
			return fmt.Errorf("%w: %s: %s wants a login and %s has none for it: run `docker login %s`, then deploy again (nothing was changed)", deploy.ErrPull, ref, host, from, host)
		}
		return fmt.Errorf("%w: %s: %s refused the credentials from %s (%s): run `docker login %s` with the right user, then deploy again (nothing was changed)", deploy.ErrPull, ref, host, from, firstLine(msg), host)
	case cerrdefs.IsNotFound(err) || strings.Contains(lower, "manifest unknown") || strings.Contains(lower, "not found"):
		return fmt.Errorf("%w: %s: %s has no such image or tag (%s): check the name and tag (nothing was changed)", deploy.ErrPull, ref, host, firstLine(msg))
	}
	return fmt.Errorf("%w: %s from %s: %s (can this host reach %s? nothing was changed)", deploy.ErrPull, ref, host, firstLine(msg), host)
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

// terminal says whether out is a terminal, for progress bars.
func terminal(out io.Writer) (uintptr, bool) {
	f, ok := out.(*os.File)
	if !ok {
		return 0, false
	}
	st, err := f.Stat()
	if err != nil || st.Mode()&os.ModeCharDevice == 0 {
		return 0, false
	}
	return f.Fd(), true
}

// Digest is the registry digest ref's repository gave image imageID
// (name@sha256:…), or "" when it came from no registry (built here).
func (r *Runtime) Digest(ctx context.Context, imageID, ref string) (string, error) {
	img, err := r.api.ImageInspect(ctx, imageID)
	if err != nil {
		return "", err
	}
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return "", nil
	}
	for _, d := range img.RepoDigests {
		if dn, err := reference.ParseNormalizedNamed(d); err == nil && dn.Name() == named.Name() {
			return d, nil
		}
	}
	return "", nil
}
