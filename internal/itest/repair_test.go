package itest

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// handoff proxy restarted without its state (the file moved aside, as its
// error for a corrupt one says) has no route for the service: the release
// in service is not stopped for it; status says so and what to run, and
// repair points the proxy at it again.
func TestAProxyThatLostTheRouteIsRepairedWithoutStoppingTheRelease(t *testing.T) {
	s := NewScenario(t, ScenarioOptions{HandoffProxy: true})
	s.Deploy(Config{Release: "v1"})
	s.Proxy.Kill()
	state := filepath.Join(filepath.Dir(s.Proxy.PIDFile), "state.json")
	require.NoError(t, os.Rename(state, state+".aside"))
	s.Proxy.StartAgain()

	r := s.Run("status")
	require.Contains(t, r.Stdout, "has no route for "+s.Service+", while "+s.Service+"-1, the release in service, runs on", r.String())
	require.Contains(t, r.Stdout, "run `handoff repair ")

	r = s.Run("repair")
	require.Equal(t, 0, r.Code, r.String())
	require.Equal(t, "v1", s.Serving())
	require.Equal(t, map[string]bool{s.Service + "-1": true}, Containers(t, s.API, s.Service), "the release in service runs on")
	r = s.Run("status")
	require.Contains(t, r.Stdout, "agree    yes", r.String())
}
