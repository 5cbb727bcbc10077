package cli

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/compose"
	"github.com/handoff-dev/handoff/internal/remote"
)

// parsed finds the command args name and parses its flags, as Execute does before it
// runs the command.
func parsed(t *testing.T, args ...string) (*cobra.Command, []string) {
	t.Helper()
	root := NewRoot(&IO{Out: io.Discard, Err: io.Discard})
	cmd, rest, err := root.Find(args)
	require.NoError(t, err)
	require.NoError(t, cmd.ParseFlags(rest))
	return cmd, cmd.Flags().Args()
}

func TestRemoteArgsAreTheCommandWithHostLocal(t *testing.T) {
	cases := []struct {
		args []string
		want []string
	}{
		{[]string{"deploy", "--host", "ssh://a", "-f", "x.yml", "--env-file", "a.env", "--env-file", "b.env", "--verify=strict", "https://x.example/"},
			[]string{"deploy", "--host=local", "--env-file=a.env", "--env-file=b.env", "--file=x.yml", "--verify=strict", "https://x.example/"}},
		{[]string{"--host=ssh://a", "deploy", "--verify"}, []string{"deploy", "--host=local", "--verify=on"}},
		{[]string{"status", "--json", "--state-dir", "/srv/state"}, []string{"status", "--host=local", "--json=true", "--state-dir=/srv/state"}},
		{[]string{"canary", "promote", "--service", "web"}, []string{"canary", "--host=local", "--service=web", "promote"}},
		{[]string{"proxy", "status", "--json"}, []string{"proxy", "status", "--host=local", "--json=true"}},
		{[]string{"deploy", "--drain-timeout", "1m30s", "--replicas", "3"}, []string{"deploy", "--host=local", "--drain-timeout=1m30s", "--replicas=3"}},
		{[]string{"deploy", "--host", "ssh://a", "--", "-odd"}, []string{"deploy", "--host=local", "--", "-odd"}},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			cmd, args := parsed(t, c.args...)
			require.Equal(t, c.want, remoteArgs(cmd, args))
		})
	}
}

func TestHostIsTheFlagThenTheEnvironmentThenHandoffYml(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "handoff.yml"), []byte("service: web\nimage: app\nhost: ssh://deploy@file.example\n"), 0o644))
	host := func(args ...string) string {
		t.Helper()
		c := &common{io: &IO{Out: io.Discard, Err: io.Discard}}
		root := newTree(c)
		cmd, rest, err := root.Find(args)
		require.NoError(t, err)
		require.NoError(t, cmd.ParseFlags(rest))
		return c.hostSetting(cmd, dir)
	}
	t.Setenv(envHost, "")
	require.Equal(t, "ssh://deploy@file.example", host("status"))
	t.Setenv(envHost, "ssh://env.example")
	require.Equal(t, "ssh://env.example", host("status"))
	require.Equal(t, "ssh://flag.example", host("status", "--host", "ssh://flag.example"))
	require.Equal(t, "local", host("status", "--host", "local"))
	t.Setenv(envHost, "")
	require.Equal(t, "", host("status", "-f", filepath.Join(dir, "missing.yml")))
}

// newTree is NewRoot's tree with c as its common, without the hook that would run a
// command elsewhere.
func newTree(c *common) *cobra.Command {
	root := &cobra.Command{Use: "handoff"}
	f := root.PersistentFlags()
	f.StringArrayVarP(&c.files, "file", "f", nil, "")
	f.StringVar(&c.host, "host", "", "")
	root.AddCommand(&cobra.Command{Use: "status", RunE: func(*cobra.Command, []string) error { return nil }})
	return root
}

func TestProbeAndWhetherTheServersBinaryIsThisBuild(t *testing.T) {
	release := versionInfo{Version: "v1.4.0", Commit: "abc123"}
	dirty := versionInfo{Version: "v0.0.0-20261203-abc123+dirty", Commit: "abc123"}
	p := parseProbe("Linux x86_64\n{\"version\":\"v1.4.0\",\"commit\":\"abc123\",\"date\":\"x\"}\nfeedbeef\n")
	require.Equal(t, "linux", p.OS)
	require.Equal(t, "amd64", p.Arch)
	require.Equal(t, "feedbeef", p.Sum)
	require.Equal(t, &versionInfo{Version: "v1.4.0", Commit: "abc123", Date: "x"}, p.Version)
	require.Equal(t, "arm64", parseProbe("Linux aarch64\n").Arch)
	require.Nil(t, parseProbe("Linux aarch64\n").Version, "no binary there")
	require.Nil(t, parseProbe("Linux x86_64\nError: unknown flag: --host\n\n").Version, "an old binary that cannot say")
	require.Equal(t, "", parseProbe("Linux riscv64\n").Arch)

	cases := []struct {
		name   string
		local  versionInfo
		server probe
		srcSum string
		want   bool
	}{
		{"a release build of the same version and commit", release, p, "", true},
		{"another version", versionInfo{Version: "v1.5.0", Commit: "abc123"}, p, "", false},
		{"another commit", versionInfo{Version: "v1.4.0", Commit: "def456"}, p, "", false},
		{"none there", release, probe{OS: "linux", Arch: "amd64"}, "", false},
		{"a dirty build with other bytes", dirty, probe{Version: &dirty, Sum: "aaaa"}, "bbbb", false},
		{"a dirty build with the same bytes", dirty, probe{Version: &dirty, Sum: "aaaa"}, "aaaa", true},
		{"a dirty build with nothing here to compare", dirty, probe{Version: &dirty, Sum: "aaaa"}, "", true},
		{"an unknown commit with other bytes", versionInfo{Version: "(devel)", Commit: unknown}, probe{Version: &versionInfo{Version: "(devel)", Commit: unknown}, Sum: "a"}, "b", false},
	}
	for _, c := range cases {
		require.Equal(t, c.want, sameBuild(c.local, c.server, c.srcSum), c.name)
	}
	require.True(t, exact(release))
	require.False(t, exact(dirty))
	require.True(t, exact(versionInfo{Version: "v0.3.0", Commit: unknown}), "go install …@v0.3.0: the module's version names it")
	require.False(t, exact(versionInfo{Version: "(devel)", Commit: unknown}))
}

func TestBinaryToPutOnTheServer(t *testing.T) {
	v := versionInfo{Version: "v1.4.0", Commit: "abc123"}
	dist := t.TempDir()
	builds := map[string]versionInfo{filepath.Join(dist, "linux_arm64", "handoff"): v}
	src := binarySource{exe: "/usr/local/bin/handoff", distDirs: []string{dist}, version: func(p string) (versionInfo, error) {
		if bv, ok := builds[p]; ok {
			return bv, nil
		}
		return versionInfo{}, fs.ErrNotExist
	}}
	amd64 := probe{OS: "linux", Arch: "amd64", Machine: "Linux x86_64"}
	arm64 := probe{OS: "linux", Arch: "arm64", Machine: "Linux aarch64"}

	linux := src
	linux.goos, linux.goarch = "linux", "amd64"
	got, err := linux.find(v, amd64)
	require.NoError(t, err)
	require.Equal(t, "/usr/local/bin/handoff", got, "this very binary when it runs there")

	got, err = linux.find(v, arm64)
	require.NoError(t, err)
	require.Equal(t, filepath.Join(dist, "linux_arm64", "handoff"), got, "another arch: the release build of this version")

	mac := src
	mac.goos, mac.goarch = "darwin", "arm64"
	_, err = mac.find(v, amd64)
	require.ErrorContains(t, err, "make release-snapshot TARGETS=linux/amd64")
	require.NotContains(t, err.Error(), "\n")

	_, err = mac.find(versionInfo{Version: "v1.5.0", Commit: "def"}, arm64)
	require.Error(t, err, "a dist build of another version is not taken")

	_, err = linux.find(v, probe{OS: "darwin", Arch: "arm64", Machine: "Darwin arm64"})
	require.ErrorContains(t, err, `the server is "Darwin arm64"`)
	_, err = linux.find(v, probe{OS: "linux", Machine: "Linux riscv64"})
	require.ErrorContains(t, err, "amd64 and arm64")
}

func TestLdflagsX(t *testing.T) {
	const pkg = "github.com/handoff-dev/handoff/internal/cli."
	x := ldflagsX("-s -w -X " + pkg + "Version=v1.4.0 -X=" + pkg + "Commit=abc -X '" + pkg + "Date=2026-12-03T10:00:00Z'")
	require.Equal(t, map[string]string{pkg + "Version": "v1.4.0", pkg + "Commit": "abc", pkg + "Date": "2026-12-03T10:00:00Z"}, x)
}

// The version of a binary file is read as that binary would print it: this test's own
// binary has no -X settings, so it says what its toolchain recorded.
func TestFileVersionOfAGoBinary(t *testing.T) {
	exe, err := os.Executable()
	require.NoError(t, err)
	v, err := fileVersion(exe)
	require.NoError(t, err)
	require.NotEmpty(t, v.Version)
	_, err = fileVersion(filepath.Join(t.TempDir(), "none"))
	require.Error(t, err)
}

// A release build records no -ldflags (it is built with -trimpath): its
// version is the version.json tools/release writes beside it.
func TestFileVersionOfAReleaseBuildIsTheStampBesideIt(t *testing.T) {
	exe, err := os.Executable()
	require.NoError(t, err)
	data, err := os.ReadFile(exe)
	require.NoError(t, err)
	dir := filepath.Join(t.TempDir(), "linux_arm64")
	write(t, filepath.Join(dir, "version.json"), `{"version":"v1.2.3","commit":"0123456789abcdef0123456789abcdef01234567","date":"2026-12-03T10:00:00Z"}`+"\n")
	require.NoError(t, os.WriteFile(filepath.Join(dir, "handoff"), data, 0o755))
	v, err := fileVersion(filepath.Join(dir, "handoff"))
	require.NoError(t, err)
	require.Equal(t, versionInfo{Version: "v1.2.3", Commit: "0123456789abcdef0123456789abcdef01234567", Date: "2026-12-03T10:00:00Z"}, v)
}

func write(t *testing.T, path, text string) {
	t.Helper()
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(t, os.WriteFile(path, []byte(text), 0o600))
}

func TestFilesACommandReadsAndWhereTheyGoOnTheServer(t *testing.T) {
	top := t.TempDir()
	app := filepath.Join(top, "app")
	write(t, filepath.Join(app, "handoff.yml"), "service: web\nimage: app\nenv_file: [secret.env, ../shared/common.env, /etc/app/server.env, missing.env]\ncaddy:\n  caddyfile: /etc/caddy/Caddyfile\n")
	write(t, filepath.Join(app, "secret.env"), "TOKEN=x\n")
	write(t, filepath.Join(top, "shared", "common.env"), "A=b\n")
	write(t, filepath.Join(app, "build.env"), "B=c\n")

	c := &common{compose: compose.Options{EnvFiles: []string{"build.env"}}}
	files := c.commandFiles(app)
	require.Equal(t, []localFile{
		{Path: filepath.Join(app, "build.env"), Secret: true},
		{Path: filepath.Join(app, "handoff.yml")},
		{Path: filepath.Join(app, "secret.env"), Secret: true},
		{Path: filepath.Join(top, "shared", "common.env"), Secret: true},
	}, files, "absolute paths are the server's, missing files are the server's handoff's to report")

	l := newWorkLayout(app, files)
	require.Equal(t, top, l.root, "the deepest directory that holds them all")
	require.Equal(t, "app", l.cwd)
	require.Equal(t, "app/handoff.yml", l.remote(filepath.Join(app, "handoff.yml")))
	require.Equal(t, "shared/common.env", l.remote(filepath.Join(top, "shared", "common.env")), "../shared/common.env from app/ is still that")
	require.Equal(t, "web", c.workName(app))

	only := newWorkLayout(app, []localFile{{Path: filepath.Join(app, "handoff.yml")}})
	require.Equal(t, app, only.root)
	require.Equal(t, ".", only.cwd)
}

func TestFilesOfAComposeProject(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "compose.yaml"), "services:\n  web:\n    image: app\n    env_file: web.env\n  worker:\n    image: app\n    env_file:\n      - path: worker.env\n        required: false\n      - common.env\n")
	write(t, filepath.Join(dir, "compose.prod.yaml"), "services:\n  web:\n    image: app:prod\n")
	for _, f := range []string{"web.env", "worker.env", "common.env", ".env"} {
		write(t, filepath.Join(dir, f), "A=b\n")
	}
	c := &common{files: []string{"compose.yaml", "compose.prod.yaml"}, compose: compose.Options{Name: "shop"}}
	var got []string
	for _, f := range c.commandFiles(dir) {
		rel, _ := filepath.Rel(dir, f.Path)
		if f.Secret {
			rel += " (secret)"
		}
		got = append(got, rel)
	}
	require.ElementsMatch(t, []string{"compose.yaml", "compose.prod.yaml", "web.env (secret)", "worker.env (secret)", "common.env (secret)", ".env (secret)"}, got)
	require.Equal(t, "shop", c.workName(dir))
}

// fakeServer answers a hostRun's commands as a script of the test says.
type fakeServer struct {
	mu   sync.Mutex
	cmds []string
	run  func(ctx context.Context, cmd string, stdout, stderr io.Writer) (int, error)
	done chan struct{}
}

func (f *fakeServer) Run(ctx context.Context, cmd string, _ io.Reader, stdout, stderr io.Writer) (int, error) {
	f.mu.Lock()
	f.cmds = append(f.cmds, cmd)
	f.mu.Unlock()
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	return f.run(ctx, cmd, stdout, stderr)
}
func (f *fakeServer) Upload(context.Context, io.Reader, string, fs.FileMode) error { return nil }
func (f *fakeServer) Done() <-chan struct{}                                        { return f.done }
func (f *fakeServer) Close() error                                                 { return nil }
func (f *fakeServer) String() string                                               { return "root@server:22" }

// Ctrl-C here interrupts the server's handoff by its pid, from another command, and the
// local side then streams how it ended and exits with its status.
func TestInterruptIsPassedOnAndTheEndStreamed(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	follows := 0
	srv := &fakeServer{done: make(chan struct{})}
	srv.run = func(rctx context.Context, cmd string, stdout, stderr io.Writer) (int, error) {
		switch {
		case cmd == "start":
			follows++
			io.WriteString(stdout, "{")
			io.WriteString(stderr, "health  start\n")
			cancel() // Ctrl-C while it waits
			<-rctx.Done()
			return -1, rctx.Err()
		case strings.Contains(cmd, " follow "):
			follows++
			io.WriteString(stdout, "}")
			io.WriteString(stderr, "health  interrupted\n")
			return 130, nil
		}
		return 0, nil
	}
	var outb, errb bytes.Buffer
	h := &hostRun{common: &common{io: &IO{Out: &outb, Err: &errb}}, target: remote.Target{Host: "server"}, conn: srv}
	code, err := h.follow(ctx, "start", nil, ".cache/handoff/work/web/.handoff-run/1")
	require.NoError(t, err)
	require.Equal(t, 130, code)
	require.Equal(t, 2, follows)
	require.Equal(t, "{}", outb.String())
	require.Equal(t, "health  start\nhealth  interrupted\n", errb.String(), "each line once")
	require.Len(t, srv.cmds, 3, "start, kill, follow again: %q", srv.cmds)
	require.Equal(t, `kill -INT -- -"$(cat .cache/handoff/work/web/.handoff-run/1/pid)"`, srv.cmds[1])
	require.True(t, strings.HasSuffix(srv.cmds[2], " follow .cache/handoff/work/web/.handoff-run/1 1 14"), "from where the stream had got to: %s", srv.cmds[2])
}

// A SIGTERM or SIGHUP here (a CI job cancelled, a terminal closed) is not Ctrl-C: this
// side stops, the server's run is not interrupted, and the message says where to look.
func TestATerminatedFollowerLeavesTheServersRunGoing(t *testing.T) {
	for _, sig := range []os.Signal{syscall.SIGTERM, syscall.SIGHUP} {
		ctx, cancel := context.WithCancel(context.Background())
		srv := &fakeServer{done: make(chan struct{})}
		srv.run = func(rctx context.Context, cmd string, stdout, stderr io.Writer) (int, error) {
			cancel()
			<-rctx.Done()
			return -1, rctx.Err()
		}
		h := &hostRun{common: &common{io: &IO{Out: io.Discard, Err: io.Discard}}, target: remote.Target{User: "root", Host: "server"}, conn: srv, signals: make(chan os.Signal, 1)}
		h.signals <- sig
		_, err := h.follow(ctx, "start", nil, "run")
		require.ErrorIs(t, err, context.Canceled)
		require.ErrorContains(t, err, "the command goes on on the server (only Ctrl-C interrupts it there): see handoff status --host ssh://root@server")
		require.Len(t, srv.cmds, 1, "no kill sent: %q", srv.cmds)
	}
}

// A connection that drops while the command runs there: the command goes on on the
// server, and the local side says where to look.
func TestDroppedConnectionSaysTheCommandGoesOn(t *testing.T) {
	srv := &fakeServer{done: make(chan struct{})}
	srv.run = func(context.Context, string, io.Writer, io.Writer) (int, error) {
		close(srv.done)
		return -1, errors.New("ssh: connection to root@server:22 ended: EOF")
	}
	h := &hostRun{common: &common{io: &IO{Out: io.Discard, Err: io.Discard}}, target: remote.Target{User: "root", Host: "server"}, conn: srv}
	_, err := h.follow(context.Background(), "start", nil, "run")
	require.ErrorContains(t, err, "the command goes on on the server; see handoff status --host ssh://root@server")
	require.NotContains(t, err.Error(), "\n")
}

// The files a command reads travel as a tar on the stdin of the session that starts it,
// named as they are placed there, with the list of the env files among them.
func TestPackFiles(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "handoff.yml"), "service: web\n")
	write(t, filepath.Join(dir, "conf", "app.env"), "TOKEN=s3cret\n")
	l := newWorkLayout(dir, nil)
	r, err := packFiles(l, []localFile{{Path: filepath.Join(dir, "handoff.yml")}, {Path: filepath.Join(dir, "conf", "app.env"), Secret: true}})
	require.NoError(t, err)
	tr := tar.NewReader(r)
	got := map[string]string{}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		require.Equal(t, int64(0o600), hdr.Mode, hdr.Name)
		data, err := io.ReadAll(tr)
		require.NoError(t, err)
		got[hdr.Name] = string(data)
	}
	require.Equal(t, map[string]string{"handoff.yml": "service: web\n", "conf/app.env": "TOKEN=s3cret\n", secretsEntry: "conf/app.env\n"}, got)
}

// init through --host prints what it would write, to be saved here; --write would write it
// into the server's working directory, so it is refused before anything connects.
func TestInitWriteWithHostIsRefused(t *testing.T) {
	_, stderr, code := run(t, "init", "--write", "--host", "ssh://root@192.0.2.1")
	require.Equal(t, ExitUsage, code)
	require.Equal(t, "handoff: usage: init --write with --host would write handoff.yml on the server: run handoff init --host ssh://root@192.0.2.1 > handoff.yml to write it here\n", stderr)
}

func TestABadHostIsAUsageError(t *testing.T) {
	_, stderr, code := run(t, "status", "--host", "server.example.com")
	require.Equal(t, ExitUsage, code)
	require.Contains(t, stderr, "write ssh://user@server")
	require.Equal(t, 1, strings.Count(stderr, "\n"), stderr)
}

// endScript runs inside a single-quoted sh -c argument of startScript: one quote in it
// would end that argument early.
func TestEndScriptHasNoSingleQuote(t *testing.T) {
	require.NotContains(t, endScript, "'")
}

func TestScriptsAreShell(t *testing.T) {
	for name, script := range map[string]string{"start": startScript, "follow": followScript, "end": endScript} {
		out, err := exec.Command("sh", "-n", "-c", script).CombinedOutput()
		require.NoError(t, err, "%s: %s", name, out)
	}
}

// The env files a run brought are removed when it ends, unless another run of the service
// is under way: one whose process lives, or one too young to have a pid yet.
func TestEnvFilesGoWhenNoOtherRunIsUnderWay(t *testing.T) {
	dead := exec.Command("true")
	require.NoError(t, dead.Run())
	cases := []struct {
		name  string
		other func(dir string) // another run directory
		kept  bool
	}{
		{"no other run", func(string) {}, false},
		{"another ended", func(d string) { write(t, filepath.Join(d, "exit"), "0\n") }, false},
		{"another under way", func(d string) { write(t, filepath.Join(d, "pid"), strconv.Itoa(os.Getpid())+"\n") }, true},
		{"another killed with its server", func(d string) { write(t, filepath.Join(d, "pid"), strconv.Itoa(dead.Process.Pid)+"\n") }, false},
		{"another just starting", func(d string) { require.NoError(t, os.MkdirAll(d, 0o700)) }, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			work := t.TempDir()
			run := filepath.Join(work, ".handoff-run", "1")
			write(t, filepath.Join(work, "conf", "app.env"), "TOKEN=x\n")
			write(t, filepath.Join(run, "exit"), "0\n")
			write(t, filepath.Join(run, "secrets"), "conf/app.env\n")
			c.other(filepath.Join(work, ".handoff-run", "2"))
			out, err := exec.Command("sh", "-c", "run=$1; work=$2\n"+endScript, "end", run, work).CombinedOutput()
			require.NoError(t, err, string(out))
			_, err = os.Stat(filepath.Join(work, "conf", "app.env"))
			if c.kept {
				require.NoError(t, err, "kept for the run under way")
				list, _ := os.ReadFile(filepath.Join(work, ".handoff-run", "secrets"))
				require.Equal(t, "conf/app.env\n", string(list), "handed over to the last run to end")
			} else {
				require.ErrorIs(t, err, os.ErrNotExist)
			}
		})
	}
}

func TestLocalFilesNamedAbsoluteAreNamedFromTheWorkingDirectory(t *testing.T) {
	got := relativePaths([]string{"deploy", "--env-file=/home/u/shared/app.env", "--file=/home/u/app/handoff.yml", "--file=compose.yaml",
		"--project-directory=/home/u/app", "--state-dir=/var/lib/handoff", "--page=/home/u/app/down.html", "--", "--file=/x"}, "/home/u/app")
	require.Equal(t, []string{"deploy", "--env-file=../shared/app.env", "--file=handoff.yml", "--file=compose.yaml",
		"--project-directory=.", "--state-dir=/var/lib/handoff", "--page=down.html", "--", "--file=/x"}, got, "the state dir is the server's; what follows -- is no flag")
}

// maintenance on --page names a local file: it goes to the server with the others.
func TestAMaintenancePageIsSentToTheServer(t *testing.T) {
	root := NewRoot(&IO{Out: io.Discard, Err: io.Discard})
	cmd, _, err := root.Find([]string{"maintenance", "on"})
	require.NoError(t, err)
	require.NoError(t, cmd.Flags().Parse([]string{"--page", "down.html"}))
	require.Equal(t, "/home/u/app/down.html", pageFile(cmd, "/home/u/app"))
	deploy, _, err := root.Find([]string{"deploy"})
	require.NoError(t, err)
	require.Empty(t, pageFile(deploy, "/home/u/app"))
}

// startScript on real directories, with a stand-in for the server's handoff: the files
// an earlier run placed and this one does not bring are gone before it starts (never an
// old copy of a file deleted here), what it places is its user's alone, its env files go
// when it ends, and its output and exit status come back.
func TestAStartOnTheServerPlacesTheseFilesOnly(t *testing.T) {
	local := t.TempDir()
	write(t, filepath.Join(local, "handoff.yml"), "service: web\n")
	write(t, filepath.Join(local, "conf", "app.env"), "TOKEN=s3cret\n")
	tarball, err := packFiles(newWorkLayout(local, nil), []localFile{{Path: filepath.Join(local, "handoff.yml")}, {Path: filepath.Join(local, "conf", "app.env"), Secret: true}})
	require.NoError(t, err)

	work := t.TempDir()
	write(t, filepath.Join(work, "compose.prod.yaml"), "an earlier run's\n")
	write(t, filepath.Join(work, "kept.txt"), "not placed by handoff\n")
	write(t, filepath.Join(work, ".handoff-run", "files"), "./handoff.yml\n./compose.prod.yaml\n")
	bin := filepath.Join(t.TempDir(), "handoff")
	write(t, bin, "#!/bin/sh\nls \"$WORK\"; stat -c %a \"$WORK/handoff.yml\"; echo \"args: $*\" >&2; exit 7\n")
	require.NoError(t, os.Chmod(bin, 0o755))

	cmd := exec.Command("sh", "-c", startScript, "start", work, work, filepath.Join(work, ".handoff-run", "1"), bin, "deploy", "--host=local")
	cmd.Env = append(os.Environ(), "WORK="+work)
	cmd.Stdin = tarball
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit, "stdout %q stderr %q", stdout.String(), stderr.String())
	require.Equal(t, 7, exit.ExitCode(), stderr.String())
	require.Equal(t, "conf\nhandoff.yml\nkept.txt\n600\n", stdout.String(), "compose.prod.yaml, an earlier run's, is gone; the placed file is 0600")
	require.Equal(t, "args: deploy --host=local\n", stderr.String())
	_, err = os.Stat(filepath.Join(work, "conf", "app.env"))
	require.ErrorIs(t, err, os.ErrNotExist, "the env file went when the run ended")
	_, err = os.Stat(filepath.Join(work, ".handoff-run", "1"))
	require.ErrorIs(t, err, os.ErrNotExist, "the run directory went with its end")
	list, err := os.ReadFile(filepath.Join(work, ".handoff-run", "files"))
	require.NoError(t, err)
	require.Equal(t, "./conf/app.env\n./handoff.yml\n", sortLines(string(list)))
}

func sortLines(s string) string {
	lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	slices.Sort(lines)
	return strings.Join(lines, "\n") + "\n"
}

// Older builds of handoff on a server, and half-uploads, go a month after they were put
// there; the build in use stays whatever its age.
func TestOldBuildsOnTheServerGo(t *testing.T) {
	home := t.TempDir()
	dir := filepath.Join(home, serverBinDir)
	old := time.Now().Add(-40 * 24 * time.Hour)
	files := map[string]bool{"handoff-v1.0.0": false, ".handoff-v1.1.0.upload-0a1b2c": false, "handoff-v1.2.0": true, "handoff-v1.3.0": true, "notes.txt": true}
	for name := range files {
		write(t, filepath.Join(dir, name), "x")
		if name != "handoff-v1.2.0" {
			require.NoError(t, os.Chtimes(filepath.Join(dir, name), old, old))
		}
	}
	cmd := exec.Command("sh", "-c", pruneScript(serverBinDir+"/handoff-v1.3.0"))
	cmd.Dir = home
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, string(out))
	for name, kept := range files {
		_, err := os.Stat(filepath.Join(dir, name))
		require.Equal(t, kept, err == nil, name)
	}
}
