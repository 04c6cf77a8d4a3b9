#!/usr/bin/env bash
# Removes what test runs that died half-way left on the local RabbitMQ and
# Redis: queues and keys under the test prefixes (test-*, e2e-*, bench-*,
# prof-*, contract-*, smoke-*). Tests clean up after themselves when they finish; a test that
# panics cannot, and leftover quorum queues cost the broker CPU on every
# later run. Safe only when no test run is in progress on this machine.
set -uo pipefail
pattern='^(test|e2e|bench|bench-d|prof|contract|smoke)-'
if command -v rabbitmqctl >/dev/null; then
  rabbitmqctl -q list_queues name 2>/dev/null | grep -E "$pattern" | while read -r q; do
    rabbitmqctl -q delete_queue "$q" </dev/null >/dev/null 2>&1 || true
  done
fi
if command -v redis-cli >/dev/null; then
  for p in 'test-*' 'e2e-*' 'bench-*' 'prof-*' 'contract-*' 'smoke-*'; do
    redis-cli --scan --pattern "$p" 2>/dev/null | xargs -r -n 500 redis-cli del >/dev/null 2>&1 || true
  done
fi
