#!/bin/sh
# The same as deploy.yml for any CI system (GitLab, Jenkins, Buildkite, a cron job): build,
# push, deploy over SSH. Set DEPLOY_HOST (ssh://user@server), and have the CI's SSH key and
# the server's known_hosts line in ~/.ssh; REGISTRY is your registry's image name.
set -eu
: "${DEPLOY_HOST:?set DEPLOY_HOST to ssh://user@server}"
: "${REGISTRY:?set REGISTRY, like registry.example.com/shop/web}"
tag=$(git rev-parse --short=12 HEAD)
docker build -t "$REGISTRY:$tag" .
docker push "$REGISTRY:$tag"
# --image overrides handoff.yml's image: with the tag just pushed; the server pulls it.
command -v handoff >/dev/null || curl -fsSL https://raw.githubusercontent.com/handoff-dev/handoff/main/install.sh | sh
handoff deploy --host "$DEPLOY_HOST" --image "$REGISTRY:$tag" --verify=strict
