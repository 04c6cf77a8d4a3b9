#!/usr/bin/env bash
# Proves README's run command: starts deploy/run-local.sh (on spare ports,
# with its own queue and Redis prefixes), posts the webhook its banner
# suggests, and checks the message shows up in the log provider's output.
# Usage: deploy/smoke-local.sh   (BUILD_PROFILE=debug to reuse debug builds)
set -euo pipefail
cd "$(dirname "$0")/.."

run_id="smoke-$$-$RANDOM"
work=$(mktemp -d)
log="$work/run-local.log"
export VESTNIK_INGEST__LISTEN=127.0.0.1:18480
export VESTNIK_DISPATCHER__LISTEN=127.0.0.1:19490
export VESTNIK_RABBITMQ__PREFIX=$run_id
export VESTNIK_REDIS__PREFIX=$run_id
export VESTNIK_SPOOL__DIR=$work/spool
export VESTNIK_LOG__FORMAT=json

setsid deploy/run-local.sh >"$log" 2>&1 &
stack=$!
cleanup() {
  kill -TERM -- "-$stack" 2>/dev/null || true
  wait "$stack" 2>/dev/null || true
  profile=${BUILD_PROFILE:-release}
  if [ -x "target/$profile/drop_topology" ]; then
    "target/$profile/drop_topology" amqp://guest:guest@127.0.0.1:5672/%2f "$run_id" >/dev/null 2>&1 || true
  fi
  redis-cli --scan --pattern "$run_id:*" 2>/dev/null | xargs -r redis-cli del >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

ready=""
for _ in $(seq 1 600); do   # the first run compiles: up to 10 minutes
  if curl -fsS "http://$VESTNIK_INGEST__LISTEN/readyz" >/dev/null 2>&1 &&
     curl -fsS "http://$VESTNIK_DISPATCHER__LISTEN/readyz" >/dev/null 2>&1; then
    ready=yes; break
  fi
  if ! kill -0 "$stack" 2>/dev/null; then break; fi
  sleep 1
done
if [ -z "$ready" ]; then
  echo "smoke: the stack did not become ready" >&2; tail -40 "$log" >&2; exit 1
fi

order="smoke-$RANDOM$RANDOM"
answer=$(curl -sS -X POST "http://$VESTNIK_INGEST__LISTEN/api/webhook/rkeeper?key=demo-webhook-key-change-me" \
  -H 'Content-Type: application/json' \
  -d "{\"order\":{\"id\":\"$order\",\"status\":\"Выполнен\",\"client\":{\"phone\":\"8 916 123-45-67\"}}}")
echo "smoke: webhook answered $answer"
event_id=$(printf '%s' "$answer" | python3 -c 'import json,sys; print(json.load(sys.stdin)["events"][0]["id"])')

for _ in $(seq 1 30); do
  if grep -F "$event_id" "$log" | grep -q '"provider":"log"'; then
    echo "smoke: PASS: event $event_id reached the log provider:"
    grep -F "$event_id" "$log" | grep '"provider":"log"' | head -1
    if grep -q '79161234567' "$log"; then
      echo "smoke: FAIL: the full phone number appears in the log" >&2; exit 1
    fi
    exit 0
  fi
  sleep 1
done
echo "smoke: FAIL: event $event_id not in the log provider's output" >&2
tail -40 "$log" >&2
exit 1
