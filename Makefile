# The two commands of the README, and the benchmark.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c  # a failing test fails the target, through its tee and grep
.PHONY: demo test test-faults test-swarm fuzz bench-deploy bench-bad-release bench-proxy bench-hop bench-swarm

demo:
	examples/demo.sh

test:
	scripts/test.sh

# The whole fault matrix: every kill -9 repeated 5 times, then a restart of
# the Docker engine itself (it stops every container on this machine).
test-faults:
	scripts/install-caddy.sh
	HANDOFF_REQUIRE_INTEGRATION=1 HANDOFF_FAULT_RUNS=5 go test -count=1 -v -timeout 40m -run 'TestFault|TestFailedDeployLeavesOldServing|TestLiveRelease|TestLostAdminReply|TestSitesSharing|TestTwoServicesShare|TestHandoffProxyStartedWhileAServicesPortIsTaken|TestAProxyThatLostTheRoute|TestAPausedDeployKilledBy|TestHandoffProxyPauseEndsWithItsLease|TestAReleasePauseWaitsForTheRequestInFlight|TestMaintenanceOfOneHandlerOfASite|TestCaddyfileCorpusThroughCaddy|TestFirstDeployAdoptsAContainerBehindAnyFormOfALocalAddress|TestComposeReleaseKeepsItsConnections|TestReplicasUnderLoad' ./internal/itest | tee fault-matrix.log | grep -E 'matrix:|^(--- |ok|FAIL)'
	HANDOFF_REQUIRE_INTEGRATION=1 HANDOFF_TEST_DOCKERD_RESTART=1 go test -count=1 -v -timeout 10m -run TestFaultDockerdRestart ./internal/itest | tee -a fault-matrix.log | grep -E 'matrix:|^(--- |ok|FAIL)'

# The tests that start a swarm of three test servers (network namespaces, an
# engine each, the reference registry), run apart from the others.
test-swarm:
	HANDOFF_REQUIRE_INTEGRATION=1 HANDOFF_TEST_SWARM=1 HANDOFF_SWARM_FAULTS=1 go test -p 1 -count=1 -v -timeout 60m -run 'TestSwarm|TestStoreAcrossManagers' ./internal/testhost ./internal/swarm ./internal/itest

# Every fuzz target for longer than scripts/test.sh does (FUZZTIME inputs
# each, 100000x by default: about 5 minutes for the slowest; a count, since
# Go 1.26 may fail a run bound by time as it ends, go.dev/issue/75804). A
# failing input is written under the package's testdata/fuzz/: commit it
# with the fix.
FUZZTIME ?= 100000x
fuzz:
	for target in $$(scripts/fuzz-targets.sh); do \
	  go test -run '^$$' -fuzz "^$${target#*:}\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 1000x "./$${target%%:*}" || exit 1; \
	done

# Deploys under load, side by side: restart, script, handoff. N=20 by default.
# Writes bench-results/deploy.md and deploy.json; then the bad releases
# (bench-bad-release) into the same directory.
N ?= 20
bench-deploy:
	scripts/install-caddy.sh
	HANDOFF_BENCH_DEPLOYS=$(N) go test -count=1 -run TestDeployUnderLoad -v -timeout 90m ./bench
	$(MAKE) --no-print-directory bench-bad-release

# Bad releases under load (one failing 5% of requests, one twice as slow),
# each deployed blue/green, blue/green with a watch, and as a canary, and a
# good release through the same canary: the users each way hurt, and for
# how long. About 16 minutes; writes bench-results/bad-release.md, .json
# and .svg.
bench-bad-release:
	scripts/install-caddy.sh
	HANDOFF_BENCH_BAD=1 go test -count=1 -run TestBadReleaseUnderLoad -v -timeout 60m ./bench

# Deploys on a swarm of three test servers (make test-swarm's harness) under
# the same load sent to every node's published port: handoff beside Swarm's
# own `docker service update`, start-first and stop-first (issue 20), each
# SWARM_N deploys (10) and a rollback, alone on the swarm. About 20 minutes;
# writes bench-results/swarm.md, .json and .svg.
SWARM_N ?= 10
bench-swarm:
	HANDOFF_REQUIRE_INTEGRATION=1 HANDOFF_TEST_SWARM=1 HANDOFF_BENCH_SWARM=1 HANDOFF_BENCH_SWARM_DEPLOYS=$(SWARM_N) go test -count=1 -run TestSwarmUnderLoad -v -timeout 90m ./bench

# What one proxy hop costs under load: wrk through nothing, HAProxy, Caddy
# and handoff proxy, interleaved; writes bench-results/hop.md and hop.json.
bench-hop:
	scripts/install-caddy.sh
	scripts/install-bench-tools.sh
	HANDOFF_BENCH_HOP=1 go test -count=1 -run TestHop -v -timeout 30m ./bench | grep -vE '^\s+round '

# What the extra hop through handoff proxy costs one request (p50/p99, µs).
bench-proxy:
	go test -run XXX -bench Hop -benchtime 20000x -count 3 ./internal/proxy

# The release, built locally into dist/: a static handoff for linux and
# darwin on amd64 and arm64, a tar.gz of each, a .deb and an .rpm of each
# linux one, checksums.txt (tools/release, a module of its own so that nfpm
# stays out of handoff's go.mod; -mod=mod lets it follow a go.mod whose
# requirements rose since its own was tidied). TARGETS=linux/amd64 builds one.
.PHONY: release-snapshot
TARGETS ?= linux/amd64,linux/arm64,darwin/amd64,darwin/arm64
release-snapshot:
	cd tools/release && GOFLAGS="$$GOFLAGS -mod=mod" go run . --snapshot --targets $(TARGETS) --out $(CURDIR)/dist
