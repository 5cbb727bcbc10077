package config

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/deploy"
)

const full = `service: web
image: app:latest
command: gunicorn app.main:app -c "gunicorn conf.py"
port: 8000
env:
  MODE: prod
env_file: app.env
volumes: ["data:/data", "./static:/static:ro"]
restart: unless-stopped
host_ports: 20000-20999
resources: {memory: 512m, cpus: 1.5}
health:
  path: /up
  host: api.example.com
  status: 200-399
  interval: 500ms
  successes: 3
  start_timeout: 5m
drain_timeout: 45s
keep: 5
caddy:
  admin: unix:/run/caddy/admin.sock
  route: api.example.com
  caddyfile: Caddyfile
`

func TestResolveFullFile(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "app.env"), []byte("# comment\nMODE=dev\nSECRET=s3\n"), 0o644))
	path := filepath.Join(dir, "handoff.yml")
	require.NoError(t, os.WriteFile(path, []byte(full), 0o644))
	f, err := Load(path)
	require.NoError(t, err)
	s, err := Resolve(f, Overrides{Image: "app:v2"})
	require.NoError(t, err)
	svc := s.Service
	require.Equal(t, "app:v2", svc.Image, "flags override the file")
	require.Equal(t, []string{"gunicorn", "app.main:app", "-c", "gunicorn conf.py"}, svc.Command)
	require.Equal(t, []string{"MODE=prod", "SECRET=s3"}, svc.Env, "env wins over env_file")
	require.Equal(t, []string{"data:/data", filepath.Join(dir, "static") + ":/static:ro"}, svc.Volumes)
	require.Equal(t, int64(512<<20), svc.Memory)
	require.Equal(t, deploy.PortRange{Low: 20000, High: 20999}, svc.HostPorts)
	require.Equal(t, deploy.HealthCheck{Kind: deploy.HealthHTTP, Path: "/up", Host: "api.example.com", StatusMin: 200, StatusMax: 399,
		Interval: 500 * time.Millisecond, Successes: 3, StartTimeout: 5 * time.Minute}, svc.Health)
	require.Equal(t, 45*time.Second, svc.DrainTimeout)
	require.Equal(t, 5, svc.Keep)
	require.Equal(t, Caddy{Admin: "unix:/run/caddy/admin.sock", Route: "api.example.com", Caddyfile: filepath.Join(dir, "Caddyfile")}, s.Caddy)
}

func TestFlagsAloneSuffice(t *testing.T) {
	s, err := Resolve(File{}, Overrides{Service: "web", Image: "app", Port: 8000, HealthPath: "/health", CaddyRoute: "localhost:8000"})
	require.NoError(t, err)
	require.Equal(t, deploy.HealthHTTP, s.Service.Health.Kind)
	require.Equal(t, "localhost:8000", s.Caddy.Route)
}

func TestBadFilesAreRefusedWithLineAndHint(t *testing.T) {
	cases := map[string]struct{ yml, want string }{
		"unknown top key":   {"service: web\nimgae: x\n", `handoff.yml:2: unknown key "imgae" at the top level; did you mean "image"?`},
		"unknown nested":    {"service: web\nhealth:\n  intervall: 1s\n", `handoff.yml:3: unknown key "intervall" in health; did you mean "interval"?`},
		"unrelated key":     {"zzzzzz: 1\n", `handoff.yml:1: unknown key "zzzzzz" at the top level; known keys: analysis, build, caddy, canary,`},
		"bare number":       {"service: web\ndrain_timeout: 30\n", `handoff.yml:2: "30" is not a duration; write it like 30s`},
		"negative duration": {"service: web\nhealth:\n  timeout: -1s\n", `handoff.yml:3: "-1s" is not a duration`},
		"wrong type":        {"service: web\nport: eighty\n", "handoff.yml:2: cannot unmarshal !!str `eighty` into int"},
		"not a mapping":     {"- a\n- b\n", `handoff.yml:1: expected keys like`},
		"bad yaml":          {"service: [\n", `handoff.yml: `},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Parse("handoff.yml", []byte(c.yml))
			require.ErrorIs(t, err, deploy.ErrConfig)
			require.ErrorContains(t, err, c.want)
		})
	}
}

func TestImpossibleValuesAreRefused(t *testing.T) {
	cases := map[string]struct{ yml, want string }{
		"port":      {"service: web\nport: 70000\n", "handoff.yml:2: port 70000 is not a TCP port"},
		"memory":    {"service: web\nresources:\n  memory: lots\n", `handoff.yml:3: memory "lots"`},
		"restart":   {"service: web\nrestart: sometimes\n", `handoff.yml:2: restart "sometimes"`},
		"status":    {"service: web\nhealth:\n  status: 2yy\n", `handoff.yml:3: health status "2yy"`},
		"type":      {"service: web\nhealth:\n  type: ping\n", `handoff.yml:3: health type "ping"`},
		"cmd":       {"service: web\nhealth:\n  type: cmd\n", "health type cmd needs health.command"},
		"path":      {"service: web\nhealth:\n  path: up\n", `health path "up" must start with /`},
		"keep":      {"service: web\nkeep: 0\n", "handoff.yml:2: keep: 0"},
		"interval":  {"service: web\nhealth:\n  interval: 1m\n  start_timeout: 10s\n", "handoff.yml:3: interval 1m0s is longer than start_timeout"},
		"env_file":  {"service: web\nenv_file: nope.env\n", "handoff.yml:2: env_file nope.env"},
		"noservice": {"image: x\n", "no service name"},
		"hostports": {"service: web\nhost_ports: 30000-20000\n", `handoff.yml:2: host_ports "30000-20000"`},
		"pull":      {"service: web\npull: sometimes\n", `handoff.yml:2: pull "sometimes": use missing`},
		"jobtime":   {"service: web\nrelease_timeout: 1m\n", "handoff.yml:2: release_timeout without release"},
		"jobpause":  {"service: web\nrelease: migrate\nrelease_pause: true\n", "handoff.yml:3: release_pause holds requests with `proxy: handoff` only"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			f, err := Parse("handoff.yml", []byte(c.yml))
			require.NoError(t, err)
			_, err = Resolve(f, Overrides{})
			require.ErrorIs(t, err, deploy.ErrConfig)
			require.ErrorContains(t, err, c.want)
		})
	}
}

func TestReleaseWorkIsRead(t *testing.T) {
	f, err := Parse("/srv/app/handoff.yml", []byte(`service: web
pull: always
release: ./app migrate --yes
release_timeout: 3m
release_pause: true
proxy: handoff
hooks:
  pre_deploy: ./check.sh
  on_failure: curl -d "$HANDOFF_ERROR" https://chat.example/hook
  timeout: 30s
`))
	require.NoError(t, err)
	s, err := Resolve(f, Overrides{Pull: "never"})
	require.NoError(t, err)
	require.Equal(t, deploy.PullNever, s.Service.Pull, "--pull wins over the file")
	require.Equal(t, &deploy.Job{Command: []string{"./app", "migrate", "--yes"}, Timeout: 3 * time.Minute, Pause: true}, s.Service.Release)
	require.Equal(t, deploy.Hooks{PreDeploy: "./check.sh", OnFailure: `curl -d "$HANDOFF_ERROR" https://chat.example/hook`, Dir: "/srv/app", Timeout: 30 * time.Second}, s.Service.Hooks)
	_, err = Resolve(f, Overrides{Pull: "often"})
	require.ErrorContains(t, err, `--pull "often"`)
}

func TestParseStatus(t *testing.T) {
	for in, want := range map[string][2]int{"2xx": {200, 299}, "200": {200, 200}, "200-399": {200, 399}, "3xx": {300, 399}} {
		lo, hi, err := parseStatus(in)
		require.NoError(t, err)
		require.Equal(t, want, [2]int{lo, hi}, in)
	}
	for _, bad := range []string{"", "9xx", "abc", "300-200", "99", "200-700"} {
		_, _, err := parseStatus(bad)
		require.Error(t, err, bad)
	}
}

func TestMissingDefaultFileIsEmpty(t *testing.T) {
	t.Chdir(t.TempDir())
	f, err := Load("")
	require.NoError(t, err)
	require.Equal(t, "", f.Service)
	_, err = Load("other.yml")
	require.ErrorIs(t, err, deploy.ErrConfig)
}

// FuzzParse runs the whole parser (handoff.yml and x-handoff, then the
// flags merged) over any text: it must never panic, and never take more
// than a second, the time a hang is taken for.
func FuzzParse(f *testing.F) {
	f.Add([]byte(full))
	f.Add([]byte("service: web\nhealth: {interval: 1s}\n"))
	f.Add([]byte("port: 8000\nrelease: [sh, -c, './app migrate && ./app seed']\nhealth: &h {path: /up, <<: {timeout: 1s}}\nhooks: {timeout: 5s}\n"))
	f.Add([]byte("service: web\nrestart: on-failure:3\ncommand: ./app serve > /dev/null\n"))
	f.Add([]byte("service: web\nhealth: &h {timeout: 1s, <<: *h}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		parseWithin(t, time.Second, data)
	})
}

// Env files are read as Docker's --env-file reads them: every value is
// literal, so a secret with a $ reaches the app whole, and nothing of it is
// printed.
func TestEnvFileValuesAreLiteralAndNeverPrinted(t *testing.T) {
	dir := t.TempDir()
	env := "# secrets\nDB_PASSWORD=Xy7$k9Lq_secret\nQUOTED=\"kept as written\"\nSPACED=  a b  \nFROM_HOST\nEMPTY=\n"
	require.NoError(t, os.WriteFile(filepath.Join(dir, "app.env"), []byte(env), 0o644))
	t.Setenv("FROM_HOST", "host-value")
	f := File{Service: "web", EnvFile: Words{"app.env"}, path: filepath.Join(dir, "handoff.yml")}

	var s Settings
	printed := captureOutput(t, func() {
		var err error
		s, err = Resolve(f, Overrides{})
		require.NoError(t, err)
	})
	require.Equal(t, []string{"DB_PASSWORD=Xy7$k9Lq_secret", "EMPTY=", "FROM_HOST=host-value", `QUOTED="kept as written"`, "SPACED=  a b  "}, s.Service.Env)
	require.Empty(t, printed, "reading env files prints nothing")
}

// captureOutput runs fn with the process's file descriptors 1 and 2
// captured, so that whatever a library prints, by any logger, is seen.
func captureOutput(t *testing.T, fn func()) string {
	t.Helper()
	r, w, err := os.Pipe()
	require.NoError(t, err)
	saved := [2]int{}
	for i, fd := range []int{1, 2} {
		saved[i], err = syscall.Dup(fd)
		require.NoError(t, err)
		require.NoError(t, syscall.Dup2(int(w.Fd()), fd))
	}
	done := make(chan string)
	go func() {
		b, _ := io.ReadAll(r)
		done <- string(b)
	}()
	defer func() {
		for i, fd := range []int{1, 2} {
			_ = syscall.Dup2(saved[i], fd)
			_ = syscall.Close(saved[i])
		}
	}()
	fn()
	for i, fd := range []int{1, 2} {
		require.NoError(t, syscall.Dup2(saved[i], fd))
	}
	w.Close()
	return <-done
}

// Every command checks the service name before it touches anything: it
// names containers and files under the state directory.
func TestServiceNameIsCheckedByResolve(t *testing.T) {
	for _, name := range []string{"../../x", "a/b", ".hidden", "-web"} {
		_, err := Resolve(File{}, Overrides{Service: name})
		require.ErrorIs(t, err, deploy.ErrConfig, name)
		require.ErrorContains(t, err, "service name")
	}
}

func TestNegativeDurationFlagsAreRefused(t *testing.T) {
	_, err := Resolve(File{Service: "web"}, Overrides{DrainTimeout: -time.Second})
	require.ErrorIs(t, err, deploy.ErrConfig)
	require.ErrorContains(t, err, "--drain-timeout -1s")
}

// Aliases, merge keys and extra documents cannot smuggle keys past the check.
func TestYAMLAliasesMergeKeysAndDocumentsAreChecked(t *testing.T) {
	cases := map[string]struct{ yml, want string }{
		"alias":       {"service: web\nhealth: &h\n  interval: 1s\ncaddy: *h\n", `unknown key "interval" in caddy`},
		"merge":       {"service: web\nhealth:\n  <<: {intervall: 1s}\n", `unknown key "intervall" in health; did you mean "interval"?`},
		"merge alias": {"service: web\nbase: &b {intervall: 1s}\n", `unknown key "base"`},
		"two docs":    {"service: web\n---\nimage: x\n", "handoff.yml:2: a second YAML document (after `---`)"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Parse("handoff.yml", []byte(c.yml))
			require.ErrorIs(t, err, deploy.ErrConfig)
			require.ErrorContains(t, err, c.want)
		})
	}
	f, err := Parse("handoff.yml", []byte("service: web\nhealth: &h\n  interval: 2s\n  <<: {timeout: 1s}\n"))
	require.NoError(t, err, "a merge of known keys is fine")
	require.Equal(t, Duration(time.Second), f.Health.Timeout)
}

func TestEnvFileErrorsDoNotQuoteTheFile(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "bad.env"), []byte("OK=1\n=topsecret\n"), 0o644))
	_, err := Resolve(File{Service: "web", EnvFile: Words{"bad.env"}, path: filepath.Join(dir, "handoff.yml")}, Overrides{})
	require.ErrorIs(t, err, deploy.ErrConfig)
	require.ErrorContains(t, err, "a line starts with '='")
	require.NotContains(t, err.Error(), "topsecret")
}

// A command written as a string is split into words and run without a
// shell: one with a shell operator was cut at it, and the deploy ran only
// its first part.
func TestCommandStringsWithShellOperatorsAreRefused(t *testing.T) {
	cases := map[string]struct{ yml, want string }{
		"release":        {"service: web\nrelease: ./app migrate && ./app seed\n", `handoff.yml:2: a shell operator in a command that no shell runs: "&&" in "./app migrate && ./app seed"; write it as a list, or as [sh, -c, './app migrate && ./app seed']`},
		"command":        {"service: web\ncommand: gunicorn app:app > /var/log/app.log\n", `handoff.yml:2: a shell operator in a command that no shell runs: ">" in`},
		"health.command": {"service: web\nhealth:\n  type: cmd\n  command: curl -f localhost:8000 || exit 1\n", `handoff.yml:4: a shell operator in a command that no shell runs: "||" in`},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Parse("handoff.yml", []byte(c.yml))
			require.ErrorIs(t, err, deploy.ErrConfig)
			require.ErrorContains(t, err, c.want)
		})
	}
	_, err := ParseExtension("compose.yaml: services.web.x-handoff", "/srv", []byte("port: 8000\nrelease: ./app migrate; ./app seed\n"))
	require.ErrorContains(t, err, `compose.yaml: services.web.x-handoff:2: a shell operator in a command that no shell runs: ";" in "./app migrate; ./app seed"`)
	f, err := Parse("handoff.yml", []byte("service: web\nrelease: [sh, -c, './app migrate && ./app seed']\nenv_file: a.env\n"))
	require.NoError(t, err, "the list form is taken as written")
	require.Equal(t, Command{"sh", "-c", "./app migrate && ./app seed"}, f.Release)
}

// A restart policy is checked with everything else, before anything runs:
// Docker refuses a bad one only at container create, after the release job.
func TestRestartPolicyIsParsed(t *testing.T) {
	f, err := Parse("handoff.yml", []byte("service: web\nrestart: on-failure:3\n"))
	require.NoError(t, err)
	s, err := Resolve(f, Overrides{})
	require.NoError(t, err, "on-failure:3 is a policy Docker has")
	require.Equal(t, "on-failure:3", s.Service.Restart)
	for yml, want := range map[string]string{
		"service: web\nrestart: on-failure:x\n": `handoff.yml:2: restart "on-failure:x" (the retry count is a whole number, 0 or more): use no, always, unless-stopped, on-failure or on-failure:N`,
		"service: web\nrestart: always:2\n":     `handoff.yml:2: restart "always:2" (a retry count goes with on-failure only, not always)`,
	} {
		f, err := Parse("handoff.yml", []byte(yml))
		require.NoError(t, err)
		_, err = Resolve(f, Overrides{})
		require.ErrorIs(t, err, deploy.ErrConfig)
		require.ErrorContains(t, err, want)
	}
}

// parseWithin fails t if Parse and Resolve of data take longer than limit:
// a hung parse never returns, so it runs aside and is left behind.
func parseWithin(t testing.TB, limit time.Duration, data []byte) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		parseAll(data)
	}()
	select {
	case <-done:
	case <-time.After(limit):
		t.Fatalf("parsing %d bytes took more than %s:\n%s", len(data), limit, data)
	}
}

// parseAll runs data through the whole parser: as handoff.yml and as an
// x-handoff block, then resolved with the flags.
func parseAll(data []byte) {
	if f, err := Parse("handoff.yml", data); err == nil {
		_, _ = Resolve(f, Overrides{})
	}
	if f, err := ParseExtension("compose.yaml: services.web.x-handoff", ".", data); err == nil {
		_, _ = f.Apply(deploy.Service{Name: "web"}, Overrides{})
	}
}

// Merge keys nested ten deep, nine aliases each, are 621 bytes that the
// key check walked 9^10 times before yaml.v3's own alias limit could apply.
func TestNestedMergeKeysAreCheckedOnce(t *testing.T) {
	var doc strings.Builder
	doc.WriteString("service: web\nlabels:\n  l0: &a0 {timeout: 1s}\n")
	for i := 1; i < 10; i++ {
		fmt.Fprintf(&doc, "  l%d: &a%d {<<: [%s]}\n", i, i, strings.TrimSuffix(strings.Repeat(fmt.Sprintf("*a%d, ", i-1), 9), ", "))
	}
	doc.WriteString("health: {<<: *a9}\n")
	parseWithin(t, 2*time.Second, []byte(doc.String()))
}

// replicas: says how many containers a release runs; a count no release
// could run is refused at its line, as --replicas is.
func TestReplicasAreCounted(t *testing.T) {
	for yml, want := range map[string]int{"service: web\n": 0, "service: web\nreplicas: 1\n": 1, "service: web\nreplicas: 3\n": 3, "service: web\nreplicas: 64\n": 64} {
		f, err := Parse("handoff.yml", []byte(yml))
		require.NoError(t, err, yml)
		s, err := Resolve(f, Overrides{})
		require.NoError(t, err, yml)
		require.Equal(t, want, s.Service.Replicas, yml)
	}
	f, err := Parse("handoff.yml", []byte("service: web\nreplicas: 3\n"))
	require.NoError(t, err)
	s, err := Resolve(f, Overrides{Replicas: 5})
	require.NoError(t, err)
	require.Equal(t, 5, s.Service.Replicas, "the flag wins over the file")

	for yml, want := range map[string]string{
		"service: web\nreplicas: 0\n":      "handoff.yml:2: replicas: 0: a release runs at least 1 container (remove the key for 1)",
		"service: web\nreplicas: -2\n":     "handoff.yml:2: replicas: -2: a release runs at least 1 container",
		"service: web\nreplicas: 65\n":     "handoff.yml:2: replicas: 65: at most 64 containers a release",
		"service: web\nreplicas: two\n":    `handoff.yml:2: replicas "two" is not a whole number; write how many containers a release runs, from 1 to 64`,
		"service: web\nreplicas: 2.5\n":    `handoff.yml:2: replicas "2.5" is not a whole number`,
		"service: web\nreplicas: [1, 2]\n": `handoff.yml:2: replicas "" is not a whole number`,
	} {
		f, err := Parse("handoff.yml", []byte(yml))
		if err == nil {
			_, err = Resolve(f, Overrides{})
		}
		require.ErrorIs(t, err, deploy.ErrConfig, yml)
		require.ErrorContains(t, err, want, yml)
		require.NotContains(t, err.Error(), "\n", "one line")
	}
}

// --replicas is checked as the flag is read, with the same words.
func TestReplicasFlag(t *testing.T) {
	var r ReplicaCount
	require.NoError(t, r.Set("4"))
	require.Equal(t, ReplicaCount(4), r)
	require.Equal(t, "4", r.String())
	require.Equal(t, "int", r.Type())
	for in, want := range map[string]string{
		"0":   "a release runs at least 1 container",
		"-1":  "a release runs at least 1 container",
		"100": "at most 64 containers a release",
		"x":   "not a whole number; write how many containers a release runs, from 1 to 64",
	} {
		require.ErrorContains(t, r.Set(in), want, in)
	}
	_, err := Resolve(File{Service: "web"}, Overrides{Replicas: -3})
	require.ErrorIs(t, err, deploy.ErrConfig)
	require.ErrorContains(t, err, "--replicas -3: a release runs at least 1 container")
}
