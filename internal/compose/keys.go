package compose

import (
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"

	"github.com/compose-spec/compose-go/v2/types"

	"github.com/handoff-dev/handoff/internal/deploy"
)

// use is what handoff does with a compose key of a service.
type use int

const (
	// applied: mapped onto the release (container() and its helpers),
	// with the values it cannot apply refused there.
	applied use = iota + 1
	// nested: applied, and its own keys are looked at one by one.
	nested
	// ignored: it changes nothing about a container a deploy makes; why
	// says so, and the service is deployed.
	ignored
	// refused: the service is not deployed; why says what to change.
	refused
)

type handling struct {
	use use
	why string
}

// notApplied is why a key that handoff could apply some day is refused.
const notApplied = ""

// keys says, for every key of a compose service (compose-go's
// types.ServiceConfig, by path), what a deploy does with it; a key set on
// a service and not here is refused. keys_test.go fails when compose-go
// gains a key this table does not name.
var keys = map[string]handling{
	"name": {applied, ""}, "image": {applied, ""}, "command": {applied, ""}, "entrypoint": {applied, ""},
	"environment": {applied, ""}, "env_file": {applied, ""}, "labels": {applied, ""},
	"user": {applied, ""}, "working_dir": {applied, ""}, "restart": {applied, ""},
	"healthcheck": {applied, ""}, "mem_limit": {applied, ""}, "cpus": {applied, ""},
	"pids_limit": {applied, ""}, "init": {applied, ""}, "tty": {applied, ""}, "stdin_open": {applied, ""}, "extra_hosts": {applied, ""}, "cap_add": {applied, ""},
	"cap_drop": {applied, ""}, "logging": {applied, ""}, "stop_signal": {applied, ""},
	"stop_grace_period": {applied, ""}, "ports": {applied, ""}, "expose": {applied, ""},
	"pull_policy": {applied, ""}, "scale": {applied, ""},
	"container_name": {refused, "two releases cannot have one name while a deploy runs"}, // supported says more
	"network_mode":   {refused, "a proxy must reach two releases at once, on networks"},

	"profiles":           {ignored, "it chooses which services a project has; handoff deploys the services it is named"},
	"depends_on":         {ignored, "it orders the start of `docker compose up`; a deploy replaces one service and starts no other"},
	"develop":            {ignored, "it is for `docker compose watch`; a deploy watches no files"},
	"attach":             {ignored, "it says whose logs `docker compose up` prints"},
	"extends":            {ignored, "compose-go merged it into the service as it loaded the project"},
	"label_file":         {ignored, "compose-go read its labels into labels: as it loaded the project"},
	"pull_refresh_after": {ignored, "pull_policy's refresh: handoff pulls on every deploy instead"},

	"gpus":                {refused, "handoff does not pass device requests (GPUs) to a release yet"},
	"ulimits":             {refused, notApplied},
	"log_driver":          {refused, "write it as logging: {driver: …}"},
	"log_opt":             {refused, "write it as logging: {options: …}"},
	"dockerfile":          {refused, "write it as build: {dockerfile: …}"},
	"secrets":             {refused, notApplied},
	"configs":             {refused, notApplied},
	"models":              {refused, notApplied},
	"provider":            {refused, "a provider service is not a container"},
	"post_start":          {refused, notApplied},
	"pre_start":           {refused, notApplied},
	"pre_stop":            {refused, notApplied},
	"use_api_socket":      {refused, notApplied},
	"links":               {refused, "links are legacy; reach the other service by its name on a shared network"},
	"external_links":      {refused, "links are legacy; reach the other container by its name on a shared network"},
	"net":                 {refused, "write it as network_mode"},
	"mac_address":         {refused, "two releases run at once during a deploy and cannot share one MAC address; remove it"},
	"hostname":            {refused, notApplied},
	"domainname":          {refused, notApplied},
	"volumes_from":        {refused, notApplied},
	"volume_driver":       {refused, notApplied},
	"tmpfs":               {refused, notApplied},
	"read_only":           {refused, notApplied},
	"privileged":          {refused, notApplied},
	"security_opt":        {refused, notApplied},
	"sysctls":             {refused, notApplied},
	"devices":             {refused, notApplied},
	"device_cgroup_rules": {refused, notApplied},
	"group_add":           {refused, notApplied},
	"dns":                 {refused, notApplied},
	"dns_opt":             {refused, notApplied},
	"dns_search":          {refused, notApplied},
	"ipc":                 {refused, notApplied},
	"pid":                 {refused, notApplied},
	"uts":                 {refused, notApplied},
	"userns_mode":         {refused, notApplied},
	"cgroup":              {refused, notApplied},
	"cgroup_parent":       {refused, notApplied},
	"runtime":             {refused, notApplied},
	"isolation":           {refused, notApplied},
	"platform":            {refused, notApplied},
	"storage_opt":         {refused, notApplied},
	"shm_size":            {refused, notApplied},
	"oom_kill_disable":    {refused, notApplied},
	"oom_score_adj":       {refused, notApplied},
	"mem_reservation":     {refused, notApplied},
	"memswap_limit":       {refused, notApplied},
	"mem_swappiness":      {refused, notApplied},
	"cpu_count":           {refused, notApplied},
	"cpu_percent":         {refused, notApplied},
	"cpu_period":          {refused, notApplied},
	"cpu_quota":           {refused, notApplied},
	"cpu_rt_period":       {refused, notApplied},
	"cpu_rt_runtime":      {refused, notApplied},
	"cpu_shares":          {refused, notApplied},
	"cpuset":              {refused, notApplied},
	"blkio_config":        {refused, notApplied},
	"credential_spec":     {refused, notApplied},
	"annotations":         {refused, notApplied},
	"umask":               {refused, notApplied},

	"volumes":                       {nested, ""},
	"volumes.type":                  {applied, ""},
	"volumes.source":                {applied, ""},
	"volumes.target":                {applied, ""},
	"volumes.read_only":             {applied, ""},
	"volumes.consistency":           {ignored, "it tunes Docker Desktop's file sharing on macOS; Linux mounts have one consistency"},
	"volumes.bind":                  {nested, ""},
	"volumes.bind.selinux":          {applied, ""},
	"volumes.bind.propagation":      {applied, ""},
	"volumes.bind.create_host_path": {applied, ""},
	"volumes.bind.recursive":        {applied, ""},
	"volumes.volume":                {nested, ""},
	"volumes.volume.nocopy":         {applied, ""},
	"volumes.volume.subpath":        {applied, ""},
	"volumes.volume.labels":         {ignored, "they label a volume docker compose creates; handoff creates none (Docker makes a missing one, unlabelled)"},
	"volumes.tmpfs":                 {refused, notApplied},
	"volumes.image":                 {refused, notApplied},

	"networks":                        {nested, ""},
	"networks.aliases":                {applied, ""},
	"networks.priority":               {applied, ""},
	"networks.use_service_name_alias": {applied, ""},
	"networks.ipv4_address":           {refused, "two releases run at once during a deploy and cannot hold one address; remove it, and reach the service by its name"},
	"networks.ipv6_address":           {refused, "two releases run at once during a deploy and cannot hold one address; remove it, and reach the service by its name"},
	"networks.mac_address":            {refused, "two releases run at once during a deploy and cannot share one MAC address; remove it"},
	"networks.link_local_ips":         {refused, notApplied},
	"networks.driver_opts":            {refused, notApplied},
	"networks.gw_priority":            {refused, notApplied},
	"networks.interface_name":         {refused, notApplied},

	"deploy":                                          {nested, ""},
	"deploy.mode":                                     {applied, ""},
	"deploy.replicas":                                 {applied, ""},
	"deploy.resources":                                {nested, ""},
	"deploy.resources.limits":                         {nested, ""},
	"deploy.resources.limits.cpus":                    {applied, ""},
	"deploy.resources.limits.memory":                  {applied, ""},
	"deploy.resources.limits.pids":                    {applied, ""},
	"deploy.resources.limits.devices":                 {refused, "handoff does not pass device requests (GPUs) to a release yet"},
	"deploy.resources.limits.generic_resources":       {refused, "generic resources are for a swarm's scheduler"},
	"deploy.resources.reservations":                   {nested, ""},
	"deploy.resources.reservations.cpus":              {refused, notApplied},
	"deploy.resources.reservations.memory":            {refused, notApplied},
	"deploy.resources.reservations.pids":              {refused, notApplied},
	"deploy.resources.reservations.devices":           {refused, "handoff does not pass device requests (GPUs) to a release yet"},
	"deploy.resources.reservations.generic_resources": {refused, "generic resources are for a swarm's scheduler"},
	"deploy.restart_policy":                           {nested, ""},
	"deploy.restart_policy.condition":                 {applied, ""},
	"deploy.restart_policy.max_attempts":              {applied, ""},
	"deploy.restart_policy.delay":                     {ignored, "Docker's restart policy has no delay (docker compose drops it too)"},
	"deploy.restart_policy.window":                    {ignored, "Docker's restart policy has no window (docker compose drops it too)"},
	"deploy.labels":                                   {ignored, "they label a swarm service; a container's labels are labels:"},
	"deploy.update_config":                            {ignored, "it is how a swarm updates a service; handoff deploys by its own strategy (x-handoff: strategy)"},
	"deploy.rollback_config":                          {ignored, "it is how a swarm rolls back; `handoff rollback` runs the previous release"},
	"deploy.placement":                                {ignored, "it places a swarm's tasks on nodes; a release runs on the engine handoff talks to"},
	"deploy.endpoint_mode":                            {ignored, "it is a swarm's way of balancing a service's tasks"},

	"build":                     {nested, ""},
	"build.context":             {applied, ""},
	"build.dockerfile":          {applied, ""},
	"build.args":                {applied, ""},
	"build.target":              {applied, ""},
	"build.dockerfile_inline":   {refused, "write the Dockerfile to a file and name it with build: {dockerfile: …}"},
	"build.secrets":             {refused, "handoff's docker build passes no build secrets yet; build the image with docker compose build and give it as image:"},
	"build.ssh":                 {refused, "handoff's docker build forwards no SSH agent yet; build the image with docker compose build and give it as image:"},
	"build.entitlements":        {refused, notApplied},
	"build.provenance":          {refused, notApplied},
	"build.sbom":                {refused, notApplied},
	"build.labels":              {refused, notApplied},
	"build.cache_from":          {refused, notApplied},
	"build.cache_to":            {refused, notApplied},
	"build.no_cache":            {refused, notApplied},
	"build.no_cache_filter":     {refused, notApplied},
	"build.additional_contexts": {refused, notApplied},
	"build.pull":                {refused, notApplied},
	"build.extra_hosts":         {refused, notApplied},
	"build.isolation":           {refused, notApplied},
	"build.network":             {refused, notApplied},
	"build.shm_size":            {refused, notApplied},
	"build.tags":                {refused, notApplied},
	"build.ulimits":             {refused, notApplied},
	"build.platforms":           {refused, notApplied},
	"build.privileged":          {refused, notApplied},
}

// setKeys lists the paths of the keys v (a compose struct) sets, under
// prefix, walking into the keys table marks nested: each volume, each network.
func setKeys(table map[string]handling, prefix string, v reflect.Value, out map[string]bool) {
	for v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return
		}
		v = v.Elem()
	}
	switch v.Kind() {
	case reflect.Slice:
		for i := range v.Len() {
			setKeys(table, prefix, v.Index(i), out)
		}
		return
	case reflect.Map:
		for _, k := range v.MapKeys() {
			setKeys(table, prefix, v.MapIndex(k), out)
		}
		return
	case reflect.Struct:
	default:
		return
	}
	for i := range v.NumField() {
		f := v.Type().Field(i)
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" || strings.HasPrefix(name, "#") || !f.IsExported() {
			continue // compose-go's own (name, extensions)
		}
		if slices.Contains(strings.Split(opts, ","), "inline") && name == "" {
			setKeys(table, prefix, v.Field(i), out)
			continue
		}
		if name == "" || unset(v.Field(i)) {
			continue
		}
		path := name
		if prefix != "" {
			path = prefix + "." + name
		}
		out[path] = true
		if table[path].use == nested {
			setKeys(table, path, v.Field(i), out)
		}
	}
}

// unset says whether a field is left out, as yaml's omitempty would leave
// it out (its own IsZero first: create_host_path's zero is true).
func unset(f reflect.Value) bool {
	if z, ok := f.Interface().(interface{ IsZero() bool }); ok && (f.Kind() != reflect.Pointer || !f.IsNil()) {
		return z.IsZero()
	}
	switch f.Kind() {
	case reflect.Slice, reflect.Map:
		return f.Len() == 0
	}
	return f.IsZero()
}

// classify refuses a service that sets a key handoff neither applies nor
// may ignore (keys), saying what to change.
func classify(s types.ServiceConfig) error {
	return refuseKeys(s, keys, fmt.Sprintf("which handoff does not apply to a release yet; remove it, or deploy %s with docker compose", s.Name))
}

// refuseKeys refuses the keys s sets that table refuses, or does not name:
// with its reason, else with plain (what to do).
func refuseKeys(s types.ServiceConfig, table map[string]handling, plain string) error {
	set := map[string]bool{}
	setKeys(table, "", reflect.ValueOf(s), set)
	var unnamed, reasons []string
	for _, k := range slices.Sorted(maps.Keys(set)) {
		h, ok := table[k]
		switch {
		case !ok || h.use == refused && h.why == notApplied:
			unnamed = append(unnamed, k)
		case h.use == refused:
			reasons = append(reasons, fmt.Sprintf("%s (%s)", k, h.why))
		}
	}
	var parts []string
	if len(reasons) > 0 {
		parts = append(parts, fmt.Sprintf("%s sets %s", s.Name, strings.Join(reasons, ", ")))
	}
	if len(unnamed) > 0 {
		parts = append(parts, fmt.Sprintf("%s sets %s, %s", s.Name, strings.Join(unnamed, ", "), plain))
	}
	if len(parts) > 0 {
		return fmt.Errorf("%w: %s", deploy.ErrConfig, strings.Join(parts, "; "))
	}
	return nil
}
