//! Fleet-wide counts per minute for the console's overview: what every
//! dispatcher journaled, tallied in Redis as it is journaled (one hash per
//! minute, `<prefix>:stats:<unix minute>`, kept two hours), so any
//! dispatcher's console shows the whole fleet's last hour. Fields name the
//! step, the tenant and one detail (`attempt|acme|meta|sent`); never a phone
//! or a key. Written with the journal: off when the journal is off.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use deadpool_redis::redis::{self, AsyncCommands};

use crate::delivery_state::{Store, StoreError};
use crate::journal::{Record, Step};

/// How long a minute's counts are kept.
pub const KEEP_SECS: i64 = 7200;

pub fn key(prefix: &str, minute: i64) -> String {
    format!("{prefix}:stats:{minute}")
}

pub fn minute_of(t: DateTime<Utc>) -> i64 {
    t.timestamp().div_euclid(60)
}

/// The fields one batch of journal records adds to.
pub fn tally(tenant: &str, records: &[Record]) -> Vec<String> {
    records
        .iter()
        .filter_map(|r| match &r.step {
            Step::Received {
                source, attempt: 1, ..
            } => Some(format!("received|{tenant}|{source}")),
            Step::Attempt {
                provider, outcome, ..
            } => Some(format!("attempt|{tenant}|{provider}|{outcome}")),
            Step::DeadLettered { reason, .. } => Some(format!("dead_lettered|{tenant}|{reason}")),
            Step::Held { channel, .. } => Some(format!("held|{tenant}|{}", channel.as_str())),
            Step::Fallback { from, .. } => Some(format!("fallback|{tenant}|{}", from.as_str())),
            Step::Skipped { reason, .. } => Some(format!("skipped|{tenant}|{reason}")),
            _ => None,
        })
        .collect()
}

/// The pipeline that adds a batch's fields to this minute's hash.
pub fn pipe(prefix: &str, fields: &[String], now: DateTime<Utc>) -> Option<redis::Pipeline> {
    if fields.is_empty() {
        return None;
    }
    let key = key(prefix, minute_of(now));
    let mut pipe = redis::pipe();
    for f in fields {
        pipe.hincr(&key, f, 1).ignore();
    }
    pipe.expire(&key, KEEP_SECS).ignore();
    Some(pipe)
}

/// The fleet's counts over the last `minutes` minutes (this one included):
/// totals per field, and per minute (oldest first) per step.
#[derive(Debug, Default, Clone)]
pub struct Window {
    pub totals: BTreeMap<String, i64>,
    pub per_minute: Vec<BTreeMap<String, i64>>,
}

impl Window {
    /// The sum of every field whose parts match `pattern`'s (`*` any).
    pub fn sum(&self, pattern: &[&str]) -> i64 {
        self.totals
            .iter()
            .filter(|(k, _)| matches(k, pattern))
            .map(|(_, v)| *v)
            .sum()
    }

    /// Sums by the field's part `at`, over the fields matching `pattern`.
    pub fn by(&self, pattern: &[&str], at: usize) -> BTreeMap<String, i64> {
        let mut out = BTreeMap::new();
        for (k, v) in self.totals.iter().filter(|(k, _)| matches(k, pattern)) {
            if let Some(part) = k.split('|').nth(at) {
                *out.entry(part.to_string()).or_insert(0) += v;
            }
        }
        out
    }
}

fn matches(field: &str, pattern: &[&str]) -> bool {
    let parts: Vec<&str> = field.split('|').collect();
    parts.len() == pattern.len() && parts.iter().zip(pattern).all(|(p, q)| *q == "*" || p == q)
}

pub async fn window(store: &Store, minutes: i64) -> Result<Window, StoreError> {
    let now = minute_of(Utc::now());
    let keys: Vec<String> = (now - minutes + 1..=now)
        .map(|m| key(store.prefix(), m))
        .collect();
    // One read per key (a Redis Cluster keeps them on different nodes), sent
    // together.
    let hashes: Vec<Vec<(String, i64)>> = store
        .run(|c| {
            let keys = keys.clone();
            async move {
                let reads = keys.into_iter().map(|k| {
                    let mut c = c.clone();
                    async move { c.hgetall::<_, Vec<(String, i64)>>(k).await }
                });
                futures_util::future::try_join_all(reads).await
            }
        })
        .await?;
    let mut w = Window::default();
    for h in hashes {
        let mut minute = BTreeMap::new();
        for (field, n) in h {
            *w.totals.entry(field.clone()).or_insert(0) += n;
            if let Some(step) = field.split('|').next() {
                *minute.entry(step.to_string()).or_insert(0) += n;
            }
        }
        w.per_minute.push(minute);
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::tenant::Channel;

    #[test]
    fn a_batch_tallies_steps_by_tenant_and_detail() {
        let at = Utc::now();
        let records = vec![
            Record {
                at,
                step: Step::Attempt {
                    attempt: 1,
                    channel: Channel::Whatsapp,
                    provider: "meta".into(),
                    outcome: "sent".into(),
                    message_id: None,
                    error: None,
                },
            },
            Record {
                at,
                step: Step::DeadLettered {
                    reason: "config".into(),
                    error: "+79161234567 refused".into(),
                },
            },
        ];
        let fields = tally("acme", &records);
        assert_eq!(
            fields,
            vec!["attempt|acme|meta|sent", "dead_lettered|acme|config"]
        );
        let w = Window {
            totals: fields.into_iter().map(|f| (f, 2)).collect(),
            per_minute: vec![],
        };
        assert_eq!(w.sum(&["attempt", "*", "*", "sent"]), 2);
        assert_eq!(w.sum(&["attempt", "*", "*", "failed"]), 0);
        assert_eq!(w.by(&["dead_lettered", "acme", "*"], 2)["config"], 2);
    }
}
