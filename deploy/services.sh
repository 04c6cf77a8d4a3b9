#!/usr/bin/env bash
# Makes sure RabbitMQ (127.0.0.1:5672) and Redis (127.0.0.1:6379) are running
# on this machine: starts them when installed but stopped, installs them from
# Debian's packages when missing (needs root, as on the CI machines).
set -euo pipefail

log() { echo "[services] $*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 name=$2 secs=${3:-90}
  for _ in $(seq "$secs"); do
    port_open "$port" && return 0
    sleep 1
  done
  log "$name did not open port $port within ${secs}s"
  return 1
}

apt_install() {
  if [ "$(id -u)" != 0 ]; then
    log "$* missing and not root: install it (apt-get install $*) and re-run"
    exit 1
  fi
  log "installing $* from Debian's packages"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  # Installing must not leave a second server bound to the standard ports via
  # the package's own service scripts on machines without systemd.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_rabbitmq() {
  if port_open 5672; then log "RabbitMQ is up"; return; fi
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  port_open 5672 && { log "RabbitMQ is up"; return; }
  log "starting RabbitMQ"
  rabbitmq-server -detached
  wait_port 5672 RabbitMQ 120
  rabbitmqctl await_startup >/dev/null 2>&1 || true
  log "RabbitMQ is up"
}

ensure_redis() {
  if port_open 6379; then log "Redis is up"; return; fi
  command -v redis-server >/dev/null || apt_install redis-server
  port_open 6379 && { log "Redis is up"; return; }
  log "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  local dir=/var/lib/redis logfile=/var/log/redis/ci.log
  [ -w "$dir" ] || dir=$(mktemp -d)
  [ -w "$(dirname "$logfile")" ] || logfile="$dir/redis.log"
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir "$dir" --logfile "$logfile"
  wait_port 6379 Redis 30
  log "Redis is up"
}

ensure_rabbitmq
ensure_redis
