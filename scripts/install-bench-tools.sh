#!/usr/bin/env bash
# Installs what the hop benchmark runs besides handoff and Caddy: wrk (the
# load) and HAProxy (the yardstick), Debian's packages. Safe to run again.
# Usage: scripts/install-bench-tools.sh [--optional] — with --optional, a
# machine that cannot install them says so and exits 0 (the benchmark is
# then skipped, never failed).
set -euo pipefail
missing=()
for tool in wrk haproxy; do command -v "$tool" >/dev/null || missing+=("$tool"); done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian's ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian's haproxy package may start one where systemd runs; the benchmark starts its own.
  if command -v systemctl >/dev/null && systemctl is-active --quiet haproxy 2>/dev/null; then
    systemctl stop haproxy && systemctl disable haproxy || true
  fi
  exit 0
fi
echo "install-bench-tools: ${missing[*]} missing; install them (apt-get install ${missing[*]})" >&2
[ "${1:-}" = --optional ] && exit 0
exit 1
