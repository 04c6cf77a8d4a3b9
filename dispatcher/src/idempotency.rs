//! One message per (event dedup key, channel), whatever happens: duplicate
//! webhooks, broker redeliveries after a crash, DLQ replays.
//!
//! Keys (all under the configured prefix):
//! - `lease:<dedup>:<channel>` = worker token, short TTL: someone is sending now;
//! - `done:<dedup>:<channel>` = JSON with provider and message id, long TTL: sent;
//! - `second:<dedup>:<channel>` = time of the first failure: the one second
//!   attempt is scheduled (never two);
//! - `failed:<dedup>:<channel>` = last failure class and reason.
//!
//! The claim is one Lua script (check done, take the lease) so two workers
//! can never both decide to send. The done mark is written before the broker
//! ack, so a crash after sending but before the ack finds the mark on
//! redelivery. Redis unreachable is an error the worker answers by not
//! sending (fail closed).

use std::time::Duration;

use deadpool_redis::redis::{self, Script};
use deadpool_redis::{Config, Pool, Runtime};
use serde::{Deserialize, Serialize};
use shared::tenant::Channel;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis unreachable: {0}")]
    Unavailable(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sent {
    pub provider: String,
    pub message_id: String,
    pub event_id: String,
    pub at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The lease is ours: send.
    Acquired,
    /// Already sent (by us earlier, another worker, or before a crash).
    AlreadySent(Option<Sent>),
    /// Another worker is sending this very message right now.
    Busy,
}

#[derive(Clone)]
pub struct Store {
    pool: Pool,
    prefix: String,
    lease_ttl: Duration,
    done_ttl: Duration,
    timeout: Duration,
}

const CLAIM: &str = r#"
local done = redis.call('GET', KEYS[1])
if done then return {'done', done} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {'acquired', ''} end
return {'busy', ''}
"#;

const MARK_SENT: &str = r#"
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
"#;

const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

impl Store {
    pub fn new(
        url: &str,
        prefix: &str,
        pool_size: usize,
        lease_ttl: Duration,
        done_ttl: Duration,
        timeout: Duration,
    ) -> Result<Store, String> {
        let mut cfg = Config::from_url(url);
        cfg.pool = Some(deadpool_redis::PoolConfig {
            max_size: pool_size,
            timeouts: deadpool_redis::Timeouts {
                wait: Some(timeout),
                create: Some(timeout),
                recycle: Some(timeout),
            },
            ..Default::default()
        });
        let pool = cfg
            .create_pool(Some(Runtime::Tokio1))
            .map_err(|e| format!("redis pool: {e}"))?;
        Ok(Store {
            pool,
            prefix: prefix.to_string(),
            lease_ttl,
            done_ttl,
            timeout,
        })
    }

    fn key(&self, kind: &str, dedup_key: &str, channel: Channel) -> String {
        format!("{}:{kind}:{dedup_key}:{channel}", self.prefix)
    }

    async fn run<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(deadpool_redis::Connection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let work = async {
            let conn = self
                .pool
                .get()
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            f(conn)
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_| Err(StoreError::Unavailable("timed out".into())))
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.run(|mut c| async move {
            redis::cmd("PING")
                .query_async::<String>(&mut c)
                .await
                .map(|_| ())
        })
        .await
    }

    pub async fn claim(
        &self,
        dedup_key: &str,
        channel: Channel,
        token: &str,
    ) -> Result<Claim, StoreError> {
        let done = self.key("done", dedup_key, channel);
        let lease = self.key("lease", dedup_key, channel);
        let ttl_ms = self.lease_ttl.as_millis() as u64;
        let (state, value): (String, String) = self
            .run(|mut c| async move {
                Script::new(CLAIM)
                    .key(done)
                    .key(lease)
                    .arg(token)
                    .arg(ttl_ms)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(match state.as_str() {
            "done" => Claim::AlreadySent(serde_json::from_str(&value).ok()),
            "acquired" => Claim::Acquired,
            _ => Claim::Busy,
        })
    }

    pub async fn mark_sent(
        &self,
        dedup_key: &str,
        channel: Channel,
        token: &str,
        sent: &Sent,
    ) -> Result<(), StoreError> {
        let done = self.key("done", dedup_key, channel);
        let lease = self.key("lease", dedup_key, channel);
        let value = serde_json::to_string(sent).unwrap_or_default();
        let ttl = self.done_ttl.as_secs();
        self.run(|mut c| async move {
            Script::new(MARK_SENT)
                .key(done)
                .key(lease)
                .arg(token)
                .arg(value)
                .arg(ttl)
                .invoke_async::<i64>(&mut c)
                .await
                .map(|_| ())
        })
        .await
    }

    /// Gives the lease back after a failure, so a retry or replay can send.
    pub async fn release(
        &self,
        dedup_key: &str,
        channel: Channel,
        token: &str,
    ) -> Result<(), StoreError> {
        let lease = self.key("lease", dedup_key, channel);
        self.run(|mut c| async move {
            Script::new(RELEASE)
                .key(lease)
                .arg(token)
                .invoke_async::<i64>(&mut c)
                .await
                .map(|_| ())
        })
        .await
    }

    /// Records that the one second attempt is scheduled. False when it
    /// already was (a duplicate first attempt must not schedule another).
    pub async fn schedule_second_attempt(
        &self,
        dedup_key: &str,
        channel: Channel,
    ) -> Result<bool, StoreError> {
        let key = self.key("second", dedup_key, channel);
        let ttl = self.done_ttl.as_secs();
        let now = chrono::Utc::now().to_rfc3339();
        self.run(|mut c| async move {
            redis::cmd("SET")
                .arg(key)
                .arg(now)
                .arg("NX")
                .arg("EX")
                .arg(ttl)
                .query_async::<Option<String>>(&mut c)
                .await
                .map(|r| r.is_some())
        })
        .await
    }

    /// Undoes [`schedule_second_attempt`] when the schedule could not be published.
    pub async fn unschedule_second_attempt(
        &self,
        dedup_key: &str,
        channel: Channel,
    ) -> Result<(), StoreError> {
        let key = self.key("second", dedup_key, channel);
        self.run(|mut c| async move {
            redis::cmd("DEL")
                .arg(key)
                .query_async::<i64>(&mut c)
                .await
                .map(|_| ())
        })
        .await
    }

    pub async fn mark_failed(
        &self,
        dedup_key: &str,
        channel: Channel,
        class: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        let key = self.key("failed", dedup_key, channel);
        let value = serde_json::json!({"class": class, "reason": reason, "at": chrono::Utc::now()})
            .to_string();
        let ttl = self.done_ttl.as_secs();
        self.run(|mut c| async move {
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("EX")
                .arg(ttl)
                .query_async::<String>(&mut c)
                .await
                .map(|_| ())
        })
        .await
    }

    /// The done mark, if any (admin tools and tests).
    pub async fn sent(
        &self,
        dedup_key: &str,
        channel: Channel,
    ) -> Result<Option<Sent>, StoreError> {
        let key = self.key("done", dedup_key, channel);
        let v: Option<String> = self
            .run(|mut c| async move { redis::cmd("GET").arg(key).query_async(&mut c).await })
            .await?;
        Ok(v.and_then(|v| serde_json::from_str(&v).ok()))
    }
}
