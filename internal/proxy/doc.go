// Package proxy is the data plane of `handoff proxy`: a small switch
// between the front proxy (Caddy, nginx, or nothing) and the containers.
// The front points at one stable loopback port per service and is never
// reloaded by a deploy; a deploy switches the service's target here, per
// request, and no client connection is closed by it.
//
// server.go is the switch (one listener per service), target.go one
// upstream and what is in flight on it, named.go an upstream whose host is
// a DNS name (Swarm's tasks.<service>) and its addresses, change.go a route
// change's generation and expected IPs, pause.go and gate.go the pauses
// and their leases, maintenance.go the maintenance page, listen.go the
// listens tried again, metrics.go the Prometheus metrics, state.go the
// state file, control.go the control API's handler, handover.go how a
// process lets go of its connections once another serves its sockets.
//
// The daemon that runs it (sockets, tableflip, signals) is proxyd, the
// deploy side that drives it proxyclient; the two share only wire.
package proxy
