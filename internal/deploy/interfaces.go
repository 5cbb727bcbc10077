package deploy

import (
	"context"
	"io"
	"time"
)

// Container is one container of a release (one replica) as the runtime sees it.
type Container struct {
	ID           string
	Name         string
	Service      string
	Release      int  // handoff's release number; 0 for an adopted container
	Replica      int  // which of its release's containers: 0 the only one, 1…N of several
	Adopted      bool // started by someone else, found serving the route
	Image        string
	ImageID      string
	Running      bool
	Restarting   bool
	RestartCount int
	ExitCode     int
	OOMKilled    bool
	Health       string        // Docker's health status: "", starting, healthy, unhealthy
	HealthOutput string        // the last Docker health check's output
	HasCheck     bool          // the container has a Docker HEALTHCHECK
	CheckCommand []string      // its HEALTHCHECK's command as an exec runs it (CMD-SHELL through /bin/sh -c)
	CheckWindow  time.Duration // how long its HEALTHCHECK allows to become healthy: start period + retries × (interval + timeout)
	Port         int           // the app's port inside the container
	Upstream     string        // host:port the proxy dials; "" when not published
	Probe        string        // host:port a health check from the host dials ("" : Upstream)
	Created      time.Time
	StartedAt    time.Time
}

// Runtime is a container engine as the procedure needs it, by role.
// internal/docker implements it, and the optional roles below, on the
// Docker Engine API. An engine that lacks an optional role is not asked to
// fake it: the procedure does without it, or refuses what needs it.
type Runtime interface {
	Images
	Containers
	Diagnostics
}

// Images builds and fetches the image a release runs.
type Images interface {
	// Build runs the user's own `docker build`, streaming its output.
	Build(ctx context.Context, spec BuildSpec, tag string, out io.Writer) error
	// ImageID resolves a reference to the local image's ID; ErrImageNotFound if absent.
	ImageID(ctx context.Context, ref string) (string, error)
	// Pull fetches ref from its registry with the user's Docker
	// credentials, streaming progress to out; ErrPull if it cannot.
	Pull(ctx context.Context, ref string, out io.Writer) error
	// Digest is the registry digest (name@sha256:…) of the local image
	// imageID that ref names; "" for an image built here.
	Digest(ctx context.Context, imageID, ref string) (string, error)
}

// Containers runs a service's releases and its release jobs.
type Containers interface {
	// Releases lists the containers labelled as releases of service, newest first.
	Releases(ctx context.Context, service string) ([]Container, error)
	// Job runs cmd once in a one-off container of imageID with svc's
	// environment, volumes and networks (nothing published, no restart),
	// streams its output to out, removes it, and returns its exit code.
	Job(ctx context.Context, svc Service, imageID string, cmd []string, out io.Writer) (int, error)
	// Run creates and starts a container of release of svc from imageID
	// (replica: 0 for a release of one, 1…N for one of several), published
	// on loopback only, on a host port it keeps for its whole life.
	Run(ctx context.Context, svc Service, release, replica int, imageID string) (Container, error)
	// Start starts a stopped container with restart policy restart.
	Start(ctx context.Context, id string, restart string) (Container, error)
	// Watch reports the container's state changes (die, restart, oom,
	// health_status...) as they happen, until ctx ends; nil if it cannot.
	Watch(ctx context.Context, id string) <-chan string
	Inspect(ctx context.Context, id string) (Container, error)
	// Stop stops a container (SIGTERM, SIGKILL after timeout) so that it
	// stays stopped: no restart policy brings it back at a dockerd restart.
	Stop(ctx context.Context, id string, timeout time.Duration) error
	Remove(ctx context.Context, id string) error
}

// Diagnostics says what a container said, for a failure's message.
type Diagnostics interface {
	Logs(ctx context.Context, id string, lines int) (string, error)
}

// Adopter finds containers someone else started (an optional role): a
// first deploy takes them over as the live release.
type Adopter interface {
	// Serving finds the running container that upstream (host:port, or a
	// container's name or alias and port) reaches.
	Serving(ctx context.Context, upstream string) (*Container, error)
	// Find lists the running containers that carry labels and were not
	// started by handoff (a compose service's).
	Find(ctx context.Context, labels map[string]string) ([]Container, error)
}

// Announcer gives a healthy container the names svc's networks give the
// service (its aliases), so that other services find it by them (an
// optional role: an engine whose service names come with the release
// itself has none).
type Announcer interface {
	Announce(ctx context.Context, c Container, svc Service) error
}

// Execer runs a command in a container (an optional role): health type cmd.
type Execer interface {
	Exec(ctx context.Context, id string, cmd []string) (exitCode int, output string, err error)
}

// Prober runs an HTTP or TCP health check where the container can be
// reached (an optional role): an engine whose containers a check from this
// host cannot reach (tasks on other nodes) checks them itself. Without it,
// handoff checks from this host, at the container's published port.
type Prober interface {
	Probe(ctx context.Context, kind HealthKind, h HealthCheck, c Container) (ok bool, why string)
}

// InFlight is what the proxy says about requests still running on an upstream.
type InFlight struct {
	Requests int
	Reported bool   // false: this proxy cannot tell (Caddy before 2.11.2)
	Note     string // why requests are counted that cannot be seen, for the record
}

// Proxy sets the service's route: which releases' endpoints get its
// requests, and in what shares. internal/caddy implements it for Caddy,
// internal/proxy/proxyclient for `handoff proxy`; internal/deploy/proxytest
// is the contract every implementation keeps.
type Proxy interface {
	// Route returns the service's route as the proxy serves it now; empty:
	// no route yet. known lists the endpoints of the service's containers,
	// for routes found by upstream. Release names may be "" (a proxy that
	// keeps only endpoints and weights): compare routes with Same.
	Route(ctx context.Context, known []string) (Route, error)
	// Preflight checks, before anything is started, that a change away
	// from the current route could be made and kept. It may bring the
	// proxy's own files in step with what it serves (a Caddyfile an
	// interrupted switch left behind: it names one of known); it returns
	// what it did, for the record.
	Preflight(ctx context.Context, current Route, known []string) ([]string, error)
	// SetRoute changes the route from from to to, atomically, and verifies
	// it. When the route already is to (Same), it finishes what a change
	// whose answer was lost left undone, and succeeds. When it is neither
	// from nor to, it changes nothing and fails with ErrConflict. A route
	// the proxy cannot serve (weights it has no way to split by) is refused
	// with ErrProxy before anything changes.
	SetRoute(ctx context.Context, from, to Route) error
	// PointsAt names every route of this proxy that sends traffic to
	// upstream now, the service's own included: what points at a container
	// must never be stopped or removed under it.
	PointsAt(ctx context.Context, upstream string) ([]string, error)
	// InFlight reports the requests still running on upstream.
	InFlight(ctx context.Context, upstream string) (InFlight, error)
	// Retire ends what still runs on a drained upstream before its container
	// stops (WebSockets get a close frame); a proxy that cannot, does nothing.
	Retire(ctx context.Context, upstream string) error
	// Advice lists settings missing for a deploy without failures; upstream
	// is one endpoint of the route.
	Advice(ctx context.Context, upstream string) ([]string, error)
	// Describe names the proxy and route for messages ("Caddy at ... route app.test").
	Describe() string
}

// Counter is a proxy that counts what users got from each endpoint of the
// route (an optional role of a Proxy: handoff proxy). A canary and the
// watch after a switch judge releases by it; a proxy without it refuses them.
type Counter interface {
	// Counts reads the counts of the route's endpoints as they are now.
	Counts(ctx context.Context) (Counts, error)
	// PerEndpoint says whether the counts tell the route's endpoints
	// apart (handoff proxy). false: any endpoints get the route's counts
	// as a whole (Caddy's metrics), which judge the watch, where one
	// release serves at a time, but not a canary, where two do.
	PerEndpoint() bool
}

// CountChecker is a Counter that can say, before anything starts, whether
// it will be able to count (Caddy: whether its HTTP metrics are on, and
// tell this site from the others).
type CountChecker interface {
	CanCount(ctx context.Context) error
}

// Counts is one reading of a Counter: every endpoint's counts since it
// entered the route.
type Counts interface {
	// Since is what endpoints got between earlier, a reading taken before
	// this one, and this one; earlier nil: since they entered the route.
	Since(earlier Counts, endpoints []string) Window
}

// Laggards is a proxy made of several that each keep a route of their own
// (every node's handoff proxy on a swarm): one that missed a switch (its node
// was down) serves the route before it. Optional: repair sends the route
// again to bring them in step, and status names them.
type Laggards interface {
	// Behind names the parts that serve another route than route, and what
	// they serve.
	Behind(ctx context.Context, route Route) ([]string, error)
}

// Parts is a proxy made of several that each switch on their own (every
// node's handoff proxy on a swarm). Optional: status shows a row per part,
// and the record keeps how each part took each switch.
type Parts interface {
	// PartStatus is every part as it is now: where it runs, what it
	// serves and its requests in flight. A part that could not be read is
	// a row that says why; the error is for a read that reached none.
	PartStatus(ctx context.Context) ([]PartStatus, error)
	// LastSwitch is how each part took the last SetRoute; none when that
	// reached no part (refused before it was sent).
	LastSwitch() []PartResult
}

// Steering lets a person promote or abort a running canary from another
// shell, and shows how it goes (`handoff canary`). Optional: without it a
// canary is decided by its analysis alone.
type Steering interface {
	// Asked takes the decision a person asked for since the last call:
	// AskPromote, AskAbort, or "".
	Asked(service string) (string, error)
	// Show publishes the canary's state as it is now; nil: it ended.
	Show(service string, st *CanaryStatus) error
}

// Pauser holds a service's new requests while a release job runs, and
// lets them go on (handoff proxy: pause and resume).
type Pauser interface {
	Pause(ctx context.Context, maxWait time.Duration) error
	Resume(ctx context.Context) error
}

// Locker keeps two handoffs of one service from interleaving.
type Locker interface {
	Lock(ctx context.Context, service string) (unlock func(), err error)
}

// History records each deploy's phases before they act.
type History interface {
	Save(rec *Record) error
	List(service string) ([]Record, error)
}

// Reporter shows the procedure's progress to a person or a log.
type Reporter interface {
	PhaseStart(name, detail string)
	PhaseDone(name string, took time.Duration, err error)
	Note(msg string)
	// Progress says what a phase is waiting for as it changes: state (a
	// health check's answer, requests still in flight), detail (which
	// check; may change every time without being news).
	Progress(phase, state, detail string)
	Output() io.Writer // where build output streams
}
