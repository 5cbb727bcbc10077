package cli

import (
	"fmt"
	"slices"

	"github.com/spf13/cobra"
)

// completionShells are the shells `handoff completion` writes a script for.
var completionShells = []string{"bash", "zsh", "fish", "powershell"}

// newCompletionCmd replaces cobra's default completion command (which it
// adds only when none is there) with one that writes the same scripts
// from cobra's own generators, but takes the shell as an argument and
// refuses one it does not know: cobra's prints its help and exits 0 for
// `handoff completion tcsh`, so `> file` would quietly write the help.
func newCompletionCmd() *cobra.Command {
	var noDesc bool
	cmd := &cobra.Command{
		Use:   "completion bash|zsh|fish|powershell",
		Short: "Print the shell completion script for bash, zsh, fish or powershell",
		Long: `Print the shell completion script for bash, zsh, fish or powershell.

The .deb and .rpm packages install it for bash, zsh and fish. Otherwise:
  bash:  handoff completion bash > /etc/bash_completion.d/handoff    (needs bash-completion)
  zsh:   handoff completion zsh > "${fpath[1]}/_handoff"
  fish:  handoff completion fish > ~/.config/fish/completions/handoff.fish
  powershell: handoff completion powershell | Out-String | Invoke-Expression`,
		ValidArgs:             completionShells,
		DisableFlagsInUseLine: true,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 1 || !slices.Contains(completionShells, args[0]) {
				return fmt.Errorf("%w: name one shell: handoff completion bash|zsh|fish|powershell", errUsage)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			root, out := cmd.Root(), cmd.OutOrStdout()
			switch args[0] {
			case "bash":
				return root.GenBashCompletionV2(out, !noDesc)
			case "zsh":
				if noDesc {
					return root.GenZshCompletionNoDesc(out)
				}
				return root.GenZshCompletion(out)
			case "fish":
				return root.GenFishCompletion(out, !noDesc)
			default:
				if noDesc {
					return root.GenPowerShellCompletion(out)
				}
				return root.GenPowerShellCompletionWithDesc(out)
			}
		},
	}
	cmd.Flags().BoolVar(&noDesc, "no-descriptions", false, "leave out the commands' descriptions")
	return cmd
}
