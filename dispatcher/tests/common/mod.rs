//! Dispatcher test harness: the real dispatcher (in-process) against the
//! real RabbitMQ and Redis on loopback, with its own queue prefix and Redis
//! key prefix, and the providers faked over HTTP (wiremock) in the shapes of
//! providers.md. TCP proxies cut the way to Redis to simulate an outage
//! without touching the shared server.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool_redis::redis;
use dispatcher::app::{self, Running};
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use shared::config::Settings;
use shared::event::{Event, EventKind, Params, Recipient, SCHEMA_VERSION};
use shared::topology::{ROUTE_DISPATCH, Topology, event_properties};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use wiremock::MockServer;

pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const REDIS: &str = "redis://127.0.0.1:6379";

/// Seed nodes of a Redis Cluster to run against instead of the single
/// server (`deploy/redis-ha.sh` starts one; `deploy/test.sh` runs the
/// dispatcher's Redis suites a second time with it set).
pub const CLUSTER_ENV: &str = "VESTNIK_TEST_REDIS_CLUSTER";

/// The `[redis]` keys for a test: the cluster when [`CLUSTER_ENV`] is set and
/// the test uses the shared server, else the server at `url` (a test's
/// own proxy, say).
pub fn redis_section(url: &str) -> String {
    match std::env::var(CLUSTER_ENV) {
        Ok(seeds) if url == REDIS && !seeds.trim().is_empty() => {
            let urls: Vec<String> = seeds
                .split(',')
                .map(|u| format!("{:?}", u.trim()))
                .collect();
            format!("mode = \"cluster\"\nurls = [{}]", urls.join(", "))
        }
        _ => format!("url = \"{url}\""),
    }
}

/// The store's settings for a test's own prefix (on the cluster when set).
pub fn redis_settings(prefix: &str) -> shared::config::RedisSettings {
    let toml = format!(
        "[redis]\n{}\nprefix = \"{prefix}\"\ntimeout_ms = 1000\n",
        redis_section(REDIS)
    );
    Settings::from_toml(&toml)
        .expect("test redis settings are valid")
        .redis
}

pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("dispatcher=info"));
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(filter)
        .try_init();
}

pub fn unique(test: &str) -> String {
    format!(
        "test-{test}-{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    )
}

pub struct Options {
    pub redis_url: String,
    pub channels: &'static str,
    pub providers: String,
    pub delay_secs: u64,
    pub extra: String,
    /// Extra keys of the `[dispatcher]` table.
    pub dispatcher_extra: String,
    /// Extra keys of the tenant's own table (before its sub-tables).
    pub tenant_extra: String,
}

impl Options {
    pub fn meta(fake: &MockServer) -> Options {
        Self::meta_at(&fake.uri())
    }

    /// Meta at this base address (no fake needed when nothing is sent).
    pub fn meta_at(uri: &str) -> Options {
        Options {
            redis_url: REDIS.into(),
            channels: r#"["whatsapp", "sms"]"#,
            providers: format!(
                r#"
[tenants.providers.meta]
base_url = "{}/v21.0"
phone_number_id = "1234567890"
access_token = "EAAtest-token-not-real"
timeout_ms = 2000
"#,
                uri
            ),
            delay_secs: 2,
            extra: String::new(),
            dispatcher_extra: String::new(),
            tenant_extra: String::new(),
        }
    }
}

pub fn settings(prefix: &str, o: &Options) -> Settings {
    let toml = format!(
        r#"
[rabbitmq]
url = "{AMQP}"
prefix = "{prefix}"
second_attempt_delay_secs = {delay}

[redis]
{redis}
prefix = "{prefix}"
timeout_ms = 300

[dispatcher]
listen = "127.0.0.1:0"
prefetch = 16
concurrency = 8
# Production's lease: a test that needs a dead worker's lease to run out
# makes it run out (`expire_leases`).
lease_ttl_secs = 120
shutdown_timeout_secs = 5
{dispatcher_extra}
[dispatcher.retry]
retries = 2
min_delay_ms = 10
max_delay_ms = 50
{extra}

[[tenants]]
id = "acme"
keys = ["acme-webhook-key-0001"]
{tenant_extra}
[tenants.channels]
default = {channels}
{providers}
"#,
        delay = o.delay_secs,
        redis = redis_section(&o.redis_url),
        channels = o.channels,
        providers = o.providers,
        extra = o.extra,
        dispatcher_extra = o.dispatcher_extra,
        tenant_extra = o.tenant_extra,
    );
    Settings::from_toml(&toml).expect("test settings are valid")
}

pub struct Harness {
    pub prefix: String,
    pub settings: Settings,
    pub topology: Topology,
    pub dispatcher: Option<Running>,
}

impl Harness {
    /// Declares the topology, then starts a dispatcher.
    pub async fn start(test: &str, o: &Options) -> Harness {
        let h = Self::prepare(test, o).await;
        h.with_dispatcher().await
    }

    /// Topology declared, no dispatcher running yet.
    pub async fn prepare(test: &str, o: &Options) -> Harness {
        init_logs();
        let prefix = unique(test);
        let settings = settings(&prefix, o);
        let topology = Topology::from_settings(&settings.rabbitmq);
        let conn = connect().await;
        let ch = conn.create_channel().await.expect("channel");
        topology.declare(&ch).await.expect("declare");
        let _ = conn.close(200, "done".into()).await;
        Harness {
            prefix,
            settings,
            topology,
            dispatcher: None,
        }
    }

    pub async fn with_dispatcher(mut self) -> Harness {
        self.dispatcher = Some(
            app::start(self.settings.clone())
                .await
                .expect("dispatcher starts"),
        );
        self
    }

    pub fn running(&self) -> &Running {
        self.dispatcher.as_ref().expect("dispatcher running")
    }

    pub async fn stop_dispatcher(&mut self) {
        if let Some(d) = self.dispatcher.take() {
            d.stop().await;
        }
    }

    pub async fn finish(mut self) {
        self.stop_dispatcher().await;
        let conn = connect().await;
        let ch = conn.create_channel().await.expect("channel");
        for id in hold_ids(&self.prefix)
            .await
            .into_iter()
            .chain(idle_hold_ids(&self.prefix).await)
        {
            let queue = self.topology.hold_queue(&dispatcher::hold::queue_key(&id));
            let _ = ch
                .queue_delete(queue.as_str().into(), Default::default())
                .await;
        }
        let _ = self.topology.delete(&ch).await;
        let _ = conn.close(200, "done".into()).await;
        delete_keys(&self.prefix).await;
    }

    /// Messages in the hold queue of pause `id` (0 when it has none).
    pub async fn held(&self, id: &str) -> u32 {
        let conn = connect().await;
        let ch = conn.create_channel().await.expect("channel");
        let queue = self.topology.hold_queue(&dispatcher::hold::queue_key(id));
        let n = ch
            .queue_declare(
                queue.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map(|q| q.message_count())
            .unwrap_or(0);
        let _ = conn.close(200, "done".into()).await;
        n
    }

    pub async fn publish(&self, event: &Event) {
        publish_raw(&self.topology, &event.to_json(), event_properties(event)).await;
    }

    /// Publishes events in this order on one channel, each confirmed
    /// before the next.
    pub async fn publish_all(&self, events: &[Event]) {
        let conn = connect().await;
        let ch = conn.create_channel().await.expect("channel");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        for event in events {
            ch.basic_publish(
                self.topology.exchange().into(),
                ROUTE_DISPATCH.into(),
                BasicPublishOptions::default(),
                &event.to_json(),
                event_properties(event),
            )
            .await
            .expect("publish")
            .await
            .expect("confirmed");
        }
        let _ = conn.close(200, "done".into()).await;
    }

    /// Takes everything in the DLQ: (body, headers).
    pub async fn dead_letters(&self, n: usize, timeout: Duration) -> Vec<(Vec<u8>, FieldTable)> {
        take(&self.topology.dead_letter_queue(), n, timeout).await
    }

    pub async fn queue_len(&self, queue: &str) -> u32 {
        let conn = connect().await;
        let ch = conn.create_channel().await.expect("channel");
        let q = ch
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("queue exists");
        let _ = conn.close(200, "done".into()).await;
        q.message_count()
    }
}

pub async fn connect() -> Connection {
    Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .expect("RabbitMQ on 127.0.0.1:5672")
}

pub async fn publish_raw(topology: &Topology, body: &[u8], props: BasicProperties) {
    let conn = connect().await;
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    ch.basic_publish(
        topology.exchange().into(),
        ROUTE_DISPATCH.into(),
        BasicPublishOptions::default(),
        body,
        props,
    )
    .await
    .expect("publish")
    .await
    .expect("confirm");
    let _ = conn.close(200, "done".into()).await;
}

pub async fn take(queue: &str, n: usize, timeout: Duration) -> Vec<(Vec<u8>, FieldTable)> {
    let conn = connect().await;
    let ch = conn.create_channel().await.expect("channel");
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < n && tokio::time::Instant::now() < deadline {
        match ch.basic_get(queue.into(), BasicGetOptions::default()).await {
            Ok(Some(m)) => {
                let headers = m.delivery.properties.headers().clone().unwrap_or_default();
                m.delivery
                    .ack(BasicAckOptions::default())
                    .await
                    .expect("ack");
                out.push((m.delivery.data.clone(), headers));
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let _ = conn.close(200, "done".into()).await;
    out
}

pub fn event(kind: EventKind, dedup: &str, phone: &str) -> Event {
    Event {
        schema: SCHEMA_VERSION,
        id: uuid::Uuid::now_v7(),
        tenant: "acme".into(),
        source: shared::SourceId::Iiko,
        kind,
        occurred_at: chrono::Utc::now(),
        received_at: chrono::Utc::now(),
        dedup_key: format!("acme:iiko:{dedup}"),
        source_ref: None,
        location: None,
        recipient: Recipient {
            phone: shared::phone::normalise(phone).ok(),
            email: None,
            name: Some("Иван".into()),
        },
        params: Params {
            order_number: Some("142".into()),
            ..Params::default()
        },
        format: None,
        route: None,
        lookup: None,
    }
}

/// Meta's success answer (providers.md B1) with the given message id.
pub fn meta_ok(id: &str) -> wiremock::ResponseTemplate {
    wiremock::ResponseTemplate::new(200).set_body_json(serde_json::json!({
        "messaging_product": "whatsapp",
        "contacts": [{"input": "+79161234567", "wa_id": "79161234567"}],
        "messages": [{"id": id}]
    }))
}

/// Waits until the fake received `n` requests (or the timeout).
pub async fn requests(fake: &MockServer, n: usize, timeout: Duration) -> Vec<wiremock::Request> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let got = fake.received_requests().await.unwrap_or_default();
        if got.len() >= n || tokio::time::Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A connection to the tests' Redis (the cluster when [`CLUSTER_ENV`] is set).
pub async fn redis_conn() -> dispatcher::redis_conn::Conn {
    dispatcher::redis_conn::Backend::new(&redis_settings("test"))
        .expect("redis settings")
        .connect()
        .await
        .expect("the tests' Redis is up")
}

/// The pauses that have (or had) a hold queue, under a test's prefix.
pub async fn hold_ids(prefix: &str) -> Vec<String> {
    let mut c = redis_conn().await;
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(format!("{prefix}:pauses"))
        .query_async(&mut c)
        .await
        .unwrap_or_default();
    fields
        .into_iter()
        .filter_map(|f| f.strip_prefix("~hold|").map(str::to_string))
        .collect()
}

/// The pauses whose drained hold queue waits to be deleted.
pub async fn idle_hold_ids(prefix: &str) -> Vec<String> {
    let mut c = redis_conn().await;
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(format!("{prefix}:pauses"))
        .query_async(&mut c)
        .await
        .unwrap_or_default();
    fields
        .into_iter()
        .filter_map(|f| f.strip_prefix("~idle|").map(str::to_string))
        .collect()
}

/// The key of one mark of a delivery under a test's prefix.
pub fn mark(prefix: &str, kind: &str, dedup_key: &str, channel: &str) -> String {
    format!("{prefix}:{kind}:{{{dedup_key}}}:{channel}")
}

pub async fn delete_keys(prefix: &str) {
    delete_matching(&format!("{prefix}:*")).await;
}

/// Deletes every key matching a `KEYS` pattern (a test's own prefix only).
async fn delete_matching(pattern: &str) {
    let mut c = redis_conn().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut c)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<i64, _> = redis::cmd("DEL").arg(keys).query_async(&mut c).await;
    }
}

pub async fn redis_get(key: &str) -> Option<String> {
    let mut c = redis_conn().await;
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut c)
        .await
        .ok()
        .flatten()
}

pub fn header(h: &FieldTable, key: &str) -> Option<String> {
    use lapin::types::AMQPValue;
    match h.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::LongLongInt(v) => Some(v.to_string()),
        AMQPValue::LongInt(v) => Some(v.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// A TCP proxy a test can cut and restore (to Redis, here).
pub struct Proxy {
    pub port: u16,
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: &'static str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let open = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (o, c) = (open.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !o.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut out) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                c.lock().await.push(task);
            }
        });
        Proxy {
            port,
            open,
            conns,
            accept,
        }
    }

    pub async fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for t in self.conns.lock().await.drain(..) {
            t.abort();
        }
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// What the passing of a lease TTL does to the leases a dead worker left.
pub async fn expire_leases(prefix: &str) {
    delete_matching(&format!("{prefix}:lease:*")).await;
}

/// A provider's delivery status as ingest publishes it.
pub fn status(
    provider: &str,
    message_id: &str,
    state: shared::status::DeliveryState,
) -> shared::status::StatusUpdate {
    shared::status::StatusUpdate {
        schema: shared::status::STATUS_SCHEMA_VERSION,
        provider: provider.into(),
        message_id: message_id.into(),
        state,
        at: chrono::Utc::now(),
        received_at: chrono::Utc::now(),
        error_code: (state == shared::status::DeliveryState::Failed).then(|| "131026".into()),
        error: None,
        delivery_key: None,
    }
}

/// Publishes a status update to the harness's status queue (confirmed).
pub async fn publish_status(h: &Harness, s: &shared::status::StatusUpdate) {
    publish_status_message(h, &shared::status::StatusMessage::Update(s.clone())).await
}

/// Publishes what the status route carries (an update or an opt-out).
#[allow(dead_code)]
pub async fn publish_status_message(h: &Harness, s: &shared::status::StatusMessage) {
    let conn = connect().await;
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    ch.basic_publish(
        h.topology.exchange().into(),
        shared::topology::ROUTE_STATUS.into(),
        BasicPublishOptions::default(),
        &s.to_json(),
        BasicProperties::default().with_delivery_mode(2),
    )
    .await
    .expect("publish")
    .await
    .expect("confirm");
    let _ = conn.close(200, "done".into()).await;
}
