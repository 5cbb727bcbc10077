package deploy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"
)

// fakeRuntime is a tiny in-memory container runtime.
type fakeRuntime struct {
	mu         sync.Mutex
	containers []*Container
	images     map[string]string
	nextPort   int
	healthy    func(c Container) Container // how a started container looks on inspect
	logs       string
	calls      []string
	announced  []string          // releases given their service's names, in order
	registry   map[string]string // what a pull of a reference brings: ref → image ID
	pullErr    error
	jobs       [][]string // release jobs run, in order
	jobExit    int
	jobErr     error                                       // what Job returns before running, if set
	exec       func(id string, cmd []string) (int, string) // what Exec answers, if set (else exit 0)
	jobBlock   bool                                        // a job runs until its context ends
	onJob      func()                                      // runs as a job starts (a Ctrl-C at that moment)
}

func newFakeRuntime() *fakeRuntime {
	return &fakeRuntime{images: map[string]string{"app:v2": "sha256:v2"}, nextPort: 40000,
		healthy: func(c Container) Container { c.Health = "healthy"; return c }}
}

func (f *fakeRuntime) add(c Container) *Container {
	f.mu.Lock()
	defer f.mu.Unlock()
	cp := c
	f.containers = append(f.containers, &cp)
	return &cp
}

func (f *fakeRuntime) find(id string) *Container {
	for _, c := range f.containers {
		if c.ID == id || c.Name == id {
			return c
		}
	}
	return nil
}

func (f *fakeRuntime) record(call string) {
	f.calls = append(f.calls, call)
}

func (f *fakeRuntime) Releases(_ context.Context, service string) ([]Container, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Container
	for _, c := range f.containers {
		if c.Service == service {
			out = append(out, *c)
		}
	}
	slices.SortFunc(out, func(a, b Container) int { return b.Release - a.Release })
	return out, nil
}

func (f *fakeRuntime) Serving(_ context.Context, upstream string) (*Container, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.containers {
		if c.Running && c.Upstream == upstream {
			cp := *c
			cp.Adopted = c.Service == ""
			return &cp, nil
		}
	}
	return nil, nil
}

func (f *fakeRuntime) Build(context.Context, BuildSpec, string, io.Writer) error { return nil }

func (f *fakeRuntime) ImageID(_ context.Context, ref string) (string, error) {
	if id, ok := f.images[ref]; ok {
		return id, nil
	}
	for _, id := range f.images {
		if id == ref {
			return id, nil
		}
	}
	return "", fmt.Errorf("%w: %s", ErrImageNotFound, ref)
}

func (f *fakeRuntime) Pull(_ context.Context, ref string, _ io.Writer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("pull " + ref)
	if f.pullErr != nil {
		return f.pullErr
	}
	id, ok := f.registry[ref]
	if !ok {
		return fmt.Errorf("%w: %s: no such image", ErrPull, ref)
	}
	f.images[ref] = id
	return nil
}

func (f *fakeRuntime) Digest(_ context.Context, imageID, ref string) (string, error) {
	if _, ok := f.registry[ref]; ok {
		return "registry.test/app@" + imageID, nil
	}
	return "", nil
}

func (f *fakeRuntime) Job(ctx context.Context, _ Service, imageID string, cmd []string, out io.Writer) (int, error) {
	f.mu.Lock()
	f.record("job " + strings.Join(cmd, " "))
	f.jobs = append(f.jobs, cmd)
	block, code, onJob, jobErr := f.jobBlock, f.jobExit, f.onJob, f.jobErr
	f.mu.Unlock()
	if onJob != nil {
		onJob()
	}
	if jobErr != nil {
		return -1, jobErr
	}
	fmt.Fprintf(out, "job on %s\n", imageID)
	if block {
		<-ctx.Done()
		return -1, ctx.Err()
	}
	return code, nil
}

func (f *fakeRuntime) Run(_ context.Context, svc Service, release, replica int, imageID string) (Container, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nextPort++
	id := fmt.Sprintf("id-%s-%d", svc.Name, release)
	if replica != 0 {
		id += fmt.Sprintf("-%d", replica)
	}
	c := &Container{ID: id, Name: svc.ContainerName(release, replica), Replica: replica,
		Service: svc.Name, Release: release, Image: svc.Image, ImageID: imageID, Running: true, Port: svc.Port,
		StartedAt: time.Now()}
	if svc.Port != 0 {
		c.Upstream = fmt.Sprintf("127.0.0.1:%d", f.nextPort)
	}
	if svc.Port != 0 && replica != 0 {
		// Started at once: a port by release and replica, not by the order they come in.
		c.Upstream = fmt.Sprintf("127.0.0.1:%d", 40000+100*release+replica)
	}
	f.containers = append(f.containers, c)
	f.record("run " + c.Name)
	return f.healthy(*c), nil
}

// Start keeps a release's address, as a pinned host port does.
func (f *fakeRuntime) Start(_ context.Context, id string, _ string) (Container, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.find(id)
	if c.Upstream == "" {
		f.nextPort++
		c.Upstream = fmt.Sprintf("127.0.0.1:%d", f.nextPort)
	}
	c.Running = true
	f.record("start " + c.Name)
	return f.healthy(*c), nil
}

func (f *fakeRuntime) Watch(context.Context, string) <-chan string { return nil }

func (f *fakeRuntime) Announce(_ context.Context, c Container, _ Service) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.announced = append(f.announced, c.Name)
	return nil
}

// Find returns the containers without a service label whose labels match.
func (f *fakeRuntime) Find(_ context.Context, labels map[string]string) ([]Container, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Container
	for _, c := range f.containers {
		if c.Running && c.Service == "" && labels["app"] != "" && strings.HasPrefix(c.Name, labels["app"]+"-byhand") {
			out = append(out, *c)
		}
	}
	return out, nil
}

func (f *fakeRuntime) Inspect(_ context.Context, id string) (Container, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.find(id)
	if c == nil {
		return Container{}, errors.New("no such container " + id)
	}
	return f.healthy(*c), nil
}

func (f *fakeRuntime) Exec(_ context.Context, id string, cmd []string) (int, string, error) {
	f.mu.Lock()
	exec := f.exec
	f.mu.Unlock()
	if exec != nil {
		code, out := exec(id, cmd)
		return code, out, nil
	}
	return 0, "", nil
}

func (f *fakeRuntime) Logs(context.Context, string, int) (string, error) { return f.logs, nil }

func (f *fakeRuntime) Stop(_ context.Context, id string, _ time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.find(id)
	c.Running = false
	f.record("stop " + c.Name)
	return nil
}

func (f *fakeRuntime) Remove(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.find(id)
	f.containers = slices.DeleteFunc(f.containers, func(x *Container) bool { return x == c })
	f.record("remove " + c.Name)
	return nil
}

// fakeProxy is a route, beside other routes of the same proxy that the
// deploy must not disturb.
type fakeProxy struct {
	route        Route
	others       map[string]string // other routes: name → upstream
	switchErr    error
	applyAnyway  bool  // the switch takes although it reports switchErr (a lost reply)
	readBackErr  error // Upstream fails after a failed switch
	readBackOnce bool  // and only once
	failOnce     bool  // switchErr fails one switch only
	preflightErr error
	inFlight     []InFlight // answers in turn; the last one repeats
	switches     []string
	retired      []string

	switchesTried []string
	onSwitch      func() // runs as a switch is tried (a Ctrl-C at that moment)
	onInFlight    func() // runs as requests in flight are counted
	inFlightErr   error  // InFlight fails with it, if set

	count func(upstream string) int // requests in flight on upstream, if set (the contract suite's front counts them)
}

// NewFakeProxy is the fake for the contract suite (proxy_contract_test.go,
// in package deploy_test since proxytest imports deploy): its route points
// at upstream, and InFlight reports what count says.
func NewFakeProxy(upstream string, count func(upstream string) int) Proxy {
	return &fakeProxy{route: Only("", upstream), count: count}
}

// LoseNextReply makes the fake p's next switch take and then fail, as one
// whose reply was lost does; lost says whether one did.
func LoseNextReply(p Proxy) (lost func() bool) {
	f := p.(*fakeProxy)
	f.switchErr, f.applyAnyway = ErrProxyUnreached, true
	return func() bool { return f.switchErr == nil }
}

func (p *fakeProxy) Route(context.Context, []string) (Route, error) {
	if p.readBackErr != nil && len(p.switchesTried) > 0 {
		err := p.readBackErr
		if p.readBackOnce {
			p.readBackErr = nil
		}
		return nil, err
	}
	return slices.Clone(p.route), nil
}

// at is the route's endpoints, as the tests name them.
func (p *fakeProxy) at() string { return strings.Join(p.route.Endpoints(), ",") }

func (p *fakeProxy) Preflight(context.Context, Route, []string) ([]string, error) {
	return nil, p.preflightErr
}

func (p *fakeProxy) SetRoute(_ context.Context, from, to Route) error {
	change := strings.Join(from.Endpoints(), ",") + " → " + strings.Join(to.Endpoints(), ",")
	p.switchesTried = append(p.switchesTried, change)
	if p.onSwitch != nil {
		p.onSwitch()
		p.onSwitch = nil
	}
	if Same(p.route, to) && p.switchErr == nil {
		return nil // already there: finishing a switch that took
	}
	if p.switchErr != nil {
		err := p.switchErr
		if p.failOnce {
			p.switchErr = nil
		}
		if p.applyAnyway {
			p.switches = append(p.switches, change)
			p.route = slices.Clone(to)
			p.switchErr = nil // the next call (finishing) works
		}
		return err
	}
	if !Same(from, p.route) {
		return ErrConflict
	}
	p.switches = append(p.switches, change)
	p.route = slices.Clone(to)
	return nil
}

func (p *fakeProxy) PointsAt(_ context.Context, upstream string) ([]string, error) {
	if p.readBackErr != nil && len(p.switchesTried) > 0 {
		return nil, p.readBackErr
	}
	var out []string
	if slices.Contains(p.route.Endpoints(), upstream) {
		out = append(out, "the service's route")
	}
	for name, u := range p.others {
		if u == upstream {
			out = append(out, name)
		}
	}
	return out, nil
}

func (p *fakeProxy) InFlight(ctx context.Context, upstream string) (InFlight, error) {
	if p.onInFlight != nil {
		p.onInFlight()
	}
	if p.inFlightErr != nil {
		return InFlight{}, p.inFlightErr
	}
	if ctx.Err() != nil {
		return InFlight{}, ctx.Err()
	}
	if p.count != nil {
		return InFlight{Requests: p.count(upstream), Reported: true}, nil
	}
	if len(p.inFlight) == 0 {
		return InFlight{Reported: true}, nil
	}
	in := p.inFlight[0]
	if len(p.inFlight) > 1 {
		p.inFlight = p.inFlight[1:]
	}
	return in, nil
}

func (p *fakeProxy) Retire(_ context.Context, upstream string) error {
	p.retired = append(p.retired, upstream)
	return nil
}

func (p *fakeProxy) Advice(context.Context, string) ([]string, error) { return nil, nil }
func (p *fakeProxy) Describe() string                                 { return "fake proxy" }

// memHistory keeps records in memory, newest first.
type memHistory struct {
	recs     []Record
	failFrom string // from this phase on, saves fail (a full disk)
	failing  bool
	// saves counts Save calls per phase, to prove a phase was recorded before it acted.
	phasesSaved []string
}

func (h *memHistory) Save(rec *Record) error {
	if h.failFrom != "" && rec.Phase == h.failFrom {
		h.failing = true
	}
	if h.failing {
		return errors.New("no space left on device")
	}
	h.phasesSaved = append(h.phasesSaved, rec.Phase+":"+rec.Outcome)
	for i := range h.recs {
		if h.recs[i].ID == rec.ID {
			h.recs[i] = *rec
			return nil
		}
	}
	h.recs = append([]Record{*rec}, h.recs...)
	return nil
}

func (h *memHistory) List(string) ([]Record, error) { return slices.Clone(h.recs), nil }

type noLock struct{ err error }

func (l noLock) Lock(context.Context, string) (func(), error) { return func() {}, l.err }

type quietReporter struct{ notes []string }

func (r *quietReporter) PhaseStart(string, string)              {}
func (r *quietReporter) PhaseDone(string, time.Duration, error) {}
func (r *quietReporter) Progress(string, string, string)        {}
func (r *quietReporter) Note(msg string)                        { r.notes = append(r.notes, msg) }
func (r *quietReporter) Output() io.Writer                      { return io.Discard }

// fakeClock is time that passes only when the procedure waits on it.
type fakeClock struct {
	now    time.Time
	waited time.Duration
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Date(2026, 12, 1, 20, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time { return c.now }

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.now = c.now.Add(d)
	c.waited += d
	ch := make(chan time.Time, 1)
	ch <- c.now
	return ch
}

func (f *fakeRuntime) containersOf(service string) []Container {
	out, _ := f.Releases(context.Background(), service)
	return out
}

// countingProxy is a fakeProxy that counts as handoff proxy does: every
// reading adds perRead requests over the route, by its shares, each
// endpoint failing its errRate of them at its p99.
type countingProxy struct {
	*fakeProxy
	perRead int
	errRate map[string]float64       // by endpoint; 0: none fail
	p99     map[string]time.Duration // by endpoint; 0: 20ms
	total   fakeCounts
	reads   int
	onRead  func(reads int) // runs as each reading is taken
	// routeOnly counts as Caddy's metrics do, the route as a whole.
	routeOnly bool
}

func (p *countingProxy) Counts(context.Context) (Counts, error) {
	p.reads++
	if p.onRead != nil {
		p.onRead(p.reads)
	}
	if p.total == nil {
		p.total = fakeCounts{}
	}
	for _, b := range p.route {
		total := 0
		for _, o := range p.route {
			total += o.Weight
		}
		for _, e := range b.Endpoints {
			add := p.perRead * b.Weight / total / len(b.Endpoints)
			w := p.total[e]
			w.Requests += add
			w.Errors += int(float64(add)*p.errRate[e] + 0.5)
			w.P99 = cmp.Or(p.p99[e], 20*time.Millisecond)
			p.total[e] = w
		}
	}
	return maps.Clone(p.total), nil
}

func (p *countingProxy) PerEndpoint() bool { return !p.routeOnly }

// fakeCounts is the fake's reading: each endpoint's counts so far.
type fakeCounts map[string]Window

func (c fakeCounts) Since(earlier Counts, endpoints []string) Window {
	e, _ := earlier.(fakeCounts)
	var w Window
	for _, ep := range endpoints {
		w.Requests += c[ep].Requests - e[ep].Requests
		w.Errors += c[ep].Errors - e[ep].Errors
		w.P99 = max(w.P99, c[ep].P99)
	}
	return w
}

// fakeSteering is a person at another shell: asks is what they ask, at
// the reading of that number.
type fakeSteering struct {
	asks  map[int]string
	calls int
	shown []*CanaryStatus
}

func (s *fakeSteering) Asked(string) (string, error) {
	s.calls++
	return s.asks[s.calls], nil
}

func (s *fakeSteering) Show(_ string, st *CanaryStatus) error {
	s.shown = append(s.shown, st)
	return nil
}
