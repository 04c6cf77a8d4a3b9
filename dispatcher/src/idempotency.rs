//! One message per (event dedup key, channel), whatever happens: duplicate
//! webhooks, broker redeliveries after a crash, DLQ replays.
//!
//! Keys (all under the configured prefix):
//! - `lease:<dedup>:<channel>` = worker token, short TTL: someone is sending now;
//! - `sending:<dedup>:<channel>` = worker token, set by the claim (the
//!   request is about to be written: no round trip of its own) and removed
//!   once the outcome is recorded (sent, or failed and released). A send
//!   the client-side rate limit holds back lifts it while it waits and sets
//!   it again when its permit comes ([`Store::lift_sending`],
//!   [`Store::resume_sending`]). Found by a later claim, it means a worker
//!   stopped (SIGKILL, crash, shutdown timeout) while its request may have
//!   reached the provider: that message is uncertain and is not sent again.
//!   A worker that stopped while waiting for a permit left only its lease,
//!   and the message is sent once the lease has expired;
//! - `done:<dedup>:<channel>` = JSON with provider and message id, long TTL: sent;
//! - `second:<dedup>:<channel>` = time of the first failure: the one second
//!   attempt is scheduled (never two);
//! - `failed:<dedup>:<channel>` = last failure class and reason;
//! - `retry:<dedup>:<channel>`: a provider reported the sent message failed
//!   (callback); only the one second attempt may send past the done mark;
//! - `msg:<provider>:<message id>` = what was sent (event, channel, attempt),
//!   so a delivery-status callback can find its event;
//! - `state:<provider>:<message id>` = the furthest delivery state seen.
//!
//! The claim is one Lua script (check done, take the lease) so two workers
//! can never both decide to send.
//!
//! Connections: deadpool-redis creates and validates them, but checking one
//! out per command would cost a PING round trip each (its recycle check).
//! A `MultiplexedConnection` pipelines concurrent commands, so the store
//! keeps a few checked out and shares them; a failed command drops its
//! connection and the next command gets a fresh, validated one. The done mark is written before the broker
//! ack, so a crash after sending but before the ack finds the mark on
//! redelivery. Redis unreachable is an error the worker answers by not
//! sending (fail closed).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use deadpool_redis::redis::aio::MultiplexedConnection;
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

/// What a provider message id stands for (kept for its callbacks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SentMessage {
    pub dedup_key: String,
    pub channel: Channel,
    pub attempt: i64,
    /// Channels that had already failed for this event.
    #[serde(default)]
    pub failed_channels: Vec<Channel>,
    /// The event as consumed, to schedule its second attempt.
    pub event: String,
}

/// What a release does with the `sending` mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sending {
    /// The request did not go out, or its outcome is known: forget it.
    Clear,
    /// The provider may have the message: keep it, so it is not sent again.
    Keep,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The lease is ours: send.
    Acquired,
    /// Already sent (by us earlier, another worker, or before a crash).
    AlreadySent(Option<Sent>),
    /// Another worker is sending this very message right now.
    Busy,
    /// A worker stopped while sending this message (its `sending` mark
    /// outlived its lease): the provider may have it. Not sent again.
    Uncertain,
}

/// Shared multiplexed connections checked out of the pool.
const SHARED_CONNECTIONS: usize = 4;

type Slot = Mutex<Option<(deadpool_redis::Connection, MultiplexedConnection)>>;

#[derive(Clone)]
pub struct Store {
    pool: Pool,
    slots: Arc<Vec<Slot>>,
    next: Arc<AtomicUsize>,
    prefix: String,
    lease_ttl: Duration,
    done_ttl: Duration,
    timeout: Duration,
}

static CLAIM: LazyLock<Script> = LazyLock::new(|| Script::new(CLAIM_LUA));
static MARK_SENT: LazyLock<Script> = LazyLock::new(|| Script::new(MARK_SENT_LUA));
static DELETE_OURS: LazyLock<Script> = LazyLock::new(|| Script::new(DELETE_OURS_LUA));
static RESUME_SENDING: LazyLock<Script> = LazyLock::new(|| Script::new(RESUME_SENDING_LUA));
static ADVANCE: LazyLock<Script> = LazyLock::new(|| Script::new(ADVANCE_LUA));

/// Moves a message's delivery state forward only (ranks in ARGV[1]); returns
/// 1 when it moved, 0 for a stale or repeated callback.
const ADVANCE_LUA: &str = r#"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local new = tonumber(ARGV[1])
if new <= cur then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"#;

const CLAIM_LUA: &str = r#"
local done = redis.call('GET', KEYS[1])
if done and not (ARGV[3] == '2' and redis.call('EXISTS', KEYS[3]) == 1) then return {'done', done} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if redis.call('EXISTS', KEYS[4]) == 1 then
    redis.call('DEL', KEYS[2])
    return {'uncertain', ''}
  end
  redis.call('SET', KEYS[4], ARGV[1], 'EX', ARGV[4])
  return {'acquired', ''}
end
return {'busy', ''}
"#;

const MARK_SENT_LUA: &str = r#"
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
redis.call('DEL', KEYS[3])
redis.call('SET', KEYS[4], ARGV[4], 'EX', ARGV[3])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
if redis.call('GET', KEYS[5]) == ARGV[1] then redis.call('DEL', KEYS[5]) end
return 1
"#;

/// Deletes each key that still holds this worker's token (ARGV[1]): a
/// release (lease, and the sending mark unless it must stay) or a lift.
const DELETE_OURS_LUA: &str = r#"
local n = 0
for _, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[1] then n = n + redis.call('DEL', k) end
end
return n
"#;

/// After a wait for a permit, right before the write: only while the lease
/// is still ours (the wait could have outlasted it), renewed for the send;
/// 1 when marked.
const RESUME_SENDING_LUA: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[3])
return 1
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
            slots: Arc::new((0..SHARED_CONNECTIONS).map(|_| Mutex::new(None)).collect()),
            next: Arc::new(AtomicUsize::new(0)),
            prefix: prefix.to_string(),
            lease_ttl,
            done_ttl,
            timeout,
        })
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, kind: &str, dedup_key: &str, channel: Channel) -> String {
        format!("{}:{kind}:{dedup_key}:{channel}", self.prefix)
    }

    async fn connection(&self) -> Result<(usize, MultiplexedConnection), StoreError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        if let Ok(slot) = self.slots[i].lock()
            && let Some((_, c)) = slot.as_ref()
        {
            return Ok((i, c.clone()));
        }
        let checked_out = self
            .pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let shared: MultiplexedConnection = (*checked_out).clone();
        if let Ok(mut slot) = self.slots[i].lock() {
            *slot = Some((checked_out, shared.clone()));
        }
        Ok((i, shared))
    }

    fn drop_connection(&self, i: usize) {
        if let Ok(mut slot) = self.slots[i].lock() {
            slot.take();
        }
    }

    pub(crate) async fn run<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let work = async {
            let (i, conn) = self.connection().await?;
            f(conn).await.map_err(|e| {
                self.drop_connection(i);
                StoreError::Unavailable(e.to_string())
            })
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => r,
            Err(_) => {
                // A connection that stopped answering is dropped with the rest.
                for i in 0..self.slots.len() {
                    self.drop_connection(i);
                }
                Err(StoreError::Unavailable("timed out".into()))
            }
        }
    }

    /// `SET key value EX <done TTL>`: marks that live as long as the done mark.
    async fn set_for_done_ttl(&self, key: String, value: String) -> Result<(), StoreError> {
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

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.run(|mut c| async move {
            redis::cmd("PING")
                .query_async::<String>(&mut c)
                .await
                .map(|_| ())
        })
        .await
    }

    /// `attempt` 2 may pass a done mark that a failure callback flagged for retry.
    pub async fn claim(
        &self,
        dedup_key: &str,
        channel: Channel,
        token: &str,
        attempt: i64,
    ) -> Result<Claim, StoreError> {
        let done = self.key("done", dedup_key, channel);
        let lease = self.key("lease", dedup_key, channel);
        let retry = self.key("retry", dedup_key, channel);
        let sending = self.key("sending", dedup_key, channel);
        let ttl_ms = self.lease_ttl.as_millis() as u64;
        let sending_ttl = self.done_ttl.as_secs();
        let (state, value): (String, String) = self
            .run(|mut c| async move {
                CLAIM
                    .key(done)
                    .key(lease)
                    .key(retry)
                    .key(sending)
                    .arg(token)
                    .arg(ttl_ms)
                    .arg(attempt.to_string())
                    .arg(sending_ttl)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(match state.as_str() {
            "done" => Claim::AlreadySent(serde_json::from_str(&value).ok()),
            "acquired" => Claim::Acquired,
            "uncertain" => Claim::Uncertain,
            _ => Claim::Busy,
        })
    }

    /// Records the send (done mark, lease released, retry flag cleared) and
    /// what its provider message id stands for, in one round trip.
    pub async fn mark_sent(
        &self,
        dedup_key: &str,
        channel: Channel,
        token: &str,
        sent: &Sent,
        message: &SentMessage,
    ) -> Result<(), StoreError> {
        let done = self.key("done", dedup_key, channel);
        let lease = self.key("lease", dedup_key, channel);
        let retry = self.key("retry", dedup_key, channel);
        let msg = format!("{}:msg:{}:{}", self.prefix, sent.provider, sent.message_id);
        let sending = self.key("sending", dedup_key, channel);
        let value = serde_json::to_string(sent).unwrap_or_default();
        let remembered = serde_json::to_string(message).unwrap_or_default();
        let ttl = self.done_ttl.as_secs();
        self.run(|mut c| async move {
            MARK_SENT
                .key(done)
                .key(lease)
                .key(retry)
                .key(msg)
                .key(sending)
                .arg(token)
                .arg(value)
                .arg(ttl)
                .arg(remembered)
                .invoke_async::<i64>(&mut c)
                .await
                .map(|_| ())
        })
        .await
    }

    /// Gives the lease back after a failure, so a retry or replay can send.
    /// `Sending::Keep` leaves the `sending` mark: the provider may have the
    /// message (a timeout after the request went out), so a later claim
    /// finds it uncertain instead of sending again.
    pub async fn release(
        &self,
        dedup_key: &str,
        channel: Channel,
        token: &str,
        sending: Sending,
    ) -> Result<(), StoreError> {
        let mut keys = vec![self.key("lease", dedup_key, channel)];
        if sending == Sending::Clear {
            keys.push(self.key("sending", dedup_key, channel));
        }
        self.delete_ours(keys, token).await
    }

    /// Lifts the `sending` mark while a send waits for a rate-limit permit:
    /// nothing goes out meanwhile, so a worker dying in the wait leaves a
    /// message that is simply sent once its lease expires.
    pub async fn lift_sending(
        &self,
        dedup_key: &str,
        channel: Channel,
        token: &str,
    ) -> Result<(), StoreError> {
        let keys = vec![self.key("sending", dedup_key, channel)];
        self.delete_ours(keys, token).await
    }

    async fn delete_ours(&self, keys: Vec<String>, token: &str) -> Result<(), StoreError> {
        self.run(|mut c| async move {
            DELETE_OURS
                .key(keys)
                .arg(token)
                .invoke_async::<i64>(&mut c)
                .await
                .map(|_| ())
        })
        .await
    }

    /// Sets the `sending` mark again when the permit came, right before the
    /// write, if the lease is still ours (and renews it). False when it is
    /// not: another worker may be sending this message, so this one must not.
    pub async fn resume_sending(
        &self,
        dedup_key: &str,
        channel: Channel,
        token: &str,
    ) -> Result<bool, StoreError> {
        let lease = self.key("lease", dedup_key, channel);
        let sending = self.key("sending", dedup_key, channel);
        let ttl_ms = self.lease_ttl.as_millis() as u64;
        let sending_ttl = self.done_ttl.as_secs();
        self.run(|mut c| async move {
            RESUME_SENDING
                .key(lease)
                .key(sending)
                .arg(token)
                .arg(ttl_ms)
                .arg(sending_ttl)
                .invoke_async::<i64>(&mut c)
                .await
                .map(|n| n == 1)
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
        self.set_for_done_ttl(key, value).await
    }

    /// Lets the one second attempt send although the first was accepted
    /// (the provider reported it failed afterwards).
    pub async fn allow_retry(&self, dedup_key: &str, channel: Channel) -> Result<(), StoreError> {
        let key = self.key("retry", dedup_key, channel);
        self.set_for_done_ttl(key, "1".into()).await
    }

    pub async fn sent_message(
        &self,
        provider: &str,
        message_id: &str,
    ) -> Result<Option<SentMessage>, StoreError> {
        let key = format!("{}:msg:{provider}:{message_id}", self.prefix);
        let v: Option<String> = self
            .run(|mut c| async move { redis::cmd("GET").arg(key).query_async(&mut c).await })
            .await?;
        Ok(v.and_then(|v| serde_json::from_str(&v).ok()))
    }

    /// Records a delivery state if it moves the message forward; false for a
    /// stale (out of order) or repeated callback.
    pub async fn advance_state(
        &self,
        provider: &str,
        message_id: &str,
        rank: u8,
    ) -> Result<bool, StoreError> {
        let key = format!("{}:state:{provider}:{message_id}", self.prefix);
        let ttl = self.done_ttl.as_secs();
        self.run(|mut c| async move {
            ADVANCE
                .key(key)
                .arg(rank)
                .arg(ttl)
                .invoke_async::<i64>(&mut c)
                .await
                .map(|n| n == 1)
        })
        .await
    }

    /// Forgets a scheduled second attempt and a retry flag, so a replayed
    /// event gets the whole ladder again (the done mark stays: a channel
    /// that succeeded is never sent twice).
    pub async fn reset_ladder(&self, dedup_key: &str, channel: Channel) -> Result<(), StoreError> {
        let second = self.key("second", dedup_key, channel);
        let retry = self.key("retry", dedup_key, channel);
        // An admin replaying an uncertain letter has checked it did not arrive.
        let sending = self.key("sending", dedup_key, channel);
        self.run(|mut c| async move {
            redis::cmd("DEL")
                .arg(second)
                .arg(retry)
                .arg(sending)
                .query_async::<i64>(&mut c)
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
