//! One delivery, start to finish: decode → choose channel → claim
//! (idempotency) → render → send with quick retries → record the outcome
//! (sent mark, second attempt, or dead letter) → ack. Retry, fallback and
//! idempotency live here, once; providers only send and classify.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use lapin::message::Delivery;
use lapin::{BasicProperties, Channel as AmqpChannel};
use shared::Event;
use shared::config::QuickRetrySettings;
use shared::tenant::{Channel, ChannelPolicy};
use shared::topology::Topology;
use tokio::sync::watch;
use tracing::Instrument;

use crate::health::Health;
use crate::idempotency::{Claim, Sent, Store, StoreError};
use crate::metrics::Metrics;
use crate::outbox::{self, Headers, header_int, header_str, int, text};
use crate::providers::{Address, Message, Outcome, Provider};
use crate::templates::Templates;

/// What to tell the broker about a delivery once its outcome is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    Ack,
    /// Not processed (shutting down, or the outcome could not be recorded):
    /// back to the queue for another worker.
    Requeue,
}

pub struct TenantRuntime {
    pub policy: ChannelPolicy,
    pub providers: BTreeMap<Channel, Arc<dyn Provider>>,
}

pub struct Worker {
    pub topology: Topology,
    pub store: Store,
    pub templates: Templates,
    pub tenants: HashMap<String, TenantRuntime>,
    /// Dev mode: where a channel goes when a tenant configured no provider at all.
    pub log_providers: BTreeMap<Channel, Arc<dyn Provider>>,
    pub retry: QuickRetrySettings,
    pub lease_ttl: Duration,
    pub metrics: Metrics,
    pub health: Health,
    pub shutdown: watch::Receiver<bool>,
}

/// The failure that ends an attempt or the event, as recorded in the DLQ.
struct Failure {
    class: &'static str,
    reason: String,
    channel: Option<Channel>,
    provider: Option<&'static str>,
}

impl Worker {
    pub async fn handle(&self, delivery: &Delivery, publisher: &AmqpChannel) -> Settle {
        let props = &delivery.properties;
        let attempt = header_int(props.headers().as_ref(), outbox::ATTEMPT)
            .unwrap_or(1)
            .clamp(1, 2);
        let event = match Event::from_json(&delivery.data) {
            Ok(e) => e,
            Err(e) => {
                self.metrics
                    .dead_lettered
                    .with_label_values(&["poison"])
                    .inc();
                tracing::error!(error = %shared::mask::text(&e.to_string()), "poison message: dead-lettered");
                let f = Failure {
                    class: "poison",
                    reason: shared::mask::text(&e.to_string()),
                    channel: None,
                    provider: None,
                };
                return self
                    .dead_letter(publisher, &delivery.data, props, attempt, f)
                    .await;
            }
        };
        let span = tracing::info_span!("event", event_id = %event.id, tenant = %event.tenant, kind = %event.kind, attempt);
        self.handle_event(&event, &delivery.data, props, attempt, publisher)
            .instrument(span)
            .await
    }

    async fn handle_event(
        &self,
        event: &Event,
        raw: &[u8],
        props: &BasicProperties,
        attempt: i64,
        publisher: &AmqpChannel,
    ) -> Settle {
        let fail = |class, reason: String| Failure {
            class,
            reason,
            channel: None,
            provider: None,
        };
        let Some(tenant) = self.tenants.get(&event.tenant) else {
            let f = fail(
                "config",
                format!(
                    "tenant {} is not configured in the dispatcher",
                    event.tenant
                ),
            );
            return self.dead_letter(publisher, raw, props, attempt, f).await;
        };
        let Some((channel, provider, address)) = self.route(event, tenant) else {
            let reason = if event.lookup.is_some() {
                "no phone or e-mail; the phone look-up is not available in this version"
            } else {
                "no phone or e-mail for any channel of the tenant's policy"
            };
            return self
                .dead_letter(
                    publisher,
                    raw,
                    props,
                    attempt,
                    fail("recipient", reason.into()),
                )
                .await;
        };
        let provider_name = provider.name();

        // Claim: one message per (dedup key, channel).
        let token = uuid::Uuid::now_v7().to_string();
        let claimed = self.claim(&event.dedup_key, channel, &token).await;
        match claimed {
            None | Some(Claim::Busy) => return Settle::Requeue,
            Some(Claim::AlreadySent(sent)) => {
                self.metrics.duplicates.inc();
                tracing::info!(channel = %channel, message_id = ?sent.map(|s| s.message_id), "already sent: not sending again");
                return Settle::Ack;
            }
            Some(Claim::Acquired) => {}
        }

        let body = match self.templates.render(event, channel) {
            Ok(b) => b,
            Err(e) => {
                self.release(&event.dedup_key, channel, &token).await;
                let f = Failure {
                    class: "config",
                    reason: e.to_string(),
                    channel: Some(channel),
                    provider: Some(provider_name),
                };
                return self
                    .final_failure(event, raw, props, attempt, publisher, f)
                    .await;
            }
        };
        let message = Message {
            channel,
            to: address,
            body,
            idempotency_key: format!("{}/{}", event.dedup_key, channel),
        };

        let started = Instant::now();
        let outcome = self
            .send_with_quick_retries(provider.as_ref(), &message)
            .await;
        self.metrics
            .attempt_seconds
            .with_label_values(&[provider_name])
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .deliveries
            .with_label_values(&[provider_name, channel.as_str(), outcome.class()])
            .inc();

        match outcome {
            Outcome::Sent { message_id } => {
                let sent = Sent {
                    provider: provider_name.to_string(),
                    message_id: message_id.clone(),
                    event_id: event.id.to_string(),
                    at: chrono::Utc::now(),
                };
                // The mark must be durable before the ack: hold until Redis takes it.
                let marked = self
                    .with_store(|| {
                        self.store
                            .mark_sent(&event.dedup_key, channel, &token, &sent)
                    })
                    .await;
                if marked.is_none() {
                    // Shutting down with the send done but unrecorded: the lease
                    // (TTL) still blocks an immediate resend by another worker.
                    return Settle::Requeue;
                }
                tracing::info!(channel = %channel, provider = provider_name, message_id = %message_id, "sent");
                Settle::Ack
            }
            Outcome::Transient { reason, .. } if attempt < 2 => {
                self.schedule_second_attempt(
                    event,
                    raw,
                    props,
                    publisher,
                    channel,
                    provider_name,
                    &token,
                    reason,
                )
                .await
            }
            other => {
                self.release(&event.dedup_key, channel, &token).await;
                let class = match &other {
                    Outcome::Transient { .. } => "second_attempt_failed",
                    o => o.class(),
                };
                let f = Failure {
                    class,
                    reason: other.reason().to_string(),
                    channel: Some(channel),
                    provider: Some(provider_name),
                };
                self.final_failure(event, raw, props, attempt, publisher, f)
                    .await
            }
        }
    }

    /// The first channel of the policy that can reach the recipient, with a
    /// configured provider; the log provider only when the tenant configured
    /// none of them (dev mode).
    fn route(
        &self,
        event: &Event,
        tenant: &TenantRuntime,
    ) -> Option<(Channel, Arc<dyn Provider>, Address)> {
        let address = |c: Channel| match c {
            Channel::Whatsapp | Channel::Sms => event.recipient.phone.clone().map(Address::Phone),
            Channel::Email => event.recipient.email.clone().map(Address::Email),
        };
        let reachable: Vec<(Channel, Address)> = tenant
            .policy
            .for_kind(event.kind)
            .iter()
            .filter_map(|c| address(*c).map(|a| (*c, a)))
            .collect();
        if let Some((c, p, a)) = reachable
            .iter()
            .find_map(|(c, a)| tenant.providers.get(c).map(|p| (*c, p.clone(), a.clone())))
        {
            return Some((c, p, a));
        }
        let (c, a) = reachable.into_iter().next()?;
        Some((c, self.log_providers.get(&c)?.clone(), a))
    }

    async fn send_with_quick_retries(&self, provider: &dyn Provider, message: &Message) -> Outcome {
        let r = &self.retry;
        let max_retry_after = Duration::from_millis(r.max_retry_after_ms);
        let op = || async {
            match provider.send(message).await {
                o @ Outcome::Transient { .. } => Err(o),
                o => Ok(o),
            }
        };
        op.retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(r.min_delay_ms))
                .with_max_delay(Duration::from_millis(r.max_delay_ms))
                .with_max_times(r.retries)
                .with_jitter(),
        )
        .adjust(|o, next| match (o, next) {
            // Honour Retry-After, but a long one ends the attempt: the ladder waits instead.
            (
                Outcome::Transient {
                    retry_after: Some(ra),
                    ..
                },
                Some(d),
            ) => (*ra <= max_retry_after).then_some((*ra).max(d)),
            (_, d) => d,
        })
        .notify(|o, wait| {
            self.metrics
                .quick_retries
                .with_label_values(&[provider.name()])
                .inc();
            tracing::warn!(
                provider = provider.name(),
                reason = o.reason(),
                retry_in_ms = wait.as_millis() as u64,
                "transient failure, retrying"
            );
        })
        .await
        .unwrap_or_else(|o| o)
    }

    #[allow(clippy::too_many_arguments)]
    async fn schedule_second_attempt(
        &self,
        event: &Event,
        raw: &[u8],
        props: &BasicProperties,
        publisher: &AmqpChannel,
        channel: Channel,
        provider: &'static str,
        token: &str,
        reason: String,
    ) -> Settle {
        let first = self
            .with_store(|| {
                self.store
                    .schedule_second_attempt(&event.dedup_key, channel)
            })
            .await;
        let Some(first) = first else {
            self.release(&event.dedup_key, channel, token).await;
            return Settle::Requeue;
        };
        if first {
            let headers: Headers = vec![
                (outbox::ATTEMPT, int(2)),
                (
                    outbox::FIRST_FAILURE_AT,
                    text(chrono::Utc::now().to_rfc3339()),
                ),
                (outbox::ERROR, text(reason.clone())),
                (outbox::PROVIDER, text(provider)),
            ];
            if let Err(e) =
                outbox::second_attempt(publisher, &self.topology, raw, props, headers).await
            {
                tracing::error!(error = %e, "second attempt could not be scheduled; handing the event back");
                let _ = self
                    .with_store(|| {
                        self.store
                            .unschedule_second_attempt(&event.dedup_key, channel)
                    })
                    .await;
                self.release(&event.dedup_key, channel, token).await;
                return Settle::Requeue;
            }
            self.metrics.second_attempts.inc();
            tracing::warn!(channel = %channel, provider, reason = %reason,
                delay_s = self.topology.second_attempt_delay().as_secs(), "first attempt failed: second attempt scheduled");
        } else {
            tracing::info!(channel = %channel, "first attempt failed again, second attempt already scheduled");
        }
        self.release(&event.dedup_key, channel, token).await;
        Settle::Ack
    }

    async fn final_failure(
        &self,
        event: &Event,
        raw: &[u8],
        props: &BasicProperties,
        attempt: i64,
        publisher: &AmqpChannel,
        f: Failure,
    ) -> Settle {
        if let Some(channel) = f.channel
            && self
                .with_store(|| {
                    self.store
                        .mark_failed(&event.dedup_key, channel, f.class, &f.reason)
                })
                .await
                .is_none()
        {
            return Settle::Requeue;
        }
        self.dead_letter(publisher, raw, props, attempt, f).await
    }

    async fn dead_letter(
        &self,
        publisher: &AmqpChannel,
        raw: &[u8],
        props: &BasicProperties,
        attempt: i64,
        f: Failure,
    ) -> Settle {
        let mut headers: Headers = vec![
            (outbox::REASON, text(f.class)),
            (
                outbox::ERROR,
                text(f.reason.chars().take(500).collect::<String>()),
            ),
            (outbox::ATTEMPTS, int(attempt)),
            (outbox::FAILED_AT, text(chrono::Utc::now().to_rfc3339())),
        ];
        if let Some(c) = f.channel {
            headers.push((outbox::CHANNEL, text(c.as_str())));
        }
        if let Some(p) = f.provider {
            headers.push((outbox::PROVIDER, text(p)));
        }
        if header_str(props.headers().as_ref(), outbox::FIRST_FAILURE_AT).is_none() && attempt == 1
        {
            headers.push((
                outbox::FIRST_FAILURE_AT,
                text(chrono::Utc::now().to_rfc3339()),
            ));
        }
        match outbox::dead_letter(publisher, &self.topology, raw, props, headers).await {
            Ok(()) => {
                self.metrics
                    .dead_lettered
                    .with_label_values(&[f.class])
                    .inc();
                tracing::warn!(class = f.class, reason = %f.reason, "dead-lettered");
                Settle::Ack
            }
            Err(e) => {
                tracing::error!(error = %e, "dead letter not confirmed; handing the event back");
                Settle::Requeue
            }
        }
    }

    /// Claims the lease, waiting while another worker holds it (it is
    /// sending this very message: its outcome decides ours).
    async fn claim(&self, dedup_key: &str, channel: Channel, token: &str) -> Option<Claim> {
        let deadline = Instant::now() + self.lease_ttl + Duration::from_secs(5);
        loop {
            match self
                .with_store(|| self.store.claim(dedup_key, channel, token))
                .await?
            {
                Claim::Busy if Instant::now() < deadline => {
                    if *self.shutdown.borrow() {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Claim::Busy => return None,
                other => return Some(other),
            }
        }
    }

    async fn release(&self, dedup_key: &str, channel: Channel, token: &str) {
        // Best effort: an unreleased lease only delays a retry by its TTL.
        if let Err(e) = self.store.release(dedup_key, channel, token).await {
            self.metrics.redis_errors.inc();
            tracing::warn!(error = %e, "lease not released; it expires by itself");
        }
    }

    /// Runs a Redis operation until it succeeds, holding the delivery while
    /// Redis is unreachable (fail closed: nothing is sent without the check).
    /// None when shutting down first.
    async fn with_store<T, F, Fut>(&self, mut op: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut wait = Duration::from_millis(100);
        let mut shutdown = self.shutdown.clone();
        loop {
            match op().await {
                Ok(v) => {
                    self.health.set_redis(true);
                    return Some(v);
                }
                Err(e) => {
                    self.metrics.redis_errors.inc();
                    if self.health.set_redis(false) {
                        tracing::error!(error = %e, "redis unreachable: holding events, nothing is sent until it is back");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = crate::consumer::stopped(&mut shutdown) => return None,
                    }
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
