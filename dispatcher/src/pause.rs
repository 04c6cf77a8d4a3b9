//! Channel health: a provider account that answers with an account-level
//! failure (Meta's token expired or account locked, a Wazzup channel
//! blocked or unpaid, SMS.ru out of money or over its daily limit, a key
//! refused) is paused for its tenant, in Redis, for the whole fleet. While
//! it is paused no message is sent through it: one that has another channel
//! in the tenant's list goes there at once (`fallback: channel paused`), the
//! others are held, in order, in the account's hold queue ([`crate::hold`]),
//! no attempt spent. A held message older than the tenant's `hold_max_secs`
//! (default 24 h) goes to the DLQ as `expired_while_paused` rather than
//! reach a customer late.
//!
//! A paused account is probed on a backoff (1 s doubling to 10 min) by
//! whichever dispatcher claims the probe first ([`Store::claim_probe`]): a
//! cheap authenticated call ([`crate::providers::Provider::probe`]); a
//! provider without one gets a timed pause, the next message being the
//! probe. A healthy probe resumes the account; an admin can pause and resume
//! by hand. An account with messages held is not live at once: it drains
//! (its held messages first, oldest first, new ones queue behind them),
//! then is live.
//!
//! One Redis hash, `<prefix>:pauses`, fields `<tenant>|<provider>|<account>`
//! (the account is an id or a digest of the credentials, never a key), and
//! beside each pause the bookkeeping of its hold queue (`~hold|<id>`) and
//! of its notices (`~notice|<id>`): one key, so every change is one script.

use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::delivery_state::{Store, StoreError};

/// The longest wait between two probes of a paused account.
pub const MAX_PROBE_BACKOFF: Duration = Duration::from_secs(600);
/// The first wait.
pub const FIRST_PROBE_BACKOFF: Duration = Duration::from_secs(1);
/// Failed "probes" of a provider that has none before its timed pause ends.
const TIMED_PAUSE_PROBES: u32 = 6;
/// How long a dispatcher that claimed a probe has to finish it before
/// another may try.
pub const PROBE_CLAIM: Duration = Duration::from_secs(30);

/// A paused account, as admins see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Paused {
    /// `<tenant>|<provider>|<account>`: what resume takes.
    pub id: String,
    pub tenant: String,
    pub provider: String,
    /// The account: Meta's phone number id, Wazzup's channel id, or a digest
    /// of the credentials.
    pub account: String,
    /// What the provider answered (masked), or `admin`.
    pub reason: String,
    pub since: DateTime<Utc>,
    /// When the next probe is due.
    pub next_probe: DateTime<Utc>,
    /// Probes that found it still broken.
    pub probes: u32,
    /// Paused by an admin: not probed, stays until an admin resumes it.
    pub manual: bool,
    /// Not probed: what paused it is something a probe cannot see healthy
    /// (a provider's notice of a ban or a paused template, a country the
    /// account may not write to); resumed by the provider's next notice or
    /// an admin.
    #[serde(default)]
    pub notice: bool,
    /// Healthy again and releasing what it held, in order
    /// ([`crate::hold`]): until its hold queue is empty, new messages for
    /// it queue behind the held ones; not probed.
    #[serde(default)]
    pub draining: bool,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    reason: String,
    since: DateTime<Utc>,
    next_probe: DateTime<Utc>,
    probes: u32,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    manual: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    notice: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    draining: bool,
}

pub fn pauses_key(prefix: &str) -> String {
    format!("{prefix}:pauses")
}

pub fn pause_id(tenant: &str, provider: &str, account: &str) -> String {
    format!("{tenant}|{provider}|{account}")
}

/// The account part of one template's pause: `<account>/template/<name>/<language>`.
pub fn template_account(account: &str, name: &str, language: &str) -> String {
    format!("{account}/template/{name}/{language}")
}

/// The account part of its pause for one recipient country: `<account>/country/<region>`.
pub fn country_account(account: &str, region: &str) -> String {
    format!("{account}/country/{region}")
}

/// The field beside a pause that keeps the time (ms) of the last notice
/// about it, so a notice that arrives after a newer one changes nothing.
/// Not a pause: [`parse`] reads it as none.
const NOTICE_MARK: &str = "~notice|";

/// What an account notice did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeEffect {
    Paused,
    Resumed,
    /// Already as the notice says, or paused by an admin (who alone resumes it).
    Unchanged,
    /// A newer notice about the same account came first.
    Stale,
}

/// Ends a pause (Lua, shared by the scripts that resume): gone when
/// nothing is held for it, else draining until its hold queue is empty
/// ([`crate::hold`]). 1 when it was paused (and not already draining).
const RESUME_FN: &str = r#"
local function resume(hash, id, holdfield)
  local v = redis.call('HGET', hash, id)
  if not v then return 0 end
  local p = cjson.decode(v)
  if p.draining then return 0 end
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('HSET', hash, '~last|' .. id, cjson.encode({probes = tonumber(p.probes or 0), at = now}))
  if redis.call('HEXISTS', hash, holdfield) == 1 then
    p.draining = true
    p.manual = nil
    p.notice = nil
    redis.call('HSET', hash, id, cjson.encode(p))
  else
    redis.call('HDEL', hash, id)
  end
  return 1
end
"#;

/// Resumes one pause: `KEYS[1]` the pauses hash; `ARGV` id, its hold field.
const RESUME: &str = r#"
return resume(KEYS[1], ARGV[1], ARGV[2])
"#;

/// Pauses an account unless it is paused already (a draining one is paused
/// again): `KEYS[1]` the pauses hash; `ARGV` id, the pause's value, then
/// the next probe's time after 1, 2, ... failed probes. An account that
/// breaks again while it drains, or within [`AGAIN_WITHIN`] of its resume
/// (a probe that sees it healthy while sends still fail: Meta 368 or
/// 131031 leave the phone-number read working), goes on from the probes it
/// had, one more: its sends are tried on the backoff, not every second.
const PAUSE: &str = r#"
local v = redis.call('HGET', KEYS[1], ARGV[1])
local old = v and cjson.decode(v)
if old and not old.draining then return 0 end
local base = nil
if old then
  base = tonumber(old.probes or 0)
else
  local l = redis.call('HGET', KEYS[1], '~last|' .. ARGV[1])
  if l then
    local last = cjson.decode(l)
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    if tonumber(last.at) > now - tonumber(ARGV[3]) then base = tonumber(last.probes) end
  end
end
local value = ARGV[2]
if base and #ARGV > 3 then
  local p = cjson.decode(ARGV[2])
  p.probes = base + 1
  p.next_probe = ARGV[3 + math.min(base + 1, #ARGV - 3)]
  value = cjson.encode(p)
end
redis.call('HSET', KEYS[1], ARGV[1], value)
return 1
"#;

/// How soon after a resume a new failure counts as the same breakage.
pub const AGAIN_WITHIN: Duration = Duration::from_secs(15 * 60);

/// Applies a notice to one pause, atomically: `KEYS[1]` the pauses hash;
/// `ARGV` id, notice time (ms), healthy (`1`/`0`), the pause's value,
/// probed (`1`: leave an existing pause to its probe), the notice mark
/// prefix, the pause's hold field.
const NOTICE: &str = r#"
local mark = ARGV[6] .. ARGV[1]
local last = tonumber(redis.call('HGET', KEYS[1], mark) or '0')
local at = tonumber(ARGV[2])
if last > at then return 'stale' end
redis.call('HSET', KEYS[1], mark, ARGV[2])
local v = redis.call('HGET', KEYS[1], ARGV[1])
local draining = v and cjson.decode(v).draining
if v and cjson.decode(v).manual then return 'unchanged' end
if ARGV[3] == '1' then
  if resume(KEYS[1], ARGV[1], ARGV[7]) == 1 then return 'resumed' end
  return 'unchanged'
end
if v and not draining and (ARGV[5] == '1' or cjson.decode(v).notice) then return 'unchanged' end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
return 'paused'
"#;

fn parse(id: String, value: &str) -> Option<Paused> {
    let s: Stored = serde_json::from_str(value).ok()?;
    let mut parts = id.splitn(3, '|');
    let (tenant, provider, account) = (parts.next()?, parts.next()?, parts.next()?);
    Some(Paused {
        tenant: tenant.to_string(),
        provider: provider.to_string(),
        account: account.to_string(),
        id,
        reason: s.reason,
        since: s.since,
        next_probe: s.next_probe,
        probes: s.probes,
        manual: s.manual,
        notice: s.notice,
        draining: s.draining,
    })
}

impl Paused {
    /// A pause just written, as the one who wrote it sees it.
    pub fn new(id: &str, reason: &str) -> Paused {
        let mut parts = id.splitn(3, '|');
        let mut part = || parts.next().unwrap_or_default().to_string();
        let (tenant, provider, account) = (part(), part(), part());
        let now = Utc::now();
        Paused {
            id: id.to_string(),
            tenant,
            provider,
            account,
            reason: shared::mask::text(reason),
            since: now,
            next_probe: now,
            probes: 0,
            manual: false,
            notice: false,
            draining: false,
        }
    }
}

/// The pauses among the fields of the pauses hash, by id.
pub fn parse_all(
    all: &std::collections::HashMap<String, String>,
) -> std::collections::HashMap<String, Paused> {
    all.iter()
        .filter_map(|(id, v)| Some((id.clone(), parse(id.clone(), v)?)))
        .collect()
}

/// The wait before the probe after `probes` failed ones.
pub fn backoff(probes: u32) -> Duration {
    FIRST_PROBE_BACKOFF
        .saturating_mul(1u32.checked_shl(probes.min(16)).unwrap_or(u32::MAX))
        .min(MAX_PROBE_BACKOFF)
}

/// Sets the probe fields of a pause that still exists (a resume in between
/// wins), and only when its `next_probe` is still the one read (`ARGV[1]`),
/// so of several dispatchers one claims a probe.
const CLAIM: &str = r#"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 0 end
local p = cjson.decode(v)
if p.next_probe ~= ARGV[2] then return 0 end
p.next_probe = ARGV[3]
p.probes = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(p))
return 1
"#;

impl Store {
    /// The pause of this account, if it is paused.
    pub async fn paused(&self, id: &str) -> Result<Option<Paused>, StoreError> {
        let key = pauses_key(self.prefix());
        let field = id.to_string();
        let v: Option<String> = self
            .run(|mut c| {
                let (key, field) = (key.clone(), field.clone());
                async move { c.hget(key, field).await }
            })
            .await?;
        Ok(v.and_then(|v| parse(id.to_string(), &v)))
    }

    /// The first of these pauses that holds (one round trip: an account's,
    /// its template's, its country's). `pass_draining`: the caller releases
    /// a held message, which passes every draining pause (its own, and any
    /// other it would otherwise be held behind: two accounts draining at
    /// once must not hand one message back and forth).
    pub async fn paused_any(
        &self,
        ids: &[String],
        pass_draining: bool,
    ) -> Result<Option<Paused>, StoreError> {
        let key = pauses_key(self.prefix());
        let fields = ids.to_vec();
        let v: Vec<Option<String>> = self
            .run(|mut c| {
                let (key, fields) = (key.clone(), fields.clone());
                async move {
                    redis::cmd("HMGET")
                        .arg(key)
                        .arg(fields)
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        Ok(ids
            .iter()
            .zip(v)
            .filter_map(|(id, v)| v.and_then(|v| parse(id.clone(), &v)))
            .find(|p| !(p.draining && pass_draining)))
    }

    /// A provider's notice about this account (or template): pauses it
    /// when `healthy` is false, resumes it when true, unless a newer notice
    /// came first or an admin paused it. `probed`: the prober may resume
    /// it (the probe sees what the notice said); otherwise only a notice
    /// or an admin does.
    pub async fn notice(
        &self,
        id: &str,
        healthy: bool,
        reason: &str,
        at: DateTime<Utc>,
        probed: bool,
    ) -> Result<NoticeEffect, StoreError> {
        let key = pauses_key(self.prefix());
        let now = Utc::now();
        let value = serde_json::to_string(&Stored {
            reason: shared::mask::text(reason),
            since: now,
            next_probe: now + backoff(0),
            probes: 0,
            manual: false,
            notice: !probed,
            draining: false,
        })
        .unwrap_or_default();
        let args = [
            id.to_string(),
            at.timestamp_millis().max(1).to_string(),
            if healthy { "1" } else { "0" }.to_string(),
            value,
            if probed { "1" } else { "0" }.to_string(),
            NOTICE_MARK.to_string(),
            crate::hold::hold_field(id),
        ];
        let effect: String = self
            .run_durable(key.clone(), move |mut c| {
                let (key, args) = (key.clone(), args.clone());
                async move {
                    let script = redis::Script::new(&format!("{RESUME_FN}{NOTICE}"));
                    let mut invocation = script.key(key);
                    for a in &args {
                        invocation.arg(a);
                    }
                    invocation.invoke_async::<String>(&mut c).await
                }
            })
            .await?;
        Ok(match effect.as_str() {
            "paused" => NoticeEffect::Paused,
            "resumed" => NoticeEffect::Resumed,
            "stale" => NoticeEffect::Stale,
            _ => NoticeEffect::Unchanged,
        })
    }

    /// Pauses the account; true when it was not paused (the first pause's
    /// reason and time are kept).
    pub async fn pause(&self, id: &str, reason: &str) -> Result<bool, StoreError> {
        let now = Utc::now();
        let value = serde_json::to_string(&Stored {
            reason: shared::mask::text(reason),
            since: now,
            next_probe: now + backoff(0),
            probes: 0,
            manual: false,
            notice: false,
            draining: false,
        })
        .unwrap_or_default();
        // The next probe after n failed ones, for a breakage that goes on.
        let escalated = (1..=10)
            .map(|n| stored_time(now + chrono::Duration::from_std(backoff(n)).unwrap_or_default()))
            .collect();
        self.set_pause(id, value, escalated).await
    }

    /// Pauses what no probe can see healthy again (one country of an
    /// account): only a provider's notice or an admin resumes it; true when
    /// it was not paused.
    pub async fn pause_unprobed(&self, id: &str, reason: &str) -> Result<bool, StoreError> {
        let now = Utc::now();
        let value = serde_json::to_string(&Stored {
            reason: shared::mask::text(reason),
            since: now,
            next_probe: now,
            probes: 0,
            manual: false,
            notice: true,
            draining: false,
        })
        .unwrap_or_default();
        self.set_pause(id, value, Vec::new()).await
    }

    /// Writes a pause unless one holds already (a draining one is
    /// replaced); `escalated`: the next probe's time after 1, 2, ... failed
    /// probes, for an account that broke again soon after its resume.
    async fn set_pause(
        &self,
        id: &str,
        value: String,
        escalated: Vec<String>,
    ) -> Result<bool, StoreError> {
        let key = pauses_key(self.prefix());
        let field = id.to_string();
        let within = AGAIN_WITHIN.as_millis().to_string();
        self.run_durable(key.clone(), move |mut c| {
            let (key, field, value) = (key.clone(), field.clone(), value.clone());
            let (within, escalated) = (within.clone(), escalated.clone());
            async move {
                redis::Script::new(PAUSE)
                    .key(key)
                    .arg(field)
                    .arg(value)
                    .arg(within)
                    .arg(escalated)
                    .invoke_async::<i64>(&mut c)
                    .await
                    .map(|n| n == 1)
            }
        })
        .await
    }

    /// An admin pauses the account (or makes a pause a provider caused
    /// theirs): no probe resumes it, only an admin.
    pub async fn pause_by_hand(&self, id: &str) -> Result<(), StoreError> {
        let key = pauses_key(self.prefix());
        let now = Utc::now();
        let value = serde_json::to_string(&Stored {
            reason: "admin".into(),
            since: now,
            next_probe: now,
            probes: 0,
            manual: true,
            notice: false,
            draining: false,
        })
        .unwrap_or_default();
        let field = id.to_string();
        self.run_durable(key.clone(), move |mut c| {
            let (key, field, value) = (key.clone(), field.clone(), value.clone());
            async move { c.hset::<_, _, _, ()>(key, field, value).await }
        })
        .await
    }

    /// Resumes the account; true when it was paused. With messages held
    /// for it the pause turns to draining: they go out first, in order
    /// ([`crate::hold`]).
    pub async fn resume(&self, id: &str) -> Result<bool, StoreError> {
        let key = pauses_key(self.prefix());
        let args = [id.to_string(), crate::hold::hold_field(id)];
        self.run_durable(key.clone(), move |mut c| {
            let (key, args) = (key.clone(), args.clone());
            async move {
                redis::Script::new(&format!("{RESUME_FN}{RESUME}"))
                    .key(key)
                    .arg(&args[0])
                    .arg(&args[1])
                    .invoke_async::<i64>(&mut c)
                    .await
                    .map(|n| n == 1)
            }
        })
        .await
    }

    /// Every paused account, oldest first.
    pub async fn pauses(&self) -> Result<Vec<Paused>, StoreError> {
        let key = pauses_key(self.prefix());
        let all: Vec<(String, String)> = self
            .run(|mut c| {
                let key = key.clone();
                async move { c.hgetall(key).await }
            })
            .await?;
        let mut list: Vec<Paused> = all
            .into_iter()
            .filter_map(|(id, v)| parse(id, &v))
            .collect();
        list.sort_by(|a, b| a.since.cmp(&b.since).then_with(|| a.id.cmp(&b.id)));
        Ok(list)
    }

    /// Moves a pause's next probe from `seen` (the `next_probe` read) to
    /// `next`, with `probes` failed probes; false when another dispatcher
    /// moved it first or the account was resumed.
    pub async fn claim_probe(
        &self,
        p: &Paused,
        next: DateTime<Utc>,
        probes: u32,
    ) -> Result<bool, StoreError> {
        let key = pauses_key(self.prefix());
        let args = [
            p.id.clone(),
            stored_time(p.next_probe),
            stored_time(next),
            probes.to_string(),
        ];
        self.run(|mut c| {
            let (key, args) = (key.clone(), args.clone());
            async move {
                redis::Script::new(CLAIM)
                    .key(key)
                    .arg(&args[0])
                    .arg(&args[1])
                    .arg(&args[2])
                    .arg(&args[3])
                    .invoke_async::<i64>(&mut c)
                    .await
                    .map(|n| n == 1)
            }
        })
        .await
    }
}

/// A time as [`Stored`] writes it (serde's RFC 3339), so the claim script
/// compares it as text.
fn stored_time(t: DateTime<Utc>) -> String {
    serde_json::to_value(t)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The prober: every second, reads the pauses (for the gauge) and probes
/// those that are due, each claimed by one dispatcher. A provider without a
/// probe is resumed when its timed pause is over.
pub async fn run(
    worker: std::sync::Arc<crate::worker::Worker>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = crate::consumer::stopped(&mut shutdown) => return,
        }
        let Ok(pauses) = worker.store.pauses().await else {
            continue;
        };
        worker
            .metrics
            .paused_accounts
            .set(pauses.iter().filter(|p| !p.draining).count() as i64);
        let now = Utc::now();
        for p in pauses
            .into_iter()
            .filter(|p| !p.manual && !p.notice && !p.draining && p.next_probe <= now)
        {
            probe_one(&worker, p).await;
        }
    }
}

async fn probe_one(worker: &crate::worker::Worker, p: Paused) {
    let claimed_until = Utc::now() + PROBE_CLAIM;
    match worker.store.claim_probe(&p, claimed_until, p.probes).await {
        Ok(true) => {}
        _ => return,
    }
    let claimed = Paused {
        next_probe: claimed_until,
        ..p.clone()
    };
    let result = match provider_of(worker, &p) {
        // Its config changed or is gone: nothing left to pause.
        None => Ok(()),
        Some(provider) => match provider.probe() {
            Some(probe) => probe.await,
            // No probe: a timed pause of about two minutes (1 + 2 + ... +
            // 64 s), then the next message tries.
            None if p.probes < TIMED_PAUSE_PROBES => {
                Err("no probe for this provider: a timed pause".into())
            }
            None => Ok(()),
        },
    };
    match result {
        Ok(()) => {
            if worker.store.resume(&p.id).await.unwrap_or(false) {
                worker
                    .metrics
                    .pauses
                    .with_label_values(&[p.provider.as_str(), "resumed"])
                    .inc();
                tracing::info!(tenant = %p.tenant, provider = %p.provider, account = %p.account,
                    paused_secs = (Utc::now() - p.since).num_seconds(), "account resumed: the probe found it healthy");
            }
        }
        Err(e) => {
            let probes = p.probes.saturating_add(1);
            let next = Utc::now() + chrono::Duration::from_std(backoff(probes)).unwrap_or_default();
            let _ = worker.store.claim_probe(&claimed, next, probes).await;
            tracing::info!(tenant = %p.tenant, provider = %p.provider, account = %p.account,
                probes, error = %shared::mask::text(&e), "account still paused");
        }
    }
}

/// The provider a pause names, in the tenant's routing or a branch's.
pub fn provider_of(
    worker: &crate::worker::Worker,
    p: &Paused,
) -> Option<std::sync::Arc<dyn crate::providers::Provider>> {
    let tenancy = worker.tenancy.load();
    let tenant = tenancy.tenants.get(&p.tenant)?;
    std::iter::once(&tenant.routing)
        .chain(tenant.branches.values())
        .flat_map(|r| r.providers.values().flatten())
        .find(|provider| provider.name() == p.provider && provider.account() == p.account)
        .cloned()
}

/// Whether `id` (`<tenant>|<provider>|<account>`) names a provider account
/// a tenant (or one of its branches) has configured: what an admin may
/// pause by hand.
pub fn names_configured_account(worker: &crate::worker::Worker, id: &str) -> bool {
    let mut parts = id.splitn(3, '|');
    let (Some(tenant), Some(provider), Some(account)) = (parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let p = Paused {
        id: id.to_string(),
        tenant: tenant.to_string(),
        provider: provider.to_string(),
        account: account.to_string(),
        reason: String::new(),
        since: Utc::now(),
        next_probe: Utc::now(),
        probes: 0,
        manual: true,
        notice: false,
        draining: false,
    };
    provider_of(worker, &p).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_ten_minutes() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(32));
        assert_eq!(backoff(10), MAX_PROBE_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_PROBE_BACKOFF);
    }

    #[test]
    fn an_id_names_tenant_provider_and_account() {
        let id = pause_id("acme", "meta", "1234567890");
        let value = serde_json::to_string(&Stored {
            reason: "meta 190".into(),
            since: Utc::now(),
            next_probe: Utc::now(),
            probes: 2,
            manual: false,
            notice: false,
            draining: false,
        })
        .expect("json");
        let p = parse(id.clone(), &value).expect("parsed");
        assert_eq!((p.tenant.as_str(), p.provider.as_str()), ("acme", "meta"));
        assert_eq!((p.account.as_str(), p.probes), ("1234567890", 2));
        assert_eq!(p.id, id);
        // The time of the last notice beside it is not a pause.
        assert!(parse(format!("{NOTICE_MARK}{id}"), "1733300000000").is_none());
        // Nor is its hold's bookkeeping.
        assert!(
            parse(
                crate::hold::hold_field(&id),
                r#"{"pending":{},"sealed":false}"#
            )
            .is_none()
        );
        let template = pause_id(
            "acme",
            "meta",
            &template_account("1234567890", "review", "ru"),
        );
        let p = parse(template, &value).expect("parsed");
        assert_eq!(p.account, "1234567890/template/review/ru");
    }
}
