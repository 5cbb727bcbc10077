package cli

import (
	"cmp"
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// Version, Commit and Date are set by a release build (tools/release):
//
//	-ldflags "-X github.com/handoff-dev/handoff/internal/cli.Version=v1.2.3
//	          -X github.com/handoff-dev/handoff/internal/cli.Commit=<sha>
//	          -X github.com/handoff-dev/handoff/internal/cli.Date=<RFC 3339>"
//
// A build without them (go install, go build) falls back on what the Go
// toolchain recorded in the binary: the module's version, and the VCS
// revision and time when it was built in a checkout with -buildvcs.
var (
	Version = ""
	Commit  = ""
	Date    = ""
)

// versionInfo is what `handoff version` prints.
type versionInfo struct {
	Version  string `json:"version"`
	Commit   string `json:"commit"`
	Date     string `json:"date"`
	Go       string `json:"go"`
	Platform string `json:"platform"`
}

// unknown stands for a field neither the release build nor the toolchain
// recorded.
const unknown = "unknown"

// buildVersion is the version of this binary; read is debug.ReadBuildInfo
// (a parameter so that tests can hand it what a toolchain would record).
func buildVersion(read func() (*debug.BuildInfo, bool)) versionInfo {
	var r toolchainStamp
	if bi, ok := read(); ok {
		r = recorded(bi)
	}
	return versionInfo{
		Version:  cmp.Or(Version, r.module, "(devel)"),
		Commit:   cmp.Or(Commit, r.revision, unknown),
		Date:     cmp.Or(Date, r.time, unknown),
		Go:       runtime.Version(),
		Platform: runtime.GOOS + "/" + runtime.GOARCH,
	}
}

// toolchainStamp is what the go command recorded of a build: the main
// module's version ("" for a build of a checkout), the commit and its
// time, and the -ldflags (never with -trimpath: go.dev/issue/52372).
type toolchainStamp struct{ module, revision, time, ldflags string }

func recorded(bi *debug.BuildInfo) toolchainStamp {
	var r toolchainStamp
	if bi.Main.Version != "(devel)" {
		r.module = bi.Main.Version
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			r.revision = s.Value
		case "vcs.time":
			r.time = s.Value
		case "-ldflags":
			r.ldflags = s.Value
		}
	}
	return r
}

func newVersionCmd(c *common) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print handoff's version, commit and build date",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			v := buildVersion(debug.ReadBuildInfo)
			if c.json {
				return c.io.JSON(v)
			}
			_, err := fmt.Fprintf(c.io.Out, "handoff %s (commit %s, built %s, %s %s)\n", v.Version, v.Commit, v.Date, v.Go, v.Platform)
			return err
		},
	}
}
