// Package deploy is the heart of handoff: the blue/green procedure that
// replaces a service's container behind a proxy without a failed request.
//
// It knows Docker and Caddy only through the Runtime and Proxy interfaces
// (interfaces.go); the steps themselves read top to bottom in procedure.go:
// image, start, wait healthy, switch, drain, retire.
package deploy

import (
	"fmt"
	"time"
)

// Defaults a service gets when its file and flags say nothing.
const (
	DefaultDrainTimeout       = 30 * time.Second
	DefaultStopTimeout        = 10 * time.Second
	DefaultKeep               = 3
	DefaultHealthPath         = "/"
	DefaultHealthTimeout      = 2 * time.Second
	DefaultHealthInterval     = 1 * time.Second
	DefaultHealthSuccesses    = 2
	DefaultHealthStartTimeout = 2 * time.Minute
	DefaultLogLines           = 50
	// DefaultRestart brings the live release back after a crash, a dockerd
	// restart or a reboot, on the same address; stopped releases stay stopped.
	DefaultRestart = "unless-stopped"
	// DefaultSettle is how long a release with no health check at all must
	// run without restarting to count as started.
	DefaultSettle = 3 * time.Second
)

// Service is everything handoff needs to run one release of an app.
type Service struct {
	Name string
	// ContainerPrefix names the containers: <prefix>-<release>, and
	// <prefix>-<release>-<replica> for a release of several ("" : Name).
	ContainerPrefix string
	// Replicas is how many containers a release runs, each on its own
	// endpoint, all healthy before the switch and switched at once (0 : 1).
	Replicas int
	// ComposeNames names a release's replicas as compose names a service's
	// containers, <prefix>-<number> (ContainerNumber): compose needs one
	// number per container, and recreates a container under that name.
	ComposeNames    bool
	Image           string     // image reference to run; with Build, the tag to build
	Build           *BuildSpec // nil: take Image as it is
	Command         []string   // nil: the image's own CMD
	Entrypoint      []string   // nil: the image's own ENTRYPOINT
	Port            int        // port the app listens on inside the container; 0: the adopted container's
	Env             []string   // KEY=VALUE, env files first, then env
	Volumes         []string   // docker -v syntax: "name:/data", "/host:/app:ro"
	Mounts          []Mount    // volumes with what -v cannot say (a subpath: API 1.45); refused on an older engine
	Networks        []Network  // networks to join (none: Docker's default bridge)
	User            string
	WorkingDir      string
	ExtraHosts      []string // "host:ip"
	CapAdd, CapDrop []string
	Logging         *Logging
	StopSignal      string
	Check           *DockerCheck // a HEALTHCHECK for the container (a compose healthcheck); nil: the image's own
	Labels          map[string]string
	Stamps          map[string]Stamp // labels whose value only the run knows (compose's container-number and image)
	Restart         string           // Docker restart policy of the live release (default unless-stopped)
	// HostPorts is where release ports are published on 127.0.0.1; zero:
	// a free port the kernel offers. Either way a release keeps its port.
	HostPorts PortRange
	Memory    int64 // bytes, 0: no limit
	CPUs      float64
	PidsLimit int64 // most processes at once, 0: no limit
	// Init runs an init process as PID 1 that reaps zombies and forwards
	// signals (nil: the engine's default); TTY and StdinOpen give the
	// container a terminal and an open stdin, as compose's tty and
	// stdin_open (apps that buffer output or exit without them).
	Init           *bool
	TTY, StdinOpen bool
	// Reach is how the proxy reaches a release; ReachAuto: as it reaches
	// the live one.
	Reach Reach
	// Rollout is how a release replaces the live one.
	Rollout Rollout
	// RemoveRetired removes a retired release once it is stopped, instead
	// of keeping it (a compose project: `docker compose up` must find one
	// container per service). A rollback runs the release's image again.
	RemoveRetired bool
	// Adopt names, by label, the containers started outside handoff that a
	// first deploy takes over when no proxy points at one (compose's
	// project and service labels).
	Adopt map[string]string

	// Pull says when Image is fetched from its registry (default missing).
	Pull PullPolicy
	// Release is run once per deploy in a one-off container of the new
	// image, before the new release starts (migrations); nil: none.
	Release *Job
	// Hooks run on the host at points of a deploy.
	Hooks Hooks

	Health       HealthCheck
	DrainTimeout time.Duration
	StopTimeout  time.Duration
	Keep         int // stopped releases kept for rollback

	// Canary sends the new release a share of the requests step by step,
	// judged at every step, before it gets them all; nil: all at once.
	Canary []CanaryStep
	// Watch keeps the old release running this long after the switch,
	// and switches back to it if the new one does worse; 0: no watch.
	Watch time.Duration
	// Analysis is what a canary step and the watch judge by.
	Analysis Thresholds
}

// CanaryStep is one step of a canary: the new release's share of new
// requests, in percent, held this long while both releases are compared.
type CanaryStep struct {
	Weight int
	Hold   time.Duration
}

func (c CanaryStep) String() string { return fmt.Sprintf("%d%% %s", c.Weight, c.Hold) }

// Stamp is a value a label gets when a release is created.
type Stamp string

// The stamps.
const (
	StampNumber  Stamp = "number"   // the container's number (ContainerNumber): compose's container-number
	StampImageID Stamp = "image-id" // the ID of the image it runs
)

// Network is a network a release joins, and the names it answers to there
// once it is healthy (before that only its own container name).
type Network struct {
	Name    string
	Aliases []string
}

// hasAliases says whether the service gives its releases names on a
// network (Announce joins such a network again to give them).
func (s Service) hasAliases() bool {
	for _, n := range s.Networks {
		if len(n.Aliases) > 0 {
			return true
		}
	}
	return false
}

// Mount is a named volume mounted with options -v has no words for.
type Mount struct {
	Source   string // the volume's name
	Target   string
	Subpath  string // the part of the volume mounted ("" : all of it)
	ReadOnly bool
	NoCopy   bool // the image's files at Target are not copied into a new volume
}

// Logging is the container's log driver.
type Logging struct {
	Driver  string
	Options map[string]string
}

// DockerCheck is a Docker HEALTHCHECK.
type DockerCheck struct {
	Test          []string // ["CMD", ...], ["CMD-SHELL", "..."] or ["NONE"]
	Interval      time.Duration
	Timeout       time.Duration
	StartPeriod   time.Duration
	StartInterval time.Duration
	Retries       int
}

// Reach says how the proxy reaches a release.
type Reach string

// The ways a proxy reaches a release.
const (
	ReachAuto    Reach = ""        // as the proxy reaches the live release (host for a first deploy)
	ReachHost    Reach = "host"    // published on 127.0.0.1, the proxy on the host dials it there
	ReachNetwork Reach = "network" // by container name on the release's networks (a proxy in a container); nothing published
)

// Rollout says how a release replaces the live one.
type Rollout string

// The rollouts.
const (
	RolloutBlueGreen  Rollout = ""            // a proxy routes to it: start, health, switch, drain, retire
	RolloutStartFirst Rollout = "start-first" // no route (a worker): start the new, wait, stop the old
	RolloutStopFirst  Rollout = "stop-first"  // must never run twice (a scheduler): stop the old, start the new; a gap
)

// PortRange is an inclusive range of TCP ports.
type PortRange struct{ Low, High int }

// BuildSpec is what `docker build` is run with.
type BuildSpec struct {
	Context    string
	Dockerfile string
	Args       map[string]string
	Target     string
}

// HealthKind says how a new container is judged ready.
type HealthKind string

// The health checks handoff knows.
const (
	HealthAuto   HealthKind = ""       // docker when the image has a HEALTHCHECK, else http
	HealthHTTP   HealthKind = "http"   // GET from the host, redirects not followed
	HealthTCP    HealthKind = "tcp"    // a TCP connect from the host
	HealthCmd    HealthKind = "cmd"    // a command run inside the container exits 0
	HealthDocker HealthKind = "docker" // the image's own HEALTHCHECK reports healthy
	// HealthRunning: running Settle long without a restart, for a service
	// with no port and no health check (a worker).
	HealthRunning HealthKind = "running"
)

// HealthCheck says when a started container counts as ready for traffic.
type HealthCheck struct {
	Kind         HealthKind
	Path         string   // http: path and query
	Host         string   // http: Host header ("" : 127.0.0.1:port)
	StatusMin    int      // http: lowest accepted status
	StatusMax    int      // http: highest accepted status
	Command      []string // cmd
	Timeout      time.Duration
	Interval     time.Duration
	Successes    int           // consecutive passes needed
	StartTimeout time.Duration // how long the app may take to become healthy
	Settle       time.Duration // running: how long without a restart
}

// WithDefaults fills every zero setting with its default.
func (s Service) WithDefaults() Service {
	if s.DrainTimeout == 0 {
		s.DrainTimeout = DefaultDrainTimeout
	}
	if s.StopTimeout == 0 {
		s.StopTimeout = DefaultStopTimeout
	}
	if s.Keep == 0 {
		s.Keep = DefaultKeep
	}
	if s.Restart == "" {
		s.Restart = DefaultRestart
	}
	if s.Pull == "" {
		s.Pull = PullMissing
	}
	if s.Release != nil && s.Release.Timeout == 0 {
		r := *s.Release
		r.Timeout = DefaultReleaseTimeout
		s.Release = &r
	}
	if s.Hooks.Timeout == 0 {
		s.Hooks.Timeout = DefaultHookTimeout
	}
	s.Analysis = s.Analysis.WithDefaults()
	h := &s.Health
	if h.Path == "" {
		h.Path = DefaultHealthPath
	}
	if h.Settle == 0 {
		h.Settle = DefaultSettle
	}
	if h.StatusMin == 0 && h.StatusMax == 0 {
		h.StatusMin, h.StatusMax = 200, 299
	}
	if h.Timeout == 0 {
		h.Timeout = DefaultHealthTimeout
	}
	if h.Interval == 0 {
		h.Interval = DefaultHealthInterval
	}
	if h.Successes == 0 {
		h.Successes = DefaultHealthSuccesses
	}
	if h.StartTimeout == 0 {
		h.StartTimeout = DefaultHealthStartTimeout
	}
	return s
}

// Validate reports the first setting that cannot work.
func (s Service) Validate() error {
	switch {
	case CheckName(s.Name) != nil:
		return CheckName(s.Name)
	case s.Image == "" && s.Build == nil:
		return fmt.Errorf("%w: no image for service %s: set `image:` or `build:` in handoff.yml, or pass --image", ErrConfig, s.Name)
	case s.Port < 0 || s.Port > 65535:
		return fmt.Errorf("%w: port %d is not a TCP port", ErrConfig, s.Port)
	case s.Health.Kind == HealthCmd && len(s.Health.Command) == 0:
		return fmt.Errorf("%w: health type cmd needs health.command", ErrConfig)
	case s.Health.StatusMin > s.Health.StatusMax:
		return fmt.Errorf("%w: health status range %d-%d is empty", ErrConfig, s.Health.StatusMin, s.Health.StatusMax)
	case s.Keep < 0:
		return fmt.Errorf("%w: keep %d: must be 0 or more", ErrConfig, s.Keep)
	case s.Rollout != RolloutBlueGreen && s.Rollout != RolloutStartFirst && s.Rollout != RolloutStopFirst:
		return fmt.Errorf("%w: strategy %q: use blue-green (a service behind a route), start-first or stop-first", ErrConfig, s.Rollout)
	case s.Pull != PullMissing && s.Pull != PullAlways && s.Pull != PullNever:
		return fmt.Errorf("%w: pull %q: use missing (the default), always (a tag that moves) or never", ErrConfig, s.Pull)
	case s.Release != nil && len(s.Release.Command) == 0:
		return fmt.Errorf("%w: release: needs a command, like [\"./app\", \"migrate\"]", ErrConfig)
	case len(s.Canary) > 0 && s.Rollout != RolloutBlueGreen, s.Watch > 0 && s.Rollout != RolloutBlueGreen:
		return fmt.Errorf("%w: a canary and a watch compare two releases serving side by side behind a proxy: not with strategy %s", ErrConfig, s.Rollout)
	case checkSteps(s.Canary) != nil:
		return checkSteps(s.Canary)
	case s.Watch < 0 || s.DrainTimeout < 0 || s.StopTimeout < 0 || s.Health.Timeout < 0 || s.Health.Interval < 0 || s.Health.StartTimeout < 0:
		return fmt.Errorf("%w: a negative duration in the settings of %s", ErrConfig, s.Name)
	}
	return nil
}

// CheckName refuses a service name that could not name a container, or
// would reach outside handoff's state directory.
func CheckName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: no service name: set `service:` in handoff.yml or pass --service", ErrConfig)
	}
	if !validName(name) {
		return fmt.Errorf("%w: service name %q: start with a letter or digit, then use letters, digits, '-', '_' and '.' (it names containers and files)", ErrConfig, name)
	}
	return nil
}

func validName(name string) bool {
	for i, r := range name {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' ||
			i > 0 && (r == '-' || r == '_' || r == '.')
		if !ok {
			return false
		}
	}
	return name != ""
}

// ReleaseName is the name of a release: its container's for a release of
// one, else what its replicas' names start with.
func (s Service) ReleaseName(release int) string {
	return fmt.Sprintf("%s-%d", s.prefix(), release)
}

func (s Service) prefix() string {
	if s.ContainerPrefix == "" {
		return s.Name
	}
	return s.ContainerPrefix
}

// ContainerName is the name of a release's container: replica 0 is the
// only container of a release of one (web-4), replicas 1…N those of a
// release of several (web-4-1, web-4-2).
func (s Service) ContainerName(release, replica int) string {
	switch {
	case replica == 0:
		return s.ReleaseName(release)
	case s.ComposeNames:
		return fmt.Sprintf("%s-%d", s.prefix(), ContainerNumber(release, replica))
	}
	return fmt.Sprintf("%s-%d", s.ReleaseName(release), replica)
}

// ContainerNumber numbers a release's containers one number each, as
// compose numbers a service's: the release for a release of one,
// release×100+replica for one of several (replicas are at most 64).
func ContainerNumber(release, replica int) int {
	if replica == 0 {
		return release
	}
	return release*100 + replica
}

// ReplicaNumbers are the replica numbers of a release of svc: [0] for a
// release of one container, 1…N for several.
func (s Service) ReplicaNumbers() []int {
	if s.Replicas <= 1 {
		return []int{0}
	}
	out := make([]int, s.Replicas)
	for i := range out {
		out[i] = i + 1
	}
	return out
}
