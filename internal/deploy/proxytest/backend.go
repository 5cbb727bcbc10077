package proxytest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/deploy"
)

// backend is an upstream on loopback that answers with its name; on
// /slow it answers only once released. A POST is answered only once its
// whole body came (a request retried with a body it lost is not).
type backend struct {
	name, addr string
	started    chan *backend // told when a slow request starts; a release's backends share one
	release    chan struct{}
	once       sync.Once
}

func newBackend(t *testing.T, name string) *backend {
	return startBackend(t, name, make(chan *backend, 16))
}

func startBackend(t *testing.T, name string, started chan *backend) *backend {
	b := &backend{name: name, started: started, release: make(chan struct{})}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			n, err := io.Copy(io.Discard, r.Body)
			if err != nil || n != r.ContentLength {
				http.Error(w, fmt.Sprintf("%s read %d of the body's %d bytes (%v)", name, n, r.ContentLength, err), http.StatusBadRequest)
				return
			}
		}
		if r.URL.Path == "/slow" {
			b.started <- b
			select {
			case <-b.release:
			case <-r.Context().Done():
			}
		}
		io.WriteString(w, name)
	}))
	t.Cleanup(func() { b.end(); srv.Close() })
	b.addr = strings.TrimPrefix(srv.URL, "http://")
	return b
}

// route is the route that sends everything to b.
func (b *backend) route() deploy.Route { return deploy.Only(b.name, b.addr) }

func (b *backend) end() { b.once.Do(func() { close(b.release) }) }

// release is the backends of one release, named prefix1, prefix2, …
type release []*backend

func newRelease(t *testing.T, prefix string, n int) release {
	started := make(chan *backend, 16)
	r := make(release, n)
	for i := range r {
		r[i] = startBackend(t, prefix+strconv.Itoa(i+1), started)
	}
	return r
}

func (r release) addrs() []string {
	out := make([]string, len(r))
	for i, b := range r {
		out[i] = b.addr
	}
	return out
}

// String names r's backends for messages: "a1, a2, a3".
func (r release) String() string {
	names := make([]string, len(r))
	for i, b := range r {
		names[i] = b.name
	}
	return strings.Join(names, ", ")
}

// route is the route that sends everything to r, as release name.
func (r release) route(name string) deploy.Route { return deploy.Only(name, r.addrs()...) }

// refusing is a loopback address where nothing listens: a connection
// there is refused, as one to a replica that crashed is.
func refusing(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return addr
}

var client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// get is the name of the backend that answered a request through front.
func get(t *testing.T, front string) string {
	t.Helper()
	body, err := fetch(t.Context(), http.MethodGet, front+"/", "")
	require.NoError(t, err)
	return body
}

// postBody is what a POST through the front sends: more than one read of
// a small buffer, as a form or a JSON document is.
var postBody = strings.Repeat("x", 4096)

// fetch sends a request (with body, when not "") and returns the body of
// its answer, which must be 200.
func fetch(ctx context.Context, method, url, body string) (string, error) {
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, r)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("%s %s: %d %s", method, url, resp.StatusCode, strings.TrimSpace(string(got)))
	}
	return string(got), err
}

// slow is a request through the front that b holds until released.
type slow struct {
	b    *backend
	body chan string
}

// slowThrough starts a request through in's front and waits until b runs it.
func (b *backend) slowThrough(t *testing.T, in Instance) *slow {
	t.Helper()
	return slowThrough(t, in, release{b})
}

// slowThrough starts a request through in's front and waits until one of
// r runs it, whichever the proxy picked.
func (r release) slowThrough(t *testing.T, in Instance) *slow {
	t.Helper()
	return slowThrough(t, in, r)
}

func slowThrough(t *testing.T, in Instance, r release) *slow {
	t.Helper()
	s := &slow{body: make(chan string, 1)}
	for _, b := range r {
		t.Cleanup(b.end) // before the proxy's own cleanup, which may wait for it
	}
	go func() {
		body, err := fetch(context.WithoutCancel(t.Context()), http.MethodGet, in.Front+"/slow", "")
		if err != nil {
			body = err.Error()
		}
		s.body <- body
	}()
	select {
	case s.b = <-r[0].started:
	case <-time.After(10 * time.Second):
		t.Fatalf("the slow request did not reach %s", r)
	}
	return s
}

// end releases the request and returns what answered it.
func (s *slow) end(t *testing.T) string {
	t.Helper()
	s.b.end()
	select {
	case body := <-s.body:
		return body
	case <-time.After(10 * time.Second):
		t.Fatalf("the slow request on %s did not end once released", s.b.name)
		return ""
	}
}
