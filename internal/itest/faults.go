package itest

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/handoff-dev/handoff/internal/deploy"
)

// Fault is how a FaultyAdmin misbehaves.
type Fault string

// The faults a FaultyAdmin can play.
const (
	FaultNone        Fault = ""
	FaultError       Fault = "error"          // every call answers 500
	FaultRejectPatch Fault = "reject-patch"   // a PATCH answers 400, as Caddy does for a config it will not load
	FaultLoseReply   Fault = "lose-reply"     // a PATCH reaches Caddy, then its answer is lost (connection reset)
	FaultLoseAll     Fault = "lose-then-down" // as lose-reply, and every call after it fails
	FaultHoldReply   Fault = "hold-reply"     // a PATCH reaches Caddy, then its answer waits until Release
)

// FaultyAdmin stands between handoff and Caddy's admin API and misbehaves
// on demand: the lost replies and refusals a real network and a real Caddy
// produce, on cue.
type FaultyAdmin struct {
	Addr    string // what --caddy-admin (caddy.admin) takes
	fault   atomic.Value
	patched atomic.Int64  // PATCHes that reached Caddy
	held    chan struct{} // closed by Release
	once    sync.Once
	proxy   *httputil.ReverseProxy
	target  string
}

// NewFaultyAdmin starts one in front of c's TCP admin API; it passes
// everything through until Set says otherwise.
func NewFaultyAdmin(t testing.TB, c *Caddy) *FaultyAdmin {
	t.Helper()
	u, _ := url.Parse("http://" + c.Admin)
	// Caddy checks the Host of admin calls: they arrive with its own.
	rp := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) { pr.SetURL(u); pr.Out.Host = u.Host }}
	f := &FaultyAdmin{proxy: rp, target: c.Admin, held: make(chan struct{})}
	f.fault.Store(FaultNone)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.Addr = ln.Addr().String()
	srv := &http.Server{Handler: f}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { f.Release(); srv.Close() })
	return f
}

// Set changes the fault from now on.
func (f *FaultyAdmin) Set(fault Fault) { f.fault.Store(fault) }

// Patched counts the PATCHes that reached Caddy.
func (f *FaultyAdmin) Patched() int { return int(f.patched.Load()) }

// Release lets a held reply go.
func (f *FaultyAdmin) Release() { f.once.Do(func() { close(f.held) }) }

func (f *FaultyAdmin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	fault := f.fault.Load().(Fault)
	switch {
	case fault == FaultError:
		w.WriteHeader(http.StatusInternalServerError)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": "injected: internal error"})
		return
	case fault == FaultRejectPatch && r.Method == http.MethodPatch:
		w.WriteHeader(http.StatusBadRequest)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": "loading new config: injected: the new config was rejected"})
		return
	case (fault == FaultLoseReply || fault == FaultLoseAll || fault == FaultHoldReply) && r.Method == http.MethodPatch:
		f.forwardThenDrop(w, r, fault)
		return
	}
	f.proxy.ServeHTTP(w, r)
}

// forwardThenDrop sends the PATCH to Caddy, which applies it, and then
// closes the client's connection without an answer (after Release, for
// FaultHoldReply).
func (f *FaultyAdmin) forwardThenDrop(w http.ResponseWriter, r *http.Request, fault Fault) {
	body, _ := io.ReadAll(r.Body)
	req, _ := http.NewRequest(r.Method, "http://"+f.target+r.URL.RequestURI(), bytes.NewReader(body))
	req.Header = r.Header.Clone()
	resp, err := http.DefaultClient.Do(req)
	if err == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode/100 == 2 {
			f.patched.Add(1)
		}
	}
	switch fault {
	case FaultHoldReply:
		<-f.held
	case FaultLoseAll:
		f.Set(FaultError)
	default:
		f.Set(FaultNone) // one reply lost
	}
	conn, _, err := http.NewResponseController(w).Hijack()
	if err == nil {
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // a reset, as a lost connection looks
		}
		conn.Close()
	}
}

// historyPhase reads the newest record of the service straight from the
// state directory, fast enough to catch a phase as it starts.
func (s *Scenario) historyPhase() (phase, outcome string) {
	data, err := os.ReadFile(filepath.Join(s.State, s.Service+".history.json"))
	if err != nil {
		return "", ""
	}
	var recs []deploy.Record
	if json.Unmarshal(data, &recs) != nil || len(recs) == 0 {
		return "", ""
	}
	return recs[0].Phase, recs[0].Outcome
}

// KillDeployAt starts `handoff deploy`, waits until it has recorded phase
// (and then wait after), and kills it with SIGKILL, as a lost SSH session,
// the OOM killer or a reboot would. It returns what the deploy printed.
func (s *Scenario) KillDeployAt(phase string, after time.Duration) string {
	s.T.Helper()
	cmd, out := s.Start("deploy")
	WaitFor(s.T, 60*time.Second, "the deploy to reach phase "+phase, func() bool {
		p, o := s.historyPhase()
		return p == phase && o == deploy.OutcomeRunning || cmd.ProcessState != nil
	})
	time.Sleep(after)
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
	return out.String()
}

// KillContainerProcess kills the container's main process from the host
// with SIGKILL: a crash, as far as Docker can tell (its restart policy
// applies, unlike `docker kill`).
func KillContainerProcess(t testing.TB, api *client.Client, name string) {
	t.Helper()
	res, err := api.ContainerInspect(context.Background(), name, client.ContainerInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(res.Container.State.Pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill %s (pid %d): %v", name, res.Container.State.Pid, err)
	}
}

// Running lists the service's running containers.
func (s *Scenario) Running() []string {
	s.T.Helper()
	var out []string
	for name, running := range Containers(s.T, s.API, s.Service) {
		if running {
			out = append(out, name)
		}
	}
	return out
}
