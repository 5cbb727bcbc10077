package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/deploy"
)

func TestExitCodes(t *testing.T) {
	cases := []struct {
		err  error
		code int
	}{
		{nil, ExitOK},
		{fmt.Errorf("x: %w", deploy.ErrConfig), ExitUsage},
		{&deploy.HealthError{Container: "web-2", Reason: "exited"}, ExitUnhealthy},
		{fmt.Errorf("%w: web", deploy.ErrLocked), ExitLocked},
		{fmt.Errorf("%w: refused", deploy.ErrProxyUnreached), ExitProxy},
		{deploy.ErrNoRoute, ExitProxy},
		{deploy.ErrConflict, ExitProxy},
		{fmt.Errorf("%w: lost", deploy.ErrUnclear), ExitProxy},
		{fmt.Errorf("%w: app:v2", deploy.ErrImageNotFound), ExitImage},
		{fmt.Errorf("%w: 3 failed", errVerifyFailed), ExitVerify},
		{fmt.Errorf("wait: %w", context.Canceled), ExitInterrupted},
		{fmt.Errorf("something else"), ExitFailed},
	}
	for _, c := range cases {
		require.Equal(t, c.code, ExitCode(c.err), "%v", c.err)
	}
}

func run(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Main(context.Background(), args, &IO{Out: &out, Err: &errb})
	return out.String(), errb.String(), code
}

func TestVersionJSON(t *testing.T) {
	out, _, code := run(t, "version", "--json")
	require.Equal(t, 0, code)
	var v map[string]string
	require.NoError(t, json.Unmarshal([]byte(out), &v))
	require.NotEmpty(t, v["version"])
}

func TestUsageErrorsAreOneLineAndExit2(t *testing.T) {
	_, stderr, code := run(t, "deploy", "--no-such-flag")
	require.Equal(t, ExitUsage, code)
	require.Equal(t, "handoff: usage: unknown flag: --no-such-flag (see --help)\n", stderr)

	_, stderr, code = run(t, "deploy", "--service", "web", "--image", "x", "stray")
	require.Equal(t, ExitUsage, code)
	require.Contains(t, stderr, `unexpected argument "stray": handoff.yml describes web; other services are named with a compose file (-f compose.yaml SERVICE), and a URL goes with --verify`)
}

func TestHistoryOfANewServiceIsEmpty(t *testing.T) {
	dir := t.TempDir()
	out, _, code := run(t, "history", "--service", "web", "--state-dir", dir)
	require.Equal(t, 0, code)
	require.Equal(t, "no deploys of web recorded in "+dir+"\n", out)
	out, _, code = run(t, "history", "--service", "web", "--state-dir", dir, "--json")
	require.Equal(t, 0, code)
	require.Equal(t, "null\n", out)
}

func TestHealthFailurePrintsTheLogs(t *testing.T) {
	var errb bytes.Buffer
	printError(&IO{Err: &errb}, fmt.Errorf("wrapped: %w", &deploy.HealthError{Container: "web-2", Reason: "exited with code 3 while starting", Logs: "boom\n"}))
	require.Equal(t, "handoff: wrapped: web-2: exited with code 3 while starting\nlast log lines of web-2:\nboom\n", errb.String())
}

// Every command checks the service name first, before Docker or Caddy is
// reached and before any file under the state directory is touched.
func TestEveryCommandChecksTheServiceNameFirst(t *testing.T) {
	t.Setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
	dir := t.TempDir()
	for _, cmd := range []string{"deploy", "rollback", "status", "history"} {
		_, stderr, code := run(t, cmd, "--service", "../../x", "--state-dir", dir, "--caddy-route", "a.test")
		require.Equal(t, ExitUsage, code, "%s: %s", cmd, stderr)
		require.Contains(t, stderr, `service name "../../x"`, cmd)
	}
}

// Every command's --help shows each flag's type as its placeholder: a word
// in backquotes in a usage string would take the type's place.
func TestHelpShowsTypesNotPlaceholders(t *testing.T) {
	var walk func(c *cobra.Command)
	var helps []string
	walk = func(c *cobra.Command) {
		var out bytes.Buffer
		c.SetOut(&out)
		require.NoError(t, c.Help())
		helps = append(helps, out.String())
		c.Flags().VisitAll(func(f *pflag.Flag) {
			name, _ := pflag.UnquoteUsage(f)
			require.NotContains(t, name, " ", "--%s of %q shows %q as its value", f.Name, c.CommandPath(), name)
			require.NotContains(t, f.Usage, "`", "--%s of %q: backquotes make a placeholder", f.Name, c.CommandPath())
		})
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(NewRoot(&IO{Out: io.Discard, Err: io.Discard}))
	require.Greater(t, len(helps), 8)
	for _, h := range helps {
		require.NotContains(t, h, "--proxy handoff proxy")
		require.Regexp(t, `(?m)^\s+--json\s+print the result as JSON`, h)
	}
}

// handoff.yml's compose: names the project and its services; a compose
// file given with -f needs the services named.
func TestComposeTargets(t *testing.T) {
	t.Setenv("HANDOFF_COMPOSE", "false") // no compose tool to ask for hashes
	dir := t.TempDir()
	compose := "name: shop\nservices:\n  web:\n    image: app:1\n    expose: [\"8000\"]\n    x-handoff: {route: shop.test}\n  worker:\n    image: app:1\n"
	require.NoError(t, os.WriteFile(filepath.Join(dir, "compose.yaml"), []byte(compose), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "handoff.yml"), []byte("compose:\n  services: [web, worker]\n"), 0o644))

	c := &common{io: &IO{Out: io.Discard, Err: io.Discard}, files: []string{filepath.Join(dir, "handoff.yml")}}
	ts, err := c.targets(context.Background(), nil)
	require.NoError(t, err)
	require.Len(t, ts, 2)
	require.Equal(t, "shop-web", ts[0].Service.Name)
	require.Equal(t, "shop.test", ts[0].Caddy.Route)
	require.Equal(t, deploy.RolloutStartFirst, ts[1].Service.Rollout)
	require.Contains(t, ts[0].notes[0], "could not give web's config hash")

	c.files = []string{filepath.Join(dir, "compose.yaml")}
	_, err = c.targets(context.Background(), nil)
	require.ErrorIs(t, err, errUsage)
	require.ErrorContains(t, err, "name the compose services")
	ts, err = c.targets(context.Background(), []string{"worker"})
	require.NoError(t, err)
	require.Equal(t, "shop-worker", ts[0].Service.Name)

	// engine: beside compose: would be dropped: a compose service takes it from its x-handoff.
	require.NoError(t, os.WriteFile(filepath.Join(dir, "handoff.yml"), []byte("engine: swarm\ncompose:\n  services: [web]\n"), 0o644))
	c.files = []string{filepath.Join(dir, "handoff.yml")}
	_, err = c.targets(context.Background(), nil)
	require.ErrorIs(t, err, deploy.ErrConfig)
	require.ErrorContains(t, err, "move them there (x-handoff: {engine: swarm")
}

// A canary's published state is taken for a live one only while its
// handoff runs and keeps writing it.
func TestACanaryStatusIsCurrentOnlyWhileItsHandoffRuns(t *testing.T) {
	now := time.Now()
	require.True(t, current(&deploy.CanaryStatus{PID: os.Getpid(), Updated: now.Add(-time.Second)}, now))
	require.False(t, current(&deploy.CanaryStatus{PID: os.Getpid(), Updated: now.Add(-time.Minute)}, now), "not written for a minute")
	require.False(t, current(&deploy.CanaryStatus{PID: 1 << 30, Updated: now}, now), "its process is gone")
}
