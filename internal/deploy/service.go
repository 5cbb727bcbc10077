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
)

// Service is everything handoff needs to run one release of an app.
type Service struct {
	Name    string
	Image   string     // image reference to run; with Build, the tag to build
	Build   *BuildSpec // nil: take Image as it is
	Command []string   // nil: the image's own CMD
	Port    int        // port the app listens on inside the container; 0: the adopted container's
	Env     []string   // KEY=VALUE, env files first, then env
	Volumes []string   // docker -v syntax: "name:/data", "/host:/app:ro"
	Network string     // extra network to attach to ("" : Docker's default bridge)
	Labels  map[string]string
	Restart string // Docker restart policy of the live release (default unless-stopped)
	// HostPorts is where release ports are published on 127.0.0.1; zero:
	// a free port the kernel offers. Either way a release keeps its port.
	HostPorts PortRange
	Memory    int64 // bytes, 0: no limit
	CPUs      float64

	Health       HealthCheck
	DrainTimeout time.Duration
	StopTimeout  time.Duration
	Keep         int // stopped releases kept for rollback
}

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
	h := &s.Health
	if h.Path == "" {
		h.Path = DefaultHealthPath
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
	case s.DrainTimeout < 0 || s.StopTimeout < 0 || s.Health.Timeout < 0 || s.Health.Interval < 0 || s.Health.StartTimeout < 0:
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
