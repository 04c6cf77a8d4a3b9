//! How the dispatcher reaches Redis: one server, the primary that Sentinels
//! name (found again after a failover), or a Redis Cluster (`redis.mode`).
//! The store sees one connection type, [`Conn`], whichever it is.
//!
//! deadpool-redis creates and validates the connections in every mode. A
//! connection that failed a command is [`detach`](Checked::detach)ed rather
//! than given back to its pool: after a Sentinel failover the old primary
//! still answers the pool's PING check while refusing writes (`READONLY`),
//! so only a new connection, made through the Sentinels, reaches the new one.
//!
//! Every multi-key script and transaction keeps its keys in one hash slot
//! (the delivery's keys share the hash tag `{<dedup key>}`, see
//! `delivery_state`), which Redis Cluster requires and a single server does
//! not mind.

use deadpool_redis::redis::aio::{ConnectionLike, MultiplexedConnection};
use deadpool_redis::redis::cluster_async::ClusterConnection;
use deadpool_redis::redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use deadpool_redis::redis::{self, Cmd, Pipeline, RedisFuture, Value};
use deadpool_redis::{PoolConfig, Runtime, Timeouts, cluster, sentinel};
use shared::config::{RedisMode, RedisSettings};
use std::time::Duration;

/// The pools of one of the three modes.
#[derive(Clone)]
pub enum Backend {
    Single(deadpool_redis::Pool),
    Sentinel(sentinel::Pool),
    Cluster(cluster::Pool),
}

/// A connection checked out of its pool (given back when dropped).
pub enum Checked {
    Single(deadpool_redis::Connection),
    Sentinel(sentinel::Connection),
    Cluster(cluster::Connection),
}

/// A shareable, multiplexed connection: concurrent commands on clones of it
/// are pipelined on one socket (per node, for a cluster).
#[derive(Clone)]
pub enum Conn {
    Plain(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Backend {
    pub fn new(settings: &RedisSettings) -> Result<Backend, String> {
        let timeout = Duration::from_millis(settings.timeout_ms);
        let pool = Some(PoolConfig {
            max_size: settings.pool_size,
            timeouts: Timeouts {
                wait: Some(timeout),
                create: Some(timeout),
                recycle: Some(timeout),
            },
            ..Default::default()
        });
        let rt = Some(Runtime::Tokio1);
        Ok(match settings.mode {
            RedisMode::Single => {
                let mut cfg = deadpool_redis::Config::from_url(settings.url.clone());
                cfg.pool = pool;
                Backend::Single(
                    cfg.create_pool(rt)
                        .map_err(|e| format!("redis pool: {e}"))?,
                )
            }
            RedisMode::Cluster => {
                let mut cfg = cluster::Config::from_urls(settings.urls.clone());
                cfg.pool = pool;
                Backend::Cluster(
                    cfg.create_pool(rt)
                        .map_err(|e| format!("redis cluster pool: {e}"))?,
                )
            }
            RedisMode::Sentinel => {
                let mut cfg = sentinel::Config::from_urls(
                    settings.sentinels.clone(),
                    settings.master_name.clone(),
                    sentinel::SentinelServerType::Master,
                );
                if settings.master_password.is_some() || settings.master_username.is_some() {
                    cfg.node_connection_info = Some(sentinel::SentinelNodeConnectionInfo {
                        tls_mode: None,
                        redis_connection_info: Some(deadpool_redis::RedisConnectionInfo {
                            username: settings.master_username.clone(),
                            password: settings.master_password.clone(),
                            ..Default::default()
                        }),
                    });
                }
                cfg.pool = pool;
                Backend::Sentinel(
                    cfg.create_pool(rt)
                        .map_err(|e| format!("redis sentinel pool: {e}"))?,
                )
            }
        })
    }

    /// A validated connection and a shareable handle on it.
    pub async fn get(&self) -> Result<(Checked, Conn), String> {
        Ok(match self {
            Backend::Single(p) => {
                let c = p.get().await.map_err(|e| e.to_string())?;
                let shared = Conn::Plain((*c).clone());
                (Checked::Single(c), shared)
            }
            Backend::Sentinel(p) => {
                let c = p.get().await.map_err(|e| e.to_string())?;
                let shared = Conn::Plain(c.as_ref().clone());
                (Checked::Sentinel(c), shared)
            }
            Backend::Cluster(p) => {
                let c = p.get().await.map_err(|e| e.to_string())?;
                let shared = Conn::Cluster(c.as_ref().clone());
                (Checked::Cluster(c), shared)
            }
        })
    }

    /// A connection of its own (not shared), for tests and tools.
    pub async fn connect(&self) -> Result<Conn, String> {
        let (checked, conn) = self.get().await?;
        checked.detach();
        Ok(conn)
    }
}

impl Checked {
    /// Drops the connection without giving it back to the pool (it failed a
    /// command, or stopped answering).
    pub fn detach(self) {
        match self {
            Checked::Single(c) => drop(deadpool_redis::Connection::take(c)),
            Checked::Sentinel(c) => drop(sentinel::Connection::take(c)),
            Checked::Cluster(c) => drop(cluster::Connection::take(c)),
        }
    }
}

impl Conn {
    /// `WAIT replicas timeout` for this connection's writes to the primary
    /// that holds `key`: how many replicas have them (fewer than asked when
    /// the timeout ran out). In a cluster it goes to that key's primary
    /// only, so a primary elsewhere without replicas delays nothing.
    pub async fn wait_replicas(
        &mut self,
        key: &str,
        replicas: u32,
        timeout: Duration,
    ) -> redis::RedisResult<i64> {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(replicas).arg(timeout.as_millis() as u64);
        self.on_primary_of(key, cmd).await
    }

    /// How many replicas the primary that holds `key` has connected now
    /// (`connected_slaves` of `INFO replication`, routed like
    /// [`wait_replicas`](Conn::wait_replicas)). A primary promoted by a
    /// failover may have none for minutes; waiting for one then only slows
    /// every mark.
    pub async fn connected_replicas(&mut self, key: &str) -> redis::RedisResult<u32> {
        let mut cmd = redis::cmd("INFO");
        cmd.arg("replication");
        let info: String = self.on_primary_of(key, cmd).await?;
        Ok(replicas_in(&info))
    }

    /// Runs `cmd` on the primary that holds `key`: the one connection
    /// in plain mode, the slot's primary in a Cluster (a keyless command
    /// such as `WAIT` or `INFO` would otherwise go to any node).
    async fn on_primary_of<T: redis::FromRedisValue>(
        &mut self,
        key: &str,
        cmd: Cmd,
    ) -> redis::RedisResult<T> {
        match self {
            Conn::Plain(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => {
                let route = Route::with_key(key.as_bytes(), SlotAddr::Master);
                let v = c
                    .route_command(
                        cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?;
                Ok(redis::from_redis_value(v)?)
            }
        }
    }
}

/// `connected_slaves:<n>` of an `INFO replication` answer (0 when absent).
fn replicas_in(info: &str) -> u32 {
    info.lines()
        .find_map(|l| l.trim().strip_prefix("connected_slaves:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Plain(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Plain(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Plain(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::replicas_in;

    #[test]
    fn the_replica_count_is_read_off_info_replication() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\nslave0:ip=127.0.0.1,port=7001,state=online\r\n";
        assert_eq!(replicas_in(info), 2);
        assert_eq!(
            replicas_in("# Replication\r\nrole:master\r\nconnected_slaves:0\r\n"),
            0
        );
        assert_eq!(replicas_in("role:slave\r\n"), 0);
    }
}
