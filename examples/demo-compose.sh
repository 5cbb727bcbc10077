#!/usr/bin/env bash
# The compose example end to end (examples/compose): Caddy, the app, a
# worker and a dependency come up with `docker compose up -d`; then
# `handoff deploy` ships v2 of the app and of the worker, and rolls the app
# back, while a client requests the site every 50 ms and counts failures.
#
# Needs: Docker and Go. Builds docker compose v5.6.0 and a static Caddy into
# .tools/ (scripts/install-compose.sh, scripts/install-caddy.sh).
# Uses 127.0.0.1 port 18081 (the site). Everything it starts is removed at
# the end; pass --keep to leave it running.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/handoff-compose-demo.XXXXXX")
keep=${1:-}
cd "$root"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
compose() { (cd "$work/compose" && "$root/.tools/compose-5.6.0/docker-compose" "$@"); }
cleanup() {
  [ "$keep" = "--keep" ] && { echo "left running (--keep): project hello in $work/compose"; return; }
  [ -n "${watch_pid:-}" ] && kill "$watch_pid" 2>/dev/null || true
  compose down -v -t 2 >/dev/null 2>&1 || true
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
if (exec 3<>/dev/tcp/127.0.0.1/18081) 2>/dev/null; then echo "demo: port 18081 is in use" >&2; exit 1; fi

say "Build handoff, docker compose, a Caddy image and two versions of the example app (FROM scratch)"
scripts/install-caddy.sh
scripts/install-compose.sh
go build -o "$work/handoff" ./cmd/handoff
handoff="$work/handoff"
mkdir -p "$work/img"
cp .tools/caddy-2.11.9-static/caddy "$work/img/caddy"
printf 'FROM scratch\nCOPY caddy /caddy\nENTRYPOINT ["/caddy"]\n' >"$work/img/Dockerfile"
build_image hello-caddy:2.11.9 "$work/img"
for v in v1 v2; do
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=$v" -o examples/hello/hello ./examples/hello
  build_image "hello:$v" examples/hello
done
rm -f examples/hello/hello
cp -r examples/compose "$work/compose"
export HANDOFF_STATE_DIR="$work/state" HANDOFF_COMPOSE="$root/.tools/compose-5.6.0/docker-compose"

say "docker compose up -d   (the project as compose starts it)"
compose up -d 2>&1 | tail -5
for _ in $(seq 100); do curl -fsS http://localhost:18081/ >/dev/null 2>&1 && break; sleep 0.1; done
curl -sS http://localhost:18081/

say "A client requests the site every 50 ms during the deploys and the rollback"
( ok=0; failed=0; last=""
  while [ ! -f "$work/stop-watch" ]; do
    if body=$(curl -fsS --max-time 5 http://localhost:18081/ 2>/dev/null); then
      ok=$((ok+1)); [ "$body" != "$last" ] && echo "   client: now $body" && last=$body
    else failed=$((failed+1)); fi
    sleep 0.05
  done
  echo "   client: $ok requests answered, $failed failed" ) &
watch_pid=$!

cd "$work/compose"
say "HELLO_VERSION=v2 handoff deploy -f compose.yaml web worker   (adopts what compose started)"
HELLO_VERSION=v2 "$handoff" deploy -f compose.yaml web worker
say "HELLO_VERSION=v2 docker compose up -d   (what handoff deployed is what the file says: nothing to do)"
HELLO_VERSION=v2 compose up -d 2>&1 | tail -4
say "handoff rollback -f compose.yaml web   (runs v1's image again, blue/green)"
HELLO_VERSION=v2 "$handoff" rollback -f compose.yaml web
touch "$work/stop-watch"; wait "$watch_pid"; watch_pid=""

say "docker compose ps   (the live releases; the dependency untouched)"
compose ps --format 'table {{.Name}}\t{{.Image}}\t{{.Status}}'
say "handoff status -f compose.yaml web"
"$handoff" status -f compose.yaml web
