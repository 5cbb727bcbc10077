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

// SaveState writes the services atomically: what each listens on, where
// it sends, and whether it is paused.
func SaveState(path string, services []ServiceState) error {
	f := stateFile{Services: []json.RawMessage{}}
	for _, s := range services {
		raw, err := json.Marshal(ServiceState{Name: s.Name, Listen: s.Listen, Upstream: s.Upstream, Paused: s.Paused, MaxWait: s.MaxWait, Maintenance: s.Maintenance})
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

// Restore puts back the services of the state file, paused ones paused.
// A bad entry, or one that cannot listen, is logged and skipped; the
// others are served. A target that does not answer a TCP connect is served
// all the same (the app may be starting) and logged.
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
	for i, raw := range f.Services {
		var st ServiceState
		if err := json.Unmarshal(raw, &st); err != nil || st.Name == "" || st.Listen == "" || st.Upstream == "" {
			p.log.Error("state: skipping a bad entry", "index", i, "err", err)
			continue
		}
		if _, err := p.get(st.Name); err == nil {
			p.log.Error("state: skipping a second entry", "service", st.Name)
			continue
		}
		s, err := p.open(st.Name, st.Listen, st.Upstream)
		if err != nil {
			p.log.Error("state: skipping a service", "service", st.Name, "err", err)
			continue
		}
		if st.Paused {
			wait := min(time.Duration(st.MaxWait), MaxPauseWait)
			if wait <= 0 {
				wait = DefaultPauseWait
			}
			s.gate.pause(wait)
			p.log.Warn("state: restored paused, as it was; `handoff proxy resume` releases it", "service", st.Name, "max_wait", wait)
		}
		if st.Maintenance != nil {
			s.maint.Store(st.Maintenance)
			p.log.Warn("state: restored in maintenance, as it was; `handoff maintenance off` ends it", "service", st.Name)
		}
		p.serve(s)
		checkUpstream(p.log, st)
	}
	return nil
}

// Duration is a time.Duration written as text ("30s") in JSON.
type Duration time.Duration

// MarshalJSON writes "30s".
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads "30s".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
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
