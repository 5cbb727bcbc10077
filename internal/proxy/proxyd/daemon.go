// Package proxyd is the life of the `handoff proxy` daemon: its sockets
// (the services' listeners and the control socket, inherited across a
// restart with tableflip), SIGHUP's handover to a new process, the pid
// file, the metrics listener and the state file's path. What it serves is
// the data plane, internal/proxy.
package proxyd

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/cloudflare/tableflip"

	"github.com/handoff-dev/handoff/internal/proxy"
	"github.com/handoff-dev/handoff/internal/proxy/wire"
)

// Defaults of the daemon.
const (
	DefaultStateFile       = "/var/lib/handoff/proxy.json"
	DefaultHandoverTimeout = 2 * time.Minute
)

// Options configure `handoff proxy`.
type Options struct {
	Socket          string         // control socket, mode 0600
	StateFile       string         // services, restored at start
	PIDFile         string         // for systemd's PIDFile= and ExecReload=kill -HUP
	HandoverTimeout time.Duration  // how long an old process waits for its connections after an upgrade
	Trusted         []netip.Prefix // front proxies whose X-Forwarded-* headers are kept (proxy.DefaultTrusted)
	DialRetry       time.Duration  // how long a request waits for an app refusing connections (proxy.DefaultDialRetry)
	Metrics         string         // host:port to serve Prometheus metrics on ("" : none)
	Log             *slog.Logger
}

// Run serves until ctx ends or a new process takes over. SIGHUP
// starts a new process of the same binary that inherits every listening
// socket (tableflip): nothing is refused while it starts, and this one
// then hands over its connections gently (proxy.Server.Handover).
func Run(ctx context.Context, o Options) error {
	if o.Socket == "" {
		o.Socket = wire.DefaultSocket
	}
	if o.StateFile == "" {
		o.StateFile = DefaultStateFile
	}
	if o.HandoverTimeout == 0 {
		o.HandoverTimeout = DefaultHandoverTimeout
	}
	if o.Trusted == nil {
		o.Trusted = proxy.DefaultTrusted
	}
	log := o.Log
	upg, err := tableflip.New(tableflip.Options{PIDFile: o.PIDFile})
	if err != nil {
		return fmt.Errorf("handoff proxy: %w", err)
	}
	defer upg.Stop()
	var metrics *proxy.Metrics
	if o.Metrics != "" {
		metrics = proxy.NewMetrics()
	}
	srv := proxy.NewServer(upg.Listen, log, proxy.Options{
		Save:      func(st []proxy.ServiceState) error { return proxy.SaveState(o.StateFile, st) },
		Trusted:   o.Trusted,
		DialRetry: o.DialRetry,
		Metrics:   metrics,
	})
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for range hup {
			// A SIGHUP soon after a restart would find the previous process
			// still handing over; tableflip refuses to upgrade until it has
			// exited, so wait for it rather than lose this restart.
			wctx, cancel := context.WithTimeout(ctx, o.HandoverTimeout+30*time.Second)
			err := upg.WaitForParent(wctx)
			timedOut := wctx.Err() != nil
			cancel()
			if timedOut {
				log.Error("SIGHUP ignored: the previous process has not exited", "err", err)
				continue
			}
			if err != nil {
				log.Warn("the previous process ended badly", "err", err)
			}
			log.Info("SIGHUP: starting a new process to take over")
			// The new process reads the state file as it starts: no change
			// may be made here from now on, or it would be lost.
			srv.Freeze()
			if err := upg.Upgrade(); err != nil {
				srv.Thaw()
				log.Error("upgrade failed; this process goes on serving", "err", err)
			}
		}
	}()

	if upg.HasParent() {
		metrics.HandedOver()
		// The previous process still finishes the requests it took; until
		// it exits, a drain cannot be judged from this process's counts.
		srv.SetHandoverPending(true)
		go func() {
			_ = upg.WaitForParent(ctx)
			srv.SetHandoverPending(false)
			log.Info("the previous process has exited")
		}()
	}
	if err := srv.Restore(o.StateFile); err != nil {
		return err
	}
	ctl, err := listenControl(upg, o.Socket)
	if err != nil {
		return err
	}
	control := &http.Server{Handler: proxy.ControlHandler(srv), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := control.Serve(ctl); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			log.Error("control API", "err", err)
		}
	}()
	if metrics != nil {
		// Inherited across restarts like the services' sockets, so a
		// scrape is never refused.
		ln, err := upg.Listen("tcp", o.Metrics)
		if err != nil {
			return fmt.Errorf("handoff proxy: --metrics %s: %w", o.Metrics, err)
		}
		ms := &http.Server{Handler: metrics.Handler(), ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = ms.Serve(ln) }()
		defer ms.Close()
		log.Info("metrics", "address", o.Metrics)
	}
	if err := upg.Ready(); err != nil {
		return fmt.Errorf("handoff proxy: %w", err)
	}
	served, notListening, kept := 0, 0, 0
	for _, st := range srv.List() {
		switch {
		case st.Unrestored != "":
			kept++
		case st.NotListening != nil:
			notListening++
		default:
			served++
		}
	}
	log.Info("handoff proxy ready", "socket", o.Socket, "state", o.StateFile, "services", served, "not_listening", notListening, "entries_not_restored", kept, "pid", os.Getpid())

	select {
	case <-upg.Exit():
		log.Info("a new process took over; handing over connections", "timeout", o.HandoverTimeout)
	case <-ctx.Done():
		log.Info("stopping; letting connections end", "timeout", o.HandoverTimeout)
	}
	_ = ctl.Close() // ours only, after an upgrade
	// Clients with a connection kept to this process would go on being
	// answered "restarting" by it: close the idle ones, and each answer
	// from now on ends its connection, so their next call reaches the
	// next process.
	control.SetKeepAlivesEnabled(false)
	hctx, cancel := context.WithTimeout(context.Background(), o.HandoverTimeout)
	defer cancel()
	srv.Handover(hctx)
	log.Info("handoff proxy stopped")
	return nil
}

// listenControl opens the control socket, inherited from the previous
// process when there is one, readable and writable by its owner only.
func listenControl(upg *tableflip.Upgrader, path string) (net.Listener, error) {
	if ln, err := upg.Fds.Listener("unix", path); err != nil || ln != nil {
		return ln, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := clearStaleSocket(path); err != nil {
		return nil, err
	}
	ln, err := upg.Fds.ListenWithCallback("unix", path, listenPrivate)
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	return ln, nil
}

// clearStaleSocket removes a socket left by a process that is gone. It
// refuses anything else at path: a live proxy, or a file that is not a
// socket (a typo in --socket must not delete a file).
func clearStaleSocket(path string) error {
	info, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("control socket %s: %w", path, err)
	}
	if info.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("control socket %s: something that is not a socket is there (%s); remove it yourself, or choose another --socket", path, describeMode(info.Mode()))
	}
	if conn, err := net.DialTimeout("unix", path, time.Second); err == nil {
		conn.Close()
		return fmt.Errorf("another handoff proxy answers on %s: stop it, or restart it with SIGHUP (systemctl reload handoff-proxy)", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("control socket: remove stale %s: %w", path, err)
	}
	return nil
}

// listenPrivate creates a unix socket that is mode 0600 from the moment it
// exists: a chmod after the listen would leave a moment when anyone could
// connect and switch traffic.
func listenPrivate(network, path string) (net.Listener, error) {
	old := syscall.Umask(0o177)
	ln, err := net.Listen(network, path)
	syscall.Umask(old)
	return ln, err
}

func describeMode(m fs.FileMode) string {
	switch {
	case m.IsRegular():
		return "a regular file"
	case m.IsDir():
		return "a directory"
	case m&fs.ModeSymlink != 0:
		return "a symbolic link"
	default:
		return m.Type().String()
	}
}
