#!/usr/bin/env bash
# Installs the Docker Compose CLI handoff's compose tests run against, into
# .tools/compose-<version>/docker-compose, built from the Go module proxy
# (github.com/docker/compose/v5). v5.6.0: v5.7.x needs
# github.com/docker/secrets-engine, which the module proxy does not serve.
# Debian's docker-compose 1.29.2 is tested too (apt, by scripts/test.sh).
# Safe to run again: what is there is kept.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=5.6.0
dest="$root/.tools/compose-$version"
if [ ! -x "$dest/docker-compose" ]; then
  echo "installing docker compose v$version into $dest (first time: a few minutes)" >&2
  mkdir -p "$dest"
  # `go install pkg@version` refuses a module whose go.mod has replace or
  # exclude directives: build it as the main module, from its source in
  # the module cache.
  src=$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "github.com/docker/compose/v5@v$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  (cd "$src" && CGO_ENABLED=0 go build -trimpath -o "$dest/docker-compose" \
    -ldflags "-s -w -X github.com/docker/compose/v5/internal.Version=v$version" ./cmd)
fi
"$dest/docker-compose" version >/dev/null
