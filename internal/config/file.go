// Package config reads handoff.yml, strictly: an unknown key, a bad
// duration or an impossible value is refused with the file, the line and a
// hint. Resolve then merges the file with command-line flags into what the
// deploy procedure and the Caddy adapter take.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/mattn/go-shellwords"
	"go.yaml.in/yaml/v3"

	"github.com/handoff-dev/handoff/internal/deploy"
)

// DefaultFile is read when -f is not given and it exists.
const DefaultFile = "handoff.yml"

// File is handoff.yml as written.
type File struct {
	Service      string            `yaml:"service"`
	Image        string            `yaml:"image"`
	Build        *Build            `yaml:"build"`
	Command      Command           `yaml:"command"`
	Port         int               `yaml:"port"`
	Env          map[string]string `yaml:"env"`
	EnvFile      Words             `yaml:"env_file"`
	Volumes      []string          `yaml:"volumes"`
	Network      string            `yaml:"network"`
	Labels       map[string]string `yaml:"labels"`
	Restart      string            `yaml:"restart"`
	HostPorts    string            `yaml:"host_ports"` // "20000-20999": where releases are published on 127.0.0.1
	Resources    Resources         `yaml:"resources"`
	Health       Health            `yaml:"health"`
	DrainTimeout Duration          `yaml:"drain_timeout"`
	StopTimeout  Duration          `yaml:"stop_timeout"`
	Keep         *int              `yaml:"keep"`
	Replicas     *ReplicaCount     `yaml:"replicas"` // containers a release runs
	Caddy        Caddy             `yaml:"caddy"`
	Proxy        string            `yaml:"proxy"` // caddy (default) or handoff
	HandoffProxy HandoffProxy      `yaml:"handoff_proxy"`
	Compose      *Compose          `yaml:"compose"`  // the services are a compose project's
	Route        string            `yaml:"route"`    // x-handoff: the Caddy route (caddy.route)
	Strategy     string            `yaml:"strategy"` // x-handoff: start-first or stop-first, for a service without a route
	Reach        string            `yaml:"reach"`    // host or network: how the proxy reaches a release
	Pull         string            `yaml:"pull"`     // missing (default), always or never
	Release      Command           `yaml:"release"`  // the release job's command (migrations)
	ReleaseTime  Duration          `yaml:"release_timeout"`
	ReleasePause bool              `yaml:"release_pause"` // hold requests during the job (handoff proxy)
	Hooks        Hooks             `yaml:"hooks"`
	Canary       *Canary           `yaml:"canary"`   // the steps of strategy: canary
	Watch        Duration          `yaml:"watch"`    // keep the old release up this long after the switch, to switch back to
	Analysis     Analysis          `yaml:"analysis"` // what a canary step and the watch judge by
	Host         string            `yaml:"host"`     // ssh://user@server: where commands run (read by the CLI before anything else)
	Engine       string            `yaml:"engine"`   // docker (default) or swarm
	Swarm        Swarm             `yaml:"swarm"`    // engine: swarm's settings

	path  string         // the file read, for messages and relative paths
	dir   string         // relative paths are taken from here, when not path's directory
	lines map[string]int // "health.interval" → line, for messages
}

// Build is `build:`; a plain string is the context directory.
type Build struct {
	Context    string            `yaml:"context"`
	Dockerfile string            `yaml:"dockerfile"`
	Args       map[string]string `yaml:"args"`
	Target     string            `yaml:"target"`
}

// UnmarshalYAML takes `build: .` as well as the mapping.
func (b *Build) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		b.Context = n.Value
		return nil
	}
	type plain Build
	return n.Decode((*plain)(b))
}

// Resources are the container's limits.
type Resources struct {
	Memory string  `yaml:"memory"` // "512m", "1g"
	CPUs   float64 `yaml:"cpus"`
}

// Health is `health:`.
type Health struct {
	Type         string   `yaml:"type"`
	Path         string   `yaml:"path"`
	Host         string   `yaml:"host"`
	Status       string   `yaml:"status"` // "2xx", "200", "200-399"
	Command      Command  `yaml:"command"`
	Timeout      Duration `yaml:"timeout"`
	Interval     Duration `yaml:"interval"`
	Successes    int      `yaml:"successes"`
	StartTimeout Duration `yaml:"start_timeout"`
	Settle       Duration `yaml:"settle"` // running this long without a restart, when there is no check
}

// Caddy is `caddy:`.
type Caddy struct {
	Admin     string `yaml:"admin"`
	Route     string `yaml:"route"`
	Caddyfile string `yaml:"caddyfile"`
}

// Hooks is `hooks:`: shell commands run on the host.
type Hooks struct {
	PreDeploy  string   `yaml:"pre_deploy"`
	PostDeploy string   `yaml:"post_deploy"`
	OnFailure  string   `yaml:"on_failure"`
	Timeout    Duration `yaml:"timeout"`
}

// Compose is `compose:`: handoff.yml names a compose project's services.
type Compose struct {
	Files    Words    `yaml:"files"`    // compose files, as -f (default: compose.yaml beside handoff.yml)
	Services []string `yaml:"services"` // deployed when the command names none
	Project  string   `yaml:"project"`  // -p
	EnvFiles Words    `yaml:"env_file"` // --env-file
	Profiles []string `yaml:"profiles"` // --profile
}

// ComposeFiles are compose.files, relative to handoff.yml.
func (f File) ComposeFiles() []string {
	var out []string
	for _, c := range f.Compose.Files {
		out = append(out, f.relative(c))
	}
	return out
}

// HandoffProxy is `handoff_proxy:`, for `proxy: handoff`.
type HandoffProxy struct {
	Socket string `yaml:"socket"` // the proxy's control socket
	Listen string `yaml:"listen"` // the stable address the front proxy points at
}

// Swarm is `swarm:`, for `engine: swarm` (docs/swarm.md).
type Swarm struct {
	Network     string   `yaml:"network"`      // the overlay of the colours and the proxies (default handoff)
	ProxyImage  string   `yaml:"proxy_image"`  // the image of handoff the switch jobs run (handoff swarm setup's)
	Port        int      `yaml:"port"`         // where every node's proxy serves the service (one of setup's ports)
	Constraints []string `yaml:"constraints"`  // placement of the release's tasks, as docker service create --constraint
	MaxPerNode  int      `yaml:"max_per_node"` // at most this many tasks of a release on one node
	// Replicas is replicas: as the swarm runs it: tasks of one colour service. The
	// procedure sees that service as the release's one container.
	Replicas int `yaml:"-"`
}

// Duration is a Go duration ("30s", "2m"); a bare number is refused, since
// nobody can tell whether it meant seconds.
type Duration time.Duration

// UnmarshalYAML parses the duration or says, with the line, what is wrong.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil || v < 0 {
		return &lineError{line: n.Line, msg: fmt.Sprintf("%q is not a duration; write it like 30s, 2m or 1m30s", n.Value)}
	}
	*d = Duration(v)
	return nil
}

// MaxReplicas is the most containers a release may run: each holds a
// port of host_ports and is health-checked before every switch, on one host.
const MaxReplicas = 64

// ReplicaCount is how many containers a release runs (`replicas:`,
// --replicas); 0: not given.
type ReplicaCount int

// UnmarshalYAML reads a whole number; whether a release can run that many
// is Apply's to say, with the flag's words.
func (r *ReplicaCount) UnmarshalYAML(n *yaml.Node) error {
	v, err := parseReplicas(n.Value)
	if n.Kind != yaml.ScalarNode || err != nil {
		return &lineError{line: n.Line, msg: notReplicas(n.Value)}
	}
	*r = ReplicaCount(v)
	return nil
}

// Set reads --replicas (a pflag.Value), refusing a count no release could
// run; pflag's message names the flag and the value.
func (r *ReplicaCount) Set(s string) error {
	v, err := parseReplicas(s)
	if err != nil {
		return fmt.Errorf("not a whole number; write how many containers a release runs, from 1 to %d", MaxReplicas)
	}
	if err := checkReplicas(v); err != nil {
		return err
	}
	*r = ReplicaCount(v)
	return nil
}

func (r *ReplicaCount) String() string { return strconv.Itoa(int(*r)) }

// Type names the flag's value in --help.
func (r *ReplicaCount) Type() string { return "int" }

func parseReplicas(s string) (int, error) { return strconv.Atoi(strings.TrimSpace(s)) }

func notReplicas(s string) string {
	return fmt.Sprintf("replicas %q is not a whole number; write how many containers a release runs, from 1 to %d", s, MaxReplicas)
}

// checkReplicas refuses a count of containers no release could run.
func checkReplicas(n int) error {
	switch {
	case n < 1:
		return errors.New("a release runs at least 1 container")
	case n > MaxReplicas:
		return fmt.Errorf("at most %d containers a release (each holds a host port and is health-checked before every switch)", MaxReplicas)
	}
	return nil
}

// Command is a command run without a shell: a list, or a string split into
// words as a shell would split it, refused if it holds a shell operator
// (SplitCommand).
type Command []string

// UnmarshalYAML takes a list or a string.
func (c *Command) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.SequenceNode {
		var list []string
		if err := n.Decode(&list); err != nil {
			return err
		}
		*c = list
		return nil
	}
	words, err := SplitCommand(n.Value)
	if err != nil {
		return &lineError{line: n.Line, msg: err.Error()}
	}
	*c = words
	return nil
}

// Words is a list of names (files): a list, or a string split as a shell would.
type Words []string

// UnmarshalYAML takes a list or a string.
func (w *Words) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.SequenceNode {
		var list []string
		if err := n.Decode(&list); err != nil {
			return err
		}
		*w = list
		return nil
	}
	words, err := shellwords.Parse(n.Value)
	if err != nil {
		return &lineError{line: n.Line, msg: fmt.Sprintf("cannot split %q into words: %v; write it as a list", n.Value, err)}
	}
	*w = words
	return nil
}

type lineError struct {
	line int
	msg  string
}

func (e *lineError) Error() string { return e.msg }

// Load reads the file at path. With path "" it reads handoff.yml in the
// current directory if there is one, and an empty File if not.
func Load(path string) (File, error) {
	explicit := path != ""
	if !explicit {
		path = DefaultFile
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && !explicit {
		return File{}, nil
	}
	if err != nil {
		return File{}, fmt.Errorf("%w: %v", deploy.ErrConfig, err)
	}
	return Parse(path, data)
}

// Parse reads handoff.yml's text; name is used in messages and for relative paths.
func Parse(name string, data []byte) (File, error) {
	return parse(name, "", data, fileSchema)
}

// ParseExtension reads the text of a compose file's `x-handoff:` block
// (what handoff adds to a compose service); name says where it is, for
// messages, and relative paths are taken from dir, the project's.
func ParseExtension(name, dir string, data []byte) (File, error) {
	return parse(name, dir, data, extensionSchema)
}

func parse(name, dir string, data []byte, keys schema) (File, error) {
	f := File{path: name, dir: dir, lines: map[string]int{}}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if err.Error() == "EOF" {
			return f, nil
		}
		return f, fileError(name, 0, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	var second yaml.Node
	if err := dec.Decode(&second); err == nil && len(second.Content) > 0 {
		return f, fileError(name, second.Line, "a second YAML document (after `---`): handoff.yml holds one; remove the `---` or split the file")
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	if root.Kind != yaml.MappingNode {
		return f, fileError(name, root.Line, "expected keys like `service:` and `image:` at the top level")
	}
	if err := checkKeys(root, keys, "", f.lines); err != nil {
		var le *lineError
		errors.As(err, &le)
		return f, fileError(name, le.line, le.msg)
	}
	if err := root.Decode(&f); err != nil {
		var le *lineError
		if errors.As(err, &le) {
			return f, fileError(name, le.line, le.msg)
		}
		var te *yaml.TypeError
		if errors.As(err, &te) && len(te.Errors) > 0 {
			// "line 2: cannot unmarshal !!str `eighty` into int": the first is enough.
			var line int
			msg := te.Errors[0]
			if _, serr := fmt.Sscanf(msg, "line %d:", &line); serr == nil {
				_, msg, _ = strings.Cut(msg, ": ")
			}
			return f, fileError(name, line, msg)
		}
		return f, fileError(name, 0, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	return f, nil
}

// Dir is the directory relative paths in the file are taken from.
func (f File) Dir() string {
	if f.dir != "" {
		return f.dir
	}
	if f.path == "" {
		return "."
	}
	return filepath.Dir(f.path)
}

// at formats a message about key with its place in the file.
func (f File) at(key, msg string) error {
	if line, ok := f.lines[key]; ok && f.path != "" {
		return fileError(f.path, line, msg)
	}
	return fmt.Errorf("%w: %s", deploy.ErrConfig, msg)
}

func fileError(path string, line int, msg string) error {
	if line > 0 {
		return fmt.Errorf("%w: %s:%d: %s", deploy.ErrConfig, path, line, msg)
	}
	return fmt.Errorf("%w: %s: %s", deploy.ErrConfig, path, msg)
}
