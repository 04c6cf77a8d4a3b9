#!/usr/bin/env bash
# The test command: services up, then formatting, lints and every test of
# the workspace (unit, integration against the real RabbitMQ and Redis,
# end-to-end). Usage: deploy/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

deploy/services.sh
deploy/clean-test-leftovers.sh

echo "== docker-compose config (no Docker engine needed)"
if ! command -v docker-compose >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null \
    || { DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null; }
fi
if command -v docker-compose >/dev/null; then
  docker-compose -f docker-compose.yml config -q
else
  echo "docker-compose not installed (and not root): compose file not validated" >&2
fi
echo "== Prometheus alert rules and their tests (promtool)"
if ! command -v promtool >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
    || { DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
fi
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts_test.yml
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build (the end-to-end tests start the real binaries)"
cargo build --workspace --bins --locked
echo "== highly available Redis on loopback (a Cluster and a Sentinel group, deploy/redis-ha.sh)"
deploy/redis-ha.sh start
echo "== the console's browser test: Debian's Chromium and playwright-core (tests/console)"
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null \
    || { DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
fi
if ! command -v npm >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null \
    || { DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null; }
fi
if [ ! -d tests/console/node_modules/playwright-core ]; then
  (cd tests/console && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "== cargo test"
cargo test --workspace --locked "$@"
echo "== the dispatcher's integration suites again, on the Redis Cluster"
# The same package selection as the pass above (`--workspace`, targets named),
# so cargo reuses its artifacts: `-p dispatcher` alone unifies features
# differently and rebuilds half the tree, which once filled CI's disk.
dispatcher_suites=()
for f in dispatcher/tests/*.rs; do dispatcher_suites+=(--test "$(basename "$f" .rs)"); done
env $(deploy/redis-ha.sh env | grep '^VESTNIK_TEST_REDIS_CLUSTER=') \
  cargo test --workspace --locked "${dispatcher_suites[@]}" "$@"
echo "== README's run command: a webhook reaches the log provider"
BUILD_PROFILE=debug deploy/smoke-local.sh
echo "== the API contract: schemathesis against every listener's /openapi.json (deploy/contract.sh)"
BUILD_PROFILE=debug deploy/contract.sh
echo "== failure drills, short (docs/RELIABILITY.md)"
deploy/drills --short --no-build
echo "== fleet drills, short: a 3-node RabbitMQ cluster, Sentinel and Redis Cluster (deploy/cluster)"
deploy/cluster drills --short --no-build
