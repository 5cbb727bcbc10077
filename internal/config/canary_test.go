package config

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/deploy"
)

func resolveYAML(t *testing.T, yml string, o Overrides) (Settings, error) {
	t.Helper()
	f, err := Parse("handoff.yml", []byte(yml))
	require.NoError(t, err)
	return Resolve(f, o)
}

// strategy: canary runs canary.steps, or the default steps; the
// thresholds are read as the user writes them.
func TestACanaryIsRead(t *testing.T) {
	s, err := resolveYAML(t, `service: web
image: app
strategy: canary
canary:
  steps: ["5% 2m", "25% 3m", "50% 90s"]
watch: 2m
analysis:
  max_error_rate: +0.5%
  max_p99: 2x
  min_requests: 300
  max_wait: 1m
`, Overrides{})
	require.NoError(t, err)
	svc := s.Service
	require.Equal(t, []deploy.CanaryStep{{Weight: 5, Hold: 2 * time.Minute}, {Weight: 25, Hold: 3 * time.Minute}, {Weight: 50, Hold: 90 * time.Second}}, svc.Canary)
	require.Equal(t, 2*time.Minute, svc.Watch)
	require.Equal(t, deploy.Thresholds{MaxErrorRate: 0.005, MaxP99: 2, MinRequests: 300, MaxWait: time.Minute}, svc.Analysis)

	s, err = resolveYAML(t, "service: web\nimage: app\nstrategy: canary\n", Overrides{})
	require.NoError(t, err)
	require.Equal(t, deploy.DefaultCanarySteps, s.Service.Canary)

	s, err = resolveYAML(t, "service: web\nimage: app\ncanary:\n  steps: [\"10% 1m\"]\n", Overrides{})
	require.NoError(t, err)
	require.Nil(t, s.Service.Canary, "steps alone wait for --canary")
	s, err = resolveYAML(t, "service: web\nimage: app\ncanary:\n  steps: [\"10% 1m\"]\n", Overrides{Canary: true, Watch: time.Minute})
	require.NoError(t, err)
	require.Equal(t, []deploy.CanaryStep{{Weight: 10, Hold: time.Minute}}, s.Service.Canary)
	require.Equal(t, time.Minute, s.Service.Watch)
}

func TestABadCanaryIsRefusedWithTheLine(t *testing.T) {
	cases := map[string]struct{ yml, want string }{
		"step":     {"service: web\ncanary:\n  steps: [\"5%\"]\n", `handoff.yml:3: canary step 1 "5%": write a step as a share and a time, like "5% 2m"`},
		"weight":   {"service: web\ncanary:\n  steps: [\"100% 1m\"]\n", `canary step 1 "100% 1m": the share is a whole percent from 1% to 99%`},
		"time":     {"service: web\ncanary:\n  steps: [\"5% soon\"]\n", `"soon" is not a time`},
		"rate":     {"service: web\nanalysis:\n  max_error_rate: 1\n", `handoff.yml:3: max_error_rate "1": write it like "+1%"`},
		"ratio":    {"service: web\nanalysis:\n  max_p99: 0.5x\n", `max_p99 "0.5x": write it like "1.5x"`},
		"strategy": {"service: web\nstrategy: canery\n", `strategy "canery": use blue-green (the default behind a route), canary`},
		"key":      {"service: web\ncanary:\n  step: [\"5% 1m\"]\n", `unknown key "step" in canary; did you mean "steps"?`},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			f, err := Parse("handoff.yml", []byte(c.yml))
			if err == nil {
				_, err = Resolve(f, Overrides{})
			}
			require.ErrorIs(t, err, deploy.ErrConfig)
			require.ErrorContains(t, err, c.want)
		})
	}
}
