package cli

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// Version is set at build time with -ldflags "-X .../internal/cli.Version=v1.2.3".
var Version = ""

func version() string {
	if Version != "" {
		return Version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

func newVersionCmd(c *common) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print handoff's version",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if c.json {
				return c.io.JSON(map[string]string{"version": version(), "go": runtime.Version()})
			}
			_, err := fmt.Fprintf(c.io.Out, "handoff %s (%s)\n", version(), runtime.Version())
			return err
		},
	}
}
