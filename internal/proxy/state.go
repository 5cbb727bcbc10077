package proxy

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/handoff-dev/handoff/internal/atomicfile"
)

// stateFile is what the proxy keeps across restarts: each service's
// address and upstream. Entries are kept as raw JSON so that one bad entry
// is skipped alone instead of wiping the others.
type stateFile struct {
	Services []json.RawMessage `json:"services"`
}

// SaveState writes the services atomically.
func SaveState(path string, services []ServiceState) error {
	var f stateFile
	for _, s := range services {
		raw, err := json.Marshal(ServiceState{Name: s.Name, Listen: s.Listen, Upstream: s.Upstream})
		if err != nil {
			return err
		}
		f.Services = append(f.Services, raw)
	}
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(path, data, 0o600)
}

// Restore puts back the services of the state file. A bad entry, or one
// that cannot listen, is logged and skipped; the others are served.
// A target that does not answer a TCP connect is served all the same (the
// app may be starting) and logged.
func (p *Server) Restore(path string) error {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read state %s: %w", path, err)
	}
	var f stateFile
	if err := json.Unmarshal(data, &f); err != nil {
		return fmt.Errorf("read state %s: %w (move it aside to start empty)", path, err)
	}
	p.mu.Lock()
	p.restoring = true
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.restoring = false
		p.mu.Unlock()
	}()
	for i, raw := range f.Services {
		var s ServiceState
		if err := json.Unmarshal(raw, &s); err != nil {
			p.log.Error("state: skipping a bad entry", "index", i, "err", err)
			continue
		}
		if _, err := p.Put(s.Name, s.Listen, s.Upstream); err != nil {
			p.log.Error("state: skipping a service", "service", s.Name, "err", err)
			continue
		}
		checkUpstream(p.log, s)
	}
	return nil
}

func checkUpstream(log *slog.Logger, s ServiceState) {
	conn, err := net.DialTimeout("tcp", s.Upstream, 2*time.Second)
	if err != nil {
		log.Warn("restored service's upstream does not answer", "service", s.Name, "upstream", s.Upstream, "err", err)
		return
	}
	conn.Close()
}
