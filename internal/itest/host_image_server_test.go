package itest

import (
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/deploy"
	"github.com/handoff-dev/handoff/internal/testhost"
)

// A server of its own (its own address, engine and sshd) that has none of this machine's
// images: the first deploy through --host sends the image whole, the next, a one-line
// change on a 50 MB base, one layer; each runs there under its ID from here, over one SSH
// connection per command.
func TestHostDeploySendsImagesToAServerOfItsOwn(t *testing.T) {
	srv := testhost.StartServer(t, testhost.ServerOptions{SSHDConfig: []string{"MaxStartups 3", "MaxSessions 3"}})
	ssh := testhost.WriteSSHFiles(t, srv)
	bin := Build(t)
	Docker(t)
	tag := randomHex(4)
	base, app := "handoff-test-base:"+tag, "handoff-test-app:"+tag
	t.Cleanup(func() { _ = run(".", nil, "docker", "image", "rm", "-f", app+"-1", app+"-2", base) })
	dir := t.TempDir()
	big := make([]byte, 50<<20)
	_, _ = rand.Read(big)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "big"), big, 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "Dockerfile.base"), []byte("FROM "+TestImage+"\nCOPY big /big\n"), 0o644))
	require.NoError(t, run(dir, nil, "docker", "build", "-q", "-f", "Dockerfile.base", "-t", base, "."))
	buildApp := func(release string) string {
		require.NoError(t, os.WriteFile(filepath.Join(dir, "line"), []byte(release+"\n"), 0o644))
		require.NoError(t, os.WriteFile(filepath.Join(dir, "Dockerfile.app"), []byte("FROM "+base+"\nCOPY line /line\n"), 0o644))
		ref := app + "-" + release
		require.NoError(t, run(dir, nil, "docker", "build", "-q", "-f", "Dockerfile.app", "-t", ref, "."))
		return ref
	}

	work, state := t.TempDir(), filepath.Join(srv.Home, "state") // the server's, gone with it
	service := UniqueName()
	env := append(ssh.Env(), "HANDOFF_HOST=")
	deployed := func(ref string) string {
		t.Helper()
		yml := "service: " + service + "\nimage: " + ref + "\ncommand: [worker]\nstrategy: start-first\n"
		require.NoError(t, os.WriteFile(filepath.Join(work, "handoff.yml"), []byte(yml), 0o644))
		before := srv.SSH.Connections()
		r := HandoffEnv(t, bin, work, state, env, "deploy", "--json", "--host", srv.URL(), "--state-dir", state)
		t.Logf("deploy --host %s:\n%s", ref, r.Stderr)
		require.Equal(t, 0, r.Code, r.String())
		var rec deploy.Record
		require.NoError(t, json.Unmarshal([]byte(r.Stdout), &rec), r.Stdout)
		require.Equal(t, deploy.OutcomeSucceeded, rec.Outcome)
		require.Equal(t, before+1, srv.SSH.Connections(), "one SSH connection a command")
		here, err := Docker(t).ImageInspect(t.Context(), ref)
		require.NoError(t, err)
		there, err := srv.Docker().ImageInspect(t.Context(), ref)
		require.NoError(t, err)
		require.Equal(t, here.ID, there.ID, "the server runs the image from here")
		return regexp.MustCompile(`image ` + regexp.QuoteMeta(ref) + ` to \S+: .*\n`).FindString(r.Stderr)
	}
	first := deployed(buildApp("1"))
	require.Regexp(t, `: 3 of 3 layers sent, 5[0-9.]+ MB \(all layers: 5[0-9.]+ MB\)`, first, "a server with nothing: the whole image")
	second := deployed(buildApp("2"))
	require.Regexp(t, `: 1 of 3 layers sent, [0-9.]+ kB \(all layers: 5[0-9.]+ MB\)`, second, "the base is there: the one-line layer")
	t.Logf("first deploy: %ssecond deploy: %s", first, second)
}
