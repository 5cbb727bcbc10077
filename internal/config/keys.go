package config

import (
	"fmt"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// schema lists the keys a mapping may hold; a nested schema for keys whose
// value is itself a mapping of known keys. nil: any keys (env, labels, args).
type schema map[string]schema

var anyKeys schema

var fileSchema = schema{
	"service": nil, "image": nil, "command": nil, "port": nil,
	"build":         {"context": nil, "dockerfile": nil, "args": anyKeys, "target": nil},
	"env":           anyKeys,
	"env_file":      nil,
	"volumes":       nil,
	"network":       nil,
	"labels":        anyKeys,
	"restart":       nil,
	"host_ports":    nil,
	"resources":     {"memory": nil, "cpus": nil},
	"health":        healthSchema,
	"drain_timeout": nil, "stop_timeout": nil, "keep": nil, "replicas": nil,
	"caddy":         {"admin": nil, "route": nil, "caddyfile": nil},
	"proxy":         nil,
	"handoff_proxy": {"socket": nil, "listen": nil},
	"compose":       {"files": nil, "services": nil, "project": nil, "env_file": nil, "profiles": nil},
	"pull":          nil, "release": nil, "release_timeout": nil, "release_pause": nil,
	"hooks":  hooksSchema,
	"canary": canarySchema, "watch": nil, "analysis": analysisSchema, "strategy": nil,
	"host":   nil,
	"engine": nil,
	"swarm":  swarmSchema,
}

var swarmSchema = schema{"network": nil, "proxy_image": nil, "port": nil, "constraints": nil, "max_per_node": nil}

var hooksSchema = schema{"pre_deploy": nil, "post_deploy": nil, "on_failure": nil, "timeout": nil}

var healthSchema = schema{"type": nil, "path": nil, "host": nil, "status": nil, "command": nil,
	"timeout": nil, "interval": nil, "successes": nil, "start_timeout": nil, "settle": nil}

// extensionSchema is what an `x-handoff:` block of a compose file may say:
// the container itself is the compose service's (on a swarm too: its image,
// command, health check, replicas and placement).
var extensionSchema = schema{
	"port": nil, "health": healthSchema, "drain_timeout": nil, "stop_timeout": nil, "keep": nil,
	"host_ports": nil, "route": nil, "strategy": nil, "reach": nil,
	"caddy":         {"admin": nil, "route": nil, "caddyfile": nil},
	"proxy":         nil,
	"handoff_proxy": {"socket": nil, "listen": nil},
	"pull":          nil, "release": nil, "release_timeout": nil, "release_pause": nil,
	"hooks":  hooksSchema,
	"canary": canarySchema, "watch": nil, "analysis": analysisSchema,
	"engine": nil, "swarm": swarmSchema,
}

// checkKeys refuses unknown keys with a did-you-mean hint, and records
// each key's line for later messages. Aliases and merge keys (`<<`) are
// followed, so that they cannot carry a key past the check.
func checkKeys(n *yaml.Node, s schema, prefix string, lines map[string]int) error {
	c := keyCheck{lines: lines, seen: map[visit]bool{}}
	return c.mapping(n, s, prefix)
}

// keyCheck walks a document's mappings, each once for each place it is
// used from: aliases make the document a graph, and walking it as a tree
// takes time exponential in its size (a few hundred bytes of nested merge
// keys would hang the parser), or forever when an anchor holds itself.
type keyCheck struct {
	lines map[string]int
	seen  map[visit]bool
}

// visit is a mapping checked at prefix; the prefix names its schema too.
type visit struct {
	n      *yaml.Node
	prefix string
}

func (c keyCheck) mapping(n *yaml.Node, s schema, prefix string) error {
	n = resolveAlias(n)
	if c.seen[visit{n, prefix}] {
		return nil
	}
	c.seen[visit{n, prefix}] = true
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], resolveAlias(n.Content[i+1])
		if k.Value == "<<" && k.Tag == "!!merge" {
			if err := c.merge(v, s, prefix); err != nil {
				return err
			}
			continue
		}
		sub, known := s[k.Value]
		if !known {
			return &lineError{line: k.Line, msg: unknownKey(k.Value, prefix, s)}
		}
		if _, seen := c.lines[prefix+k.Value]; !seen {
			c.lines[prefix+k.Value] = k.Line
		}
		if len(sub) > 0 && v.Kind == yaml.MappingNode {
			if err := c.mapping(v, sub, prefix+k.Value+"."); err != nil {
				return err
			}
		}
	}
	return nil
}

// merge checks what a merge key brings in: a mapping or a list of them.
func (c keyCheck) merge(v *yaml.Node, s schema, prefix string) error {
	if v.Kind == yaml.SequenceNode {
		for _, m := range v.Content {
			if err := c.mapping(m, s, prefix); err != nil {
				return err
			}
		}
		return nil
	}
	return c.mapping(v, s, prefix)
}

func resolveAlias(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func unknownKey(key, prefix string, s schema) string {
	where := "at the top level"
	if prefix != "" {
		where = "in " + strings.TrimSuffix(prefix, ".")
	}
	names := make([]string, 0, len(s))
	for name := range s {
		names = append(names, name)
	}
	slices.Sort(names)
	best, bestDist := "", 3
	for _, name := range names {
		if d := distance(key, name); d < bestDist {
			best, bestDist = name, d
		}
	}
	if best != "" {
		return fmt.Sprintf("unknown key %q %s; did you mean %q?", key, where, best)
	}
	return fmt.Sprintf("unknown key %q %s; known keys: %s", key, where, strings.Join(names, ", "))
}

// distance is the Levenshtein distance between a and b.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}
