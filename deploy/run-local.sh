#!/usr/bin/env bash
# Runs the Vestnik pipeline on this machine without Docker: makes sure
# RabbitMQ and Redis run on loopback (installing/starting them if needed),
# builds the release binaries and runs them in the foreground until Ctrl-C.
# Config: deploy/local.toml (override with VESTNIK_CONFIG or VESTNIK_* variables).
set -euo pipefail
cd "$(dirname "$0")/.."

deploy/services.sh
cargo build --release --locked -p ingest
export VESTNIK_CONFIG=${VESTNIK_CONFIG:-deploy/local.toml}

pids=()
stop() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait; }
trap stop EXIT INT TERM

target/release/ingest & pids+=($!)
echo "ingest on http://127.0.0.1:8080 (try: curl 'http://127.0.0.1:8080/api/webhook/booking?key=demo-webhook-key-change-me')" >&2
wait -n
