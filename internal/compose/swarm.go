package compose

import (
	"cmp"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/compose-spec/compose-go/v2/types"

	"github.com/handoff-dev/handoff/internal/config"
	"github.com/handoff-dev/handoff/internal/deploy"
)

// A compose service whose x-handoff says engine: swarm runs on a swarm as handoff.yml's
// engine swarm runs one: two colour services switched on every node's handoff proxy.
// Of its definition only what reaches a swarm task carries over (the swarm runtime
// writes image, environment, command, entrypoint, stop grace period, HEALTHCHECK,
// replicas and placement, on the overlay of swarm.network); every other key set is
// refused, so that nothing the file says is dropped.

// OnSwarm says whether service name of p runs on a swarm: its x-handoff (or the
// project's) says engine: swarm. Such a service has no config hash for Ask to ask
// the compose tool for; Resolve does not read one.
func OnSwarm(p *types.Project, name string) bool {
	s, err := p.GetService(name)
	return err == nil && onSwarm(p, s)
}

func onSwarm(p *types.Project, s types.ServiceConfig) bool {
	return mergedExtension(p, s)["engine"] == config.EngineSwarm
}

// swarmKeys says, for a service on a swarm, what becomes of each compose key it sets
// (as keys does on one engine); a key set and not here is refused.
var swarmKeys = withKeys(map[string]handling{
	"name": {applied, ""}, "image": {applied, ""}, "command": {applied, ""}, "entrypoint": {applied, ""},
	"environment": {applied, ""}, "env_file": {applied, ""}, "stop_grace_period": {applied, ""},
	"healthcheck": {applied, ""}, // swarmHealth says which of its keys
	"expose":      {applied, ""}, "scale": {applied, ""},
	"build":                                  {applied, ""}, // refused by config, as handoff.yml's; dropped by --image, as on one engine
	"networks":                               {nested, ""},  // the project's default only (swarmValues)
	"deploy":                                 {nested, ""},
	"deploy.mode":                            {applied, ""}, // replicated only (swarmValues)
	"deploy.replicas":                        {applied, ""},
	"deploy.endpoint_mode":                   {applied, ""}, // dnsrr only (swarmValues)
	"deploy.placement":                       {nested, ""},
	"deploy.placement.constraints":           {applied, ""},
	"deploy.placement.max_replicas_per_node": {applied, ""},

	"deploy.update_config":   {ignored, "handoff deploys blue-green through every node's proxy, never by Swarm's rolling update"},
	"deploy.rollback_config": {ignored, "`handoff rollback` scales the previous colour back up"},

	"ports":                 {refused, "every node's handoff proxy publishes it, at swarm.port (handoff swarm setup's, default 9001): point the front at that port of every node; remove ports: and give the app's own port as expose: or x-handoff port:"},
	"volumes":               {refused, "engine swarm mounts no volumes into the tasks yet, and a task may run on any node; remove volumes:, or deploy it with engine docker"},
	"labels":                {refused, "engine swarm labels the tasks with the release only; remove labels:"},
	"deploy.labels":         {refused, "engine swarm labels the colour services with the release only; remove deploy.labels:"},
	"deploy.resources":      {refused, limits},
	"mem_limit":             {refused, limits},
	"mem_reservation":       {refused, limits},
	"cpus":                  {refused, limits},
	"pids_limit":            {refused, limits},
	"restart":               {refused, restarts},
	"deploy.restart_policy": {refused, restarts},
	"pull_policy":           {refused, "every deploy asks the registry for the image's digest, and every node pulls that; remove pull_policy:"},
	"container_name":        {refused, "Swarm names the tasks; remove container_name:"},
	"network_mode":          {refused, "the tasks run on the overlay of swarm.network; remove network_mode:"},
}, "profiles", "depends_on", "develop", "attach", "extends", "label_file") // as on one engine

// withKeys is table with the named keys of keys (what they mean does not depend on
// where the service runs).
func withKeys(table map[string]handling, names ...string) map[string]handling {
	for _, k := range names {
		table[k] = keys[k]
	}
	return table
}

const (
	limits   = "engine swarm writes no limits into the tasks yet; remove it, or deploy it with engine docker"
	restarts = "Swarm restarts the tasks on any exit, always, and a task found unhealthy is replaced; remove it"
)

// oneEngineKeys are x-handoff's settings of a service on one engine: its proxy and how
// it is switched. Set in the project's block for the others, they are not a swarm
// service's.
var oneEngineKeys = []string{"proxy", "caddy", "handoff_proxy", "route", "reach", "strategy", "host_ports"}

// colourName is what Swarm takes as a service's name (as internal/swarm checks it).
var colourName = regexp.MustCompile(`^[a-zA-Z0-9](?:[-_]*[A-Za-z0-9]+)*$`)

// resolveSwarm is Resolve for a service on a swarm: its image, environment, command,
// entrypoint, stop grace period, healthcheck, replicas and placement, then x-handoff
// (the project's, then the service's), checked by config as handoff.yml's engine swarm.
// None of compose's own: no compose labels, nothing adopted or removed, no config hash
// (`docker compose` does not act on a swarm's services).
func resolveSwarm(p *types.Project, s types.ServiceConfig, o config.Overrides) (Target, error) {
	// Its name on the swarm is the one its containers have on one engine,
	// <project>-<service>: its colour services are <project>-<service>-blue and
	// -green, the name every node's proxy serves it by; `docker stack deploy`'s own
	// <stack>_<service> is another service, never touched.
	name := p.Name + "-" + s.Name
	if !colourName.MatchString(name) || len(name+"-green") > 63 {
		return Target{}, fmt.Errorf("%w: %s runs on the swarm as %s-blue and -green, longer than 63 characters or not only letters, digits, '-' and '_' (Swarm's service names); shorten or rename the project (name:, -p) or the service", deploy.ErrConfig, s.Name, name)
	}
	if err := refuseKeys(s, swarmKeys, fmt.Sprintf("which engine swarm does not carry into the tasks yet; remove it, or deploy %s with engine docker", s.Name)); err != nil {
		return Target{}, err
	}
	if err := swarmValues(s); err != nil {
		return Target{}, err
	}
	merged := mergedExtension(p, s)
	// What the project's x-handoff says for its services on one engine (their proxy,
	// strategy, reach) is not this one's: only its own block can set it, to be refused.
	own, _ := s.Extensions[Extension].(map[string]any)
	for _, k := range oneEngineKeys {
		if _, set := own[k]; !set {
			delete(merged, k)
		}
	}
	if err := swarmHealth(s, merged); err != nil {
		return Target{}, err
	}
	ext, err := parseExtension(p, s, merged)
	if err != nil {
		return Target{}, err
	}
	if err := swarmPlacement(s, &ext); err != nil {
		return Target{}, err
	}
	switch {
	case ext.Route != "":
		return Target{}, fmt.Errorf("%w: %s's x-handoff sets route: engine swarm serves %s on every node's handoff proxy at swarm.port (%d); remove route: and point the front at that port of every node", deploy.ErrConfig, s.Name, s.Name, cmp.Or(ext.Swarm.Port, 9001))
	case ext.Reach != "":
		return Target{}, fmt.Errorf("%w: %s's x-handoff sets reach: engine swarm's proxies reach the tasks on the overlay (swarm.network), by DNS; remove reach: from x-handoff", deploy.ErrConfig, s.Name)
	}

	svc := deploy.Service{
		Name: name, Image: s.Image, Command: s.Command, Entrypoint: s.Entrypoint,
		Env: environment(s), Port: port(s),
	}
	if s.Build != nil {
		svc.Build = &deploy.BuildSpec{Context: s.Build.Context} // for config to refuse
	}
	if s.StopGracePeriod != nil {
		svc.StopTimeout = time.Duration(*s.StopGracePeriod)
	}
	if svc.Replicas, err = replicas(s); err != nil {
		return Target{}, err
	}
	if o.Image != "" && o.Image != svc.Image {
		svc.Image, svc.Build = o.Image, nil
	}
	if o.Replicas != 0 && int(o.Replicas) != svc.Replicas {
		return Target{}, fmt.Errorf("%w: --replicas %d: %s runs %d (its deploy.replicas or scale); change the compose file instead", deploy.ErrConfig, o.Replicas, s.Name, svc.Replicas)
	}
	set, err := ext.Apply(svc, o)
	if err != nil {
		return Target{}, err
	}
	if set.Service.Release != nil && len(name+"-release-job") > 63 {
		return Target{}, fmt.Errorf("%w: %s's release job runs on the swarm as %s-release-job, longer than Swarm's 63 characters; shorten or rename the project (name:, -p) or the service", deploy.ErrConfig, s.Name, name)
	}
	return Target{Settings: set}, nil
}

// swarmValues refuses the values of applied keys a swarm cannot run.
func swarmValues(s types.ServiceConfig) error {
	for _, n := range slices.Sorted(maps.Keys(s.Networks)) {
		if n != "default" {
			return fmt.Errorf("%w: %s joins network %s: engine swarm runs the tasks on the overlay of swarm.network only, where every node's proxy reaches them; remove networks:, or deploy %s with engine docker", deploy.ErrConfig, s.Name, n, s.Name)
		}
	}
	if d := s.Deploy; d != nil {
		switch d.Mode {
		case "global":
			return fmt.Errorf("%w: %s sets deploy.mode: global: engine swarm runs deploy.replicas tasks of each release; for one on each node, set deploy.replicas to the number of nodes and deploy.placement.max_replicas_per_node: 1", deploy.ErrConfig, s.Name)
		}
		if d.EndpointMode != "" && d.EndpointMode != "dnsrr" {
			return fmt.Errorf("%w: %s sets deploy.endpoint_mode: %s: the proxies reach the tasks by DNS (dnsrr) on every node; remove it", deploy.ErrConfig, s.Name, d.EndpointMode)
		}
	}
	return nil
}

// Docker's HEALTHCHECK defaults, for a compose healthcheck that leaves them out.
const (
	dockerHealthInterval = 30 * time.Second
	dockerHealthTimeout  = 30 * time.Second
)

// swarmHealth puts the compose healthcheck under the x-handoff health: of merged, in
// handoff.yml's words (x-handoff's keys win, one by one): the tasks' HEALTHCHECK is
// made of them, as of handoff.yml's `health: {type: cmd, …}`. retries is Swarm's 3
// there, so another count is refused.
func swarmHealth(s types.ServiceConfig, merged map[string]any) error {
	if v, ok := merged["health"]; ok {
		if _, isMap := v.(map[string]any); !isMap {
			return nil // not a mapping: config says so
		}
	}
	given, _ := merged["health"].(map[string]any)
	_, hasCommand := given["command"]
	hc := s.HealthCheck
	switch {
	case hc == nil && !hasCommand:
		return fmt.Errorf("%w: %s has no healthcheck: engine swarm needs one, run by each node in the task (Swarm sends a task requests only once it passes, and no check from this host reaches other nodes); write healthcheck: {test: [CMD, …]}", deploy.ErrConfig, s.Name)
	case hc == nil:
		return nil
	}
	test := []string(hc.Test)
	if hc.Disable || len(test) > 0 && test[0] == "NONE" {
		if hasCommand {
			return nil // x-handoff's check, and nothing of the disabled one
		}
		return fmt.Errorf("%w: %s's healthcheck is disabled: engine swarm needs one, run by each node in the task (Swarm sends a task requests only once it passes); give it a test: [CMD, …]", deploy.ErrConfig, s.Name)
	}
	if hc.Retries != nil && *hc.Retries != 3 {
		return fmt.Errorf("%w: %s's healthcheck sets retries: %d: engine swarm's tasks are judged unhealthy after 3 failed checks in a row; remove retries:, or set it to 3", deploy.ErrConfig, s.Name, *hc.Retries)
	}
	if hc.StartInterval != nil {
		return fmt.Errorf("%w: %s's healthcheck sets start_interval, which engine swarm does not carry into the tasks yet; remove it", deploy.ErrConfig, s.Name)
	}
	h := map[string]any{"type": string(deploy.HealthCmd)}
	switch {
	case len(test) > 1 && test[0] == "CMD":
		h["command"] = test[1:]
	case len(test) > 1 && test[0] == "CMD-SHELL":
		h["command"] = []string{"/bin/sh", "-c", strings.Join(test[1:], " ")} // as Docker runs it
	case !hasCommand:
		return fmt.Errorf("%w: %s's healthcheck has no test (the image's own HEALTHCHECK is not read for a swarm): write test: [CMD, …]", deploy.ErrConfig, s.Name)
	}
	// Docker's defaults for what the file leaves out, as `docker stack deploy` would run
	// it; the deploy waits for health as long as compose does on one engine: the start
	// period and three failed checks, at least deploy.DefaultHealthStartTimeout. The
	// tasks get that as their start period (Swarm's counts no failure in it, and a pass
	// marks them healthy at once).
	interval, timeout, start := dockerHealthInterval, dockerHealthTimeout, time.Duration(0)
	if hc.Interval != nil {
		interval = time.Duration(*hc.Interval)
	}
	if hc.Timeout != nil {
		timeout = time.Duration(*hc.Timeout)
	}
	if hc.StartPeriod != nil {
		start = time.Duration(*hc.StartPeriod)
	}
	h["interval"], h["timeout"] = interval.String(), timeout.String()
	h["start_timeout"] = max(deploy.DefaultHealthStartTimeout, start+3*(interval+timeout)).String()
	deepMerge(h, given)
	merged["health"] = h
	return nil
}

// swarmPlacement adds the compose service's placement to x-handoff's swarm:.
func swarmPlacement(s types.ServiceConfig, ext *config.File) error {
	if s.Deploy == nil || s.Deploy.Placement.Constraints == nil && s.Deploy.Placement.MaxReplicas == 0 {
		return nil
	}
	pl := s.Deploy.Placement
	ext.Swarm.Constraints = append(slices.Clone(pl.Constraints), ext.Swarm.Constraints...)
	if n := int(pl.MaxReplicas); n != 0 {
		if ext.Swarm.MaxPerNode != 0 && ext.Swarm.MaxPerNode != n {
			return fmt.Errorf("%w: %s sets deploy.placement.max_replicas_per_node: %d and x-handoff swarm.max_per_node: %d; say it once", deploy.ErrConfig, s.Name, n, ext.Swarm.MaxPerNode)
		}
		ext.Swarm.MaxPerNode = n
	}
	return nil
}
