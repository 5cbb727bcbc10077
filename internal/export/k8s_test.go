package export

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/handoff-dev/handoff/internal/compose"
	"github.com/handoff-dev/handoff/internal/config"
	"github.com/handoff-dev/handoff/internal/deploy"
)

var update = flag.Bool("update", false, "rewrite testdata/*.yaml from the output")

// The values of the test environments: none may appear in a manifest
// written without IncludeSecrets.
var secretValues = []string{"s3cret-in-env-file", "in-compose-environment", "info", "prod"}

// fromFile reads testdata/<name>/handoff.yml as handoff deploy would.
func fromFile(t *testing.T, name string) config.Settings {
	t.Helper()
	f, err := config.Load(filepath.Join("testdata", name, "handoff.yml"))
	require.NoError(t, err)
	s, err := config.Resolve(f, config.Overrides{})
	require.NoError(t, err)
	return s
}

// fromCompose reads the web service of testdata/compose, with its x-handoff.
func fromCompose(t *testing.T) config.Settings {
	t.Helper()
	p, err := compose.Load(context.Background(), compose.Options{Files: []string{filepath.Join("testdata", "compose", "compose.yaml")}})
	require.NoError(t, err)
	tg, err := compose.Resolve(p, "web", config.Overrides{}, compose.Tool{Hash: "h", Version: "2.40.0"})
	require.NoError(t, err)
	return tg.Settings
}

var cases = []struct {
	name     string
	settings func(t *testing.T) config.Settings
}{
	{"http", func(t *testing.T) config.Settings { return fromFile(t, "http") }},
	{"tcp", func(t *testing.T) config.Settings { return fromFile(t, "tcp") }},
	{"exec", func(t *testing.T) config.Settings { return fromFile(t, "exec") }},
	{"compose", fromCompose},
}

// golden is what a case writes: each file under its name, then the
// lines for stderr, as one YAML stream.
func golden(m K8sManifests) []byte {
	var b bytes.Buffer
	for i, f := range m.Files {
		if i > 0 {
			b.WriteString("---\n")
		}
		b.WriteString("# ==> " + f.Name + "\n")
		b.Write(f.Data)
	}
	for _, l := range m.NotExported {
		b.WriteString("# stderr: " + l + "\n")
	}
	return b.Bytes()
}

func TestK8sGolden(t *testing.T) {
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m, err := K8s(c.settings(t), K8sOptions{Version: "v1.2.3"})
			require.NoError(t, err)
			got := golden(m)
			path := filepath.Join("testdata", c.name+".yaml")
			if *update {
				require.NoError(t, os.WriteFile(path, got, 0o644))
			}
			want, err := os.ReadFile(path)
			require.NoError(t, err)
			require.Equal(t, string(want), string(got), "go test ./internal/export -update rewrites %s", path)
		})
	}
}

// documents parses every file back as YAML.
func documents(t *testing.T, m K8sManifests) map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]any{}
	for _, f := range m.Files {
		dec := yaml.NewDecoder(bytes.NewReader(f.Data))
		for {
			var doc map[string]any
			err := dec.Decode(&doc)
			if errors.Is(err, io.EOF) {
				break
			}
			require.NoError(t, err, f.Name)
			kind, _ := doc["kind"].(string)
			require.NotContains(t, out, kind, "one %s", kind)
			out[kind] = doc
		}
	}
	return out
}

// at walks a parsed document by keys and list indexes.
func at(t *testing.T, v any, path ...any) any {
	t.Helper()
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			require.True(t, ok, "%v: not a mapping at %q", path, k)
			v = m[k]
		case int:
			l, ok := v.([]any)
			require.True(t, ok && len(l) > k, "%v: no item %d", path, k)
			v = l[k]
		}
	}
	return v
}

func matches(selector, labels any) bool {
	sel, _ := selector.(map[string]any)
	lab, _ := labels.(map[string]any)
	for k, v := range sel {
		if lab[k] != v {
			return false
		}
	}
	return len(sel) > 0
}

// The rollout's promises, whatever the case: a new pod is ready before an
// old one goes, a terminating pod outlives its endpoint and its drain, the
// Service and the budget count the server's pods and never the Job's, and
// no environment value is written without --include-secrets.
func TestK8sInvariants(t *testing.T) {
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := c.settings(t)
			m, err := K8s(s, K8sOptions{Version: "v1.2.3"})
			require.NoError(t, err)
			docs := documents(t, m)
			d := docs["Deployment"]
			require.NotNil(t, d)
			require.Equal(t, 0, at(t, d, "spec", "strategy", "rollingUpdate", "maxUnavailable"))
			require.Equal(t, 1, at(t, d, "spec", "strategy", "rollingUpdate", "maxSurge"))
			require.Equal(t, max(1, s.Service.Replicas), at(t, d, "spec", "replicas"))
			pod := at(t, d, "spec", "template", "spec")
			ctr := at(t, pod, "containers", 0)
			require.NotNil(t, at(t, ctr, "readinessProbe"), "a readiness probe")
			preStop := at(t, ctr, "lifecycle", "preStop", "sleep", "seconds").(int)
			require.GreaterOrEqual(t, preStop, 5)
			drain := int(s.Service.WithDefaults().DrainTimeout.Seconds())
			require.Greater(t, at(t, pod, "terminationGracePeriodSeconds").(int), preStop+drain)
			start := int(s.Service.WithDefaults().Health.StartTimeout.Seconds())
			require.Greater(t, at(t, d, "spec", "progressDeadlineSeconds").(int), start)
			require.Greater(t, at(t, d, "spec", "minReadySeconds").(int), 0)

			podLabels := at(t, d, "spec", "template", "metadata", "labels")
			require.True(t, matches(at(t, d, "spec", "selector", "matchLabels"), podLabels))
			require.True(t, matches(at(t, docs["Service"], "spec", "selector"), podLabels))
			require.Equal(t, s.Service.Port, at(t, docs["Service"], "spec", "ports", 0, "port"))
			require.True(t, matches(at(t, docs["PodDisruptionBudget"], "spec", "selector", "matchLabels"), podLabels))
			require.Equal(t, 1, at(t, docs["PodDisruptionBudget"], "spec", "maxUnavailable"))
			if job := docs["Job"]; job != nil {
				jobLabels := at(t, job, "spec", "template", "metadata", "labels")
				require.False(t, matches(at(t, docs["Service"], "spec", "selector"), jobLabels), "the Service never routes to the release Job")
				require.False(t, matches(at(t, docs["PodDisruptionBudget"], "spec", "selector", "matchLabels"), jobLabels))
				require.Equal(t, 0, at(t, job, "spec", "backoffLimit"))
				name := at(t, job, "metadata", "name").(string)
				require.True(t, strings.HasPrefix(name, s.Service.Name+"-release-") && dns1035(name), name)
				require.Equal(t, m.Files[0].Name, "release/"+s.Service.Name+"-release-job.yaml", "the Job comes first, in a directory of its own")
				require.Equal(t, name, m.ReleaseJob)
			}
			require.NotContains(t, docs, "Secret")
			for _, f := range m.Files {
				require.Empty(t, leaks(t, f.Data, secretValues), "%s writes a value of the environment", f.Name)
			}
		})
	}
}

// leaks are the values found in data: in any scalar of its YAML (a key, a
// mapping's value, a list item, quoted or not), or anywhere in its text
// for a value too long to be a word of the comments.
func leaks(t *testing.T, data []byte, values []string) []string {
	t.Helper()
	var found []string
	var walk func(n *yaml.Node)
	walk = func(n *yaml.Node) {
		if n.Kind == yaml.ScalarNode {
			for _, v := range values {
				if strings.Contains(n.Value, v) {
					found = append(found, n.Value)
				}
			}
		}
		for _, c := range n.Content {
			walk(c)
		}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		walk(&doc)
	}
	for _, v := range values {
		if len(v) > 8 && bytes.Contains(data, []byte(v)) {
			found = append(found, v)
		}
	}
	return found
}

func TestLeaks(t *testing.T) {
	values := []string{"info", "s3cret-in-env-file"}
	require.Empty(t, leaks(t, []byte("# the log level is info\nlevel: debug\n"), values))
	for _, doc := range []string{
		"level: info\n",
		"args:\n  - info\n",
		"args: [\"--level\", \"info\"]\n",
		"level: 'info'\n",
		"url: \"postgres://api:s3cret-in-env-file@db\"\n",
		"# s3cret-in-env-file\nkind: Job\n",
	} {
		require.NotEmpty(t, leaks(t, []byte(doc), values), doc)
	}
}

func TestK8sIncludeSecrets(t *testing.T) {
	s := fromFile(t, "http")
	m, err := K8s(s, K8sOptions{Version: "v1.2.3", IncludeSecrets: true})
	require.NoError(t, err)
	docs := documents(t, m)
	sec := docs["Secret"]
	require.Equal(t, "api-env", at(t, sec, "metadata", "name"))
	require.Equal(t, "postgres://api:s3cret-in-env-file@db/api", at(t, sec, "stringData", "DATABASE_URL"))
	require.Equal(t, "info", at(t, sec, "stringData", "LOG_LEVEL"))
	for _, f := range m.Files {
		require.Equal(t, f.Name == "api-secret.yaml", f.Secret, f.Name)
	}
	ref := at(t, docs["Deployment"], "spec", "template", "spec", "containers", 0, "env", 0, "valueFrom", "secretKeyRef")
	require.Equal(t, map[string]any{"name": "api-env", "key": "DATABASE_URL"}, ref)
}

// The steps are written in the order they must run: the Secret the Job
// reads, the Job to completion, then the rest; rollout status is left to
// its progress deadline (a --timeout of that deadline fails a healthy
// rollout of several pods, each with a deadline of its own).
func TestK8sSteps(t *testing.T) {
	for _, include := range []bool{false, true} {
		m, err := K8s(fromFile(t, "http"), K8sOptions{Version: "v1.2.3", IncludeSecrets: include})
		require.NoError(t, err)
		var names []string
		var dep string
		for _, f := range m.Files {
			names = append(names, f.Name)
			if f.Name == "api-deployment.yaml" {
				dep = string(f.Data)
			}
		}
		want := []string{"release/api-release-job.yaml", "api-deployment.yaml", "api-service.yaml", "api-pdb.yaml"}
		secret := "kubectl create secret generic api-env"
		if include {
			want = append([]string{"api-secret.yaml"}, want...)
			secret = "kubectl apply -f DIR/api-secret.yaml"
		}
		require.Equal(t, want, names)
		steps := []string{secret, "kubectl apply -f DIR/release/", "kubectl wait --for=condition=complete job/" + m.ReleaseJob, "kubectl apply -f DIR\n", "kubectl rollout status deployment/api\n"}
		last := -1
		for _, step := range steps {
			i := strings.Index(dep, step)
			require.Greater(t, i, last, "%q after the step before it in:\n%s", step, dep)
			last = i
		}
		require.NotContains(t, dep, "rollout status deployment/api --timeout")
		job := string(m.Files[len(want)-4].Data)
		require.Contains(t, job, secret, "the Job's header says the Secret comes first")
	}
}

// The pods read the environment from a Secret, and a changed Secret
// restarts no pod: a hash of the keys and values in the pod template does,
// and the values stay out of it.
func TestK8sEnvHashRollsThePods(t *testing.T) {
	envHash := func(env []string) string {
		s := fromFile(t, "http")
		s.Service.Env = env
		m, err := K8s(s, K8sOptions{})
		require.NoError(t, err)
		annotations, _ := at(t, documents(t, m)["Deployment"], "spec", "template", "metadata", "annotations").(map[string]any)
		h, _ := annotations[EnvHashAnnotation].(string)
		return h
	}
	a := envHash([]string{"TOKEN=one", "LOG_LEVEL=info"})
	require.Len(t, a, 16)
	require.Equal(t, a, envHash([]string{"TOKEN=one", "LOG_LEVEL=info"}))
	require.NotEqual(t, a, envHash([]string{"TOKEN=two", "LOG_LEVEL=info"}), "a value changed")
	require.NotEqual(t, a, envHash([]string{"TOKEN=one", "LOG_LEVEL=info", "EXTRA=1"}), "a key added")
	require.Empty(t, envHash(nil), "no environment, no annotation")
}

func TestK8sRefuses(t *testing.T) {
	base := func() config.Settings { return fromFile(t, "tcp") }
	cases := []struct {
		name   string
		change func(*config.Settings)
		says   string
	}{
		{"build only", func(s *config.Settings) {
			s.Service.Build = &deploy.BuildSpec{Context: "."}
			s.Service.Image = s.Service.Name + ":latest"
		}, "push the image there and pass --image"},
		{"compose build only", func(s *config.Settings) {
			s.Service.Build = &deploy.BuildSpec{Context: "."}
			s.Service.Image = s.Service.Name
		}, "push the image there and pass --image"},
		{"name", func(s *config.Settings) { s.Service.Name = "Cache_Front" }, "cannot name a Kubernetes Service (at most 63 lowercase letters, digits and '-', starting with a letter): pass --service"},
		{"compose name", func(s *config.Settings) { s.Service.Name, s.Compose = "shop-my_web", true }, "rename the service in the compose file, or pass -p for a project name that makes one"},
		{"no port", func(s *config.Settings) { s.Service.Port = 0 }, "no port for service cache-front"},
		{"shell check", func(s *config.Settings) {
			s.Service.Health.Kind = deploy.HealthDocker
			s.Service.Check = &deploy.DockerCheck{Test: []string{"CMD-SHELL"}}
		}, "healthcheck test"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := base()
			c.change(&s)
			_, err := K8s(s, K8sOptions{})
			require.ErrorIs(t, err, deploy.ErrConfig)
			require.Contains(t, err.Error(), c.says)
			require.NotContains(t, err.Error(), "\n")
		})
	}
}

// A service built here but tagged for a registry is exported: it is the
// image's name the cluster pulls.
func TestK8sBuiltAndNamed(t *testing.T) {
	s := fromFile(t, "tcp")
	s.Service.Build = &deploy.BuildSpec{Context: "."}
	_, err := K8s(s, K8sOptions{})
	require.NoError(t, err)
}

// A worker (no route) gets no Service and no probe it cannot pass; a
// stop-first one never runs twice.
func TestK8sWorker(t *testing.T) {
	s := fromFile(t, "tcp")
	s.Service.Rollout, s.Service.Port, s.Service.Health = deploy.RolloutStopFirst, 0, deploy.HealthCheck{}
	s.Caddy.Route = ""
	m, err := K8s(s, K8sOptions{})
	require.NoError(t, err)
	docs := documents(t, m)
	require.NotContains(t, docs, "Service")
	require.Equal(t, "Recreate", at(t, docs["Deployment"], "spec", "strategy", "type"))
	ctr := at(t, docs["Deployment"], "spec", "template", "spec", "containers", 0).(map[string]any)
	require.NotContains(t, ctr, "readinessProbe")
	require.NotContains(t, ctr, "lifecycle")
}

// A worker with a port is checked as deploy checks it: tcp connects to the
// port, http GETs the path on it; either needs the named port declared.
func TestK8sWorkerChecks(t *testing.T) {
	cases := []struct {
		name   string
		health deploy.HealthCheck
		probe  map[string]any
	}{
		{"tcp", deploy.HealthCheck{Kind: deploy.HealthTCP}, map[string]any{"port": "http"}},
		{"http", deploy.HealthCheck{Kind: deploy.HealthHTTP, Path: "/ready"}, map[string]any{"path": "/ready", "port": "http"}},
		{"auto", deploy.HealthCheck{Path: "/ready"}, map[string]any{"path": "/ready", "port": "http"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := fromFile(t, "tcp")
			s.Service.Rollout, s.Service.Health = deploy.RolloutStartFirst, c.health
			s.Caddy.Route = ""
			m, err := K8s(s, K8sOptions{})
			require.NoError(t, err)
			ctr := at(t, documents(t, m)["Deployment"], "spec", "template", "spec", "containers", 0)
			action := map[string]string{"tcp": "tcpSocket", "http": "httpGet", "auto": "httpGet"}[c.name]
			require.Equal(t, c.probe, at(t, ctr, "readinessProbe", action))
			require.Equal(t, "http", at(t, ctr, "ports", 0, "name"), "the probe's named port is declared")
			require.Equal(t, 9000, at(t, ctr, "ports", 0, "containerPort"))
		})
	}
}

// A routed service judged by running alone still gets a probe: without
// one a pod is ready, and sent requests, the moment it starts.
func TestK8sRoutedRunning(t *testing.T) {
	s := fromFile(t, "tcp")
	s.Service.Health = deploy.HealthCheck{Kind: deploy.HealthRunning}
	m, err := K8s(s, K8sOptions{})
	require.NoError(t, err)
	ctr := at(t, documents(t, m)["Deployment"], "spec", "template", "spec", "containers", 0)
	require.Equal(t, map[string]any{"port": "http"}, at(t, ctr, "readinessProbe", "tcpSocket"))
}

func TestGenerated(t *testing.T) {
	m, err := K8s(fromFile(t, "http"), K8sOptions{Version: "v1.2.3"})
	require.NoError(t, err)
	for _, f := range m.Files {
		require.True(t, Generated(f.Data, "api"), f.Name)
		require.False(t, Generated(f.Data, "ap"), f.Name)
	}
	require.False(t, Generated([]byte("# Generated by handoff v1 (handoff export k8s) for service api-worker.\n"), "api"))
	require.False(t, Generated([]byte("kind: Ingress\n# Generated by handoff v1 (handoff export k8s) for service api.\n"), "api"))
	require.False(t, Generated(nil, "api"))
}

func TestReleaseJobName(t *testing.T) {
	a := ReleaseJobName("api", []byte("spec 1"))
	require.Equal(t, a, ReleaseJobName("api", []byte("spec 1")))
	require.NotEqual(t, a, ReleaseJobName("api", []byte("spec 2")))
	require.True(t, strings.HasPrefix(a, "api-release-"))
	long := ReleaseJobName(strings.Repeat("a", 60)+"-b", []byte("spec 1"))
	require.LessOrEqual(t, len(long), 63)
	require.True(t, dns1035(long), long)
}

// A Job's template cannot be changed once it exists (kubectl apply fails
// 422): whatever changes the template, with the same image, names a new
// Job; the same settings name the same Job.
func TestK8sReleaseJobNameFollowsItsTemplate(t *testing.T) {
	jobName := func(change func(*deploy.Service)) string {
		s := fromFile(t, "http")
		change(&s.Service)
		m, err := K8s(s, K8sOptions{})
		require.NoError(t, err)
		return at(t, documents(t, m)["Job"], "metadata", "name").(string)
	}
	same := jobName(func(*deploy.Service) {})
	require.Equal(t, same, jobName(func(*deploy.Service) {}))
	for name, change := range map[string]func(*deploy.Service){
		"command": func(s *deploy.Service) { s.Release.Command = []string{"./api", "migrate", "--dry-run"} },
		"env":     func(s *deploy.Service) { s.Env = append(s.Env, "EXTRA=1") },
		"limits":  func(s *deploy.Service) { s.Memory = 1 << 30 },
		"timeout": func(s *deploy.Service) { s.Release.Timeout = time.Hour },
		"image":   func(s *deploy.Service) { s.Image = "registry.example.com/team/api:1.4.3" },
	} {
		require.NotEqual(t, same, jobName(change), name)
	}
}
