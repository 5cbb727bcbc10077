// Package export writes a service's settings as manifests for a platform
// handoff does not drive itself: Kubernetes, whose own Deployment rollout
// does what handoff's procedure does on one host (start beside, wait ready,
// shift traffic, drain, retire), given the right numbers.
package export

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"math"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/handoff-dev/handoff/internal/config"
	"github.com/handoff-dev/handoff/internal/deploy"
)

// Defaults of the Kubernetes manifests, where handoff.yml has no word for them.
const (
	// DefaultPreStop keeps a terminating pod serving while the removal of
	// its endpoint reaches every node's kube-proxy and the Ingress, which
	// happens at the same time as, not before, the pod's shutdown.
	DefaultPreStop = 5 * time.Second
	// DefaultProgressMargin is added to health.start_timeout for the
	// Deployment's progress deadline: scheduling and the image pull, which
	// handoff's start_timeout does not count.
	DefaultProgressMargin = time.Minute
	// DefaultFailureThreshold is how many failed probes in a row take a
	// ready pod out of its Service (handoff judges only a starting release,
	// so it has no setting for it; 3 is Kubernetes' own default).
	DefaultFailureThreshold = 3
)

// Labels of the manifests: the Deployment's pods are the server, the
// release Job's pods are not, so the Service and the PodDisruptionBudget
// never count a migration as a replica.
const (
	LabelName        = "app.kubernetes.io/name"
	LabelComponent   = "app.kubernetes.io/component"
	ComponentServer  = "server"
	ComponentRelease = "release"
	// EnvHashAnnotation on the pod template carries a hash of the
	// environment's keys and values (never the values): the pods read them
	// from a Secret, whose change alone would restart no pod.
	EnvHashAnnotation = "handoff.dev/env-hash"
)

// K8sOptions say how the manifests are written.
type K8sOptions struct {
	Version string // handoff's version, named in every file's header
	// IncludeSecrets writes the environment's values into a Secret
	// manifest; without it the Deployment names the Secret and its keys,
	// and no value is written anywhere.
	IncludeSecrets bool
}

// File is one manifest file.
type File struct {
	// Name is its path under the output directory: <service>-deployment.yaml,
	// and release/<service>-release-job.yaml apart, so that `kubectl apply -f
	// DIR` never starts the Job together with the rollout it must precede.
	Name   string
	Data   []byte
	Secret bool // holds the environment's values: written 0600
}

// K8sManifests are the files of one service, in the order they are applied.
type K8sManifests struct {
	Files []File
	// ReleaseJob names the release Job, "" when there is none: it must run
	// to completion before the rest is applied.
	ReleaseJob string
	// NotExported are what the settings hold that Kubernetes cannot take as
	// it is, one line each: "not exported: …, because …".
	NotExported []string
}

// K8s turns a service's settings (as `handoff deploy` reads them) into a
// Deployment, a Service, a PodDisruptionBudget, the release job as a Job
// when there is one, and the Secret of its environment with IncludeSecrets.
func K8s(set config.Settings, o K8sOptions) (K8sManifests, error) {
	svc := set.Service.WithDefaults()
	if err := exportable(svc, set.Compose); err != nil {
		return K8sManifests{}, err
	}
	m := &manifests{svc: svc, set: set, opts: o}
	m.notExported()
	d, err := m.deployment()
	if err != nil {
		return K8sManifests{}, err
	}
	type part struct {
		kind   string
		header []string
		obj    object
	}
	// In the order they run: the Secret the Job and the pods read, the Job
	// to completion, then the rollout.
	var parts []part
	if m.secretFile() {
		parts = append(parts, part{"secret", m.secretHeader(), m.secret()})
	}
	if svc.Release != nil {
		job, err := m.releaseJob() // before the headers: they name it
		if err != nil {
			return K8sManifests{}, fmt.Errorf("write the release-job of %s: %w", svc.Name, err)
		}
		parts = append(parts, part{ReleaseDir + "/release-job", m.releaseJobHeader(), job})
	}
	parts = append(parts, part{"deployment", m.deploymentHeader(), d})
	if m.routed() {
		parts = append(parts, part{"service", m.header("The Service in front of the Deployment's ready pods."), m.service()})
	}
	parts = append(parts, part{"pdb", m.pdbHeader(), m.pdb()})
	out := K8sManifests{NotExported: m.skipped, ReleaseJob: m.jobName}
	for _, p := range parts {
		data, err := render(p.header, p.obj)
		if err != nil {
			return K8sManifests{}, fmt.Errorf("write the %s of %s: %w", p.kind, svc.Name, err)
		}
		dir, kind := path.Split(p.kind)
		out.Files = append(out.Files, File{Name: dir + svc.Name + "-" + kind + ".yaml", Data: data, Secret: kind == "secret"})
	}
	return out, nil
}

// exportable refuses what no manifest could carry.
func exportable(svc deploy.Service, compose bool) error {
	if err := svc.Validate(); err != nil {
		return err
	}
	if !dns1035(svc.Name) {
		fix := "pass --service with such a name"
		if compose { // named <project>-<service>, and compose ignores --service
			fix = "rename the service in the compose file, or pass -p for a project name that makes one"
		}
		return fmt.Errorf("%w: service name %q cannot name a Kubernetes Service (at most 63 lowercase letters, digits and '-', starting with a letter): %s", deploy.ErrConfig, svc.Name, fix)
	}
	if svc.Build != nil && (svc.Image == svc.Name || svc.Image == svc.Name+":latest") {
		return fmt.Errorf("%w: service %s has build: and no image name: Kubernetes pulls images from a registry; push the image there and pass --image registry.example.com/team/%s:TAG (or set image:)", deploy.ErrConfig, svc.Name, svc.Name)
	}
	if svc.Rollout == deploy.RolloutBlueGreen && svc.Port == 0 {
		return fmt.Errorf("%w: no port for service %s: set port: or pass --port (the Service and the readiness probe need the port the app listens on)", deploy.ErrConfig, svc.Name)
	}
	return nil
}

// dns1035 says whether name can name a Kubernetes Service.
func dns1035(name string) bool {
	if len(name) == 0 || len(name) > 63 || name[0] < 'a' || name[0] > 'z' || name[len(name)-1] == '-' {
		return false
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}

type manifests struct {
	svc     deploy.Service // with its defaults
	set     config.Settings
	opts    K8sOptions
	skipped []string
	jobName string // the release Job's, once releaseJob made it
}

func (m *manifests) skip(what, because string) {
	m.skipped = append(m.skipped, "not exported: "+what+", because "+because)
}

// routed says whether the service takes requests: blue/green behind a
// route, so it gets a Service; a worker (start-first, stop-first) gets none.
func (m *manifests) routed() bool { return m.svc.Rollout == deploy.RolloutBlueGreen }

// notExported lists what handoff does around a deploy that Kubernetes
// does otherwise, or not at all.
func (m *manifests) notExported() {
	s, set := m.svc, m.set
	switch {
	case set.Proxy == config.ProxyHandoff && set.HandoffProxy.Listen != "":
		m.skip("handoff proxy on "+set.HandoffProxy.Listen, fmt.Sprintf("Kubernetes routes to ready pods through the Service: point your Ingress or Gateway at Service %s port %d", s.Name, s.Port))
	case set.Proxy == config.ProxyCaddy && set.Caddy.Route != "" && m.routed():
		m.skip("caddy route "+set.Caddy.Route, fmt.Sprintf("Kubernetes routes to ready pods through the Service: point your Ingress or Gateway at Service %s port %d", s.Name, s.Port))
	}
	for _, h := range []struct{ key, cmd string }{{"pre_deploy", s.Hooks.PreDeploy}, {"post_deploy", s.Hooks.PostDeploy}, {"on_failure", s.Hooks.OnFailure}} {
		if h.cmd != "" {
			m.skip("hooks."+h.key, "kubectl runs no commands on your machine around a rollout: run it yourself around kubectl apply")
		}
	}
	if len(s.Canary) > 0 {
		var steps []string
		for _, c := range s.Canary {
			steps = append(steps, c.String())
		}
		m.skip("canary steps "+strings.Join(steps, ", "), "a Deployment has no weighted steps judged by numbers: Argo Rollouts or Flagger do that on Kubernetes")
	}
	if s.Watch > 0 {
		m.skip("watch "+s.Watch.String(), "a Deployment retires the old pods as the new ones become ready: kubectl rollout undo is the way back")
	}
	if s.Release != nil && s.Release.Pause {
		m.skip("release_pause", "a Service cannot hold requests: the old pods serve while the Job runs")
	}
	if h := s.Health; h.Kind == deploy.HealthHTTP && (h.StatusMin < 200 || h.StatusMax > 399) {
		m.skip(fmt.Sprintf("health.status %d-%d", h.StatusMin, h.StatusMax), "a Kubernetes httpGet probe passes on 200-399 only")
	}
	for _, v := range s.Volumes {
		m.skip("volume "+v, "a Kubernetes volume is a PersistentVolumeClaim, ConfigMap or Secret of your cluster: add it to the Deployment")
	}
	for _, v := range s.Mounts {
		m.skip("volume "+v.Source+":"+v.Target, "a Kubernetes volume is a PersistentVolumeClaim, ConfigMap or Secret of your cluster: add it to the Deployment")
	}
	if !set.Compose {
		for _, n := range s.Networks {
			m.skip("network "+n.Name, "every pod is on the cluster's network: reach other services by their Service names")
		}
	}
	for _, x := range []struct{ what, because string }{
		{cond(len(s.ExtraHosts) > 0, "extra hosts "+strings.Join(s.ExtraHosts, " ")), "handoff does not write hostAliases: add them to the pod spec"},
		{cond(len(s.CapAdd)+len(s.CapDrop) > 0, "cap_add/cap_drop"), "handoff does not write a securityContext: add its capabilities to the container"},
		{cond(s.User != "", "user "+s.User), "Kubernetes takes a numeric runAsUser in a securityContext: add one"},
		{cond(s.Logging != nil, "logging"), "Kubernetes collects container output its own way"},
		{cond(s.StopSignal != "", "stop_signal "+s.StopSignal), "a pod is stopped with the image's STOPSIGNAL: set it in the image"},
		{cond(s.Init != nil, "init"), "a pod has no init process of Docker's: add tini to the image if the app needs one"},
		{cond(s.PidsLimit != 0, "pids_limit"), "a pod's process limit is the kubelet's setting, not the pod's"},
		{cond(len(userLabels(s.Labels)) > 0, "labels "+strings.Join(userLabels(s.Labels), ", ")), "Docker labels are not Kubernetes labels: add those you need to the Deployment's metadata"},
	} {
		if x.what != "" {
			m.skip(x.what, x.because)
		}
	}
}

func cond(ok bool, s string) string {
	if ok {
		return s
	}
	return ""
}

// userLabels are the label keys the user set, not those compose adds.
func userLabels(labels map[string]string) []string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		if !strings.HasPrefix(k, "com.docker.compose.") {
			out = append(out, k)
		}
	}
	return out
}

// Grace periods, in whole seconds.
func (m *manifests) preStopSeconds() int { return seconds(DefaultPreStop) }

// terminationGrace outlasts the preStop sleep, then drain_timeout for the
// requests in flight, then stop_timeout for the app's own shutdown: the
// pod's SIGKILL comes no earlier than handoff's would.
func (m *manifests) terminationGrace() int {
	return m.preStopSeconds() + seconds(m.svc.DrainTimeout) + seconds(m.svc.StopTimeout)
}

func (m *manifests) minReadySeconds() int { return seconds(m.svc.Health.Settle) }

func (m *manifests) progressDeadline() int {
	return seconds(m.svc.Health.StartTimeout+DefaultProgressMargin) + m.minReadySeconds()
}

// seconds rounds d up to whole seconds, at least 1.
func seconds(d time.Duration) int {
	return max(1, int(math.Ceil(d.Seconds())))
}

func (m *manifests) labels(component string) map[string]string {
	return map[string]string{LabelName: m.svc.Name, LabelComponent: component}
}

func (m *manifests) deployment() (object, error) {
	s := m.svc
	c := m.container(s.Command)
	probe, err := m.readinessProbe()
	if err != nil {
		return object{}, err
	}
	c.ReadinessProbe = probe
	if s.Port > 0 { // a worker's too: its probe connects to the named port
		c.Ports = []containerPort{{Name: "http", ContainerPort: s.Port, Protocol: "TCP"}}
	}
	if m.routed() {
		c.Lifecycle = &lifecycle{PreStop: handler{Sleep: &sleepAction{Seconds: m.preStopSeconds()}}}
	}
	rollout := deploymentStrategy{Type: "RollingUpdate", RollingUpdate: &rollingUpdate{MaxSurge: 1, MaxUnavailable: 0}}
	if s.Rollout == deploy.RolloutStopFirst {
		rollout = deploymentStrategy{Type: "Recreate"} // it must never run twice
	}
	grace := m.terminationGrace()
	return object{
		APIVersion: "apps/v1",
		Kind:       "Deployment",
		Metadata:   meta{Name: s.Name, Labels: m.labels(ComponentServer)},
		Spec: deploymentSpec{
			Replicas:                max(1, s.Replicas),
			RevisionHistoryLimit:    s.Keep,
			MinReadySeconds:         m.minReadySeconds(),
			ProgressDeadlineSeconds: m.progressDeadline(),
			Selector:                selector{MatchLabels: m.labels(ComponentServer)},
			Strategy:                rollout,
			Template: podTemplate{
				Metadata: meta{Labels: m.labels(ComponentServer), Annotations: m.envHash()},
				Spec:     podSpec{TerminationGracePeriodSeconds: &grace, Containers: []container{c}},
			},
		},
	}, nil
}

// container is the service's container running args as its command
// (Docker's CMD: the image's entrypoint stays unless the service sets one).
func (m *manifests) container(args []string) container {
	s := m.svc
	c := container{
		Name:            s.Name,
		Image:           s.Image,
		ImagePullPolicy: map[deploy.PullPolicy]string{deploy.PullMissing: "IfNotPresent", deploy.PullAlways: "Always", deploy.PullNever: "Never"}[s.Pull],
		Command:         s.Entrypoint,
		Args:            args,
		WorkingDir:      s.WorkingDir,
		TTY:             s.TTY,
		Stdin:           s.StdinOpen,
	}
	for _, kv := range s.Env {
		k, _, _ := strings.Cut(kv, "=")
		c.Env = append(c.Env, envVar{Name: k, ValueFrom: &envSource{SecretKeyRef: keyRef{Name: m.secretName(), Key: k}}})
	}
	if s.Memory > 0 || s.CPUs > 0 {
		c.Resources = &resources{Limits: map[string]string{}}
		if s.Memory > 0 {
			c.Resources.Limits["memory"] = quantity(s.Memory)
		}
		if s.CPUs > 0 {
			c.Resources.Limits["cpu"] = strconv.Itoa(int(math.Round(s.CPUs*1000))) + "m"
		}
	}
	return c
}

// quantity writes bytes in the largest binary unit that divides them.
func quantity(b int64) string {
	for _, u := range []struct {
		suffix string
		size   int64
	}{{"Gi", 1 << 30}, {"Mi", 1 << 20}, {"Ki", 1 << 10}} {
		if b%u.size == 0 {
			return strconv.FormatInt(b/u.size, 10) + u.suffix
		}
	}
	return strconv.FormatInt(b, 10)
}

// readinessProbe is health: as Kubernetes checks it, from the kubelet on
// the pod's node: nil for a worker judged by running alone.
func (m *manifests) readinessProbe() (*probe, error) {
	h := m.svc.Health
	p := &probe{
		PeriodSeconds:    seconds(h.Interval),
		TimeoutSeconds:   seconds(h.Timeout),
		SuccessThreshold: max(1, h.Successes),
		FailureThreshold: DefaultFailureThreshold,
	}
	kind := h.Kind
	check := m.svc.Check
	if check != nil && len(check.Test) > 0 && check.Test[0] == "NONE" {
		check = nil
	}
	if kind == deploy.HealthAuto && check != nil {
		kind = deploy.HealthDocker // as deploy does: the container's own HEALTHCHECK first
	}
	switch kind {
	case deploy.HealthRunning:
		if !m.routed() {
			return nil, nil // minReadySeconds is the settle time
		}
		// Without a probe a pod is sent requests the moment it starts: it
		// must at least take a connection.
		p.TCPSocket = &tcpSocket{Port: "http"}
	case deploy.HealthCmd:
		p.Exec = &execAction{Command: h.Command}
	case deploy.HealthTCP:
		if m.svc.Port == 0 {
			m.skip("health type tcp", "the service has no port to connect to: set port: for a tcpSocket probe")
			return nil, nil
		}
		p.TCPSocket = &tcpSocket{Port: "http"}
	case deploy.HealthDocker:
		if check == nil {
			if !m.routed() {
				m.skip("health type docker", "Kubernetes never runs an image's HEALTHCHECK: set health.type cmd with its command for a probe")
				return nil, nil
			}
			m.skip("health type docker", fmt.Sprintf("Kubernetes never runs an image's HEALTHCHECK: the probe connects to port %d instead; set health.type cmd with its command for the same check", m.svc.Port))
			p.TCPSocket = &tcpSocket{Port: "http"}
			break
		}
		cmd, err := checkCommand(check.Test)
		if err != nil {
			return nil, err
		}
		p.Exec = &execAction{Command: cmd}
		if check.Interval > 0 {
			p.PeriodSeconds = seconds(check.Interval)
		}
		if check.Timeout > 0 {
			p.TimeoutSeconds = seconds(check.Timeout)
		}
		if check.Retries > 0 {
			p.FailureThreshold = check.Retries
		}
	default: // http, and auto with no HEALTHCHECK in the settings
		if m.svc.Port == 0 {
			if kind == deploy.HealthHTTP {
				m.skip("health type http", "the service has no port to GET "+h.Path+" on: set port: for an httpGet probe")
			}
			return nil, nil // a worker with no port: running is ready, as deploy judges it
		}
		if kind == deploy.HealthAuto {
			m.skip("the image's own HEALTHCHECK, if it has one", fmt.Sprintf("Kubernetes never runs it: the probe GETs %s; set health.type to say which check you mean", h.Path))
		}
		p.HTTPGet = &httpGet{Path: h.Path, Port: "http"}
		if h.Host != "" {
			p.HTTPGet.HTTPHeaders = []httpHeader{{Name: "Host", Value: h.Host}}
		}
	}
	return p, nil
}

// checkCommand is a Docker HEALTHCHECK test as an exec probe's command.
func checkCommand(test []string) ([]string, error) {
	switch {
	case len(test) > 1 && test[0] == "CMD":
		return test[1:], nil
	case len(test) == 2 && test[0] == "CMD-SHELL":
		return []string{"/bin/sh", "-c", test[1]}, nil
	}
	return nil, fmt.Errorf("%w: healthcheck test %q: write it as [\"CMD\", ...] or [\"CMD-SHELL\", \"...\"] to export it", deploy.ErrConfig, strings.Join(test, " "))
}

func (m *manifests) service() object {
	return object{
		APIVersion: "v1",
		Kind:       "Service",
		Metadata:   meta{Name: m.svc.Name, Labels: m.labels(ComponentServer)},
		Spec: serviceSpec{
			Selector: m.labels(ComponentServer),
			Ports:    []servicePort{{Name: "http", Port: m.svc.Port, TargetPort: "http", Protocol: "TCP"}},
		},
	}
}

// pdb lets a node drain evict one pod at a time: maxUnavailable follows
// the replica count when someone scales the Deployment (minAvailable N-1
// would be stale after `kubectl scale`), and one at a time is what the
// rollout itself does.
func (m *manifests) pdb() object {
	return object{
		APIVersion: "policy/v1",
		Kind:       "PodDisruptionBudget",
		Metadata:   meta{Name: m.svc.Name, Labels: m.labels(ComponentServer)},
		Spec:       pdbSpec{MaxUnavailable: 1, Selector: selector{MatchLabels: m.labels(ComponentServer)}},
	}
}

// ReleaseJobName is the release job's name for its rendered spec: a Job's
// template cannot change once it exists (kubectl apply fails 422), so any
// change (image, command, environment, limits) names a new Job, and
// `kubectl apply` of the same Job is a no-op, not a re-run.
func ReleaseJobName(service string, spec []byte) string {
	sum := sha256.Sum256(spec)
	suffix := "-release-" + hex.EncodeToString(sum[:])[:10]
	prefix := service[:min(len(service), 63-len(suffix))]
	return strings.TrimRight(prefix, "-") + suffix
}

// releaseJob is the Job of the release command, named for its spec.
func (m *manifests) releaseJob() (object, error) {
	job := m.svc.Release
	c := m.container(job.Command)
	c.Name = ComponentRelease
	zero := 0
	spec := jobSpec{
		BackoffLimit:          &zero, // a migration that failed is looked at, not retried
		ActiveDeadlineSeconds: seconds(job.Timeout),
		Template: podTemplate{
			Metadata: meta{Labels: m.labels(ComponentRelease)},
			Spec:     podSpec{RestartPolicy: "Never", Containers: []container{c}},
		},
	}
	rendered, err := yaml.Marshal(spec)
	if err != nil {
		return object{}, err
	}
	m.jobName = ReleaseJobName(m.svc.Name, rendered)
	return object{
		APIVersion: "batch/v1",
		Kind:       "Job",
		Metadata:   meta{Name: m.jobName, Labels: m.labels(ComponentRelease)},
		Spec:       spec,
	}, nil
}

func (m *manifests) secretName() string { return m.svc.Name + "-env" }

func (m *manifests) secret() object {
	data := map[string]string{}
	for _, kv := range m.svc.Env {
		k, v, _ := strings.Cut(kv, "=")
		data[k] = v
	}
	return object{
		APIVersion: "v1",
		Kind:       "Secret",
		Metadata:   meta{Name: m.secretName(), Labels: m.labels(ComponentServer)},
		Type:       "Opaque",
		StringData: data,
	}
}

// envHash annotates the pod template with a hash of the environment, so
// that a changed value rolls the pods out as a changed image does.
func (m *manifests) envHash() map[string]string {
	if len(m.svc.Env) == 0 {
		return nil
	}
	sum := sha256.Sum256([]byte(strings.Join(m.svc.Env, "\n")))
	return map[string]string{EnvHashAnnotation: hex.EncodeToString(sum[:])[:16]}
}

func (m *manifests) envKeys() []string {
	var keys []string
	for _, kv := range m.svc.Env {
		k, _, _ := strings.Cut(kv, "=")
		keys = append(keys, k)
	}
	return keys
}

// ReleaseDir, under the output directory, holds the release Job, apart
// from the files kubectl apply -f DIR applies at once.
const ReleaseDir = "release"

// secretFile says whether the environment's values are written.
func (m *manifests) secretFile() bool { return m.opts.IncludeSecrets && len(m.svc.Env) > 0 }

// render writes a header comment, then the object.
func render(header []string, obj object) ([]byte, error) {
	var b bytes.Buffer
	for _, l := range header {
		b.WriteString(strings.TrimRight("# "+l, " ") + "\n")
	}
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(obj); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
