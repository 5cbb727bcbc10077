package deploy

import (
	"fmt"
	"time"
)

// Kinds of procedure a Record describes.
const (
	KindDeploy   = "deploy"
	KindRollback = "rollback"
	KindRepair   = "repair"
)

// Outcomes of a Record.
const (
	OutcomeRunning     = "running"
	OutcomeSucceeded   = "succeeded"
	OutcomeFailed      = "failed"
	OutcomeInterrupted = "interrupted"
)

// Phases of the procedure, in order.
const (
	PhaseImage   = "image"
	PhaseHook    = "pre_deploy" // the pre_deploy hook
	PhaseRelease = "release"    // the release job
	PhaseStart   = "start"
	PhaseHealth  = "health"
	PhaseSwitch  = "switch"
	PhaseDrain   = "drain"
	PhaseRetire  = "retire"
	PhaseRecover = "recover"
	PhaseCanary  = "canary" // the new release gets a share of the requests, step by step
	PhaseWatch   = "watch"  // after the switch, the old release still up to switch back to
)

// Record is one deploy, rollback or repair as kept in the history. It is
// written from the procedure's run and saved before each phase acts, so an
// interrupted deploy shows where it stopped; the steps never decide by it.
// Its JSON is what history files hold: a field is added, never renamed.
type Record struct {
	ID          string    `json:"id"`
	Service     string    `json:"service"`
	Kind        string    `json:"kind"`
	Started     time.Time `json:"started"`
	Finished    time.Time `json:"finished,omitzero"`
	Outcome     string    `json:"outcome"`
	Phase       string    `json:"phase"`
	Error       string    `json:"error,omitempty"`
	Image       string    `json:"image,omitempty"`
	ImageID     string    `json:"image_id,omitempty"`
	Digest      string    `json:"digest,omitempty"` // name@sha256:… the image was pulled as; "" for one built here
	FromRelease int       `json:"from_release"`
	ToRelease   int       `json:"to_release"`
	From        string    `json:"from_container,omitempty"`
	FromImage   string    `json:"from_image,omitempty"`    // what the old release ran, for a rollback to it
	FromImageID string    `json:"from_image_id,omitempty"` // once it is gone
	To          string    `json:"to_container,omitempty"`
	OldUpstream string    `json:"old_upstream,omitempty"`
	NewUpstream string    `json:"new_upstream,omitempty"`
	// A release of several containers: From and To name the release
	// (web-4), these its containers (web-4-1, web-4-2) and their endpoints;
	// Old/NewUpstream are the first of them.
	FromContainers []string      `json:"from_containers,omitempty"`
	ToContainers   []string      `json:"to_containers,omitempty"`
	OldEndpoints   []string      `json:"old_endpoints,omitempty"`
	NewEndpoints   []string      `json:"new_endpoints,omitempty"`
	Switched       bool          `json:"switched"`                // To was put in service: the proxy switched to it, or (no route) it replaced From
	Held           bool          `json:"held_requests,omitempty"` // the proxy holds the service's requests for the release job
	FromStopped    bool          `json:"from_stopped,omitempty"`  // the old release was stopped (kept for rollback)
	FromRemoved    bool          `json:"from_removed,omitempty"`  // and then removed (its image kept)
	Phases         []PhaseRecord `json:"phases"`
	// Canary is the canary's course, for a deploy that ran one; Analysis
	// every verdict of its steps and of the watch, with their numbers.
	Canary   *CanaryRecord `json:"canary,omitempty"`
	Analysis []Analysis    `json:"analysis,omitempty"`
	Notes    []string      `json:"notes,omitempty"`
	PID      int           `json:"pid"`
	// Nodes is how each part of a proxy made of several (a swarm's nodes)
	// took each switch the procedure made, in order: a deploy that
	// switches back has the rows of both, told apart by Route and
	// Generation.
	Nodes []PartResult `json:"nodes,omitempty"`
}

// Results of a PartResult.
const (
	PartSwitched     = "switched"        // switched, and what it drained ended
	PartDrainTimeout = "drain timed out" // switched; what still ran on the old release was cut
	PartNotReached   = "not reached"     // the switch did not get there (node down, paused)
	PartRefused      = "refused"         // the part did not switch (a newer generation, its DNS never in step)
	PartFailed       = "failed"          // it could not be told to, or said nothing that reads
)

// PartResult is how one part of a proxy took one switch.
type PartResult struct {
	Node       string        `json:"node"`
	Route      string        `json:"route"`                // the route the switch sent
	Generation uint64        `json:"generation,omitempty"` // the switch's number, where the proxy counts them
	Result     string        `json:"result"`               // PartSwitched…
	ExitCode   int           `json:"exit_code,omitempty"`
	Detail     string        `json:"detail,omitempty"` // why not reached, or what it said last
	Took       time.Duration `json:"took_ns,omitempty"`
}

// PhaseRecord is one phase of a Record with its duration.
type PhaseRecord struct {
	Name     string        `json:"name"`
	Started  time.Time     `json:"started"`
	Duration time.Duration `json:"duration_ns"`
	Error    string        `json:"error,omitempty"`
	ExitCode *int          `json:"exit_code,omitempty"` // a release job's or hook's
}

func newRecord(service, kind string, pid int, now time.Time) *Record {
	return &Record{
		ID:      fmt.Sprintf("%s-%s", now.UTC().Format("20060102T150405.000000"), kind),
		Service: service,
		Kind:    kind,
		Started: now,
		Outcome: OutcomeRunning,
		PID:     pid,
	}
}

// Took is the record's wall time so far.
func (r Record) Took() time.Duration {
	if r.Finished.IsZero() {
		return 0
	}
	return r.Finished.Sub(r.Started)
}
