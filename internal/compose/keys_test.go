package compose

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/types"
	"github.com/stretchr/testify/require"

	"github.com/handoff-dev/handoff/internal/config"
	"github.com/handoff-dev/handoff/internal/deploy"
)

// schemaKeys lists every key of a compose service by path, read off
// compose-go's own types (their yaml tags), walking into the keys keys
// marks nested.
func schemaKeys(prefix string, t reflect.Type, out *[]string) {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Map {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return
	}
	for i := range t.NumField() {
		f := t.Field(i)
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" || strings.HasPrefix(name, "#") || !f.IsExported() {
			continue
		}
		if name == "" && slices.Contains(strings.Split(opts, ","), "inline") {
			schemaKeys(prefix, f.Type, out)
			continue
		}
		path := name
		if prefix != "" {
			path = prefix + "." + name
		}
		*out = append(*out, path)
		if keys[path].use == nested {
			schemaKeys(path, f.Type, out)
		}
	}
}

// Every key compose-go knows for a service is applied, ignored for a
// reason, or refused: a key compose-go gains fails here until it is
// classified, and nothing is dropped in silence.
func TestEveryComposeKeyIsClassified(t *testing.T) {
	var all []string
	schemaKeys("", reflect.TypeFor[types.ServiceConfig](), &all)
	require.Greater(t, len(all), 150, "the walk found compose-go's keys")
	for _, k := range all {
		h, ok := keys[k]
		if !ok {
			t.Errorf("compose key %s is not in keys (keys.go): say whether handoff applies it, ignores it (and why), or refuses it", k)
			continue
		}
		if h.use == ignored {
			require.NotEmpty(t, h.why, "%s is ignored: say why", k)
		}
	}
	for k := range keys {
		require.Contains(t, all, k, "keys names %s, which compose-go does not have", k)
	}
}

// resolveYAML loads a one-service project from yml and resolves web.
func resolveYAML(t *testing.T, yml string) (deploy.Service, error) {
	t.Helper()
	dir := t.TempDir()
	f := filepath.Join(dir, "compose.yaml")
	require.NoError(t, os.WriteFile(f, []byte(yml), 0o644))
	require.NoError(t, os.Mkdir(filepath.Join(dir, "data"), 0o755))
	p, err := Load(context.Background(), Options{Files: []string{f}, Name: "p"})
	if err != nil {
		return deploy.Service{}, err
	}
	tg, err := Resolve(p, "web", config.Overrides{}, Tool{Hash: "h"})
	return tg.Service, err
}

// The settings that were accepted and dropped: each is applied to the
// release, or refused with what to change; keys that change nothing a
// deploy does are ignored, not refused.
func TestComposeSettings(t *testing.T) {
	const head = "services:\n  web:\n    image: x\n"
	cases := []struct {
		name, yml string
		want      func(t *testing.T, svc deploy.Service)
		refused   string
	}{
		{name: "volume subpath", yml: head + "    volumes:\n      - type: volume\n        source: tenants\n        target: /data\n        read_only: true\n        volume: {subpath: acme}\nvolumes:\n  tenants: {}\n",
			want: func(t *testing.T, svc deploy.Service) {
				require.Empty(t, svc.Volumes, "never the whole volume")
				require.Equal(t, []deploy.Mount{{Source: "p_tenants", Target: "/data", Subpath: "acme", ReadOnly: true}}, svc.Mounts)
			}},
		{name: "volume nocopy", yml: head + "    volumes:\n      - type: volume\n        source: cache\n        target: /cache\n        volume: {nocopy: true}\nvolumes:\n  cache: {}\n",
			want: func(t *testing.T, svc deploy.Service) {
				require.Equal(t, []string{"p_cache:/cache:nocopy"}, svc.Volumes)
			}},
		{name: "bind selinux and propagation", yml: head + "    volumes:\n      - type: bind\n        source: ./data\n        target: /data\n        read_only: true\n        bind: {selinux: Z, propagation: rslave}\n",
			want: func(t *testing.T, svc deploy.Service) {
				require.Len(t, svc.Volumes, 1)
				require.True(t, strings.HasSuffix(svc.Volumes[0], "/data:/data:ro,Z,rslave"), svc.Volumes[0])
			}},
		{name: "bind recursive", yml: head + "    volumes:\n      - type: bind\n        source: ./data\n        target: /data\n        bind: {recursive: disabled}\n",
			refused: "sets recursive: disabled, which handoff does not apply yet"},
		{name: "bind create_host_path false", yml: head + "    volumes:\n      - type: bind\n        source: ./missing\n        target: /data\n        bind: {create_host_path: false}\n",
			refused: "does not exist, and create_host_path is false"},
		{name: "ipv4_address", yml: head + "    networks:\n      back: {ipv4_address: 10.5.0.9}\nnetworks:\n  back:\n    ipam: {config: [{subnet: 10.5.0.0/24}]}\n",
			refused: "networks.ipv4_address (two releases run at once during a deploy and cannot hold one address"},
		{name: "use_service_name_alias false", yml: head + "    networks:\n      back: {use_service_name_alias: false, aliases: [api]}\nnetworks:\n  back: {}\n",
			want: func(t *testing.T, svc deploy.Service) {
				require.Equal(t, []deploy.Network{{Name: "p_back", Aliases: []string{"api"}}}, svc.Networks)
			}},
		{name: "replicas", yml: head + "    deploy: {replicas: 3}\n",
			want: func(t *testing.T, svc deploy.Service) { require.Equal(t, 3, svc.Replicas) }},
		{name: "scale", yml: head + "    scale: 2\n",
			want: func(t *testing.T, svc deploy.Service) { require.Equal(t, 2, svc.Replicas) }},
		{name: "scale and replicas alike", yml: head + "    scale: 2\n    deploy: {replicas: 2}\n",
			want: func(t *testing.T, svc deploy.Service) { require.Equal(t, 2, svc.Replicas) }},
		{name: "scale and replicas differ", yml: head + "    scale: 2\n    deploy: {replicas: 3}\n",
			refused: "can't set distinct values on 'scale' and 'deploy.replicas'"}, // compose-go's own rule, as docker compose says it
		{name: "replicas one", yml: head + "    deploy: {replicas: 1}\n",
			want: func(t *testing.T, svc deploy.Service) { require.Equal(t, 1, svc.Replicas) }},
		{name: "replicas zero", yml: head + "    deploy: {replicas: 0}\n",
			refused: "web sets deploy.replicas: 0: a service scaled to 0 runs no container, and a deploy would start none; set it to 1 or more, or do not deploy web"},
		{name: "scale zero", yml: head + "    scale: 0\n", refused: "web sets scale: 0: a service scaled to 0"},
		{name: "replicas too many", yml: head + "    deploy: {replicas: 65}\n", refused: "web sets deploy.replicas: 65: at most 64 containers a release"},
		{name: "global", yml: head + "    deploy: {mode: global}\n",
			want: func(t *testing.T, svc deploy.Service) { require.Equal(t, 1, svc.Replicas, "one on this one engine") }},
		{name: "global with replicas", yml: head + "    deploy: {mode: global, replicas: 3}\n",
			refused: "web sets deploy.mode: global and deploy.replicas: 3: global runs one container on each engine, one here, and docker compose would run 3; remove one of them"},
		{name: "replicas of a stop-first worker", yml: head + "    deploy: {replicas: 2}\n    x-handoff: {strategy: stop-first}\n",
			want: func(t *testing.T, svc deploy.Service) {
				require.Equal(t, 2, svc.Replicas)
				require.Equal(t, deploy.RolloutStopFirst, svc.Rollout)
			}},
		{name: "replicas in x-handoff", yml: head + "    x-handoff: {replicas: 2}\n",
			refused: "web's x-handoff sets replicas: a compose service's containers are counted by its deploy.replicas (or scale), which docker compose reads too; set it there"},
		{name: "limits pids", yml: head + "    deploy: {resources: {limits: {pids: 100}}}\n",
			want: func(t *testing.T, svc deploy.Service) { require.Equal(t, int64(100), svc.PidsLimit) }},
		{name: "init tty stdin_open", yml: head + "    init: true\n    tty: true\n    stdin_open: true\n",
			want: func(t *testing.T, svc deploy.Service) {
				require.True(t, *svc.Init)
				require.True(t, svc.TTY)
				require.True(t, svc.StdinOpen)
			}},
		{name: "pids_limit", yml: head + "    pids_limit: 50\n",
			want: func(t *testing.T, svc deploy.Service) { require.Equal(t, int64(50), svc.PidsLimit) }},
		{name: "reservations devices", yml: head + "    deploy: {resources: {reservations: {devices: [{driver: nvidia, count: 1, capabilities: [gpu]}]}}}\n",
			refused: "deploy.resources.reservations.devices (handoff does not pass device requests (GPUs)"},
		{name: "gpus", yml: head + "    gpus: all\n", refused: "gpus (handoff does not pass device requests (GPUs)"},
		{name: "dockerfile_inline", yml: "services:\n  web:\n    build: {context: ., dockerfile_inline: \"FROM scratch\"}\n", refused: "build.dockerfile_inline (write the Dockerfile to a file"},
		{name: "build secrets", yml: "services:\n  web:\n    build: {context: ., secrets: [npm]}\nsecrets:\n  npm: {environment: HOME}\n", refused: "build.secrets (handoff's docker build passes no build secrets yet"},
		{name: "build ssh", yml: "services:\n  web:\n    build: {context: ., ssh: [default]}\n", refused: "build.ssh (handoff's docker build forwards no SSH agent yet"},
		{name: "develop is ignored", yml: head + "    develop: {watch: [{action: sync, path: ./data, target: /data}]}\n", want: func(t *testing.T, svc deploy.Service) {}},
		{name: "attach is ignored", yml: head + "    attach: false\n", want: func(t *testing.T, svc deploy.Service) {}},
		{name: "restart on-failure:3", yml: head + "    restart: on-failure:3\n",
			want: func(t *testing.T, svc deploy.Service) { require.Equal(t, "on-failure:3", svc.Restart) }},
		{name: "restart_policy max_attempts", yml: head + "    deploy: {restart_policy: {condition: on-failure, max_attempts: 4, delay: 5s}}\n",
			want: func(t *testing.T, svc deploy.Service) { require.Equal(t, "on-failure:4", svc.Restart) }},
		{name: "restart unknown", yml: head + "    restart: sometimes\n", refused: `web: restart "sometimes": use no, always, unless-stopped, on-failure or on-failure:N`},
		{name: "restart count on always", yml: head + "    restart: always:2\n", refused: "a retry count goes with on-failure only"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			svc, err := resolveYAML(t, c.yml)
			if c.refused != "" {
				require.ErrorIs(t, err, deploy.ErrConfig)
				require.ErrorContains(t, err, c.refused)
				return
			}
			require.NoError(t, err)
			c.want(t, svc)
		})
	}
}

// A command or entrypoint string with a shell operator is refused as the
// project loads: compose-go splits it into words and drops everything
// from the operator on. A list, or an operator inside quotes, is fine; so
// is the x-handoff release string, which handoff splits itself.
func TestCommandStringsWithShellOperators(t *testing.T) {
	for _, c := range []struct{ yml, refused string }{
		{"    command: ./app migrate && ./app seed\n", `service web: command: a shell operator in a command that no shell runs: "&&" in "./app migrate && ./app seed"; write it as a list, or as [sh, -c, './app migrate && ./app seed']`},
		{"    command: gunicorn app:app > /var/log/app.log\n", `service web: command: a shell operator in a command that no shell runs: ">"`},
		{"    entrypoint: ./start; ./app\n", `service web: entrypoint: a shell operator in a command that no shell runs: ";"`},
		{"    x-handoff: {release: ./app migrate && ./app seed}\n", `"&&" in "./app migrate && ./app seed"; write it as a list`},
		{"    command: [sh, -c, \"./app migrate && ./app seed\"]\n", ""},
		{"    command: echo 'a && b'\n", ""},
	} {
		_, err := resolveYAML(t, "services:\n  web:\n    image: x\n"+c.yml)
		if c.refused == "" {
			require.NoError(t, err, c.yml)
			continue
		}
		require.ErrorIs(t, err, deploy.ErrConfig, c.yml)
		require.ErrorContains(t, err, c.refused)
	}
}

// --replicas cannot say otherwise than the compose file: docker compose up
// would scale the service back to the file's count.
func TestReplicasFlagFollowsTheComposeFile(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "compose.yaml")
	require.NoError(t, os.WriteFile(f, []byte("services:\n  web:\n    image: x\n    deploy: {replicas: 2}\n"), 0o644))
	p, err := Load(context.Background(), Options{Files: []string{f}, Name: "p"})
	require.NoError(t, err)
	tg, err := Resolve(p, "web", config.Overrides{Replicas: 2}, Tool{Hash: "h"})
	require.NoError(t, err)
	require.Equal(t, 2, tg.Service.Replicas)
	_, err = Resolve(p, "web", config.Overrides{Replicas: 3}, Tool{Hash: "h"})
	require.ErrorIs(t, err, deploy.ErrConfig)
	require.ErrorContains(t, err, "--replicas 3: web runs 2 (its deploy.replicas or scale), and docker compose up would scale it back; change the compose file instead")
}
