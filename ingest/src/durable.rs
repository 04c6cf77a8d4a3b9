//! "Never answer 2xx for an event that is not durable": an event is durable
//! once the broker confirmed it, or, when the broker cannot within the
//! budget, once it is fsynced in the spool. The drain task moves spooled
//! events to the broker, in order, when it is back.

use std::time::Duration;

use shared::Event;
use shared::status::StatusMessage;

use crate::metrics::Metrics;
use crate::publish::{Broker, Outgoing};
use crate::spool::{Drain, Spool, SpoolError};

#[derive(Clone)]
pub struct Durable {
    pub broker: Broker,
    pub spool: Spool,
    metrics: Metrics,
    publish_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurableIn {
    Broker,
    Spool,
}

impl Durable {
    pub fn new(broker: Broker, spool: Spool, metrics: Metrics, publish_timeout: Duration) -> Self {
        Durable {
            broker,
            spool,
            metrics,
            publish_timeout,
        }
    }

    pub async fn store(&self, event: &Event) -> Result<DurableIn, SpoolError> {
        let payload = event.to_json();
        let durable_in = match self
            .broker
            .publish(event, &payload, self.publish_timeout)
            .await
        {
            Ok(()) => DurableIn::Broker,
            Err(e) => {
                self.metrics
                    .publish_failures
                    .with_label_values(&[e.label()])
                    .inc();
                tracing::debug!(event_id = %event.id, reason = e.label(), "publish failed, spooling");
                self.spool.append(payload).await.inspect_err(|err| {
                    tracing::error!(event_id = %event.id, error = %err, "event could not be spooled");
                })?;
                DurableIn::Spool
            }
        };
        let label = match durable_in {
            DurableIn::Broker => "broker",
            DurableIn::Spool => "spool",
        };
        self.metrics
            .events
            .with_label_values(&[event.source.as_str(), event.kind.as_str(), label])
            .inc();
        Ok(durable_in)
    }
}

/// Spool records are an event's JSON as it is (records written before
/// statuses existed stay readable), or this tag followed by a provider
/// status message's JSON (a status update or an opt-out), which the drain
/// publishes to the `status` route.
/// JSON never starts with this tag.
pub const STATUS_RECORD_TAG: &[u8] = b"status:";

/// What a spool record holds, by its tag.
pub enum SpoolRecord {
    Event(Box<Event>),
    Status(StatusMessage),
}

impl SpoolRecord {
    pub fn status_bytes(update: &StatusMessage) -> Vec<u8> {
        let mut record = STATUS_RECORD_TAG.to_vec();
        record.extend_from_slice(&update.to_json());
        record
    }

    /// The record and the payload to publish (without the tag).
    pub fn decode(record: &[u8]) -> Result<(SpoolRecord, &[u8]), String> {
        match record.strip_prefix(STATUS_RECORD_TAG) {
            Some(json) => StatusMessage::from_json(json)
                .map(|u| (SpoolRecord::Status(u), json))
                .map_err(|e| format!("not a status update: {e}")),
            None => Event::from_json(record)
                .map(|e| (SpoolRecord::Event(Box::new(e)), record))
                .map_err(|e| e.to_string()),
        }
    }
}

impl Durable {
    /// Makes providers' status updates durable: all confirmed by the broker
    /// on the `status` route, or else all fsynced in the spool (tagged, so
    /// the drain sends them to the same route). A partial publish followed
    /// by spooling repeats a few updates, which the dispatcher absorbs (a
    /// status never regresses).
    pub async fn store_statuses(&self, updates: &[StatusMessage]) -> Result<DurableIn, SpoolError> {
        let payloads: Vec<Vec<u8>> = updates.iter().map(StatusMessage::to_json).collect();
        let refs: Vec<(&StatusMessage, &[u8])> = updates
            .iter()
            .zip(&payloads)
            .map(|(u, p)| (u, p.as_slice()))
            .collect();
        match self
            .broker
            .publish_statuses(&refs, self.publish_timeout)
            .await
        {
            Ok(()) => Ok(DurableIn::Broker),
            Err(e) => {
                self.metrics
                    .publish_failures
                    .with_label_values(&[e.label()])
                    .inc();
                tracing::debug!(
                    statuses = updates.len(),
                    reason = e.label(),
                    "status publish failed, spooling"
                );
                let appends = updates
                    .iter()
                    .map(|u| self.spool.append(SpoolRecord::status_bytes(u)));
                for r in futures_util::future::join_all(appends).await {
                    r.inspect_err(|err| {
                        tracing::error!(error = %err, "status update could not be spooled");
                    })?;
                }
                Ok(DurableIn::Spool)
            }
        }
    }
}

const DRAIN_BATCH: usize = 256;

/// Moves spooled events (and status updates) to the broker in order. Publishes a batch, waits for
/// every confirm, then moves the cursor; on any failure the batch is tried
/// again (the dispatcher's idempotency absorbs the repeats).
pub async fn drain_spool(drain: Drain, broker: Broker, publish_timeout: Duration) {
    drain_loop(drain, broker, publish_timeout, false).await
}

/// Drains another ingest's stranded spool until it is empty.
pub async fn drain_stranded(drain: Drain, broker: Broker, publish_timeout: Duration) {
    drain_loop(drain, broker, publish_timeout, true).await
}

async fn drain_loop(
    mut drain: Drain,
    broker: Broker,
    publish_timeout: Duration,
    until_empty: bool,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if until_empty && drain.pending_records() == 0 {
            return;
        }
        drain.wait_for_records(Duration::from_secs(1)).await;
        if drain.pending_records() == 0 {
            continue;
        }
        if !broker.wait_until_up(Duration::from_secs(1)).await {
            continue;
        }
        if broker.is_blocked() {
            // A resource alarm: publishing now would only queue up in the
            // blocked connection. Look again shortly.
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        }
        let batch = match drain.read_batch(DRAIN_BATCH) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "spool: read failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if batch.records.is_empty() {
            // Pending counters say there is more but nothing is readable yet
            // (an append is between write and commit): look again shortly.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        // Only our own serialisation is ever spooled; a record that does not
        // read back is logged and skipped rather than blocking the spool.
        let messages: Vec<Outgoing<'_>> = batch
            .records
            .iter()
            .filter_map(|record| match SpoolRecord::decode(record) {
                Ok((SpoolRecord::Event(e), payload)) => Some(Outgoing::event(&e, payload)),
                Ok((SpoolRecord::Status(u), payload)) => Some(Outgoing::status(&u, payload)),
                Err(e) => {
                    tracing::error!(error = %e, "spool: unreadable record skipped");
                    None
                }
            })
            .collect();
        let sent = broker
            .drain_messages(&messages, publish_timeout.max(Duration::from_secs(5)))
            .await;
        drop(messages);
        if let Err(error) = sent {
            tracing::warn!(
                retry_in_ms = backoff.as_millis() as u64,
                ?error,
                "spool: drain batch not confirmed, retrying"
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        } else {
            let n = batch.records.len();
            if let Err(e) = drain.commit(batch) {
                tracing::error!(error = %e, "spool: cursor write failed; batch will be sent again");
            } else {
                tracing::info!(
                    drained = n,
                    left = drain.pending_records(),
                    "spool: drained to broker"
                );
            }
            backoff = Duration::from_millis(100);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::status::{DeliveryState, STATUS_SCHEMA_VERSION, StatusUpdate};

    #[test]
    fn status_records_are_tagged_and_decode_to_their_payload() {
        let u = StatusMessage::Update(StatusUpdate {
            schema: STATUS_SCHEMA_VERSION,
            provider: "meta".into(),
            message_id: "wamid.1".into(),
            state: DeliveryState::Read,
            at: chrono::Utc::now(),
            received_at: chrono::Utc::now(),
            error_code: None,
            error: None,
            delivery_key: None,
        });
        let record = SpoolRecord::status_bytes(&u);
        assert!(record.starts_with(STATUS_RECORD_TAG));
        let (decoded, payload) = SpoolRecord::decode(&record).unwrap();
        assert!(matches!(decoded, SpoolRecord::Status(d) if d == u));
        assert_eq!(payload, u.to_json().as_slice());
        // An untagged record is an event; a status without the tag is not one.
        assert!(SpoolRecord::decode(&u.to_json()).is_err());
        assert!(SpoolRecord::decode(b"status:{}").is_err());
    }
}
