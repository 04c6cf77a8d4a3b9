//! The delivery journal: what happened to each event, step by step, so
//! anyone can answer "what happened to the message for order 142?".
//!
//! Keys (under the Redis prefix, all with `dispatcher.journal_ttl_secs`):
//! - `journal:<event id>`: a list of JSON records, oldest first (received,
//!   look-up, each attempt with provider, outcome and message id, second
//!   attempt scheduled, fallback, callbacks, dead letter);
//! - `journal-ref:<tenant>:<source>:<reference>`: the ids of the events for
//!   one source record, by the source's record id (`source_ref`) and by the
//!   order number, so an admin can start from what the customer quoted.
//!
//! The journal is a record, not a control: the worker collects a delivery's
//! steps and writes them in one round trip after it has settled, and a
//! journal write that fails is counted, never a reason to hold or resend.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_redis::redis::{self, AsyncCommands};
use serde::{Deserialize, Serialize};
use shared::Event;
use shared::tenant::Channel;

use crate::delivery_state::{Store, StoreError};

/// One step of an event's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub step: Step,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// A worker took the event from the queue (again, on a second attempt
    /// or after a fallback).
    Received {
        tenant: String,
        source: String,
        kind: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source_ref: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        order_number: Option<String>,
        /// Masked.
        recipient: String,
        dedup_key: String,
        received_at: DateTime<Utc>,
        attempt: i64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        failed_channels: Vec<Channel>,
    },
    /// The webhook had no phone; the tenant's CRM was asked.
    LookedUp {
        found: bool,
        detail: String,
    },
    /// One call of a provider (its quick retries included).
    Attempt {
        attempt: i64,
        channel: Channel,
        provider: String,
        outcome: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// The channel had already sent this message: nothing sent again.
    AlreadySent {
        channel: Channel,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message_id: Option<String>,
        /// The event whose send this one duplicates, when it is another
        /// (a later status of the same order, a webhook sent twice).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duplicate_of: Option<String>,
    },
    /// Another dispatcher held the lease: back to the broker for a while.
    LeaseWait {
        channel: Channel,
        after_secs: u64,
    },
    /// This channel's second attempt for the customer event is already
    /// queued (an earlier webhook's first attempt failed): it alone sends.
    AwaitsSecondAttempt {
        channel: Channel,
    },
    SecondAttemptScheduled {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        channel: Option<Channel>,
        after_secs: u64,
        reason: String,
    },
    /// The channel cannot reach the recipient: on to the next one.
    Fallback {
        from: Channel,
        reason: String,
    },
    /// A provider's delivery status for a message we sent.
    Callback {
        provider: String,
        state: String,
        message_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    DeadLettered {
        reason: String,
        error: String,
    },
    /// The channel's account is paused: waits in the broker's delay ladder
    /// until it is resumed (or `hold_max_secs` runs out), no attempt spent.
    Held {
        channel: Channel,
        reason: String,
    },
    /// Not due yet: waits in the broker's delay ladder until then.
    Scheduled {
        /// When it is due (the record's own `at` is when it was scheduled).
        send_at: DateTime<Utc>,
        /// `delay` or `send hours`.
        reason: String,
    },
    /// Not sent on purpose, and not a failure: a frequency cap, an opt-out.
    Skipped {
        reason: String,
        detail: String,
    },
}

impl Record {
    pub fn now(step: Step) -> Record {
        Record {
            at: Utc::now(),
            step,
        }
    }
}

/// Where an event stands, read off its history: the last step that says so.
pub fn status(history: &[Record]) -> &'static str {
    let mut status = "unknown";
    for r in history {
        status = match &r.step {
            Step::Received { .. } if status == "unknown" => "in_progress",
            Step::Attempt { outcome, .. } if outcome == "sent" => "sent",
            Step::AlreadySent { .. } | Step::AwaitsSecondAttempt { .. }
                if status == "in_progress" =>
            {
                "duplicate"
            }
            Step::SecondAttemptScheduled { .. } => "second_attempt_scheduled",
            Step::Fallback { .. } => "in_progress",
            Step::Callback { state, .. } => match state.as_str() {
                "delivered" => "delivered",
                "read" => "read",
                "failed" => "failed",
                _ => status,
            },
            Step::DeadLettered { .. } => "dead_lettered",
            Step::Skipped { .. } => "skipped",
            Step::Scheduled { .. } => "scheduled",
            Step::Held { .. } => "held",
            _ => status,
        };
    }
    status
}

/// An event as admins see it: id, where it stands, its history.
pub fn view(event_id: &str, history: &[Record]) -> serde_json::Value {
    serde_json::json!({
        "id": event_id,
        "status": status(history),
        "history": history,
    })
}

/// The steps of one delivery, collected while the worker handles it; the
/// trail of a journal that is off keeps nothing.
pub struct Trail(Option<Mutex<Vec<Record>>>);

impl Trail {
    pub fn new(enabled: bool) -> Trail {
        Trail(enabled.then(|| Mutex::new(Vec::with_capacity(4))))
    }

    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    pub fn push(&self, step: Step) {
        if let Some(Ok(mut steps)) = self.0.as_ref().map(Mutex::lock) {
            steps.push(Record::now(step));
        }
    }

    pub fn take(&self) -> Vec<Record> {
        self.0
            .as_ref()
            .and_then(|m| m.lock().ok().map(|mut s| std::mem::take(&mut *s)))
            .unwrap_or_default()
    }
}

/// The `received` step for an event as consumed.
pub fn received(event: &Event, attempt: i64, failed_channels: &[Channel]) -> Step {
    let recipient = match (&event.recipient.phone, &event.recipient.email) {
        (Some(p), _) => p.to_string(),
        (None, Some(e)) => shared::mask::email(e),
        (None, None) => "(look-up)".to_string(),
    };
    Step::Received {
        tenant: event.tenant.clone(),
        source: event.source.as_str().to_string(),
        kind: event.kind.to_string(),
        source_ref: event.source_ref.clone(),
        order_number: event.params.order_number.clone(),
        recipient,
        dedup_key: event.dedup_key.clone(),
        received_at: event.received_at,
        attempt,
        failed_channels: failed_channels.to_vec(),
    }
}

/// How an admin finds an event without its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub tenant: String,
    pub source: String,
    pub reference: String,
}

#[derive(Clone)]
pub struct Journal {
    store: Store,
    ttl: Duration,
}

impl Journal {
    pub fn new(store: Store, ttl: Duration) -> Journal {
        Journal { store, ttl }
    }

    pub fn enabled(&self) -> bool {
        !self.ttl.is_zero()
    }

    fn key(&self, event_id: &str) -> String {
        format!("{}:journal:{event_id}", self.store.prefix())
    }

    fn ref_key(&self, r: &Reference) -> String {
        format!(
            "{}:journal-ref:{}:{}:{}",
            self.store.prefix(),
            r.tenant,
            r.source,
            r.reference
        )
    }

    /// Appends records to an event's history, and indexes the event under
    /// its references.
    pub async fn append(
        &self,
        event_id: &str,
        references: &[Reference],
        records: &[Record],
    ) -> Result<(), StoreError> {
        if !self.enabled() || records.is_empty() {
            return Ok(());
        }
        let ttl = self.ttl.as_secs() as i64;
        let key = self.key(event_id);
        let lines: Vec<String> = records
            .iter()
            .filter_map(|r| serde_json::to_string(r).ok())
            .collect();
        let refs: Vec<String> = references.iter().map(|r| self.ref_key(r)).collect();
        let id = event_id.to_string();
        let tenant = records
            .iter()
            .find_map(|r| match &r.step {
                Step::Received { tenant, .. } => Some(tenant.as_str()),
                _ => None,
            })
            .or_else(|| references.first().map(|r| r.tenant.as_str()))
            .unwrap_or("-");
        let stats = crate::stats::pipe(
            self.store.prefix(),
            &crate::stats::tally(tenant, records),
            Utc::now(),
        );
        // One pipeline per key (a Redis Cluster keeps them on different
        // nodes), sent together: one round trip on a single server.
        self.store
            .run(|c| async move {
                let mut pipes = Vec::with_capacity(1 + refs.len());
                let mut pipe = redis::pipe();
                pipe.rpush(&key, lines).ignore();
                pipe.expire(&key, ttl).ignore();
                pipes.push(pipe);
                for r in &refs {
                    let mut pipe = redis::pipe();
                    pipe.sadd(r, &id).ignore();
                    pipe.expire(r, ttl).ignore();
                    pipes.push(pipe);
                }
                pipes.extend(stats.clone());
                let writes = pipes.iter().map(|p| {
                    let mut c = c.clone();
                    async move { p.query_async::<()>(&mut c).await }
                });
                futures_util::future::try_join_all(writes).await.map(|_| ())
            })
            .await
    }

    /// An event's history, oldest first; empty when unknown or expired.
    pub async fn history(&self, event_id: &str) -> Result<Vec<Record>, StoreError> {
        let key = self.key(event_id);
        let lines: Vec<String> = self
            .store
            .run(|mut c| async move { c.lrange(key, 0, -1).await })
            .await?;
        Ok(lines
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }

    /// The ids of the events recorded under a source reference, oldest first.
    pub async fn find(&self, r: &Reference) -> Result<Vec<String>, StoreError> {
        let key = self.ref_key(r);
        let mut ids: Vec<String> = self
            .store
            .run(|mut c| async move { c.smembers(key).await })
            .await?;
        // UUIDv7: sorting the text sorts by creation time.
        ids.sort();
        Ok(ids)
    }

    /// The ids of a tenant's events recorded under a reference, in one
    /// source or (None) in every source, oldest first within each.
    pub async fn find_in(
        &self,
        tenant: &str,
        source: Option<&str>,
        reference: &str,
    ) -> Result<Vec<String>, StoreError> {
        let sources: Vec<&str> = match source {
            Some(s) => vec![s],
            None => shared::SourceId::ALL.iter().map(|s| s.as_str()).collect(),
        };
        let mut ids = Vec::new();
        for source in sources {
            let r = Reference {
                tenant: tenant.to_string(),
                source: source.to_string(),
                reference: reference.to_string(),
            };
            ids.extend(self.find(&r).await?);
        }
        Ok(ids)
    }
}

/// The references an event is indexed under.
pub fn references(event: &Event) -> Vec<Reference> {
    let mut refs: Vec<Reference> = Vec::with_capacity(2);
    for r in [
        event.source_ref.as_deref(),
        event.params.order_number.as_deref(),
    ]
    .into_iter()
    .flatten()
    .filter(|r| !r.is_empty() && r.len() <= 200)
    {
        if !refs.iter().any(|x| x.reference == r) {
            refs.push(Reference {
                tenant: event.tenant.clone(),
                source: event.source.as_str().to_string(),
                reference: r.to_string(),
            });
        }
    }
    refs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(outcome: &str) -> Step {
        Step::Attempt {
            attempt: 1,
            channel: Channel::Whatsapp,
            provider: "meta".into(),
            outcome: outcome.into(),
            message_id: None,
            error: None,
        }
    }

    /// Every step survives the round trip through its stored JSON (a field
    /// named like the record's own `at` once made a step vanish on reading).
    #[test]
    fn the_new_steps_read_back_as_written() {
        let steps = vec![
            Step::Scheduled {
                send_at: "2026-12-03T13:00:00Z".parse().expect("time"),
                reason: "delay".into(),
            },
            Step::Skipped {
                reason: "frequency cap".into(),
                detail: "at most 1 order_completed per recipient in 2592000 s".into(),
            },
        ];
        for step in steps {
            let record = Record::now(step);
            let json = serde_json::to_string(&record).expect("json");
            let back: Record = serde_json::from_str(&json).expect(&json);
            assert_eq!(back, record, "{json}");
        }
    }

    #[test]
    fn status_follows_the_last_decisive_step() {
        let received = Step::DeadLettered {
            reason: "x".into(),
            error: "y".into(),
        };
        let h = |steps: Vec<Step>| steps.into_iter().map(Record::now).collect::<Vec<_>>();
        assert_eq!(status(&[]), "unknown");
        assert_eq!(status(&h(vec![attempt("sent")])), "sent");
        assert_eq!(
            status(&h(vec![
                attempt("transient"),
                Step::SecondAttemptScheduled {
                    channel: None,
                    after_secs: 570,
                    reason: "500".into()
                }
            ])),
            "second_attempt_scheduled"
        );
        assert_eq!(
            status(&h(vec![attempt("sent"), received.clone()])),
            "dead_lettered"
        );
        assert_eq!(
            status(&h(vec![
                attempt("sent"),
                Step::Callback {
                    provider: "meta".into(),
                    state: "delivered".into(),
                    message_id: "m".into(),
                    error: None
                }
            ])),
            "delivered"
        );
    }

    #[test]
    fn a_trail_of_a_journal_that_is_off_keeps_nothing() {
        let step = || Step::Fallback {
            from: Channel::Whatsapp,
            reason: "x".into(),
        };
        let off = Trail::new(false);
        off.push(step());
        assert!(!off.is_on());
        assert!(off.take().is_empty());
        let on = Trail::new(true);
        on.push(step());
        assert_eq!(on.take().len(), 1);
        assert!(on.take().is_empty(), "taken once");
    }

    #[test]
    fn records_read_back_as_written() {
        let r = Record::now(Step::Fallback {
            from: Channel::Whatsapp,
            reason: "131026".into(),
        });
        let text = serde_json::to_string(&r).unwrap_or_default();
        assert!(text.contains(r#""step":"fallback""#), "{text}");
        let back: Record = serde_json::from_str(&text).expect("reads back");
        assert_eq!(back, r);
    }
}
