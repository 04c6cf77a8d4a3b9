#!/usr/bin/env bash
# Highly available Redis on this machine, loopback only, from Debian's
# redis-server (no Docker): the two shapes the dispatcher supports besides a
# single server (docs/DISPATCHER.md, "Redis"):
#
#   cluster   a Redis Cluster of 3 primaries with one replica each,
#             127.0.0.1:7101-7106 (made with `redis-cli --cluster create`)
#   sentinel  a primary 127.0.0.1:7201 with a replica on 7202, watched by
#             three Sentinels on 7211-7213 under the name `vestnik`
#
# Usage: deploy/redis-ha.sh start|stop|status|env
#   start   starts whatever is not running yet (idempotent, safe to call
#           from several tests at once) and waits until it serves
#   env     prints the settings a test or a dispatcher needs, as shell
#           assignments (VESTNIK_TEST_REDIS_CLUSTER=..., ...)
# State lives in $VESTNIK_REDIS_HA_DIR (default /tmp/vestnik-redis-ha); the
# ports move with $VESTNIK_REDIS_HA_BASE (default 7100).
set -euo pipefail

DIR=${VESTNIK_REDIS_HA_DIR:-/tmp/vestnik-redis-ha}
# Another base (deploy/cluster uses 8100) runs a second, separate set:
# cluster BASE+1..6, primary BASE+101, replica BASE+102, Sentinels BASE+111..113.
BASE=${VESTNIK_REDIS_HA_BASE:-7100}
CLUSTER_PORTS=($((BASE + 1)) $((BASE + 2)) $((BASE + 3)) $((BASE + 4)) $((BASE + 5)) $((BASE + 6)))
PRIMARY=$((BASE + 101))
REPLICA=$((BASE + 102))
SENTINELS=($((BASE + 111)) $((BASE + 112)) $((BASE + 113)))
MASTER_NAME=vestnik

log() { echo "[redis-ha] $*" >&2; }
up() { redis-cli -p "$1" ping >/dev/null 2>&1; }

wait_for() {
  local what=$1 secs=$2
  shift 2
  for _ in $(seq $((secs * 10))); do
    "$@" && return 0
    sleep 0.1
  done
  log "$what not ready within ${secs}s"
  return 1
}

server() {
  local port=$1
  shift
  mkdir -p "$DIR/$port"
  up "$port" && return 0
  redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --dir "$DIR/$port" \
    --appendonly yes --save "" --pidfile "$DIR/$port/redis.pid" \
    --logfile "$DIR/$port/redis.log" "$@" >/dev/null 9>&-
}

cluster_ok() {
  local p
  for p in "${CLUSTER_PORTS[@]}"; do
    redis-cli -p "$p" cluster info 2>/dev/null | grep -q 'cluster_state:ok' || return 1
  done
  # Every primary has its replica (a fresh cluster takes a moment to say so).
  [ "$(redis-cli -p "${CLUSTER_PORTS[0]}" cluster nodes 2>/dev/null | grep -c 'slave\|replica')" -ge 3 ]
}

start_cluster() {
  local p
  for p in "${CLUSTER_PORTS[@]}"; do
    server "$p" --cluster-enabled yes --cluster-config-file "$DIR/$p/nodes.conf" \
      --cluster-node-timeout 5000
  done
  for p in "${CLUSTER_PORTS[@]}"; do wait_for "redis $p" 10 up "$p"; done
  if ! redis-cli -p "${CLUSTER_PORTS[0]}" cluster info | grep -q 'cluster_slots_assigned:16384'; then
    log "creating the cluster on ${CLUSTER_PORTS[*]}"
    redis-cli --cluster create $(printf '127.0.0.1:%s ' "${CLUSTER_PORTS[@]}") \
      --cluster-replicas 1 --cluster-yes >"$DIR/cluster-create.log" 2>&1 \
      || { cat "$DIR/cluster-create.log" >&2; return 1; }
  fi
  wait_for "the cluster" 60 cluster_ok
}

sentinel_ok() {
  local s
  for s in "${SENTINELS[@]}"; do
    redis-cli -p "$s" sentinel get-master-addr-by-name "$MASTER_NAME" 2>/dev/null | grep -q . || return 1
    # Each Sentinel knows the other two and the replica.
    [ "$(redis-cli -p "$s" sentinel master "$MASTER_NAME" 2>/dev/null \
      | awk 'p {print; exit} /^num-other-sentinels$/ {p=1}')" = 2 ] || return 1
    [ "$(redis-cli -p "$s" sentinel master "$MASTER_NAME" 2>/dev/null \
      | awk 'p {print; exit} /^num-slaves$/ {p=1}')" -ge 1 ] || return 1
  done
}

start_sentinel() {
  local s
  if ! up "$PRIMARY" && ! up "$REPLICA"; then
    server "$PRIMARY"
    wait_for "redis $PRIMARY" 10 up "$PRIMARY"
    server "$REPLICA" --replicaof 127.0.0.1 "$PRIMARY"
  else
    # After a failover either may be the primary; start whichever is down
    # as a replica of the one that is up.
    up "$PRIMARY" || server "$PRIMARY" --replicaof 127.0.0.1 "$REPLICA"
    up "$REPLICA" || server "$REPLICA" --replicaof 127.0.0.1 "$PRIMARY"
  fi
  wait_for "redis $REPLICA" 10 up "$REPLICA"
  for s in "${SENTINELS[@]}"; do
    up "$s" && continue
    mkdir -p "$DIR/$s"
    [ -f "$DIR/$s/sentinel.conf" ] || cat >"$DIR/$s/sentinel.conf" <<EOF
port $s
bind 127.0.0.1
dir $DIR/$s
sentinel monitor $MASTER_NAME 127.0.0.1 $PRIMARY 2
sentinel down-after-milliseconds $MASTER_NAME 2000
sentinel failover-timeout $MASTER_NAME 10000
sentinel parallel-syncs $MASTER_NAME 1
EOF
    redis-server "$DIR/$s/sentinel.conf" --sentinel --daemonize yes \
      --pidfile "$DIR/$s/sentinel.pid" --logfile "$DIR/$s/sentinel.log" >/dev/null 9>&-
  done
  wait_for "the sentinels" 60 sentinel_ok
}

stop_all() {
  local p
  for p in "${CLUSTER_PORTS[@]}" "$PRIMARY" "$REPLICA" "${SENTINELS[@]}"; do
    redis-cli -p "$p" shutdown nosave >/dev/null 2>&1 || true
  done
  rm -rf "$DIR"
}

print_env() {
  local seeds
  seeds=$(printf 'redis://127.0.0.1:%s,' "${CLUSTER_PORTS[@]:0:3}")
  echo "VESTNIK_TEST_REDIS_CLUSTER=${seeds%,}"
  seeds=$(printf 'redis://127.0.0.1:%s,' "${SENTINELS[@]}")
  echo "VESTNIK_TEST_REDIS_SENTINELS=${seeds%,}"
  echo "VESTNIK_TEST_REDIS_MASTER_NAME=$MASTER_NAME"
}

command -v redis-server >/dev/null || { log "redis-server is not installed (deploy/services.sh installs it)"; exit 1; }
mkdir -p "$DIR"
case ${1:-start} in
  start)
    # Several tests may call this at once: one starts, the rest wait (the
    # servers are started without the lock's descriptor, or they would hold
    # it for good).
    exec 9>"$DIR/.lock"
    flock 9
    start_cluster
    start_sentinel
    ;;
  stop) stop_all ;;
  status)
    cluster_ok && log "cluster: ok" || log "cluster: not ready"
    sentinel_ok && log "sentinel: ok, primary $(redis-cli -p "${SENTINELS[0]}" sentinel get-master-addr-by-name "$MASTER_NAME" | paste -sd:)" \
      || log "sentinel: not ready"
    ;;
  env) print_env ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
