package proxy

import (
	"fmt"
	"time"

	"github.com/handoff-dev/handoff/internal/proxy/wire"
)

// Pause holds the service's new requests until Resume, each for at most
// wait (default wire.DefaultPauseWait, at most wire.MaxPauseWait), and the whole
// pause for at most lease (default wire.DefaultPauseLease, at most
// wire.MaxPauseLease): then the proxy lets them go on by itself and says so in
// its log. A pause and its lease are saved: they hold across a restart of
// the proxy, and a pause whose lease ended meanwhile is not restored.
// Pausing a paused service sets a new wait and lease.
func (p *Server) Pause(name string, wait, lease time.Duration) (ServiceState, error) {
	if wait <= 0 {
		wait = wire.DefaultPauseWait
	}
	if wait > wire.MaxPauseWait {
		return ServiceState{}, fmt.Errorf("%w: max_wait %s: a request may be held at most %s", ErrBadInput, wait, wire.MaxPauseWait)
	}
	if lease <= 0 {
		lease = wire.DefaultPauseLease
	}
	if lease > wire.MaxPauseLease {
		return ServiceState{}, fmt.Errorf("%w: lease %s: a pause may hold at most %s", ErrBadInput, lease, wire.MaxPauseLease)
	}
	now := p.clock.Now()
	until := now.Add(lease)
	// A pause made again keeps its beginning (how long requests were held).
	since := func(paused bool, was time.Time) time.Time {
		if paused && !was.IsZero() {
			return was
		}
		return now
	}
	return p.update(name, func(st *ServiceState) {
		st.Paused, st.MaxWait, st.PausedSince, st.PauseUntil = true, wire.Duration(wait), since(st.Paused, st.PausedSince), until
	}, func(s *service) {
		ps := s.gate.state()
		p.hold(s, wait, since(ps.paused, ps.since), until)
		p.log.Info("pause", "service", name, "paused", true, "max_wait", wait, "lease_until", until)
	})
}

// Resume releases the held requests.
func (p *Server) Resume(name string) (ServiceState, error) {
	return p.update(name, clearPause, func(s *service) {
		s.gate.resume()
		p.log.Info("pause", "service", name, "paused", false)
	})
}

func clearPause(st *ServiceState) {
	st.Paused, st.MaxWait, st.PausedSince, st.PauseUntil = false, 0, time.Time{}, time.Time{}
}

// hold pauses s until until, when the lease lets its requests go on.
func (p *Server) hold(s *service, wait time.Duration, since, until time.Time) {
	s.gate.pause(p.clock, wait, since, until, func(id uint64) { p.leaseEnded(s, id) })
}

// leaseEnded lets the requests of pause id of s go on, if it still holds:
// saved first like any change, so that a restart does not hold them again.
// When that cannot be saved (a restart under way, a full disk) they go on
// all the same: the lease in the file has ended too, and a pause whose
// lease has ended is not restored.
func (p *Server) leaseEnded(s *service, id uint64) {
	unlock, err := p.begin()
	if err == nil {
		defer unlock()
	}
	ps, ok := s.gate.pauseOf(id)
	if !ok {
		return // resumed, paused again or deleted meanwhile
	}
	if err == nil {
		_ = p.save(func(list []ServiceState) []ServiceState {
			for i := range list {
				if list[i].Name == s.name && list[i].raw == nil {
					clearPause(&list[i])
				}
			}
			return list
		})
	}
	s.gate.resume()
	p.log.Warn("pause lease ended: the held requests go on", "service", s.name, "held_for", p.clock.Now().Sub(ps.since).Round(time.Millisecond),
		"lease_until", ps.until, "why", "no resume came before the pause's lease ended (whoever paused it, a deploy or a person, may be gone)")
}

// restorePause holds s's requests as the state file says, unless the
// pause's lease has ended meanwhile. A pause saved without a lease (by an
// earlier handoff) gets wire.DefaultPauseLease from now.
func (p *Server) restorePause(s *service, st savedService) {
	now := p.clock.Now()
	until, since := st.PauseUntil, st.PausedSince
	if since.IsZero() {
		since = now
	}
	if until.IsZero() {
		until = now.Add(wire.DefaultPauseLease)
		p.log.Warn("state: a pause saved without a lease gets one", "service", st.Name, "lease_until", until)
	}
	if !now.Before(until) {
		p.log.Warn("state: not paused: the pause's lease ended while the proxy was not running", "service", st.Name,
			"paused_since", st.PausedSince, "lease_until", until)
		return
	}
	wait := min(time.Duration(st.MaxWait), wire.MaxPauseWait)
	if wait <= 0 {
		wait = wire.DefaultPauseWait
	}
	p.hold(s, wait, since, until)
	p.log.Warn("state: restored paused, as it was; `handoff proxy resume` releases it", "service", st.Name, "max_wait", wait, "lease_until", until)
}
