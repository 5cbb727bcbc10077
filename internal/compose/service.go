package compose

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/compose-spec/compose-go/v2/types"
	"go.yaml.in/yaml/v3"

	"github.com/handoff-dev/handoff/internal/config"
	"github.com/handoff-dev/handoff/internal/deploy"
)

// The labels `docker compose` puts on its containers, and reads back: the
// live release carries them, so that `docker compose ps` and `logs` show
// it and `docker compose up` finds it up to date.
const (
	LabelProject     = "com.docker.compose.project"
	LabelService     = "com.docker.compose.service"
	LabelNumber      = "com.docker.compose.container-number"
	LabelOneoff      = "com.docker.compose.oneoff"
	LabelConfigHash  = "com.docker.compose.config-hash"
	LabelImage       = "com.docker.compose.image"
	LabelWorkingDir  = "com.docker.compose.project.working_dir"
	LabelConfigFiles = "com.docker.compose.project.config_files"
	LabelVersion     = "com.docker.compose.version"
)

// unknownHash is the config hash of a release the compose tool gave none for.
const unknownHash = "unknown"

// Extension is the key of handoff's block in a compose file, on the
// project (shared settings: the Caddy, the proxy) and on a service.
const Extension = "x-handoff"

// Target is one service of a project, as handoff deploys it.
type Target struct {
	config.Settings
	Notes []string // what the user must know before the deploy changes anything
}

// Resolve turns service name of p into what handoff deploys: its whole
// definition, compose's labels, and the settings of the x-handoff blocks
// (the project's, then the service's), then the flags. tool is what the
// user's compose tool says of it: its config hash and version (no hash:
// `docker compose up` would recreate it). A service whose x-handoff says
// engine: swarm runs on a swarm instead (swarm.go), tool unread.
func Resolve(p *types.Project, name string, o config.Overrides, tool Tool) (Target, error) {
	s, err := p.GetService(name)
	if err != nil {
		return Target{}, fmt.Errorf("%w: compose project %s has no service %q (it has: %s)", deploy.ErrConfig, p.Name, name, strings.Join(p.ServiceNames(), ", "))
	}
	if onSwarm(p, s) {
		return resolveSwarm(p, s, o)
	}
	if err := supported(s); err != nil {
		return Target{}, err
	}
	svc, notes, err := container(p, s)
	if err != nil {
		return Target{}, err
	}
	svc.Labels[LabelVersion] = pick(tool.Version, "2.0.0") // compose reads it as a version
	// docker compose v5 lists only containers with a hash: one no tool
	// computes keeps the release in its `ps` and `down`, and `up` recreates it.
	svc.Labels[LabelConfigHash] = pick(tool.Hash, unknownHash)
	if tool.Hash == "" {
		notes = append(notes, fmt.Sprintf("the compose tool could not give %s's config hash: a later `docker compose up` would recreate it; deploy it with handoff", name))
	}
	ext, err := extension(p, s)
	if err != nil {
		return Target{}, err
	}
	o.Service, o.Image = pick(o.Service, svc.Name), pick(o.Image, svc.Image)
	if o.Image != svc.Image {
		svc.Image, svc.Build = o.Image, nil
	}
	if o.Replicas != 0 && int(o.Replicas) != svc.Replicas {
		return Target{}, fmt.Errorf("%w: --replicas %d: %s runs %d (its deploy.replicas or scale), and docker compose up would scale it back; change the compose file instead", deploy.ErrConfig, o.Replicas, name, svc.Replicas)
	}
	set, err := ext.Apply(svc, o)
	if err != nil {
		return Target{}, err
	}
	set.Compose = true
	routed := set.Proxy == config.ProxyCaddy && set.Caddy.Route != "" || set.Proxy == config.ProxyHandoff && set.HandoffProxy.Listen != ""
	if !routed && len(s.Ports) > 0 {
		return Target{}, fmt.Errorf("%w: %s publishes ports (%s) and no route leads to it (x-handoff: route): a second copy could not hold the same host port, and handoff would not publish them; give it a route, or deploy it with docker compose", deploy.ErrConfig, name, published(s))
	}
	if !routed && set.Service.Rollout == deploy.RolloutBlueGreen {
		set.Service.Rollout = deploy.RolloutStartFirst // no route: a worker
	}
	if routed {
		if set.Service.Rollout != deploy.RolloutBlueGreen {
			return Target{}, fmt.Errorf("%w: %s has a route and strategy %s: a service behind a proxy is deployed blue/green", deploy.ErrConfig, name, set.Service.Rollout)
		}
		if len(s.Ports) > 0 {
			notes = append(notes, portsNote(s, set))
		}
	}
	return Target{Settings: set, Notes: notes}, nil
}

func pick(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// container maps the compose service's definition onto a deploy.Service.
func container(p *types.Project, s types.ServiceConfig) (deploy.Service, []string, error) {
	svc := deploy.Service{
		Name:            p.Name + "-" + s.Name,
		ContainerPrefix: p.Name + "-" + s.Name,
		Image:           s.Image,
		Command:         s.Command,
		Entrypoint:      s.Entrypoint,
		User:            s.User,
		WorkingDir:      s.WorkingDir,
		CapAdd:          s.CapAdd,
		CapDrop:         s.CapDrop,
		StopSignal:      s.StopSignal,
		Restart:         s.Restart,
		RemoveRetired:   true,
		ComposeNames:    true,
		Adopt:           map[string]string{LabelProject: p.Name, LabelService: s.Name, LabelOneoff: "False"},
		Stamps:          map[string]deploy.Stamp{LabelNumber: deploy.StampNumber, LabelImage: deploy.StampImageID},
	}
	restart, err := restartPolicy(s)
	if err != nil {
		return svc, nil, err
	}
	svc.Restart = restart
	if svc.Replicas, err = replicas(s); err != nil {
		return svc, nil, err
	}
	if svc.Image == "" {
		svc.Image = p.Name + "-" + s.Name // compose's name for a built image
	}
	if s.Build != nil {
		b := &deploy.BuildSpec{Context: s.Build.Context, Dockerfile: s.Build.Dockerfile, Target: s.Build.Target, Args: map[string]string{}}
		if b.Dockerfile != "" && !filepath.IsAbs(b.Dockerfile) {
			b.Dockerfile = filepath.Join(b.Context, b.Dockerfile)
		}
		for k, v := range s.Build.Args {
			if v != nil {
				b.Args[k] = *v
			}
		}
		svc.Build = b
	}
	switch s.PullPolicy {
	case types.PullPolicyAlways, types.PullPolicyRefresh:
		svc.Pull = deploy.PullAlways
	case types.PullPolicyNever:
		svc.Pull = deploy.PullNever
	case types.PullPolicyMissing, types.PullPolicyIfNotPresent, types.PullPolicyBuild, "":
		// missing, handoff's default; build: svc.Build is set
	default: // daily, weekly, every_<duration>: handoff keeps no pull times
		svc.Pull = deploy.PullAlways
	}
	if s.StopGracePeriod != nil {
		svc.StopTimeout = time.Duration(*s.StopGracePeriod)
	}
	svc.Env = environment(s)
	svc.ExtraHosts = s.ExtraHosts.AsList(":")
	if s.Logging != nil {
		svc.Logging = &deploy.Logging{Driver: s.Logging.Driver, Options: s.Logging.Options}
	}
	svc.Memory, svc.CPUs, svc.PidsLimit = int64(s.MemLimit), float64(s.CPUS), s.PidsLimit
	svc.Init, svc.TTY, svc.StdinOpen = s.Init, s.Tty, s.StdinOpen
	if s.Deploy != nil && s.Deploy.Resources.Limits != nil {
		if m := int64(s.Deploy.Resources.Limits.MemoryBytes); m != 0 {
			svc.Memory = m
		}
		if c := float64(s.Deploy.Resources.Limits.NanoCPUs); c != 0 {
			svc.CPUs = c
		}
		if n := s.Deploy.Resources.Limits.Pids; n != 0 {
			svc.PidsLimit = n
		}
	}
	if hc := s.HealthCheck; hc != nil {
		svc.Check = check(hc)
	}
	svc.Port = port(s)

	vols, mounts, err := volumes(p, s)
	if err != nil {
		return svc, nil, err
	}
	svc.Volumes, svc.Mounts = vols, mounts
	svc.Networks = networks(p, s)

	svc.Labels = map[string]string{}
	maps.Copy(svc.Labels, s.Labels)
	svc.Labels[LabelProject] = p.Name
	svc.Labels[LabelService] = s.Name
	svc.Labels[LabelOneoff] = "False"
	svc.Labels[LabelWorkingDir] = p.WorkingDir
	svc.Labels[LabelConfigFiles] = strings.Join(p.ComposeFiles, ",")
	return svc, nil, nil
}

// environment is the service's environment as KEY=VALUE, sorted; a
// variable without a value is left out, as compose leaves it out.
func environment(s types.ServiceConfig) []string {
	var env []string
	for _, k := range slices.Sorted(maps.Keys(s.Environment)) {
		if v := s.Environment[k]; v != nil {
			env = append(env, k+"="+*v)
		}
	}
	return env
}

// check is a compose healthcheck as a Docker HEALTHCHECK.
func check(hc *types.HealthCheckConfig) *deploy.DockerCheck {
	if hc.Disable {
		return &deploy.DockerCheck{Test: []string{"NONE"}}
	}
	c := &deploy.DockerCheck{Test: hc.Test}
	if hc.Interval != nil {
		c.Interval = time.Duration(*hc.Interval)
	}
	if hc.Timeout != nil {
		c.Timeout = time.Duration(*hc.Timeout)
	}
	if hc.StartPeriod != nil {
		c.StartPeriod = time.Duration(*hc.StartPeriod)
	}
	if hc.StartInterval != nil {
		c.StartInterval = time.Duration(*hc.StartInterval)
	}
	if hc.Retries != nil {
		c.Retries = int(*hc.Retries)
	}
	return c
}

// port is the port the app listens on: the one it exposes, or the target
// of its one published port; 0 when it says none (a worker, or x-handoff
// says it).
func port(s types.ServiceConfig) int {
	if len(s.Expose) == 1 {
		if n, err := strconv.Atoi(strings.Split(s.Expose[0], "/")[0]); err == nil {
			return n
		}
	}
	if len(s.Ports) == 1 {
		return int(s.Ports[0].Target)
	}
	return 0
}

// volumes are the service's mounts in `docker run -v` form, with a named
// volume under the project's name for it; a volume's subpath, which -v
// cannot say, comes as a Mount.
func volumes(p *types.Project, s types.ServiceConfig) ([]string, []deploy.Mount, error) {
	var out []string
	var mounts []deploy.Mount
	for _, v := range s.Volumes {
		var opts []string
		if v.ReadOnly {
			opts = append(opts, "ro")
		}
		switch v.Type {
		case types.VolumeTypeBind:
			bindOpts, err := bindOptions(s.Name, v)
			if err != nil {
				return nil, nil, err
			}
			out = append(out, mountSpec(v.Source, v.Target, append(opts, bindOpts...)))
		case types.VolumeTypeVolume:
			if v.Source == "" {
				out = append(out, v.Target) // anonymous
				continue
			}
			name := v.Source
			if vol, ok := p.Volumes[v.Source]; ok && vol.Name != "" {
				name = vol.Name
			}
			if v.Volume != nil && v.Volume.Subpath != "" {
				mounts = append(mounts, deploy.Mount{Source: name, Target: v.Target, Subpath: v.Volume.Subpath, ReadOnly: v.ReadOnly, NoCopy: v.Volume.NoCopy})
				continue
			}
			if v.Volume != nil && v.Volume.NoCopy {
				opts = append(opts, "nocopy")
			}
			out = append(out, mountSpec(name, v.Target, opts))
		default:
			return nil, nil, fmt.Errorf("%w: %s mounts a %s volume at %s, which handoff does not create yet; use a named volume or a bind mount", deploy.ErrConfig, s.Name, v.Type, v.Target)
		}
	}
	return out, mounts, nil
}

// bindOptions are a bind mount's SELinux label and propagation in -v's
// words; what -v cannot say is refused.
func bindOptions(service string, v types.ServiceVolumeConfig) ([]string, error) {
	b := v.Bind
	if b == nil {
		return nil, nil
	}
	var opts []string
	switch b.SELinux {
	case "", types.SELinuxShared, types.SELinuxPrivate:
		if b.SELinux != "" {
			opts = append(opts, b.SELinux)
		}
	default:
		return nil, fmt.Errorf("%w: %s's bind mount at %s: selinux %q: use z (shared) or Z (private)", deploy.ErrConfig, service, v.Target, b.SELinux)
	}
	if b.Propagation != "" {
		opts = append(opts, b.Propagation) // checked by the engine, before anything starts
	}
	switch b.Recursive {
	case "", "enabled":
	default:
		return nil, fmt.Errorf("%w: %s's bind mount at %s sets recursive: %s, which handoff does not apply yet (submounts are mounted as they are); remove it, or deploy %s with docker compose", deploy.ErrConfig, service, v.Target, b.Recursive, service)
	}
	if !b.CreateHostPath {
		// -v creates a missing source; compose would refuse instead.
		if _, err := os.Stat(v.Source); err != nil {
			return nil, fmt.Errorf("%w: %s's bind mount at %s: %s does not exist, and create_host_path is false; create it first", deploy.ErrConfig, service, v.Target, v.Source)
		}
	}
	return opts, nil
}

func mountSpec(source, target string, opts []string) string {
	if len(opts) == 0 {
		return source + ":" + target
	}
	return source + ":" + target + ":" + strings.Join(opts, ",")
}

// restartPolicy is the service's restart policy, checked now (Docker
// would refuse a bad one only when the release is created, after its
// release job ran): restart:, else deploy.restart_policy, else compose's
// default, no.
func restartPolicy(s types.ServiceConfig) (string, error) {
	restart := s.Restart
	if rp := deployRestart(s); restart == "" && rp != nil {
		restart = map[string]string{"any": "always", "on-failure": "on-failure", "none": "no", "": "always"}[rp.Condition]
		if restart == "" {
			return "", fmt.Errorf("%w: %s's deploy.restart_policy.condition %q: use none, on-failure or any", deploy.ErrConfig, s.Name, rp.Condition)
		}
		if rp.MaxAttempts != nil && restart == "on-failure" {
			restart += ":" + strconv.FormatUint(*rp.MaxAttempts, 10)
		}
	}
	if restart == "" {
		return types.RestartPolicyNo, nil // compose's own default
	}
	if _, err := config.ParseRestart(restart); err != nil {
		return "", fmt.Errorf("%w: %s: %v", deploy.ErrConfig, s.Name, err)
	}
	return restart, nil
}

func deployRestart(s types.ServiceConfig) *types.RestartPolicy {
	if s.Deploy == nil {
		return nil
	}
	return s.Deploy.RestartPolicy
}

// replicas is how many containers a release of the service runs, as
// docker compose counts them: scale, else deploy.replicas, else 1
// (compose-go refused the two set apart as the project loaded); deploy.mode
// global is one on this one engine.
func replicas(s types.ServiceConfig) (int, error) {
	n, what := s.GetScale(), "scale"
	if s.Scale == nil {
		what = "deploy.replicas"
	}
	if s.Deploy != nil {
		switch s.Deploy.Mode {
		case "", "replicated":
		case "global":
			if n != 1 {
				// docker compose ignores the mode and runs n; a swarm refuses.
				return 0, fmt.Errorf("%w: %s sets deploy.mode: global and %s: %d: global runs one container on each engine, one here, and docker compose would run %d; remove one of them", deploy.ErrConfig, s.Name, what, n, n)
			}
		default:
			return 0, fmt.Errorf("%w: %s sets deploy.mode: %s; a release is a long-running container: use replicated, or run it with docker compose run", deploy.ErrConfig, s.Name, s.Deploy.Mode)
		}
	}
	switch {
	case n < 1:
		return 0, fmt.Errorf("%w: %s sets %s: %d: a service scaled to 0 runs no container, and a deploy would start none; set it to 1 or more, or do not deploy %s", deploy.ErrConfig, s.Name, what, n, s.Name)
	case n > config.MaxReplicas:
		return 0, fmt.Errorf("%w: %s sets %s: %d: at most %d containers a release (each holds a host port and is health-checked before every switch)", deploy.ErrConfig, s.Name, what, n, config.MaxReplicas)
	}
	return n, nil
}

// networks are the service's networks by their Docker names, each with the
// names compose gives the service there (the service's name, its aliases).
func networks(p *types.Project, s types.ServiceConfig) []deploy.Network {
	keys := slices.Sorted(maps.Keys(s.Networks))
	slices.SortStableFunc(keys, func(a, b string) int {
		return priority(s.Networks[b]) - priority(s.Networks[a])
	})
	var out []deploy.Network
	for _, k := range keys {
		name := k
		if n, ok := p.Networks[k]; ok && n.Name != "" {
			name = n.Name
		}
		var aliases []string
		cfg := s.Networks[k]
		if cfg.ServiceNameAliasEnabled() {
			aliases = append(aliases, s.Name)
		}
		if cfg != nil {
			aliases = append(aliases, cfg.Aliases...)
		}
		out = append(out, deploy.Network{Name: name, Aliases: aliases})
	}
	return out
}

func priority(cfg *types.ServiceNetworkConfig) int {
	if cfg == nil {
		return 0
	}
	return cfg.Priority
}

// supported says which of the service's settings handoff would not apply.
func supported(s types.ServiceConfig) error {
	if s.ContainerName != "" {
		return fmt.Errorf("%w: %s sets container_name: %s, and two containers cannot have one name while a deploy runs; remove container_name (handoff names releases %s-<n>, as compose does; point Caddy at the service name, and handoff switches it to each release)", deploy.ErrConfig, s.Name, s.ContainerName, "<project>-"+s.Name)
	}
	if s.NetworkMode != "" {
		return fmt.Errorf("%w: %s sets network_mode: %s; handoff deploys services on networks (a proxy must reach two releases at once)", deploy.ErrConfig, s.Name, s.NetworkMode)
	}
	return classify(s)
}

// extension reads the x-handoff blocks: the project's, then the service's
// over it.
func extension(p *types.Project, s types.ServiceConfig) (config.File, error) {
	return parseExtension(p, s, mergedExtension(p, s))
}

// mergedExtension is the project's x-handoff block with the service's over it.
func mergedExtension(p *types.Project, s types.ServiceConfig) map[string]any {
	merged := map[string]any{}
	for _, ext := range []types.Extensions{p.Extensions, s.Extensions} {
		if v, ok := ext[Extension].(map[string]any); ok {
			deepMerge(merged, v)
		}
	}
	return merged
}

// parseExtension reads merged, s's x-handoff, as config reads it.
func parseExtension(p *types.Project, s types.ServiceConfig, merged map[string]any) (config.File, error) {
	if _, ok := merged["replicas"]; ok {
		return config.File{}, fmt.Errorf("%w: %s's x-handoff sets replicas: a compose service's containers are counted by its deploy.replicas (or scale), which docker compose reads too; set it there", deploy.ErrConfig, s.Name)
	}
	data, err := yaml.Marshal(merged)
	if err != nil {
		return config.File{}, err
	}
	where := fmt.Sprintf("%s (x-handoff of %s)", strings.Join(p.ComposeFiles, ", "), s.Name)
	return config.ParseExtension(where, p.WorkingDir, data)
}

func deepMerge(dst, src map[string]any) {
	for k, v := range src {
		if sub, ok := v.(map[string]any); ok {
			if cur, ok := dst[k].(map[string]any); ok {
				deepMerge(cur, sub)
				continue
			}
			cp := map[string]any{}
			deepMerge(cp, sub)
			v = cp
		}
		dst[k] = v
	}
}

// portsNote says what becomes of a service's `ports:`: a fixed host port
// cannot be held by two releases at once.
func portsNote(s types.ServiceConfig, set config.Settings) string {

	where := "handoff publishes each release on 127.0.0.1 at a port of its own, and Caddy is switched to it"
	if set.Service.Reach == deploy.ReachNetwork {
		where = "Caddy reaches each release by its container name, nothing is published"
	}
	if set.Proxy == config.ProxyHandoff {
		where = "handoff proxy serves it on " + set.HandoffProxy.Listen + " and is switched to each release"
	}
	return fmt.Sprintf("%s's ports: %s are not published: two releases cannot hold one host port during a deploy; %s. Point clients at the front proxy (or let handoff proxy own that port), and remove ports: from the compose file to silence this", s.Name, published(s), where)
}

// published lists a service's ports as compose writes them.
func published(s types.ServiceConfig) string {
	var out []string
	for _, p := range s.Ports {
		out = append(out, fmt.Sprintf("%s:%d", p.Published, p.Target))
	}
	return strings.Join(out, ", ")
}
