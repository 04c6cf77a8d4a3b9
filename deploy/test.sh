#!/usr/bin/env bash
# The test command: services up, then formatting, lints and every test of
# the workspace (unit, integration against the real RabbitMQ and Redis,
# end-to-end). Usage: deploy/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

deploy/services.sh
deploy/clean-test-leftovers.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build (the end-to-end tests start the real binaries)"
cargo build --workspace --bins --locked
echo "== cargo test"
cargo test --workspace --locked "$@"
