#!/usr/bin/env bash
# Runs every test of handoff: unit tests, and integration tests against the
# real Docker engine and a real Caddy (v2.11.9, and Debian's 2.6.2).
# Installs what it needs first. Usage: scripts/test.sh [go test flags]
set -euo pipefail
cd "$(dirname "$0")/.."

command -v go >/dev/null || { echo "test.sh: Go 1.26 is needed (https://go.dev/dl)" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "test.sh: the Docker engine is not reachable (is it running? is DOCKER_HOST right?)" >&2; exit 1; }

# Caddy 2.11.9 from the Go module proxy; Debian's 2.6.2 where apt-get can install it.
debian=""
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then debian=--debian; fi
scripts/install-caddy.sh $debian
# The compose tests: docker compose v5.6.0 built from the module proxy, and
# Debian's docker-compose 1.29.2.
scripts/install-compose.sh
# The hop benchmark's tools (wrk, HAProxy), for its short run below.
scripts/install-bench-tools.sh --optional
# The registry tests: the reference registry (distribution v3.1.2) built
# from the module proxy.
scripts/install-registry.sh
# The SSH tests (internal/remote, handoff --host): Debian's sshd, which the
# tests start themselves on loopback ports with their own keys.
if [ -n "$debian" ]; then scripts/install-sshd.sh; fi
if ! command -v docker-compose >/dev/null && [ -n "$debian" ]; then
  echo "installing Debian's docker-compose" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
fi
if [ -x /usr/bin/caddy ] && /usr/bin/caddy version | grep -q '^v\?2\.6\.'; then
  export HANDOFF_TEST_CADDY_OLD=/usr/bin/caddy
else
  echo "test.sh: Debian's caddy 2.6.2 is not installed; its test will be skipped" >&2
fi

# The tests start their own Caddy processes on free ports and stop them
# (they die with the test process too); other Caddy processes on this
# machine are none of this script's business and are left alone.

unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then echo "test.sh: not gofmt'ed:" $unformatted >&2; exit 1; fi
go vet ./...
if [ ! -x .tools/bin/staticcheck ]; then
  (cd /tmp && GOBIN="$OLDPWD/.tools/bin" go install honnef.co/go/tools/cmd/staticcheck@v0.8.2)
fi
.tools/bin/staticcheck ./...

# Integration tests may not skip here: a missing Docker or Caddy is a failure.
export HANDOFF_REQUIRE_INTEGRATION=1
go test -count=1 -timeout 25m "$@" ./...

# The fuzz targets over what users and the proxy's state file feed handoff,
# each for a short fixed number of inputs here (past its committed corpus,
# which the run above already replayed; the slowest, FuzzStateFile, takes
# ~10 s); `make fuzz` runs each for longer. A count, not a time: Go 1.26's
# fuzzing can fail a duration-bound run with "context deadline exceeded"
# as its time runs out (go.dev/issue/75804, fixed in Go 1.27).
for target in $(scripts/fuzz-targets.sh); do
  go test -run '^$' -fuzz "^${target#*:}\$" -fuzztime "${HANDOFF_FUZZTIME:-3000x}" -fuzzminimizetime 100x "./${target%%:*}"
done

# The fault matrix's last row restarts the Docker engine itself, so it runs
# alone, once everything else is done. `make test-faults` runs the whole
# matrix with every kill repeated 5 times.
HANDOFF_TEST_DOCKERD_RESTART=1 go test -count=1 -timeout 10m -run TestFaultDockerdRestart ./internal/itest

# A swarm of three test servers (issue 20's harness) is more than two cores run
# beside the load tests above (and so are the one-node swarms that build and
# push images), so their tests run here, apart, with 2 deploys on the three
# nodes; `make test-swarm` runs the same with 10.
HANDOFF_TEST_SWARM=1 HANDOFF_SWARM_DEPLOYS=2 go test -p 1 -count=1 -timeout 15m -run 'TestSwarm|TestStoreAcrossManagers' ./internal/testhost ./internal/swarm ./internal/itest

# The deploy-under-load benchmark, short (2 deploys per strategy), only to
# prove it still runs; `make bench-deploy` is the real run.
HANDOFF_BENCH_DEPLOYS=2 HANDOFF_BENCH_OUT="${TMPDIR:-/tmp}/handoff-bench-ci" \
  go test -count=1 -timeout 20m -run TestDeployUnderLoad ./bench

# The bad-release benchmark, short (steps and watch of 10 s, a 10 s window
# for blue/green), only to prove it still runs; `make bench-bad-release` is
# the real run.
HANDOFF_BENCH_BAD=1 HANDOFF_BENCH_BAD_SHORT=1 HANDOFF_BENCH_OUT="${TMPDIR:-/tmp}/handoff-bench-ci" \
  go test -count=1 -timeout 10m -run TestBadReleaseUnderLoad ./bench

# The hop benchmark, short (1 round of 1 s per case), only to prove it still
# runs; `make bench-hop` is the real run. Skipped where wrk or HAProxy are
# missing and could not be installed.
if command -v wrk >/dev/null && command -v haproxy >/dev/null; then
  HANDOFF_BENCH_HOP=1 HANDOFF_BENCH_HOP_ROUNDS=1 HANDOFF_BENCH_HOP_DURATION=1s HANDOFF_BENCH_OUT="${TMPDIR:-/tmp}/handoff-bench-ci" \
    go test -count=1 -timeout 10m -run TestHop ./bench
fi

# The release, short: tools/release (a module of its own, so vet,
# staticcheck and its tests run from there) builds a snapshot for this
# machine only, installs its .deb into an empty root and runs handoff from
# it, and runs install.sh against a file server on loopback. `make
# release-snapshot` builds every target. -mod=mod: its go.mod follows
# handoff's (through a replace), which may have risen since it was tidied.
# Debian's rpm, where apt-get can install it, installs the .rpm too.
if ! command -v rpm >/dev/null && [ -n "$debian" ]; then
  echo "installing Debian's rpm" >&2
  { apt-get update -qq >/dev/null &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends rpm >/dev/null; } ||
    echo "test.sh: rpm could not be installed; the .rpm's install test will be skipped" >&2
fi
(
  cd tools/release
  export GOFLAGS="${GOFLAGS:-} -mod=mod"
  go vet ./...
  ../../.tools/bin/staticcheck ./...
  go test -count=1 -timeout 10m ./...
)
