package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/cloudflare/tableflip"
)

// Defaults of the daemon.
const (
	DefaultStateFile       = "/var/lib/handoff/proxy.json"
	DefaultHandoverTimeout = 2 * time.Minute
)

// DaemonOptions configure `handoff proxy`.
type DaemonOptions struct {
	Socket          string        // control socket, mode 0600
	StateFile       string        // services, restored at start
	PIDFile         string        // for systemd's PIDFile= and ExecReload=kill -HUP
	HandoverTimeout time.Duration // how long an old process waits for its connections after an upgrade
	Log             *slog.Logger
}

// RunDaemon serves until ctx ends or a new process takes over. SIGHUP
// starts a new process of the same binary that inherits every listening
// socket (tableflip): nothing is refused while it starts, and this one
// then hands over its connections gently (Handover).
func RunDaemon(ctx context.Context, o DaemonOptions) error {
	if o.Socket == "" {
		o.Socket = DefaultSocket
	}
	if o.StateFile == "" {
		o.StateFile = DefaultStateFile
	}
	if o.HandoverTimeout == 0 {
		o.HandoverTimeout = DefaultHandoverTimeout
	}
	log := o.Log
	upg, err := tableflip.New(tableflip.Options{PIDFile: o.PIDFile})
	if err != nil {
		return fmt.Errorf("handoff proxy: %w", err)
	}
	defer upg.Stop()
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
			if err := upg.Upgrade(); err != nil {
				log.Error("upgrade failed; this process goes on serving", "err", err)
			}
		}
	}()

	srv := NewServer(upg.Listen, log, func(st []ServiceState) {
		if err := SaveState(o.StateFile, st); err != nil {
			log.Error("save state", "file", o.StateFile, "err", err)
		}
	})
	if err := srv.Restore(o.StateFile); err != nil {
		return err
	}
	ctl, err := listenControl(upg, o.Socket)
	if err != nil {
		return err
	}
	control := &http.Server{Handler: ControlHandler(srv), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := control.Serve(ctl); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			log.Error("control API", "err", err)
		}
	}()
	if err := upg.Ready(); err != nil {
		return fmt.Errorf("handoff proxy: %w", err)
	}
	log.Info("handoff proxy ready", "socket", o.Socket, "state", o.StateFile, "services", len(srv.List()), "pid", os.Getpid())

	select {
	case <-upg.Exit():
		log.Info("a new process took over; handing over connections", "timeout", o.HandoverTimeout)
	case <-ctx.Done():
		log.Info("stopping; letting connections end", "timeout", o.HandoverTimeout)
	}
	_ = ctl.Close() // ours only, after an upgrade
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
	if conn, err := net.DialTimeout("unix", path, time.Second); err == nil {
		conn.Close()
		return nil, fmt.Errorf("another handoff proxy answers on %s: stop it, or restart it with SIGHUP (systemctl reload handoff-proxy)", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("control socket: remove stale %s: %w", path, err)
	}
	ln, err := upg.Fds.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	return ln, nil
}
