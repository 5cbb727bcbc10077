#!/usr/bin/env bash
# Installs the Caddy builds handoff's tests run against, into .tools/:
#   .tools/caddy-2.11.9-static/caddy   built from the Go module proxy (current release),
#                                      static, so that the compose tests' Caddy image runs it too
#   /usr/bin/caddy                     Debian's package, 2.6.2 (only with --debian)
# Safe to run again: what is there is kept.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=2.11.9
dest="$root/.tools/caddy-$version-static"
if [ ! -x "$dest/caddy" ]; then
  echo "installing caddy v$version into $dest (first time: a few minutes)" >&2
  (cd /tmp && CGO_ENABLED=0 GOBIN="$dest" go install "github.com/caddyserver/caddy/v2/cmd/caddy@v$version")
fi
if [ "${1:-}" = "--debian" ] && ! command -v /usr/bin/caddy >/dev/null; then
  echo "installing Debian's caddy package" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  # Debian's package would start a Caddy on :80 where systemd runs; tests start their own.
  apt-get install -y -qq --no-install-recommends caddy >/dev/null
  if command -v systemctl >/dev/null && systemctl is-active --quiet caddy 2>/dev/null; then
    systemctl stop caddy && systemctl disable caddy || true
  fi
fi
"$dest/caddy" version >/dev/null
