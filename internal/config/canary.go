package config

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/handoff-dev/handoff/internal/deploy"
)

// StrategyCanary is `strategy: canary`: the new release gets a share of the
// requests step by step, judged at every step, before it gets them all.
const StrategyCanary = "canary"

// Canary is handoff.yml's `canary:`: the steps `strategy: canary` (or
// --canary) takes.
type Canary struct {
	Steps []string `yaml:"steps"` // "5% 2m": the new release's share, and how long it is held
}

// Analysis is handoff.yml's `analysis:`: how much worse than the old
// release a canary step or the watch lets the new one do.
type Analysis struct {
	MaxErrorRate string   `yaml:"max_error_rate"` // "+1%": percentage points over the old release's
	MaxP99       string   `yaml:"max_p99"`        // "1.5x": times the old release's p99
	MinRequests  int      `yaml:"min_requests"`   // answered before a step is judged at all
	MaxWait      Duration `yaml:"max_wait"`       // how much longer a step with too few requests waits
}

// canarySchema and analysisSchema are the keys of `canary:` and `analysis:`.
var (
	canarySchema   = schema{"steps": nil}
	analysisSchema = schema{"max_error_rate": nil, "max_p99": nil, "min_requests": nil, "max_wait": nil}
)

// applyAnalysis sets the canary steps, the watch and the thresholds on svc:
// `strategy: canary` or --canary runs `canary.steps` (default
// deploy.DefaultCanarySteps); `watch:` or --watch keeps the old release up
// that long after the switch.
func (f File) applyAnalysis(svc *deploy.Service, o Overrides) error {
	steps := deploy.DefaultCanarySteps
	if f.Canary != nil && len(f.Canary.Steps) > 0 {
		steps = nil
		for i, s := range f.Canary.Steps {
			step, err := parseStep(s)
			if err != nil {
				return f.at("canary.steps", fmt.Sprintf("canary step %d %q: %v", i+1, s, err))
			}
			steps = append(steps, step)
		}
	}
	if f.Strategy == StrategyCanary || o.Canary {
		svc.Canary = steps
	}
	svc.Watch = time.Duration(f.Watch)
	if o.Watch != 0 {
		svc.Watch = o.Watch
	}
	a := f.Analysis
	if a.MaxErrorRate != "" {
		v, err := parseErrorRate(a.MaxErrorRate)
		if err != nil {
			return f.at("analysis.max_error_rate", fmt.Sprintf("max_error_rate %q: %v", a.MaxErrorRate, err))
		}
		svc.Analysis.MaxErrorRate = v
	}
	if a.MaxP99 != "" {
		v, err := parseRatio(a.MaxP99)
		if err != nil {
			return f.at("analysis.max_p99", fmt.Sprintf("max_p99 %q: %v", a.MaxP99, err))
		}
		svc.Analysis.MaxP99 = v
	}
	if a.MinRequests < 0 {
		return f.at("analysis.min_requests", fmt.Sprintf("min_requests %d: a count of requests is 1 or more", a.MinRequests))
	}
	svc.Analysis.MinRequests = a.MinRequests
	svc.Analysis.MaxWait = time.Duration(a.MaxWait)
	return nil
}

// parseStep reads "5% 2m": a share in percent, then how long it is held.
func parseStep(s string) (deploy.CanaryStep, error) {
	fields := strings.Fields(s)
	if len(fields) != 2 || !strings.HasSuffix(fields[0], "%") {
		return deploy.CanaryStep{}, fmt.Errorf(`write a step as a share and a time, like "5%% 2m"`)
	}
	w, err := strconv.Atoi(strings.TrimSuffix(fields[0], "%"))
	if err != nil || w < 1 || w > 99 {
		return deploy.CanaryStep{}, fmt.Errorf("the share is a whole percent from 1%% to 99%% (100%% is the switch after the last step)")
	}
	d, err := time.ParseDuration(fields[1])
	if err != nil || d <= 0 {
		return deploy.CanaryStep{}, fmt.Errorf("%q is not a time; write it like 30s, 2m or 1m30s", fields[1])
	}
	return deploy.CanaryStep{Weight: w, Hold: d}, nil
}

// parseErrorRate reads "+1%" or "0.5%": percentage points over the old
// release's error rate, as a fraction.
func parseErrorRate(s string) (float64, error) {
	v, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(s), "+"), "%"), 64)
	if err != nil || !strings.HasSuffix(s, "%") || v <= 0 || v >= 100 {
		return 0, fmt.Errorf(`write it like "+1%%": how many percentage points the new release's error rate may be over the old one's`)
	}
	return v / 100, nil
}

// parseRatio reads "1.5x": how many times the old release's p99.
func parseRatio(s string) (float64, error) {
	v, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(s), "x"), 64)
	if err != nil || !strings.HasSuffix(s, "x") || v < 1 {
		return 0, fmt.Errorf(`write it like "1.5x": how many times the old release's p99 the new one's may be (1x or more)`)
	}
	return v, nil
}
