# The two commands of the README, and the benchmark.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c  # a failing test fails the target, through its tee and grep
.PHONY: demo test test-faults fuzz bench-deploy bench-proxy bench-hop

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
# Writes bench-results/deploy.md and deploy.json.
N ?= 20
bench-deploy:
	scripts/install-caddy.sh
	HANDOFF_BENCH_DEPLOYS=$(N) go test -count=1 -run TestDeployUnderLoad -v -timeout 90m ./bench

# What one proxy hop costs under load: wrk through nothing, HAProxy, Caddy
# and handoff proxy, interleaved; writes bench-results/hop.md and hop.json.
bench-hop:
	scripts/install-caddy.sh
	scripts/install-bench-tools.sh
	HANDOFF_BENCH_HOP=1 go test -count=1 -run TestHop -v -timeout 30m ./bench | grep -vE '^\s+round '

# What the extra hop through handoff proxy costs one request (p50/p99, µs).
bench-proxy:
	go test -run XXX -bench Hop -benchtime 20000x -count 3 ./internal/proxy
