//! Rate limits that hold for the whole fleet: one GCRA (generic cell rate
//! algorithm) per provider account, and one per recipient of that account,
//! kept in Redis and taken by one Lua script, so N dispatchers together send
//! no faster than the provider allows. A provider that asked us to wait
//! (HTTP 429, `Retry-After`) pauses its account for every dispatcher: a
//! "not before" key beside the buckets.
//!
//! Keys (all under the account's hash tag, so the script touches one slot
//! of a Redis Cluster):
//! - `<prefix>:rl:{<account>}` = the account's theoretical arrival time (µs);
//! - `<prefix>:rl:{<account>}:r:<recipient hash>` = the recipient's (the
//!   recipient as a SHA-256 prefix: no phone or e-mail in Redis);
//! - `<prefix>:rl:{<account>}:pause` = set for as long as the provider asked.
//!
//! The clock is Redis's (`TIME` inside the script), so dispatchers whose
//! clocks differ still share one schedule. `<account>` is the provider's
//! name and a hash of its configuration section (the credentials included,
//! never stored): every dispatcher with the same config computes the same.

use std::sync::LazyLock;
use std::time::Duration;

use deadpool_redis::redis::{self, Script};
use sha2::{Digest, Sha256};

use crate::delivery_state::{Store, StoreError};

/// Emission interval and tolerance of one bucket, in µs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub every_us: u64,
    pub burst: u32,
}

impl Bucket {
    pub fn per_second(rate: f64, burst: u32) -> Bucket {
        Bucket {
            every_us: ((1_000_000.0 / rate).round() as u64).max(1),
            burst: burst.max(1),
        }
    }

    pub fn every(every: Duration, burst: u32) -> Bucket {
        Bucket {
            every_us: (every.as_micros() as u64).max(1),
            burst: burst.max(1),
        }
    }

    fn tolerance_us(self) -> u64 {
        self.every_us * u64::from(self.burst - 1)
    }
}

static TAKE: LazyLock<Script> = LazyLock::new(|| Script::new(TAKE_LUA));

/// KEYS: account bucket, pause, [recipient bucket]; ARGV: account interval
/// and tolerance (µs), [recipient interval and tolerance]. Returns 0 when
/// the permit is taken (both buckets advance), else the µs to wait (nothing
/// taken). A bucket allows a send while its theoretical arrival time is no
/// more than the tolerance ahead of now.
const TAKE_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local paused = redis.call('PTTL', KEYS[2])
if paused > 0 then return paused * 1000 end
local function look(key, every, tol)
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  return tat, tat - tol - now
end
local a_every, a_tol = tonumber(ARGV[1]), tonumber(ARGV[2])
local a_tat, wait = look(KEYS[1], a_every, a_tol)
local r_tat, r_every
if KEYS[3] then
  r_every = tonumber(ARGV[3])
  local r_wait
  r_tat, r_wait = look(KEYS[3], r_every, tonumber(ARGV[4]))
  if r_wait > wait then wait = r_wait end
end
if wait > 0 then return math.ceil(wait) end
local a_new = a_tat + a_every
redis.call('SET', KEYS[1], string.format('%d', a_new), 'PX', math.ceil((a_new - now) / 1000) + 1)
if r_tat then
  local r_new = r_tat + r_every
  redis.call('SET', KEYS[3], string.format('%d', r_new), 'PX', math.ceil((r_new - now) / 1000) + 1)
end
return 0
"#;

/// The fleet's buckets, in the dispatcher's Redis.
#[derive(Clone)]
pub struct SharedLimits {
    store: Store,
}

impl SharedLimits {
    pub fn new(store: Store) -> SharedLimits {
        SharedLimits { store }
    }

    fn key(&self, account: &str) -> String {
        format!("{}:rl:{{{account}}}", self.store.prefix())
    }

    /// Takes a permit for one send: `None` when taken, else how long until
    /// the next could be (nothing was taken).
    pub async fn take(
        &self,
        account: &str,
        bucket: Bucket,
        recipient: Option<(&str, Bucket)>,
    ) -> Result<Option<Duration>, StoreError> {
        let base = self.key(account);
        let pause = format!("{base}:pause");
        let recipient = recipient.map(|(r, b)| (format!("{base}:r:{}", digest(r)), b));
        let wait_us: i64 = self
            .store
            .run(|mut c| async move {
                let mut call = TAKE.key(&base);
                call.key(&pause)
                    .arg(bucket.every_us)
                    .arg(bucket.tolerance_us());
                if let Some((key, b)) = &recipient {
                    call.key(key).arg(b.every_us).arg(b.tolerance_us());
                }
                call.invoke_async(&mut c).await
            })
            .await?;
        Ok((wait_us > 0).then(|| Duration::from_micros(wait_us as u64)))
    }

    /// The provider asked us to wait: no dispatcher sends through this
    /// account until `wait` has passed (a longer pause already set stays).
    pub async fn pause(&self, account: &str, wait: Duration) -> Result<(), StoreError> {
        let key = format!("{}:pause", self.key(account));
        let ms = wait.as_millis().max(1) as u64;
        self.store
            .run(|mut c| async move {
                let current: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut c).await?;
                if current >= ms as i64 {
                    return Ok(());
                }
                redis::cmd("SET")
                    .arg(&key)
                    .arg(1)
                    .arg("PX")
                    .arg(ms)
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
    }
}

/// The account a provider section stands for: the provider's name and a
/// hash of its section (credentials included, so two numbers are two
/// accounts; never stored in clear).
pub fn account(provider: &str, section: &serde_json::Value) -> String {
    let text = serde_json::to_string(section).unwrap_or_default();
    format!("{provider}:{}", &digest(&text)[..16])
}

/// A SHA-256 prefix: a stable name for something that must not be stored.
pub fn digest(text: &str) -> String {
    let d = Sha256::digest(text.as_bytes());
    d.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accounts_differ_by_credentials_and_hide_them() {
        let a = account(
            "meta",
            &json!({"phone_number_id": "1", "access_token": "EAAsecret"}),
        );
        let b = account(
            "meta",
            &json!({"phone_number_id": "2", "access_token": "EAAsecret"}),
        );
        assert_ne!(a, b);
        assert!(a.starts_with("meta:"));
        assert!(!a.contains("EAAsecret") && !a.contains("phone"));
        assert_eq!(
            a,
            account(
                "meta",
                &json!({"access_token": "EAAsecret", "phone_number_id": "1"})
            ),
            "key order does not matter"
        );
    }

    #[test]
    fn buckets_in_microseconds() {
        let b = Bucket::per_second(20.0, 1);
        assert_eq!((b.every_us, b.tolerance_us()), (50_000, 0));
        let b = Bucket::every(Duration::from_secs(6), 45);
        assert_eq!(b.tolerance_us(), 6_000_000 * 44);
    }
}
