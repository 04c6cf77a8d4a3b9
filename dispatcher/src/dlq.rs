//! The dead-letter queue for admins: list, show, replay, purge.
//!
//! Reading is non-destructive: messages are fetched without acking and go
//! back to the queue when the channel closes. A replay republishes the event
//! to the dispatch queue with a fresh retry ladder, waits for the broker's
//! confirm, and only then removes the dead letter, so an interrupted replay
//! loses nothing and can simply be run again. Replayed events go through
//! idempotency like any other: a channel that already succeeded is not sent
//! again, so replaying twice sends nothing the second time.

use std::time::Duration;

use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Confirmation, Connection};
use serde::Serialize;
use shared::Event;
use shared::tenant::Channel;
use shared::topology::{ROUTE_DISPATCH, Topology};

use crate::delivery_state::{Sending, Store};
use crate::outbox::{self, header_int, header_str};

/// Which dead letters an operation applies to. Empty = all.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub id: Option<String>,
    /// Any of these ids (the console's selection); empty = any. Unlike
    /// `id`, a selection is a bulk operation: `uncertain` letters stay
    /// unless `include_uncertain`.
    pub ids: Vec<String>,
    pub tenant: Option<String>,
    pub source: Option<String>,
    pub reason: Option<String>,
    /// Only letters dead-lettered at least this long ago.
    pub older_than: Option<Duration>,
    /// Replay also `uncertain` letters that a filter other than an id
    /// matches. Off by default: the provider may have delivered them, so a
    /// bulk replay would send those twice.
    pub include_uncertain: bool,
}

/// One dead letter as admins see it (recipient masked).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Entry {
    pub id: String,
    pub tenant: String,
    pub source: String,
    pub kind: String,
    pub recipient: String,
    pub reason: String,
    pub error: String,
    pub attempts: i64,
    pub channel: Option<String>,
    pub provider: Option<String>,
    pub first_failure_at: Option<String>,
    pub failed_at: Option<String>,
    pub age_secs: Option<i64>,
}

#[derive(
    Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct Report {
    pub replayed: u64,
    pub skipped: u64,
    /// `uncertain` letters the filter matched but a bulk replay leaves
    /// (replay them by id, or with `include_uncertain`).
    pub uncertain_kept: u64,
    pub failed: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("dlq: {0}")]
pub struct DlqError(String);

fn err(e: impl std::fmt::Display) -> DlqError {
    DlqError(e.to_string())
}

pub struct Dlq {
    conn: Connection,
    topology: Topology,
}

struct Letter {
    msg: BasicGetMessage,
    event: Option<Event>,
    entry: Entry,
}

impl Dlq {
    pub async fn connect(
        endpoints: &shared::amqp::Endpoints,
        topology: Topology,
    ) -> Result<Dlq, DlqError> {
        let conn = endpoints
            .connect("vestnik-dlq", Duration::from_secs(5))
            .await
            .map_err(DlqError)?;
        Ok(Dlq { conn, topology })
    }

    pub async fn close(self) {
        let _ = self.conn.close(200, "done".into()).await;
    }

    /// Every dead letter, fetched without acking; they return to the queue
    /// when `channel` closes unless acked.
    async fn fetch(&self, channel: &lapin::Channel) -> Result<Vec<Letter>, DlqError> {
        let mut out = Vec::new();
        while let Some(msg) = channel
            .basic_get(
                self.topology.dead_letter_queue().as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .map_err(err)?
        {
            let event = Event::from_json(&msg.delivery.data).ok();
            let entry = entry(&msg, event.as_ref());
            out.push(Letter { msg, event, entry });
        }
        Ok(out)
    }

    pub async fn list(&self, filter: &Filter) -> Result<Vec<Entry>, DlqError> {
        let ch = self.conn.create_channel().await.map_err(err)?;
        let letters = self.fetch(&ch).await?;
        let _ = ch.close(200, "listed".into()).await;
        Ok(letters
            .into_iter()
            .map(|l| l.entry)
            .filter(|e| matches(filter, e))
            .collect())
    }

    /// The full event (as JSON) and its failure entry.
    pub async fn show(&self, id: &str) -> Result<Option<(Entry, serde_json::Value)>, DlqError> {
        let ch = self.conn.create_channel().await.map_err(err)?;
        let letters = self.fetch(&ch).await?;
        let _ = ch.close(200, "shown".into()).await;
        Ok(letters.into_iter().find(|l| l.entry.id == id).map(|l| {
            let body = serde_json::from_slice(&l.msg.delivery.data).unwrap_or_else(|_| {
                serde_json::Value::String(
                    String::from_utf8_lossy(&l.msg.delivery.data).into_owned(),
                )
            });
            (l.entry, body)
        }))
    }

    /// Replays the matching dead letters (`dry_run`: counts only).
    pub async fn replay(
        &self,
        filter: &Filter,
        store: &Store,
        dry_run: bool,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<Report, DlqError> {
        let ch = self.conn.create_channel().await.map_err(err)?;
        let publisher = self.conn.create_channel().await.map_err(err)?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(err)?;
        let letters: Vec<Letter> = self
            .fetch(&ch)
            .await?
            .into_iter()
            .filter(|l| matches(filter, &l.entry))
            .collect();
        let total = letters.len() as u64;
        let mut report = Report::default();
        for (i, l) in letters.into_iter().enumerate() {
            progress(i as u64 + 1, total);
            let Some(event) = &l.event else {
                report.skipped += 1; // poison: nothing to replay
                continue;
            };
            if l.entry.reason == "uncertain" && filter.id.is_none() && !filter.include_uncertain {
                report.uncertain_kept += 1;
                continue;
            }
            if dry_run {
                report.replayed += 1;
                continue;
            }
            // A fresh ladder: forget the old second attempt. An uncertain
            // letter replayed on purpose also clears the mark that held it
            // (the admin checked the message did not arrive); any other
            // letter leaves it, so a bulk replay cannot resend a message that
            // another event of the same customer event left uncertain.
            let sending = if l.entry.reason == "uncertain" {
                Sending::Clear
            } else {
                Sending::Keep
            };
            let mut cleared = true;
            for c in [Channel::Whatsapp, Channel::Sms, Channel::Email] {
                cleared &= store
                    .reset_ladder(&event.dedup_key, c, sending)
                    .await
                    .is_ok();
            }
            if !cleared || self.republish(&publisher, &l.msg).await.is_err() {
                report.failed += 1;
                continue;
            }
            // Only now, with the replacement confirmed, does the letter go.
            match l.msg.delivery.ack(BasicAckOptions::default()).await {
                Ok(_) => report.replayed += 1,
                Err(_) => report.failed += 1,
            }
        }
        let _ = publisher.close(200, "replayed".into()).await;
        let _ = ch.close(200, "replayed".into()).await;
        Ok(report)
    }

    /// Removes the matching dead letters for good.
    pub async fn purge(&self, filter: &Filter) -> Result<u64, DlqError> {
        let ch = self.conn.create_channel().await.map_err(err)?;
        let mut purged = 0;
        for l in self.fetch(&ch).await? {
            if matches(filter, &l.entry)
                && l.msg.delivery.ack(BasicAckOptions::default()).await.is_ok()
            {
                purged += 1;
            }
        }
        let _ = ch.close(200, "purged".into()).await;
        Ok(purged)
    }

    async fn republish(
        &self,
        publisher: &lapin::Channel,
        msg: &BasicGetMessage,
    ) -> Result<(), DlqError> {
        let props = &msg.delivery.properties;
        let mut headers = FieldTable::default();
        if let Some(old) = props.headers() {
            for (k, v) in old.inner() {
                let k = k.as_str();
                if !(k.starts_with("x-dlq-")
                    || k == outbox::ATTEMPT
                    || k == outbox::FAILED_CHANNELS
                    || k == outbox::FIRST_FAILURE_AT
                    || k == "x-death"
                    || k.starts_with("x-first-death")
                    || k.starts_with("x-last-death"))
                {
                    headers.insert(ShortString::from(k), v.clone());
                }
            }
        }
        headers.insert(
            ShortString::from("x-replayed-at"),
            AMQPValue::LongString(LongString::from(chrono::Utc::now().to_rfc3339())),
        );
        let props: BasicProperties = props.clone().with_headers(headers).with_delivery_mode(2);
        let confirm = publisher
            .basic_publish(
                self.topology.exchange().into(),
                ROUTE_DISPATCH.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &msg.delivery.data,
                props,
            )
            .await
            .map_err(err)?;
        match tokio::time::timeout(Duration::from_secs(10), confirm)
            .await
            .map_err(err)?
            .map_err(err)?
        {
            Confirmation::Ack(None) => Ok(()),
            other => Err(DlqError(format!("not confirmed: {other:?}"))),
        }
    }
}

fn entry(msg: &BasicGetMessage, event: Option<&Event>) -> Entry {
    let h = msg.delivery.properties.headers().as_ref();
    let failed_at = header_str(h, outbox::FAILED_AT);
    let age_secs = failed_at
        .as_deref()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds());
    let recipient = event
        .map(|e| match (&e.recipient.phone, &e.recipient.email) {
            (Some(p), _) => p.to_string(),
            (None, Some(m)) => shared::mask::email(m),
            (None, None) => "-".into(),
        })
        .unwrap_or_else(|| "-".into());
    Entry {
        id: event
            .map(|e| e.id.to_string())
            .or_else(|| {
                msg.delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|m| m.to_string())
            })
            .unwrap_or_else(|| format!("poison-{}", msg.delivery.delivery_tag)),
        tenant: event
            .map(|e| e.tenant.clone())
            .or_else(|| header_str(h, "x-tenant"))
            .unwrap_or_else(|| "-".into()),
        source: event
            .map(|e| e.source.to_string())
            .or_else(|| header_str(h, "x-source"))
            .unwrap_or_else(|| "-".into()),
        kind: event
            .map(|e| e.kind.to_string())
            .unwrap_or_else(|| "-".into()),
        recipient,
        reason: header_str(h, outbox::REASON).unwrap_or_else(|| "-".into()),
        error: header_str(h, outbox::ERROR).unwrap_or_default(),
        attempts: header_int(h, outbox::ATTEMPTS).unwrap_or(0),
        channel: header_str(h, outbox::CHANNEL),
        provider: header_str(h, outbox::PROVIDER),
        first_failure_at: header_str(h, outbox::FIRST_FAILURE_AT),
        failed_at,
        age_secs,
    }
}

fn matches(f: &Filter, e: &Entry) -> bool {
    f.id.as_ref().is_none_or(|v| *v == e.id)
        && (f.ids.is_empty() || f.ids.contains(&e.id))
        && f.tenant.as_ref().is_none_or(|v| *v == e.tenant)
        && f.source.as_ref().is_none_or(|v| *v == e.source)
        && f.reason.as_ref().is_none_or(|v| *v == e.reason)
        && f.older_than
            .is_none_or(|d| e.age_secs.is_some_and(|a| a >= d.as_secs() as i64))
}

/// Personal data and secrets masked in `dlq show` output (CLI and API):
/// phones, e-mails, names, addresses (iiko's `place` is a home address),
/// free text that may quote them, and route keys.
pub fn mask_event(mut v: serde_json::Value) -> serde_json::Value {
    let mask_str = |v: &mut serde_json::Value, key: &str, f: fn(&str) -> String| {
        if let Some(s) = v.get(key).and_then(|s| s.as_str()).map(f) {
            v[key] = s.into();
        }
    };
    if let Some(r) = v.get_mut("recipient") {
        mask_str(r, "name", shared::mask::name);
    }
    if let Some(p) = v.get_mut("params") {
        for key in ["place", "previous_place", "staff"] {
            mask_str(p, key, shared::mask::name);
        }
        mask_str(p, "description", shared::mask::text);
        if let Some(extra) = p.get_mut("extra").and_then(|e| e.as_object_mut()) {
            for value in extra.values_mut() {
                if let Some(s) = value.as_str().map(shared::mask::text) {
                    *value = s.into();
                }
            }
        }
    }
    if let Some(r) = v.get_mut("recipient") {
        if let Some(p) = r
            .get("phone")
            .and_then(|p| p.as_str())
            .map(shared::mask::phone)
        {
            r["phone"] = p.into();
        }
        if let Some(m) = r
            .get("email")
            .and_then(|m| m.as_str())
            .map(shared::mask::email)
        {
            r["email"] = m.into();
        }
    }
    if let Some(k) = v
        .get("route")
        .and_then(|r| r.get("api_key"))
        .and_then(|k| k.as_str())
        .map(shared::mask::secret)
    {
        v["route"]["api_key"] = k.into();
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shown_letter_names_and_places_no_one() {
        let shown = mask_event(serde_json::json!({
            "recipient": {"phone": "+79161234567", "email": "ivan.petrov@mail.ru", "name": "Иван Петров"},
            "params": {"place": "ул. Ленина, 1, кв. 5", "previous_place": "пр. Мира 2",
                       "staff": "Мария Сидорова", "description": "звонить +7 916 765-43-21",
                       "extra": {"comment": "ivan@mail.ru"}, "order_number": "142"},
            "route": {"api_key": "wz-secret-key-123456"}
        }));
        let text = shown.to_string();
        for secret in [
            "1234567",
            "ivan.petrov",
            "Петров",
            "Ленина",
            "Мира",
            "Сидорова",
            "765-43-21",
            "ivan@",
            "secret-key",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(
            shown["params"]["order_number"], "142",
            "what is not personal stays"
        );
        assert_eq!(shown["recipient"]["name"], "И***");
    }
}
