# The two commands of the README, and the benchmark.
.PHONY: demo test bench-deploy bench-proxy

demo:
	examples/demo.sh

test:
	scripts/test.sh

# Deploys under load, side by side: restart, script, handoff. N=20 by default.
# Writes bench-results/deploy.md and deploy.json.
N ?= 20
bench-deploy:
	scripts/install-caddy.sh
	HANDOFF_BENCH_DEPLOYS=$(N) go test -count=1 -run TestDeployUnderLoad -v -timeout 90m ./bench

# What the extra hop through handoff proxy costs one request (p50/p99, µs).
bench-proxy:
	go test -run XXX -bench Hop -benchtime 20000x -count 3 ./internal/proxy
