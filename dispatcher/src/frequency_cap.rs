//! Frequency caps per recipient: "at most one review request per phone in
//! 30 days, across every branch of the chain" (`[tenants.frequency_caps]`).
//!
//! One sorted set per tenant, event kind and recipient in Redis, shared by
//! the fleet: its members are the dedup keys of the customer events that
//! took a place in the window, scored by Redis's own clock (`TIME`, one
//! clock for every dispatcher). One Lua script drops what left the window
//! and takes a place only when one is free, so two dispatchers cannot both
//! take the last one. The event that holds a place keeps it: its
//! redeliveries, its second attempt and an admin's replay pass their own
//! place instead of being capped by it. The recipient appears in the key
//! only as a salted digest (never at rest in clear); one key per script, so
//! Redis Cluster needs no hash tag.

use std::sync::LazyLock;

use redis::Script;
use shared::event::{Event, EventKind};
use shared::tenant::FrequencyCap;

use crate::delivery_state::{Store, StoreError};

/// Whether this event may be sent under its cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapCheck {
    /// A place was free (or this event already holds one).
    Allowed,
    /// The recipient had `at_most` messages of this kind in the window.
    Capped,
}

/// KEYS[1] the recipient's set; ARGV: window ms, at most, member.
/// Returns 1 allowed (a place taken or already held), 0 capped.
const TAKE_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  return 1
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], window)
return 1
"#;

static TAKE: LazyLock<Script> = LazyLock::new(|| Script::new(TAKE_LUA));

/// Who the cap counts: the phone, else the e-mail; none for an event with
/// neither (it cannot be sent anyway).
fn recipient(event: &Event) -> Option<String> {
    event
        .recipient
        .phone
        .as_ref()
        .map(|p| p.e164().to_string())
        .or_else(|| event.recipient.email.as_ref().map(|e| e.to_lowercase()))
}

/// The set's key: the recipient as a digest salted with the tenant.
pub fn cap_key(prefix: &str, tenant: &str, kind: EventKind, recipient: &str) -> String {
    let digest = crate::shared_limit::digest(&format!("{tenant}\u{0}{recipient}"));
    format!("{prefix}:cap:{tenant}:{kind}:{digest}")
}

impl Store {
    /// Takes a place under the cap for this event (or finds it holds one).
    pub async fn take_cap(&self, event: &Event, cap: FrequencyCap) -> Result<CapCheck, StoreError> {
        let Some(to) = recipient(event) else {
            return Ok(CapCheck::Allowed);
        };
        let key = cap_key(self.prefix(), &event.tenant, event.kind, &to);
        let window_ms = i64::try_from(cap.window().as_millis()).unwrap_or(i64::MAX);
        let member = event.dedup_key.clone();
        self.run(|mut c| async move {
            TAKE.key(key)
                .arg(window_ms)
                .arg(cap.at_most)
                .arg(member)
                .invoke_async::<i64>(&mut c)
                .await
                .map(|n| {
                    if n == 1 {
                        CapCheck::Allowed
                    } else {
                        CapCheck::Capped
                    }
                })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_hides_the_recipient_and_separates_tenants() {
        let a = cap_key("v", "acme", EventKind::OrderCompleted, "+79161234567");
        assert!(a.starts_with("v:cap:acme:order_completed:"), "{a}");
        assert!(!a.contains("9161234567"), "{a}");
        assert_ne!(
            a,
            cap_key("v", "other", EventKind::OrderCompleted, "+79161234567")
        );
        assert_ne!(
            a,
            cap_key("v", "acme", EventKind::OrderCompleted, "+79161234568")
        );
    }
}
