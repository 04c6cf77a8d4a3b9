//! Held messages, in order. A message whose last channel's account is
//! paused ([`crate::pause`]) goes to that pause's hold queue
//! (`<prefix>.hold.<key>`, quorum, one per pause) and waits there, no
//! attempt spent. When the account is healthy again its pause turns to
//! *draining*: one dispatcher at a time (a lease in Redis) takes messages
//! off the queue's head, sends them through the usual path (idempotency,
//! rate limits, fallback) and acks them: up to `dispatcher.hold_drain_window`
//! at once, each customer's one at a time in the order held ([`window`]);
//! messages for the account that arrive meanwhile join the queue's tail, so
//! nothing overtakes what was held. Empty, the queue is deleted and the
//! account is live.
//!
//! Going live without losing a message that a dispatcher is putting in the
//! queue at that very moment: each holder registers in Redis before it
//! publishes and leaves after the broker confirmed (`pending`); the drainer
//! *seals* the hold when no holder is in flight, reads the queue once more,
//! and *finishes* only if nothing was held or published since the seal
//! (any hold unseals). A holder that finds the pause gone hands its
//! message back to the dispatch queue, where it is sent at once.
//!
//! While the account stays paused, the messages that have waited longer
//! than the tenant's `hold_max_secs` are taken from the head and
//! dead-lettered as `expired_while_paused`: Redis keeps the oldest held
//! message's time, so the head is looked at only when something is due.
//!
//! A drained queue is deleted a minute later, not at once (quorum queues
//! cannot be deleted "only if empty", and a hold may begin again): the
//! deleter leaves a tombstone that turns holders back for the moment of the
//! delete, and deletes only a queue the broker reports empty.
//!
//! The bookkeeping is one field beside the pause in `<prefix>:pauses`
//! (`~hold|<id>`, JSON): pending holders (token → deadline, ms), sealed,
//! the drain lease (owner, until), the oldest held message (ms), the
//! earliest next look at the head, and `deleting` while its queue goes;
//! `~idle|<id>` (ms) marks a drained queue to delete.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use lapin::options::{BasicGetOptions, ConfirmSelectOptions};
use lapin::{Channel, Connection};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use futures_util::FutureExt;
use lapin::message::Delivery;
use tokio::task::JoinSet;

use crate::delivery_state::{Store, StoreError};
use crate::pause::{Paused, pauses_key};
use crate::worker::{Settle, Worker};

mod window;
use window::{Slot, Window};

/// The field of a pause's hold bookkeeping.
const HOLD_MARK: &str = "~hold|";
/// The field that marks a drained hold queue to delete.
const IDLE_MARK: &str = "~idle|";
/// How long a drained hold queue stays before it is deleted.
const IDLE_FOR: Duration = Duration::from_secs(60);
/// How long a deleter's tombstone turns holders back.
const DELETING_FOR: Duration = Duration::from_secs(10);
/// How long a holder may take from registering to the broker's confirm
/// before a drainer stops waiting for it.
const PENDING_FOR: Duration = Duration::from_secs(30);
/// A drain lease; renewed in the background while the drain runs.
const LEASE: Duration = Duration::from_secs(30);
/// A drainer's pause before it tries the head again (rate limit, lease busy,
/// Redis or the broker briefly away).
const RETRY_HEAD: Duration = Duration::from_millis(500);

pub fn hold_field(id: &str) -> String {
    format!("{HOLD_MARK}{id}")
}

fn idle_field(id: &str) -> String {
    format!("{IDLE_MARK}{id}")
}

/// The hold queue's key: a digest of the pause id (ids carry a tenant's
/// names and may be longer than a queue name allows).
pub fn queue_key(id: &str) -> String {
    hex::encode(&Sha256::digest(id.as_bytes())[..12])
}

/// A pause's hold bookkeeping, as stored.
#[derive(Debug, Default, Deserialize)]
struct Record {
    /// Oldest held message's `received_at` (ms).
    #[serde(default)]
    oldest: Option<f64>,
    /// Not before this (ms) is the head looked at again for expiry.
    #[serde(default)]
    look: Option<f64>,
    /// A tombstone: its queue is being deleted.
    #[serde(default)]
    deleting: bool,
}

/// A hold the runner may act on: its pause (none: drained and gone, a
/// straggler left it) and its bookkeeping.
#[derive(Debug)]
pub struct Hold {
    pub id: String,
    pub pause: Option<Paused>,
    oldest_ms: Option<i64>,
    look_ms: Option<i64>,
    deleting: bool,
}

/// What the runner finds in the pauses hash: the holds, the drained
/// queues waiting to be deleted (pause id, drained at ms), and the draining
/// pauses with no hold left to drain.
pub struct Holds {
    pub holds: Vec<Hold>,
    pub idle: Vec<(String, i64)>,
    pub empty_draining: Vec<String>,
}

/// What became of a drained queue's delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    Gone,
    /// It held a message after all: drained again.
    Held,
    /// The broker did not answer: tried again later.
    Retry,
}

/// Registers a holder: `KEYS[1]` the pauses hash; `ARGV` id, hold field,
/// token, deadline (ms), now (ms), the message's received_at (ms), idle
/// field. 0: the pause is gone (send it instead); 2: its queue is being
/// deleted (try again in a moment).
const BEGIN: &str = r#"
if not redis.call('HGET', KEYS[1], ARGV[1]) then return 0 end
local raw = redis.call('HGET', KEYS[1], ARGV[2])
local h = raw and cjson.decode(raw) or {}
local now = tonumber(ARGV[5])
if h.deleting then
  if tonumber(h.lease or 0) > now then return 2 end
  h = {}
end
redis.call('HDEL', KEYS[1], ARGV[7])
local pending = {}
for t, d in pairs(h.pending or {}) do
  if tonumber(d) > now then pending[t] = d end
end
pending[ARGV[3]] = tonumber(ARGV[4])
h.pending = pending
h.sealed = false
local received = tonumber(ARGV[6])
if not h.oldest or received < h.oldest then h.oldest = received end
redis.call('HSET', KEYS[1], ARGV[2], cjson.encode(h))
return 1
"#;

/// A holder is done (published or not): `ARGV` hold field, token. Unseals,
/// and leaves a record even if the hold was finished meanwhile, so a
/// message that landed late is still drained.
const END: &str = r#"
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local h = raw and cjson.decode(raw) or {}
local pending = h.pending or {}
pending[ARGV[2]] = nil
h.pending = pending
h.sealed = false
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(h))
return 1
"#;

/// `ARGV` hold field, now (ms): 1 sealed; 0 a holder is in flight; 2 gone.
const SEAL: &str = r#"
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 2 end
local h = cjson.decode(raw)
for _, d in pairs(h.pending or {}) do
  if tonumber(d) > tonumber(ARGV[2]) then return 0 end
end
h.sealed = true
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(h))
return 1
"#;

/// `ARGV` id, hold field, idle field, now (ms), owner: 1 when nothing was
/// held since the seal (the record goes, the queue is marked to delete, and
/// a draining pause goes: the account is live); 0 when something was, or
/// the caller no longer holds the drain lease (another dispatcher drains).
const FINISH: &str = r#"
local raw = redis.call('HGET', KEYS[1], ARGV[2])
if not raw then return 1 end
local h = cjson.decode(raw)
if not h.sealed or h.owner ~= ARGV[5] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v and cjson.decode(v).draining then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 1
"#;

/// A draining pause with nothing left to drain (its hold record went with
/// a deleted queue's tombstone): `ARGV` id, hold field. The account is live.
const LIVE: &str = r#"
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1 then return 0 end
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v or not cjson.decode(v).draining then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
"#;

/// The drain lease: `ARGV` hold field, owner, until (ms), now (ms). 1 taken
/// (or renewed).
const CLAIM: &str = r#"
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local h = cjson.decode(raw)
if h.owner and h.owner ~= ARGV[2] and tonumber(h.lease or 0) > tonumber(ARGV[4]) then return 0 end
h.owner = ARGV[2]
h.lease = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(h))
return 1
"#;

/// Claims the delete of a drained queue: `ARGV` idle field, hold field,
/// tombstone (JSON), older than (ms). 1: the tombstone is set, delete it;
/// 0: not yet, or a hold began again (the queue is in use).
const CLAIM_DELETE: &str = r#"
local idle = redis.call('HGET', KEYS[1], ARGV[1])
if not idle then return 0 end
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 0
end
if tonumber(idle) > tonumber(ARGV[4]) then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
return 1
"#;

/// After the delete: `ARGV` hold field, outcome (`gone`: the queue went;
/// `held`: it held a message after all, a holder that was not waited for,
/// and the tombstone becomes an ordinary hold, to be drained; `retry`: the
/// broker did not answer, the queue is marked to delete again), idle field,
/// the idle mark for a retry (ms).
const DELETED: &str = r#"
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local h = cjson.decode(raw)
if not h.deleting then return 0 end
if ARGV[2] == 'held' then
  redis.call('HSET', KEYS[1], ARGV[1], cjson.encode({pending = {}, sealed = false}))
else
  redis.call('HDEL', KEYS[1], ARGV[1])
  if ARGV[2] == 'retry' then redis.call('HSET', KEYS[1], ARGV[3], ARGV[4]) end
end
return 1
"#;

/// `ARGV` hold field, owner.
const RELEASE: &str = r#"
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local h = cjson.decode(raw)
if h.owner ~= ARGV[2] then return 0 end
h.owner = nil
h.lease = nil
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(h))
return 1
"#;

/// After a look at the head: `ARGV` hold field, the head's received_at (ms,
/// empty: the queue is empty), the next look (ms).
const LOOKED: &str = r#"
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local h = cjson.decode(raw)
if ARGV[2] == '' then h.oldest = nil else h.oldest = tonumber(ARGV[2]) end
h.look = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(h))
return 1
"#;

/// What registering a holder found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Begin {
    /// Registered: publish, then [`Store::hold_end`].
    Held,
    /// The pause is gone: send the message instead.
    Gone,
    /// The pause's drained queue is being deleted this very moment.
    Deleting,
}

/// What sealing found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seal {
    Sealed,
    /// A holder is between registering and the broker's confirm.
    InFlight,
    Gone,
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

impl Store {
    async fn hold_script(
        &self,
        script: &'static str,
        args: Vec<String>,
    ) -> Result<i64, StoreError> {
        let key = pauses_key(self.prefix());
        self.run_durable(key.clone(), move |mut c| {
            let (key, args) = (key.clone(), args.clone());
            async move {
                let script = redis::Script::new(script);
                let mut invocation = script.key(key);
                for a in &args {
                    invocation.arg(a);
                }
                invocation.invoke_async::<i64>(&mut c).await
            }
        })
        .await
    }

    /// Registers a holder of a message for pause `id` under `token`.
    pub async fn hold_begin(
        &self,
        id: &str,
        token: &str,
        received_at: chrono::DateTime<Utc>,
    ) -> Result<Begin, StoreError> {
        let now = now_ms();
        let deadline = now + PENDING_FOR.as_millis() as i64;
        let args = vec![
            id.to_string(),
            hold_field(id),
            token.to_string(),
            deadline.to_string(),
            now.to_string(),
            received_at.timestamp_millis().to_string(),
            idle_field(id),
        ];
        Ok(match self.hold_script(BEGIN, args).await? {
            1 => Begin::Held,
            2 => Begin::Deleting,
            _ => Begin::Gone,
        })
    }

    /// The holder under `token` is done, its message published or not.
    pub async fn hold_end(&self, id: &str, token: &str) -> Result<(), StoreError> {
        self.hold_script(END, vec![hold_field(id), token.to_string()])
            .await
            .map(|_| ())
    }

    pub async fn hold_seal(&self, id: &str) -> Result<Seal, StoreError> {
        Ok(
            match self
                .hold_script(SEAL, vec![hold_field(id), now_ms().to_string()])
                .await?
            {
                1 => Seal::Sealed,
                2 => Seal::Gone,
                _ => Seal::InFlight,
            },
        )
    }

    /// True when the hold is over (nothing held since the seal, and
    /// `owner` still held the drain lease).
    pub async fn hold_finish(&self, id: &str, owner: &str) -> Result<bool, StoreError> {
        let args = vec![
            id.to_string(),
            hold_field(id),
            idle_field(id),
            now_ms().to_string(),
            owner.to_string(),
        ];
        Ok(self.hold_script(FINISH, args).await? == 1)
    }

    /// Ends a draining pause that has nothing left to drain; true if it did.
    pub async fn hold_live(&self, id: &str) -> Result<bool, StoreError> {
        let args = vec![id.to_string(), hold_field(id)];
        Ok(self.hold_script(LIVE, args).await? == 1)
    }

    /// Claims the delete of pause `id`'s drained queue, idle for
    /// [`IDLE_FOR`]; true: delete it, then call [`Store::hold_deleted`].
    pub async fn hold_claim_delete(&self, id: &str) -> Result<bool, StoreError> {
        let now = now_ms();
        let tombstone = serde_json::json!({
            "deleting": true,
            "lease": now + DELETING_FOR.as_millis() as i64,
        })
        .to_string();
        let args = vec![
            idle_field(id),
            hold_field(id),
            tombstone,
            (now - IDLE_FOR.as_millis() as i64).to_string(),
        ];
        Ok(self.hold_script(CLAIM_DELETE, args).await? == 1)
    }

    /// The claimed delete is done, one way or another.
    pub async fn hold_deleted(&self, id: &str, outcome: Deleted) -> Result<(), StoreError> {
        let outcome = match outcome {
            Deleted::Gone => "gone",
            Deleted::Held => "held",
            Deleted::Retry => "retry",
        };
        // A retry is due a few seconds from now, not a whole idle period.
        let again = now_ms() - IDLE_FOR.as_millis() as i64 + 5_000;
        let args = vec![
            hold_field(id),
            outcome.to_string(),
            idle_field(id),
            again.to_string(),
        ];
        self.hold_script(DELETED, args).await.map(|_| ())
    }

    pub async fn hold_claim(&self, id: &str, owner: &str) -> Result<bool, StoreError> {
        let now = now_ms();
        let args = vec![
            hold_field(id),
            owner.to_string(),
            (now + LEASE.as_millis() as i64).to_string(),
            now.to_string(),
        ];
        Ok(self.hold_script(CLAIM, args).await? == 1)
    }

    pub async fn hold_release(&self, id: &str, owner: &str) -> Result<(), StoreError> {
        self.hold_script(RELEASE, vec![hold_field(id), owner.to_string()])
            .await
            .map(|_| ())
    }

    async fn hold_looked(
        &self,
        id: &str,
        head_received_ms: Option<i64>,
        next: i64,
    ) -> Result<(), StoreError> {
        let args = vec![
            hold_field(id),
            head_received_ms.map(|v| v.to_string()).unwrap_or_default(),
            next.to_string(),
        ];
        self.hold_script(LOOKED, args).await.map(|_| ())
    }

    /// Every hold with its pause, and the drained queues to delete.
    pub async fn holds(&self) -> Result<Holds, StoreError> {
        let key = pauses_key(self.prefix());
        let all: HashMap<String, String> = self
            .run(|mut c| {
                let key = key.clone();
                async move { redis::AsyncCommands::hgetall(&mut c, key).await }
            })
            .await?;
        let pauses: HashMap<String, Paused> = crate::pause::parse_all(&all);
        let holds = all
            .iter()
            .filter_map(|(field, value)| {
                let id = field.strip_prefix(HOLD_MARK)?;
                let r: Record = serde_json::from_str(value).unwrap_or_default();
                Some(Hold {
                    id: id.to_string(),
                    pause: pauses.get(id).cloned(),
                    oldest_ms: r.oldest.map(|v| v as i64),
                    look_ms: r.look.map(|v| v as i64),
                    deleting: r.deleting,
                })
            })
            .collect();
        let idle = all
            .iter()
            .filter_map(|(field, value)| {
                let id = field.strip_prefix(IDLE_MARK)?;
                Some((id.to_string(), value.parse().ok()?))
            })
            .collect();
        let empty_draining = pauses
            .values()
            .filter(|p| p.draining && !all.contains_key(&hold_field(&p.id)))
            .map(|p| p.id.clone())
            .collect();
        Ok(Holds {
            holds,
            idle,
            empty_draining,
        })
    }
}

/// What a look at the head of a paused account's hold queue found.
enum Head {
    Empty,
    Done,
    /// Left at the head: stop for now.
    Kept,
}

/// Drains and expires the hold queues: every second, reads the holds; a
/// draining (or orphaned) one is drained by whichever dispatcher takes its
/// lease; a paused one whose oldest message is due is looked at for expiry.
pub async fn run(
    worker: Arc<Worker>,
    conn: Arc<Connection>,
    publisher: Channel,
    stop: watch::Receiver<bool>,
) {
    let owner = uuid::Uuid::now_v7().simple().to_string();
    let active: Arc<Mutex<HashSet<String>>> = Arc::default();
    let counts: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopped = stop.clone();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = crate::consumer::stopped(&mut stopped) => break,
        }
        while tasks.try_join_next().is_some() {}
        let Ok(Holds {
            holds,
            idle,
            empty_draining,
        }) = worker.store.holds().await
        else {
            continue;
        };
        for id in empty_draining {
            if let Ok(true) = worker.store.hold_live(&id).await {
                tracing::info!(pause = %id, "nothing left held: the account is live");
            }
        }
        {
            let mut counts = counts.lock().unwrap_or_else(|e| e.into_inner());
            counts.retain(|id, _| holds.iter().any(|h| &h.id == id));
            worker
                .metrics
                .held_messages
                .set(counts.values().map(|&n| i64::from(n)).sum());
        }
        let now = now_ms();
        for (id, at) in idle {
            if at + (IDLE_FOR.as_millis() as i64) <= now {
                delete_idle(&worker, &conn, &id).await;
            }
        }
        for h in holds.into_iter().filter(|h| !h.deleting) {
            if active
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&h.id)
            {
                continue;
            }
            let paused = h.pause.as_ref().is_some_and(|p| !p.draining);
            if paused {
                let hold_max = hold_max(&worker, &h.id);
                let due = h.oldest_ms.is_some_and(|o| o + hold_max <= now)
                    && h.look_ms.is_none_or(|l| l <= now);
                if !due {
                    continue;
                }
            }
            match worker.store.hold_claim(&h.id, &owner).await {
                Ok(true) => {}
                _ => continue,
            }
            active
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(h.id.clone());
            let job = Drain {
                worker: worker.clone(),
                conn: conn.clone(),
                publisher: publisher.clone(),
                id: h.id.clone(),
                owner: owner.clone(),
                stop: stop.clone(),
                counts: counts.clone(),
            };
            let active = active.clone();
            tasks.spawn(async move {
                let id = job.id.clone();
                if paused {
                    job.expire().await;
                } else {
                    job.drain().await;
                }
                active.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            });
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// Deletes a drained hold queue once it has been idle for [`IDLE_FOR`]
/// (no hold began since), behind a tombstone that turns holders back for
/// the moment; a queue the broker does not report empty is drained instead.
async fn delete_idle(worker: &Worker, conn: &Connection, id: &str) {
    match worker.store.hold_claim_delete(id).await {
        Ok(true) => {}
        _ => return,
    }
    let key = queue_key(id);
    let queue = worker.topology.hold_queue(&key);
    let deleted = async {
        let ch = conn.create_channel().await?;
        let passive = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let outcome = match ch
            .queue_declare(queue.as_str().into(), passive, Default::default())
            .await
        {
            // Gone already (an operator, or a test's clean-up): the broker
            // closed this channel with 404.
            Err(e) if not_found(&e) => return Ok(Deleted::Gone),
            Err(e) => return Err(e),
            Ok(q) if q.message_count() > 0 => Deleted::Held,
            Ok(_) => {
                ch.queue_delete(queue.as_str().into(), Default::default())
                    .await?;
                Deleted::Gone
            }
        };
        let _ = ch.close(200, "hold queue deleted".into()).await;
        Ok::<_, lapin::Error>(outcome)
    }
    .await;
    let outcome = match deleted {
        Ok(Deleted::Held) => {
            tracing::warn!(pause = %id, "a drained hold queue took a message after all: drained again");
            Deleted::Held
        }
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(error = %e, pause = %id, "hold queue not deleted: tried again shortly");
            Deleted::Retry
        }
    };
    let _ = worker.store.hold_deleted(id, outcome).await;
}

/// The broker answered NOT_FOUND (404): no such queue.
fn not_found(e: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(a)
        if matches!(a.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)))
}

/// The tenant's `hold_max_secs` for a pause id (`<tenant>|...`), in ms.
fn hold_max(worker: &Worker, id: &str) -> i64 {
    let tenant = id.split('|').next().unwrap_or_default();
    let max = worker
        .tenancy
        .load()
        .tenants
        .get(tenant)
        .map(|t| t.hold_max)
        .unwrap_or(Duration::from_secs(24 * 3600));
    i64::try_from(max.as_millis()).unwrap_or(i64::MAX / 2)
}

struct Drain {
    worker: Arc<Worker>,
    conn: Arc<Connection>,
    publisher: Channel,
    id: String,
    owner: String,
    stop: watch::Receiver<bool>,
    counts: Arc<Mutex<HashMap<String, u32>>>,
}

impl Drain {
    async fn channel(&self) -> Option<Channel> {
        let key = queue_key(&self.id);
        let opened = async {
            let ch = self.conn.create_channel().await?;
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            self.worker.topology.declare_hold_queue(&ch, &key).await?;
            Ok::<_, lapin::Error>(ch)
        };
        match opened.await {
            Ok(ch) => Some(ch),
            Err(e) => {
                tracing::warn!(error = %e, "hold queue not opened");
                None
            }
        }
    }

    fn queue(&self) -> String {
        self.worker.topology.hold_queue(&queue_key(&self.id))
    }

    fn count(&self, n: u32) {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(self.id.clone(), n);
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Keeps the drain lease while the drain runs (a send may take longer
    /// than a lease); `lost` turns true when another dispatcher took it or
    /// Redis could not renew it before it lapsed.
    fn keep_lease(&self, lost: Arc<std::sync::atomic::AtomicBool>) -> tokio::task::JoinHandle<()> {
        let (store, id, owner) = (
            self.worker.store.clone(),
            self.id.clone(),
            self.owner.clone(),
        );
        tokio::spawn(async move {
            let mut renewed = std::time::Instant::now();
            loop {
                tokio::time::sleep(LEASE / 6).await;
                match store.hold_claim(&id, &owner).await {
                    Ok(true) => renewed = std::time::Instant::now(),
                    Ok(false) => break,
                    // Stop well before the lease lapses: another dispatcher
                    // may take it then.
                    Err(_) if renewed.elapsed() < LEASE / 2 => {}
                    Err(_) => break,
                }
            }
            lost.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    }

    /// Sends the held messages, oldest first, while the account stays
    /// healthy, up to `dispatcher.hold_drain_window` at once and each
    /// customer's one at a time ([`window`]); then, nothing held or being
    /// held, makes it live.
    async fn drain(self) {
        let Some(ch) = self.channel().await else {
            let _ = self.worker.store.hold_release(&self.id, &self.owner).await;
            return;
        };
        let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let lease = self.keep_lease(lost.clone());
        let provider = provider_label(&self.worker, &self.id);
        let (started, mut sent) = (std::time::Instant::now(), 0u64);
        tracing::info!(pause = %self.id, window = self.worker.hold_drain_window,
            "draining the held messages");
        let mut window: Window<Delivery> = Window::new(self.worker.hold_drain_window);
        let mut out: JoinSet<Sent> = JoinSet::new();
        // The queue was empty when last read; sealed since.
        let (mut empty, mut sealed) = (false, false);
        // Why the drain stops, once what is out has settled.
        let mut stop: Option<&'static str> = None;
        let live = loop {
            if stop.is_none() && self.stopping() {
                stop = Some("shutting down");
            }
            if stop.is_none() && lost.load(std::sync::atomic::Ordering::SeqCst) {
                stop = Some("drain lease lost: another dispatcher drains");
            }
            // Take while there is room: one look at the pause per round.
            if stop.is_none() && window.room() {
                match self.worker.store.paused(&self.id).await {
                    Ok(Some(p)) if !p.draining => stop = Some("paused again: the rest stays held"),
                    Ok(_) => match self.take(&ch, &mut window, &mut out).await {
                        Ok(was_empty) => {
                            empty = was_empty;
                            sealed &= was_empty;
                        }
                        Err(why) => stop = Some(why),
                    },
                    Err(_) if window.taken() == 0 => {
                        tokio::time::sleep(RETRY_HEAD).await;
                        continue;
                    }
                    Err(_) => {}
                }
            }
            if stop.is_some() {
                window.halt();
            }
            if window.out() == 0 {
                if window.taken() > 0 {
                    // Held back: back to the head, oldest first.
                    if !put_back(&mut window).await {
                        break false;
                    }
                    if stop.is_some() {
                        break false;
                    }
                    tokio::time::sleep(RETRY_HEAD).await;
                    continue;
                }
                if stop.is_some() {
                    break false;
                }
                if !empty {
                    continue;
                }
                // Empty: seal, read once more, and go live if nothing came.
                if !sealed {
                    empty = false;
                    match self.worker.store.hold_seal(&self.id).await {
                        Ok(Seal::Sealed) => sealed = true,
                        Ok(Seal::Gone) => break false,
                        Ok(Seal::InFlight) | Err(_) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                    continue;
                }
                match self.worker.store.hold_finish(&self.id, &self.owner).await {
                    Ok(true) => break true,
                    _ => {
                        (empty, sealed) = (false, false);
                        continue;
                    }
                }
            }
            let Some(done) = out.join_next().await else {
                continue;
            };
            let Ok(Sent { slot, settle }) = done else {
                // Not reached: a send that panics is caught in its task.
                stop = Some("a send task was lost");
                break false;
            };
            let kept = match settle {
                Settle::Ack => match Settle::Ack.apply(&slot.item).await {
                    Ok(()) => {
                        sent += 1;
                        self.worker
                            .metrics
                            .paused_messages
                            .with_label_values(&[provider, "released"])
                            .inc();
                        false
                    }
                    Err(e) => {
                        // The broker returns it, and the rest, when the
                        // channel goes; its done mark stops a second send.
                        tracing::warn!(error = %e, "held message not acked");
                        stop = Some("hold queue channel failed");
                        window.halt();
                        false
                    }
                },
                Settle::Requeue => true,
            };
            if let Some(next) = window.done(slot, kept) {
                self.start(&mut out, next);
            }
        };
        lease.abort();
        if live {
            self.count(0);
            tracing::info!(pause = %self.id, released = sent,
                secs = started.elapsed().as_secs_f64(), "held messages released: the account is live");
            let _ = ch.close(200, "drained".into()).await;
            return;
        }
        tracing::info!(pause = %self.id, released = sent,
            why = stop.unwrap_or("stopped"), "drain stopped: the rest stays held");
        let _ = self.worker.store.hold_release(&self.id, &self.owner).await;
        // Anything still unacked returns to the queue with the channel.
        let _ = ch.close(200, "drain stopped".into()).await;
    }

    /// Takes messages off the head while the window has room; true when
    /// the queue had no more. Err: the broker channel failed.
    async fn take(
        &self,
        ch: &Channel,
        window: &mut Window<Delivery>,
        out: &mut JoinSet<Sent>,
    ) -> Result<bool, &'static str> {
        while window.room() {
            let got = ch
                .basic_get(self.queue().as_str().into(), BasicGetOptions::default())
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "hold queue not read");
                    "hold queue not read"
                })?;
            let Some(m) = got else {
                if window.taken() == 0 {
                    self.count(0);
                }
                return Ok(true);
            };
            let taken = u32::try_from(window.taken()).unwrap_or(u32::MAX);
            self.count(m.message_count.saturating_add(taken).saturating_add(1));
            let recipient = recipient_key(&m.delivery.data);
            if let Some(slot) = window.take(recipient, m.delivery) {
                self.start(out, slot);
            }
        }
        Ok(false)
    }

    /// Sends one held message through the worker, in a task of its own.
    fn start(&self, out: &mut JoinSet<Sent>, slot: Slot<Delivery>) {
        let (worker, publisher, id) =
            (self.worker.clone(), self.publisher.clone(), self.id.clone());
        out.spawn(async move {
            let handled =
                std::panic::AssertUnwindSafe(worker.handle_held(&slot.item, &publisher, &id))
                    .catch_unwind()
                    .await;
            // A bug on this message: dead-lettered as `internal`, as the
            // consumer does, so one message cannot stall the drain.
            let settle = match handled {
                Ok(settle) => settle,
                Err(panic) => {
                    let text = shared::telemetry::panic_text(panic.as_ref());
                    worker
                        .dead_letter_panic(&slot.item, &publisher, &text)
                        .await
                }
            };
            Sent { slot, settle }
        });
    }

    /// Dead-letters the held messages that have waited past the tenant's
    /// `hold_max_secs`, from the head; notes the first that has not, so the
    /// head is looked at again only when it is due.
    async fn expire(self) {
        let Some(ch) = self.channel().await else {
            let _ = self.worker.store.hold_release(&self.id, &self.owner).await;
            return;
        };
        let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let lease = self.keep_lease(lost.clone());
        while !self.stopping() && !lost.load(std::sync::atomic::Ordering::SeqCst) {
            match self.head(&ch).await {
                Some(Head::Done) => continue,
                _ => break,
            }
        }
        lease.abort();
        let _ = self.worker.store.hold_release(&self.id, &self.owner).await;
        let _ = ch.close(200, "looked".into()).await;
    }

    /// One message from the head, dead-lettered if it has expired, else
    /// left there. None: the broker channel failed.
    async fn head(&self, ch: &Channel) -> Option<Head> {
        let got = match ch
            .basic_get(self.queue().as_str().into(), BasicGetOptions::default())
            .await
        {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(error = %e, "hold queue not read");
                return None;
            }
        };
        let Some(m) = got else {
            self.count(0);
            let next = now_ms() + self.worker.hold_recheck.as_millis() as i64;
            let _ = self.worker.store.hold_looked(&self.id, None, next).await;
            return Some(Head::Empty);
        };
        self.count(m.message_count.saturating_add(1));
        let delivery = m.delivery;
        let settle = match self
            .worker
            .expire_held(&delivery, &self.publisher, &self.id)
            .await
        {
            Some(settle) => settle,
            None => {
                // Not due: note when it is, leave it at the head.
                let received = shared::Event::from_json(&delivery.data)
                    .ok()
                    .map(|e| e.received_at.timestamp_millis());
                let next = now_ms() + self.worker.hold_recheck.as_millis() as i64;
                let _ = self
                    .worker
                    .store
                    .hold_looked(&self.id, received, next)
                    .await;
                Settle::Requeue
            }
        };
        if let Err(e) = settle.apply(&delivery).await {
            tracing::warn!(error = %e, "held message not settled: it goes back to the head");
            return None;
        }
        Some(match settle {
            Settle::Ack => Head::Done,
            Settle::Requeue => Head::Kept,
        })
    }
}

/// A held message's send, done: its slot, and how to settle it.
struct Sent {
    slot: Slot<Delivery>,
    settle: Settle,
}

/// Returns what the window took and did not send to the queue's head,
/// oldest first. False when the broker channel failed (closing it returns
/// them too).
async fn put_back(window: &mut Window<Delivery>) -> bool {
    for slot in window.put_back() {
        if let Err(e) = Settle::Requeue.apply(&slot.item).await {
            tracing::warn!(error = %e, "held message not put back: the channel returns it");
            return false;
        }
    }
    true
}

/// Whose message this is, for the window's one-at-a-time per customer: the
/// phone, else the e-mail, else the message alone (a digest, never the
/// address itself, is what the window keeps).
fn recipient_key(data: &[u8]) -> String {
    let who = shared::Event::from_json(data).ok().and_then(|e| {
        e.recipient
            .phone
            .map(|p| p.e164().to_string())
            .or_else(|| e.recipient.email.map(|m| m.to_lowercase()))
    });
    match who {
        Some(who) => hex::encode(&Sha256::digest(who.as_bytes())[..12]),
        None => format!("~{}", uuid::Uuid::now_v7().simple()),
    }
}

/// The provider a pause id names, as a metric label.
pub fn provider_label(worker: &Worker, id: &str) -> &'static str {
    let provider = id.split('|').nth(1).unwrap_or_default();
    let tenancy = worker.tenancy.load();
    tenancy
        .tenants
        .values()
        .flat_map(|t| std::iter::once(&t.routing).chain(t.branches.values()))
        .flat_map(|r| r.providers.values().flatten())
        .map(|p| p.name())
        .find(|name| *name == provider)
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_key_is_short_and_names_one_pause() {
        let a = queue_key("acme|meta|1234567890");
        assert_eq!(a.len(), 24);
        assert_ne!(a, queue_key("acme|meta|1234567891"));
        assert_eq!(a, queue_key("acme|meta|1234567890"));
    }
}
