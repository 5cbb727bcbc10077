package cli

import (
	"encoding/json"
	"runtime"
	"runtime/debug"
	"testing"

	"github.com/stretchr/testify/require"
)

// setBuildVars sets what a release build's -ldflags -X would, for one test.
func setBuildVars(t *testing.T, version, commit, date string) {
	t.Helper()
	old := [3]string{Version, Commit, Date}
	Version, Commit, Date = version, commit, date
	t.Cleanup(func() { Version, Commit, Date = old[0], old[1], old[2] })
}

func TestVersionOfAReleaseBuildIsWhatItsLdflagsSet(t *testing.T) {
	setBuildVars(t, "v1.4.0", "0123456789abcdef0123456789abcdef01234567", "2026-12-03T10:00:00Z")
	out, _, code := run(t, "version")
	require.Equal(t, 0, code)
	require.Equal(t, "handoff v1.4.0 (commit 0123456789abcdef0123456789abcdef01234567, built 2026-12-03T10:00:00Z, "+runtime.Version()+" "+runtime.GOOS+"/"+runtime.GOARCH+")\n", out)

	out, _, code = run(t, "version", "--json")
	require.Equal(t, 0, code)
	var v map[string]string
	require.NoError(t, json.Unmarshal([]byte(out), &v))
	require.Equal(t, map[string]string{
		"version":  "v1.4.0",
		"commit":   "0123456789abcdef0123456789abcdef01234567",
		"date":     "2026-12-03T10:00:00Z",
		"go":       runtime.Version(),
		"platform": runtime.GOOS + "/" + runtime.GOARCH,
	}, v)
}

func TestVersionFallsBackOnWhatTheToolchainRecorded(t *testing.T) {
	setBuildVars(t, "", "", "")
	info := func(version string, settings ...debug.BuildSetting) func() (*debug.BuildInfo, bool) {
		return func() (*debug.BuildInfo, bool) {
			return &debug.BuildInfo{Main: debug.Module{Path: "github.com/handoff-dev/handoff", Version: version}, Settings: settings}, true
		}
	}
	cases := []struct {
		name                  string
		read                  func() (*debug.BuildInfo, bool)
		version, commit, date string
	}{
		{"go install @version", info("v1.4.0"), "v1.4.0", "unknown", "unknown"},
		{"go build in a checkout", info("(devel)",
			debug.BuildSetting{Key: "vcs", Value: "git"},
			debug.BuildSetting{Key: "vcs.revision", Value: "89abcdef"},
			debug.BuildSetting{Key: "vcs.time", Value: "2026-12-01T09:30:00Z"},
		), "(devel)", "89abcdef", "2026-12-01T09:30:00Z"},
		{"go build -buildvcs=false", info("(devel)"), "(devel)", "unknown", "unknown"},
		{"no build info", func() (*debug.BuildInfo, bool) { return nil, false }, "(devel)", "unknown", "unknown"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v := buildVersion(c.read)
			require.Equal(t, [3]string{c.version, c.commit, c.date}, [3]string{v.Version, v.Commit, v.Date})
		})
	}

	// What the ldflags set wins over what the toolchain recorded.
	setBuildVars(t, "v2.0.0", "", "2026-12-03T10:00:00Z")
	v := buildVersion(info("v1.4.0", debug.BuildSetting{Key: "vcs.revision", Value: "89abcdef"}, debug.BuildSetting{Key: "vcs.time", Value: "2026-12-01T09:30:00Z"}))
	require.Equal(t, [3]string{"v2.0.0", "89abcdef", "2026-12-03T10:00:00Z"}, [3]string{v.Version, v.Commit, v.Date})
}
