//! Test harness: a real ingest on a free port, against the real RabbitMQ on
//! loopback, with its own exchange/queue prefix and spool directory, cleaned
//! up afterwards. Tests run in parallel without seeing each other's events.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ingest::app::{self, Running};
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use shared::Event;
use shared::config::Settings;
use shared::status::StatusUpdate;
use shared::topology::Topology;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const KEY: &str = "acme-webhook-key-0001";
pub const OTHER_KEY: &str = "salon-webhook-key-0002";

/// Logs go to the test's captured output; `RUST_LOG=ingest=debug` for more.
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("ingest=info"));
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(filter)
        .try_init();
}

pub fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

pub fn unique_prefix(test: &str) -> String {
    format!(
        "test-{test}-{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    )
}

pub fn settings(prefix: &str, amqp: &str, spool: &std::path::Path, extra: &str) -> Settings {
    let toml = format!(
        r#"
[ingest]
listen = "127.0.0.1:0"
workers = 2
max_body_bytes = 65536
publish_timeout_ms = 500

[rabbitmq]
url = "{amqp}"
prefix = "{prefix}"
second_attempt_delay_secs = 5
publish_channels = 2

[spool]
dir = "{spool}"
max_bytes = 10485760
segment_bytes = 1048576

[[tenants]]
id = "acme"
keys = ["{KEY}"]

[[tenants]]
id = "salon"
keys = ["{OTHER_KEY}"]
[tenants.sources.amocrm]
won_status_ids = [142, 47873533]
{extra}
"#,
        spool = spool.display()
    );
    Settings::from_toml(&toml).expect("test settings are valid")
}

pub struct Harness {
    pub ingest: Option<Running>,
    pub base: String,
    pub prefix: String,
    pub topology: Topology,
    pub spool_dir: tempfile::TempDir,
    pub http: reqwest::Client,
}

impl Harness {
    pub async fn start(test: &str) -> Harness {
        Self::start_via(test, AMQP).await
    }

    /// Starts ingest against `amqp` (e.g. a [`Proxy`]); waits for the broker
    /// only when it is the real one.
    pub async fn start_via(test: &str, amqp: &str) -> Harness {
        let prefix = unique_prefix(test);
        let spool_dir = tempfile::tempdir().expect("tempdir");
        let h = Self::start_on(&prefix, amqp, spool_dir).await;
        if amqp == AMQP {
            assert!(
                h.running()
                    .broker
                    .wait_until_up(Duration::from_secs(10))
                    .await,
                "RabbitMQ on 127.0.0.1:5672 is not reachable"
            );
        }
        h
    }

    pub async fn start_on(prefix: &str, amqp: &str, spool_dir: tempfile::TempDir) -> Harness {
        Self::start_on_with(prefix, amqp, spool_dir, "").await
    }

    /// Like [`start_via`](Self::start_via), with extra TOML (e.g. a
    /// `[callbacks]` section) appended to the settings.
    pub async fn start_with(test: &str, amqp: &str, extra: &str) -> Harness {
        let prefix = unique_prefix(test);
        let spool_dir = tempfile::tempdir().expect("tempdir");
        let h = Self::start_on_with(&prefix, amqp, spool_dir, extra).await;
        assert!(
            h.running()
                .broker
                .wait_until_up(Duration::from_secs(10))
                .await,
            "RabbitMQ on 127.0.0.1:5672 is not reachable"
        );
        h
    }

    pub async fn start_on_with(
        prefix: &str,
        amqp: &str,
        spool_dir: tempfile::TempDir,
        extra: &str,
    ) -> Harness {
        Self::start_on_tweaked(prefix, amqp, spool_dir, extra, |_| {}).await
    }

    /// Like [`start_with`](Self::start_with) on the real broker, with the
    /// settings changed by `tweak` first (e.g. the production body limit).
    pub async fn start_tweaked(
        test: &str,
        extra: &str,
        tweak: impl FnOnce(&mut Settings),
    ) -> Harness {
        let prefix = unique_prefix(test);
        let spool_dir = tempfile::tempdir().expect("tempdir");
        let h = Self::start_on_tweaked(&prefix, AMQP, spool_dir, extra, tweak).await;
        assert!(
            h.running()
                .broker
                .wait_until_up(Duration::from_secs(10))
                .await,
            "RabbitMQ on 127.0.0.1:5672 is not reachable"
        );
        h
    }

    pub async fn start_on_tweaked(
        prefix: &str,
        amqp: &str,
        spool_dir: tempfile::TempDir,
        extra: &str,
        tweak: impl FnOnce(&mut Settings),
    ) -> Harness {
        init_logs();
        let mut s = settings(prefix, amqp, spool_dir.path(), extra);
        tweak(&mut s);
        let topology = Topology::from_settings(&s.rabbitmq);
        let running = app::start(s, false).await.expect("ingest starts");
        Harness {
            base: format!("http://{}", running.addr),
            ingest: Some(running),
            prefix: prefix.to_string(),
            topology,
            spool_dir,
            http: reqwest::Client::new(),
        }
    }

    pub fn running(&self) -> &Running {
        self.ingest.as_ref().expect("running")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post_json(&self, source: &str, body: &str) -> (u16, serde_json::Value) {
        self.post(source, "application/json", body.as_bytes().to_vec())
            .await
    }

    pub async fn post(
        &self,
        source: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, serde_json::Value) {
        self.post_to(
            &format!("/api/webhook/{source}?key={KEY}"),
            content_type,
            body,
        )
        .await
    }

    /// Posts to a full path with query (for other keys or URL parameters).
    pub async fn post_to(
        &self,
        path_and_query: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, serde_json::Value) {
        let r = self
            .http
            .post(self.url(path_and_query))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (status, json)
    }

    /// Stops the ingest (graceful), keeping the spool directory.
    pub async fn stop(&mut self) {
        if let Some(r) = self.ingest.take() {
            r.stop().await;
        }
    }

    /// Stops the ingest and deletes the test's exchange and queues.
    pub async fn finish(mut self) {
        self.stop().await;
        delete_topology(&self.topology).await;
    }
}

pub async fn connect() -> Connection {
    Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .expect("RabbitMQ on 127.0.0.1:5672")
}

/// Reads (and acks) up to `n` messages of a queue, or fewer when the
/// timeout passes: (routing key, body) each.
async fn take_messages(queue: &str, n: usize, timeout: Duration) -> Vec<(String, Vec<u8>)> {
    let mut conn = connect().await;
    let mut ch = conn.create_channel().await.expect("channel");
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < n && tokio::time::Instant::now() < deadline {
        match ch.basic_get(queue.into(), BasicGetOptions::default()).await {
            Ok(Some(msg)) => {
                msg.delivery
                    .ack(BasicAckOptions::default())
                    .await
                    .expect("ack");
                out.push((
                    msg.delivery.routing_key.to_string(),
                    msg.delivery.data.clone(),
                ));
            }
            Ok(None) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(_) => {
                // Queue not declared yet: the 404 closes the channel, and for a
                // moment a new one on the same connection can fail too, so
                // start over on a fresh connection.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = conn.close(200, "retry".into()).await;
                conn = connect().await;
                ch = conn.create_channel().await.expect("channel");
            }
        }
    }
    let _ = conn.close(200, "done".into()).await;
    out
}

/// Reads (and acks) events from the dispatch queue until `n` arrived or the
/// timeout passed.
pub async fn take_events(topology: &Topology, n: usize, timeout: Duration) -> Vec<Event> {
    take_messages(&topology.dispatch_queue(), n, timeout)
        .await
        .into_iter()
        .map(|(_, body)| Event::from_json(&body).expect("a Vestnik event on the queue"))
        .collect()
}

/// Reads (and acks) provider status updates from `<prefix>.statuses` until
/// `n` arrived or the timeout passed.
pub async fn take_statuses(topology: &Topology, n: usize, timeout: Duration) -> Vec<StatusUpdate> {
    take_messages(&topology.status_queue(), n, timeout)
        .await
        .into_iter()
        .map(|(route, body)| {
            assert_eq!(route, "status");
            StatusUpdate::from_json(&body).expect("a status update on the statuses queue")
        })
        .collect()
}

/// Messages waiting in `<prefix>.statuses`.
pub async fn status_depth(topology: &Topology) -> u32 {
    depth(&topology.status_queue()).await
}

pub async fn queue_depth(topology: &Topology) -> u32 {
    depth(&topology.dispatch_queue()).await
}

async fn depth(queue: &str) -> u32 {
    let conn = connect().await;
    let ch = conn.create_channel().await.expect("channel");
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("queue {queue} exists: {e}"));
    let _ = conn.close(200, "done".into()).await;
    q.message_count()
}

pub async fn delete_topology(topology: &Topology) {
    let conn = connect().await;
    let ch = conn.create_channel().await.expect("channel");
    let _ = topology.delete(&ch).await;
    let _ = conn.close(200, "done".into()).await;
}

/// A TCP proxy in front of RabbitMQ that a test can cut and restore: the
/// broker becomes unreachable for the ingest exactly as after a network
/// failure or a broker stop, without touching the shared broker. Or it can
/// freeze: connections stay open and nothing passes either way, as with a
/// node that hangs (SIGSTOP) or a network that drops packets.
pub struct Proxy {
    pub port: u16,
    open: Arc<AtomicBool>,
    frozen: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

/// Copies `from` to `to`, holding bytes back while `frozen`.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Proxy {
    pub async fn start(open: bool) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let flag = Arc::new(AtomicBool::new(open));
        let frozen = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (f, c, z) = (flag.clone(), conns.clone(), frozen.clone());
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if !f.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let z = z.clone();
                let task = tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect("127.0.0.1:5672").await {
                        let (in_r, in_w) = inbound.into_split();
                        let (out_r, out_w) = outbound.into_split();
                        tokio::select! {
                            _ = pump(in_r, out_w, z.clone()) => {}
                            _ = pump(out_r, in_w, z) => {}
                        }
                    }
                });
                c.lock().await.push(task);
            }
        });
        Proxy {
            port,
            open: flag,
            frozen,
            conns,
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Cuts every connection and refuses new ones.
    pub async fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for t in self.conns.lock().await.drain(..) {
            t.abort();
        }
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    /// Connections stay open; nothing passes until [`thaw`](Self::thaw).
    /// New connections are refused meanwhile, as a hung node's are.
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
        self.open.store(false, Ordering::SeqCst);
    }

    pub fn thaw(&self) {
        self.frozen.store(false, Ordering::SeqCst);
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
