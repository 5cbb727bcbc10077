package proxy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/handoff-dev/handoff/internal/proxy/wire"
)

// Resolver looks up the addresses of a named endpoint's host:
// net.DefaultResolver, or a test's.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// A named endpoint (tasks.api-green:8000, Swarm's health-gated DNS of a
// service's tasks) is looked up every resolveEvery, and at once after a
// dial fails; a dial gets namedDialTimeout before the request is tried at
// another address (VXLAN to a dead node answers nothing at all).
const (
	resolveEvery     = time.Second
	namedDialTimeout = time.Second
	lookupTimeout    = 2 * time.Second
)

// isNamed says whether an endpoint is a Swarm service's tasks.<name>: its
// host a DNS name of several addresses that change as tasks come and go.
// Any other name (a container's, web-7:8000 on a compose network, or
// localhost) is dialled as before, by the name, one pool: on one host a
// name is one container.
func isNamed(endpoint string) bool {
	host, _, err := net.SplitHostPort(endpoint)
	if err != nil || !strings.HasPrefix(host, "tasks.") {
		return false
	}
	_, err = netip.ParseAddr(host)
	return err != nil
}

// named is the transport of a target whose host is a DNS name: one
// connection pool per address of the last good answer, each request sent
// to the address with the fewest in flight. The target above it counts
// and drains the name as a whole; an address that leaves the answer gets
// no new requests, and its idle connections are closed once its last
// request ends. An address that leaves the answer while requests wait
// on it for their headers is dialled (dial): one that does not answer is
// on a node that died, and those requests are sent to another address
// or fail (probeLost).
type named struct {
	t         *target
	host      string
	port      string
	resolver  Resolver
	clock     Clock
	dialRetry time.Duration
	dial      func(ctx context.Context, addr string) error // probeLost's dial: dialAddress, or a test's

	cur  atomic.Pointer[[]*address] // the last good answer, by address
	next atomic.Uint64              // the ties' round robin

	mu       sync.Mutex
	addrs    map[netip.Addr]*address // current, and vanished ones still finishing
	lastErr  string                  // the failed lookups' last logged error; "" after a good answer
	resolved chan struct{}           // closed at the first good answer
	stopTick func() bool

	lookup sync.Mutex // one lookup at a time
}

// address is one address of a named endpoint and its own pool.
type address struct {
	addr      netip.Addr
	hostport  string
	transport *http.Transport
	inFlight  atomic.Int64
	down      atomic.Bool // its last dial failed; it gets requests only when no other address is up
	gone      atomic.Bool // left the answer: no new requests

	waitMu  sync.Mutex
	waiting map[*http.Request]context.CancelCauseFunc // sent here, no response headers yet: what probeLost cuts
}

func newNamed(t *target, resolver Resolver, clock Clock, dialRetry time.Duration) *named {
	host, port, _ := net.SplitHostPort(t.upstream)
	n := &named{t: t, host: host, port: port, resolver: resolver, clock: clock, dialRetry: dialRetry, dial: dialAddress, addrs: map[netip.Addr]*address{}, resolved: make(chan struct{})}
	n.cur.Store(&[]*address{})
	go n.tick()
	return n
}

// tick looks the name up, and again every resolveEvery until the target
// is forgotten. The next tick is set first, so that a test's clock finds
// it set once the lookup is done.
func (n *named) tick() {
	n.mu.Lock()
	if n.t.gone.Load() {
		n.mu.Unlock()
		return
	}
	n.stopTick = n.clock.AfterFunc(resolveEvery, n.tick)
	n.mu.Unlock()
	n.lookup.Lock()
	n.resolve()
	n.lookup.Unlock()
	n.probeDown()
}

// stop ends the lookups (the target is forgotten).
func (n *named) stop() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.stopTick != nil {
		n.stopTick()
	}
}

// resolveNow looks the name up at once, unless a lookup runs already.
func (n *named) resolveNow() {
	if !n.lookup.TryLock() {
		return
	}
	go func() {
		defer n.lookup.Unlock()
		n.resolve()
	}()
}

// resolve looks the name up and applies the answer; a failed lookup or
// an empty answer keeps the last good one. Callers hold n.lookup.
func (n *named) resolve() {
	ctx, cancel := context.WithTimeout(context.Background(), lookupTimeout)
	defer cancel()
	got, err := n.resolver.LookupNetIP(ctx, "ip", n.host)
	if err == nil && len(got) == 0 {
		err = errors.New("no addresses")
	}
	n.apply(got, err)
}

func (n *named) apply(got []netip.Addr, err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	old := *n.cur.Load()
	if err != nil {
		if msg := err.Error(); msg != n.lastErr {
			n.lastErr = msg
			n.t.log.Warn("endpoint lookup failed: the last good answer is kept", "service", n.t.service, "endpoint", n.t.upstream, "kept", addrList(old), "err", err)
		}
		return
	}
	if n.lastErr != "" {
		n.lastErr = ""
		n.t.log.Info("endpoint lookup answers again", "service", n.t.service, "endpoint", n.t.upstream)
	}
	want := make([]netip.Addr, 0, len(got))
	for _, a := range got {
		want = append(want, a.Unmap())
	}
	slices.SortFunc(want, netip.Addr.Compare)
	want = slices.Compact(want)
	if slices.Equal(want, addrList(old)) {
		return
	}
	cur := make([]*address, 0, len(want))
	for _, a := range want {
		ad := n.addrs[a]
		if ad == nil {
			ad = n.newAddress(a)
			n.addrs[a] = ad
		}
		ad.gone.Store(false)
		cur = append(cur, ad)
	}
	for a, ad := range n.addrs {
		if !slices.Contains(want, a) && !ad.gone.Load() {
			ad.gone.Store(true)
			n.closeIfIdle(ad)
			if ad.hasWaiting() {
				go n.probeLost(ad)
			}
		}
	}
	n.cur.Store(&cur)
	n.t.log.Info("endpoint addresses changed", "service", n.t.service, "endpoint", n.t.upstream, "from", addrList(old), "to", want)
	select {
	case <-n.resolved:
	default:
		close(n.resolved)
	}
}

// closeIfIdle closes a vanished address's pool once nothing runs on it.
// Callers hold n.mu.
func (n *named) closeIfIdle(ad *address) {
	if ad.gone.Load() && ad.inFlight.Load() == 0 {
		ad.transport.CloseIdleConnections()
		// Only this address's entry: the IP may be back already, as another.
		if n.addrs[ad.addr] == ad {
			delete(n.addrs, ad.addr)
		}
	}
}

func addrList(list []*address) []netip.Addr {
	out := make([]netip.Addr, 0, len(list))
	for _, a := range list {
		out = append(out, a.addr)
	}
	return out
}

// errAddressDial is a dial of one address that failed: nothing of the
// request was sent, so it may go to another address of the name.
var errAddressDial = errors.New("dial")

// errAddressLost is the cause a request waiting for its headers is cut
// with when its address left the answer and does not answer a dial.
var errAddressLost = errors.New("address lost")

// dialAddress dials addr and hangs up: whether it answers at all.
func dialAddress(ctx context.Context, addr string) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err == nil {
		conn.Close()
	}
	return err
}

// probeLost dials an address that left the answer while requests waited
// on it for their headers. A task stopped gracefully answers what it was
// sent: it is left alone. One that does not answer is on a node that
// died (frozen: VXLAN to it answers nothing, not even a reset), and its
// kept-alive connections are as silent: the requests would wait until
// the drain deadline cut them. They are cut now, for RoundTrip to send
// again or fail. Those whose headers came are not: their streams end
// with the host, as before.
func (n *named) probeLost(a *address) {
	ctx, cancel := context.WithTimeout(context.Background(), lostProbeTimeout)
	err := n.dial(ctx, a.hostport)
	cancel()
	if !silent(err) || !a.gone.Load() {
		return // it answers (a refusal too), or it is back in the answer
	}
	a.waitMu.Lock()
	cut := len(a.waiting)
	for out, cancel := range a.waiting {
		cancel(errAddressLost)
		delete(a.waiting, out)
	}
	a.waitMu.Unlock()
	a.transport.CloseIdleConnections()
	n.t.log.Warn("address lost: it left the DNS answer and does not answer; the requests waiting on it are cut", "service", n.t.service, "endpoint", n.t.upstream, "address", a.hostport, "cut", cut, "err", err)
}

// lostProbeTimeout is how long probeLost waits for a dial to be answered: past
// Linux's first SYN retransmission (1 s), so that one lost SYN, or a full
// backlog, is not taken for a dead node.
const lostProbeTimeout = 3 * time.Second

// silent says a dial got no answer at all: it timed out, or the network
// says the host cannot be reached. A refusal or a reset is a live kernel's
// answer: a task shutting down closes its listener first and finishes what
// it has, on connections that are not silent.
func silent(err error) bool {
	if err == nil {
		return false
	}
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout() ||
		errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH)
}

// wait registers out, sent to a, as waiting for its headers, until
// waited; false (and not registered) when a left the answer meanwhile:
// apply may have looked at a's waiting requests already, and out would
// not be probed for.
func (a *address) wait(out *http.Request, cancel context.CancelCauseFunc) bool {
	a.waitMu.Lock()
	a.waiting[out] = cancel
	a.waitMu.Unlock()
	if a.gone.Load() {
		a.waited(out)
		return false
	}
	return true
}

// waited ends out's wait for its headers; false when probeLost cut it.
func (a *address) waited(out *http.Request) bool {
	a.waitMu.Lock()
	defer a.waitMu.Unlock()
	_, ok := a.waiting[out]
	delete(a.waiting, out)
	return ok
}

func (a *address) hasWaiting() bool {
	a.waitMu.Lock()
	defer a.waitMu.Unlock()
	return len(a.waiting) > 0
}

func (n *named) newAddress(a netip.Addr) *address {
	ad := &address{addr: a, hostport: net.JoinHostPort(a.String(), n.port), waiting: map[*http.Request]context.CancelCauseFunc{}}
	d := &net.Dialer{Timeout: namedDialTimeout, KeepAlive: 30 * time.Second}
	ad.transport = appTransport(func(ctx context.Context, network, _ string) (net.Conn, error) {
		conn, err := d.DialContext(ctx, network, ad.hostport)
		if err != nil {
			return nil, fmt.Errorf("%w %s: %w", errAddressDial, ad.hostport, err)
		}
		ad.down.Store(false)
		n.t.dialed(nil)
		return n.t.track(conn, nil)
	})
	return ad
}

// pick is the address a request goes to: the one with the fewest in
// flight among those up and not tried yet, else among those not tried;
// nil when every address was tried.
func (n *named) pick(tried []*address) *address {
	cur := *n.cur.Load()
	start := int(n.next.Add(1) % uint64(max(len(cur), 1)))
	var best *address
	for _, up := range []bool{true, false} {
		for i := range cur {
			a := cur[(start+i)%len(cur)]
			if slices.Contains(tried, a) || up && a.down.Load() {
				continue
			}
			if best == nil || a.inFlight.Load() < best.inFlight.Load() {
				best = a
			}
		}
		if best != nil {
			return best
		}
	}
	return nil
}

// RoundTrip sends req to an address of the name. A dial that fails
// marks the address down, looks the name up again and tries the next
// address, for every method (nothing was sent); when every address
// failed, it waits as a refused IP endpoint does (dialRetrying). A
// request cut because its address was lost (probeLost) goes the same way
// if it may be sent twice (mayRetry), never back to that address; any
// other fails.
func (n *named) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	deadline := n.clock.Now().Add(n.dialRetry)
	if err := n.waitResolved(ctx, deadline); err != nil {
		return nil, err
	}
	var tried, lost []*address
	var lastErr error
	var lostFrom *address // the request was cut there, and is not yet sent again
	for {
		a := n.pick(tried)
		if a == nil {
			n.t.dialed(lastErr)
			if s, _ := ctx.Value(movableKey{}).(*service); s != nil && !n.t.alone.Load() && s.route.Load().upBesides(n.t) {
				return nil, fmt.Errorf("%w: %w", errElsewhere, lastErr)
			}
			if n.clock.Now().Add(dialRetryInterval).After(deadline) || !sleep(ctx, n.clock, dialRetryInterval) {
				return nil, lastErr
			}
			tried = append(tried[:0], lost...) // a lost address is not tried again, even back in the answer
			continue
		}
		if lostFrom != nil {
			n.t.log.Info("address lost: request sent to another address", "service", n.t.service, "method", req.Method, "uri", req.URL.RequestURI(), "address", lostFrom.hostport, "to", a.hostport)
			lostFrom = nil
		} else if len(tried) > len(lost) {
			n.t.log.Info("dial failed: request sent to another address", "service", n.t.service, "method", req.Method, "uri", req.URL.RequestURI(), "address", tried[len(tried)-1].hostport, "to", a.hostport, "err", lastErr)
		}
		// Its own context, so that probeLost can cut it while it waits for
		// its headers, and only then.
		outCtx, cut := context.WithCancelCause(ctx)
		out := req.WithContext(outCtx)
		u := *req.URL
		u.Host = a.hostport
		out.URL = &u
		if req.Body != nil && req.Body != http.NoBody {
			out.Body = keptBody{req.Body} // the transport closes a body it could not send: the next address needs it
		}
		a.inFlight.Add(1)
		if !a.wait(out, cut) {
			n.release(a)
			cut(nil)
			continue // it left the answer as it was picked: nothing was sent, pick again
		}
		resp, err := a.transport.RoundTrip(out)
		if !a.waited(out) && err == nil {
			// Cut as its headers came: its body is cut too.
			resp.Body.Close()
			err = context.Cause(outCtx)
		}
		if err == nil {
			resp.Body = countedBody(resp.Body, func() { n.release(a); cut(nil) })
			return resp, nil
		}
		n.release(a)
		cut(nil)
		if ctx.Err() != nil {
			return nil, err // the client's own cancellation wins
		}
		if errors.Is(context.Cause(outCtx), errAddressLost) {
			err = fmt.Errorf("%w: %s left the DNS answer and does not answer", errAddressLost, a.hostport)
			if !mayRetry(req) {
				n.t.log.Warn("address lost: the request fails, it may not be sent twice", "service", n.t.service, "method", req.Method, "uri", req.URL.RequestURI(), "address", a.hostport, "err", err)
				return nil, err
			}
			tried, lost, lastErr, lostFrom = append(tried, a), append(lost, a), err, a
			continue
		}
		if !errors.Is(err, errAddressDial) {
			return nil, err
		}
		a.down.Store(true)
		n.resolveNow()
		tried, lastErr = append(tried, a), err
	}
}

// waitResolved waits for the name's first good answer, until deadline.
func (n *named) waitResolved(ctx context.Context, deadline time.Time) error {
	for {
		select {
		case <-n.resolved:
			return nil
		default:
		}
		if n.clock.Now().Add(dialRetryInterval).After(deadline) || !sleep(ctx, n.clock, dialRetryInterval) {
			n.mu.Lock()
			why := n.lastErr
			n.mu.Unlock()
			return fmt.Errorf("%s has no address yet (lookup: %s)", n.host, cmp.Or(why, "no answer"))
		}
	}
}

// release ends a request's count on a.
func (n *named) release(a *address) {
	if a.inFlight.Add(-1) == 0 && a.gone.Load() {
		n.mu.Lock()
		n.closeIfIdle(a)
		n.mu.Unlock()
	}
}

// CloseIdleConnections closes every address's idle connections.
func (n *named) CloseIdleConnections() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, a := range n.addrs {
		a.transport.CloseIdleConnections()
	}
}

// probeDown dials each address that is down; one that answers is up.
func (n *named) probeDown() {
	for _, a := range *n.cur.Load() {
		if !a.down.Load() {
			continue
		}
		go func() {
			if conn, err := net.DialTimeout("tcp", a.hostport, namedDialTimeout); err == nil {
				conn.Close()
				a.down.Store(false)
			}
		}()
	}
}

// dialAny dials the addresses until one answers: the target's probe.
func (n *named) dialAny() error {
	err := fmt.Errorf("%s has no address", n.host)
	for _, a := range *n.cur.Load() {
		var conn net.Conn
		if conn, err = net.DialTimeout("tcp", a.hostport, namedDialTimeout); err == nil {
			conn.Close()
			return nil
		}
	}
	return err
}

// state is the addresses as the control API shows them.
func (n *named) state() []wire.AddressState {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]wire.AddressState, 0, len(n.addrs))
	for _, a := range n.addrs {
		out = append(out, wire.AddressState{Address: a.hostport, InFlight: a.inFlight.Load(), Down: a.down.Load(), Gone: a.gone.Load()})
	}
	slices.SortFunc(out, func(x, y wire.AddressState) int { return compareHostPort(x.Address, y.Address) })
	return out
}

func compareHostPort(x, y string) int {
	a, _ := netip.ParseAddrPort(x)
	b, _ := netip.ParseAddrPort(y)
	return a.Compare(b)
}

// countedBody ends a request's count on its address when the response
// body is closed; an upgraded connection's body stays writable.
func countedBody(body io.ReadCloser, done func()) io.ReadCloser {
	c := &counted{ReadCloser: body, done: done}
	if rw, ok := body.(io.ReadWriteCloser); ok {
		return countedRW{c, rw}
	}
	return c
}

type counted struct {
	io.ReadCloser
	once sync.Once
	done func()
}

func (c *counted) Close() error {
	err := c.ReadCloser.Close()
	c.once.Do(c.done)
	return err
}

type countedRW struct {
	*counted
	w io.Writer
}

func (c countedRW) Write(b []byte) (int, error) { return c.w.Write(b) }
