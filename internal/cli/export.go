package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"

	"github.com/spf13/cobra"

	"github.com/handoff-dev/handoff/internal/atomicfile"
	"github.com/handoff-dev/handoff/internal/export"
)

type exportOptions struct {
	*common
	out            string // a directory, or "-" for stdout
	includeSecrets bool
	version        string // handoff's, named in each file's header
}

func newExportCmd(c *common) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "export",
		Short: "Write the service's settings for a platform handoff does not drive (k8s)",
		// Export reads the files here and writes here: never on a --host server.
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if cmd.Flags().Changed("host") {
				return fmt.Errorf("%w: export reads handoff.yml here and writes here: run it without --host", errUsage)
			}
			return nil
		},
	}
	cmd.AddCommand(newExportK8sCmd(c))
	return cmd
}

func newExportK8sCmd(c *common) *cobra.Command {
	opts := &exportOptions{common: c, version: buildVersion(debug.ReadBuildInfo).Version}
	cmd := &cobra.Command{
		Use:   "k8s [SERVICE] [--out DIR|-]",
		Short: "Write Kubernetes manifests: a Deployment that rolls like handoff, its Service, a PodDisruptionBudget, the release Job",
		Long: `export k8s writes, for the service handoff deploy would deploy (the same -f, --service
and flags), a Deployment (one new pod at a time, none taken down before its replacement is
ready, a readiness probe from health:, a preStop sleep and a grace period above drain_timeout),
a Service, a PodDisruptionBudget, and the release job as a Job in DIR/release/, to run to
completion before kubectl apply -f DIR (so --out - is refused when there is one). The
environment's values are never written unless --include-secrets: the Deployment reads them
from the Secret <service>-env. Files of the service an earlier export wrote and this one does
not are removed. What Kubernetes cannot take (a Caddy route, hooks, canary
steps) is listed on stderr, one line each. Nothing is sent to a cluster.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return exportK8sRun(cmd.Context(), opts, args)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.out, "out", "k8s", "directory to write the manifests into, or - for stdout")
	f.BoolVar(&opts.includeSecrets, "include-secrets", false, "also write the environment's values, env_file's too, into <service>-secret.yaml (mode 0600)")
	f.StringVar(&c.overrides.Image, "image", "", "image the Deployment runs (overrides image: and skips build:)")
	f.IntVar(&c.overrides.Port, "port", 0, "port the app listens on inside the container")
	f.Var(&c.overrides.Replicas, "replicas", "pods the Deployment runs (default: replicas: in handoff.yml, else 1)")
	f.StringVar(&c.overrides.HealthPath, "health-path", "", "HTTP path that answers 2xx when the app is ready")
	f.DurationVar(&c.overrides.DrainTimeout, "drain-timeout", 0, "how long in-flight requests may take to finish (default 30s)")
	f.StringVar(&c.overrides.Pull, "pull", "", "when the kubelet pulls the image (imagePullPolicy): missing (default: IfNotPresent), always (a tag that moves: Always) or never")
	return cmd
}

func exportK8sRun(ctx context.Context, opts *exportOptions, args []string) error {
	s, err := opts.settings(ctx, args)
	if err != nil {
		return err
	}
	if opts.overrides.Image != "" {
		s.Service.Build = nil // an explicit image is exported as it is, as deploy runs it
	}
	m, err := export.K8s(s, export.K8sOptions{Version: opts.version, IncludeSecrets: opts.includeSecrets})
	if err != nil {
		return err
	}
	if opts.out == "-" && m.ReleaseJob != "" {
		// kubectl apply -f - would start the Job with the rollout it must precede.
		return fmt.Errorf("%w: --out -: the release Job %s must run to completion before the Deployment, and one stream is applied at once: write the files with --out DIR (the Job goes to DIR/release/)", errUsage, m.ReleaseJob)
	}
	if opts.out == "-" && slices.ContainsFunc(m.Files, func(f export.File) bool { return f.Secret }) {
		if f, ok := opts.io.Out.(*os.File); ok && isTerminal(f) {
			return fmt.Errorf("%w: --include-secrets with --out - on a terminal would show the environment's values and leave them in its scrollback: write them to a file with --out DIR (mode 0600), or pipe stdout", errUsage)
		}
		fmt.Fprintln(opts.io.Err, "warning: the environment's values are written to stdout in clear (--include-secrets): keep them out of logs and version control")
	}
	for _, line := range m.NotExported {
		fmt.Fprintln(opts.io.Err, line)
	}
	if opts.out == "-" {
		for i, f := range m.Files {
			if i > 0 {
				fmt.Fprintln(opts.io.Out, "---")
			}
			if _, err := opts.io.Out.Write(f.Data); err != nil {
				return fmt.Errorf("write manifests: %w", err)
			}
		}
		return nil
	}
	written := map[string]bool{}
	for _, f := range m.Files {
		path := filepath.Join(opts.out, filepath.FromSlash(f.Name))
		written[path] = true
		perm := os.FileMode(0o644)
		if f.Secret {
			perm = 0o600
		}
		if err := atomicfile.Write(path, f.Data, perm); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
		fmt.Fprintf(opts.io.Err, "wrote %s\n", path)
	}
	return removeLeftovers(opts, s.Service.Name, written)
}

// removeLeftovers removes the files an earlier export of the service wrote
// that this one did not (the Secret of an --include-secrets run, or a Job
// of a layout before DIR/release/), so that kubectl apply -f DIR applies
// this run's alone. Only a file whose header proves it this service's goes.
func removeLeftovers(opts *exportOptions, service string, written map[string]bool) error {
	for _, dir := range []string{opts.out, filepath.Join(opts.out, export.ReleaseDir)} {
		paths, err := filepath.Glob(filepath.Join(dir, service+"-*.yaml"))
		if err != nil {
			return fmt.Errorf("list %s: %w", dir, err)
		}
		for _, path := range paths {
			if written[path] {
				continue
			}
			data, err := os.ReadFile(path)
			if err != nil || !export.Generated(data, service) {
				continue // not ours to remove
			}
			if err := os.Remove(path); err != nil {
				return fmt.Errorf("remove %s, an earlier export's that this one does not write: %w", path, err)
			}
			fmt.Fprintf(opts.io.Err, "removed %s (an earlier export's; this one does not write it)\n", path)
		}
	}
	return nil
}
