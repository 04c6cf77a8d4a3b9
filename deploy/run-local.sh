#!/usr/bin/env bash
# Runs the Vestnik pipeline on this machine without Docker: makes sure
# RabbitMQ and Redis run on loopback (installing/starting them if needed),
# builds the release binaries and runs them in the foreground until Ctrl-C.
# Config: deploy/local.toml (override with VESTNIK_CONFIG or VESTNIK_* variables).
# BUILD_PROFILE=debug uses (and builds) the debug binaries instead.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${BUILD_PROFILE:-release}
deploy/services.sh
if [ "$profile" = release ]; then
  cargo build --release --locked -p ingest -p dispatcher
else
  cargo build --locked -p ingest -p dispatcher
fi
export VESTNIK_CONFIG=${VESTNIK_CONFIG:-deploy/local.toml}

pids=()
stop() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait; }
trap stop EXIT INT TERM

"target/$profile/ingest" & pids+=($!)
"target/$profile/dispatcher" & pids+=($!)
ingest_at=${VESTNIK_INGEST__LISTEN:-127.0.0.1:8080}
cat >&2 <<MSG
ingest on http://$ingest_at, dispatcher health/metrics on http://${VESTNIK_DISPATCHER__LISTEN:-127.0.0.1:9090}
No provider credentials are configured, so messages are written to the log. Try:
  curl -X POST 'http://$ingest_at/api/webhook/rkeeper?key=demo-webhook-key-change-me' \\
       -H 'Content-Type: application/json' \\
       -d '{"order":{"id":"1","status":"Выполнен","client":{"phone":"8 916 123-45-67"}}}'
MSG
wait -n
