package proxy

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/proxy/wire"
)

// fakeResolver answers lookups from a table a test changes.
type fakeResolver struct {
	mu      sync.Mutex
	answers map[string][]netip.Addr
	err     error
	lookups atomic.Int64
}

func newFakeResolver() *fakeResolver { return &fakeResolver{answers: map[string][]netip.Addr{}} }

func (r *fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	r.lookups.Add(1)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return nil, r.err
	}
	return append([]netip.Addr(nil), r.answers[host]...), nil
}

// set makes host resolve to ips; failing makes every lookup fail (nil: answer again).
func (r *fakeResolver) set(host string, ips ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.answers[host] = nil
	for _, ip := range ips {
		r.answers[host] = append(r.answers[host], netip.MustParseAddr(ip))
	}
}

func (r *fakeResolver) failing(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.err = err
}

// quick is the tests' client: a request the proxy holds fails the test
// instead of hanging it.
var quick = &http.Client{Timeout: 5 * time.Second}

// task is one app task at an address of a name: it answers with its IP,
// and /slow waits for release; /stream sends its headers and a first
// line at once, the rest at release.
type task struct {
	ip      string
	release chan struct{}
	hits    atomic.Int64
}

// tasks listens on one port at each of ips (loopback addresses), as the
// tasks of a Swarm service all listen on its port; it returns the port.
func tasks(t testing.TB, ips ...string) (string, map[string]*task) {
	t.Helper()
	port := ""
	out := map[string]*task{}
	for _, ip := range ips {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, cmp.Or(port, "0")))
		require.NoError(t, err)
		_, port, _ = net.SplitHostPort(l.Addr().String())
		tk := &task{ip: ip, release: make(chan struct{})}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			tk.hits.Add(1)
			switch r.URL.Path {
			case "/slow":
				select {
				case <-tk.release:
				case <-r.Context().Done():
					return
				}
			case "/stream":
				fmt.Fprintln(w, "first")
				w.(http.Flusher).Flush()
				select {
				case <-tk.release:
				case <-r.Context().Done():
					return
				}
				fmt.Fprintln(w, "rest")
				return
			}
			n, _ := io.Copy(io.Discard, r.Body)
			w.Header().Set("X-Release", ip)
			fmt.Fprint(w, n)
		})}
		go func() { _ = srv.Serve(l) }()
		t.Cleanup(func() { srv.Close() })
		out[ip] = tk
	}
	return port, out
}

// servedName has service web sent to the named endpoint tasks.api:port,
// on a fake clock and resolver, its first lookup done.
func servedName(t *testing.T, res *fakeResolver, port string, logs io.Writer) (*Server, *fakeClock, string, *target) {
	t.Helper()
	clock := newFakeClock()
	p := NewServer(net.Listen, slog.New(slog.NewTextHandler(logs, nil)), Options{Clock: clock, Resolver: res, DialRetry: 2 * time.Second})
	t.Cleanup(func() { _ = p.Delete("web") })
	listen := freeAddr(t)
	_, err := p.Put("web", listen, "tasks.api:"+port)
	require.NoError(t, err)
	tg := p.services["web"].route.Load().single
	require.NotNil(t, tg.named)
	select {
	case <-tg.named.resolved:
	case <-time.After(5 * time.Second):
		t.Fatal("the name was never looked up")
	}
	return p, clock, listen, tg
}

// addresses is the named endpoint's addresses as the service's state shows them.
func addresses(t *testing.T, p *Server) []wire.AddressState {
	t.Helper()
	st, err := p.Get("web")
	require.NoError(t, err)
	return st.Route[0].Endpoints[0].Addresses
}

// A name that resolves to two addresses: requests go to both, each to the
// one with the fewest in flight, and the name's in-flight count is the
// sum over its addresses.
func TestANameSpreadsRequestsOverItsAddresses(t *testing.T) {
	res := newFakeResolver()
	port, ts := tasks(t, "127.0.0.1", "127.0.0.2")
	res.set("tasks.api", "127.0.0.2", "127.0.0.1")
	p, _, listen, _ := servedName(t, res, port, io.Discard)

	seen := map[string]int{}
	for range 20 {
		rel, _ := get(t, quick, "http://"+listen+"/")
		seen[rel]++
	}
	require.Equal(t, map[string]int{"127.0.0.1": 10, "127.0.0.2": 10}, seen, "ties taken in turn")

	answers := make(chan string, 2)
	for range 2 {
		go func() {
			resp, err := quick.Get("http://" + listen + "/slow")
			if err != nil {
				answers <- err.Error()
				return
			}
			resp.Body.Close()
			answers <- resp.Header.Get("X-Release")
		}()
	}
	require.Eventually(t, func() bool { return ts["127.0.0.1"].hits.Load()+ts["127.0.0.2"].hits.Load() == 22 }, 5*time.Second, time.Millisecond)
	st, err := p.Get("web")
	require.NoError(t, err)
	require.EqualValues(t, 2, st.InFlight, "the name counts both")
	require.Equal(t, []wire.AddressState{{Address: "127.0.0.1:" + port, InFlight: 1}, {Address: "127.0.0.2:" + port, InFlight: 1}}, st.Route[0].Endpoints[0].Addresses,
		"the second slow request went to the address with none in flight")
	close(ts["127.0.0.1"].release)
	require.Equal(t, "127.0.0.1", <-answers)
	// The proxy ends its count when it closes the app's answer, which may
	// be just after the client has it.
	require.Eventually(t, func() bool { return addresses(t, p)[0].InFlight == 0 }, 5*time.Second, time.Millisecond)

	for range 6 {
		rel, _ := get(t, quick, "http://"+listen+"/")
		require.Equal(t, "127.0.0.1", rel, "not in turn: to the address with fewer in flight")
	}
	close(ts["127.0.0.2"].release)
	require.Equal(t, "127.0.0.2", <-answers)
}

// An address that refuses connections: every request is still answered,
// GETs and POSTs (their bodies whole), by another address at once; it is
// marked down and gets no more requests; one line says so, and the name
// is looked up again at once.
func TestARefusingAddressOfANameIsSkipped(t *testing.T) {
	res := newFakeResolver()
	port, ts := tasks(t, "127.0.0.1")
	res.set("tasks.api", "127.0.0.1", "127.0.0.3") // nothing listens on 127.0.0.3
	logs := &syncWriter{w: &bytes.Buffer{}}
	p, _, listen, tg := servedName(t, res, port, logs)

	sendGetsAndPosts(t, quick, listen, 20, 100)
	require.EqualValues(t, 20, ts["127.0.0.1"].hits.Load())
	require.Eventually(t, func() bool { return addresses(t, p)[0].InFlight == 0 }, 5*time.Second, time.Millisecond, "the last answer closed")
	require.Equal(t, []wire.AddressState{{Address: "127.0.0.1:" + port}, {Address: "127.0.0.3:" + port, Down: true}}, addresses(t, p))
	require.False(t, tg.down.Load(), "the name as a whole is up")
	require.Equal(t, 1, strings.Count(logs.String(), "request sent to another address"), "%s", logs)
	require.Contains(t, logs.String(), "service=web method=GET uri=/ address=127.0.0.3:"+port+" to=127.0.0.1:"+port)
	require.Eventually(t, func() bool { return res.lookups.Load() >= 2 }, 5*time.Second, time.Millisecond, "looked up again at the failed dial, the clock never moved")
}

// An address that leaves the answer gets no new requests; what runs on it
// finishes, and then it is let go of.
func TestAVanishedAddressDrains(t *testing.T) {
	res := newFakeResolver()
	port, ts := tasks(t, "127.0.0.1", "127.0.0.2")
	res.set("tasks.api", "127.0.0.1", "127.0.0.2")
	p, clock, listen, _ := servedName(t, res, port, io.Discard)

	slow := make(chan string, 2)
	for range 2 {
		go func() {
			resp, err := quick.Get("http://" + listen + "/slow")
			if err != nil {
				slow <- err.Error()
				return
			}
			resp.Body.Close()
			slow <- resp.Header.Get("X-Release")
		}()
	}
	require.Eventually(t, func() bool { return ts["127.0.0.1"].hits.Load() == 1 && ts["127.0.0.2"].hits.Load() == 1 }, 5*time.Second, time.Millisecond)

	res.set("tasks.api", "127.0.0.1")
	clock.Advance(resolveEvery)
	require.Equal(t, []wire.AddressState{{Address: "127.0.0.1:" + port, InFlight: 1}, {Address: "127.0.0.2:" + port, InFlight: 1, Gone: true}}, addresses(t, p))
	for range 10 {
		rel, _ := get(t, quick, "http://"+listen+"/")
		require.Equal(t, "127.0.0.1", rel, "nothing new goes to the vanished address")
	}
	close(ts["127.0.0.2"].release)
	require.Equal(t, "127.0.0.2", <-slow, "the slow request on the vanished address finished")
	require.Eventually(t, func() bool { return len(addresses(t, p)) == 1 }, 5*time.Second, time.Millisecond, "let go of once nothing ran on it")
	require.Equal(t, []wire.AddressState{{Address: "127.0.0.1:" + port, InFlight: 1}}, addresses(t, p))
	close(ts["127.0.0.1"].release)
	require.Equal(t, "127.0.0.1", <-slow)
}

// Lookups that fail, or answer nothing, keep the last good answer; the
// failure is logged once, not at every lookup.
func TestFailingLookupsKeepTheLastGoodAnswer(t *testing.T) {
	res := newFakeResolver()
	port, _ := tasks(t, "127.0.0.1")
	res.set("tasks.api", "127.0.0.1")
	logs := &syncWriter{w: &bytes.Buffer{}}
	_, clock, listen, _ := servedName(t, res, port, logs)

	res.failing(errors.New("lookup tasks.api on 127.0.0.11:53: server misbehaving"))
	for range 3 {
		clock.Advance(resolveEvery)
		rel, _ := get(t, quick, "http://"+listen+"/")
		require.Equal(t, "127.0.0.1", rel)
	}
	require.Equal(t, 1, strings.Count(logs.String(), "endpoint lookup failed"), "%s", logs)
	res.failing(nil)
	res.set("tasks.api")
	for range 3 {
		clock.Advance(resolveEvery)
		rel, _ := get(t, quick, "http://"+listen+"/")
		require.Equal(t, "127.0.0.1", rel, "an empty answer keeps the last good one too")
	}
	require.Equal(t, 2, strings.Count(logs.String(), "endpoint lookup failed"), "one line for the new failure: %s", logs)
	require.Contains(t, logs.String(), "err=\"no addresses\"")
}

// Only a swarm's tasks.<name> is looked up by the proxy itself; a container's name on
// one host (reach: network, web-7:8000) and localhost are dialled by the name, one
// pool, as before.
func TestOnlyTasksNamesAreLookedUp(t *testing.T) {
	for endpoint, want := range map[string]bool{
		"tasks.api-green:8000": true,
		"web-7:8000":           false,
		"localhost:8000":       false,
		"127.0.0.1:8000":       false,
		"[::1]:8000":           false,
		"tasks.:8000":          true,
	} {
		if got := isNamed(endpoint); got != want {
			t.Errorf("isNamed(%q) = %v, want %v", endpoint, got, want)
		}
	}
}

// errFrozen is what a dial to a task on a frozen node gets: VXLAN to the
// node answers nothing, until the dial times out.
var errFrozen = &net.OpError{Op: "dial", Net: "tcp", Err: os.ErrDeadlineExceeded}

// frozenDial is the probe of an address whose node froze.
func frozenDial(context.Context, string) error { return errFrozen }

// lostRig is tasks.api of two tasks, one of which, 127.0.0.2, is to leave
// the answer while requests wait on it: 127.0.0.1 answers /slow at once,
// 127.0.0.2 holds it until released. probe is how a dial of 127.0.0.2
// goes once it has left.
type lostRig struct {
	t      *testing.T
	res    *fakeResolver
	port   string
	ts     map[string]*task
	clock  *fakeClock
	listen string
	tg     *target
	logs   *syncWriter
	probed chan string
}

func newLostRig(t *testing.T, probe func(ctx context.Context, addr string) error) *lostRig {
	t.Helper()
	r := &lostRig{t: t, res: newFakeResolver(), logs: &syncWriter{w: &bytes.Buffer{}}, probed: make(chan string, 8)}
	r.port, r.ts = tasks(t, "127.0.0.1", "127.0.0.2")
	close(r.ts["127.0.0.1"].release)
	r.res.set("tasks.api", "127.0.0.2")
	_, r.clock, r.listen, r.tg = servedName(t, r.res, r.port, r.logs)
	// Set before the answer first changes: only apply starts probes.
	r.tg.named.dial = func(ctx context.Context, addr string) error {
		err := probe(ctx, addr)
		r.probed <- addr
		return err
	}
	return r
}

// send sends a request of method (with body, if not "") to the proxy, once
// 127.0.0.2 has seen n requests in all.
func (r *lostRig) send(method, path, body string, n int64) <-chan answer {
	r.t.Helper()
	var b io.Reader
	if body != "" {
		b = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, "http://"+r.listen+path, b)
	got := send(req)
	r.sentToLost(n)
	return got
}

// sentToLost waits until 127.0.0.2 has seen n requests.
func (r *lostRig) sentToLost(n int64) {
	r.t.Helper()
	require.Eventually(r.t, func() bool { return r.ts["127.0.0.2"].hits.Load() == n }, 5*time.Second, time.Millisecond)
}

// lose takes 127.0.0.2 out of the answer, and waits for its probe.
func (r *lostRig) lose() {
	r.t.Helper()
	r.res.set("tasks.api", "127.0.0.1")
	r.clock.Advance(resolveEvery)
	select {
	case got := <-r.probed:
		require.Equal(r.t, "127.0.0.2:"+r.port, got)
	case <-time.After(5 * time.Second):
		r.t.Fatal("the address that left the answer was never probed")
	}
}

// answer is what a client got for one request.
type answer struct {
	code    int
	release string // the X-Release of the task that answered
	err     error
}

// send sends req with quick, in the background.
func send(req *http.Request) <-chan answer {
	out := make(chan answer, 1)
	go func() {
		resp, err := quick.Do(req)
		if err != nil {
			out <- answer{err: err}
			return
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		out <- answer{code: resp.StatusCode, release: resp.Header.Get("X-Release"), err: err}
	}()
	return out
}

// A GET that waits for its headers on an address whose node froze: once
// the address leaves the answer and does not answer a dial, the GET is
// sent to another address of the answer, which answers it. The frozen
// task had it first and never answered.
func TestAGetOnALostAddressGoesToAnotherAddress(t *testing.T) {
	r := newLostRig(t, frozenDial)
	got := r.send(http.MethodGet, "/slow", "", 1)
	r.lose()
	a := <-got
	require.NoError(t, a.err)
	require.Equal(t, http.StatusOK, a.code)
	require.Equal(t, "127.0.0.1", a.release, "answered by the address still in the answer")
	require.EqualValues(t, 1, r.ts["127.0.0.2"].hits.Load(), "the lost address had it first")
	require.Equal(t, 1, strings.Count(r.logs.String(), "address lost: request sent to another address"), "%s", r.logs)
	require.Contains(t, r.logs.String(), "service=web method=GET uri=/slow address=127.0.0.2:"+r.port+" to=127.0.0.1:"+r.port)
}

// A POST (its body may not be sent twice) waiting on a lost address fails
// as it would have, at once: a 502, and one line that says why; the other
// address never sees it.
func TestAPostOnALostAddressFails(t *testing.T) {
	r := newLostRig(t, frozenDial)
	got := r.send(http.MethodPost, "/slow", "an order", 1)
	r.lose()
	a := <-got
	require.NoError(t, a.err)
	require.Equal(t, http.StatusBadGateway, a.code)
	require.Zero(t, r.ts["127.0.0.1"].hits.Load(), "not sent again")
	require.Contains(t, r.logs.String(), "left the DNS answer and does not answer")
	require.Contains(t, r.logs.String(), "service=web method=POST uri=/slow address=127.0.0.2:"+r.port)
	require.NotContains(t, r.logs.String(), "request sent to another address")
}

// An address that left the answer but answers a dial, or refuses it: the
// request waiting there is left alone and answered there. A task stopped
// gracefully, or just slow, accepts; one shutting down cleanly closes its
// listener first and then finishes what it has (Go's Shutdown, gunicorn):
// a refusal is a live kernel's answer.
func TestAWaitingRequestOnAnAddressThatAnswersADialIsNotCut(t *testing.T) {
	refused := func(context.Context, string) error {
		return &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	}
	for name, probe := range map[string]func(context.Context, string) error{"accepted": dialAddress, "refused": refused} {
		t.Run(name, func(t *testing.T) {
			r := newLostRig(t, probe)
			got := r.send(http.MethodPost, "/slow", "an order", 1)
			r.lose()
			require.Never(t, func() bool { return len(got) > 0 }, 100*time.Millisecond, time.Millisecond, "not cut")
			close(r.ts["127.0.0.2"].release)
			a := <-got
			require.NoError(t, a.err)
			require.Equal(t, http.StatusOK, a.code)
			require.Equal(t, "127.0.0.2", a.release)
			require.Zero(t, r.ts["127.0.0.1"].hits.Load())
			require.NotContains(t, r.logs.String(), "address lost")
		})
	}
}

// A response whose headers came from the lost address before it was lost
// (a stream) is not cut by it; the GET still waiting there is moved.
func TestAStreamOnALostAddressIsNotCut(t *testing.T) {
	r := newLostRig(t, frozenDial)
	resp, err := quick.Get("http://" + r.listen + "/stream")
	require.NoError(t, err)
	defer resp.Body.Close()
	body := bufio.NewReader(resp.Body)
	line, err := body.ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "first\n", line)
	got := r.send(http.MethodGet, "/slow", "", 2)
	r.lose()
	a := <-got
	require.NoError(t, a.err)
	require.Equal(t, "127.0.0.1", a.release, "the waiting GET moved")
	close(r.ts["127.0.0.2"].release)
	rest, err := io.ReadAll(body)
	require.NoError(t, err, "the stream was not cut")
	require.Equal(t, "rest\n", string(rest))
}

// A client that gives up on its request while the lost address is probed
// gets its own cancellation back; the request is not sent again.
func TestACancelledRequestOnALostAddressIsNotSentAgain(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := newLostRig(t, func(context.Context, string) error {
		cancel() // the client leaves before the probe fails
		return errFrozen
	})
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://tasks.api:"+r.port+"/slow", nil)
	errc := make(chan error, 1)
	go func() {
		resp, err := r.tg.named.RoundTrip(req)
		if resp != nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	r.sentToLost(1)
	r.lose()
	select {
	case err := <-errc:
		require.ErrorIs(t, err, context.Canceled)
		require.NotErrorIs(t, err, errAddressLost)
	case <-time.After(5 * time.Second):
		t.Fatal("the cancelled request never returned")
	}
	require.Zero(t, r.ts["127.0.0.1"].hits.Load(), "not sent again")
}
