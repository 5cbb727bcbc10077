package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/handoff-dev/handoff/internal/atomicfile"
	"github.com/handoff-dev/handoff/internal/proxy/wire"
)

// The state file is what the proxy keeps across restarts: each service's
// address, route (its upstream when that is one endpoint), pause and
// maintenance page. Nothing in it is ever
// dropped because this process cannot use it: an entry it cannot read is
// written back as it was, a service it cannot listen for is kept and its
// address tried again, and a file it cannot read whole is copied aside
// before anything is written over it.
type stateFile struct {
	Services []json.RawMessage `json:"services"`
}

// savedService is one entry of the state file.
type savedService struct {
	Name        string                 `json:"name"`
	Listen      string                 `json:"listen"`
	Upstream    string                 `json:"upstream"`
	Route       []wire.Backend         `json:"route,omitempty"`
	Paused      bool                   `json:"paused,omitempty"`
	MaxWait     wire.Duration          `json:"pause_max_wait,omitempty"`
	PausedSince time.Time              `json:"paused_since,omitzero"`
	PauseUntil  time.Time              `json:"pause_until,omitzero"`
	Maintenance *wire.MaintenanceState `json:"maintenance,omitempty"`
	Generation  uint64                 `json:"generation,omitempty"`
}

// unreadableEntry stands in the state file for the part of a damaged file
// that could not be read; its copy holds the file as it was found.
type unreadableEntry struct {
	Unreadable string `json:"unreadable"`
	Copy       string `json:"copy"`
}

// SaveState writes the services atomically: what each listens on, where
// it sends, whether it is paused or in maintenance. An entry kept from the
// file because it could not be restored is written as it was read.
func SaveState(path string, services []ServiceState) error {
	f := stateFile{Services: []json.RawMessage{}}
	for _, s := range services {
		if s.raw != nil {
			f.Services = append(f.Services, s.raw)
			continue
		}
		raw, err := json.Marshal(savedService{Name: s.Name, Listen: s.Listen, Upstream: s.Upstream, Route: savedRoute(s.Route), Paused: s.Paused, MaxWait: s.MaxWait,
			PausedSince: s.PausedSince, PauseUntil: s.PauseUntil, Maintenance: s.Maintenance, Generation: s.Generation})
		if err != nil {
			return err
		}
		f.Services = append(f.Services, raw)
	}
	// Not HTML-escaped: an entry kept as it was is written as it was
	// (json.Marshal would turn its "&" into "\u0026"), and a maintenance
	// page stays readable.
	var data bytes.Buffer
	enc := json.NewEncoder(&data)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(f); err != nil {
		return err
	}
	return atomicfile.Write(path, data.Bytes(), 0o600)
}

// savedRoute is the route an entry of the state file carries: none for
// the one endpoint of weight 100 that Put and Switch make (its upstream
// says it all, as the files of versions before routes did), so that those
// files stay as they were and a downgrade reads them. Any other route is
// written whole, beside its upstream when it has one endpoint of weight >
// 0 (a version before routes serves that endpoint alone).
func savedRoute(route []wire.BackendState) []wire.Backend {
	spec := wire.Spec(route)
	// One endpoint of weight 100 is what Put and Switch make, saved as the
	// upstream alone, as before routes, whatever its release is named (a
	// name the route API gave it is lost at a restart: routes compare
	// without names).
	if up := singleUpstream(spec); up != "" && len(spec) == 1 && len(spec[0].Endpoints) == 1 && spec[0].Weight == 100 {
		return nil
	}
	return spec
}

// Restore puts back the services of the state file, paused ones paused.
// A service whose address cannot be listened on yet (the port still held,
// a LAN address not up) is kept and its listen tried again until it works;
// an entry that cannot be used is kept as it was, shown in the list, and
// written back on every save. A file that cannot be read whole is copied
// aside first, what can be read of it is restored, and the file is written
// again with an entry that says where the copy is. A target that does not
// answer a TCP connect is served all the same (the app may be starting).
//
// Restore is one change: a pause's lease that ends meanwhile, or a listen
// tried again, waits for it, so none saves the state file while only some
// of its services are back (the others would be lost from the file). It
// takes the change lock itself, not begin: a restart asked for meanwhile
// waits for it too, and a process frozen before it serves what it restores.
func (p *Server) Restore(path string) error {
	p.change.Lock()
	defer p.change.Unlock()
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read state %s: %w", path, err)
	}
	entries, damage := readStateFile(data)
	if damage != nil {
		copyPath := path + ".damaged-" + p.clock.Now().UTC().Format("20060102T150405.000Z")
		if err := atomicfile.Write(copyPath, data, 0o600); err != nil {
			return fmt.Errorf("read state %s: %v, and keep a copy of it: %w (the file was left as it is; free some space or fix it by hand, then start again)", path, damage, err)
		}
		p.log.Error(fmt.Sprintf("state: the state file %s could not be read whole (%v): what could not be read of it is not served; the file as it was found is kept at %s: "+
			"put what is missing back from the copy (mend it, move it in place of the state file, restart handoff proxy); the state file now holds an entry that says so until it is removed", path, damage, copyPath))
		raw, _ := json.Marshal(unreadableEntry{Unreadable: damage.Error(), Copy: copyPath})
		entries = append(entries, raw)
	}
	for i, raw := range entries {
		p.restoreEntry(i, raw)
	}
	if damage != nil && p.opts.Save != nil {
		// Written again now, readable, so that a restart before the next
		// change does not find the damage again.
		if err := p.opts.Save(p.List()); err != nil {
			p.log.Error("state: could not write the state file again after its damage", "err", err)
		}
	}
	return nil
}

// readStateFile returns the entries of a state file, and when it cannot
// be read whole, what is wrong with it (the entries before the damage are
// returned all the same).
func readStateFile(data []byte) ([]json.RawMessage, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil || top == nil {
		return salvage(data)
	}
	var services json.RawMessage
	var unknown []string
	for _, k := range slices.Sorted(maps.Keys(top)) {
		if strings.EqualFold(k, "services") && services == nil {
			services = top[k]
			continue
		}
		unknown = append(unknown, strconv.Quote(k))
	}
	var entries []json.RawMessage
	if err := json.Unmarshal(services, &entries); services != nil && err != nil {
		return nil, fmt.Errorf("\"services\" is not a list: %w", err)
	}
	if len(unknown) > 0 {
		return entries, fmt.Errorf("it holds more than services: %s", strings.Join(unknown, ", "))
	}
	return entries, nil
}

// salvage reads the entries of a damaged state file up to its damage.
func salvage(data []byte) ([]json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	var entries []json.RawMessage
	damaged := func(err error) ([]json.RawMessage, error) {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return entries, fmt.Errorf("at byte %d: %v", dec.InputOffset(), err)
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return damaged(cmpErr(err, "the file is not a JSON object"))
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return damaged(err)
		}
		if key, _ := tok.(string); !strings.EqualFold(key, "services") {
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return damaged(err)
			}
			continue
		}
		if tok, err := dec.Token(); err != nil || tok != json.Delim('[') {
			return damaged(cmpErr(err, "\"services\" is not a list"))
		}
		for dec.More() {
			var raw json.RawMessage
			if err := dec.Decode(&raw); err != nil {
				return damaged(err)
			}
			entries = append(entries, raw)
		}
		if _, err := dec.Token(); err != nil {
			return damaged(err)
		}
	}
	if _, err := dec.Token(); err != nil {
		return damaged(err)
	}
	return damaged(errors.New("more follows the file's object"))
}

func cmpErr(err error, otherwise string) error {
	if err != nil {
		return err
	}
	return errors.New(otherwise)
}

// restoreEntry serves entry i of the state file, or keeps it as it was.
func (p *Server) restoreEntry(i int, raw json.RawMessage) {
	st, why := readEntry(raw)
	if why == "" {
		if _, err := p.get(st.Name); err == nil {
			why = "a second entry for " + st.Name + " (the first is served)"
		}
	}
	if why != "" {
		p.keep(ServiceState{ServiceState: wire.ServiceState{Name: st.Name, Listen: st.Listen, Upstream: st.Upstream, Unrestored: why}, raw: slices.Clone(raw)})
		p.log.Error("state: an entry could not be restored; it is kept in the state file as it was", "index", i, "service", st.Name, "why", why)
		return
	}
	spec := st.Route
	if len(spec) == 0 {
		spec = oneEndpoint(st.Upstream)
	}
	s := p.newService(st.Name, st.Listen, spec)
	s.generation.Store(st.Generation)
	if st.Paused {
		p.restorePause(s, st)
	}
	if st.Maintenance != nil {
		s.maint.Store(st.Maintenance)
		p.log.Warn("state: restored in maintenance, as it was; `handoff maintenance off` ends it", "service", st.Name)
	}
	ln, err := p.listen("tcp", st.Listen)
	if err != nil {
		p.add(s)
		p.listenFailed(s, err)
		return
	}
	s.ln = ln
	p.serve(s)
	for _, b := range spec {
		for _, e := range b.Endpoints {
			if !isNamed(e) { // a name is looked up and dialed by its target
				go p.probe(p.log, st.Name, e)
			}
		}
	}
}

// readEntry reads one entry, or says why it cannot be used.
func readEntry(raw json.RawMessage) (savedService, string) {
	var st savedService
	var u unreadableEntry
	if json.Unmarshal(raw, &u) == nil && u.Unreadable != "" {
		return st, unreadableWhy(u)
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		var named struct{ Name string }
		_ = json.Unmarshal(raw, &named)
		return savedService{Name: named.Name}, "not an entry this handoff can read: " + err.Error()
	}
	switch {
	case st.Name == "":
		return st, "it has no name"
	case st.Listen == "" || (st.Upstream == "" && len(st.Route) == 0):
		return st, "it needs both a listen address and an upstream (or a route)"
	case !isHostPort(st.Listen):
		return st, fmt.Sprintf("listen %q is not host:port", st.Listen)
	case len(st.Route) == 0 && !isHostPort(st.Upstream):
		return st, fmt.Sprintf("upstream %q is not host:port", st.Upstream)
	case strings.ContainsAny(st.Name, "/?#") || st.Name != strings.TrimSpace(st.Name):
		return st, fmt.Sprintf("name %q cannot be a service's", st.Name)
	case len(st.Route) > 0:
		if err := checkRoute(st.Route); err != nil {
			return st, err.Error()
		}
	}
	return st, ""
}

func unreadableWhy(u unreadableEntry) string {
	return fmt.Sprintf("the state file could not be read whole at a start (%s): what could not be read of it is not served; the file as it was is kept at %s: put what is missing back from it, then remove this entry from the state file", u.Unreadable, u.Copy)
}

func isHostPort(s string) bool {
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return false
	}
	_, err = strconv.ParseUint(port, 10, 16)
	return err == nil
}

// keep adds an entry that could not be restored: listed, and saved as it was.
func (p *Server) keep(st ServiceState) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.kept = append(p.kept, st)
}

// keptEntry is the kept entry named name, if there is one.
func (p *Server) keptEntry(name string) (ServiceState, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, st := range p.kept {
		if st.Name == name {
			return st, true
		}
	}
	return ServiceState{}, false
}

// checkUpstream logs a restored service whose upstream does not answer.
func checkUpstream(log *slog.Logger, name, upstream string) {
	conn, err := net.DialTimeout("tcp", upstream, 2*time.Second)
	if err != nil {
		log.Warn("restored service's upstream does not answer", "service", name, "upstream", upstream, "err", err)
		return
	}
	conn.Close()
}
