package proxy

import (
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/handoff-dev/handoff/internal/proxy/wire"
)

// ControlHandler is the control API, served on a unix socket (mode 0600).
// A change is written to the state file before it is applied; when that
// fails the call answers 500 and nothing changed. While a restart hands
// over, changes answer 503 (try again: the new process takes them).
//
//	GET    /v1/services                 every service
//	GET    /v1/services/{name}          one service, with in-flight counts
//	GET    /v1/services/{name}/stats    its endpoints' counts: answers, 5xx, connection failures, latency histogram
//	PUT    /v1/services/{name}          {"listen": "127.0.0.1:9001", "upstream": "127.0.0.1:32768"}
//	                                     or {"listen": ..., "route": [{"release": "web-7", "endpoints": ["127.0.0.1:32768"], "weight": 100}]}
//	POST   /v1/services/{name}/switch   {"from": "...", "to": "..."}
//	PUT    /v1/services/{name}/route    {"from": [backends...], "to": [backends...], "generation": 8, "expect": {"tasks.api-green:8000": ["10.240.0.5"]}, "converge": "10s"}
//	POST   /v1/services/{name}/retire   {"upstream": "..."}: end what still runs on it
//	POST   /v1/services/{name}/pause    {"max_wait": "30s", "lease": "15m"}
//	POST   /v1/services/{name}/resume
//	PUT    /v1/services/{name}/maintenance  {"page": "<html>…", "retry_after": 300, "allow": ["/healthz"]}
//	DELETE /v1/services/{name}/maintenance
//	DELETE /v1/services/{name}
func ControlHandler(p *Server) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/services", func(w http.ResponseWriter, r *http.Request) {
		reply(w, p.List(), nil)
	})
	mux.HandleFunc("GET /v1/services/{name}", func(w http.ResponseWriter, r *http.Request) {
		st, err := p.Get(r.PathValue("name"))
		reply(w, st, err)
	})
	mux.HandleFunc("GET /v1/services/{name}/stats", func(w http.ResponseWriter, r *http.Request) {
		st, err := p.Stats(r.PathValue("name"))
		reply(w, st, err)
	})
	mux.HandleFunc("PUT /v1/services/{name}", func(w http.ResponseWriter, r *http.Request) {
		var in wire.PutRequest
		if !decode(w, r, &in) {
			return
		}
		var st ServiceState
		var err error
		switch {
		case len(in.Route) > 0 && in.Upstream != "":
			err = errors.Join(ErrBadInput, errors.New("a service takes an upstream or a route, not both"))
		case len(in.Route) > 0:
			st, err = p.PutRoute(r.PathValue("name"), in.Listen, in.Route)
		default:
			st, err = p.Put(r.PathValue("name"), in.Listen, in.Upstream)
		}
		reply(w, st, err)
	})
	mux.HandleFunc("PUT /v1/services/{name}/route", func(w http.ResponseWriter, r *http.Request) {
		var in wire.RouteRequest
		if !decode(w, r, &in) {
			return
		}
		st, err := p.ChangeRoute(r.Context(), r.PathValue("name"), in)
		reply(w, st, err)
	})
	mux.HandleFunc("POST /v1/services/{name}/switch", func(w http.ResponseWriter, r *http.Request) {
		var in wire.SwitchRequest
		if !decode(w, r, &in) {
			return
		}
		if in.To == "" {
			reply(w, nil, errors.Join(ErrBadInput, errors.New("switch needs \"to\"")))
			return
		}
		st, err := p.Switch(r.PathValue("name"), in.From, in.To)
		reply(w, st, err)
	})
	mux.HandleFunc("POST /v1/services/{name}/retire", func(w http.ResponseWriter, r *http.Request) {
		var in wire.RetireRequest
		if !decode(w, r, &in) {
			return
		}
		st, err := p.Retire(r.PathValue("name"), in.Upstream)
		reply(w, st, err)
	})
	mux.HandleFunc("POST /v1/services/{name}/pause", func(w http.ResponseWriter, r *http.Request) {
		var in wire.PauseRequest
		if r.ContentLength != 0 && !decode(w, r, &in) {
			return
		}
		var wait, lease time.Duration
		for _, d := range []struct {
			text string
			to   *time.Duration
		}{{in.MaxWait, &wait}, {in.Lease, &lease}} {
			if d.text == "" {
				continue
			}
			v, err := time.ParseDuration(d.text)
			if err != nil {
				reply(w, nil, errors.Join(ErrBadInput, err))
				return
			}
			*d.to = v
		}
		st, err := p.Pause(r.PathValue("name"), wait, lease)
		reply(w, st, err)
	})
	mux.HandleFunc("POST /v1/services/{name}/resume", func(w http.ResponseWriter, r *http.Request) {
		st, err := p.Resume(r.PathValue("name"))
		reply(w, st, err)
	})
	mux.HandleFunc("PUT /v1/services/{name}/maintenance", func(w http.ResponseWriter, r *http.Request) {
		var in wire.MaintenanceState
		if !decode(w, r, &in) {
			return
		}
		st, err := p.Maintenance(r.PathValue("name"), &in)
		reply(w, st, err)
	})
	mux.HandleFunc("DELETE /v1/services/{name}/maintenance", func(w http.ResponseWriter, r *http.Request) {
		st, err := p.Maintenance(r.PathValue("name"), nil)
		reply(w, st, err)
	})
	mux.HandleFunc("DELETE /v1/services/{name}", func(w http.ResponseWriter, r *http.Request) {
		reply(w, map[string]string{"deleted": r.PathValue("name")}, p.Delete(r.PathValue("name")))
	})
	return mux
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		reply(w, nil, errors.Join(ErrBadInput, err))
		return false
	}
	return true
}

func reply(w http.ResponseWriter, v any, err error) {
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		status := http.StatusInternalServerError
		switch {
		case errors.Is(err, ErrNoService):
			status = http.StatusNotFound
		case errors.Is(err, ErrNotFrom):
			status = http.StatusConflict
		case errors.Is(err, ErrBadInput):
			status = http.StatusBadRequest
		case errors.Is(err, ErrRestarting):
			status = http.StatusServiceUnavailable
		case errors.Is(err, wire.ErrUnrestored):
			status = http.StatusUnprocessableEntity
		case errors.Is(err, wire.ErrOldGeneration):
			status = http.StatusPreconditionFailed
		case errors.Is(err, wire.ErrNotConverged):
			status = http.StatusFailedDependency
		}
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(wire.ErrorReply{Error: err.Error()})
		return
	}
	_ = json.NewEncoder(w).Encode(v)
}
