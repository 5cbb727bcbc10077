package proxy

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

// Client drives one service of a running `handoff proxy` through its
// control socket: it is the deploy.Proxy for `proxy: handoff`.
type Client struct {
	socket  string
	service string
	listen  string // the stable address the service is served on
	http    *http.Client
}

var _ deploy.Proxy = (*Client)(nil)

// NewClient returns the deploy.Proxy for service, served on listen.
func NewClient(socket, service, listen string) (*Client, error) {
	if socket == "" {
		socket = wire.DefaultSocket
	}
	if listen == "" {
		return nil, fmt.Errorf("%w: proxy: handoff needs handoff_proxy.listen (or --proxy-listen), the stable address the front proxy points at, like 127.0.0.1:9001", deploy.ErrConfig)
	}
	if _, _, err := net.SplitHostPort(listen); err != nil {
		return nil, fmt.Errorf("%w: handoff_proxy.listen %q: want host:port, like 127.0.0.1:9001", deploy.ErrConfig, listen)
	}
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", socket)
	}}
	return &Client{socket: socket, service: service, listen: listen, http: &http.Client{Transport: tr, Timeout: 15 * time.Second}}, nil
}

// NewControl is a Client for control commands (pause, resume, list),
// which need no listen address.
func NewControl(socket, service string) *Client {
	c, _ := NewClient(socket, service, "127.0.0.1:0")
	c.listen = ""
	return c
}

// Pause holds the service's new requests, each for at most maxWait, and
// the whole pause for at most lease (0: DefaultPauseLease), after which
// the proxy lets them go on by itself.
func (c *Client) Pause(ctx context.Context, maxWait, lease time.Duration) (wire.ServiceState, error) {
	in := map[string]string{"max_wait": maxWait.String()}
	if lease > 0 {
		in["lease"] = lease.String()
	}
	var st wire.ServiceState
	err := c.call(ctx, http.MethodPost, "/pause", in, &st)
	return st, c.found(err)
}

// MaintenanceOn answers the service's requests with m's page.
func (c *Client) MaintenanceOn(ctx context.Context, m deploy.Maintenance, _ []string) error {
	in := wire.MaintenanceState{Page: m.Body(), RetryAfter: m.RetryAfterSeconds(), Allow: m.Allow}
	return c.found(c.call(ctx, http.MethodPut, "/maintenance", in, nil))
}

// MaintenanceOff sends the service's requests to its release again.
func (c *Client) MaintenanceOff(ctx context.Context, _ string) (bool, error) {
	st, err := c.get(ctx)
	if err := c.found(err); err != nil {
		return false, err
	}
	if st.Maintenance == nil {
		return false, nil
	}
	return true, c.found(c.call(ctx, http.MethodDelete, "/maintenance", nil, nil))
}

// Pauser is c as the deploy procedure holds requests with during a
// release job. Its Pause is given how long the hold may last (the job's
// timeout): each request is held at most that or wire.MaxPauseWait, whichever
// is less, and the pause has a lease of that plus wire.PauseLeaseMargin (at
// most wire.MaxPauseLease), so that a deploy killed before it resumes (SIGKILL,
// an OOM kill, a cancelled CI job) does not leave the service paused.
func (c *Client) Pauser() deploy.Pauser { return pauser{c} }

type pauser struct{ c *Client }

func (p pauser) Pause(ctx context.Context, hold time.Duration) error {
	wait, lease := pauseWaits(hold)
	_, err := p.c.Pause(ctx, wait, lease)
	return err
}

// pauseWaits is the max wait and lease of a deploy's pause of hold.
func pauseWaits(hold time.Duration) (maxWait, lease time.Duration) {
	if hold <= 0 {
		return wire.MaxPauseWait, 0
	}
	return min(hold, wire.MaxPauseWait), min(hold+wire.PauseLeaseMargin, wire.MaxPauseLease)
}

func (p pauser) Resume(ctx context.Context) error {
	_, err := p.c.Resume(ctx)
	return err
}

// Resume releases them.
func (c *Client) Resume(ctx context.Context) (wire.ServiceState, error) {
	var st wire.ServiceState
	err := c.call(ctx, http.MethodPost, "/resume", map[string]string{}, &st)
	return st, c.found(err)
}

// List returns every service the proxy serves.
func (c *Client) List(ctx context.Context) ([]wire.ServiceState, error) {
	var list []wire.ServiceState
	err := c.do(ctx, http.MethodGet, "/v1/services", nil, &list)
	return list, err
}

func (c *Client) found(err error) error {
	if errors.Is(err, errNotThere) {
		return fmt.Errorf("%w: handoff proxy has no service %s (deploy it with proxy: handoff first)", deploy.ErrConfig, c.service)
	}
	return err
}

// Describe names the proxy for messages.
func (c *Client) Describe() string {
	return fmt.Sprintf("handoff proxy at %s (%s on %s)", c.socket, c.service, c.listen)
}

// Upstream is the service's current target; "" before its first deploy.
// A service the proxy cannot listen for yet has its target all the same.
// The proxy may have lost the route, though: when its state file has an
// entry under this name it could not restore, or entries it could not
// read a name from, Upstream fails (wire.ErrUnrestored) instead of saying "".
func (c *Client) Upstream(ctx context.Context, _ []string) (string, error) {
	st, err := c.get(ctx)
	if errors.Is(err, errNotThere) {
		return "", c.unnamedEntries(ctx)
	}
	return st.Upstream, err
}

// unnamedEntries fails when the proxy keeps entries of its state file it
// could not read a name from: one of them may be this service's.
func (c *Client) unnamedEntries(ctx context.Context) error {
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

// Preflight checks that the proxy answers and serves the service where the
// file says.
func (c *Client) Preflight(ctx context.Context, _ string, _ []string) ([]string, error) {
	st, err := c.get(ctx)
	if errors.Is(err, errNotThere) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if st.Listen != c.listen {
		return nil, fmt.Errorf("%w: handoff proxy serves %s on %s, not %s; delete it there first (curl --unix-socket %s -X DELETE http://proxy/v1/services/%s)", deploy.ErrConfig, c.service, st.Listen, c.listen, c.socket, c.service)
	}
	if f := st.NotListening; f != nil {
		return []string{fmt.Sprintf("handoff proxy cannot listen on %s for %s since %s (%s) and keeps trying: until it can, no request reaches any release; free that address", st.Listen, c.service, f.Since.Format(time.RFC3339), f.Error)}, nil
	}
	return nil, nil
}

// PointsAt names the proxy's services whose current target is upstream.
func (c *Client) PointsAt(ctx context.Context, upstream string) ([]string, error) {
	list, err := c.List(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, st := range list {
		if deploy.SameUpstream(st.Upstream, upstream) {
			out = append(out, fmt.Sprintf("handoff proxy service %s (%s)", st.Name, st.Listen))
		}
	}
	return out, nil
}

// Switch points the service at to; on its first deploy it creates it.
func (c *Client) Switch(ctx context.Context, from, to string) error {
	var st wire.ServiceState
	var err error
	if from == "" {
		err = c.call(ctx, http.MethodPut, "", map[string]string{"listen": c.listen, "upstream": to}, &st)
	} else {
		err = c.call(ctx, http.MethodPost, "/switch", map[string]string{"from": from, "to": to}, &st)
	}
	if err != nil {
		return err
	}
	if st.Upstream != to {
		return fmt.Errorf("%w: handoff proxy reads back %s for %s, not %s", deploy.ErrProxy, st.Upstream, c.service, to)
	}
	return nil
}

// InFlight counts requests still running on upstream; the proxy always knows.
func (c *Client) InFlight(ctx context.Context, upstream string) (deploy.InFlight, error) {
	st, err := c.get(ctx)
	if err != nil {
		return deploy.InFlight{}, err
	}
	in := deploy.InFlight{Reported: true}
	if st.Upstream == upstream {
		in.Requests = int(st.InFlight)
	}
	for _, d := range st.Draining {
		if d.Upstream == upstream {
			in.Requests += int(d.InFlight)
		}
	}
	if st.HandoverPending && in.Requests == 0 {
		// A restarted proxy's previous process may still run requests on
		// upstream, and only its exit tells: count that as one.
		in.Requests, in.Note = 1, "handoff proxy's previous process (a restart) is still finishing its requests"
	}
	return in, nil
}

// Retire ends what still runs on upstream, WebSockets with a close frame.
func (c *Client) Retire(ctx context.Context, upstream string) error {
	return c.call(ctx, http.MethodPost, "/retire", map[string]string{"upstream": upstream}, nil)
}

// Advice has nothing to add: no reload happens, nothing to configure.
func (c *Client) Advice(context.Context, string) ([]string, error) { return nil, nil }

var errNotThere = errors.New("service not in the proxy")

// restartRetry is how long a change is tried again while the proxy restarts.
const restartRetry = 15 * time.Second

// get is the service's state. A name the proxy knows only from an entry
// of its state file it could not restore is an wire.ErrUnrestored, never "no
// such service": the route may be lost, not absent.
func (c *Client) get(ctx context.Context) (wire.ServiceState, error) {
	var st wire.ServiceState
	err := c.call(ctx, http.MethodGet, "", nil, &st)
	if err == nil && st.Unrestored != "" {
		return st, unrestoredError{fmt.Sprintf("handoff proxy could not restore %s from its state file: %s; mend that entry of the state file and restart handoff proxy, or delete it (curl --unix-socket %s -X DELETE http://proxy/v1/services/%s) and deploy again", c.service, st.Unrestored, c.socket, c.service)}
	}
	return st, err
}

// call sends a request about the client's service; suffix is the action ("/switch").
func (c *Client) call(ctx context.Context, method, suffix string, body, out any) error {
	return c.do(ctx, method, "/v1/services/"+c.service+suffix, body, out)
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
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
	case resp.StatusCode/100 != 2:
		return fmt.Errorf("%w: handoff proxy %s %s: %d %s", deploy.ErrProxy, method, path, resp.StatusCode, message(data))
	}
	if out != nil {
		return json.Unmarshal(data, out)
	}
	return nil
}

func message(data []byte) string {
	var e struct{ Error string }
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
