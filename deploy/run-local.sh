#!/usr/bin/env bash
# Runs the Vestnik pipeline on this machine without Docker: makes sure
# RabbitMQ and Redis run on loopback (installing/starting them if needed),
# builds the release binaries and runs them in the foreground until Ctrl-C.
# Config: deploy/local.toml (override with VESTNIK_CONFIG or VESTNIK_* variables).
set -euo pipefail
cd "$(dirname "$0")/.."

deploy/services.sh
cargo build --release --locked -p ingest -p dispatcher
export VESTNIK_CONFIG=${VESTNIK_CONFIG:-deploy/local.toml}

pids=()
stop() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait; }
trap stop EXIT INT TERM

target/release/ingest & pids+=($!)
target/release/dispatcher & pids+=($!)
cat >&2 <<'MSG'
ingest on http://127.0.0.1:8080, dispatcher health/metrics on http://127.0.0.1:9090
No provider credentials are configured, so messages are written to the log. Try:
  curl -X POST 'http://127.0.0.1:8080/api/webhook/rkeeper?key=demo-webhook-key-change-me' \
       -H 'Content-Type: application/json' \
       -d '{"order":{"id":"1","status":"Выполнен","client":{"phone":"8 916 123-45-67"}}}'
MSG
wait -n
