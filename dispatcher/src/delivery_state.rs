//! The delivery state machine: one message per (event dedup key, channel),
//! whatever happens (duplicate webhooks, later statuses of the same order,
//! broker redeliveries after a crash, DLQ replays, callbacks in any order).
//! Its states are [`Phase`]; its transitions are the functions below, each
//! one Redis command or Lua script, and the worker only calls them:
//!
//! | from | transition | to |
//! |---|---|---|
//! | Fresh; SecondAttemptScheduled (attempt 2) | [`Store::claim`] | Sending (lease + sending mark) |
//! | SecondAttemptScheduled (attempt 1) | [`Store::claim`] | unchanged (`SecondAttemptQueued`: acked, the queued attempt sends) |
//! | RetryAllowed (attempt 2 only) | [`Store::claim`] | Sending |
//! | Sent | [`Store::claim`] | Sent (`AlreadySent`: a duplicate, journaled) |
//! | any, another channel not failed for this event Sent / Leased / Uncertain | [`Store::claim`] | unchanged (`AlreadySent` / `Busy` / `Uncertain`) |
//! | Leased, Sending (lease alive) | [`Store::claim`] | unchanged (`Busy`: lease-wait queue) |
//! | Uncertain | [`Store::claim`] | Uncertain (the worker decides: repeat it with [`Store::take_over`] when the provider dedups our key within its window, or on the check attempt when its callbacks would have told; otherwise a dead letter `uncertain`) |
//! | Uncertain | [`Store::settle_by_callback`] (a callback echoed the key) | Sent, or Fresh when it failed |
//! | Sending | [`Store::lift_sending`] (rate-limit wait) | Leased |
//! | Leased | [`Store::resume_sending`] (permit came, lease still ours) | Sending |
//! | Sending | [`Store::mark_sent`] (provider accepted) | Sent |
//! | Sending | [`Store::release`] `Keep` (outcome uncertain) | Uncertain |
//! | Sending, Leased | [`Store::release`] `Clear` (did not go out) | what it was before the claim |
//! | Sending (worker died) | lease TTL runs out | Uncertain |
//! | Leased (worker died in a wait) | lease TTL runs out | what it was before the claim |
//! | any | [`Store::record_second_attempt`] (after the broker confirmed the publish) | SecondAttemptScheduled |
//! | Sent (that message's done mark, or none yet) | [`Store::allow_retry`] (a failure callback, before its second attempt is published) | RetryAllowed |
//! | any | [`Store::mark_failed`] | Failed |
//! | Failed | [`Store::claim`] | Failed (`Failed`: the next channel) |
//! | any but Sent | [`Store::reset_ladder`] (admin replay) | Fresh |
//!
//! Order rules that keep a crash at any point from losing or duplicating:
//! the done mark is written before the broker ack (a redelivery finds it);
//! the `sending` mark is on only while a request may be on the wire (a
//! redelivery that finds it alone does not send again); the second attempt
//! is published with a confirm before its mark is written (a crash between
//! leaves no mark, so the redelivery publishes it again, and the claim makes
//! the two copies one send), and a callback's state advances only after what
//! it triggered is durable.
//!
//! Keys (all under the configured prefix; the keys of one delivery carry the
//! hash tag `{<dedup>}`, so a script may touch all of them in a Redis
//! Cluster):
//! - `lease:{<dedup>}:<channel>` = worker token, short TTL: someone is sending now;
//! - `sending:{<dedup>}:<channel>` = worker token, set by the claim (the
//!   request is about to be written: no round trip of its own) and removed
//!   once the outcome is recorded (sent, or failed and released). A send
//!   the client-side rate limit holds back lifts it while it waits and sets
//!   it again when its permit comes ([`Store::lift_sending`],
//!   [`Store::resume_sending`]). Found by a later claim, it means a worker
//!   stopped (SIGKILL, crash, shutdown timeout) while its request may have
//!   reached the provider: that message is uncertain and is not sent again.
//!   A worker that stopped while waiting for a permit left only its lease,
//!   and the message is sent once the lease has expired;
//! - `done:{<dedup>}:<channel>` = JSON with provider and message id, long TTL: sent;
//! - `second:{<dedup>}:<channel>` = time the one second attempt was scheduled
//!   (its publish confirmed): a repeated first failure schedules no other;
//! - `failed:{<dedup>}:<channel>` = last failure class and reason;
//! - `retry:{<dedup>}:<channel>` = id of a sent message its provider reported
//!   failed (callback); only the one second attempt may send past the done
//!   mark, and only while that mark is this message's;
//! - `msg:<provider>:<message id>` = what was sent (event, channel, attempt),
//!   so a delivery-status callback can find its event;
//! - `state:<provider>:<message id>` = the furthest delivery state seen.
//!
//! The claim is one Lua script (check done, take the lease) so two workers
//! can never both decide to send.
//!
//! Connections ([`crate::redis_conn`]: one server, Sentinel or Cluster):
//! deadpool-redis creates and validates them, but checking one out per
//! command would cost a PING round trip each (its recycle check). A
//! multiplexed connection pipelines concurrent commands, so the store keeps
//! a few checked out and shares them; a failed command drops its connection
//! and the next command gets a fresh, validated one. Redis unreachable is an
//! error the worker answers by not sending (fail closed).
//!
//! Replication is asynchronous: a primary that fails right after a write
//! may take the write with it. So the marks that must outlive a failover
//! (done, failed, second attempt scheduled) wait for `redis.wait_replicas`
//! replicas (`WAIT`, bounded by `redis.wait_timeout_ms`) before the worker
//! goes on to ack the broker. A wait that runs out is counted
//! ([`Store::wait_shortfalls`]) and the mark stands on the primary alone:
//! the broker is acked anyway (sending again would be the duplicate), and
//! only a failover inside that window, followed by the same event arriving
//! again, could send it twice.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use deadpool_redis::redis::{self, Script};
use serde::{Deserialize, Serialize};
use shared::config::RedisSettings;
use shared::tenant::Channel;

use crate::redis_conn::{Backend, Checked, Conn};

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
    /// outlived its lease), or its answer was lost: the provider may have
    /// it. `mark` is that send's token (empty when the uncertain send is on
    /// another channel): the worker decides from it and the provider whether
    /// a resend is safe ([`Store::take_over`]).
    Uncertain { mark: String },
    /// This channel already failed for good for this event (recipient,
    /// config, or its second attempt): the next channel takes over, so a
    /// duplicate webhook or a redelivered copy does not try it again.
    Failed,
    /// A first attempt while this channel's one second attempt is queued:
    /// that attempt sends, this one does not.
    SecondAttemptQueued,
}

/// What a callback with our delivery key did to an uncertain send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// It arrived: now sent, never repeated.
    Delivered,
    /// It did not: the mark is lifted, the check attempt sends again.
    NotDelivered,
    /// Failed while a worker still holds it: that worker records it.
    InFlight,
    /// Recorded as sent already (the usual case).
    AlreadySent,
    /// Nothing uncertain under that key.
    Nothing,
}

/// Where one (event dedup key, channel) stands: the states of the delivery
/// state machine (see the module documentation for its transitions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Nothing recorded: the next claim sends.
    Fresh,
    /// Claimed by a worker that has not written its request yet (rendering,
    /// or waiting for a rate-limit permit).
    Leased,
    /// The request is being written to the provider.
    Sending,
    /// Sent: every later claim is a duplicate.
    Sent,
    /// Sent, then reported failed by the provider: only the second attempt
    /// may send again.
    RetryAllowed,
    /// A worker stopped mid-send: the provider may have it; not sent again
    /// until an admin replays it by id.
    Uncertain,
    /// The first attempt failed and the second is queued.
    SecondAttemptScheduled,
    /// The channel failed for good (the next channel or the DLQ took over).
    Failed,
}

/// How long a durable mark whose replicas did not confirm is written again
/// before the shortfall is accepted (see [`Store::run_durable`]): a Sentinel
/// or Cluster failover completes well within it.
const WAIT_RETRY: Duration = Duration::from_secs(5);

/// How long after the last accepted shortfall, or the last primary seen
/// without replicas, every durable mark asks its primary first (see
/// [`Store::run_durable`]). A window, not "until a wait succeeds": in a
/// Cluster a wait that succeeds on another primary says nothing about the
/// lonely one.
const DEGRADED_WINDOW: Duration = Duration::from_secs(60);

/// Shared multiplexed connections checked out of the pool.
const SHARED_CONNECTIONS: usize = 4;

type Slot = Mutex<Option<(Checked, Conn)>>;

/// The key of one mark of a delivery: `<prefix>:<kind>:{<dedup>}:<channel>`
/// (see the module documentation; admin tools and tests read marks by it).
pub fn delivery_key(prefix: &str, kind: &str, dedup_key: &str, channel: Channel) -> String {
    format!("{prefix}:{kind}:{{{dedup_key}}}:{channel}")
}

#[derive(Clone)]
pub struct Store {
    backend: Backend,
    slots: Arc<Vec<Slot>>,
    next: Arc<AtomicUsize>,
    prefix: String,
    lease_ttl: Duration,
    done_ttl: Duration,
    timeout: Duration,
    wait_replicas: u32,
    wait_timeout: Duration,
    wait_shortfalls: prometheus::IntCounter,
    /// When a shortfall was last accepted or a primary without replicas
    /// last seen: ms after `epoch`, plus one (0: never).
    degraded_at: Arc<std::sync::atomic::AtomicU64>,
    epoch: std::time::Instant,
}

static CLAIM: LazyLock<Script> = LazyLock::new(|| Script::new(CLAIM_LUA));
static MARK_SENT: LazyLock<Script> = LazyLock::new(|| Script::new(MARK_SENT_LUA));
static DELETE_OURS: LazyLock<Script> = LazyLock::new(|| Script::new(DELETE_OURS_LUA));
static RESUME_SENDING: LazyLock<Script> = LazyLock::new(|| Script::new(RESUME_SENDING_LUA));
static ADVANCE: LazyLock<Script> = LazyLock::new(|| Script::new(ADVANCE_LUA));
static TAKE_OVER: LazyLock<Script> = LazyLock::new(|| Script::new(TAKE_OVER_LUA));
static ALLOW_RETRY: LazyLock<Script> = LazyLock::new(|| Script::new(ALLOW_RETRY_LUA));
static SETTLE_BY_CALLBACK: LazyLock<Script> = LazyLock::new(|| Script::new(SETTLE_BY_CALLBACK_LUA));

/// Moves a message's delivery state forward only (ranks in ARGV[1]); returns
/// 1 when it moved, 0 for a stale or repeated callback.
const ADVANCE_LUA: &str = r#"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local new = tonumber(ARGV[1])
if new <= cur then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"#;

/// KEYS: done, lease, retry, sending, failed, second of this channel, then
/// done, lease, sending of each other channel of the policy (one that failed
/// for good has none of them): one message per customer event, whichever channel carried it
/// (sent there: a duplicate; being sent there: busy; maybe sent there:
/// uncertain). The failed mark: a channel that failed for good for this
/// event is not tried again by a duplicate webhook or a redelivered copy,
/// which move on to the next channel; only an admin's replay clears it. The
/// second-attempt mark: once the one second attempt is queued, a first
/// attempt (a duplicate webhook, a redelivered copy) does not send; the
/// queued attempt does. All KEYS share the delivery's hash tag.
///
/// A lease and mark that already hold this claim's token are its own: the
/// same claim retried after its answer was lost (a timeout, a failover), so
/// it acquires again instead of finding itself busy, and later uncertain.
const CLAIM_LUA: &str = r#"
local done = redis.call('GET', KEYS[1])
if done then
  local pass = false
  if ARGV[3] == '2' then
    local failed_id = redis.call('GET', KEYS[3])
    if failed_id then
      local ok, sent = pcall(cjson.decode, done)
      pass = ok and type(sent) == 'table' and sent.message_id == failed_id
    end
  end
  if not pass then return {'done', done} end
end
for i = 7, #KEYS, 3 do
  local other = redis.call('GET', KEYS[i])
  if other then return {'done', other} end
  if redis.call('EXISTS', KEYS[i + 1]) == 1 then return {'busy', ''} end
  if redis.call('EXISTS', KEYS[i + 2]) == 1 then return {'uncertain', ''} end
end
local ours = redis.call('GET', KEYS[2]) == ARGV[1]
if ours then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
if ours or redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local mark = redis.call('GET', KEYS[4])
  if mark and mark ~= ARGV[1] then
    redis.call('DEL', KEYS[2])
    return {'uncertain', mark}
  end
  if redis.call('EXISTS', KEYS[5]) == 1 then
    redis.call('DEL', KEYS[2])
    return {'failed', ''}
  end
  if ARGV[3] == '1' and redis.call('EXISTS', KEYS[6]) == 1 then
    redis.call('DEL', KEYS[2])
    return {'scheduled', ''}
  end
  redis.call('SET', KEYS[4], ARGV[1], 'EX', ARGV[4])
  return {'acquired', ''}
end
return {'busy', ''}
"#;

/// KEYS: done, lease, retry, sending, failed; ARGV: our token, the done
/// record, its TTL.
const MARK_SENT_LUA: &str = r#"
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
redis.call('DEL', KEYS[3], KEYS[5])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
if redis.call('GET', KEYS[4]) == ARGV[1] then redis.call('DEL', KEYS[4]) end
return 1
"#;

/// KEYS: done, retry; ARGV: the failed message id, TTL. Flags the failed
/// message for its one second attempt, unless the done mark is already
/// another message's (a late copy of the failure callback after the second
/// attempt was sent: the flag would only mislead). Without a done mark yet
/// (the callback overtook the record) it is set: the claim compares anyway.
const ALLOW_RETRY_LUA: &str = r#"
local done = redis.call('GET', KEYS[1])
if done then
  local ok, sent = pcall(cjson.decode, done)
  if ok and type(sent) == 'table' and sent.message_id ~= ARGV[1] then return 0 end
end
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
return 1
"#;

/// Takes over an uncertain send to repeat it (KEYS: lease, sending; ARGV:
/// the mark found, our token, lease ms, sending TTL): only while the mark
/// is still the one found (a callback may have settled it) and the lease
/// is free; 1 when ours (also when both already hold our token: this take
/// over retried after its answer was lost).
const TAKE_OVER_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[2] and redis.call('GET', KEYS[2]) == ARGV[2] then return 1 end
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if not redis.call('SET', KEYS[1], ARGV[2], 'NX', 'PX', ARGV[3]) then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[4])
return 1
"#;

/// A status callback that echoed the delivery key (KEYS: done, lease,
/// sending; ARGV: the done record, its TTL, `ok` or `failed`): settles an
/// uncertain send. Arrived: sent, even while a (possibly dead) worker's
/// lease is alive; failed: the mark is lifted only once no worker holds it
/// (a live one records its own outcome).
const SETTLE_BY_CALLBACK_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 'done' end
if redis.call('EXISTS', KEYS[3]) == 0 then return 'unknown' end
if ARGV[3] == 'failed' then
  if redis.call('EXISTS', KEYS[2]) == 1 then return 'in_flight' end
  redis.call('DEL', KEYS[3])
  return 'not_delivered'
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('DEL', KEYS[3])
return 'delivered'
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
        settings: &RedisSettings,
        lease_ttl: Duration,
        done_ttl: Duration,
    ) -> Result<Store, String> {
        Ok(Store {
            backend: Backend::new(settings)?,
            slots: Arc::new((0..SHARED_CONNECTIONS).map(|_| Mutex::new(None)).collect()),
            next: Arc::new(AtomicUsize::new(0)),
            prefix: settings.prefix.clone(),
            lease_ttl,
            done_ttl,
            timeout: Duration::from_millis(settings.timeout_ms),
            wait_replicas: settings.replicas_to_wait_for(),
            wait_timeout: settings.wait_timeout(),
            wait_shortfalls: prometheus::IntCounter::new(
                "vestnik_dispatcher_redis_wait_shortfalls_total",
                "Durable marks whose replicas did not confirm within redis.wait_timeout_ms",
            )
            .map_err(|e| e.to_string())?,
            degraded_at: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            epoch: std::time::Instant::now(),
        })
    }

    /// Durable marks whose replica wait ran out (see the module docs): a
    /// counter to register with the dispatcher's metrics.
    pub fn wait_shortfalls(&self) -> &prometheus::IntCounter {
        &self.wait_shortfalls
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, kind: &str, dedup_key: &str, channel: Channel) -> String {
        delivery_key(&self.prefix, kind, dedup_key, channel)
    }

    async fn connection(&self) -> Result<(usize, Conn), StoreError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        if let Ok(slot) = self.slots[i].lock()
            && let Some((_, c)) = slot.as_ref()
        {
            return Ok((i, c.clone()));
        }
        let (checked_out, shared) = self.backend.get().await.map_err(StoreError::Unavailable)?;
        if let Ok(mut slot) = self.slots[i].lock() {
            *slot = Some((checked_out, shared.clone()));
        }
        Ok((i, shared))
    }

    /// Forgets a connection that failed or stopped answering, without giving
    /// it back to its pool (it may be a demoted primary that still PINGs).
    fn drop_connection(&self, i: usize) {
        let taken = self.slots[i].lock().ok().and_then(|mut slot| slot.take());
        if let Some((checked, _)) = taken {
            checked.detach();
        }
    }

    /// Runs a write whose result must outlive a failover, then waits (on
    /// the same connection) for `redis.wait_replicas` replicas to have it;
    /// `key` names the primary in a cluster. `write` must be idempotent: a
    /// wait that falls short is retried, through fresh connections, for up
    /// to [`WAIT_RETRY`], because the usual cause is a failover under way
    /// (the write went to a primary being replaced, and would be lost with
    /// it); only then is the shortfall accepted and counted. For
    /// [`DEGRADED_WINDOW`] after an accepted shortfall (renewed while a
    /// primary without replicas is seen) the store does not retry, and asks
    /// each mark's primary for its connected replicas before waiting: with
    /// none there it does not wait at all (the shortfall is still counted),
    /// so a primary left without replicas costs a mark one `INFO` round
    /// trip, not a wait, while the other primaries of a Cluster wait for
    /// theirs as usual. The first write's answer is returned.
    pub(crate) async fn run_durable<T, F, Fut>(
        &self,
        key: String,
        write: F,
    ) -> Result<T, StoreError>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let replicas = self.wait_replicas;
        if replicas == 0 {
            return self.run(write).await;
        }
        let wait = self.wait_timeout;
        let started = tokio::time::Instant::now();
        let mut first = None;
        loop {
            let degraded = self.degraded();
            let (value, acked, lonely) = self
                .run(|c| async {
                    let mut w = c.clone();
                    // Once a wait has fallen short, ask first whether any
                    // replica is there to wait for: a promoted primary may
                    // have none for minutes, and waiting `wait` per mark
                    // for nobody cuts throughput to a fraction.
                    let lonely = degraded && w.connected_replicas(&key).await? == 0;
                    let value = write(c).await?;
                    let acked = if lonely {
                        0
                    } else {
                        w.wait_replicas(&key, replicas, wait).await?
                    };
                    Ok((value, acked, lonely))
                })
                .await?;
            first.get_or_insert(value);
            if acked >= i64::from(replicas) {
                break;
            }
            if degraded || started.elapsed() >= WAIT_RETRY {
                self.mark_degraded();
                self.wait_shortfalls.inc();
                if lonely {
                    // Expected while it lasts: counted, not logged per mark.
                    break;
                }
                tracing::warn!(
                    replicas = acked,
                    wanted = replicas,
                    "a mark is on the Redis primary only: its replicas did not confirm"
                );
                break;
            }
            // Perhaps a primary on its way out: ask again which one it is.
            for i in 0..self.slots.len() {
                self.drop_connection(i);
            }
            tokio::time::sleep(wait).await;
        }
        first.ok_or_else(|| StoreError::Unavailable("no write".into()))
    }

    /// Within [`DEGRADED_WINDOW`] of the last shortfall or lonely primary.
    fn degraded(&self) -> bool {
        let at = self.degraded_at.load(Ordering::Relaxed);
        at != 0 && self.since_epoch_ms().saturating_sub(at - 1) < DEGRADED_WINDOW.as_millis() as u64
    }

    fn mark_degraded(&self) {
        self.degraded_at
            .store(self.since_epoch_ms() + 1, Ordering::Relaxed);
    }

    fn since_epoch_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    pub(crate) async fn run<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
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

    /// `SET key value EX <done TTL>`: marks that live as long as the done
    /// mark, and like it must outlive a failover.
    async fn set_for_done_ttl(&self, key: String, value: String) -> Result<(), StoreError> {
        let ttl = self.done_ttl.as_secs();
        let durable = key.clone();
        let (key, value) = (&key, &value);
        self.run_durable(durable, move |mut c| async move {
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

    /// `attempt` 2 may pass a done mark that a failure callback flagged for
    /// retry. `others`: the other channels that could carry this event (the
    /// tenant's policy for its kind), failed or not (Redis knows: a failed
    /// channel has no done mark, unless a replay sent on it since): their
    /// marks count too, so a duplicate webhook does not try WhatsApp again after
    /// the fallback reached the customer by SMS.
    pub async fn claim(
        &self,
        dedup_key: &str,
        channel: Channel,
        others: &[Channel],
        token: &str,
        attempt: i64,
    ) -> Result<Claim, StoreError> {
        let other_done: Vec<String> = others
            .iter()
            .filter(|&&c| c != channel)
            .flat_map(|&c| ["done", "lease", "sending"].map(|k| self.key(k, dedup_key, c)))
            .collect();
        let keys: Vec<String> = ["done", "lease", "retry", "sending", "failed", "second"]
            .iter()
            .map(|k| self.key(k, dedup_key, channel))
            .collect();
        let ttl_ms = self.lease_ttl.as_millis() as u64;
        let sending_ttl = self.done_ttl.as_secs();
        let (state, value): (String, String) = self
            .run(|mut c| async move {
                CLAIM
                    .key(keys)
                    .key(other_done)
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
            "uncertain" => Claim::Uncertain { mark: value },
            "failed" => Claim::Failed,
            "scheduled" => Claim::SecondAttemptQueued,
            _ => Claim::Busy,
        })
    }

    /// Records the send (done mark, lease released, retry flag cleared) and
    /// what its provider message id stands for (a key of its own, found by
    /// the id alone: two commands, pipelined, so one round trip).
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
        let failed = self.key("failed", dedup_key, channel);
        let value = serde_json::to_string(sent).unwrap_or_default();
        let remembered = serde_json::to_string(message).unwrap_or_default();
        let ttl = self.done_ttl.as_secs();
        let durable = done.clone();
        let (done, lease, retry, msg, sending, failed) =
            (&done, &lease, &retry, &msg, &sending, &failed);
        let (value, remembered) = (&value, &remembered);
        self.run_durable(durable, move |mut c| async move {
            let mut m = c.clone();
            let mut set = redis::cmd("SET");
            set.arg(msg).arg(remembered).arg("EX").arg(ttl);
            let remember = set.query_async::<()>(&mut m);
            let mut mark = MARK_SENT.key(done);
            mark.key(lease)
                .key(retry)
                .key(sending)
                .key(failed)
                .arg(token)
                .arg(value)
                .arg(ttl);
            let (remembered, marked) =
                futures_util::future::join(remember, mark.invoke_async::<i64>(&mut c)).await;
            remembered.and(marked).map(|_| ())
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

    /// Whether the one second attempt is already scheduled (its publish was
    /// confirmed and recorded). Checked before publishing it.
    pub async fn second_attempt_scheduled(
        &self,
        dedup_key: &str,
        channel: Channel,
    ) -> Result<bool, StoreError> {
        let key = self.key("second", dedup_key, channel);
        self.run(|mut c| async move {
            redis::cmd("EXISTS")
                .arg(key)
                .query_async::<i64>(&mut c)
                .await
                .map(|n| n == 1)
        })
        .await
    }

    /// Records that the one second attempt is scheduled, once the broker has
    /// confirmed its publish (a crash between the two leaves no mark, so a
    /// redelivery schedules it again: at worst two copies of the second
    /// attempt, which the claim makes one send; never none).
    pub async fn record_second_attempt(
        &self,
        dedup_key: &str,
        channel: Channel,
    ) -> Result<(), StoreError> {
        let key = self.key("second", dedup_key, channel);
        self.set_for_done_ttl(key, chrono::Utc::now().to_rfc3339())
            .await
    }

    /// Where one (event, channel) stands, read in one round trip (admin
    /// tools, the journal and the model test).
    pub async fn phase(&self, dedup_key: &str, channel: Channel) -> Result<Phase, StoreError> {
        let keys: Vec<String> = ["done", "retry", "lease", "sending", "failed", "second"]
            .iter()
            .map(|k| self.key(k, dedup_key, channel))
            .collect();
        let v: Vec<Option<String>> = self
            .run(|mut c| async move { redis::cmd("MGET").arg(keys).query_async(&mut c).await })
            .await?;
        let has = |i: usize| v.get(i).is_some_and(Option::is_some);
        Ok(match () {
            _ if has(0) && has(1) => Phase::RetryAllowed,
            _ if has(0) => Phase::Sent,
            _ if has(2) && has(3) => Phase::Sending,
            _ if has(2) => Phase::Leased,
            _ if has(3) => Phase::Uncertain,
            _ if has(4) => Phase::Failed,
            _ if has(5) => Phase::SecondAttemptScheduled,
            _ => Phase::Fresh,
        })
    }

    /// The channel failed for good for this event (recipient, config,
    /// uncertain, or its second attempt). A done mark goes with it: it can
    /// only be there for a message its provider reported failed (a second
    /// attempt passed it), so a replay or a later webhook may try again; a
    /// duplicate webhook still finds the fallback channel's done mark.
    pub async fn mark_failed(
        &self,
        dedup_key: &str,
        channel: Channel,
        class: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        let failed = self.key("failed", dedup_key, channel);
        let done = self.key("done", dedup_key, channel);
        let retry = self.key("retry", dedup_key, channel);
        let value = serde_json::json!({"class": class, "reason": reason, "at": chrono::Utc::now()})
            .to_string();
        let ttl = self.done_ttl.as_secs();
        let durable = failed.clone();
        let (failed, done, retry, value) = (&failed, &done, &retry, &value);
        self.run_durable(durable, move |mut c| async move {
            redis::pipe()
                .atomic()
                .cmd("SET")
                .arg(failed)
                .arg(value)
                .arg("EX")
                .arg(ttl)
                .ignore()
                .cmd("DEL")
                .arg(done)
                .arg(retry)
                .ignore()
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    /// Lets the one second attempt send although the first was accepted
    /// (the provider reported it failed afterwards): only past the done
    /// mark of that very message, so a copy of the failure callback cannot
    /// let a second attempt pass the mark of the message that replaced it.
    pub async fn allow_retry(
        &self,
        dedup_key: &str,
        channel: Channel,
        failed_message_id: &str,
    ) -> Result<(), StoreError> {
        let done = self.key("done", dedup_key, channel);
        let retry = self.key("retry", dedup_key, channel);
        let ttl = self.done_ttl.as_secs();
        let durable = done.clone();
        let (done, retry) = (&done, &retry);
        self.run_durable(durable, move |mut c| async move {
            ALLOW_RETRY
                .key(done)
                .key(retry)
                .arg(failed_message_id)
                .arg(ttl)
                .invoke_async::<i64>(&mut c)
                .await
                .map(|_| ())
        })
        .await
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

    /// Whether a delivery state would move the message forward (read only:
    /// a failure callback advances with [`Store::advance_state`] once what
    /// it triggered is durable).
    pub async fn state_moves(
        &self,
        provider: &str,
        message_id: &str,
        rank: u8,
    ) -> Result<bool, StoreError> {
        let key = format!("{}:state:{provider}:{message_id}", self.prefix);
        let cur: Option<u8> = self
            .run(|mut c| async move { redis::cmd("GET").arg(key).query_async(&mut c).await })
            .await?;
        Ok(cur.unwrap_or(0) < rank)
    }

    /// Takes over the uncertain send whose mark a claim found, to repeat it
    /// (the provider dedups by our key, or its callback did not come). True
    /// when the lease and mark are now `token`'s.
    pub async fn take_over(
        &self,
        dedup_key: &str,
        channel: Channel,
        found: &str,
        token: &str,
    ) -> Result<bool, StoreError> {
        let lease = self.key("lease", dedup_key, channel);
        let sending = self.key("sending", dedup_key, channel);
        let ttl_ms = self.lease_ttl.as_millis() as u64;
        let sending_ttl = self.done_ttl.as_secs();
        self.run(|mut c| async move {
            TAKE_OVER
                .key(lease)
                .key(sending)
                .arg(found)
                .arg(token)
                .arg(ttl_ms)
                .arg(sending_ttl)
                .invoke_async::<i64>(&mut c)
                .await
                .map(|n| n == 1)
        })
        .await
    }

    /// A provider's callback for a message whose send was uncertain (its
    /// answer lost, or the worker died): `delivered` true for sent /
    /// delivered / read, which makes it sent; false for failed, which only
    /// lifts the mark so its check attempt sends again.
    pub async fn settle_by_callback(
        &self,
        dedup_key: &str,
        channel: Channel,
        sent: &Sent,
        delivered: bool,
    ) -> Result<Settled, StoreError> {
        let done = self.key("done", dedup_key, channel);
        let lease = self.key("lease", dedup_key, channel);
        let sending = self.key("sending", dedup_key, channel);
        let value = serde_json::to_string(sent).unwrap_or_default();
        let ttl = self.done_ttl.as_secs();
        let durable = done.clone();
        let (done, lease, sending, value) = (&done, &lease, &sending, &value);
        let outcome: String = self
            .run_durable(durable, move |mut c| async move {
                SETTLE_BY_CALLBACK
                    .key(done)
                    .key(lease)
                    .key(sending)
                    .arg(value)
                    .arg(ttl)
                    .arg(if delivered { "ok" } else { "failed" })
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(match outcome.as_str() {
            "delivered" => Settled::Delivered,
            "not_delivered" => Settled::NotDelivered,
            "in_flight" => Settled::InFlight,
            "done" => Settled::AlreadySent,
            _ => Settled::Nothing,
        })
    }

    /// Forgets a scheduled second attempt and a failure, so a replayed
    /// event gets the whole ladder again. The done mark stays (a channel that succeeded is
    /// never sent twice), and so does a retry flag (a second attempt that a
    /// failure callback scheduled is still on its way and needs it).
    /// `Sending::Clear` also drops the mark of an uncertain send: only for
    /// the uncertain letter an admin replays on purpose.
    pub async fn reset_ladder(
        &self,
        dedup_key: &str,
        channel: Channel,
        sending: Sending,
    ) -> Result<(), StoreError> {
        let mut keys = vec![
            self.key("second", dedup_key, channel),
            self.key("failed", dedup_key, channel),
        ];
        if sending == Sending::Clear {
            keys.push(self.key("sending", dedup_key, channel));
        }
        self.run(|mut c| async move {
            redis::cmd("DEL")
                .arg(keys)
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
