// Package proxyclient is the deploy side of handoff proxy: Control speaks
// to a running proxy's control socket about one service (`handoff proxy
// pause`, `resume`, `status`), and Proxy, built on it, is the procedure's
// deploy.Proxy, deploy.Maintainer and deploy.Pauser for `proxy: handoff`.
// It speaks the wire types only; the data plane it talks to is
// internal/proxy.
package proxyclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/handoff-dev/handoff/internal/deploy"
	"github.com/handoff-dev/handoff/internal/proxy/wire"
)

// Control drives one service of a running `handoff proxy` through its
// control socket.
type Control struct {
	socket  string
	service string
	http    *http.Client
}

// NewControl is the control of service through socket ("": the default,
// wire.DefaultSocket). A Control for List alone needs no service.
func NewControl(socket, service string) *Control {
	if socket == "" {
		socket = wire.DefaultSocket
	}
	// Every call dials afresh: a proxy handing over to its next process
	// (SIGHUP) stops listening on the socket but answers "restarting" on
	// the connections it has until it exits, which a kept connection would
	// reach for as long as the handover lasts. A unix socket costs nothing
	// to dial.
	tr := &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", socket)
	}}
	return &Control{socket: socket, service: service, http: &http.Client{Transport: tr, Timeout: 15 * time.Second}}
}

// Pause holds the service's new requests, each for at most maxWait, and
// the whole pause for at most lease (0: wire.DefaultPauseLease), after
// which the proxy lets them go on by itself.
func (c *Control) Pause(ctx context.Context, maxWait, lease time.Duration) (wire.ServiceState, error) {
	in := wire.PauseRequest{MaxWait: maxWait.String()}
	if lease > 0 {
		in.Lease = lease.String()
	}
	var st wire.ServiceState
	err := c.call(ctx, http.MethodPost, "/pause", in, &st)
	return st, c.found(err)
}

// Resume releases them.
func (c *Control) Resume(ctx context.Context) (wire.ServiceState, error) {
	var st wire.ServiceState
	err := c.call(ctx, http.MethodPost, "/resume", struct{}{}, &st)
	return st, c.found(err)
}

// Stats are the proxy's counts of every endpoint of the service's route,
// cumulative: wire.Between turns two of them into a release's window.
func (c *Control) Stats(ctx context.Context) (wire.ServiceStats, error) {
	var st wire.ServiceStats
	err := c.call(ctx, http.MethodGet, "/stats", nil, &st)
	return st, c.found(err)
}

// State is the service's state, with its counts.
func (c *Control) State(ctx context.Context) (wire.ServiceState, error) {
	st, err := c.get(ctx)
	return st, c.found(err)
}

// ChangeRoute changes the service's route as in says (its generation and
// expected IPs included): wire.ErrOldGeneration and wire.ErrNotConverged
// say why the proxy refused it.
func (c *Control) ChangeRoute(ctx context.Context, in wire.RouteRequest) (wire.ServiceState, error) {
	waits := c.clone()
	if len(in.Expect) > 0 {
		// The proxy answers once its lookups converge, or give up.
		waits.http.Timeout += time.Duration(max(in.Converge, wire.Duration(wire.DefaultConverge)))
	}
	var st wire.ServiceState
	err := waits.call(ctx, http.MethodPut, "/route", in, &st)
	return st, c.found(err)
}

// Create makes the service, listening on listen and sending along route:
// a proxy's first route for it (a swarm node's proxy before its first switch).
func (c *Control) Create(ctx context.Context, listen string, route []wire.Backend) (wire.ServiceState, error) {
	var st wire.ServiceState
	err := c.call(ctx, http.MethodPut, "", wire.PutRequest{Listen: listen, Route: route}, &st)
	return st, err
}

// NotThere says err is the proxy having no such service.
func NotThere(err error) bool { return errors.Is(err, errNotThere) }

// Retire ends what still runs on upstream, one endpoint that left the
// route.
func (c *Control) Retire(ctx context.Context, upstream string) (wire.ServiceState, error) {
	var st wire.ServiceState
	err := c.call(ctx, http.MethodPost, "/retire", wire.RetireRequest{Upstream: upstream}, &st)
	return st, c.found(err)
}

func (c *Control) clone() *Control {
	cl := *c.http
	return &Control{socket: c.socket, service: c.service, http: &cl}
}

// List returns every service the proxy serves.
func (c *Control) List(ctx context.Context) ([]wire.ServiceState, error) {
	var list []wire.ServiceState
	err := c.do(ctx, http.MethodGet, wire.ServicesPath, nil, &list)
	return list, err
}

// Upstream is the service's current target; "" before its first deploy.
// A service the proxy cannot listen for yet has its target all the same.
// The proxy may have lost the route, though: when its state file has an
// entry under this name it could not restore, or entries it could not
// read a name from, Upstream fails (wire.ErrUnrestored) instead of saying "".
func (c *Control) Upstream(ctx context.Context, _ []string) (string, error) {
	st, err := c.current(ctx)
	return st.Upstream, err
}

// current is the service's state as Upstream reads it: the zero state
// before its first deploy, and wire.ErrUnrestored where the route may be
// lost.
func (c *Control) current(ctx context.Context) (wire.ServiceState, error) {
	st, err := c.get(ctx)
	if errors.Is(err, errNotThere) {
		return wire.ServiceState{}, c.unnamedEntries(ctx)
	}
	return st, err
}

func (c *Control) found(err error) error {
	if errors.Is(err, errNotThere) {
		return notThereError{fmt.Sprintf("handoff proxy has no service %s (deploy it with proxy: handoff first)", c.service)}
	}
	return err
}

// notThereError is a service the proxy does not have: deploy.ErrConfig for
// the exit code, and NotThere.
type notThereError struct{ msg string }

func (e notThereError) Error() string { return e.msg }

func (e notThereError) Is(target error) bool {
	return target == deploy.ErrConfig || target == errNotThere
}

// unnamedEntries fails when the proxy keeps entries of its state file it
// could not read a name from: one of them may be this service's.
func (c *Control) unnamedEntries(ctx context.Context) error {
	list, err := c.List(ctx)
	if err != nil {
		return err
	}
	for _, st := range list {
		if st.Unrestored != "" && st.Name == "" {
			return unrestoredError{fmt.Sprintf("handoff proxy has no route for %s, but its state file holds an entry it could not restore, which may be %s's: %s; see `handoff proxy status`, and mend the state file before deploying", c.service, c.service, st.Unrestored)}
		}
	}
	return nil
}

// unrestoredError is wire.ErrUnrestored, and deploy.ErrProxy for the exit code.
type unrestoredError struct{ msg string }

func (e unrestoredError) Error() string { return e.msg }

func (e unrestoredError) Is(target error) bool {
	return target == wire.ErrUnrestored || target == deploy.ErrProxy
}

// refusal is a change the proxy refused, as the proxy says it: is is
// wire's error for its status, and it is deploy.ErrProxy for the exit code.
type refusal struct {
	msg string
	is  error
}

func (e refusal) Error() string { return e.msg }

func (e refusal) Is(target error) bool { return target == e.is || target == deploy.ErrProxy }

var errNotThere = errors.New("service not in the proxy")

// restartRetry is how long a change is tried again while the proxy restarts.
const restartRetry = 15 * time.Second

// get is the service's state. A name the proxy knows only from an entry
// of its state file it could not restore is a wire.ErrUnrestored, never
// "no such service": the route may be lost, not absent.
func (c *Control) get(ctx context.Context) (wire.ServiceState, error) {
	var st wire.ServiceState
	err := c.call(ctx, http.MethodGet, "", nil, &st)
	if err == nil && st.Unrestored != "" {
		return st, unrestoredError{fmt.Sprintf("handoff proxy could not restore %s from its state file: %s; mend that entry of the state file and restart handoff proxy, or delete it (curl --unix-socket %s -X DELETE http://proxy/v1/services/%s) and deploy again", c.service, st.Unrestored, c.socket, c.service)}
	}
	return st, err
}

// call sends a request about the client's service; suffix is the action ("/switch").
func (c *Control) call(ctx context.Context, method, suffix string, body, out any) error {
	return c.do(ctx, method, wire.ServicesPath+"/"+c.service+suffix, body, out)
}

func (c *Control) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	var bodyBytes []byte
	if rd != nil {
		bodyBytes, _ = io.ReadAll(rd)
	}
	var resp *http.Response
	var data []byte
	// A restarting proxy answers changes with 503 until the new process
	// takes them: try again for a while.
	for wait := restartRetry; ; {
		req, err := http.NewRequestWithContext(ctx, method, "http://proxy"+path, bytes.NewReader(bodyBytes))
		if err != nil {
			return err
		}
		resp, err = c.http.Do(req)
		if err != nil {
			return fmt.Errorf("%w: handoff proxy at %s: %v (is `handoff proxy` running? see docs/proxy.md)", deploy.ErrProxyUnreached, c.socket, unwrapURL(err))
		}
		data, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || wait <= 0 {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		wait -= 100 * time.Millisecond
	}
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return errNotThere
	case resp.StatusCode == http.StatusConflict:
		return fmt.Errorf("%w: %s", deploy.ErrConflict, message(data))
	case resp.StatusCode == http.StatusPreconditionFailed:
		return refusal{message(data), wire.ErrOldGeneration}
	case resp.StatusCode == http.StatusFailedDependency:
		return refusal{message(data), wire.ErrNotConverged}
	case resp.StatusCode/100 != 2:
		return fmt.Errorf("%w: handoff proxy %s %s: %d %s", deploy.ErrProxy, method, path, resp.StatusCode, message(data))
	}
	if out != nil {
		return json.Unmarshal(data, out)
	}
	return nil
}

func message(data []byte) string {
	var e wire.ErrorReply
	if json.Unmarshal(data, &e) == nil && e.Error != "" {
		return e.Error
	}
	return string(bytes.TrimSpace(data))
}

func unwrapURL(err error) string {
	var ue interface{ Unwrap() error }
	if errors.As(err, &ue) && ue.Unwrap() != nil {
		return ue.Unwrap().Error()
	}
	return err.Error()
}
