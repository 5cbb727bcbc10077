package proxy

import (
	"bufio"
	"math/bits"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
)

// A split route (two or more backends of weight > 0: a canary) sends each
// client to one release for as long as the split lasts, so that a canary's
// error rate and latency are those of whole sessions, and a user does not
// flip between versions from one click to the next. The release is chosen
// by the request's client key: its handoff_split cookie, or else a hash of
// the client's address. A route of one backend of weight > 0 never looks
// at any of this.

// splitCookie is the cookie that carries a client's key: 16 lowercase hex
// digits, set on the first answer of a split route to a client that sent
// none, so that its later requests keep the key if its address changes.
const splitCookie = "handoff_split"

// splitCookieAttrs follow the key in the Set-Cookie: a day, every path,
// no script access, sent on top-level navigation from other sites.
const splitCookieAttrs = "; Path=/; Max-Age=86400; HttpOnly; SameSite=Lax"

// keyRange is one backend of weight > 0 of a split route and where its
// buckets end; it owns the buckets from the previous range's end to end.
type keyRange struct {
	backend int    // its index in route.backends
	end     uint64 // the sum of the weights up to and including it
}

// keyRanges are the buckets of the backends of weight > 0, consecutive
// ranges in the route's order, each as wide as its weight; nil when fewer
// than two backends have weight > 0 (the route is not split).
//
// A key's bucket is its place in [0, 1) scaled to the sum of the weights
// (keyedBackend), so the last backend owns the top w/sum of that interval.
// As its weight grows that share grows from the top down: every key it had
// it keeps. A deploy lists the old release first and the new one last, so
// a client the canary got at 5% stays on it at 25% and at 50%, whatever the
// sum of the weights is (95:5 then 75:25, or 19:1 then 3:1).
func keyRanges(weights []int) []keyRange {
	var out []keyRange
	var end uint64
	for i, w := range weights {
		if w > 0 {
			end += uint64(w)
			out = append(out, keyRange{backend: i, end: end})
		}
	}
	if len(out) < 2 {
		return nil
	}
	return out
}

// keyedBackend is the index of the backend of ranges that key's requests
// go to. The key is spread first: an address hash's high bits barely
// differ between neighbouring addresses, which would send a whole /24 to
// one release.
func keyedBackend(ranges []keyRange, key uint64) int {
	bucket, _ := bits.Mul64(spread(key), ranges[len(ranges)-1].end) // spread(key)/2^64 × sum
	for _, kr := range ranges {
		if bucket < kr.end {
			return kr.backend
		}
	}
	return ranges[len(ranges)-1].backend // not reached: bucket < sum
}

// spread is murmur3's 64-bit finalizer: a bijection in which each bit of
// k changes about half the bits of the result.
func spread(k uint64) uint64 {
	k ^= k >> 33
	k *= 0xff51afd7ed558ccd
	k ^= k >> 33
	k *= 0xc4ceb9fe1a85ec53
	k ^= k >> 33
	return k
}

// clientKey is a request's client key, worked out the first time a split
// route asks for it and kept for every pick of the request after it (a
// re-pick after a route change, a move off a refusing endpoint).
type clientKey struct {
	r       *http.Request
	trusted []netip.Prefix
	value   uint64
	known   bool // value is worked out: the request met a split route
	sent    bool // value is the request's own cookie: no Set-Cookie for it
}

func (k *clientKey) get() uint64 {
	if !k.known {
		k.value, k.sent = requestKey(k.r, k.trusted)
		k.known = true
	}
	return k.value
}

// requestKey is r's client key: its handoff_split cookie when it has a
// valid one (sent), else the FNV-1a 64 hash of the client's address.
func requestKey(r *http.Request, trusted []netip.Prefix) (key uint64, sent bool) {
	for _, c := range r.CookiesNamed(splitCookie) {
		if k, ok := parseKey(c.Value); ok {
			return k, true
		}
	}
	return fnv1a(clientAddr(r.RemoteAddr, r.Header.Values("X-Forwarded-For"), trusted)), false
}

// parseKey reads a key as the cookie carries it: exactly 16 lowercase hex
// digits (what formatKey writes; anything else is not ours).
func parseKey(v string) (uint64, bool) {
	if len(v) != 16 {
		return 0, false
	}
	for i := range len(v) {
		if c := v[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return 0, false
		}
	}
	k, err := strconv.ParseUint(v, 16, 64)
	return k, err == nil
}

// formatKey is key as the cookie carries it.
func formatKey(key uint64) string {
	const digits = "0123456789abcdef"
	var b [16]byte
	for i := 15; i >= 0; i-- {
		b[i] = digits[key&0xf]
		key >>= 4
	}
	return string(b[:])
}

// clientAddr is the address of the client a request comes from, as text,
// without a port: the connection's remote IP, or, when the connection
// comes from a trusted front, the client its X-Forwarded-For names — the
// rightmost address that is not itself trusted (the front appends what it
// saw; whatever is left of that a client could have sent), the leftmost
// when all are. From anyone else X-Forwarded-For is ignored: a client must
// not choose its release by sending one.
func clientAddr(remoteAddr string, forwardedFor []string, trusted []netip.Prefix) string {
	remote := parseAddr(remoteAddr)
	if !remote.IsValid() {
		return remoteAddr // not an IP (a Unix socket): the same text, the same key
	}
	if !trustsAddr(trusted, remote) || len(forwardedFor) == 0 {
		return remote.String()
	}
	entries := strings.Split(strings.Join(forwardedFor, ","), ",")
	leftmost := ""
	for i := len(entries) - 1; i >= 0; i-- {
		e := strings.TrimSpace(entries[i])
		if e == "" {
			continue
		}
		ip := parseAddr(e)
		if !ip.IsValid() || !trustsAddr(trusted, ip) {
			if ip.IsValid() {
				return ip.String()
			}
			return e // what the front wrote, as it wrote it ("unknown", an obfuscated name)
		}
		leftmost = ip.String()
	}
	if leftmost == "" {
		return remote.String() // an empty header
	}
	return leftmost
}

// parseAddr reads an IP, with or without a port (some fronts write one
// into X-Forwarded-For), IPv4-mapped IPv6 as IPv4 and without a zone, so
// that one client has one text; the zero Addr when s is neither.
func parseAddr(s string) netip.Addr {
	ip, err := netip.ParseAddr(s)
	if err != nil {
		ap, err := netip.ParseAddrPort(s)
		if err != nil {
			return netip.Addr{}
		}
		ip = ap.Addr()
	}
	return ip.Unmap().WithZone("")
}

// fnv1a is the 64-bit FNV-1a hash of s (hash/fnv's New64a, without the
// allocation of a hash.Hash).
func fnv1a(s string) uint64 {
	const (
		offset = 14695981039346656037
		prime  = 1099511628211
	)
	h := uint64(offset)
	for i := range len(s) {
		h ^= uint64(s[i])
		h *= prime
	}
	return h
}

// pickKeyed is the endpoint a request of client key k goes to on a split
// route: the keyed backend's endpoint up with the fewest in flight; when
// it has none up, another backend's, as pickUp picks (availability comes
// before stickiness: the client is back on its release once one of its
// endpoints is up); when none is up anywhere, the keyed backend's next in
// turn (the dial retry waits for it).
func (r *route) pickKeyed(k *clientKey) *target {
	if t := r.pickUpKeyed(k, nil); t != nil {
		return t
	}
	b := r.backends[keyedBackend(r.keyed, k.get())]
	return b.endpoints[b.turn()%uint64(len(b.endpoints))]
}

// pickUpKeyed is the endpoint up, other than not, that a request of client
// key k goes to on a split route: its keyed backend's, else another's as
// pickUp picks; nil when none is up.
func (r *route) pickUpKeyed(k *clientKey, not *target) *target {
	b := r.backends[keyedBackend(r.keyed, k.get())]
	if t := b.fewest(b.turn(), not); t != nil {
		return t
	}
	return r.pickUp(not)
}

// cookieWriter adds the Set-Cookie of a request's client key to its answer
// when the answer's headers go out: a final status, or the hijack of a
// protocol switch (ReverseProxy writes a 101 itself, from the headers as
// they are then). Not before: ReverseProxy clears the headers after each
// informational (1xx) answer it passes on. The app's own cookies stay
// beside it, and a handoff_split the app sets itself wins.
type cookieWriter struct {
	http.ResponseWriter
	cookie string // the Set-Cookie value
	added  bool
}

func newCookieWriter(w http.ResponseWriter, key uint64) *cookieWriter {
	return &cookieWriter{ResponseWriter: w, cookie: splitCookie + "=" + formatKey(key) + splitCookieAttrs}
}

func (w *cookieWriter) add() {
	if w.added {
		return
	}
	w.added = true
	h := w.Header()
	for _, v := range h["Set-Cookie"] {
		if strings.HasPrefix(v, splitCookie+"=") {
			return
		}
	}
	h.Add("Set-Cookie", w.cookie)
}

func (w *cookieWriter) WriteHeader(code int) {
	if code >= 200 || code == http.StatusSwitchingProtocols {
		w.add()
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *cookieWriter) Write(b []byte) (int, error) {
	w.add() // a Write before any WriteHeader is a 200
	return w.ResponseWriter.Write(b)
}

func (w *cookieWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	w.add()
	return http.NewResponseController(w.ResponseWriter).Hijack()
}

// Unwrap lets http.ResponseController (ReverseProxy's flushes) reach the
// connection's writer.
func (w *cookieWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
