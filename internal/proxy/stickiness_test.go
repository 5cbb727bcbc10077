package proxy

import (
	"context"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/proxy/wire"
)

// canary is the route of a canary at weight w: old first, new last, as a
// deploy lists them.
func canary(oldApp, newApp string, w int) []wire.Backend {
	return []wire.Backend{{Release: "old", Endpoints: []string{oldApp}, Weight: 100 - w}, {Release: "new", Endpoints: []string{newApp}, Weight: w}}
}

// shareOf is the share, in points, of the keys that fall in backend i.
func shareOf(weights []int, i int, keys []uint64) float64 {
	ranges := keyRanges(weights)
	n := 0
	for _, k := range keys {
		if keyedBackend(ranges, k) == i {
			n++
		}
	}
	return 100 * float64(n) / float64(len(keys))
}

// Over many clients each backend gets its weight's share, for random keys
// and for the hashes of neighbouring addresses alike (a /16 of them: the
// hash's high bits barely differ between neighbours, so the key is spread
// before it is scaled), whatever the weights sum to.
func TestSplitSharesMatchTheWeights(t *testing.T) {
	random := rand.New(rand.NewPCG(18, 5))
	keys := make([]uint64, 10000)
	for i := range keys {
		keys[i] = random.Uint64()
	}
	neighbours := make([]uint64, 10000)
	for i := range neighbours {
		neighbours[i] = fnv1a(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}).String())
	}
	for _, tc := range []struct {
		weights []int
		want    float64 // the last backend's share, in points
	}{
		{[]int{95, 5}, 5},
		{[]int{75, 25}, 25},
		{[]int{50, 50}, 50},
		{[]int{2, 1}, 100.0 / 3},
		{[]int{900, 0, 37}, 100 * 37.0 / 937},
	} {
		// Within three standard errors of 10,000 draws: ±0.65 points at
		// 5%, ±1.5 at 50%.
		p := tc.want / 100
		within := 3 * 100 * math.Sqrt(p*(1-p)/10000)
		last := len(tc.weights) - 1
		require.InDelta(t, tc.want, shareOf(tc.weights, last, keys), within, "%v, random keys", tc.weights)
		require.InDelta(t, tc.want, shareOf(tc.weights, last, neighbours), within, "%v, the addresses 10.0.0.0/16", tc.weights)
	}
	require.Zero(t, shareOf([]int{900, 0, 37}, 1, keys), "weight 0 owns no key")
}

// A key the new release has at weight w it has at every weight above w:
// the new release's range grows from the top. So a client sent to the
// canary at 5% stays on it at 25% and 50%, also when the old release's
// weight stays as it is and the sum grows (old 20, new 1..99).
func TestSplitGrowsFromTheTop(t *testing.T) {
	random := rand.New(rand.NewPCG(25, 50))
	keys := make([]uint64, 10000)
	for i := range keys {
		keys[i] = random.Uint64()
	}
	for _, tc := range []struct {
		name    string
		weights func(w int) []int
	}{
		{"old 100-w, new w", func(w int) []int { return []int{100 - w, w} }},
		{"old 20, new w", func(w int) []int { return []int{20, w} }},
		{"old 60-w, other 40, new w", func(w int) []int { return []int{max(60-w, 0), 40, w} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			onNew := make([]int, len(keys)) // the first weight each key was on new at; 0: not yet
			for w := 1; w <= 99; w++ {
				weights := tc.weights(w)
				ranges := keyRanges(weights)
				if ranges == nil {
					continue // new alone: not split
				}
				for i, k := range keys {
					on := keyedBackend(ranges, k) == len(weights)-1
					if onNew[i] > 0 && !on {
						t.Fatalf("key %016x was on new at weight %d, not at %d (%v)", k, onNew[i], w, weights)
					}
					if on && onNew[i] == 0 {
						onNew[i] = w
					}
				}
			}
		})
	}
}

// A client key is the handoff_split cookie when the request has a valid
// one, else the FNV-1a 64 hash of the client's address, which is the
// connection's, or a trusted front's X-Forwarded-For's: the rightmost
// address in it that is not itself trusted, the leftmost when all are.
// The port is not part of it.
func TestClientAddressAndKey(t *testing.T) {
	loopback := DefaultTrusted
	for _, tc := range []struct {
		name    string
		remote  string
		xff     []string
		trusted []netip.Prefix
		want    string
	}{
		{"the connection's address", "203.0.113.9:4711", nil, loopback, "203.0.113.9"},
		{"an untrusted connection's X-Forwarded-For is ignored", "203.0.113.9:4711", []string{"198.51.100.7"}, loopback, "203.0.113.9"},
		{"so is any, when nothing is trusted", "127.0.0.1:4711", []string{"198.51.100.7"}, nil, "127.0.0.1"},
		{"a trusted front without one", "127.0.0.1:4711", nil, loopback, "127.0.0.1"},
		{"a trusted front's", "127.0.0.1:4711", []string{"198.51.100.7"}, loopback, "198.51.100.7"},
		{"what the client sent is left of what the front saw", "127.0.0.1:4711", []string{"6.6.6.6, 198.51.100.7"}, loopback, "198.51.100.7"},
		{"the same over two header lines", "127.0.0.1:4711", []string{"6.6.6.6", "198.51.100.7"}, loopback, "198.51.100.7"},
		{"a second trusted front is skipped", "127.0.0.1:4711", []string{"198.51.100.7, 127.0.0.2"}, loopback, "198.51.100.7"},
		{"all trusted: the leftmost", "127.0.0.1:4711", []string{"127.0.0.3, 127.0.0.2"}, loopback, "127.0.0.3"},
		{"a port in it", "127.0.0.1:4711", []string{"198.51.100.7:5555"}, loopback, "198.51.100.7"},
		{"IPv6 with a port", "[::1]:4711", []string{"[2001:DB8::1]:443"}, loopback, "2001:db8::1"},
		{"IPv4-mapped", "[::ffff:127.0.0.1]:4711", []string{" ::ffff:198.51.100.7 "}, loopback, "198.51.100.7"},
		{"not an address", "127.0.0.1:4711", []string{"6.6.6.6, unknown"}, loopback, "unknown"},
		{"an empty header", "127.0.0.1:4711", []string{""}, loopback, "127.0.0.1"},
		{"not an IP connection", "@", nil, loopback, "@"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, clientAddr(tc.remote, tc.xff, tc.trusted))
		})
	}

	h := fnv.New64a()
	_, _ = io.WriteString(h, "198.51.100.7")
	require.Equal(t, h.Sum64(), fnv1a("198.51.100.7"), "FNV-1a 64, as hash/fnv has it")

	request := func(remote, cookie string) *http.Request {
		r, _ := http.NewRequest(http.MethodGet, "http://web/", nil)
		r.RemoteAddr = remote
		if cookie != "" {
			r.Header.Set("Cookie", cookie)
		}
		return r
	}
	for cookie, want := range map[string]uint64{
		"":                                                fnv1a("203.0.113.9"),
		"handoff_split=00000000000000ff":                  0xff,
		"a=1; handoff_split=fedcba9876543210":             0xfedcba9876543210,
		"handoff_split=00000000000000FF":                  fnv1a("203.0.113.9"), // not lowercase: not ours
		"handoff_split=0000000000000ff":                   fnv1a("203.0.113.9"), // 15 digits
		"handoff_split=00000000000000ff0":                 fnv1a("203.0.113.9"), // 17
		"handoff_split=000000000000000x":                  fnv1a("203.0.113.9"),
		"handoff_split=x; handoff_split=000000000000000a": 0xa, // the first valid one
	} {
		key, sent := requestKey(request("203.0.113.9:1", cookie), nil)
		require.Equal(t, want, key, "cookie %q", cookie)
		require.Equal(t, want != fnv1a("203.0.113.9"), sent, "cookie %q", cookie)
	}
	k1, _ := requestKey(request("203.0.113.9:1", ""), nil)
	k2, _ := requestKey(request("203.0.113.9:2", ""), nil)
	require.Equal(t, k1, k2, "the port is not part of the key")
	require.Equal(t, "000000000000001f", formatKey(0x1f))
	k, ok := parseKey(formatKey(0xfedcba9876543210))
	require.True(t, ok)
	require.Equal(t, uint64(0xfedcba9876543210), k)
}

// keyOn is a client key whose requests go to backend i of a route of
// weights.
func keyOn(t *testing.T, weights []int, i int) uint64 {
	t.Helper()
	for k := range uint64(10000) {
		if keyedBackend(keyRanges(weights), k) == i {
			return k
		}
	}
	t.Fatalf("no key goes to backend %d of %v", i, weights)
	return 0
}

// addrOn is a client address whose requests go to backend i of a route of
// weights.
func addrOn(t *testing.T, weights []int, i int) string {
	t.Helper()
	for n := 1; n < 255; n++ {
		a := fmt.Sprint("198.51.100.", n)
		if keyedBackend(keyRanges(weights), fnv1a(a)) == i {
			return a
		}
	}
	t.Fatalf("no address goes to backend %d of %v", i, weights)
	return ""
}

func withKey(k uint64) func(*http.Request) {
	return func(r *http.Request) { r.AddCookie(&http.Cookie{Name: splitCookie, Value: formatKey(k)}) }
}

func withForwardedFor(v string) func(*http.Request) {
	return func(r *http.Request) { r.Header.Set("X-Forwarded-For", v) }
}

// ask GETs url, the request as set makes it, and says which release
// answered and what the answer's Set-Cookie headers are.
func ask(t *testing.T, url string, set ...func(*http.Request)) (release string, setCookies []string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	require.NoError(t, err)
	for _, f := range set {
		f(req)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	return resp.Header.Get("X-Release"), resp.Header.Values("Set-Cookie")
}

// keyedClient sends every request to listen with the client key k, from
// a cookie jar as a browser would.
func keyedClient(t *testing.T, listen string, k uint64) *http.Client {
	t.Helper()
	jar, err := cookiejar.New(nil)
	require.NoError(t, err)
	jar.SetCookies(&url.URL{Scheme: "http", Host: listen}, []*http.Cookie{{Name: splitCookie, Value: formatKey(k)}})
	return &http.Client{Jar: jar}
}

func newServerWith(t *testing.T, opts Options) *Server {
	p := NewServer(net.Listen, slog.New(slog.NewTextHandler(io.Discard, nil)), opts)
	t.Cleanup(func() {
		for _, s := range p.List() {
			_ = p.Delete(s.Name)
		}
	})
	return p
}

// One client stays on one release: from its address (the connection's,
// or the one a trusted front names), or its cookie, which wins over the
// address. Clients are spread over both.
func TestAClientStaysOnOneRelease(t *testing.T) {
	oldApp, newApp := newBackend(t, "old"), newBackend(t, "new")
	p := newServerWith(t, Options{Trusted: DefaultTrusted})
	listen := serveRoute(t, p, canary(oldApp.addr(), newApp.addr(), 50))
	site := "http://" + listen + "/"
	names := []string{"old", "new"}

	seen := map[string]int{}
	for n := 1; n <= 40; n++ {
		addr := fmt.Sprint("198.51.100.", n)
		want := names[keyedBackend(keyRanges([]int{50, 50}), fnv1a(addr))]
		for range 3 {
			rel, _ := ask(t, site, withForwardedFor(addr))
			require.Equal(t, want, rel, "client %s", addr)
		}
		seen[want]++
	}
	require.Len(t, seen, 2, "40 clients over both releases: %v", seen)

	front := names[keyedBackend(keyRanges([]int{50, 50}), fnv1a("127.0.0.1"))]
	for range 5 {
		rel, _ := ask(t, site)
		require.Equal(t, front, rel, "the connection's address, with no X-Forwarded-For")
	}

	onOld := addrOn(t, []int{50, 50}, 0)
	for range 5 {
		rel, _ := ask(t, site, withForwardedFor(onOld), withKey(keyOn(t, []int{50, 50}, 1)))
		require.Equal(t, "new", rel, "the cookie wins over the address")
	}
}

// Only a trusted front's X-Forwarded-For names the client: a client that
// sends one itself cannot pick its release by it.
func TestForwardedForPicksTheReleaseOnlyFromATrustedFront(t *testing.T) {
	oldApp, newApp := newBackend(t, "old"), newBackend(t, "new")
	names := []string{"old", "new"}
	ours := keyedBackend(keyRanges([]int{50, 50}), fnv1a("127.0.0.1")) // the test's connections'
	other := addrOn(t, []int{50, 50}, 1-ours)

	trusting := newServerWith(t, Options{Trusted: DefaultTrusted})
	listen := serveRoute(t, trusting, canary(oldApp.addr(), newApp.addr(), 50))
	rel, _ := ask(t, "http://"+listen+"/", withForwardedFor(other))
	require.Equal(t, names[1-ours], rel, "from a trusted front: the client it names")
	rel, _ = ask(t, "http://"+listen+"/", withForwardedFor(addrOn(t, []int{50, 50}, ours)+", "+other))
	require.Equal(t, names[1-ours], rel, "the front's own entry, not what the client sent before it")

	untrusting := newServerWith(t, Options{Trusted: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}})
	listen = serveRoute(t, untrusting, canary(oldApp.addr(), newApp.addr(), 50))
	for range 5 {
		rel, _ := ask(t, "http://"+listen+"/", withForwardedFor(other))
		require.Equal(t, names[ours], rel, "from anyone else: the connection's address")
	}
}

// A split route's answer to a request without a valid handoff_split
// cookie carries one with the key it used, beside the app's own cookies;
// HTTP/1.1, h2c, after an Early Hints answer, and on a WebSocket's 101
// alike. Not with the cookie sent, nor on a route that is not split.
func TestTheSplitCookieIsSetWhileSplitAndMissing(t *testing.T) {
	oldApp, newApp := newBackend(t, "old"), newBackend(t, "new")
	appCookie := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Add("Set-Cookie", "session=abc; Path=/")
			if r.URL.Path == "/hints" {
				w.Header().Set("Link", "</app.css>; rel=preload")
				w.WriteHeader(http.StatusEarlyHints)
			}
			h.ServeHTTP(w, r)
		})
	}
	oldApp.Config.Handler, newApp.Config.Handler = appCookie(oldApp.Config.Handler), appCookie(newApp.Config.Handler)
	p := newTestServer(t)
	listen := serveRoute(t, p, canary(oldApp.addr(), newApp.addr(), 25))
	site := "http://" + listen
	ours := "handoff_split=" + formatKey(fnv1a("127.0.0.1")) + "; Path=/; Max-Age=86400; HttpOnly; SameSite=Lax"

	_, cookies := ask(t, site+"/")
	require.ElementsMatch(t, []string{"session=abc; Path=/", ours}, cookies, "the key used, beside the app's cookie")
	_, cookies = ask(t, site+"/hints")
	require.ElementsMatch(t, []string{"session=abc; Path=/", ours}, cookies, "on the final answer after a 103")
	_, cookies = ask(t, site+"/", withKey(7))
	require.Equal(t, []string{"session=abc; Path=/"}, cookies, "the request had one: none is set")
	_, cookies = ask(t, site+"/", func(r *http.Request) { r.Header.Set("Cookie", "handoff_split=NOT-A-KEY") })
	require.ElementsMatch(t, []string{"session=abc; Path=/", ours}, cookies, "one that is not a key is replaced")

	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	resp, err := (&http.Client{Transport: tr}).Get(site + "/")
	require.NoError(t, err)
	resp.Body.Close()
	tr.CloseIdleConnections()
	require.Equal(t, 2, resp.ProtoMajor)
	require.Contains(t, resp.Header.Values("Set-Cookie"), ours, "over h2c")

	ws, resp, err := websocket.Dial(context.Background(), "ws://"+listen+"/ws", nil)
	require.NoError(t, err)
	ws.CloseNow()
	require.Contains(t, resp.Header.Values("Set-Cookie"), ours, "on the WebSocket's 101")

	for _, route := range [][]wire.Backend{
		{{Release: "new", Endpoints: []string{newApp.addr()}, Weight: 100}, {Release: "old", Endpoints: []string{oldApp.addr()}, Weight: 0}},
		{{Release: "new", Endpoints: []string{newApp.addr(), oldApp.addr()}, Weight: 100}},
	} {
		_, err := p.Route("web", nil, route)
		require.NoError(t, err)
		_, cookies = ask(t, site+"/")
		require.Equal(t, []string{"session=abc; Path=/"}, cookies, "not split: %v", route)
	}
}

// A client the canary got at 5% is still on it at 25% and 50%, through
// the proxy, as a deploy raises the weight.
func TestACanaryKeepsItsClientsAsItGrows(t *testing.T) {
	oldApp, newApp := newBackend(t, "old"), newBackend(t, "new")
	p := newTestServer(t)
	listen := serveRoute(t, p, canary(oldApp.addr(), newApp.addr(), 5))
	keys := rand.New(rand.NewPCG(5, 25))
	clients := make([]uint64, 300)
	for i := range clients {
		clients[i] = keys.Uint64()
	}
	onNew := map[uint64]bool{}
	for _, k := range clients {
		if rel, _ := ask(t, "http://"+listen+"/", withKey(k)); rel == "new" {
			onNew[k] = true
		}
	}
	require.NotEmpty(t, onNew)
	from := canary(oldApp.addr(), newApp.addr(), 5)
	for _, w := range []int{25, 50} {
		to := canary(oldApp.addr(), newApp.addr(), w)
		_, err := p.Route("web", from, to)
		require.NoError(t, err)
		from = to
		n := 0
		for _, k := range clients {
			rel, _ := ask(t, "http://"+listen+"/", withKey(k))
			if onNew[k] {
				require.Equal(t, "new", rel, "key %016x was on new at 5%%, at %d%% it is not", k, w)
			}
			if rel == "new" {
				n++
			}
		}
		require.Greater(t, n, len(onNew), "at %d%% new has more clients than at 5%%", w)
	}
}

// When the release a client's key falls in has no endpoint up, its
// requests go to another release's endpoint that is up, counted where they
// are answered; while its release has another endpoint up, they stay on
// its release.
func TestADownKeyedReleaseMovesTheRequest(t *testing.T) {
	defer func(f time.Duration) { probeFirst = f }(probeFirst)
	probeFirst = 20 * time.Millisecond
	t.Run("no endpoint of its release up", func(t *testing.T) {
		up := newBackend(t, "up")
		refusing := freeAddr(t)
		p := newServerWith(t, Options{DialRetry: 2 * time.Second, Clock: newJumpingClock()})
		listen := serveRoute(t, p, []wire.Backend{{Release: "a", Endpoints: []string{refusing}, Weight: 50}, {Release: "b", Endpoints: []string{up.addr()}, Weight: 50}})
		c := keyedClient(t, listen, keyOn(t, []int{50, 50}, 0))
		for range 10 {
			rel, _ := get(t, c, "http://"+listen+"/")
			require.Equal(t, "up", rel)
		}
		require.True(t, isDown(t, p, refusing))
		require.Equal(t, uint64(1), endpointStatsOf(t, p, "web", refusing).Moved, "the first found it refusing and moved; the others went elsewhere at once")
		require.Equal(t, uint64(10), endpointStatsOf(t, p, "web", up.addr()).Answered, "counted where they were answered")
	})
	t.Run("another endpoint of its release up", func(t *testing.T) {
		a2, b := newBackend(t, "a2"), newBackend(t, "b")
		refusing := freeAddr(t)
		p := newServerWith(t, Options{DialRetry: 2 * time.Second, Clock: newJumpingClock()})
		listen := serveRoute(t, p, []wire.Backend{{Release: "b", Endpoints: []string{b.addr()}, Weight: 50}, {Release: "a", Endpoints: []string{refusing, a2.addr()}, Weight: 50}})
		c := keyedClient(t, listen, keyOn(t, []int{50, 50}, 1))
		for range 10 {
			rel, _ := get(t, c, "http://"+listen+"/")
			require.Equal(t, "a2", rel, "the client stays on its release")
		}
	})
}

// A route change between a request's pick and its count sends it along
// the new route by the same key: to the endpoint its key falls in there.
func TestARepickAfterARouteChangeKeepsTheKey(t *testing.T) {
	a1, a2, b := newBackend(t, "a1"), newBackend(t, "a2"), newBackend(t, "b")
	var hitsA1 atomic.Int64
	a1.Config.Handler = countingHandler(a1.Config.Handler, &hitsA1)
	p := newTestServer(t)
	from := []wire.Backend{{Release: "y", Endpoints: []string{b.addr()}, Weight: 50}, {Release: "x", Endpoints: []string{a1.addr()}, Weight: 50}}
	listen := serveRoute(t, p, from)
	to := []wire.Backend{{Release: "y", Endpoints: []string{b.addr()}, Weight: 50}, {Release: "x2", Endpoints: []string{a2.addr()}, Weight: 50}, {Release: "x", Endpoints: []string{a1.addr()}, Weight: 0}}

	var once sync.Once
	acquireHook = func() {
		once.Do(func() {
			_, err := p.Route("web", from, to)
			require.NoError(t, err)
		})
	}
	t.Cleanup(func() { acquireHook = nil })
	for range 5 {
		rel, _ := ask(t, "http://"+listen+"/", withKey(keyOn(t, []int{50, 50}, 1)))
		require.Equal(t, "a2", rel, "the second backend's key, on the new route's second backend")
	}
	require.Zero(t, hitsA1.Load(), "a1 never saw it")
}

// The cookie's value round-trips, and a split route is one of two or more
// backends of weight > 0.
func TestKeyRangesAreThoseOfASplit(t *testing.T) {
	require.Nil(t, keyRanges([]int{100}))
	require.Nil(t, keyRanges([]int{100, 0, 0}))
	require.Equal(t, []keyRange{{backend: 1, end: 95}, {backend: 2, end: 100}}, keyRanges([]int{0, 95, 5}))
	for _, w := range []string{"0000000000000000", "ffffffffffffffff"} {
		k, ok := parseKey(w)
		require.True(t, ok)
		require.Equal(t, w, formatKey(k))
	}
	require.True(t, strings.HasPrefix(newCookieWriter(nil, 1).cookie, "handoff_split=0000000000000001; "))
}
