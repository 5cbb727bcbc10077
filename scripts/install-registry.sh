#!/usr/bin/env bash
# Installs the reference container registry (distribution v3) into .tools/,
# built from the Go module proxy: the registry tests push images to it on
# loopback and deploy them from it with htpasswd credentials.
# Safe to run again: what is there is kept.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=3.1.2
dest="$root/.tools/registry-$version"
if [ ! -x "$dest/registry" ]; then
  echo "installing the distribution registry v$version into $dest (first time: a minute or two)" >&2
  (cd /tmp && CGO_ENABLED=0 GOBIN="$dest" go install "github.com/distribution/distribution/v3/cmd/registry@v$version")
fi
"$dest/registry" --version >/dev/null
