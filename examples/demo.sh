#!/usr/bin/env bash
# The whole thing, end to end, on this machine: the example app runs the
# usual way (`docker run -p`) behind Caddy; then `handoff deploy` ships v2
# and v3 while a client requests the site every 50 ms and counts failures.
#
# Needs: Docker and Go. Installs Caddy 2.11.9 into .tools/ (scripts/install-caddy.sh).
# `examples/demo.sh compose` shows the compose example instead.
# Uses 127.0.0.1 ports 18000 (the app, before handoff) and 18080 (the site).
# Everything it starts is removed at the end; pass --keep to leave it running.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# `examples/demo.sh compose`: the compose example (examples/compose).
if [ "${1:-}" = compose ]; then shift; exec "$root/examples/demo-compose.sh" "$@"; fi
work=$(mktemp -d "${TMPDIR:-/tmp}/handoff-demo.XXXXXX")
keep=${1:-}
cd "$root"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
cleanup() {
  [ "$keep" = "--keep" ] && { echo "left running (--keep): Caddy pid $(cat "$work/caddy.pid"), containers hello-*, files in $work"; return; }
  [ -n "${watch_pid:-}" ] && kill "$watch_pid" 2>/dev/null || true
  [ -f "$work/caddy.pid" ] && kill "$(cat "$work/caddy.pid")" 2>/dev/null || true
  docker rm -f hello-byhand $(docker ps -aq --filter label=handoff.service=hello) >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
# build_image TAG DIR: quietly. Where buildx is missing the docker CLI falls
# back to the legacy builder and prints a deprecation notice at every build;
# where it is there the build is BuildKit's. Docker's words show if it fails.
build_image() {
  local out
  if ! out=$(docker build -q -t "$1" "$2" 2>&1 >/dev/null); then printf '%s\n' "$out" >&2; return 1; fi
}

docker info >/dev/null 2>&1 || { echo "demo: the Docker engine is not reachable" >&2; exit 1; }
for port in 18000 18080; do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then echo "demo: port $port is in use" >&2; exit 1; fi
done
docker rm -f hello-byhand $(docker ps -aq --filter label=handoff.service=hello) >/dev/null 2>&1 || true
mkdir -p "$work/state"
export HANDOFF_STATE_DIR="$work/state"

say "Build handoff, Caddy and three versions of the example app (FROM scratch)"
scripts/install-caddy.sh
go build -o "$work/handoff" ./cmd/handoff
handoff="$work/handoff"
# handoff.yml names /run/caddy and /etc/caddy, as on a server; the demo's are in $work.
here=(--caddy-admin "unix:$work/caddy-admin.sock" --caddyfile "$work/Caddyfile")
for v in v1 v2 v3; do
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=$v" -o examples/hello/hello ./examples/hello
  build_image "hello:$v" examples/hello
done
rm -f examples/hello/hello

say "Before handoff: the app runs by hand, Caddy proxies localhost:18080 to it"
docker run -d --name hello-byhand -p 127.0.0.1:18000:8000 -e BOOT_SECONDS=0 hello:v1 >/dev/null
# The example's Caddyfile, with its admin socket in the demo's own directory.
sed "s|unix//run/caddy/admin.sock|unix/$work/caddy-admin.sock|" examples/hello/Caddyfile >"$work/Caddyfile"
.tools/caddy-2.11.9-static/caddy start --config "$work/Caddyfile" --adapter caddyfile --pidfile "$work/caddy.pid" >"$work/caddy.log" 2>&1
for _ in $(seq 100); do curl -fsS http://localhost:18080/ >/dev/null 2>&1 && break; sleep 0.1; done
curl -sS http://localhost:18080/

say "A client requests the site every 50 ms during both deploys"
( ok=0; failed=0; last=""
  while [ ! -f "$work/stop-watch" ]; do
    if body=$(curl -fsS --max-time 5 http://localhost:18080/ 2>/dev/null); then
      ok=$((ok+1)); [ "$body" != "$last" ] && echo "   client: now $body" && last=$body
    else failed=$((failed+1)); fi
    sleep 0.05
  done
  echo "   client: $ok requests answered, $failed failed" ) &
watch_pid=$!

cd examples/hello
say "handoff deploy --image hello:v2   (runs the migration in a one-off container, adopts the hand-started container, app boots 3 s)"
"$handoff" deploy "${here[@]}" --image hello:v2
say "handoff deploy --image hello:v3"
"$handoff" deploy "${here[@]}" --image hello:v3
touch "$work/stop-watch"; wait "$watch_pid"; watch_pid=""

say "handoff status"
"$handoff" status "${here[@]}"
say "handoff history   (and --chart: each deploy's phases to one scale)"
"$handoff" history "${here[@]}"
"$handoff" history --chart "${here[@]}"
say "The Caddyfile on disk follows the switch"
grep reverse_proxy "$work/Caddyfile"
say "handoff rollback   (back to v2, the same procedure)"
"$handoff" rollback "${here[@]}"
curl -sS http://localhost:18080/
say "handoff maintenance on   (503 with a page and Retry-After; /up still reaches the app)"
"$handoff" maintenance on "${here[@]}" --message "Back in five minutes."
curl -sS -o /dev/null -w '   GET /   -> %{http_code}, Retry-After: %header{retry-after}\n' http://localhost:18080/
curl -sS -o /dev/null -w '   GET /up -> %{http_code}\n' http://localhost:18080/up
"$handoff" maintenance off "${here[@]}"
curl -sS http://localhost:18080/
