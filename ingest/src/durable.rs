//! "Never answer 2xx for an event that is not durable": an event is durable
//! once the broker confirmed it, or, when the broker cannot within the
//! budget, once it is fsynced in the spool. The drain task moves spooled
//! events to the broker, in order, when it is back.

use std::time::Duration;

use shared::Event;

use crate::metrics::Metrics;
use crate::publish::Broker;
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

const DRAIN_BATCH: usize = 256;

/// Moves spooled events to the broker in order. Publishes a batch, waits for
/// every confirm, then moves the cursor; on any failure the batch is tried
/// again (the dispatcher's idempotency absorbs the repeats).
pub async fn drain_spool(mut drain: Drain, broker: Broker, publish_timeout: Duration) {
    let mut backoff = Duration::from_millis(100);
    loop {
        drain.wait_for_records(Duration::from_secs(1)).await;
        if drain.pending_records() == 0 {
            continue;
        }
        if !broker.wait_until_up(Duration::from_secs(1)).await {
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
        let events: Vec<(Event, &[u8])> = batch
            .records
            .iter()
            .filter_map(|payload| match Event::from_json(payload) {
                Ok(e) => Some((e, payload.as_slice())),
                Err(e) => {
                    tracing::error!(error = %e, "spool: unreadable record skipped");
                    None
                }
            })
            .collect();
        let refs: Vec<(&Event, &[u8])> = events.iter().map(|(e, p)| (e, *p)).collect();
        let all_ok = broker
            .publish_all(&refs, publish_timeout.max(Duration::from_secs(5)))
            .await
            .is_ok();
        drop(refs);
        drop(events);
        if all_ok {
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
        } else {
            tracing::warn!(
                retry_in_ms = backoff.as_millis() as u64,
                "spool: drain batch not confirmed, retrying"
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}
