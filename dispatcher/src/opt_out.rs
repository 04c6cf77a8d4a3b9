//! Opt-outs: a per-tenant stop list. A recipient on it gets nothing from
//! that tenant on any channel; the event is journaled `skipped: opted out`
//! (not failed, not dead-lettered).
//!
//! Filled by customers (an inbound WhatsApp message that is only a stop
//! word, `callbacks.stop_words`, reaches the dispatcher on the status route),
//! by providers (SMS.ru's code 209: "the number is in your stop list") and
//! by admins (API and CLI: add, remove, check, list).
//!
//! One Redis hash per tenant, `<prefix>:optout:{<tenant>}`, shared by the
//! fleet. Its fields are digests of the phone salted with the tenant (never
//! the phone in clear); its values say how the phone is shown (masked),
//! who opted it out and when. Writes wait for a replica like the delivery
//! marks: an opt-out must outlive a failover.

use chrono::{DateTime, Utc};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use shared::phone::Phone;

use crate::delivery_state::{Store, StoreError};

/// One entry of a stop list, as admins see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OptedOut {
    /// The digest that keys the entry (an admin removes by it).
    pub id: String,
    /// The phone, masked (`+7916*****67`).
    pub phone: String,
    /// Who opted it out: `meta inbound`, `wazzup inbound`, `smsru 209`, `admin`.
    pub source: String,
    pub at: DateTime<Utc>,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    phone: String,
    source: String,
    at: DateTime<Utc>,
}

/// The tenant's stop list.
pub fn list_key(prefix: &str, tenant: &str) -> String {
    format!("{prefix}:optout:{{{tenant}}}")
}

/// The entry's field: the phone as a digest salted with the tenant.
pub fn entry_id(tenant: &str, phone: &Phone) -> String {
    crate::shared_limit::digest(&format!("optout\u{0}{tenant}\u{0}{}", phone.e164()))
}

impl Store {
    /// Whether the phone is on the tenant's stop list.
    pub async fn is_opted_out(&self, tenant: &str, phone: &Phone) -> Result<bool, StoreError> {
        let key = list_key(self.prefix(), tenant);
        let id = entry_id(tenant, phone);
        self.run(|mut c| async move { c.hexists(key, id).await })
            .await
    }

    /// Puts the phone on the tenant's stop list; true when it was not on it
    /// (the first opt-out's source and time are kept).
    pub async fn opt_out(
        &self,
        tenant: &str,
        phone: &Phone,
        source: &str,
    ) -> Result<bool, StoreError> {
        let key = list_key(self.prefix(), tenant);
        let id = entry_id(tenant, phone);
        let value = serde_json::to_string(&Stored {
            phone: shared::mask::phone(phone.e164()),
            source: source.to_string(),
            at: Utc::now(),
        })
        .unwrap_or_default();
        let durable = key.clone();
        self.run_durable(durable, move |mut c| {
            let (key, id, value) = (key.clone(), id.clone(), value.clone());
            async move { c.hset_nx(key, id, value).await }
        })
        .await
    }

    /// Takes an entry off the tenant's stop list, by its id; true when it
    /// was on it.
    pub async fn opt_in(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        let key = list_key(self.prefix(), tenant);
        let durable = key.clone();
        let id = id.to_string();
        self.run_durable(durable, move |mut c| {
            let (key, id) = (key.clone(), id.clone());
            async move { c.hdel::<_, _, i64>(key, id).await.map(|n| n > 0) }
        })
        .await
    }

    /// The tenant's stop list, newest first.
    pub async fn opted_out(&self, tenant: &str) -> Result<Vec<OptedOut>, StoreError> {
        let key = list_key(self.prefix(), tenant);
        let all: Vec<(String, String)> = self
            .run(|mut c| async move { c.hgetall(key).await })
            .await?;
        let mut list: Vec<OptedOut> = all
            .into_iter()
            .filter_map(|(id, v)| {
                let s: Stored = serde_json::from_str(&v).ok()?;
                Some(OptedOut {
                    id,
                    phone: s.phone,
                    source: s.source,
                    at: s.at,
                })
            })
            .collect();
        list.sort_by(|a, b| b.at.cmp(&a.at).then_with(|| a.id.cmp(&b.id)));
        Ok(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_hides_the_phone_and_separates_tenants() {
        let p = shared::phone::normalise("+79161234567").expect("phone");
        let q = shared::phone::normalise("+79161234568").expect("phone");
        let a = entry_id("acme", &p);
        assert!(!a.contains("9161234567"), "{a}");
        assert_ne!(a, entry_id("other", &p));
        assert_ne!(a, entry_id("acme", &q));
        assert_eq!(a, entry_id("acme", &p), "stable");
        assert_eq!(list_key("v", "acme"), "v:optout:{acme}");
    }
}
