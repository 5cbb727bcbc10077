package deploy

// run is one procedure as it goes: what its steps hand each other. The
// Record is what is saved of it; what the steps decide by is here, and is
// written into the record each time it is saved.
type run struct {
	svc  Service
	kind string // KindDeploy, KindRollback or KindRepair
	view *view  // what existed before the procedure acted
	rec  *Record
	next *Release // the release being put in service, once started
	// route is the route as the run changed it (a canary's split, the
	// switch); nil until it did: the view's.
	route Route
	// inService says that next serves: the proxy points at it, or, for a
	// service no proxy routes to, it replaced the old release. From then
	// on nothing is undone, and a phase that cannot be recorded still acts.
	inService bool
	held      bool // the proxy holds the service's new requests for the release job
	// judged: a deploy with a canary or a watch, through a proxy that
	// counts (begin decides it once, and refuses one that cannot).
	judged   bool
	exitCode *int // the release job's exit code, for its phase's record
}

func (d *Deployer) newRun(svc Service, kind string) *run {
	return &run{svc: svc, kind: kind, rec: newRecord(svc.Name, kind, d.pid(), d.now())}
}

// save writes the run into its record and saves it in the history.
func (d *Deployer) save(r *run) error {
	r.rec.Switched, r.rec.Held = r.inService, r.held
	if r.view != nil {
		r.rec.OldUpstream, r.rec.OldEndpoints = firstOf(r.view.endpoints())
	}
	if r.next != nil && r.next.Number == r.rec.ToRelease {
		r.rec.NewUpstream, r.rec.NewEndpoints = firstOf(r.next.Endpoints())
		r.rec.ToContainers = r.next.several()
	}
	return d.History.Save(r.rec)
}

// firstOf is endpoints as a record keeps them: the first, and all of them
// when there are several.
func firstOf(endpoints []string) (string, []string) {
	switch len(endpoints) {
	case 0:
		return "", nil
	case 1:
		return endpoints[0], nil
	}
	return endpoints[0], endpoints
}
