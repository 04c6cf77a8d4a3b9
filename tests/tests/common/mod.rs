//! What the end-to-end suites share: the real binaries started on the real
//! RabbitMQ and Redis with a test's own prefix (`Stack`), and the fake
//! provider's helpers.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

pub const KEY: &str = "e2e-webhook-key-000000001";

pub fn bin(name: &str) -> PathBuf {
    // target/debug/deps/pipeline-… → target/debug/<name>
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (deploy/test.sh does)",
        p.display()
    );
    p
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The WhatsApp Business Account of the stack's Meta number.
pub const WABA: &str = "104996122399160";

pub struct Stack {
    pub ingest: Child,
    pub dispatcher: Child,
    pub ingest_url: String,
    pub health_url: String,
    pub prefix: String,
    pub config: PathBuf,
    pub _dir: tempfile::TempDir,
}

impl Stack {
    pub async fn start(test: &str, fake: &MockServer) -> Stack {
        Stack::start_with(test, fake, "").await
    }

    /// With `more` appended to the configuration (more tenants).
    pub async fn start_with(test: &str, fake: &MockServer, more: &str) -> Stack {
        let prefix = format!(
            "e2e-{test}-{}",
            &uuid::Uuid::now_v7().simple().to_string()[20..]
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let (ingest_port, health_port) = (free_port(), free_port());
        let config = format!(
            r#"
[ingest]
listen = "127.0.0.1:{ingest_port}"
workers = 1
[rabbitmq]
prefix = "{prefix}"
second_attempt_delay_secs = 2
[redis]
prefix = "{prefix}"
[spool]
dir = "{spool}"
[dispatcher]
listen = "127.0.0.1:{health_port}"
[dispatcher.retry]
retries = 1
min_delay_ms = 10
max_delay_ms = 20
[log]
level = "info"
format = "json"
[callbacks]
meta_verify_token = "e2e-verify-token"
meta_app_secrets = ["e2e-meta-app-secret-0001"]
wazzup_keys = ["e2e-wazzup-key-0001"]

[[tenants]]
id = "acme"
keys = ["{KEY}"]
[tenants.channels]
default = ["whatsapp", "sms"]
[tenants.providers.meta]
base_url = "{fake}/v21.0"
phone_number_id = "1234567890"
access_token = "EAA-e2e-token"
waba_id = "{WABA}"
[tenants.providers.smsru]
base_url = "{fake}"
api_id = "e2e-api-id"
{more}"#,
            spool = dir.path().join("spool").display(),
            WABA = WABA,
            fake = fake.uri(),
        );
        let cfg = dir.path().join("vestnik.toml");
        std::fs::write(&cfg, config).expect("write config");
        let spawn = |name: &str, log: &str| {
            let log = std::fs::File::create(dir.path().join(log)).expect("log file");
            let mut cmd = Command::new(bin(name));
            // The binaries read `VESTNIK_*` as configuration (and refuse
            // keys they do not know): only the file counts here, whatever
            // the test run's own environment says (e.g. CI's
            // `VESTNIK_TEST_REDIS_CLUSTER`).
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("VESTNIK_") {
                    cmd.env_remove(k);
                }
            }
            cmd.env("VESTNIK_CONFIG", &cfg)
                .env_remove("RUST_LOG")
                .stdout(Stdio::from(log.try_clone().expect("log")))
                .stderr(Stdio::from(log))
                .spawn()
                .unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        let ingest = spawn("ingest", "ingest.log");
        let dispatcher = spawn("dispatcher", "dispatcher.log");
        let stack = Stack {
            ingest,
            dispatcher,
            ingest_url: format!("http://127.0.0.1:{ingest_port}"),
            health_url: format!("http://127.0.0.1:{health_port}"),
            prefix,
            config: cfg.clone(),
            _dir: dir,
        };
        let http = reqwest::Client::new();
        for url in [
            format!("{}/readyz", stack.ingest_url),
            format!("http://127.0.0.1:{health_port}/readyz"),
        ] {
            let mut ok = false;
            for _ in 0..150 {
                if http.get(&url).send().await.is_ok_and(|r| r.status() == 200) {
                    ok = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(ok, "{url} never became ready");
        }
        stack
    }

    pub async fn post(
        &self,
        source: &str,
        content_type: &str,
        body: &str,
    ) -> (u16, serde_json::Value) {
        let r = reqwest::Client::new()
            .post(format!(
                "{}/api/webhook/{source}?key={KEY}",
                self.ingest_url
            ))
            .header("content-type", content_type)
            .body(body.to_string())
            .send()
            .await
            .expect("ingest answers");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub fn logs(&self) -> String {
        ["ingest.log", "dispatcher.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self._dir.path().join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub async fn stop(mut self) -> String {
        for child in [&mut self.ingest, &mut self.dispatcher] {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
        }
        for child in [&mut self.ingest, &mut self.dispatcher] {
            for _ in 0..100 {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new(bin("drop_topology"))
            .args(["amqp://guest:guest@127.0.0.1:5672/%2f", &self.prefix, "2"])
            .status();
        if let Ok(client) = redis::Client::open("redis://127.0.0.1:6379")
            && let Ok(mut c) = client.get_multiplexed_async_connection().await
        {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}:*", self.prefix))
                .query_async(&mut c)
                .await
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: Result<i64, _> = redis::cmd("DEL").arg(keys).query_async(&mut c).await;
            }
        }
        self.logs()
    }
}

pub async fn wait_requests(fake: &MockServer, n: usize) -> Vec<Request> {
    for _ in 0..200 {
        let got = fake.received_requests().await.unwrap_or_default();
        if got.len() >= n {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fake.received_requests().await.unwrap_or_default()
}

/// The fake Meta Cloud API accepts every message with this id.
pub async fn meta_accepts(fake: &MockServer, message_id: &str) {
    Mock::given(method("POST"))
        .and(path("/v21.0/1234567890/messages"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"messages": [{"id": message_id}]})),
        )
        .mount(fake)
        .await;
}

pub fn meta_bodies(got: &[Request]) -> Vec<serde_json::Value> {
    got.iter()
        .filter(|r| r.url.path().ends_with("/messages"))
        .filter_map(|r| r.body_json().ok())
        .collect()
}
