// Package wire is the language of handoff proxy's control API: the JSON
// shapes its socket takes and answers, the bounds of a pause, and what an
// error's status means. The data plane (internal/proxy) serves it and the
// deploy side (internal/proxy/proxyclient) speaks it; neither imports the
// other.
package wire

import (
	"encoding/json"
	"errors"
	"time"
)

// DefaultSocket is where `handoff proxy` listens for control by default.
const DefaultSocket = "/run/handoff/proxy.sock"

// ServicesPath is the control API's list of services; one service is
// ServicesPath/{name}, its actions under it (/switch, /route, /retire,
// /pause, /resume, /maintenance) and its counts (/stats).
const ServicesPath = "/v1/services"

// Bounds of a pause: how long one request may be held, and the lease: how
// long the proxy holds requests for a pause no one resumes (a deploy
// killed by SIGKILL, an SSH hangup, a cancelled CI job), after which it
// lets them go on by itself.
const (
	DefaultPauseWait = 30 * time.Second
	MaxPauseWait     = 5 * time.Minute
	// DefaultPauseLease is the lease of a pause made without one, as
	// `handoff proxy pause` by a person makes it.
	DefaultPauseLease = 15 * time.Minute
	// MaxPauseLease bounds any lease.
	MaxPauseLease = 24 * time.Hour
	// PauseLeaseMargin is what a deploy's pause holds beyond the time its
	// release job may take (see proxyclient's Pauser).
	PauseLeaseMargin = 30 * time.Second
)

// ServiceState is a service as the control API and the state file show it.
type ServiceState struct {
	Name   string `json:"name"`
	Listen string `json:"listen"`
	// Upstream is the route's one endpoint of weight > 0 when it has
	// exactly one (what Put and Switch make), else "".
	Upstream string `json:"upstream"`
	// InFlight counts the requests on the route's endpoints of weight > 0.
	InFlight int64 `json:"in_flight"`
	// Route is where new requests go: its backends (releases), their
	// weights and endpoints. A backend of weight 0 gets none (it drains).
	Route []BackendState `json:"route,omitempty"`
	// Draining: every endpoint still finishing requests that new ones no
	// longer go to (it left the route, or its backend has weight 0).
	Draining []DrainingState `json:"draining,omitempty"`
	Paused   bool            `json:"paused,omitempty"`
	MaxWait  Duration        `json:"pause_max_wait,omitempty"` // how long a paused request may be held
	Held     int64           `json:"held,omitempty"`           // requests a pause holds now
	// HandoverPending: a restart's previous process is still finishing
	// requests this one cannot count; a drain must wait for it.
	HandoverPending bool `json:"handover_pending,omitempty"`
	// PausedSince and PauseUntil: when the pause began, and its lease:
	// when the proxy lets the requests go on by itself if no resume came.
	PausedSince time.Time `json:"paused_since,omitzero"`
	PauseUntil  time.Time `json:"pause_until,omitzero"`
	// Maintenance: the service answers 503 with a page, but on Allow's paths.
	Maintenance *MaintenanceState `json:"maintenance,omitempty"`
	// NotListening: the service is known (saved, and switched as any
	// other) but its address cannot be listened on yet; the proxy tries
	// again until it can. Nothing reaches either release meanwhile.
	NotListening *ListenFailure `json:"not_listening,omitempty"`
	// Unrestored: an entry of the state file under this name (which may be
	// "") that could not be used, and why. It is kept in the file as it
	// was and nothing is served for it; Listen and Upstream are what could
	// be read of it.
	Unrestored string `json:"unrestored,omitempty"`
	// Generation is the last generation a route change carried (0: none
	// did); the proxy refuses a change that carries one at or below it.
	Generation uint64 `json:"generation,omitempty"`
}

// Backend is one release in a route: its endpoints (host:port), and its
// share of the new requests (Weight out of the route's sum of weights).
type Backend struct {
	Release   string   `json:"release"`
	Endpoints []string `json:"endpoints"`
	Weight    int      `json:"weight"`
}

// MaxWeight bounds a backend's weight, MaxBackends a route's backends and
// MaxEndpoints a backend's endpoints.
const (
	MaxWeight    = 1000
	MaxBackends  = 16
	MaxEndpoints = 256
)

// BackendState is a backend of a service's route as the proxy runs it.
type BackendState struct {
	Release   string          `json:"release"`
	Weight    int             `json:"weight"`
	Endpoints []EndpointState `json:"endpoints"`
}

// EndpointState is one endpoint of a backend: its requests in flight, and
// Down while it refuses connections (it gets no new requests while any
// other endpoint of its backend is up; the proxy probes it until it
// answers again).
type EndpointState struct {
	Endpoint string `json:"endpoint"`
	InFlight int64  `json:"in_flight"`
	Down     bool   `json:"down,omitempty"`
	// Addresses: a named endpoint's (tasks.api-green:8000), as the proxy
	// last resolved it, and those that left the answer but still finish
	// requests (Gone).
	Addresses []AddressState `json:"addresses,omitempty"`
}

// AddressState is one address of a named endpoint.
type AddressState struct {
	Address  string `json:"address"`
	InFlight int64  `json:"in_flight"`
	Down     bool   `json:"down,omitempty"` // its last dial failed
	Gone     bool   `json:"gone,omitempty"` // no longer in the answer: no new requests
}

// Spec is the route a state shows, without its counts: what a
// RouteRequest's From names.
func Spec(route []BackendState) []Backend {
	out := make([]Backend, 0, len(route))
	for _, b := range route {
		eps := make([]string, 0, len(b.Endpoints))
		for _, e := range b.Endpoints {
			eps = append(eps, e.Endpoint)
		}
		out = append(out, Backend{Release: b.Release, Endpoints: eps, Weight: b.Weight})
	}
	return out
}

// DrainingState is an old endpoint still finishing requests.
type DrainingState struct {
	Upstream string `json:"upstream"`
	InFlight int64  `json:"in_flight"`
}

// ListenFailure says why a service kept from the state file does not
// listen: its address could not be listened on at start (the port still
// held by another process, a LAN address not up yet) nor since.
type ListenFailure struct {
	Error    string    `json:"error"`    // the last attempt's
	Since    time.Time `json:"since"`    // the first failure
	Attempts int       `json:"attempts"` // failed so far
}

// MaintenanceState is a service's maintenance page, as the control API
// takes it (PUT .../maintenance) and the state file keeps it.
type MaintenanceState struct {
	Page       string   `json:"page"`
	RetryAfter int      `json:"retry_after"` // seconds
	Allow      []string `json:"allow,omitempty"`
}

// PutRequest creates a service (PUT ServicesPath/{name}), sending to
// Upstream or, instead, along Route.
type PutRequest struct {
	Listen   string    `json:"listen"`
	Upstream string    `json:"upstream,omitempty"`
	Route    []Backend `json:"route,omitempty"`
}

// SwitchRequest points a service from one upstream to another (POST .../switch).
type SwitchRequest struct {
	From string `json:"from"`
	To   string `json:"to"`
}

// RouteRequest changes a service's route from From to To (PUT
// .../route): applied only if the route is From now (409 otherwise; an
// empty From: whatever it is), and answered as done when it is To
// already. Backends and their endpoints are compared in any order.
//
// Generation (per service; 0: none) orders changes from several
// deployers: one at or below the proxy's is refused (ErrOldGeneration),
// but for a repeat of the change it holds. Expect names, for a named
// endpoint of To, IPs its lookup must contain before the change is made;
// the proxy looks again until it does or Converge (default
// DefaultConverge) passes, and then refuses it (ErrNotConverged).
type RouteRequest struct {
	From       []Backend           `json:"from"`
	To         []Backend           `json:"to"`
	Generation uint64              `json:"generation,omitempty"`
	Expect     map[string][]string `json:"expect,omitempty"`
	Converge   Duration            `json:"converge,omitempty"`
}

// DefaultConverge is how long a change with Expect waits for the lookup.
const DefaultConverge = 10 * time.Second

// RetireRequest ends what still runs on an upstream, one endpoint (POST .../retire).
type RetireRequest struct {
	Upstream string `json:"upstream"`
}

// PauseRequest holds a service's requests (POST .../pause): each for at
// most MaxWait, the pause for at most Lease, both as Go durations ("30s");
// "" takes the default.
type PauseRequest struct {
	MaxWait string `json:"max_wait,omitempty"`
	Lease   string `json:"lease,omitempty"`
}

// ErrorReply is the body of an answer that is not 2xx. Its status says
// what went wrong: 400 a bad request, 404 no such service, 409 the
// service's target (or route) is not the one named, 422 ErrUnrestored, 500 the state
// file could not be written (nothing changed), 503 the proxy is
// restarting (try again: the new process takes the change), 412
// ErrOldGeneration, 424 ErrNotConverged.
type ErrorReply struct {
	Error string `json:"error"`
}

// ErrUnrestored is a service the proxy knows only from an entry of its
// state file it could not restore (422): its route may be lost, not absent.
var ErrUnrestored = errors.New("the service's entry in the state file could not be restored")

// ErrOldGeneration is a route change whose generation is at or below
// the one the proxy holds (412): a newer deploy or rollback came first.
var ErrOldGeneration = errors.New("refused: an old generation")

// ErrNotConverged is a route change whose expected IPs the proxy's lookup
// of the name never contained within the change's time (424); nothing
// was changed.
var ErrNotConverged = errors.New("not converged")

// Duration is a time.Duration written as text ("30s") in JSON.
type Duration time.Duration

// MarshalJSON writes "30s".
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads "30s".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}
