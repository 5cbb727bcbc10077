// Package caddy switches a service's upstream in a running Caddy through
// its admin API, and keeps the Caddyfile on disk in step: it is the
// deploy.Proxy for Caddy.
package caddy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"

	"github.com/handoff-dev/handoff/internal/deploy"
)

// DefaultAdmin is Caddy's own default admin address.
const DefaultAdmin = "http://localhost:2019"

// adminTimeout bounds one admin call; a switch under load takes 10–125 ms.
const adminTimeout = 15 * time.Second

// admin talks to Caddy's admin API over TCP or a unix socket.
type admin struct {
	address string // as the user gave it, for messages
	base    string // URL prefix
	http    *http.Client
}

func newAdmin(address string) (*admin, error) {
	if address == "" {
		address = DefaultAdmin
	}
	a := &admin{address: address}
	// Every call dials afresh: Caddy starts its admin endpoint again at each
	// config load and closes the connections of the one before, so the
	// read-back after a switch, sent on a kept connection, was reset
	// (TestCaddyfileCorpusThroughCaddy in CI). A loopback dial costs nothing.
	transport := &http.Transport{Proxy: nil, DisableKeepAlives: true}
	switch {
	case strings.HasPrefix(address, "unix:"):
		path := strings.TrimPrefix(strings.TrimPrefix(address, "unix:"), "//")
		transport.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		}
		a.base = "http://localhost"
	case strings.HasPrefix(address, "http://"):
		a.base = strings.TrimRight(address, "/")
	case strings.HasPrefix(address, "https://"):
		return nil, fmt.Errorf("%w: caddy admin %q: Caddy's admin API speaks plain HTTP on loopback or a unix socket (unix:/run/caddy/admin.sock)", deploy.ErrConfig, address)
	default:
		a.base = "http://" + strings.TrimRight(address, "/")
	}
	a.http = &http.Client{Transport: transport, Timeout: adminTimeout}
	return a, nil
}

// call sends one admin request and decodes a JSON answer into out (if not nil).
// It returns the response headers, for the Etag.
func (a *admin) call(ctx context.Context, method, path string, body any, header http.Header, out any) (http.Header, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, rd)
	if err != nil {
		return nil, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := a.http.Do(req)
	// A read is sent again when its connection was cut before an answer:
	// Caddy starts its admin endpoint again at each config load, and a
	// connection the old one accepted as it stopped ends unanswered. A
	// change is never sent again here: the procedure reads it back.
	for tries := 1; err != nil && method == http.MethodGet && tries < 3 && cutShort(err); tries++ {
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(tries) * 50 * time.Millisecond):
		}
		req = req.Clone(ctx)
		resp, err = a.http.Do(req)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s %s at %s: %v (is Caddy running with its admin API there? set --caddy-admin)", deploy.ErrProxyUnreached, method, path, a.address, unwrapURL(err))
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode == http.StatusPreconditionFailed {
		return nil, fmt.Errorf("%w: Caddy's config changed while handoff was switching; run the deploy again", deploy.ErrConflict)
	}
	if resp.StatusCode/100 != 2 {
		return nil, &apiError{method: method, path: path, status: resp.StatusCode, msg: caddyMessage(data)}
	}
	if out != nil && len(bytes.TrimSpace(data)) > 0 {
		// Numbers stay as Caddy wrote them: a config read and written back
		// must not turn an int64 into a rounded float.
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.UseNumber()
		if err := dec.Decode(out); err != nil {
			return nil, fmt.Errorf("%s %s: decode Caddy's answer: %w", method, path, err)
		}
	}
	return resp.Header, nil
}

// cutShort says whether a connection ended before its answer came.
func cutShort(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)
}

type apiError struct {
	method, path string
	status       int
	msg          string
}

func (e *apiError) Error() string {
	return fmt.Sprintf("caddy admin %s %s: %d %s", e.method, e.path, e.status, e.msg)
}

// Unwrap makes an error answer of Caddy's a proxy failure (exit 5).
func (e *apiError) Unwrap() error { return deploy.ErrProxy }

// caddyMessage takes the "error" field of Caddy's JSON error answers.
func caddyMessage(data []byte) string {
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(data, &e) == nil && e.Error != "" {
		return e.Error
	}
	return strings.TrimSpace(string(data))
}

func unwrapURL(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, "\": "); i >= 0 {
		return s[i+3:]
	}
	return s
}
