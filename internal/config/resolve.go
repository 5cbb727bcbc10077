package config

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/docker/cli/pkg/kvfile"
	"github.com/docker/go-units"

	"github.com/handoff-dev/handoff/internal/deploy"
)

// Overrides are the command-line flags that override the file; "" and 0
// mean "not given".
type Overrides struct {
	Service      string
	Image        string
	Port         int
	HealthPath   string
	CaddyAdmin   string
	CaddyRoute   string
	Caddyfile    string
	DrainTimeout time.Duration
	Proxy        string
	ProxySocket  string
	ProxyListen  string
	Pull         string
	Replicas     ReplicaCount  // a pflag.Value: `f.Var(&o.Replicas, "replicas", …)`
	Canary       bool          // --canary: strategy: canary for this deploy
	Watch        time.Duration // --watch
}

// The proxies a service can be switched by.
const (
	ProxyCaddy   = "caddy"
	ProxyHandoff = "handoff"
)

// The engines a service runs on.
const (
	EngineDocker = "docker"
	EngineSwarm  = "swarm" // the colour services of a swarm, switched by handoff proxy on every node
)

// Settings is the file and the flags merged: what a command runs with.
type Settings struct {
	Service      deploy.Service
	Proxy        string // ProxyCaddy or ProxyHandoff
	Caddy        Caddy
	HandoffProxy HandoffProxy
	Compose      bool   // a compose project's service: `docker compose` acts on its file too
	Engine       string // EngineDocker or EngineSwarm
	Swarm        Swarm  // engine swarm's settings, defaults filled
}

// Resolve merges f and o, checks every value, and reads env files.
func Resolve(f File, o Overrides) (Settings, error) {
	svc := deploy.Service{
		Name:    pick(o.Service, f.Service),
		Image:   pick(o.Image, f.Image),
		Command: f.Command,
		Volumes: f.Volumes,
		Labels:  f.Labels,
		Restart: f.Restart,
		CPUs:    f.Resources.CPUs,
	}
	if f.Network != "" {
		svc.Networks = []deploy.Network{{Name: f.Network}}
	}
	if err := deploy.CheckName(svc.Name); err != nil {
		return Settings{}, err
	}
	if f.Resources.Memory != "" {
		m, err := units.RAMInBytes(f.Resources.Memory)
		if err != nil || m <= 0 {
			return Settings{}, f.at("resources.memory", fmt.Sprintf("memory %q: write it like 512m or 1g", f.Resources.Memory))
		}
		svc.Memory = m
	}
	if f.Resources.CPUs < 0 {
		return Settings{}, f.at("resources.cpus", "cpus must be positive, like 1.5")
	}
	if _, err := ParseRestart(f.Restart); err != nil {
		return Settings{}, f.at("restart", err.Error())
	}
	if f.Build != nil {
		b := *f.Build
		if b.Context == "" {
			b.Context = "."
		}
		b.Context = f.relative(b.Context)
		if b.Dockerfile != "" {
			b.Dockerfile = f.relative(b.Dockerfile)
		}
		svc.Build = &deploy.BuildSpec{Context: b.Context, Dockerfile: b.Dockerfile, Args: b.Args, Target: b.Target}
		if svc.Image == "" {
			svc.Image = svc.Name + ":latest"
		}
	}
	for i, v := range svc.Volumes {
		svc.Volumes[i] = f.relativeVolume(v)
	}
	env, err := f.env()
	if err != nil {
		return Settings{}, err
	}
	svc.Env = env
	return f.Apply(svc, o)
}

// Apply sets what handoff itself needs on a service whose container is
// already described (by handoff.yml, or by a compose file): health check,
// timeouts, releases kept, rollout, and the proxy that switches it. The
// file's values win over svc's, the flags over both.
func (f File) Apply(svc deploy.Service, o Overrides) (Settings, error) {
	if o.DrainTimeout < 0 {
		return Settings{}, fmt.Errorf("%w: --drain-timeout %s: a duration cannot be negative", deploy.ErrConfig, o.DrainTimeout)
	}
	svc.DrainTimeout = time.Duration(f.DrainTimeout)
	if o.DrainTimeout != 0 {
		svc.DrainTimeout = o.DrainTimeout
	}
	if f.StopTimeout != 0 {
		svc.StopTimeout = time.Duration(f.StopTimeout)
	}
	if f.Port < 0 || f.Port > 65535 {
		return Settings{}, f.at("port", fmt.Sprintf("port %d is not a TCP port (1-65535)", f.Port))
	}
	if f.Port != 0 {
		svc.Port = f.Port
	}
	if o.Port != 0 {
		svc.Port = o.Port
	}
	if f.Keep != nil {
		if *f.Keep < 1 {
			return Settings{}, f.at("keep", fmt.Sprintf("keep: %d: keep at least 1 earlier release, or rollback has nothing to go back to", *f.Keep))
		}
		svc.Keep = *f.Keep
	}
	if f.Replicas != nil {
		n := int(*f.Replicas)
		if err := checkReplicas(n); err != nil {
			return Settings{}, f.at("replicas", fmt.Sprintf("replicas: %d: %v (remove the key for 1)", n, err))
		}
		svc.Replicas = n
	}
	if o.Replicas != 0 {
		n := int(o.Replicas)
		if err := checkReplicas(n); err != nil {
			return Settings{}, fmt.Errorf("%w: --replicas %d: %v", deploy.ErrConfig, n, err)
		}
		svc.Replicas = n
	}
	if f.HostPorts != "" {
		lo, hi, err := parsePortRange(f.HostPorts)
		if err != nil {
			return Settings{}, f.at("host_ports", err.Error())
		}
		svc.HostPorts = deploy.PortRange{Low: lo, High: hi}
	}
	switch r := deploy.Reach(f.Reach); r {
	case deploy.ReachAuto, deploy.ReachHost, deploy.ReachNetwork:
		svc.Reach = r
	default:
		return Settings{}, f.at("reach", fmt.Sprintf("reach %q: use host (a proxy on the host) or network (a proxy in a container, by container name)", f.Reach))
	}
	switch s := deploy.Rollout(f.Strategy); s {
	case deploy.RolloutStartFirst, deploy.RolloutStopFirst:
		svc.Rollout = s
	case "", "blue-green", StrategyCanary:
	default:
		return Settings{}, f.at("strategy", fmt.Sprintf("strategy %q: use blue-green (the default behind a route), canary (a share of the requests first, judged by numbers), start-first (the default for a service without a route) or stop-first (it must never run twice)", f.Strategy))
	}
	if err := f.applyAnalysis(&svc, o); err != nil {
		return Settings{}, err
	}
	pull := deploy.PullPolicy(pick(o.Pull, f.Pull))
	switch pull {
	case "":
	case deploy.PullMissing, deploy.PullAlways, deploy.PullNever:
		svc.Pull = pull
	default:
		if o.Pull != "" {
			return Settings{}, fmt.Errorf("%w: --pull %q: use missing (the default), always (a tag that moves) or never", deploy.ErrConfig, o.Pull)
		}
		return Settings{}, f.at("pull", fmt.Sprintf("pull %q: use missing (the default), always (a tag that moves) or never", f.Pull))
	}
	switch {
	case len(f.Release) > 0:
		svc.Release = &deploy.Job{Command: f.Release, Timeout: time.Duration(f.ReleaseTime), Pause: f.ReleasePause}
	case f.ReleaseTime != 0:
		return Settings{}, f.at("release_timeout", "release_timeout without release: name the release job's command in `release:`")
	case f.ReleasePause:
		return Settings{}, f.at("release_pause", "release_pause without release: name the release job's command in `release:`")
	}
	svc.Hooks = deploy.Hooks{PreDeploy: f.Hooks.PreDeploy, PostDeploy: f.Hooks.PostDeploy, OnFailure: f.Hooks.OnFailure,
		Dir: f.Dir(), Timeout: time.Duration(f.Hooks.Timeout)}
	h, err := f.health(o)
	if err != nil {
		return Settings{}, err
	}
	svc.Health = h

	cad := Caddy{Admin: pick(o.CaddyAdmin, f.Caddy.Admin), Route: pick(o.CaddyRoute, pick(f.Route, f.Caddy.Route)), Caddyfile: pick(o.Caddyfile, f.Caddy.Caddyfile)}
	if o.Caddyfile == "" && cad.Caddyfile != "" {
		cad.Caddyfile = f.relative(cad.Caddyfile)
	}
	if strings.HasPrefix(cad.Admin, "unix:") && o.CaddyAdmin == "" {
		cad.Admin = "unix:" + f.relative(strings.TrimPrefix(strings.TrimPrefix(cad.Admin, "unix:"), "//"))
	}
	proxy := pick(o.Proxy, pick(f.Proxy, ProxyCaddy))
	if proxy != ProxyCaddy && proxy != ProxyHandoff {
		return Settings{}, f.at("proxy", fmt.Sprintf("proxy %q: use caddy or handoff", proxy))
	}
	hp := HandoffProxy{Socket: pick(o.ProxySocket, f.HandoffProxy.Socket), Listen: pick(o.ProxyListen, f.HandoffProxy.Listen)}
	if hp.Socket != "" && o.ProxySocket == "" {
		hp.Socket = f.relative(hp.Socket)
	}
	if svc.Release != nil && svc.Release.Pause && proxy != ProxyHandoff && f.Engine != EngineSwarm {
		return Settings{}, f.at("release_pause", "release_pause holds requests with `proxy: handoff` only (Caddy cannot hold them): remove it, or put handoff proxy in front")
	}
	set := Settings{Service: svc, Proxy: proxy, Caddy: cad, HandoffProxy: hp, Engine: EngineDocker}
	if f.Engine != "" && f.Engine != EngineDocker {
		if err := f.swarm(&set); err != nil {
			return Settings{}, err
		}
	}
	return set, nil
}

// swarm checks what engine: swarm can run, and fills its defaults. The procedure sees a
// release as one colour service whose tasks are the replicas, checked by the
// HEALTHCHECK each node runs in them.
func (f File) swarm(set *Settings) error {
	if f.Engine != EngineSwarm {
		return f.at("engine", fmt.Sprintf("engine %q: use docker or swarm", f.Engine))
	}
	svc := &set.Service
	sw := f.Swarm
	switch {
	case svc.Build != nil:
		return f.at("build", "engine swarm deploys an image every node pulls from a registry: build and push it, and name it in image: (remove build:)")
	case svc.Image == "":
		return f.at("engine", "engine swarm needs image: (in a registry every node pulls from)")
	case svc.Port == 0:
		return f.at("engine", "engine swarm needs port: (the app's port in its tasks)")
	case svc.Health.Kind != deploy.HealthCmd:
		return f.at("engine", "engine swarm needs health: {type: cmd, command: [...]}: each node runs it in the task as its HEALTHCHECK (Swarm sends a task requests only once it passes, and no check from this host reaches other nodes)")
	case svc.Release != nil && svc.Release.Pause:
		return f.at("release_pause", "release_pause on engine swarm is not supported yet (no node's proxy holds requests yet): remove it")
	case len(svc.Canary) > 0 || svc.Watch > 0:
		return f.at("engine", "canaries and the watch on engine swarm are not supported yet: remove canary:, watch: and strategy: canary")
	case f.Proxy != "" || f.Caddy != (Caddy{}) || f.HandoffProxy != (HandoffProxy{}):
		return f.at("engine", "engine swarm switches handoff proxy on every node (handoff swarm setup): remove proxy:, caddy: and handoff_proxy:")
	case f.Strategy != "" && f.Strategy != "blue-green":
		return f.at("strategy", fmt.Sprintf("strategy %q on engine swarm: a release is switched on every node's proxy, blue-green; remove strategy:", f.Strategy))
	case len(f.Volumes) > 0 || f.Network != "" || len(f.Labels) > 0 || f.Resources != (Resources{}) || f.Restart != "" || f.HostPorts != "":
		return f.at("engine", "engine swarm does not carry volumes, network, labels, resources, restart or host_ports into the tasks yet: remove them (the tasks run on the overlay, restarted by Swarm)")
	case sw.ProxyImage == "":
		return f.at("swarm", "engine swarm needs swarm.proxy_image: the image handoff swarm setup ran (--proxy-image), which the switch jobs run")
	case sw.Port < 0 || sw.Port > 65535 || sw.MaxPerNode < 0:
		return f.at("swarm", "swarm.port is one of handoff swarm setup's ports (default 9001); max_per_node is 0 or more")
	}
	sw.Network = pick(sw.Network, "handoff")
	if sw.Port == 0 {
		sw.Port = 9001
	}
	// The tasks' HEALTHCHECK, which the procedure waits on as Docker's.
	svc.Health.Kind = deploy.HealthDocker
	sw.Replicas, svc.Replicas = max(svc.Replicas, 1), 0
	set.Engine, set.Swarm, set.Proxy = EngineSwarm, sw, ProxyHandoff
	return nil
}

func pick(flag, file string) string {
	if flag != "" {
		return flag
	}
	return file
}

// env reads env_file entries in order, then env, which wins. An env file
// is read exactly as `docker run --env-file` reads it: values are literal
// (no substitution, quotes kept), a name alone takes handoff's own
// environment variable. No value is ever printed, not even in an error.
func (f File) env() ([]string, error) {
	vars := map[string]string{}
	for _, name := range f.EnvFile {
		path := f.relative(name)
		lines, err := kvfile.Parse(path, os.LookupEnv)
		if err != nil {
			return nil, f.at("env_file", fmt.Sprintf("env_file %s: %s", path, envFileProblem(err)))
		}
		for _, line := range lines {
			k, v, _ := strings.Cut(line, "=")
			vars[k] = v
		}
	}
	maps.Copy(vars, f.Env)
	keys := slices.Sorted(maps.Keys(vars))
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		out = append(out, k+"="+vars[k])
	}
	return out, nil
}

// envFileProblem says what is wrong with an env file without repeating its
// content: kvfile's own messages quote the offending line, which may hold a secret.
func envFileProblem(err error) string {
	var pe *fs.PathError
	switch msg := err.Error(); {
	case errors.As(err, &pe):
		return pe.Err.Error()
	case strings.Contains(msg, "no variable name"):
		return "a line starts with '=' (no variable name); write KEY=VALUE"
	case strings.Contains(msg, "contains whitespaces"):
		return "a variable name contains white space; write KEY=VALUE"
	case strings.Contains(msg, "invalid utf8"):
		return "it is not valid UTF-8"
	default:
		return "it cannot be read as KEY=VALUE lines"
	}
}

func (f File) health(o Overrides) (deploy.HealthCheck, error) {
	in := f.Health
	h := deploy.HealthCheck{
		Kind:         deploy.HealthKind(in.Type),
		Path:         in.Path,
		Host:         in.Host,
		Command:      in.Command,
		Timeout:      time.Duration(in.Timeout),
		Interval:     time.Duration(in.Interval),
		Successes:    in.Successes,
		StartTimeout: time.Duration(in.StartTimeout),
		Settle:       time.Duration(in.Settle),
	}
	if o.HealthPath != "" {
		h.Path = o.HealthPath
		if h.Kind == deploy.HealthAuto {
			h.Kind = deploy.HealthHTTP
		}
	}
	if h.Kind == deploy.HealthAuto && in.Path != "" {
		h.Kind = deploy.HealthHTTP
	}
	switch h.Kind {
	case deploy.HealthAuto, deploy.HealthHTTP, deploy.HealthTCP, deploy.HealthCmd, deploy.HealthDocker, deploy.HealthRunning:
	default:
		return h, f.at("health.type", fmt.Sprintf("health type %q: use http, tcp, cmd, docker or running", in.Type))
	}
	if h.Path != "" && !strings.HasPrefix(h.Path, "/") {
		return h, f.at("health.path", fmt.Sprintf("health path %q must start with /", h.Path))
	}
	if h.Kind == deploy.HealthCmd && len(h.Command) == 0 {
		return h, f.at("health.type", "health type cmd needs health.command, like [\"/app/check\"]")
	}
	if in.Successes < 0 {
		return h, f.at("health.successes", "successes must be 1 or more")
	}
	if in.Status != "" {
		lo, hi, err := parseStatus(in.Status)
		if err != nil {
			return h, f.at("health.status", err.Error())
		}
		h.StatusMin, h.StatusMax = lo, hi
	}
	if h.Interval != 0 && h.StartTimeout != 0 && h.Interval > h.StartTimeout {
		return h, f.at("health.interval", fmt.Sprintf("interval %s is longer than start_timeout %s: not one check would run", h.Interval, h.StartTimeout))
	}
	return h, nil
}

// parsePortRange reads "20000-20999" (or one port, "20000").
func parsePortRange(s string) (int, int, error) {
	lo, hi, ok := parseRange(s, 1, 65535)
	if !ok {
		return 0, 0, fmt.Errorf("host_ports %q: write a range of TCP ports, like 20000-20999", s)
	}
	return lo, hi, nil
}

// parseStatus reads "2xx", "200" or "200-399".
func parseStatus(s string) (int, int, error) {
	bad := fmt.Errorf("health status %q: write 2xx, 200 or 200-399", s)
	if len(s) == 3 && strings.HasSuffix(s, "xx") {
		d, err := strconv.Atoi(s[:1])
		if err != nil || d < 1 || d > 5 {
			return 0, 0, bad
		}
		return d * 100, d*100 + 99, nil
	}
	lo, hi, ok := parseRange(s, 100, 599)
	if !ok {
		return 0, 0, bad
	}
	return lo, hi, nil
}

// parseRange reads "a-b" or "a", both within least and most, a ≤ b.
func parseRange(s string, least, most int) (int, int, bool) {
	lo, hi, isRange := strings.Cut(s, "-")
	a, err := strconv.Atoi(strings.TrimSpace(lo))
	if err != nil {
		return 0, 0, false
	}
	b := a
	if isRange {
		if b, err = strconv.Atoi(strings.TrimSpace(hi)); err != nil {
			return 0, 0, false
		}
	}
	return a, b, a >= least && b <= most && a <= b
}

func (f File) relative(p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(f.Dir(), p)
}

// relativeVolume makes "./data:/data" relative to the file; named volumes
// ("data:/data") and absolute paths stay as they are.
func (f File) relativeVolume(v string) string {
	if strings.HasPrefix(v, "./") || strings.HasPrefix(v, "../") {
		src, rest, _ := strings.Cut(v, ":")
		abs, err := filepath.Abs(f.relative(src))
		if err == nil {
			return abs + ":" + rest
		}
	}
	return v
}
