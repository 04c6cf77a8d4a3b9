//! One delivery, start to finish: decode → look the phone up if the hook had
//! none → choose the channels in the tenant's order → per channel: claim
//! (idempotency) → render → send with quick retries → record the outcome →
//! ack. A recipient-level failure moves on to the next channel at once
//! (fallback); a transient one gets the one second attempt; what finally
//! fails is dead-lettered. Retry, fallback and idempotency live here, once;
//! providers only send and classify.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use futures_util::future::BoxFuture;
use lapin::message::Delivery;
use lapin::{BasicProperties, Channel as AmqpChannel};
use shared::Event;
use shared::config::QuickRetrySettings;
use shared::status::{AccountNotice, DeliveryState, OptOut, StatusMessage, StatusUpdate};
use shared::tenant::{Channel, ChannelPolicy};
use shared::topology::Topology;
use tokio::sync::watch;
use tracing::Instrument;

use crate::delivery_state::{Claim, Sending, Sent, SentMessage, Settled, Store, StoreError};
use crate::health::Health;
use crate::journal::{self, Journal, Record, Step, Trail};
use crate::lookup::{LookupError, Lookups};
use crate::metrics::Metrics;
use crate::outbox::{self, Headers, header_int, header_str, int, text};
use crate::providers::{Address, Body, Hold, Message, Outcome, Provider};
use crate::templates::Templates;

/// What to tell the broker about a delivery once its outcome is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    Ack,
    /// Not processed (shutting down, or the outcome could not be recorded):
    /// back to the queue for another worker.
    Requeue,
}

impl Settle {
    /// Tells the broker: ack, or back to the queue's head.
    pub async fn apply(self, delivery: &Delivery) -> lapin::Result<()> {
        match self {
            Settle::Ack => delivery
                .ack(lapin::options::BasicAckOptions::default())
                .await
                .map(|_| ()),
            Settle::Requeue => delivery
                .nack(lapin::options::BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
                .map(|_| ()),
        }
    }
}

/// How a tenant, or one of its branches, sends: channels, providers.
pub struct Routing {
    pub policy: ChannelPolicy,
    /// Configured providers per channel, in configuration order.
    pub providers: BTreeMap<Channel, Vec<Arc<dyn Provider>>>,
    /// Forced provider per channel (by name).
    pub provider_for: BTreeMap<Channel, String>,
}

impl Routing {
    fn provider(&self, channel: Channel) -> Option<Arc<dyn Provider>> {
        let list = self.providers.get(&channel)?;
        match self.provider_for.get(&channel) {
            Some(name) => list.iter().find(|p| p.name() == name).cloned(),
            None => list.first().cloned(),
        }
    }

    fn has_any_provider(&self) -> bool {
        self.providers.values().any(|l| !l.is_empty())
    }
}

pub struct TenantRuntime {
    pub routing: Routing,
    /// Branches that send otherwise (their own channels, sender names or
    /// accounts: `[tenants.locations."<id>"]`), by location id.
    pub branches: HashMap<String, Routing>,
    pub lookups: Lookups,
    /// Frequency caps per event kind (`[tenants.frequency_caps]`).
    pub caps: BTreeMap<shared::event::EventKind, shared::tenant::FrequencyCap>,
    /// Delays per event kind (`[tenants.delays]`).
    pub delays: BTreeMap<shared::event::EventKind, shared::tenant::Delay>,
    /// Send hours: `default` and per kind (`[tenants.send_hours]`).
    pub send_hours: BTreeMap<String, shared::tenant::SendHours>,
    /// The provider accounts customers write to (provider name, Meta's
    /// `phone_number_id` or Wazzup's `channel_id`): whose stop words
    /// opt out of this tenant.
    pub inbound_accounts: Vec<(String, String)>,
    /// How long a message may be held for a paused account before it goes to
    /// the DLQ as `expired_while_paused` (`hold_max_secs`, default 24 h).
    pub hold_max: Duration,
    /// What each source's webhooks must say to count (final statuses, won
    /// lead statuses, ...), as the tenant configured them: what the console
    /// shows (ingest applies them).
    pub sources: shared::tenant::SourceSettings,
}

impl TenantRuntime {
    fn send_hours(&self, kind: shared::event::EventKind) -> Option<&shared::tenant::SendHours> {
        self.send_hours
            .get(kind.as_str())
            .or_else(|| self.send_hours.get("default"))
    }
}

impl TenantRuntime {
    /// The event's branch's routing when it has its own, else the tenant's.
    fn routing(&self, event: &Event) -> &Routing {
        event
            .location
            .as_ref()
            .and_then(|l| self.branches.get(l))
            .unwrap_or(&self.routing)
    }
}

/// What a live reload replaces: every tenant's runtime and the templates.
pub struct Tenancy {
    pub tenants: HashMap<String, TenantRuntime>,
    pub templates: Templates,
}

/// Builds a provider from routing that came with a webhook (seed 000).
pub type RouteProvider =
    Box<dyn Fn(&shared::event::Route) -> Option<Arc<dyn Provider>> + Send + Sync>;

pub struct Worker {
    pub topology: Topology,
    pub store: Store,
    pub journal: Journal,
    /// The tenants in force and their templates: swapped whole by a live
    /// reload; an event is handled with the one it began with.
    pub tenancy: arc_swap::ArcSwap<Tenancy>,
    /// Kept for building the tenants again on a reload.
    pub http: reqwest::Client,
    pub limits: crate::shared_limit::SharedLimits,
    /// Dev mode: where a channel goes when a tenant configured no provider at all.
    pub log_providers: BTreeMap<Channel, Arc<dyn Provider>>,
    /// Builds a provider from routing that came with the webhook (seed 000's
    /// Wazzup parameters), when the event carries one.
    pub route_provider: RouteProvider,
    pub retry: QuickRetrySettings,
    pub metrics: Metrics,
    pub health: Health,
    pub shutdown: watch::Receiver<bool>,
    /// `security.seal_key`: seals what is kept in Redis about a sent message.
    pub sealer: Option<shared::seal::Sealer>,
    /// Rungs of the delay ladder this process has declared (a bit each).
    pub declared_rungs: std::sync::atomic::AtomicU32,
    /// Hold queues this process has declared (their keys): a hold then
    /// publishes without a declare's round trip; a failed publish (an
    /// operator deleted the queue, or it was drained and deleted) forgets
    /// the key, so the next hold declares it again.
    pub declared_holds: std::sync::Mutex<std::collections::HashSet<String>>,
    /// How long a message held for a paused account waits before it looks
    /// again (`dispatcher.hold_recheck_secs`).
    pub hold_recheck: Duration,
    /// Held messages a drain sends at once (`dispatcher.hold_drain_window`).
    pub hold_drain_window: usize,
}

/// A header counting an event's hops down the delay ladder (the journal
/// says "scheduled" once, on the first).
pub const DELAY_HOPS: &str = "x-delay-hops";

/// The failure that ends an attempt or the event, as recorded in the DLQ.
struct Failure {
    class: &'static str,
    reason: String,
    channel: Option<Channel>,
    provider: Option<&'static str>,
}

/// How one channel ended.
enum ChannelEnd {
    Settled(Settle),
    /// This recipient cannot be reached here: try the next channel.
    Fallback(Failure),
    /// The channel's account is paused ([`crate::pause`]): the next channel,
    /// or held; no attempt spent. Draining: healthy again, held ones first.
    Paused(crate::pause::Paused),
}

struct Candidate {
    channel: Channel,
    provider: Arc<dyn Provider>,
    address: Address,
}

/// Which attempt this is on the current channel, and the channels that
/// already failed before it.
#[derive(Clone, Copy)]
struct Attempt<'a> {
    number: i64,
    failed: &'a [Channel],
}

/// The delivery a second attempt repeats, and the (event, channel) it is for.
struct SecondAttempt<'a> {
    raw: &'a [u8],
    props: &'a BasicProperties,
    dedup_key: &'a str,
    channel: Channel,
    /// The first attempt was accepted and then reported failed (this is its
    /// message id): the second may send past its done mark.
    allow_past_done: Option<&'a str>,
}

/// What scheduling the one second attempt came to.
enum Scheduled {
    Now,
    /// An earlier failure of this (event, channel) scheduled it.
    Already,
    /// Not confirmed by the broker, or shutting down: hand the delivery back.
    NotDone,
}

/// A delivery as the worker sees it.
struct Job<'a> {
    raw: &'a [u8],
    props: &'a BasicProperties,
    attempt: i64,
    failed_channels: Vec<Channel>,
    publisher: &'a AmqpChannel,
    /// This delivery's steps for the journal, written once it has settled.
    trail: Trail,
    /// Taken from the hold queue of this pause, which is draining
    /// ([`crate::hold`]): the pause lets it pass.
    draining: Option<&'a str>,
}

impl<'a> Job<'a> {
    /// The delivery with its ladder headers read (attempt, failed channels).
    fn new(delivery: &'a Delivery, publisher: &'a AmqpChannel, journal: bool) -> Job<'a> {
        let headers = delivery.properties.headers().as_ref();
        Job {
            raw: &delivery.data,
            props: &delivery.properties,
            attempt: header_int(headers, outbox::ATTEMPT)
                .unwrap_or(1)
                .clamp(1, 2),
            failed_channels: header_str(headers, outbox::FAILED_CHANNELS)
                .map(|s| parse_channels(&s))
                .unwrap_or_default(),
            publisher,
            trail: Trail::new(journal),
            draining: None,
        }
    }
}

impl Worker {
    pub async fn handle(&self, delivery: &Delivery, publisher: &AmqpChannel) -> Settle {
        let job = Job::new(delivery, publisher, self.journal.enabled());
        self.handle_job(delivery, job).await
    }

    /// A held message from the head of the hold queue of pause `id`, which
    /// is draining: handled as any other, past that pause. `Requeue`: it
    /// stays at the head (the account is paused again, the rate limit, a
    /// store or broker hiccup).
    pub async fn handle_held(
        &self,
        delivery: &Delivery,
        publisher: &AmqpChannel,
        id: &str,
    ) -> Settle {
        // Held past the tenant's limit while it drained: the DLQ, not a
        // customer, gets it.
        if let Some(settle) = self.expire_held(delivery, publisher, id).await {
            return settle;
        }
        let mut job = Job::new(delivery, publisher, self.journal.enabled());
        job.draining = Some(id);
        self.handle_job(delivery, job).await
    }

    /// A held message from the head of the hold queue of pause `id`, still
    /// paused: to the DLQ as `expired_while_paused` when it has waited past
    /// its tenant's `hold_max_secs` (Some), else None (it stays).
    pub async fn expire_held(
        &self,
        delivery: &Delivery,
        publisher: &AmqpChannel,
        id: &str,
    ) -> Option<Settle> {
        let job = Job::new(delivery, publisher, self.journal.enabled());
        let Ok(event) = Event::from_json(&delivery.data) else {
            // Not an event (nothing holds one): the DLQ says why.
            return Some(self.handle_job(delivery, job).await);
        };
        let tenancy = self.tenancy.load_full();
        let hold_max = tenancy
            .tenants
            .get(&event.tenant)
            .map(|t| t.hold_max)
            .unwrap_or(Duration::from_secs(24 * 3600));
        let age = (chrono::Utc::now() - event.received_at)
            .to_std()
            .unwrap_or_default();
        if age <= hold_max {
            return None;
        }
        let provider = id.split('|').nth(1).unwrap_or_default().to_string();
        let f = Failure {
            class: "expired_while_paused",
            reason: format!(
                "held {} s while {provider} was paused (hold_max_secs {})",
                age.as_secs(),
                hold_max.as_secs()
            ),
            channel: None,
            provider: None,
        };
        let span = tracing::info_span!("event", event_id = %event.id, tenant = %event.tenant);
        async {
            self.metrics
                .paused_messages
                .with_label_values(&[crate::hold::provider_label(self, id), "expired"])
                .inc();
            let refs = journal::references(&event);
            let settle = self.dead_letter(&job, f).await;
            self.write_journal(&event.id.to_string(), &refs, &job.trail.take())
                .await;
            Some(settle)
        }
        .instrument(span)
        .await
    }

    async fn handle_job(&self, delivery: &Delivery, job: Job<'_>) -> Settle {
        let event = match Event::from_json(&delivery.data) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %shared::mask::text(&e.to_string()), "poison message: dead-lettered");
                let f = Failure {
                    class: "poison",
                    reason: shared::mask::text(&e.to_string()),
                    channel: None,
                    provider: None,
                };
                return self.dead_letter(&job, f).await;
            }
        };
        let span = tracing::info_span!("event", event_id = %event.id, tenant = %event.tenant, kind = %event.kind, attempt = job.attempt);
        async {
            if !job.trail.is_on() {
                return self.handle_event(event, &job).await;
            }
            let id = event.id.to_string();
            let refs = journal::references(&event);
            job.trail
                .push(journal::received(&event, job.attempt, &job.failed_channels));
            let settle = self.handle_event(event, &job).await;
            self.write_journal(&id, &refs, &job.trail.take()).await;
            settle
        }
        .instrument(span)
        .await
    }

    /// A worker task panicked on this delivery (a bug): it goes to the DLQ
    /// as `internal` with the panic message (masked), so it is neither lost
    /// nor left unsettled. A lease it held expires by itself; a replay by id
    /// sends it again.
    pub async fn dead_letter_panic(
        &self,
        delivery: &Delivery,
        publisher: &AmqpChannel,
        message: &str,
    ) -> Settle {
        self.metrics.panics.inc();
        let reason = format!("worker panicked: {}", shared::mask::text(message));
        tracing::error!(reason = %reason, "worker task panicked: dead-lettering its delivery");
        let job = Job::new(delivery, publisher, false);
        let f = Failure {
            class: "internal",
            reason,
            channel: None,
            provider: None,
        };
        self.dead_letter(&job, f).await
    }

    /// Changes the tenants in force in place: for embedding and tests that
    /// put a provider of their own in place of a configured one, before the
    /// worker handles anything.
    pub fn edit_tenants(&mut self, edit: impl FnOnce(&mut HashMap<String, TenantRuntime>)) {
        let empty = Tenancy {
            tenants: HashMap::new(),
            templates: Templates::empty(),
        };
        let mut current = self.tenancy.swap(Arc::new(empty));
        match Arc::get_mut(&mut current) {
            Some(t) => edit(&mut t.tenants),
            None => tracing::error!("tenants in use: not edited"),
        }
        self.tenancy.store(current);
    }

    fn seal(&self, text: &str) -> String {
        match &self.sealer {
            Some(s) => s.seal(text),
            None => text.to_string(),
        }
    }

    /// Best effort: the journal records, it never holds a delivery.
    async fn write_journal(&self, event_id: &str, refs: &[journal::Reference], records: &[Record]) {
        if let Err(e) = self.journal.append(event_id, refs, records).await {
            self.metrics.journal_errors.inc();
            tracing::debug!(error = %e, "journal not written");
        }
    }

    async fn handle_event(&self, mut event: Event, job: &Job<'_>) -> Settle {
        let fail = |class, reason: String| Failure {
            class,
            reason,
            channel: None,
            provider: None,
        };
        // One configuration for the whole event, however a reload lands.
        let tenancy = self.tenancy.load_full();
        let Some(tenant) = tenancy.tenants.get(&event.tenant) else {
            let f = fail(
                "config",
                format!(
                    "tenant {} is not configured in the dispatcher",
                    event.tenant
                ),
            );
            return self.dead_letter(job, f).await;
        };
        // Not due yet (a delay, quiet hours): wait in the broker's ladder.
        if let Some(settle) = self.schedule(&event, job, tenant, &tenancy.templates).await {
            return settle;
        }
        if tenancy.templates.locate(&event) == crate::templates::Located::Unknown {
            self.metrics.unknown_locations.inc();
            tracing::warn!(
                location = event.location.as_deref().unwrap_or_default(),
                "location not in the tenant's locations table: sent with the tenant's defaults"
            );
        }

        // A hook without a phone: look it up in the tenant's CRM first.
        if event.recipient.phone.is_none()
            && let Some(lookup) = &event.lookup
        {
            match tenant.lookups.phone(lookup).await {
                Ok(phone) => {
                    tracing::info!(phone = %phone, "phone found by look-up");
                    job.trail.push(Step::LookedUp {
                        found: true,
                        detail: phone.to_string(),
                    });
                    event.recipient.phone = Some(phone);
                }
                Err(LookupError::Transient(reason)) => {
                    job.trail.push(Step::LookedUp {
                        found: false,
                        detail: reason.clone(),
                    });
                    let at = Attempt {
                        number: job.attempt,
                        failed: &job.failed_channels,
                    };
                    return self
                        .transient_failure(&event, job, at, None, "lookup", reason, None)
                        .await;
                }
                Err(LookupError::NotFound(reason)) if event.recipient.email.is_none() => {
                    job.trail.push(Step::LookedUp {
                        found: false,
                        detail: reason.clone(),
                    });
                    return self
                        .final_failure(
                            &event,
                            job,
                            fail("recipient", format!("no phone: {reason}")),
                        )
                        .await;
                }
                Err(LookupError::NotFound(_)) => {}
                Err(LookupError::Config(reason)) => {
                    return self
                        .final_failure(&event, job, fail("config", reason))
                        .await;
                }
            }
        }

        // Nothing, on any channel, to someone on the tenant's stop list.
        if let Some(phone) = &event.recipient.phone {
            let Some(out) = self
                .with_store(|| self.store.is_opted_out(&event.tenant, phone))
                .await
            else {
                return Settle::Requeue;
            };
            if out {
                tracing::info!("skipped: the recipient opted out");
                return self.skip(
                    job,
                    "opted_out",
                    "the recipient is on the tenant's stop list",
                );
            }
        }
        let candidates = self.candidates(&event, tenant, &job.failed_channels);
        if candidates.is_empty() {
            let reason = if job.failed_channels.is_empty() {
                "no channel of the tenant's policy can reach this recipient (phone or e-mail missing, or no provider)".to_string()
            } else {
                format!(
                    "every channel failed ({})",
                    join_channels(&job.failed_channels)
                )
            };
            return self.dead_letter(job, fail("recipient", reason)).await;
        }
        // At most so many of this kind to this recipient in the window,
        // fleet-wide; the event that took a place keeps it (redeliveries,
        // its second attempt and replays pass).
        if let Some(cap) = tenant.caps.get(&event.kind).copied() {
            let Some(check) = self.with_store(|| self.store.take_cap(&event, cap)).await else {
                return Settle::Requeue;
            };
            if check == crate::frequency_cap::CapCheck::Capped {
                tracing::info!(
                    at_most = cap.at_most,
                    window_secs = cap.window_secs,
                    "skipped: frequency cap (the recipient had enough of this kind in the window)"
                );
                let detail = format!(
                    "at most {} {} per recipient in {} s",
                    cap.at_most, event.kind, cap.window_secs
                );
                return self.skip(job, "frequency_cap", detail);
            }
        }
        let mut failed = job.failed_channels.clone();
        let mut last = None;
        for (i, c) in candidates.iter().enumerate() {
            // The second attempt belongs to the first remaining channel only.
            let attempt = if i == 0 { job.attempt } else { 1 };
            let policy = tenant.routing(&event).policy.for_kind(event.kind);
            match self
                .attempt_channel(
                    &event,
                    job,
                    c,
                    Attempt {
                        number: attempt,
                        failed: &failed,
                    },
                    policy,
                    &tenancy.templates,
                )
                .await
            {
                ChannelEnd::Settled(s) => return s,
                ChannelEnd::Paused(p) if i + 1 < candidates.len() && !p.draining => {
                    self.metrics
                        .paused_messages
                        .with_label_values(&[c.provider.name(), "fallback"])
                        .inc();
                    self.metrics
                        .fallbacks
                        .with_label_values(&[c.channel.as_str()])
                        .inc();
                    tracing::info!(channel = %c.channel, provider = c.provider.name(),
                        "channel paused: falling back");
                    job.trail.push(Step::Fallback {
                        from: c.channel,
                        reason: format!("channel paused: {}", p.reason),
                    });
                    failed.push(c.channel);
                }
                ChannelEnd::Paused(p) => {
                    return self.hold(&event, job, tenant, c, &p).await;
                }
                ChannelEnd::Fallback(f) => {
                    self.metrics
                        .fallbacks
                        .with_label_values(&[c.channel.as_str()])
                        .inc();
                    tracing::warn!(channel = %c.channel, reason = %f.reason, "channel failed for this recipient: falling back");
                    job.trail.push(Step::Fallback {
                        from: c.channel,
                        reason: f.reason.clone(),
                    });
                    failed.push(c.channel);
                    last = Some(f);
                }
            }
        }
        let mut f = last.unwrap_or_else(|| fail("recipient", "no channel left".into()));
        f.reason = format!(
            "every channel failed ({}); last: {}",
            join_channels(&failed),
            f.reason
        );
        self.dead_letter(job, f).await
    }

    async fn attempt_channel(
        &self,
        event: &Event,
        job: &Job<'_>,
        c: &Candidate,
        at: Attempt<'_>,
        policy: &[Channel],
        templates: &Templates,
    ) -> ChannelEnd {
        let Attempt {
            number: attempt,
            failed,
        } = at;
        let (channel, provider_name) = (c.channel, c.provider.name());
        // Rendered first (pure, in memory): a template paused by the
        // provider holds the message as its account's pause would.
        let rendered = templates.render(event, channel);
        let account = c.provider.account();
        let mut pauses = vec![crate::pause::pause_id(
            &event.tenant,
            provider_name,
            &account,
        )];
        if let Ok(Body::Template { name, language, .. }) = &rendered {
            let template = crate::pause::template_account(&account, name, language);
            pauses.push(crate::pause::pause_id(
                &event.tenant,
                provider_name,
                &template,
            ));
        }
        // WhatsApp accounts may be barred from a country (Meta 130497).
        let region = match (&c.address, channel) {
            (Address::Phone(p), Channel::Whatsapp) => p.region(),
            _ => None,
        };
        if let Some(r) = &region {
            let country = crate::pause::country_account(&account, r);
            pauses.push(crate::pause::pause_id(
                &event.tenant,
                provider_name,
                &country,
            ));
        }
        match self
            .with_store(|| self.store.paused_any(&pauses, job.draining.is_some()))
            .await
        {
            None => return ChannelEnd::Settled(Settle::Requeue),
            Some(Some(p)) => return ChannelEnd::Paused(p),
            Some(None) => {}
        }
        let token = claim_token(attempt);
        // Another channel that could carry this event (the tenant's policy
        // for its kind) makes it sent, also one this job was told had
        // failed: Redis says what holds now (a channel that failed for good
        // has no done mark, and an admin's replay may have sent on it since
        // this job was queued).
        let others: Vec<Channel> = policy.iter().copied().filter(|c| *c != channel).collect();
        match self
            .claim(&event.dedup_key, channel, &others, &token, attempt)
            .await
        {
            None => return ChannelEnd::Settled(Settle::Requeue),
            // Released in order: it waits at the hold queue's head for the
            // lease, rather than leave the queue and lose its place.
            Some(Claim::Busy) if job.draining.is_some() => {
                return ChannelEnd::Settled(Settle::Requeue);
            }
            Some(Claim::Busy) => {
                return ChannelEnd::Settled(self.lease_wait(job, channel, attempt, failed).await);
            }
            Some(Claim::Uncertain { mark }) => {
                let p = &c.provider;
                // Safe to repeat: the provider turns a repeat of our key into
                // no second message, or this is the check attempt of a
                // provider whose callback would have settled it by now.
                let repeatable = p
                    .resend_window()
                    .zip(token_age(&mark))
                    .is_some_and(|(window, age)| age < window);
                let checked =
                    p.echoes_delivery_key() && attempt >= 2 && token_attempt(&mark) == Some(1);
                if repeatable || checked {
                    match self
                        .with_store(|| {
                            self.store
                                .take_over(&event.dedup_key, channel, &mark, &token)
                        })
                        .await
                    {
                        None => return ChannelEnd::Settled(Settle::Requeue),
                        Some(false) => {
                            let settle = self.lease_wait(job, channel, attempt, failed).await;
                            return ChannelEnd::Settled(settle);
                        }
                        Some(true) => {
                            tracing::warn!(channel = %channel, provider = provider_name,
                                by_key = repeatable, "repeating a send whose outcome was uncertain");
                        }
                    }
                } else if p.echoes_delivery_key() && attempt < 2 && !mark.is_empty() {
                    let at = Attempt {
                        number: attempt,
                        failed,
                    };
                    let reason = format!(
                        "a dispatcher stopped while sending this {channel} message through {provider_name}"
                    );
                    let settle = self
                        .await_callback(event, job, at, (channel, provider_name), reason)
                        .await;
                    return ChannelEnd::Settled(settle);
                } else {
                    // No fallback either: the customer may already have it here.
                    let f = Failure {
                        class: "uncertain",
                        reason: format!(
                            "a dispatcher stopped while sending this {channel} message through {provider_name}; \
                             the provider may have delivered it, so it is not sent again \
                             (check, then replay by id if it did not arrive)"
                        ),
                        channel: Some(channel),
                        provider: Some(provider_name),
                    };
                    return ChannelEnd::Settled(self.final_failure(event, job, f).await);
                }
            }
            Some(Claim::AlreadySent(sent)) => {
                self.metrics.duplicates.inc();
                let this = event.id.to_string();
                let (message_id, duplicate_of) = match sent {
                    Some(s) => (
                        Some(s.message_id),
                        Some(s.event_id).filter(|id| *id != this && !id.is_empty()),
                    ),
                    None => (None, None),
                };
                tracing::info!(channel = %channel, message_id = ?message_id, duplicate_of = ?duplicate_of, "already sent: not sending again");
                job.trail.push(Step::AlreadySent {
                    channel,
                    message_id,
                    duplicate_of,
                });
                return ChannelEnd::Settled(Settle::Ack);
            }
            Some(Claim::SecondAttemptQueued) => {
                self.metrics.duplicates.inc();
                tracing::info!(channel = %channel, "the second attempt for this customer event is queued: it sends, not this one");
                job.trail.push(Step::AwaitsSecondAttempt { channel });
                return ChannelEnd::Settled(Settle::Ack);
            }
            Some(Claim::Failed) => {
                let f = Failure {
                    class: "channel_failed",
                    reason: format!("{channel} already failed for good for this event"),
                    channel: Some(channel),
                    provider: Some(provider_name),
                };
                return ChannelEnd::Fallback(f);
            }
            Some(Claim::Acquired) => {}
        }

        let body = match rendered {
            Ok(b) => b,
            Err(e) => {
                self.release(&event.dedup_key, channel, &token, Sending::Clear)
                    .await;
                let f = Failure {
                    class: "config",
                    reason: e.to_string(),
                    channel: Some(channel),
                    provider: Some(provider_name),
                };
                return ChannelEnd::Settled(self.final_failure(event, job, f).await);
            }
        };
        if *self.shutdown.borrow() {
            // Shutting down: start no new send (one cut short by the shutdown
            // timeout could reach the customer without being recorded).
            self.release(&event.dedup_key, channel, &token, Sending::Clear)
                .await;
            return ChannelEnd::Settled(Settle::Requeue);
        }
        let message = Message {
            channel,
            to: c.address.clone(),
            body,
            idempotency_key: format!("{}/{}", event.dedup_key, channel),
            hold: Some(Arc::new(SendingMark {
                store: self.store.clone(),
                dedup_key: event.dedup_key.clone(),
                channel,
                token: token.clone(),
            })),
        };

        let started = Instant::now();
        let outcome = self
            .send_with_quick_retries(c.provider.as_ref(), &message)
            .await;
        self.metrics
            .attempt_seconds
            .with_label_values(&[provider_name])
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .deliveries
            .with_label_values(&[provider_name, channel.as_str(), outcome.class()])
            .inc();
        job.trail.push(Step::Attempt {
            attempt,
            channel,
            provider: provider_name.to_string(),
            outcome: outcome.class().to_string(),
            message_id: match &outcome {
                Outcome::Sent { message_id } => Some(message_id.clone()),
                _ => None,
            },
            error: match &outcome {
                Outcome::Sent { .. } => None,
                o => Some(o.reason().to_string()),
            },
        });

        match outcome {
            Outcome::Throttled { reason, .. } => {
                // Nothing went out: the claim is given back whole and the
                // delivery waits in the broker, no attempt spent.
                self.release(&event.dedup_key, channel, &token, Sending::Clear)
                    .await;
                if job.draining.is_some() {
                    // Released in order: it waits at the hold queue's head.
                    return ChannelEnd::Settled(Settle::Requeue);
                }
                tracing::info!(channel = %channel, provider = provider_name, reason = %reason,
                    "held back by the rate limit: waiting in the broker");
                ChannelEnd::Settled(self.lease_wait(job, channel, attempt, failed).await)
            }
            Outcome::Sent { message_id } => {
                let sent = Sent {
                    provider: provider_name.to_string(),
                    message_id: message_id.clone(),
                    event_id: event.id.to_string(),
                    at: chrono::Utc::now(),
                };
                let remembered = SentMessage {
                    dedup_key: event.dedup_key.clone(),
                    channel,
                    attempt,
                    failed_channels: failed.to_vec(),
                    // Kept for its callbacks (the second attempt, the fallback):
                    // sealed at rest when a seal key is configured.
                    event: self.seal(&String::from_utf8_lossy(job.raw)),
                };
                // The mark must be durable before the ack: hold until Redis takes it.
                if self
                    .with_store(|| {
                        self.store
                            .mark_sent(&event.dedup_key, channel, &token, &sent, &remembered)
                    })
                    .await
                    .is_none()
                {
                    // Shutting down with the send done but unrecorded: the lease
                    // (TTL) still blocks an immediate resend by another worker.
                    return ChannelEnd::Settled(Settle::Requeue);
                }
                tracing::info!(channel = %channel, provider = provider_name, message_id = %message_id, "sent");
                ChannelEnd::Settled(Settle::Ack)
            }
            Outcome::Transient { reason, .. } if attempt < 2 => {
                let at = Attempt {
                    number: attempt,
                    failed,
                };
                let settle = self
                    .transient_failure(
                        event,
                        job,
                        at,
                        Some((channel, provider_name)),
                        "transient",
                        reason,
                        Some(&token),
                    )
                    .await;
                ChannelEnd::Settled(settle)
            }
            Outcome::CountryDown { reason } => {
                self.release(&event.dedup_key, channel, &token, Sending::Clear)
                    .await;
                let Some(region) = region else {
                    // No country to pause: the whole account's failure, then.
                    let f = Failure {
                        class: "config",
                        reason,
                        channel: Some(channel),
                        provider: Some(provider_name),
                    };
                    return ChannelEnd::Settled(self.final_failure(event, job, f).await);
                };
                let id = crate::pause::pause_id(
                    &event.tenant,
                    provider_name,
                    &crate::pause::country_account(&account, &region),
                );
                let Some(new) = self
                    .with_store(|| self.store.pause_unprobed(&id, &reason))
                    .await
                else {
                    return ChannelEnd::Settled(Settle::Requeue);
                };
                if new {
                    self.metrics
                        .pauses
                        .with_label_values(&[provider_name, "paused"])
                        .inc();
                    tracing::warn!(channel = %channel, provider = provider_name, account = %account,
                        region = %region, reason = %shared::mask::text(&reason),
                        "account paused for one country: its messages there fall back or are held");
                }
                ChannelEnd::Paused(crate::pause::Paused::new(&id, &reason))
            }
            Outcome::AccountDown { reason } => {
                // Nothing reached the customer: the claim is given back and
                // the account paused for the fleet; this message goes on
                // like the ones after it (next channel, or held).
                self.release(&event.dedup_key, channel, &token, Sending::Clear)
                    .await;
                let Some(new) = self
                    .with_store(|| self.store.pause(&pauses[0], &reason))
                    .await
                else {
                    return ChannelEnd::Settled(Settle::Requeue);
                };
                if new {
                    self.metrics
                        .pauses
                        .with_label_values(&[provider_name, "paused"])
                        .inc();
                    tracing::warn!(channel = %channel, provider = provider_name,
                        account = %c.provider.account(), reason = %shared::mask::text(&reason),
                        "account paused: nothing more goes through it until a probe finds it healthy");
                }
                ChannelEnd::Paused(crate::pause::Paused::new(&pauses[0], &reason))
            }
            Outcome::OptedOut { reason } => {
                self.release(&event.dedup_key, channel, &token, Sending::Clear)
                    .await;
                // On the provider's stop list: on the tenant's too, so that
                // no channel writes to them again.
                if let Some(phone) = &event.recipient.phone {
                    let source = format!("{provider_name} stop list");
                    let Some(added) = self
                        .with_store(|| self.store.opt_out(&event.tenant, phone, &source))
                        .await
                    else {
                        return ChannelEnd::Settled(Settle::Requeue);
                    };
                    self.count_opt_out(added);
                }
                tracing::info!(channel = %channel, provider = provider_name,
                    "skipped: the provider has the recipient on its stop list");
                ChannelEnd::Settled(self.skip(
                    job,
                    "opted_out",
                    format!("{provider_name}: {reason}"),
                ))
            }
            Outcome::Uncertain { reason } => {
                // The provider may have it: the sending mark stays, so neither
                // a redelivery nor a duplicate webhook sends it again, and no
                // fallback either. A provider that echoes our key in its
                // callbacks settles it (the check attempt resends only if no
                // callback came); otherwise an admin's replay by id.
                self.release(&event.dedup_key, channel, &token, Sending::Keep)
                    .await;
                if c.provider.echoes_delivery_key() && attempt < 2 {
                    let at = Attempt {
                        number: attempt,
                        failed,
                    };
                    let settle = self
                        .await_callback(event, job, at, (channel, provider_name), reason)
                        .await;
                    return ChannelEnd::Settled(settle);
                }
                let f = Failure {
                    class: "uncertain",
                    reason,
                    channel: Some(channel),
                    provider: Some(provider_name),
                };
                ChannelEnd::Settled(self.final_failure(event, job, f).await)
            }
            other => {
                self.release(&event.dedup_key, channel, &token, Sending::Clear)
                    .await;
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
                if self
                    .with_store(|| {
                        self.store
                            .mark_failed(&event.dedup_key, channel, f.class, &f.reason)
                    })
                    .await
                    .is_none()
                {
                    return ChannelEnd::Settled(Settle::Requeue);
                }
                // The recipient cannot be reached here, or this channel has had
                // its second attempt: the next channel may still reach them.
                if matches!(other, Outcome::Recipient { .. } | Outcome::Transient { .. }) {
                    ChannelEnd::Fallback(f)
                } else {
                    ChannelEnd::Settled(self.dead_letter(job, f).await)
                }
            }
        }
    }

    /// The channels of the tenant's policy that can reach the recipient and
    /// have a provider (routing from the webhook URL first, then a forced
    /// provider, then the first configured); the log provider only when the
    /// tenant configured none at all (dev mode).
    fn candidates(
        &self,
        event: &Event,
        tenant: &TenantRuntime,
        skip: &[Channel],
    ) -> Vec<Candidate> {
        let address = |c: Channel| match c {
            Channel::Whatsapp | Channel::Sms => event.recipient.phone.clone().map(Address::Phone),
            Channel::Email => event.recipient.email.clone().map(Address::Email),
        };
        let routed = event.route.as_ref().and_then(|r| (self.route_provider)(r));
        let tenant = tenant.routing(event);
        let dev_mode = !tenant.has_any_provider() && routed.is_none();
        tenant
            .policy
            .for_kind(event.kind)
            .iter()
            .filter(|c| !skip.contains(c))
            .filter_map(|&channel| {
                let address = address(channel)?;
                let provider = routed
                    .clone()
                    .filter(|p| p.channel() == channel)
                    .or_else(|| tenant.provider(channel))
                    .or_else(|| {
                        dev_mode
                            .then(|| self.log_providers.get(&channel).cloned())
                            .flatten()
                    })?;
                Some(Candidate {
                    channel,
                    provider,
                    address,
                })
            })
            .collect()
    }

    async fn send_with_quick_retries(&self, provider: &dyn Provider, message: &Message) -> Outcome {
        let r = &self.retry;
        let max_retry_after = Duration::from_millis(r.max_retry_after_ms);
        // An uncertain send is repeated only while the provider still turns
        // a repeat of our key into no second message.
        let started = Instant::now();
        let window = provider.resend_window();
        let op = || async {
            match provider.send(message).await {
                o @ Outcome::Transient { .. } => Err(o),
                o @ Outcome::Uncertain { .. }
                    if window.is_some_and(|w| {
                        started.elapsed() + Duration::from_millis(r.max_delay_ms) < w
                    }) =>
                {
                    Err(o)
                }
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

    /// A transient failure: the one second attempt when this was the first,
    /// the DLQ otherwise (a look-up has no other channel to fall back to).
    #[allow(clippy::too_many_arguments)]
    async fn transient_failure(
        &self,
        event: &Event,
        job: &Job<'_>,
        at: Attempt<'_>,
        sent_on: Option<(Channel, &'static str)>,
        class: &'static str,
        reason: String,
        token: Option<&str>,
    ) -> Settle {
        let channel = sent_on.map(|(c, _)| c);
        let key_channel = channel.unwrap_or(Channel::Whatsapp);
        let release = || async {
            if let (Some(c), Some(t)) = (channel, token) {
                self.release(&event.dedup_key, c, t, Sending::Clear).await;
            }
        };
        if at.number >= 2 {
            release().await;
            let f = Failure {
                class: if class == "lookup" {
                    "lookup_failed"
                } else {
                    "second_attempt_failed"
                },
                reason,
                channel,
                provider: sent_on.map(|(_, p)| p),
            };
            return self.final_failure(event, job, f).await;
        }
        // The request did not go out: the sending mark goes first, so a crash
        // from here on leaves only a lease that runs out (a plain resend of a
        // failed message), never an uncertain letter.
        if let (Some(c), Some(t)) = (channel, token)
            && let Err(e) = self.store.lift_sending(&event.dedup_key, c, t).await
        {
            self.metrics.redis_errors.inc();
            tracing::debug!(error = %e, "sending mark not lifted; the release removes it");
        }
        let mut headers: Headers = vec![
            (outbox::ATTEMPT, int(2)),
            (
                outbox::FIRST_FAILURE_AT,
                text(chrono::Utc::now().to_rfc3339()),
            ),
            (outbox::ERROR, text(reason.clone())),
            (outbox::FAILED_CHANNELS, text(join_channels(at.failed))),
        ];
        if let Some((_, p)) = sent_on {
            headers.push((outbox::PROVIDER, text(p)));
        }
        let second = SecondAttempt {
            raw: job.raw,
            props: job.props,
            dedup_key: &event.dedup_key,
            channel: key_channel,
            allow_past_done: None,
        };
        let settle = match self
            .schedule_second_attempt(job.publisher, second, headers)
            .await
        {
            Scheduled::Now => {
                job.trail.push(Step::SecondAttemptScheduled {
                    channel,
                    after_secs: self.topology.second_attempt_delay().as_secs(),
                    reason: reason.clone(),
                });
                tracing::warn!(channel = ?channel, class, reason = %reason,
                    delay_s = self.topology.second_attempt_delay().as_secs(), "first attempt failed: second attempt scheduled");
                Settle::Ack
            }
            Scheduled::Already => {
                tracing::info!(channel = ?channel, "first attempt failed again, second attempt already scheduled");
                Settle::Ack
            }
            Scheduled::NotDone => Settle::Requeue,
        };
        release().await;
        settle
    }

    /// A send left uncertain through a provider whose status callbacks echo
    /// our delivery key: its one second attempt is the check (a callback
    /// settles it meanwhile, or the check sends it once more).
    async fn await_callback(
        &self,
        event: &Event,
        job: &Job<'_>,
        at: Attempt<'_>,
        sent_on: (Channel, &'static str),
        reason: String,
    ) -> Settle {
        let reason = format!(
            "{reason}; {}'s status callback settles it, or it is sent once more",
            sent_on.1
        );
        self.transient_failure(event, job, at, Some(sent_on), "uncertain", reason, None)
            .await
    }

    /// Schedules the one second attempt, in the only order where no crash
    /// loses it: already recorded → nothing to do; else (the retry flag,
    /// for a message the provider accepted and then reported failed) →
    /// publish to the wait queue with a confirm → record it. A crash after
    /// the publish and before the record makes the redelivery publish a
    /// second copy, which the claim turns into at most one send.
    async fn schedule_second_attempt(
        &self,
        publisher: &AmqpChannel,
        second: SecondAttempt<'_>,
        headers: Headers,
    ) -> Scheduled {
        let (key, channel) = (second.dedup_key, second.channel);
        match self
            .with_store(|| self.store.second_attempt_scheduled(key, channel))
            .await
        {
            None => return Scheduled::NotDone,
            Some(true) => return Scheduled::Already,
            Some(false) => {}
        }
        if let Some(failed_id) = second.allow_past_done
            && self
                .with_store(|| self.store.allow_retry(key, channel, failed_id))
                .await
                .is_none()
        {
            return Scheduled::NotDone;
        }
        if let Err(e) =
            outbox::second_attempt(publisher, &self.topology, second.raw, second.props, headers)
                .await
        {
            tracing::error!(error = %e, "second attempt could not be scheduled; handing the delivery back");
            return Scheduled::NotDone;
        }
        // Published and confirmed: the record only spares a redelivery a
        // second copy, so shutting down before it is written changes nothing.
        let _ = self
            .with_store(|| self.store.record_second_attempt(key, channel))
            .await;
        self.metrics.second_attempts.inc();
        Scheduled::Now
    }

    async fn final_failure(&self, event: &Event, job: &Job<'_>, f: Failure) -> Settle {
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
        self.dead_letter(job, f).await
    }

    async fn dead_letter(&self, job: &Job<'_>, f: Failure) -> Settle {
        let mut headers: Headers = vec![
            (outbox::REASON, text(f.class)),
            (
                outbox::ERROR,
                text(f.reason.chars().take(500).collect::<String>()),
            ),
            (outbox::ATTEMPTS, int(job.attempt)),
            (outbox::FAILED_AT, text(chrono::Utc::now().to_rfc3339())),
        ];
        if let Some(c) = f.channel {
            headers.push((outbox::CHANNEL, text(c.as_str())));
        }
        if let Some(p) = f.provider {
            headers.push((outbox::PROVIDER, text(p)));
        }
        if header_str(job.props.headers().as_ref(), outbox::FIRST_FAILURE_AT).is_none()
            && job.attempt == 1
        {
            headers.push((
                outbox::FIRST_FAILURE_AT,
                text(chrono::Utc::now().to_rfc3339()),
            ));
        }
        match outbox::dead_letter(job.publisher, &self.topology, job.raw, job.props, headers).await
        {
            Ok(()) => {
                self.metrics
                    .dead_lettered
                    .with_label_values(&[f.class])
                    .inc();
                job.trail.push(Step::DeadLettered {
                    reason: f.class.to_string(),
                    error: f.reason.clone(),
                });
                tracing::warn!(class = f.class, reason = %f.reason, "dead-lettered");
                Settle::Ack
            }
            Err(e) => {
                tracing::error!(error = %e, "dead letter not confirmed; handing the event back");
                Settle::Requeue
            }
        }
    }

    /// A provider's delivery status (callback). `failed` for a first attempt
    /// schedules the one second attempt; for a second attempt it moves on to
    /// the next channel. Out-of-order and repeated callbacks change nothing.
    pub async fn handle_status(&self, delivery: &Delivery, publisher: &AmqpChannel) -> Settle {
        match StatusMessage::from_json(&delivery.data) {
            Ok(StatusMessage::Update(status)) => self.handle_update(status, publisher).await,
            Ok(StatusMessage::OptOut(o)) => self.handle_opt_out(o).await,
            Ok(StatusMessage::Notice(n)) => self.handle_notice(n).await,
            Err(_) => {
                tracing::error!("unreadable status update: dropped");
                self.metrics
                    .statuses
                    .with_label_values(&["unknown", "unreadable"])
                    .inc();
                Settle::Ack
            }
        }
    }

    /// A customer's stop word: the sender goes on the stop list of every
    /// tenant whose provider account was written to.
    async fn handle_opt_out(&self, o: OptOut) -> Settle {
        let tenancy = self.tenancy.load();
        let owners: Vec<&String> = tenancy
            .tenants
            .iter()
            .filter(|(_, t)| {
                t.inbound_accounts
                    .iter()
                    .any(|(p, a)| *p == o.provider && *a == o.account)
            })
            .map(|(id, _)| id)
            .collect();
        let phone = shared::seal::Sealer::open(self.sealer.as_ref(), &o.sender)
            .ok()
            .and_then(|s| shared::phone::Phone::parse_e164(&s).ok());
        let Some(phone) = phone else {
            tracing::error!(provider = %o.provider, "an opt-out whose sender cannot be read: dropped");
            self.count_opt_out_outcome("unreadable");
            return Settle::Ack;
        };
        if owners.is_empty() {
            tracing::warn!(provider = %o.provider, account = %o.account, sender = %shared::mask::phone(phone.e164()),
                "a stop word written to an account no tenant has: nobody to opt out of");
            self.count_opt_out_outcome("unknown_account");
            return Settle::Ack;
        }
        let source = format!("{} inbound", o.provider);
        for tenant in owners {
            let Some(added) = self
                .with_store(|| self.store.opt_out(tenant, &phone, &source))
                .await
            else {
                return Settle::Requeue;
            };
            tracing::info!(tenant = %tenant, sender = %shared::mask::phone(phone.e164()),
                added, "opted out by the customer's stop word");
            self.count_opt_out(added);
        }
        Settle::Ack
    }

    /// A provider says a sender account (or one of its templates) broke or
    /// recovered: every tenant's account it names is paused or resumed.
    async fn handle_notice(&self, n: AccountNotice) -> Settle {
        let targets: Vec<(String, &'static str, bool)> = {
            let tenancy = self.tenancy.load();
            let mut targets: Vec<_> = tenancy
                .tenants
                .iter()
                .flat_map(|(tenant, t)| {
                    std::iter::once(&t.routing)
                        .chain(t.branches.values())
                        .flat_map(|r| r.providers.values().flatten())
                        .map(move |p| (tenant, p))
                })
                .filter(|(_, p)| p.name() == n.provider && p.answers_to(&n.account))
                .map(|(tenant, p)| {
                    let account = match &n.template {
                        Some(t) => {
                            crate::pause::template_account(&p.account(), &t.name, &t.language)
                        }
                        None => p.account(),
                    };
                    let probed = n.template.is_none() && p.probe_sees_notices();
                    (
                        crate::pause::pause_id(tenant, p.name(), &account),
                        p.name(),
                        probed,
                    )
                })
                .collect();
            targets.sort();
            targets.dedup();
            targets
        };
        if targets.is_empty() {
            tracing::warn!(provider = %n.provider, account = %n.account, event = %n.event,
                "an account notice about an account no tenant sends through: nothing to pause");
            self.count_notice("unknown_account");
            return Settle::Ack;
        }
        let reason = format!("{} notice: {}", n.provider, n.event);
        for (id, provider, probed) in targets {
            let Some(effect) = self
                .with_store(|| self.store.notice(&id, n.healthy, &reason, n.at, probed))
                .await
            else {
                return Settle::Requeue;
            };
            use crate::pause::NoticeEffect;
            let label = match effect {
                NoticeEffect::Paused => {
                    self.metrics
                        .pauses
                        .with_label_values(&[provider, "paused"])
                        .inc();
                    tracing::warn!(pause = %id, event = %n.event,
                        "paused by the provider's notice: held or falling back until it says otherwise");
                    "paused"
                }
                NoticeEffect::Resumed => {
                    self.metrics
                        .pauses
                        .with_label_values(&[provider, "resumed"])
                        .inc();
                    tracing::info!(pause = %id, event = %n.event, "resumed by the provider's notice");
                    "resumed"
                }
                NoticeEffect::Unchanged => "unchanged",
                NoticeEffect::Stale => {
                    tracing::info!(pause = %id, event = %n.event, "a notice older than the last one: ignored");
                    "stale"
                }
            };
            self.count_notice(label);
        }
        Settle::Ack
    }

    fn count_notice(&self, outcome: &str) {
        self.metrics
            .statuses
            .with_label_values(&["account_notice", outcome])
            .inc();
    }

    /// An event that is not sent, on purpose: counted by `label`
    /// (`vestnik_dispatcher_skipped_total`), journaled as skipped with the
    /// label in words, and acked.
    fn skip(&self, job: &Job<'_>, label: &str, detail: impl Into<String>) -> Settle {
        self.metrics.skipped.with_label_values(&[label]).inc();
        job.trail.push(Step::Skipped {
            reason: label.replace('_', " "),
            detail: detail.into(),
        });
        Settle::Ack
    }

    fn count_opt_out(&self, added: bool) {
        self.count_opt_out_outcome(if added { "added" } else { "already" });
    }

    fn count_opt_out_outcome(&self, outcome: &str) {
        self.metrics
            .statuses
            .with_label_values(&["opt_out", outcome])
            .inc();
    }

    async fn handle_update(&self, status: StatusUpdate, publisher: &AmqpChannel) -> Settle {
        let provider = status.provider.as_str();
        let label = |outcome: &str| {
            self.metrics
                .statuses
                .with_label_values(&[status.state.as_str(), outcome])
                .inc()
        };
        let failed = status.state == DeliveryState::Failed;
        // A failure triggers the second attempt or the fallback; its state
        // advances only once that is durable (below). Any other state
        // triggers nothing: it advances at once.
        let fresh = if failed {
            self.with_store(|| {
                self.store
                    .state_moves(provider, &status.message_id, status.state.rank())
            })
            .await
        } else {
            self.with_store(|| {
                self.store
                    .advance_state(provider, &status.message_id, status.state.rank())
            })
            .await
        };
        let Some(fresh) = fresh else {
            return Settle::Requeue;
        };
        if !fresh {
            label("stale");
            return Settle::Ack;
        }
        // It arrived: if its send was left uncertain (answer lost, worker
        // died), this settles it as sent, so its check attempt does not repeat it.
        if !failed && let Some(key) = status.delivery_key.as_deref() {
            match self.settle_by_callback(&status, key, true).await {
                None => return Settle::Requeue,
                Some(Settled::Delivered) => {
                    label("settled_uncertain");
                    return Settle::Ack;
                }
                Some(_) => {}
            }
        }
        if !failed && !self.journal.enabled() {
            label("recorded");
            return Settle::Ack;
        }
        let Some(sent) = self
            .sent_message(provider, &status.message_id, failed)
            .await
        else {
            return Settle::Requeue;
        };
        let Some(sent) = sent else {
            // A failure of a send left uncertain: its check attempt sends again.
            if failed && let Some(key) = status.delivery_key.as_deref() {
                match self.settle_by_callback(&status, key, false).await {
                    None => return Settle::Requeue,
                    Some(Settled::NotDelivered) => {
                        label("settled_uncertain");
                        return self.advance_after_failure(&status).await;
                    }
                    Some(_) => {}
                }
            }
            label("unknown_message");
            if failed {
                tracing::warn!(
                    provider,
                    "failure reported for a message we do not know (expired or another deployment)"
                );
            }
            return Settle::Ack;
        };
        // The remembered event is sealed when a seal key is configured.
        let mut sent = sent;
        match shared::seal::Sealer::open(self.sealer.as_ref(), &sent.event) {
            Ok(event) => sent.event = event,
            Err(e) => {
                label("unreadable_record");
                tracing::error!(error = %e, "the event behind this message cannot be opened");
                return Settle::Ack;
            }
        }
        let trail = Trail::new(self.journal.enabled());
        trail.push(Step::Callback {
            provider: provider.to_string(),
            state: status.state.as_str().to_string(),
            message_id: status.message_id.clone(),
            error: status
                .error_code
                .iter()
                .chain(status.error.iter())
                .cloned()
                .reduce(|a, b| format!("{a}: {b}"))
                .map(|e| shared::mask::text(&e)),
        });
        let event_id = Event::from_json(sent.event.as_bytes())
            .map(|e| e.id.to_string())
            .ok();
        let span = tracing::info_span!("status", event_id = event_id.as_deref().unwrap_or("-"),
            provider, channel = %sent.channel, attempt = sent.attempt);
        let settle = if failed {
            let settle = self
                .status_failed(&status, &sent, &trail, publisher)
                .instrument(span)
                .await;
            // What it triggered is durable: now the state may move (a crash
            // before this redelivers the callback, which finds the second
            // attempt already recorded or publishes the fallback again).
            if settle == Settle::Ack {
                return self.advance_after_failure(&status).await;
            }
            settle
        } else {
            label("recorded");
            Settle::Ack
        };
        if let Some(id) = event_id {
            self.write_journal(&id, &[], &trail.take()).await;
        }
        settle
    }

    /// A failure callback's state moves once what it triggered is durable.
    async fn advance_after_failure(&self, status: &StatusUpdate) -> Settle {
        let (provider, id, rank) = (
            status.provider.as_str(),
            status.message_id.as_str(),
            status.state.rank(),
        );
        match self
            .with_store(|| self.store.advance_state(provider, id, rank))
            .await
        {
            Some(_) => Settle::Ack,
            None => Settle::Requeue,
        }
    }

    /// Settles a send left uncertain under the key the provider echoed.
    /// None when shutting down.
    async fn settle_by_callback(
        &self,
        status: &StatusUpdate,
        key: &str,
        delivered: bool,
    ) -> Option<Settled> {
        let Some((dedup_key, channel)) = parse_delivery_key(key) else {
            return Some(Settled::Nothing);
        };
        let sent = Sent {
            provider: status.provider.clone(),
            message_id: status.message_id.clone(),
            event_id: String::new(),
            at: status.at,
        };
        let settled = self
            .with_store(|| {
                self.store
                    .settle_by_callback(dedup_key, channel, &sent, delivered)
            })
            .await?;
        if matches!(settled, Settled::Delivered | Settled::NotDelivered) {
            tracing::info!(provider = %status.provider, channel = %channel, delivered,
                "a send left uncertain was settled by its status callback");
        }
        Some(settled)
    }

    /// A provider reported a sent message failed: its one second attempt,
    /// or after a failed second attempt the next channel.
    async fn status_failed(
        &self,
        status: &StatusUpdate,
        sent: &SentMessage,
        trail: &Trail,
        publisher: &AmqpChannel,
    ) -> Settle {
        let provider = status.provider.as_str();
        let label = |outcome: &str| {
            self.metrics
                .statuses
                .with_label_values(&[status.state.as_str(), outcome])
                .inc()
        };
        let props = BasicProperties::default();
        let reason = format!(
            "{provider} reported failed{}{}",
            status
                .error_code
                .as_deref()
                .map(|c| format!(" ({c})"))
                .unwrap_or_default(),
            status
                .error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
        async {
            if sent.attempt < 2 {
                let headers: Headers = vec![
                    (outbox::ATTEMPT, int(2)),
                    (outbox::FIRST_FAILURE_AT, text(status.at.to_rfc3339())),
                    (outbox::ERROR, text(reason.clone())),
                    (outbox::PROVIDER, text(provider.to_string())),
                    (outbox::FAILED_CHANNELS, text(join_channels(&sent.failed_channels))),
                ];
                let second = SecondAttempt {
                    raw: sent.event.as_bytes(),
                    props: &props,
                    dedup_key: &sent.dedup_key,
                    channel: sent.channel,
                    allow_past_done: Some(&status.message_id),
                };
                match self.schedule_second_attempt(publisher, second, headers).await {
                    Scheduled::Now => {}
                    Scheduled::Already => {
                        label("second_attempt_already_scheduled");
                        return Settle::Ack;
                    }
                    Scheduled::NotDone => return Settle::Requeue,
                }
                label("second_attempt_scheduled");
                trail.push(Step::SecondAttemptScheduled {
                    channel: Some(sent.channel),
                    after_secs: self.topology.second_attempt_delay().as_secs(),
                    reason: reason.clone(),
                });
                tracing::warn!(reason = %reason, "delivery failed: second attempt scheduled");
                Settle::Ack
            } else {
                let mut failed = sent.failed_channels.clone();
                failed.push(sent.channel);
                if self
                    .with_store(|| self.store.mark_failed(&sent.dedup_key, sent.channel, "second_attempt_failed", &reason))
                    .await
                    .is_none()
                {
                    return Settle::Requeue;
                }
                let headers: Headers = vec![
                    (outbox::ATTEMPT, int(1)),
                    (outbox::FAILED_CHANNELS, text(join_channels(&failed))),
                    (outbox::ERROR, text(reason.clone())),
                ];
                if let Err(e) = outbox::redispatch(publisher, &self.topology, sent.event.as_bytes(), &props, headers).await {
                    tracing::error!(error = %e, "fallback after a failed second attempt not published; will retry");
                    return Settle::Requeue;
                }
                self.metrics.fallbacks.with_label_values(&[sent.channel.as_str()]).inc();
                label("fallback");
                trail.push(Step::Fallback {
                    from: sent.channel,
                    reason: reason.clone(),
                });
                tracing::warn!(reason = %reason, "second attempt failed: next channel");
                Settle::Ack
            }
        }
        .await
    }

    /// The message a callback is about. A provider can call back before
    /// the send is recorded (its answer and the callback race): a failure
    /// for a message not found yet is looked up again for a second before
    /// it is called unknown (other states are only journaled, so they do
    /// not wait). None when shutting down.
    async fn sent_message(
        &self,
        provider: &str,
        message_id: &str,
        patient: bool,
    ) -> Option<Option<SentMessage>> {
        const LOOKS: u32 = 5;
        for look in 1..=LOOKS {
            let found = self
                .with_store(|| self.store.sent_message(provider, message_id))
                .await?;
            if found.is_some() || !patient || look == LOOKS || *self.shutdown.borrow() {
                return Some(found);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Some(None)
    }

    /// Claims the lease. A live holder is usually done within a send, so a
    /// busy lease is polled briefly (duplicate webhooks arriving together
    /// are absorbed at once); past that the caller sends the delivery to the
    /// lease-wait queue rather than hold a worker slot for a holder that
    /// may be dead.
    async fn claim(
        &self,
        dedup_key: &str,
        channel: Channel,
        others: &[Channel],
        token: &str,
        attempt: i64,
    ) -> Option<Claim> {
        const POLL: Duration = Duration::from_millis(100);
        const POLLS: u32 = 10;
        for _ in 0..POLLS {
            match self
                .with_store(|| self.store.claim(dedup_key, channel, others, token, attempt))
                .await?
            {
                Claim::Busy if !*self.shutdown.borrow() => tokio::time::sleep(POLL).await,
                other => return Some(other),
            }
        }
        Some(Claim::Busy)
    }

    /// Holds an event whose last channel's account is paused (or draining:
    /// healthy again, its held messages going out first) at the tail of
    /// that pause's hold queue, no attempt spent, to be sent in order when
    /// the account is healthy ([`crate::hold`]); or, once older than the
    /// tenant's `hold_max_secs`, to the DLQ as `expired_while_paused` rather
    /// than reach the customer late. Taken from that very queue (the
    /// account paused again mid-drain) it stays at the head.
    async fn hold(
        &self,
        event: &Event,
        job: &Job<'_>,
        tenant: &TenantRuntime,
        c: &Candidate,
        pause: &crate::pause::Paused,
    ) -> Settle {
        let provider = c.provider.name();
        let reason = &pause.reason;
        let age = (chrono::Utc::now() - event.received_at)
            .to_std()
            .unwrap_or_default();
        if age > tenant.hold_max {
            self.metrics
                .paused_messages
                .with_label_values(&[provider, "expired"])
                .inc();
            let f = Failure {
                class: "expired_while_paused",
                reason: format!(
                    "held {} s while {provider} was paused (hold_max_secs {}): {reason}",
                    age.as_secs(),
                    tenant.hold_max.as_secs()
                ),
                channel: Some(c.channel),
                provider: Some(provider),
            };
            return self.dead_letter(job, f).await;
        }
        if job.draining == Some(pause.id.as_str()) {
            return Settle::Requeue;
        }
        let token = uuid::Uuid::now_v7().simple().to_string();
        // Its drained queue being deleted this very moment: wait here for
        // the delete (a tombstone lasts 10 s) rather than spin through the
        // dispatch queue.
        let waiting = Instant::now();
        loop {
            let Some(begin) = self
                .with_store(|| self.store.hold_begin(&pause.id, &token, event.received_at))
                .await
            else {
                return Settle::Requeue;
            };
            match begin {
                crate::hold::Begin::Held => break,
                // Resumed and drained since it was read: back to the
                // dispatch queue's head, to be sent.
                crate::hold::Begin::Gone => return Settle::Requeue,
                crate::hold::Begin::Deleting
                    if waiting.elapsed() < Duration::from_secs(12) && !*self.shutdown.borrow() =>
                {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                crate::hold::Begin::Deleting => return Settle::Requeue,
            }
        }
        let key = crate::hold::queue_key(&pause.id);
        let declared = |keys: &std::sync::Mutex<std::collections::HashSet<String>>| {
            keys.lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&key)
        };
        let published = async {
            if !declared(&self.declared_holds) {
                self.topology
                    .declare_hold_queue(job.publisher, &key)
                    .await
                    .map_err(|e| e.to_string())?;
                self.declared_holds
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key.clone());
            }
            let route = Topology::hold_route(&key);
            outbox::publish(
                job.publisher,
                &self.topology,
                &route,
                job.raw,
                job.props,
                vec![],
            )
            .await
            .map_err(|e| e.to_string())
        }
        .await;
        // Published or not, the holder is done: a drainer may go on.
        if self
            .with_store(|| self.store.hold_end(&pause.id, &token))
            .await
            .is_none()
        {
            return Settle::Requeue;
        }
        match published {
            Ok(()) => {
                self.metrics
                    .paused_messages
                    .with_label_values(&[provider, "held"])
                    .inc();
                let why = if pause.draining {
                    "behind the messages held while the channel was paused"
                } else {
                    "the channel is paused"
                };
                tracing::info!(channel = %c.channel, provider, "held: {why}");
                job.trail.push(Step::Held {
                    channel: c.channel,
                    reason: if pause.draining {
                        format!("channel draining its held messages (paused: {reason})")
                    } else {
                        format!("channel paused: {reason}")
                    },
                });
                Settle::Ack
            }
            Err(e) => {
                // Unroutable: the queue is gone (drained and deleted); the
                // next hold declares it again.
                self.declared_holds
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&key);
                tracing::warn!(error = %e, "hold not confirmed; handing the event back");
                Settle::Requeue
            }
        }
    }

    /// Publishes the event into the delay ladder's rung for `wait`.
    async fn park(&self, job: &Job<'_>, wait: Duration, headers: Headers) -> Result<(), String> {
        let rung = Topology::delay_rung(wait);
        let bit = 1u32 << rung;
        let declared = std::sync::atomic::Ordering::Relaxed;
        if self.declared_rungs.load(declared) & bit == 0 {
            self.topology
                .declare_delay_rung(job.publisher, rung)
                .await
                .map_err(|e| e.to_string())?;
            self.declared_rungs.fetch_or(bit, declared);
        }
        let route = Topology::delay_route(rung);
        outbox::publish(
            job.publisher,
            &self.topology,
            &route,
            job.raw,
            job.props,
            headers,
        )
        .await
        .map_err(|e| {
            // An operator may have deleted the queue: declare it again next time.
            self.declared_rungs.fetch_and(!bit, declared);
            e.to_string()
        })
    }

    /// Another worker holds the lease: it is sending this very message, or
    /// it died and its lease has not expired yet. The delivery waits in the
    /// broker's lease-wait queue (holding no permit, so one dead dispatcher
    /// cannot stall the survivors) and comes back to be claimed again, with
    /// the channel's attempt and the channels that failed so far.
    async fn lease_wait(
        &self,
        job: &Job<'_>,
        channel: Channel,
        attempt: i64,
        failed: &[Channel],
    ) -> Settle {
        let headers: Headers = vec![
            (outbox::ATTEMPT, int(attempt)),
            (outbox::FAILED_CHANNELS, text(join_channels(failed))),
        ];
        match outbox::lease_wait(job.publisher, &self.topology, job.raw, job.props, headers).await {
            Ok(()) => {
                self.metrics.lease_waits.inc();
                job.trail.push(Step::LeaseWait {
                    channel,
                    after_secs: self.topology.lease_wait().as_secs(),
                });
                tracing::info!(channel = %channel, wait_s = self.topology.lease_wait().as_secs(),
                    "another dispatcher holds the lease: waiting in the broker");
                Settle::Ack
            }
            Err(e) => {
                tracing::warn!(error = %e, "lease wait not confirmed; handing the event back");
                Settle::Requeue
            }
        }
    }

    /// Holds an event that is not due (its delay, the tenant's quiet hours)
    /// in the delay ladder, or drops a reminder whose moment has passed.
    /// `None`: due, go on.
    async fn schedule(
        &self,
        event: &Event,
        job: &Job<'_>,
        tenant: &TenantRuntime,
        templates: &Templates,
    ) -> Option<Settle> {
        let delay = tenant.delays.get(&event.kind);
        let hours = tenant.send_hours(event.kind);
        if delay.is_none() && hours.is_none() {
            return None;
        }
        let zone: chrono_tz::Tz = templates
            .time_zone(event)
            .parse()
            .unwrap_or(chrono_tz::Europe::Moscow);
        let now = chrono::Utc::now();
        match crate::schedule::when(event, delay, hours, zone, now) {
            crate::schedule::When::Now => None,
            crate::schedule::When::Expired { starts_at } => {
                tracing::info!(%starts_at, "skipped: expired (the booking starts before the message could go)");
                let detail = format!("the booking starts at {}", starts_at.to_rfc3339());
                Some(self.skip(job, "expired", detail))
            }
            crate::schedule::When::At(at) => {
                let remaining = (at - now).to_std().unwrap_or_default();
                let hops = header_int(job.props.headers().as_ref(), DELAY_HOPS).unwrap_or(0);
                match self
                    .park(job, remaining, vec![(DELAY_HOPS, int(hops + 1))])
                    .await
                {
                    Ok(()) => {
                        if hops == 0 {
                            tracing::info!(at = %at.to_rfc3339(), "scheduled for {}", at.to_rfc3339());
                            job.trail.push(Step::Scheduled {
                                send_at: at,
                                reason: if delay.is_some() {
                                    "delay"
                                } else {
                                    "send hours"
                                }
                                .into(),
                            });
                            self.metrics.scheduled.inc();
                        } else {
                            // One more hop of a wait already journaled:
                            // nothing new to tell.
                            let _ = job.trail.take();
                        }
                        Some(Settle::Ack)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "delay not confirmed; handing the event back");
                        Some(Settle::Requeue)
                    }
                }
            }
        }
    }

    async fn release(&self, dedup_key: &str, channel: Channel, token: &str, sending: Sending) {
        // Best effort: an unreleased lease only delays a retry by its TTL.
        if let Err(e) = self.store.release(dedup_key, channel, token, sending).await {
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

/// This claim's `sending` mark, lifted and resumed by the rate limiter
/// around a wait for a permit ([`Hold`]).
struct SendingMark {
    store: Store,
    dedup_key: String,
    channel: Channel,
    token: String,
}

impl Hold for SendingMark {
    fn lift(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let lifted = self
                .store
                .lift_sending(&self.dedup_key, self.channel, &self.token)
                .await;
            if let Err(e) = lifted {
                tracing::warn!(error = %e, "sending mark not lifted for the rate-limit wait");
            }
        })
    }

    fn resume(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            match self
                .store
                .resume_sending(&self.dedup_key, self.channel, &self.token)
                .await
            {
                Ok(true) => Ok(()),
                Ok(false) => Err("the lease ran out while waiting for the rate limit".into()),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}

fn parse_channels(s: &str) -> Vec<Channel> {
    s.split(',')
        .filter_map(|c| match c.trim() {
            "whatsapp" => Some(Channel::Whatsapp),
            "sms" => Some(Channel::Sms),
            "email" => Some(Channel::Email),
            _ => None,
        })
        .collect()
}

fn join_channels(c: &[Channel]) -> String {
    c.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(",")
}

/// A claim's token: the attempt that set it and a time-ordered id, so a
/// later claim that finds it left behind can tell what it was and how old.
fn claim_token(attempt: i64) -> String {
    format!("a{attempt}-{}", uuid::Uuid::now_v7())
}

fn token_attempt(token: &str) -> Option<i64> {
    token.strip_prefix('a')?.split_once('-')?.0.parse().ok()
}

/// How long ago the token was made (its claim, or the permit that resumed it).
fn token_age(token: &str) -> Option<Duration> {
    let id = uuid::Uuid::parse_str(token.split_once('-')?.1).ok()?;
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    let made = std::time::UNIX_EPOCH + Duration::new(secs, nanos);
    Some(
        std::time::SystemTime::now()
            .duration_since(made)
            .unwrap_or_default(),
    )
}

/// `<dedup key>/<channel>`, as the providers echo it.
fn parse_delivery_key(key: &str) -> Option<(&str, Channel)> {
    let (dedup, channel) = key.rsplit_once('/')?;
    let channel = parse_channels(channel).into_iter().next()?;
    (!dedup.is_empty()).then_some((dedup, channel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_tells_its_attempt_and_age() {
        let t = claim_token(1);
        assert_eq!(token_attempt(&t), Some(1));
        assert_eq!(token_attempt(&claim_token(2)), Some(2));
        assert!(token_age(&t).is_some_and(|a| a < Duration::from_secs(5)));
        assert_eq!(token_attempt("a-dead-worker"), None);
        assert_eq!(token_age("a-dead-worker"), None);
        assert_eq!(token_age(""), None);
    }

    #[test]
    fn delivery_keys_parse_back() {
        assert_eq!(
            parse_delivery_key("acme:iiko:org:o-1:order_completed/whatsapp"),
            Some(("acme:iiko:org:o-1:order_completed", Channel::Whatsapp))
        );
        assert_eq!(parse_delivery_key("no-channel"), None);
        assert_eq!(parse_delivery_key("/sms"), None);
        assert_eq!(parse_delivery_key("x/fax"), None);
    }
}
