// Command testapp is the web app handoff's tests and benchmarks deploy. It
// is built static and run FROM scratch; its behaviour is set by environment
// variables, so one image serves every test:
//
//	PORT           port to listen on (8000)
//	RELEASE        text every response carries, in its body and X-Release
//	               (GET / also carries X-Host: the container's hostname)
//	BOOT_DELAY     wait this long before listening (a slow-booting app)
//	HEALTH_STATUS  status /health answers (200); /health?redirect=1 redirects
//	CRASH_AFTER    exit 3 this long after start ("0s": at once)
//	DRAIN_GRACE    how long SIGTERM waits for requests in flight (30s)
//	STOP_DELAY     after SIGTERM, wait this long before stopping (a slow shutdown)
//	READY_DELAY    / answers 503 for this long after listening, while /health
//	               already answers 200 (a health endpoint that lies)
//	HEALTH_HANG    /health never answers when set
//	FAIL_RATE      this share of the requests to / answer 500 (0.05: one in
//	               twenty, spread evenly), /health not among them: a release
//	               that boots and then fails some of its users
//	LATENCY        / waits this long before it answers (a slow release)
//	HOLD           host:port of an HTTP service to hold one connection to, as
//	               a database pool does: GET /health on it every 100ms over
//	               that one connection; once it breaks, /health answers 503
//	               and /held says why (it is never dialled again)
//
// Endpoints: / and /health; /held says how the HOLD connection is; /blob answers 64 KiB; /slow?d=2s answers after d; /echo answers with
// the request body; /sse streams an event every 100ms for d; /ws is a
// WebSocket that sends a message every 100ms until the client closes it.
//
// `testapp check` GETs its own /health and exits 0 on 200: the image has no
// shell or curl, so this is what HEALTHCHECK and `health.type: cmd` run.
// `testapp migrate` is a release job: it prints what it does, appends
// $RELEASE to $MIGRATIONS (a file) when set, waits MIGRATE_DELAY and exits
// with MIGRATE_EXIT (0).
// `testapp worker` listens on nothing: it logs a tick every 200ms (and
// appends it to $TICKS, a file, when set) until SIGTERM, like a job worker.
package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/coder/websocket"
)

func main() {
	port := env("PORT", "8000")
	if len(os.Args) > 1 && os.Args[1] == "check" {
		os.Exit(check(port))
	}
	if len(os.Args) > 1 && os.Args[1] == "migrate" {
		os.Exit(migrate(env("RELEASE", "dev")))
	}
	if len(os.Args) > 1 && os.Args[1] == "worker" {
		worker(env("RELEASE", "dev"))
		return
	}
	release := env("RELEASE", "dev")
	log.SetFlags(log.Ltime | log.Lmicroseconds)
	log.Printf("testapp %s starting", release)

	if d := duration("CRASH_AFTER", -1); d >= 0 {
		go func() {
			time.Sleep(d)
			log.Printf("crashing as told (CRASH_AFTER=%s)", d)
			os.Exit(3)
		}()
	}
	time.Sleep(duration("BOOT_DELAY", 0))

	status, _ := strconv.Atoi(env("HEALTH_STATUS", "200"))
	var held *holder
	if addr := os.Getenv("HOLD"); addr != "" {
		held = hold(addr)
	}
	readyAt := time.Now().Add(duration("READY_DELAY", 0))
	mux := http.NewServeMux()
	host, _ := os.Hostname() // the container's: tells a release's replicas apart
	failing := failEvery(env("FAIL_RATE", "0"))
	latency := duration("LATENCY", 0)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Release", release)
		w.Header().Set("X-Host", host)
		if time.Now().Before(readyAt) {
			http.Error(w, "warming up", http.StatusServiceUnavailable)
			return
		}
		if latency > 0 {
			time.Sleep(latency)
		}
		if failing() {
			http.Error(w, "failing as told (FAIL_RATE)", http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, "hello from %s\n", release)
	})
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {
		if os.Getenv("HEALTH_HANG") != "" {
			<-r.Context().Done()
			return
		}
		if r.URL.Query().Get("redirect") != "" {
			http.Redirect(w, r, "/login", http.StatusFound)
			return
		}
		w.Header().Set("X-Release", release)
		if held != nil {
			if err := held.state(); err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		w.WriteHeader(status)
		fmt.Fprintf(w, "health %d from %s\n", status, release)
	})
	mux.HandleFunc("/held", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Release", release)
		if held == nil {
			http.Error(w, "no HOLD", http.StatusNotFound)
			return
		}
		if err := held.state(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "held %s\n", held.describe())
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		d, _ := time.ParseDuration(r.URL.Query().Get("d"))
		if r.URL.Query().Has("early") {
			// The headers at once, the body after d: the client knows
			// the request is in flight on this release.
			w.Header().Set("X-Release", release)
			w.WriteHeader(http.StatusOK)
			http.NewResponseController(w).Flush()
		}
		select {
		case <-time.After(d):
		case <-r.Context().Done():
			return
		}
		w.Header().Set("X-Release", release)
		fmt.Fprintf(w, "slow %s from %s\n", d, release)
	})
	blob := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	mux.HandleFunc("/blob", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Release", release)
		w.Header().Set("Content-Type", "application/octet-stream")
		_, _ = w.Write(blob)
	})
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Release", release)
		_, _ = io.Copy(w, r.Body)
	})
	mux.HandleFunc("/sse", func(w http.ResponseWriter, r *http.Request) {
		d, _ := time.ParseDuration(r.URL.Query().Get("d"))
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("X-Release", release)
		flusher, _ := w.(http.Flusher)
		end := time.After(d)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			fmt.Fprintf(w, "data: %d %s\n\n", i, release)
			if flusher != nil {
				flusher.Flush()
			}
			select {
			case <-end:
				fmt.Fprint(w, "event: end\ndata: done\n\n")
				return
			case <-r.Context().Done():
				return
			case <-tick.C:
			}
		}
	})

	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		conn, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer conn.CloseNow()
		ctx := conn.CloseRead(r.Context()) // the client only closes; its close ends ctx
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			if err := conn.Write(ctx, websocket.MessageText, []byte(fmt.Sprintf("%d %s", i, release))); err != nil {
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	})

	srv := &http.Server{Addr: ":" + port, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		sig := <-stop
		if d := duration("STOP_DELAY", 0); d > 0 {
			log.Printf("got %s; stopping in %s", sig, d)
			time.Sleep(d)
		}
		log.Printf("got %s; finishing requests in flight", sig)
		ctx, cancel := context.WithTimeout(context.Background(), duration("DRAIN_GRACE", 30*time.Second))
		defer cancel()
		_ = srv.Shutdown(ctx)
	}()
	log.Printf("listening on :%s", port)
	if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
		log.Fatal(err)
	}
	<-drained // ListenAndServe returns at once on Shutdown; wait for the requests
	log.Printf("stopped")
}

func worker(release string) {
	log.SetFlags(log.Ltime | log.Lmicroseconds)
	log.Printf("worker %s running", release)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case sig := <-stop:
			log.Printf("worker %s got %s; stopping", release, sig)
			return
		case <-tick.C:
			if f := os.Getenv("TICKS"); f != "" {
				if fh, err := os.OpenFile(f, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
					fmt.Fprintf(fh, "%s %s\n", time.Now().UTC().Format(time.RFC3339Nano), release)
					fh.Close()
				}
			}
		}
	}
}

func check(port string) int {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://127.0.0.1:" + port + "/health")
	if err != nil {
		fmt.Println(err)
		return 1
	}
	resp.Body.Close()
	fmt.Println("health", resp.Status)
	if resp.StatusCode != http.StatusOK {
		return 1
	}
	return 0
}

// failEvery says, request by request, whether this one fails, so that a
// share rate of them does, spread evenly: the nth fails when n×rate passes
// a whole number.
func failEvery(rate string) func() bool {
	r, err := strconv.ParseFloat(rate, 64)
	if err != nil || r < 0 || r > 1 {
		log.Fatalf("FAIL_RATE=%q: a share from 0 to 1, like 0.05", rate)
	}
	var mu sync.Mutex
	n := 0
	return func() bool {
		if r == 0 {
			return false
		}
		mu.Lock()
		defer mu.Unlock()
		n++
		return int(float64(n)*r) > int(float64(n-1)*r)
	}
}

func env(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func duration(key string, def time.Duration) time.Duration {
	v := os.Getenv(key)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		log.Fatalf("%s=%q: %v", key, v, err)
	}
	return d
}

// migrate is a release job that leaves a trace of each run.
func migrate(release string) int {
	fmt.Printf("migrating to %s\n", release)
	if path := os.Getenv("MIGRATIONS"); path != "" {
		f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o666)
		if err != nil {
			fmt.Fprintf(os.Stderr, "migrate: %v\n", err)
			return 1
		}
		fmt.Fprintln(f, release)
		f.Close()
	}
	time.Sleep(duration("MIGRATE_DELAY", 0))
	code, _ := strconv.Atoi(env("MIGRATE_EXIT", "0"))
	fmt.Printf("migration to %s done, exit %d\n", release, code)
	return code
}

// holder keeps one connection to an HTTP service, as a database pool keeps
// its connections: dialled once, used every 100ms, never dialled again.
type holder struct {
	mu    sync.Mutex
	local string // the connection's own address
	uses  int
	err   error // nil while it works; "not yet connected" before the first use
}

func hold(addr string) *holder {
	h := &holder{err: fmt.Errorf("not yet connected to %s", addr)}
	go func() {
		var conn net.Conn
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			var err error
			if conn, err = net.DialTimeout("tcp", addr, time.Second); err == nil {
				break
			}
			if time.Now().After(deadline) {
				h.set(fmt.Errorf("dial %s: %w", addr, err))
				return
			}
		}
		log.Printf("holding %s -> %s", conn.LocalAddr(), addr)
		rd := bufio.NewReader(conn)
		for {
			_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
			_, err := fmt.Fprintf(conn, "GET /health HTTP/1.1\r\nHost: %s\r\n\r\n", addr)
			var resp *http.Response
			if err == nil {
				resp, err = http.ReadResponse(rd, nil)
			}
			if err == nil {
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			if err != nil {
				log.Printf("held connection %s -> %s lost: %v", conn.LocalAddr(), addr, err)
				h.set(fmt.Errorf("held connection %s -> %s lost: %w", conn.LocalAddr(), addr, err))
				conn.Close()
				return
			}
			h.mu.Lock()
			h.local, h.err = conn.LocalAddr().String(), nil
			h.uses++
			h.mu.Unlock()
			time.Sleep(100 * time.Millisecond)
		}
	}()
	return h
}

func (h *holder) set(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.err = err
}

func (h *holder) state() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.err
}

func (h *holder) describe() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return fmt.Sprintf("%s %d", h.local, h.uses)
}
