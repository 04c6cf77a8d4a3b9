//! Model-based test of the delivery state machine: seeded random runs drive
//! the real worker against the real RabbitMQ and Redis with duplicate
//! webhooks and later statuses of the same order, provider outcomes of every
//! class, failure and delivery callbacks, broker redeliveries, admin bulk
//! replays, leases running out, and a process death at any await point of
//! any step (the worker's future is dropped mid-poll, as a SIGKILL leaves
//! it: whatever it wrote stays, nothing after happens, its delivery goes
//! back to the queue). A reference model of what reached the customer is
//! checked after every step and at the end:
//!
//! - never two live messages for one customer event (a message counts from
//!   the moment its request is on the wire, unless its provider reported it
//!   failed);
//! - every customer event ends sent, or dead-lettered (an admin sees it):
//!   never neither.
//!
//! Only the providers are in-process fakes. Time is the model's: a wait
//! queue's delay passes when the runner takes from it, a lease runs out
//! when the runner says so. `MODEL_SEEDS` / `MODEL_SEED` choose the runs;
//! a failure prints the seed and the steps to replay it.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use common::{AMQP, Options, REDIS, connect, delete_keys, event};
use dispatcher::app;
use dispatcher::delivery_state::Phase;
use dispatcher::dlq::{Dlq, Filter};
use dispatcher::providers::{Message, Outcome, Provider};
use dispatcher::worker::{Settle, Worker};
use futures_util::future::BoxFuture;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
};
use lapin::{BasicProperties, Channel as AmqpChannel};
use shared::status::{DeliveryState, StatusUpdate};
use shared::tenant::Channel;
use shared::topology::{ROUTE_DISPATCH, ROUTE_STATUS, Topology, event_properties};
use shared::{Event, EventKind};

/// One request a fake provider received.
struct Call {
    dedup: String,
    channel: Channel,
    /// The outcome it answered; None while the request is on the wire (a
    /// death then leaves it: maybe delivered).
    answer: Option<&'static str>,
    message_id: Option<String>,
    /// The provider later reported it failed (callback).
    failed: bool,
    /// A delivery callback was sent for it (a failure after it is stale).
    delivered: bool,
}

impl Call {
    /// Could the customer have this message?
    fn live(&self) -> bool {
        !self.failed && matches!(self.answer, None | Some("sent") | Some("uncertain"))
    }
}

/// What the outside world saw: every request to a provider.
struct World {
    rng: fastrand::Rng,
    calls: Vec<Call>,
}

type Shared = Arc<Mutex<World>>;

struct Scripted {
    name: &'static str,
    channel: Channel,
    world: Shared,
}

impl Provider for Scripted {
    fn name(&self) -> &'static str {
        self.name
    }

    fn channel(&self) -> Channel {
        self.channel
    }

    fn send<'a>(&'a self, m: &'a Message) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let dedup = m
                .idempotency_key
                .rsplit_once('/')
                .map(|(d, _)| d.to_string())
                .unwrap_or_default();
            let i = {
                let mut w = self.world.lock().unwrap();
                w.calls.push(Call {
                    dedup,
                    channel: self.channel,
                    answer: None,
                    message_id: None,
                    failed: false,
                    delivered: false,
                });
                w.calls.len() - 1
            };
            // The request is on the wire: a death here leaves it maybe delivered.
            tokio::task::yield_now().await;
            let mut w = self.world.lock().unwrap();
            let roll = w.rng.u32(0..100);
            let outcome = match roll {
                0..60 => Outcome::Sent {
                    message_id: format!("{}.{i}", self.name),
                },
                60..78 => Outcome::Transient {
                    reason: "HTTP 503".into(),
                    retry_after: None,
                },
                78..88 => Outcome::Recipient {
                    reason: "not a WhatsApp user".into(),
                },
                88..94 => Outcome::Config {
                    reason: "token expired".into(),
                },
                _ => Outcome::Uncertain {
                    reason: "read timeout after the request went out".into(),
                },
            };
            let call = &mut w.calls[i];
            call.answer = Some(outcome.class());
            if let Outcome::Sent { message_id } = &outcome {
                call.message_id = Some(message_id.clone());
            }
            outcome
        })
    }
}

/// Polls a future at most `polls` times: past that it is dropped where it
/// stands, as a process death leaves it.
struct Cut<F> {
    inner: Pin<Box<F>>,
    polls: u32,
}

impl<F: Future> Future for Cut<F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.polls == 0 {
            return Poll::Ready(None);
        }
        self.polls -= 1;
        self.inner.as_mut().poll(cx).map(Some)
    }
}

/// Where a delivery is taken from.
#[derive(Debug, Clone, Copy)]
enum Source {
    Dispatch,
    SecondAttempt,
    LeaseWait,
    Status,
}

struct Run {
    seed: u64,
    prefix: String,
    topology: Topology,
    worker: Arc<Worker>,
    world: Shared,
    ch: AmqpChannel,
    publisher: AmqpChannel,
    dlq: Dlq,
    /// Customer events (dedup keys) with at least one webhook.
    identities: BTreeMap<String, u32>,
    steps: Vec<String>,
    _shutdown: tokio::sync::watch::Sender<bool>,
}

impl Run {
    async fn start(seed: u64) -> Run {
        common::init_logs();
        let prefix = common::unique("model");
        let options = Options {
            redis_url: REDIS.into(),
            channels: r#"["whatsapp", "sms"]"#,
            providers: r#"
[tenants.providers.meta]
base_url = "http://127.0.0.1:9/v21.0"
phone_number_id = "1234567890"
access_token = "EAAtest-token-not-real"
"#
            .into(),
            delay_secs: 570,
            extra: String::new(),
            tenant_extra: String::new(),
            dispatcher_extra: String::new(),
        };
        let mut settings = common::settings(&prefix, &options);
        // Production lease: the model lets it run out explicitly.
        settings.dispatcher.lease_ttl_secs = 120;
        settings.dispatcher.retry.retries = 1;
        let topology = Topology::from_settings(&settings.rabbitmq);
        let conn = connect().await;
        let ch = conn.create_channel().await.expect("channel");
        topology.declare(&ch).await.expect("declare");
        let publisher = conn.create_channel().await.expect("channel");
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut worker = app::build_worker(&settings, rx).expect("worker");
        let world: Shared = Arc::new(Mutex::new(World {
            rng: fastrand::Rng::with_seed(seed),
            calls: Vec::new(),
        }));
        worker.edit_tenants(|tenants| {
            let tenant = tenants.get_mut("acme").expect("tenant");
            let tenant = &mut tenant.routing;
            tenant.providers.clear();
            tenant.provider_for.clear();
            for (name, channel) in [("meta", Channel::Whatsapp), ("smsru", Channel::Sms)] {
                let p: Arc<dyn Provider> = Arc::new(Scripted {
                    name,
                    channel,
                    world: world.clone(),
                });
                tenant.providers.insert(channel, vec![p]);
            }
        });
        let dlq = Dlq::connect(&shared::amqp::Endpoints::one(AMQP), topology.clone())
            .await
            .expect("dlq");
        Run {
            seed,
            prefix,
            topology,
            worker: Arc::new(worker),
            world,
            ch,
            publisher,
            dlq,
            identities: BTreeMap::new(),
            steps: Vec::new(),
            _shutdown: tx,
        }
    }

    fn rng(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().unwrap()
    }

    fn context(&self) -> String {
        let calls: Vec<String> = match self.world.try_lock() {
            Ok(w) => w
                .calls
                .iter()
                .map(|c| {
                    format!(
                        "{} {} -> {} {}{}",
                        c.dedup,
                        c.channel,
                        c.answer.unwrap_or("(on the wire)"),
                        c.message_id.as_deref().unwrap_or("-"),
                        if c.failed { " (reported failed)" } else { "" }
                    )
                })
                .collect(),
            Err(_) => vec!["(held)".into()],
        };
        format!(
            "seed {} (replay: MODEL_SEED={} cargo test -p dispatcher --test model); steps:\n  {}\nprovider requests:\n  {}",
            self.seed,
            self.seed,
            self.steps.join("\n  "),
            calls.join("\n  ")
        )
    }

    async fn publish(&self, route: &str, body: &[u8], props: BasicProperties) {
        self.publisher
            .basic_publish(
                self.topology.exchange().into(),
                route.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }

    /// A webhook for one of a few orders: a duplicate or a later status of
    /// the same order is a new event with the same identity.
    async fn webhook(&mut self) {
        let (order, kind) = {
            let mut w = self.rng();
            let kind = if w.rng.bool() {
                EventKind::OrderCompleted
            } else {
                EventKind::BookingCreated
            };
            (w.rng.u32(0..4), kind)
        };
        let e: Event = event(kind, &format!("org:order-{order}"), "+79161112233");
        *self.identities.entry(e.dedup_key.clone()).or_default() += 1;
        self.steps.push(format!("webhook {}", e.dedup_key));
        self.publish(ROUTE_DISPATCH, &e.to_json(), event_properties(&e))
            .await;
    }

    /// A provider callback for a message it accepted: `failed` (the one
    /// second attempt, or the next channel) or `delivered`.
    async fn callback(&mut self) -> bool {
        let picked = {
            let mut w = self.rng();
            let open: Vec<usize> = (0..w.calls.len())
                .filter(|&i| {
                    let c = &w.calls[i];
                    c.message_id.is_some() && !c.failed && !c.delivered
                })
                .collect();
            if open.is_empty() {
                None
            } else {
                let i = open[w.rng.usize(0..open.len())];
                let failed = w.rng.u32(0..3) < 2;
                let c = &mut w.calls[i];
                if failed {
                    c.failed = true;
                } else {
                    c.delivered = true;
                }
                let provider = match c.channel {
                    Channel::Whatsapp => "meta",
                    _ => "smsru",
                };
                Some((provider, c.message_id.clone().unwrap_or_default(), failed))
            }
        };
        let Some((provider, message_id, failed)) = picked else {
            return false;
        };
        self.steps.push(format!(
            "callback {} {message_id}",
            if failed { "failed" } else { "delivered" }
        ));
        let status = StatusUpdate {
            schema: shared::status::STATUS_SCHEMA_VERSION,
            provider: provider.into(),
            message_id,
            state: if failed {
                DeliveryState::Failed
            } else {
                DeliveryState::Delivered
            },
            at: chrono::Utc::now(),
            received_at: chrono::Utc::now(),
            error_code: failed.then(|| "131026".to_string()),
            error: None,
            delivery_key: None,
        };
        self.publish(ROUTE_STATUS, &status.to_json(), BasicProperties::default())
            .await;
        true
    }

    fn queue(&self, source: Source) -> String {
        match source {
            Source::Dispatch => self.topology.dispatch_queue(),
            Source::SecondAttempt => self.topology.second_attempt_queue(),
            Source::LeaseWait => self.topology.lease_wait_queue(),
            Source::Status => self.topology.status_queue(),
        }
    }

    async fn take(&self, source: Source) -> Option<Delivery> {
        self.ch
            .basic_get(self.queue(source).into(), BasicGetOptions::default())
            .await
            .expect("basic.get")
            .map(|m| m.delivery)
    }

    /// Handles one delivery from `source`; `cut` kills the process after
    /// that many polls. False when the queue was empty.
    async fn handle(&mut self, source: Source, cut: Option<u32>) -> bool {
        let Some(delivery) = self.take(source).await else {
            return false;
        };
        let delivery = Arc::new(delivery);
        let work = {
            let worker = self.worker.clone();
            let publisher = self.publisher.clone();
            let delivery = delivery.clone();
            async move {
                match source {
                    Source::Status => worker.handle_status(&delivery, &publisher).await,
                    _ => worker.handle(&delivery, &publisher).await,
                }
            }
        };
        let settle = Cut {
            inner: Box::pin(work),
            polls: cut.unwrap_or(u32::MAX),
        }
        .await;
        self.steps.push(format!(
            "handle {source:?}{} -> {settle:?}",
            cut.map(|n| format!(" (death after {n} polls)"))
                .unwrap_or_default()
        ));
        let _ = match settle {
            Some(Settle::Ack) => delivery.ack(BasicAckOptions::default()).await.expect("ack"),
            // Requeued, or the process died: the broker hands it out again.
            _ => delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
                .expect("nack"),
        };
        true
    }

    /// Leases of dead workers run out (the runner is the only worker, and
    /// between steps it holds none).
    async fn leases_run_out(&mut self) {
        self.steps.push("leases run out".into());
        common::expire_leases(&self.prefix).await;
    }

    /// An admin's bulk replay (uncertain letters stay).
    async fn replay(&mut self) {
        let report = self
            .dlq
            .replay(&Filter::default(), &self.worker.store, false, |_, _| {})
            .await
            .expect("replay");
        self.steps.push(format!(
            "dlq replay: replayed {}, kept uncertain {}",
            report.replayed, report.uncertain_kept
        ));
    }

    /// Never two live messages for one customer event.
    fn check_no_duplicate(&self) {
        let mut live: HashMap<String, u32> = HashMap::new();
        for c in self.world.lock().unwrap().calls.iter().filter(|c| c.live()) {
            *live.entry(c.dedup.clone()).or_default() += 1;
        }
        for (dedup, n) in live {
            assert!(
                n <= 1,
                "{dedup}: {n} messages may have reached the customer\n{}",
                self.context()
            );
        }
    }

    async fn step(&mut self) {
        let (roll, cut) = {
            let mut w = self.rng();
            let cut = (w.rng.u32(0..4) == 0).then(|| w.rng.u32(1..40));
            (w.rng.u32(0..100), cut)
        };
        match roll {
            0..25 => self.webhook().await,
            25..35 => {
                if !self.callback().await {
                    self.webhook().await;
                }
            }
            35..42 => self.leases_run_out().await,
            42..45 => self.replay().await,
            _ => {
                let sources = [
                    Source::Dispatch,
                    Source::Dispatch,
                    Source::Dispatch,
                    Source::SecondAttempt,
                    Source::LeaseWait,
                    Source::Status,
                ];
                let first = self.rng().rng.usize(0..sources.len());
                for k in 0..sources.len() {
                    let source = sources[(first + k) % sources.len()];
                    if self.handle(source, cut).await {
                        if cut.is_some() && self.rng().rng.u32(0..10) < 7 {
                            self.leases_run_out().await;
                        }
                        break;
                    }
                }
            }
        }
        self.check_no_duplicate();
    }

    /// No more webhooks, callbacks or deaths: everything in flight settles.
    async fn drain(&mut self) {
        self.leases_run_out().await;
        loop {
            let mut any = false;
            for source in [
                Source::Status,
                Source::Dispatch,
                Source::SecondAttempt,
                Source::LeaseWait,
            ] {
                while self.handle(source, None).await {
                    any = true;
                    self.check_no_duplicate();
                }
            }
            if !any {
                break;
            }
        }
    }

    /// Every customer event ends sent or dead-lettered.
    async fn check_settled(&self) {
        let letters = self.dlq.list(&Filter::default()).await.expect("dlq list");
        let mut letter_ids: Vec<String> = letters.iter().map(|l| l.id.clone()).collect();
        letter_ids.sort();
        let mut lettered: HashMap<String, u32> = HashMap::new();
        for id in &letter_ids {
            if let Some((_, body)) = self.dlq.show(id).await.expect("dlq show")
                && let Some(dedup) = body.get("dedup_key").and_then(|d| d.as_str())
            {
                *lettered.entry(dedup.to_string()).or_default() += 1;
            }
        }
        let live: Vec<(String, Channel)> = {
            let w = self.world.lock().unwrap();
            w.calls
                .iter()
                .filter(|c| c.live())
                .map(|c| (c.dedup.clone(), c.channel))
                .collect()
        };
        for dedup in self.identities.keys() {
            let sent_on = live.iter().find(|(d, _)| d == dedup).map(|(_, c)| *c);
            assert!(
                sent_on.is_some() || lettered.contains_key(dedup),
                "{dedup}: neither sent nor dead-lettered\n{}",
                self.context()
            );
            // A message answered `sent` is recorded so in the state machine.
            let answered_sent = {
                let w = self.world.lock().unwrap();
                w.calls
                    .iter()
                    .any(|c| c.dedup == *dedup && c.live() && c.answer == Some("sent"))
            };
            if let (Some(channel), true) = (sent_on, answered_sent) {
                let phase = self
                    .worker
                    .store
                    .phase(dedup, channel)
                    .await
                    .expect("phase");
                assert!(
                    matches!(phase, Phase::Sent | Phase::Uncertain),
                    "{dedup}: sent on {channel}, but the state machine says {phase:?}\n{}",
                    self.context()
                );
            }
        }
    }

    async fn finish(self) {
        let _ = self.topology.delete(&self.ch).await;
        self.dlq.close().await;
        delete_keys(&self.prefix).await;
    }
}

fn seeds() -> Vec<u64> {
    if let Some(s) = std::env::var("MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![s];
    }
    let n: u64 = std::env::var("MODEL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    let base = fastrand::u64(..);
    (0..n).map(|i| base.wrapping_add(i)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_lives_never_send_twice_and_never_lose_an_event() {
    const STEPS: usize = 60;
    let mut totals: BTreeMap<&str, usize> = BTreeMap::new();
    for seed in seeds() {
        let mut run = Run::start(seed).await;
        for _ in 0..STEPS {
            run.step().await;
        }
        run.drain().await;
        run.check_settled().await;
        {
            let w = run.world.lock().unwrap();
            *totals.entry("provider requests").or_default() += w.calls.len();
            *totals.entry("deaths").or_default() +=
                run.steps.iter().filter(|s| s.contains("death")).count();
        }
        *totals.entry("customer events").or_default() += run.identities.len();
        run.finish().await;
    }
    eprintln!("model runs: {totals:?}");
    assert!(
        totals.get("deaths").copied().unwrap_or(0) > 0,
        "the runs killed no process: the model tested nothing of crashes"
    );
}
