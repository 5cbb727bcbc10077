// Command hello is the example app of handoff's demo: a web page that says
// which version answers. It takes BOOT_SECONDS to start, like an app that
// loads a model or warms a cache, which is when `docker stop; docker run`
// shows users errors and handoff does not. `hello worker` is its job
// worker: no port, a line of work a second. `hello migrate` is its release
// job: what a database migration prints, run once per deploy.
package main

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

// version is set at build time: -ldflags "-X main.version=v2".
var version = "dev"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "worker" {
		worker()
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "migrate" {
		migrate()
		return
	}
	boot, _ := strconv.Atoi(os.Getenv("BOOT_SECONDS"))
	log.Printf("hello %s booting for %ds", version, boot)
	time.Sleep(time.Duration(boot) * time.Second)

	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s\n", version)
	})
	mux.HandleFunc("/up", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	srv := &http.Server{Addr: ":8000", Handler: mux, ReadHeaderTimeout: 10 * time.Second}

	done := make(chan struct{})
	go func() {
		defer close(done)
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx) // finish requests in flight
	}()
	log.Printf("hello %s listening on :8000", version)
	if err := srv.ListenAndServe(); err != http.ErrServerClosed {
		log.Fatal(err)
	}
	<-done
}

func worker() {
	log.Printf("hello worker %s started", version)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for n := 1; ; n++ {
		select {
		case <-sig:
			log.Printf("hello worker %s: stopping after job %d", version, n-1)
			return
		case <-tick.C:
			log.Printf("hello worker %s: job %d done", version, n)
		}
	}
}

// migrate stands for the app's database migration: handoff runs it in a
// one-off container of the new image before the new release starts.
func migrate() {
	fmt.Printf("hello %s: migrating the schema\n", version)
	time.Sleep(500 * time.Millisecond)
	fmt.Printf("hello %s: schema at %s, done\n", version, version)
}
