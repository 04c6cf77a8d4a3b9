//! Publishing normalised events (route `dispatch`) and provider delivery
//! statuses (route `status`) to RabbitMQ with publisher confirms.
//!
//! A supervisor task keeps one connection with a few confirm-mode channels,
//! declares the topology on every (re)connect and reconnects with backoff
//! (`backon`). `publish` succeeds only on the broker's ack of a routed,
//! persistent message; anything else (timeout, nack, unroutable, no
//! connection) is an error the caller answers by spooling.
//!
//! A broker that stops confirming is not waited out once per webhook: while
//! it says `connection.blocked` (a memory or disk alarm), or after a confirm
//! timed out, webhook publishes fail at once ([`PublishError::Blocked`],
//! [`PublishError::CircuitOpen`]) and are spooled in milliseconds. The spool
//! drain is the probe: it waits while the broker blocks, then publishes, and
//! the first confirm it gets closes the circuit.
//!
//! A link that looks connected but has confirmed nothing for
//! [`STUCK_AFTER`] while publishes kept failing (a node that hangs with its
//! socket open, a node cut off from its cluster's majority) is given up:
//! the supervisor reconnects, to the next node of a cluster. A blocked
//! broker is not stuck: the whole cluster blocks, and another node would
//! block the same way.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use shared::Event;
use shared::status::StatusMessage;
use shared::topology::{ROUTE_DISPATCH, ROUTE_STATUS, Topology};
use tokio::sync::{Notify, RwLock};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("broker not connected")]
    Disconnected,
    #[error("broker did not confirm in time")]
    Timeout,
    #[error("broker refused the message (nack)")]
    Nacked,
    #[error("message was unroutable (topology missing)")]
    Unroutable,
    #[error("channel error")]
    Channel,
    #[error("broker is blocking publishers (resource alarm)")]
    Blocked,
    #[error("broker stopped confirming: spooling until the drain gets through")]
    CircuitOpen,
}

impl PublishError {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            PublishError::Disconnected => "disconnected",
            PublishError::Timeout => "timeout",
            PublishError::Nacked => "nack",
            PublishError::Unroutable => "unroutable",
            PublishError::Channel => "channel_error",
            PublishError::Blocked => "blocked",
            PublishError::CircuitOpen => "circuit_open",
        }
    }
}

/// One message to publish: its route, properties and bytes.
pub struct Outgoing<'a> {
    route: &'static str,
    properties: BasicProperties,
    payload: &'a [u8],
}

impl<'a> Outgoing<'a> {
    /// A Vestnik event for the dispatcher (route `dispatch`).
    pub fn event(event: &Event, payload: &'a [u8]) -> Self {
        Outgoing {
            route: ROUTE_DISPATCH,
            properties: shared::topology::event_properties(event),
            payload,
        }
    }

    /// A provider's delivery status (route `status`, queue `<prefix>.statuses`).
    pub fn status(update: &StatusMessage, payload: &'a [u8]) -> Self {
        Outgoing {
            route: ROUTE_STATUS,
            properties: status_properties(update),
            payload,
        }
    }
}

/// Persistent; provider, state and schema in headers so tools can filter
/// without parsing. The provider's message id is not personal data, but a
/// recipient never appears here (an opt-out's sender is in the body only,
/// sealed when the ingest has a key).
fn status_properties(update: &StatusMessage) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (k, v) in [
        ("x-provider", update.provider()),
        ("x-state", update.label()),
    ] {
        headers.insert(
            ShortString::from(k),
            AMQPValue::LongString(LongString::from(v)),
        );
    }
    headers.insert("x-schema".into(), AMQPValue::ShortUInt(update.schema()));
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_timestamp(u64::try_from(update.received_at().timestamp()).unwrap_or_default())
        .with_type("status".into())
        .with_app_id("vestnik-ingest".into())
        .with_headers(headers)
}

/// How long a link may fail every publish (timeouts, nacks, unroutable,
/// channel errors) without one confirm before it is given up. Longer than
/// two drain probes (5 s each), so one slow confirm never costs a
/// connection, and far shorter than a missed-heartbeat detection.
pub const STUCK_AFTER: Duration = Duration::from_secs(10);

struct Link {
    conn: Connection,
    channels: Vec<Channel>,
    next: AtomicUsize,
    /// When the current run of failed publishes began, in ms after
    /// `opened` plus one (0: the last publish was confirmed). An atomic, not
    /// a lock: every confirmed webhook reads it.
    failing_since: AtomicU64,
    opened: Instant,
    /// Failing for [`STUCK_AFTER`]: the supervisor reconnects.
    stuck: AtomicBool,
}

impl Link {
    fn confirmed(&self) {
        // Read first: the usual case (nothing failing) writes nothing.
        if self.failing_since.load(Ordering::Relaxed) != 0 {
            self.failing_since.store(0, Ordering::Relaxed);
        }
    }

    /// Records a failed publish; true when the link has now failed for
    /// [`STUCK_AFTER`] (the first time only).
    fn failed(&self) -> bool {
        let now = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1;
        let began =
            match self
                .failing_since
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => now,
                Err(began) => began,
            };
        now.saturating_sub(began) >= STUCK_AFTER.as_millis() as u64
            && !self.stuck.swap(true, Ordering::Relaxed)
    }

    fn healthy(&self) -> bool {
        self.conn.status().connected()
            && self.channels.iter().all(|c| c.status().connected())
            && !self.stuck.load(Ordering::Relaxed)
    }
}

struct Inner {
    endpoints: shared::amqp::Endpoints,
    topology: Topology,
    channels: usize,
    link: RwLock<Option<Arc<Link>>>,
    up: AtomicBool,
    /// Set when a confirm timed out; cleared by the next confirm (the drain's).
    circuit_open: AtomicBool,
    /// Wakes the supervisor when a publish saw the link fail.
    trouble: Notify,
    /// Wakes waiters (the spool drain) when the link comes up.
    connected: Notify,
    closed: AtomicBool,
    /// Links given up as stuck.
    stuck: AtomicU64,
}

#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

impl Broker {
    /// Starts the supervisor; returns at once (the first connect happens in
    /// the background, so ingest starts and spools even with the broker down).
    pub fn start(
        endpoints: shared::amqp::Endpoints,
        topology: Topology,
        channels: usize,
    ) -> Broker {
        let broker = Broker {
            inner: Arc::new(Inner {
                endpoints,
                topology,
                channels: channels.max(1),
                link: RwLock::new(None),
                up: AtomicBool::new(false),
                circuit_open: AtomicBool::new(false),
                trouble: Notify::new(),
                connected: Notify::new(),
                closed: AtomicBool::new(false),
                stuck: AtomicU64::new(0),
            }),
        };
        tokio::spawn(broker.clone().supervise());
        broker
    }

    /// Closes the connection and stops reconnecting (graceful shutdown).
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.trouble.notify_one();
        if let Some(link) = self.inner.link.write().await.take() {
            self.inner.up.store(false, Ordering::Relaxed);
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                link.conn.close(200, "shutting down".into()),
            )
            .await;
        }
    }

    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Relaxed)
    }

    /// The broker has sent `connection.blocked` (a resource alarm) and not
    /// yet `connection.unblocked`.
    pub fn is_blocked(&self) -> bool {
        self.inner
            .link
            .try_read()
            .ok()
            .and_then(|l| l.as_ref().map(|l| l.conn.status().blocked()))
            .unwrap_or(false)
    }

    /// Connections given up because they confirmed nothing for
    /// [`STUCK_AFTER`].
    pub fn stuck_connections(&self) -> u64 {
        self.inner.stuck.load(Ordering::Relaxed)
    }

    /// Webhooks go straight to the spool until the drain gets a confirm.
    pub fn is_circuit_open(&self) -> bool {
        self.inner.circuit_open.load(Ordering::Relaxed)
    }

    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    /// Waits until the broker is connected, or the timeout passes.
    pub async fn wait_until_up(&self, timeout: Duration) -> bool {
        if self.is_up() {
            return true;
        }
        let _ = tokio::time::timeout(timeout, self.inner.connected.notified()).await;
        self.is_up()
    }

    /// Publishes one event and waits for the broker's confirm.
    pub async fn publish(
        &self,
        event: &Event,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<(), PublishError> {
        self.publish_all(&[(event, payload)], timeout).await
    }

    /// Publishes events in order on one channel (so the broker keeps their
    /// order), pipelined, then waits for every confirm. All or error.
    pub async fn publish_all(
        &self,
        events: &[(&Event, &[u8])],
        timeout: Duration,
    ) -> Result<(), PublishError> {
        let messages: Vec<Outgoing<'_>> = events
            .iter()
            .map(|(event, payload)| Outgoing::event(event, payload))
            .collect();
        self.publish_messages(&messages, timeout).await
    }

    /// Publishes providers' status updates to the `status` route, with the
    /// same confirms as events. All or error.
    pub async fn publish_statuses(
        &self,
        updates: &[(&StatusMessage, &[u8])],
        timeout: Duration,
    ) -> Result<(), PublishError> {
        let messages: Vec<Outgoing<'_>> = updates
            .iter()
            .map(|(update, payload)| Outgoing::status(update, payload))
            .collect();
        self.publish_messages(&messages, timeout).await
    }

    /// Publishes messages (any routes) in order on one channel, pipelined,
    /// then waits for every confirm: acked and routed, or an error. Fails at
    /// once while the broker blocks publishers or the circuit is open (the
    /// caller spools).
    pub async fn publish_messages(
        &self,
        messages: &[Outgoing<'_>],
        timeout: Duration,
    ) -> Result<(), PublishError> {
        if self.is_circuit_open() {
            return Err(PublishError::CircuitOpen);
        }
        self.publish_on_link(messages, timeout).await
    }

    /// The spool drain's publish: like [`Broker::publish_messages`], but it
    /// is the probe of an open circuit, so it goes through (only a blocked
    /// broker stops it); its confirm closes the circuit.
    pub async fn drain_messages(
        &self,
        messages: &[Outgoing<'_>],
        timeout: Duration,
    ) -> Result<(), PublishError> {
        self.publish_on_link(messages, timeout).await
    }

    async fn publish_on_link(
        &self,
        messages: &[Outgoing<'_>],
        timeout: Duration,
    ) -> Result<(), PublishError> {
        let link = self.inner.link.read().await.clone();
        let Some(link) = link else {
            return Err(PublishError::Disconnected);
        };
        if link.conn.status().blocked() {
            return Err(PublishError::Blocked);
        }
        let i = link.next.fetch_add(1, Ordering::Relaxed) % link.channels.len();
        let channel = &link.channels[i];
        let result = tokio::time::timeout(timeout, async {
            let mut confirms = Vec::with_capacity(messages.len());
            for message in messages {
                let confirm = channel
                    .basic_publish(
                        self.inner.topology.exchange().into(),
                        message.route.into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        message.payload,
                        message.properties.clone(),
                    )
                    .await
                    .map_err(|_| PublishError::Channel)?;
                confirms.push(confirm);
            }
            for confirm in confirms {
                match confirm.await.map_err(|_| PublishError::Channel)? {
                    Confirmation::Ack(None) => {}
                    Confirmation::Ack(Some(_)) => return Err(PublishError::Unroutable),
                    Confirmation::Nack(_) => return Err(PublishError::Nacked),
                    Confirmation::NotRequested => return Err(PublishError::Channel),
                }
            }
            Ok(())
        })
        .await
        .unwrap_or(Err(PublishError::Timeout));
        match result {
            Ok(()) => link.confirmed(),
            // A broker that blocks publishers (alarm) is waited out, not
            // failed over from.
            Err(_) if link.conn.status().blocked() => {}
            Err(error) => {
                if link.failed() {
                    self.inner.stuck.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        ?error,
                        failing_for_ms = STUCK_AFTER.as_millis() as u64,
                        "broker: connection confirms nothing; giving it up for the next node"
                    );
                    self.inner.trouble.notify_one();
                }
            }
        }
        match result {
            Ok(()) => {
                if self.inner.circuit_open.swap(false, Ordering::Relaxed) {
                    tracing::info!("broker: confirming again, circuit closed");
                }
            }
            Err(PublishError::Timeout) => {
                if !self.inner.circuit_open.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        timeout_ms = timeout.as_millis() as u64,
                        "broker: a confirm timed out; webhooks go to the spool until the drain gets through"
                    );
                }
            }
            Err(_) => {}
        }
        if matches!(
            result,
            Err(PublishError::Channel | PublishError::Unroutable)
        ) {
            self.inner.trouble.notify_one();
        }
        result
    }

    async fn supervise(self) {
        while !self.inner.closed.load(Ordering::SeqCst) {
            let connect = || async { self.connect().await };
            let link = connect
                .retry(
                    ExponentialBuilder::default()
                        .with_min_delay(Duration::from_millis(100))
                        .with_max_delay(Duration::from_secs(5))
                        .with_jitter()
                        .without_max_times(),
                )
                .when(|_| !self.inner.closed.load(Ordering::SeqCst))
                .notify(|err, next| {
                    tracing::warn!(error = %err, retry_in_ms = next.as_millis() as u64, "broker: connect failed")
                })
                .await;
            let Ok(link) = link else { continue };
            if self.inner.closed.load(Ordering::SeqCst) {
                let _ = link.conn.close(200, "shutting down".into()).await;
                return;
            }
            let link = Arc::new(link);
            *self.inner.link.write().await = Some(link.clone());
            self.inner.up.store(true, Ordering::Relaxed);
            self.inner.connected.notify_waiters();
            tracing::info!("broker: connected, topology declared");

            // Watch the link: a closed connection or channel, or a publish
            // that saw an error, sends us back to reconnecting.
            loop {
                tokio::select! {
                    _ = self.inner.trouble.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
                if self.inner.closed.load(Ordering::SeqCst) {
                    return;
                }
                if !link.healthy() {
                    break;
                }
            }
            self.inner.up.store(false, Ordering::Relaxed);
            *self.inner.link.write().await = None;
            tracing::warn!("broker: connection lost, reconnecting");
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                link.conn.close(320, "reconnecting".into()),
            )
            .await;
        }
    }

    async fn connect(&self) -> Result<Link, String> {
        let conn = self
            .inner
            .endpoints
            .connect("vestnik-ingest", Duration::from_secs(5))
            .await?;
        self.open_link(conn).await.map_err(|e| e.to_string())
    }

    async fn open_link(&self, conn: Connection) -> Result<Link, lapin::Error> {
        let setup = conn.create_channel().await?;
        self.inner.topology.declare(&setup).await?;
        let _ = setup.close(200, "topology declared".into()).await;
        let mut channels = Vec::with_capacity(self.inner.channels);
        for _ in 0..self.inner.channels {
            let ch = conn.create_channel().await?;
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            channels.push(ch);
        }
        Ok(Link {
            conn,
            channels,
            next: AtomicUsize::new(0),
            failing_since: AtomicU64::new(0),
            opened: Instant::now(),
            stuck: AtomicBool::new(false),
        })
    }
}
