package itest

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/verify"
)

// --verify watches the deploy from outside and reports what users saw; with
// =strict a failure seen makes the command fail.
func TestDeployVerify(t *testing.T) {
	s := NewScenario(t, ScenarioOptions{})
	s.Deploy(Config{Release: "v1"})
	s.WriteConfig(Config{Release: "v2", Env: map[string]string{"BOOT_DELAY": "1s"}})

	r := s.Run("deploy", "--json", "--verify=strict", "--verify-rate", "20", s.Caddy.URL+"/")
	require.Equal(t, 0, r.Code, r.String())
	var out struct {
		To     string         `json:"to_container"`
		Verify *verify.Report `json:"verify"`
	}
	require.NoError(t, json.Unmarshal([]byte(r.Stdout), &out))
	v := out.Verify
	require.NotNil(t, v)
	require.Greater(t, v.Requests, 20, "20/s over a deploy of more than a second")
	require.Zero(t, v.Failed, "%+v", v)
	require.Less(t, v.LongestGap, time.Second)
	require.Len(t, v.Answered, 2)
	require.Equal(t, s.Service+"-1", v.Answered[0].Release)
	require.Positive(t, v.Answered[0].Requests)
	require.Equal(t, s.Service+"-2", v.Answered[1].Release)
	require.Positive(t, v.Answered[1].Requests)
	require.Contains(t, r.Stderr, "verify: "+Itoa(v.Requests)+" requests to "+s.Caddy.URL+"/: "+Itoa(v.OK)+" ok, 0 failed")

	// A URL nobody answers: the deploy works, the watch sees every request refused.
	s.WriteConfig(Config{Release: "v3"})
	closed := "http://127.0.0.1:" + Itoa(FreePort(t)) + "/"
	r = s.Run("deploy", "--verify=strict", closed)
	require.Equal(t, 7, r.Code, r.String())
	require.Contains(t, r.Stderr, "refused")
	require.Contains(t, r.Stderr, "failed during the deploy (the deploy itself completed)")
	require.Equal(t, "v3", s.Serving())

	// Without strict it only reports.
	s.WriteConfig(Config{Release: "v4"})
	r = s.Run("deploy", "--verify", closed)
	require.Equal(t, 0, r.Code, r.String())
	require.Contains(t, r.Stderr, "failed (")
}
