#!/usr/bin/env bash
# The API contract, tried by a third party: starts the ingest and the
# dispatcher (deploy/contract/vestnik.toml: one tenant, every callback, the
# admin API) on RabbitMQ and Redis with their own queue and key prefixes, and
# runs schemathesis (pinned below, installed from PyPI into target/ when
# missing) with every check against each listener's own /openapi.json: the
# ingest's public port, the dispatcher's probes port and its admin port.
# Any failure fails the script, with schemathesis' report and a curl line to
# reproduce it.
#
# Usage: deploy/contract.sh
#   BUILD_PROFILE=release   use target/release (default: target/debug, built if missing)
#   CONTRACT_EXAMPLES=N     examples per operation (default 300)
#   CONTRACT_SEED=N         hypothesis seed (default 1: the same cases each run;
#                           any other value tries others)
set -euo pipefail
cd "$(dirname "$0")/.."

version=4.32.5
profile=${BUILD_PROFILE:-debug}
examples=${CONTRACT_EXAMPLES:-300}
seed=${CONTRACT_SEED:-1}

venv=target/schemathesis-$version
if ! "$venv/bin/schemathesis" --version >/dev/null 2>&1; then
  echo "contract: installing schemathesis $version from PyPI into $venv"
  rm -rf "$venv"
  # Debian's python3 keeps venv (and its pip) in a package of its own.
  if ! python3 -c 'import ensurepip, venv' 2>/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null \
      || { DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null; }
  fi
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
fi
"$venv/bin/schemathesis" --version

if [ ! -x "target/$profile/ingest" ] || [ ! -x "target/$profile/dispatcher" ]; then
  if [ "$profile" = release ]; then
    cargo build --release --locked -p ingest -p dispatcher
  else
    cargo build --locked -p ingest -p dispatcher
  fi
fi

run_id="contract-$$-$RANDOM"
work=$(mktemp -d)
export VESTNIK_CONFIG=deploy/contract/vestnik.toml
export VESTNIK_INGEST__LISTEN=${CONTRACT_INGEST:-127.0.0.1:18580}
export VESTNIK_DISPATCHER__LISTEN=${CONTRACT_PROBES:-127.0.0.1:18590}
export VESTNIK_ADMIN__LISTEN=${CONTRACT_ADMIN:-127.0.0.1:18591}
export VESTNIK_RABBITMQ__PREFIX=$run_id
export VESTNIK_REDIS__PREFIX=$run_id
export VESTNIK_SPOOL__DIR=$work/spool

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -x "target/$profile/drop_topology" ]; then
    "target/$profile/drop_topology" amqp://guest:guest@127.0.0.1:5672/%2f "$run_id" >/dev/null 2>&1 || true
  fi
  redis-cli --scan --pattern "$run_id:*" 2>/dev/null | xargs -r redis-cli del >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

"target/$profile/ingest" >"$work/ingest.log" 2>&1 & pids+=($!)
"target/$profile/dispatcher" >"$work/dispatcher.log" 2>&1 & pids+=($!)
for url in "$VESTNIK_INGEST__LISTEN/readyz" "$VESTNIK_DISPATCHER__LISTEN/readyz" "$VESTNIK_ADMIN__LISTEN/openapi.json"; do
  ready=""
  for _ in $(seq 1 60); do
    if curl -fsS "http://$url" >/dev/null 2>&1; then ready=yes; break; fi
    sleep 0.5
  done
  if [ -z "$ready" ]; then
    echo "contract: no answer from http://$url" >&2
    tail -20 "$work"/*.log >&2
    exit 1
  fi
done

failed=0
for listener in "ingest $VESTNIK_INGEST__LISTEN" "dispatcher-probes $VESTNIK_DISPATCHER__LISTEN" "dispatcher-admin $VESTNIK_ADMIN__LISTEN"; do
  set -- $listener
  echo "== contract: $1 (http://$2/openapi.json), $examples examples per operation, seed $seed"
  if ! "$venv/bin/schemathesis" --config-file deploy/contract/schemathesis.toml --no-color run \
      "http://$2/openapi.json" --checks all --max-examples "$examples" --seed "$seed" \
      >"$work/$1.report" 2>&1; then
    failed=1
    cat "$work/$1.report"
    echo "contract: FAIL: $1" >&2
  else
    grep -E "generated|passed|failures" "$work/$1.report" | tail -2
    echo "contract: PASS: $1"
  fi
done
# actix_http logs a request it cannot parse (a header schemathesis made
# invalid on purpose) at ERROR; that is the client's fault, not ours.
if grep -h '"level":"ERROR"' "$work"/*.log | grep -v '"target":"actix_http::' | grep -q .; then
  echo "contract: the services logged errors:" >&2
  grep -h '"level":"ERROR"' "$work"/*.log | grep -v '"target":"actix_http::' | head -20 >&2
  failed=1
fi
exit $failed
