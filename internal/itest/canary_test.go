package itest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/deploy"
	"github.com/handoff-dev/handoff/internal/proxy/proxyclient"
)

// canaryConfig is handoff.yml's canary part: steps, thresholds a test's
// load can decide within seconds.
func canaryConfig(steps ...string) string {
	return fmt.Sprintf("strategy: canary\ncanary:\n  steps: [%s]\nanalysis:\n  min_requests: 100\n", `"`+strings.Join(steps, `", "`)+`"`)
}

// canaryLoad is the usual load, from many browsers (cookies) so that the
// canary's share of it is its weight's.
func canaryLoad(t testing.TB, s *Scenario) *Load {
	load := StartLoad(t, s.Caddy.URL, SiteHost, LoadOptions{Workers: 4, Posts: 2, Clients: 1000})
	WaitFor(t, 10*time.Second, "load to flow", func() bool { return load.Snapshot().OK > 100 })
	return load
}

// deployJSON runs a deploy with --json and reads its record.
func (s *Scenario) deployJSON(c Config) (Result, deploy.Record) {
	s.T.Helper()
	s.WriteConfig(c)
	r := s.Run("deploy", "--json")
	var rec deploy.Record
	require.NoError(s.T, json.Unmarshal([]byte(r.Stdout), &rec), "%s", r)
	return r, rec
}

// A good release goes through every step under load, judged a pass at each,
// and is promoted: not one request fails.
func TestACanaryOfAGoodReleaseIsPromotedWithoutAFailure(t *testing.T) {
	s := NewScenario(t, ScenarioOptions{HandoffProxy: true})
	s.Deploy(Config{Release: "v1", NoCaddyfile: true})
	load := canaryLoad(t, s)
	// The same app twice: its p99 against the old one's is the machine's noise here (a
	// fresh container on two cores other test packages share: 32 ms against 19 ms once in
	// CI, past 1.5x and the 10 ms floor), so this test, about failures and the
	// promotion, allows 4x; TestACanaryTwiceAsSlowIsAborted judges latency.
	r, rec := s.deployJSON(Config{Release: "v2", NoCaddyfile: true, Extra: canaryConfig("20% 4s", "50% 4s") + "  max_p99: 4x\n"})
	got := load.Stop()
	t.Logf("canary under load: %s", got)
	require.Equal(t, 0, r.Code, "%s", r)
	require.Zero(t, got.Failures()+got.ReloadCuts(), "%s", got)
	require.Equal(t, "v2", s.Serving())
	require.Len(t, rec.Analysis, 2)
	for _, a := range rec.Analysis {
		require.Equal(t, deploy.VerdictPass, a.Verdict, a.Reason)
		require.GreaterOrEqual(t, a.Release.Requests, 100)
	}
	require.True(t, rec.Canary.Promoted)
	share := float64(rec.Analysis[0].Release.Requests) / float64(rec.Analysis[0].Release.Requests+rec.Analysis[0].Baseline.Requests)
	require.InDelta(t, 0.20, share, 0.07, "the first step's share of requests")
	require.Contains(t, r.Stderr, "canary step 1 of 2 (20% 4s): pass")
}

// A release that fails 5% of its requests is aborted in its first step,
// as soon as the numbers say so: every request back on the old release,
// the canary removed, exit 9 with the numbers, and only the canary's
// share of the users hurt meanwhile.
func TestACanaryFailingFivePercentIsAbortedInItsFirstStep(t *testing.T) {
	s := NewScenario(t, ScenarioOptions{HandoffProxy: true})
	s.Deploy(Config{Release: "v1", NoCaddyfile: true})
	load := canaryLoad(t, s)
	before := load.Snapshot()
	start := time.Now()
	r, rec := s.deployJSON(Config{Release: "v2", NoCaddyfile: true, Env: map[string]string{"FAIL_RATE": "0.05"}, Extra: canaryConfig("10% 30s", "50% 30s")})
	took := time.Since(start)
	time.Sleep(500 * time.Millisecond)
	got := load.Stop()
	t.Logf("a failing canary under load, aborted after %s: %s", took.Round(time.Millisecond), got)
	require.Equal(t, 9, r.Code, "%s", r)
	require.Contains(t, r.Stderr, "rolled back by analysis: canary step 1 (10% 30s) of "+s.Service+"-2: fail: error rate")
	require.Contains(t, r.Stderr, "every request is back on "+s.Service+"-1 (never stopped); "+s.Service+"-2 removed")
	require.Less(t, took, 30*time.Second, "aborted before the step's time was up")
	require.Equal(t, "v1", s.Serving())
	require.False(t, Containers(t, s.API, s.Service)[s.Service+"-2"], "the canary is removed")
	require.Equal(t, deploy.VerdictFail, rec.Analysis[0].Verdict)
	require.True(t, rec.Canary.Aborted)

	during := got.Requests() - before.Requests()
	hurt := got.Failed5xx["v2"]
	t.Logf("users hurt: %d of %d requests during the deploy (%.2f%%)", hurt, during, 100*float64(hurt)/float64(during))
	require.Positive(t, hurt, "the canary got its share")
	require.Equal(t, hurt, got.Failures(), "every failure is the bad release's own 500: none from the abort")
	require.Zero(t, got.ReloadCuts())
	require.Less(t, float64(hurt), 0.10*0.05*float64(during)*1.5+5, "at most the step's share of 5%")
}

// A release twice as slow is aborted by its p99.
func TestACanaryTwiceAsSlowIsAborted(t *testing.T) {
	s := NewScenario(t, ScenarioOptions{HandoffProxy: true})
	s.Deploy(Config{Release: "v1", NoCaddyfile: true, Env: map[string]string{"LATENCY": "20ms"}})
	load := canaryLoad(t, s)
	r, rec := s.deployJSON(Config{Release: "v2", NoCaddyfile: true, Env: map[string]string{"LATENCY": "45ms"}, Extra: canaryConfig("30% 30s")})
	got := load.Stop()
	require.Equal(t, 9, r.Code, "%s", r)
	require.Contains(t, r.Stderr, "against", "%s", r)
	require.Contains(t, rec.Analysis[0].Reason, "for the baseline: more than 1.5x")
	require.Zero(t, got.Failures()+got.ReloadCuts(), "%s", got)
	require.Equal(t, "v1", s.Serving())
}

// Without traffic a step cannot be judged: it waits past its time, says
// so, and then aborts; it never passes on no data.
func TestACanaryStepWithTooFewRequestsWaitsAndSaysSo(t *testing.T) {
	s := NewScenario(t, ScenarioOptions{HandoffProxy: true})
	s.Deploy(Config{Release: "v1", NoCaddyfile: true})
	r, rec := s.deployJSON(Config{Release: "v2", NoCaddyfile: true, Extra: canaryConfig("10% 2s") + "  max_wait: 2s\n"})
	require.Equal(t, 9, r.Code, "%s", r)
	require.Contains(t, r.Stderr, "of the 100 requests needed to judge the release have been answered after 2s; waiting up to 2s more")
	require.Contains(t, r.Stderr, "could not be judged")
	require.Equal(t, deploy.VerdictWait, rec.Analysis[0].Verdict)
	require.Equal(t, "v1", s.Serving())
}

// A client stays on one version through a step: a browser by its cookie,
// a client without cookies by its address (X-Forwarded-For from a trusted
// front); `handoff canary status` shows the step, and `promote` ends it.
func TestACanaryKeepsEachClientOnOneVersion(t *testing.T) {
	s, cmd, out := canaryUnderWay(t)
	c := &http.Client{Timeout: 10 * time.Second}
	get := func(url string, set func(*http.Request)) (string, *http.Response) {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Host = SiteHost
		set(req)
		resp, err := c.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, 200, resp.StatusCode)
		return resp.Header.Get("X-Release"), resp
	}
	seen := map[string]int{}
	for i := range 60 {
		cookie := fmt.Sprintf("handoff_split=%016x", ClientKey(i))
		first, _ := get(s.Caddy.URL+"/", func(r *http.Request) { r.Header.Set("Cookie", cookie) })
		seen[first]++
		for range 4 {
			again, _ := get(s.Caddy.URL+"/", func(r *http.Request) { r.Header.Set("Cookie", cookie) })
			require.Equal(t, first, again, "a browser keeps its version")
		}
	}
	require.Positive(t, seen["v2"], "%v", seen)
	require.Positive(t, seen["v1"], "%v", seen)
	cookieless := map[string]int{}
	for i := range 60 {
		addr := fmt.Sprintf("203.0.113.%d", i+1)
		first, resp := get("http://"+s.Proxy.Listen+"/", func(r *http.Request) { r.Header.Set("X-Forwarded-For", addr) })
		require.Contains(t, resp.Header.Get("Set-Cookie"), "handoff_split=", "a browser's first answer sets the cookie")
		cookieless[first]++
		for range 4 {
			again, _ := get("http://"+s.Proxy.Listen+"/", func(r *http.Request) { r.Header.Set("X-Forwarded-For", addr) })
			require.Equal(t, first, again, "a client without cookies keeps its version by its address")
		}
	}
	require.Positive(t, cookieless["v2"], "%v", cookieless)
	require.Positive(t, cookieless["v1"], "%v", cookieless)

	st := s.Run("canary", "status")
	require.Contains(t, st.Stdout, s.Service+"-1")
	p := s.Run("canary", "promote")
	require.Equal(t, 0, p.Code, "%s", p)
	require.NoError(t, cmd.Wait(), "%s", out)
	require.Contains(t, out.String(), "promoted by a person")
	require.Equal(t, "v2", s.Serving())
}

// A kill -9 in a step leaves the split; the next command (status here,
// then repair) puts every request back on the old release and removes
// the canary.
func TestAKilledCanaryIsUndoneByTheNextCommand(t *testing.T) {
	s, cmd, _ := canaryUnderWay(t)
	require.NoError(t, cmd.Process.Kill())
	_ = cmd.Wait()
	ctl := proxyclient.NewControl(s.Proxy.Socket, s.Service)
	split, err := ctl.Stats(context.Background())
	require.NoError(t, err)
	require.Len(t, split.Endpoints, 2, "the kill left the split")

	st := s.Run("status")
	require.Equal(t, 0, st.Code, "%s", st)
	require.Contains(t, st.Stdout, "was interrupted at step 1 (30%): every request is on "+s.Service+"-1 again")
	for range 20 {
		require.Equal(t, "v1", s.Serving())
	}
	rep := s.Run("repair")
	require.Equal(t, 0, rep.Code, "%s", rep)
	require.Contains(t, rep.Stderr, "removing "+s.Service+"-2: left running by an interrupted deploy, never in service")
	require.False(t, Containers(t, s.API, s.Service)[s.Service+"-2"])
	require.Equal(t, "interrupted", s.history()[1].Outcome)
}

// The watch after a switch: a release that fails 5% is switched away from
// at once, the old release (still running) serves again, and the undo
// itself fails nothing: every failure users saw is the bad release's 500.
func TestAWatchUndoesASwitchToABadRelease(t *testing.T) {
	s := NewScenario(t, ScenarioOptions{HandoffProxy: true})
	s.Deploy(Config{Release: "v1", NoCaddyfile: true})
	got := s.watchSwitchesBack(Config{NoCaddyfile: true})
	require.Zero(t, got.ReloadCuts(), "handoff proxy is never reloaded: %s", got)
}

// watchSwitchesBack deploys v2, failing 5% of its requests, over v1 with
// a watch, under the canary load, and checks the switch was undone: exit
// 9, v1 serving and never stopped, v2 removed, and every failure users saw
// v2's own 500. It returns what the load saw.
func (s *Scenario) watchSwitchesBack(c Config) LoadStats {
	t := s.T
	t.Helper()
	load := canaryLoad(t, s)
	c.Release, c.Env, c.Extra = "v2", map[string]string{"FAIL_RATE": "0.05"}, "watch: 30s\nanalysis:\n  min_requests: 100\n"
	r, rec := s.deployJSON(c)
	time.Sleep(500 * time.Millisecond)
	got := load.Stop()
	t.Logf("a watch switching back under load: %s", got)
	require.Equal(t, 9, r.Code, "%s", r)
	require.Contains(t, r.Stderr, "switched back to "+s.Service+"-1 (never stopped); "+s.Service+"-2 removed")
	require.Equal(t, "v1", s.Serving())
	require.False(t, rec.Switched)
	requireJudgedOnBoth(t, rec)
	require.Equal(t, deploy.VerdictFail, rec.Analysis[len(rec.Analysis)-1].Verdict)
	require.Positive(t, got.Failed5xx["v2"], "%s", got)
	require.Equal(t, got.Failed5xx["v2"], got.Failures(), "every failure is the bad release's own 500: %s", got)
	running := Containers(t, s.API, s.Service)
	require.True(t, running[s.Service+"-1"], "the old release runs")
	require.False(t, running[s.Service+"-2"], "the bad release is removed")
	return got
}

// canaryUnderWay has v1 live and a deploy of v2 running its canary's one
// step (30% for five minutes), as `handoff canary status` shows.
func canaryUnderWay(t *testing.T) (*Scenario, *exec.Cmd, *syncBuffer) {
	s := NewScenario(t, ScenarioOptions{HandoffProxy: true})
	s.Deploy(Config{Release: "v1", NoCaddyfile: true})
	s.WriteConfig(Config{Release: "v2", NoCaddyfile: true, Extra: canaryConfig("30% 5m")})
	cmd, out := s.Start("deploy")
	WaitFor(t, 30*time.Second, "the canary's first step", func() bool {
		return strings.Contains(s.Run("canary", "status").Stdout, "step 1 of 1: 30%")
	})
	return s, cmd, out
}

// A watch through Caddy judges the site from Caddy's own HTTP metrics, on
// each Caddy a user may have: a good release passes it and the old one is
// retired after it; a release failing 5% is switched back, and every
// failure is that release's own 500, none the switch back's.
func TestAWatchThroughCaddy(t *testing.T) {
	caddies := []struct {
		name string
		o    CaddyOptions
	}{{"caddy " + CaddyVersion, CaddyOptions{ExtraGlobal: "\tmetrics {\n\t\tper_host\n\t}\n"}}}
	if bin := os.Getenv("HANDOFF_TEST_CADDY_OLD"); bin == "" {
		t.Log("HANDOFF_TEST_CADDY_OLD not set: the watch through Caddy 2.6 is not tried (scripts/test.sh sets it to Debian's caddy 2.6.2)")
	} else {
		caddies = append(caddies, struct {
			name string
			o    CaddyOptions
		}{"caddy old", CaddyOptions{Binary: bin, ExtraServer: "\t\tmetrics\n", Plain: true, ExtraProxy: "\t\tlb_try_duration 5s\n\t\tlb_try_interval 100ms\n"}})
	}
	watch := "watch: 5s\nanalysis:\n  min_requests: 100\n"
	for _, c := range caddies {
		t.Run(c.name+"/good release", func(t *testing.T) {
			s := NewScenario(t, ScenarioOptions{Caddy: c.o})
			s.Deploy(Config{Release: "v1"})
			load := canaryLoad(t, s)
			r, rec := s.deployJSON(Config{Release: "v2", Extra: watch})
			got := load.Stop()
			t.Logf("a watch through Caddy passing a good release under load: %s", got)
			require.Equal(t, 0, r.Code, "%s", r)
			require.Equal(t, "v2", s.Serving())
			require.True(t, rec.Switched)
			requireJudgedOnBoth(t, rec)
			require.Equal(t, deploy.VerdictPass, rec.Analysis[len(rec.Analysis)-1].Verdict, "%+v", rec.Analysis)
			require.Zero(t, got.Failures(), "%s", got)
			require.False(t, Containers(t, s.API, s.Service)[s.Service+"-1"], "the old release is stopped after the watch")
		})
		t.Run(c.name+"/release failing 5%", func(t *testing.T) {
			s := NewScenario(t, ScenarioOptions{Caddy: c.o})
			s.Deploy(Config{Release: "v1"})
			s.watchSwitchesBack(Config{})
		})
	}
}

// requireJudgedOnBoth checks that the last verdict had the numbers of both
// releases: a proxy whose counts were misread gives a tiny baseline, which
// is judged against 0% and would still pass a good release and fail a bad
// one.
func requireJudgedOnBoth(t testing.TB, rec deploy.Record) {
	t.Helper()
	require.NotEmpty(t, rec.Analysis, "no verdict recorded")
	a := rec.Analysis[len(rec.Analysis)-1]
	require.GreaterOrEqual(t, a.Baseline.Requests, 100, "the baseline's requests: %+v", a)
	require.GreaterOrEqual(t, a.Release.Requests, 100, "the new release's requests: %+v", a)
	require.NotContains(t, a.Reason, "no baseline", "%+v", a)
}
