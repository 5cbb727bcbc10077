package deploy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"
)

// waitHealthy polls the new container until it passes its health check
// Successes times in a row. It stops at once, with the reason, when the
// container exits or restarts, and after StartTimeout otherwise.
// It reports what it sees to report.
func (d *Deployer) waitHealthy(ctx context.Context, svc Service, c Container, report Reporter) error {
	h := svc.Health
	kind := effectiveKind(h.Kind, c)
	if kind == HealthDocker && c.CheckWindow > h.StartTimeout {
		// The image's own HEALTHCHECK allows a slow start: honour it rather
		// than refusing an app that is only doing what it said it would.
		h.StartTimeout = c.CheckWindow
		report.Note(fmt.Sprintf("waiting up to %s, as %s's HEALTHCHECK allows (start period + retries)", c.CheckWindow.Round(time.Second), c.Name))
	}
	ctx, cancel := context.WithTimeout(ctx, h.StartTimeout)
	defer cancel()
	// Docker's events say at once when the container dies or restarts;
	// the checks themselves run at the interval.
	events := d.Runtime.Watch(ctx, c.ID)

	passes, checks, last := 0, 0, "no check finished yet"
	began := d.now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		state, err := d.Runtime.Inspect(ctx, c.ID)
		if err != nil && ctx.Err() == nil {
			return fmt.Errorf("inspect %s: %w", c.Name, err)
		}
		if err == nil {
			if why := crashed(c, state); why != "" {
				return &HealthError{Container: c.Name, Reason: why}
			}
			ok, why := d.probe(ctx, kind, h, state)
			checks++
			reportCheck(report, kind, h, ok, why, passes, checks)
			switch {
			case ok:
				passes++
				if passes >= h.Successes || kind == HealthRunning {
					return nil
				}
			case ctx.Err() != nil:
				// Cut by the start timeout itself: not a verdict on the app,
				// and the last real check says more.
			default:
				passes, last = 0, why
				if kind == HealthDocker && state.Health == "unhealthy" {
					return &HealthError{Container: c.Name, Reason: "Docker HEALTHCHECK reports unhealthy: " + why}
				}
			}
		}
		timer.Reset(nextCheck(d.now().Sub(began), passes, h.Interval))
		if err := waitNext(ctx, events, timer.C, kind); err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				return &HealthError{Container: c.Name, Reason: fmt.Sprintf("not healthy after %s (health.start_timeout); last check: %s", h.StartTimeout, last)}
			}
			return err
		}
	}
}

// confirmHealthy checks c again once it was given the service's names:
// Docker gives a container aliases only as it joins a network, so it left
// and joined each network again, which may have cut what it had open
// there. Nobody is sent to it before this passes. A check that fails is
// tried twice more an interval apart (the network comes back at once, an
// app that lost its connections does not).
func (d *Deployer) confirmHealthy(ctx context.Context, svc Service, c Container) error {
	h := svc.Health
	kind := effectiveKind(h.Kind, c)
	why := ""
	for try := 0; try < 3; try++ {
		if try > 0 {
			select {
			case <-d.after(h.Interval):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		state, err := d.Runtime.Inspect(ctx, c.ID)
		if err != nil {
			return fmt.Errorf("inspect %s: %w", c.Name, err)
		}
		if reason := crashed(c, state); reason != "" {
			return &HealthError{Container: c.Name, Reason: reason + ", after it joined its networks again to be given the service's names"}
		}
		var ok bool
		if kind == HealthDocker && len(state.CheckCommand) > 0 {
			// Docker's status is the last check's, from before the
			// networks were joined again: run the check itself now.
			ok, why = d.probe(ctx, HealthCmd, HealthCheck{Command: state.CheckCommand, Timeout: h.Timeout}, state)
		} else {
			ok, why = d.probe(ctx, kind, h, state)
		}
		if ok || kind == HealthRunning {
			return nil
		}
	}
	return &HealthError{Container: c.Name, Reason: "healthy, then not after it joined its networks again to be given the service's names (Docker gives them only so): " + why}
}

// reportCheck tells the user what the health wait sees: the check's
// answer as it changes, and on a terminal which check it was.
func reportCheck(report Reporter, kind HealthKind, h HealthCheck, ok bool, why string, passes, checks int) {
	state, detail := notAnswering(why), fmt.Sprintf("check %d", checks)
	if state != why {
		detail += ": " + why[strings.Index(why, ": ")+2:] // on a terminal, its exact answer
	}
	if ok {
		state = "passing"
		if kind != HealthRunning && h.Successes > 1 {
			state = fmt.Sprintf("passing (%d of %d in a row)", passes+1, h.Successes)
		}
	}
	report.Progress(PhaseHealth, state, detail)
}

// notAnswering puts the ways an app that is not listening yet fails a
// check (refused, reset, EOF, through Docker's port proxy in turn) into
// one state, so that a line per change is not a line per check.
func notAnswering(why string) string {
	i := strings.Index(why, ": ") + 2 // after what was checked: "GET /health: "
	if i < 2 {
		return why
	}
	for _, s := range []string{"connection refused", "connection reset", "EOF", "broken pipe", "server closed idle connection"} {
		if strings.Contains(why[i:], s) {
			return why[:i] + "no answer yet"
		}
	}
	return why
}

// Health checks come fast while an app is most likely to become ready,
// and slow down as it takes longer: every firstChecks at first, then a
// checkShare of the time waited so far, up to the health interval. So the
// first pass comes a few percent of the boot after the app is ready, and
// an app that boots for minutes is not polled harder than its interval.
// Once it passes, the next checks are an interval apart: the passes in a
// row must span (successes-1) intervals, the only window in which a crash
// loop shows before users are sent to it (Docker's events report a death
// in it at once). Confirming faster switched, in the fault matrix, to an
// app that died 100 ms after it started.
const (
	firstChecks = 25 * time.Millisecond
	checkShare  = 100 // a 3 s boot: checks every 30 ms by then; 100 s: every second
)

// nextCheck is how long to wait before the next check, waited since the
// first, with passes in a row so far.
func nextCheck(waited time.Duration, passes int, interval time.Duration) time.Duration {
	if passes > 0 {
		return interval
	}
	return min(max(firstChecks, waited/checkShare), interval)
}

// waitNext waits for the next check: the interval's tick, or at once when
// Docker reports a change worth a look.
func waitNext(ctx context.Context, events <-chan string, tick <-chan time.Time, kind HealthKind) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ev, ok := <-events:
			if !ok {
				events = nil // the stream ended: the interval's checks go on
			} else if stateChange(ev, kind) {
				return nil
			}
		case <-tick:
			return nil
		}
	}
}

// stateChange says whether a Docker event is worth a look before the next
// interval: the container may have stopped, or (for a Docker health check)
// Docker has a verdict.
func stateChange(action string, kind HealthKind) bool {
	switch action {
	case "die", "oom", "kill", "restart", "stop":
		return true
	}
	return kind == HealthDocker && strings.HasPrefix(action, "health_status")
}

// effectiveKind resolves HealthAuto: the container's own HEALTHCHECK when
// it has one, else an HTTP GET, or for a service with no port (a worker)
// running a while without a restart.
func effectiveKind(k HealthKind, c Container) HealthKind {
	switch {
	case k != HealthAuto:
		return k
	case c.HasCheck:
		return HealthDocker
	case c.Port == 0:
		return HealthRunning
	}
	return HealthHTTP
}

// crashed says why a container that should be starting is not, or "".
func crashed(started, now Container) string {
	switch {
	case now.OOMKilled:
		return "killed for running out of memory (OOM) while starting"
	case now.Restarting || now.RestartCount > started.RestartCount:
		if now.ExitCode == 0 {
			return "restarted while starting (its restart policy brought it back; see its logs)" // Docker clears the code once it runs again
		}
		return fmt.Sprintf("restarted while starting (exit code %d)", now.ExitCode)
	case !now.Running:
		return fmt.Sprintf("exited with code %d while starting", now.ExitCode)
	}
	return ""
}

// probe runs one health check and says why it failed.
func (d *Deployer) probe(ctx context.Context, kind HealthKind, h HealthCheck, c Container) (bool, string) {
	ctx, cancel := context.WithTimeout(ctx, h.Timeout)
	defer cancel()
	switch kind {
	case HealthDocker:
		if c.Health == "healthy" {
			return true, ""
		}
		why := "Docker HEALTHCHECK status " + orNone(c.Health)
		if c.HealthOutput != "" {
			why += ": " + firstLine(c.HealthOutput)
		}
		return false, why
	case HealthRunning:
		if up := d.now().Sub(c.StartedAt); up < h.Settle {
			return false, fmt.Sprintf("running for %s of %s without a restart", up.Round(100*time.Millisecond), h.Settle)
		}
		return true, ""
	case HealthCmd:
		ex, ok := d.Runtime.(Execer)
		if !ok {
			return false, "this engine cannot run a command in a container: use health type http or tcp"
		}
		code, out, err := ex.Exec(ctx, c.ID, h.Command)
		if err != nil {
			return false, fmt.Sprintf("%s: %v", strings.Join(h.Command, " "), err)
		}
		if code != 0 {
			return false, fmt.Sprintf("%s exited %d: %s", strings.Join(h.Command, " "), code, firstLine(out))
		}
		return true, ""
	case HealthTCP, HealthHTTP:
		if p, ok := d.Runtime.(Prober); ok {
			return p.Probe(ctx, kind, h, c)
		}
	}
	return probeFromHost(ctx, kind, h, c)
}

// probeFromHost runs an HTTP or TCP check from this host, at the
// container's published port.
func probeFromHost(ctx context.Context, kind HealthKind, h HealthCheck, c Container) (bool, string) {
	switch kind {
	case HealthTCP:
		addr := c.probeAddr()
		if addr == "" {
			return false, "port not published yet"
		}
		conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		if err != nil {
			return false, "TCP connect " + addr + ": " + err.Error()
		}
		conn.Close()
		return true, ""
	default:
		return probeHTTP(ctx, h, c.probeAddr())
	}
}

// healthClient follows no redirect (a redirect is an answer, not health)
// and keeps no connection, so every check is a fresh one, like a new user's.
var healthClient = &http.Client{
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	Transport:     &http.Transport{DisableKeepAlives: true, Proxy: nil},
}

func probeHTTP(ctx context.Context, h HealthCheck, upstream string) (bool, string) {
	if upstream == "" {
		return false, "port not published yet"
	}
	url := "http://" + upstream + h.Path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false, err.Error()
	}
	if h.Host != "" {
		req.Host = h.Host
	}
	req.Header.Set("User-Agent", "handoff-health")
	resp, err := healthClient.Do(req)
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil {
		return false, fmt.Sprintf("GET %s: no answer within %s (health.timeout)", h.Path, h.Timeout)
	}
	if err != nil {
		return false, "GET " + h.Path + ": " + trimURLError(err)
	}
	resp.Body.Close()
	if resp.StatusCode < h.StatusMin || resp.StatusCode > h.StatusMax {
		why := fmt.Sprintf("GET %s answered %d, want %d-%d", h.Path, resp.StatusCode, h.StatusMin, h.StatusMax)
		if loc := resp.Header.Get("Location"); loc != "" {
			why += " (a redirect to " + loc + "; redirects are not followed: point health.path at a page that answers 2xx)"
		}
		return false, why
	}
	return true, ""
}

// probeAddr is where a check from the host reaches c.
func (c Container) probeAddr() string {
	if c.Probe != "" {
		return c.Probe
	}
	return c.Upstream
}

func (d *Deployer) healthDetail(svc Service, c Container) string {
	h := svc.Health
	switch effectiveKind(h.Kind, c) {
	case HealthDocker:
		return "Docker HEALTHCHECK"
	case HealthCmd:
		return "exec " + strings.Join(h.Command, " ")
	case HealthTCP:
		return "TCP " + c.probeAddr()
	case HealthRunning:
		return fmt.Sprintf("running %s without a restart", h.Settle)
	default:
		detail := "GET http://" + c.probeAddr() + h.Path
		if h.Host != "" {
			detail += " (Host: " + h.Host + ")"
		}
		return detail
	}
}

func trimURLError(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 && strings.Contains(s, "Get \"") {
		return s[i+2:]
	}
	return s
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
