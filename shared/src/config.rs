//! All configuration, one struct tree. Read from a TOML file (path from
//! `--config` or `VESTNIK_CONFIG`) and overridden by environment variables
//! with the `VESTNIK_` prefix and `__` between levels, e.g.
//! `VESTNIK_RABBITMQ__URL`, `VESTNIK_INGEST__LISTEN`. Every key and its default
//! is documented in deploy/vestnik.example.toml.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::tenant::TenantConfig;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// A production deployment: the start is refused while the example's
    /// placeholder webhook keys are configured, or (dispatcher) while a
    /// tenant's channel has no provider, instead of logging its messages as
    /// sent (seed 001's dev mode). `VESTNIK_PRODUCTION=true`.
    #[serde(default)]
    pub production: bool,
    #[serde(default)]
    pub ingest: IngestSettings,
    #[serde(default)]
    pub rabbitmq: RabbitSettings,
    #[serde(default)]
    pub spool: SpoolSettings,
    #[serde(default)]
    pub redis: RedisSettings,
    #[serde(default)]
    pub dispatcher: DispatcherSettings,
    #[serde(default)]
    pub admin: AdminSettings,
    #[serde(default)]
    pub log: LogSettings,
    #[serde(default)]
    pub callbacks: CallbackSettings,
    #[serde(default)]
    pub security: SecuritySettings,
    #[serde(default)]
    pub reload: ReloadSettings,
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
    /// The file this was read from (`--config` / `VESTNIK_CONFIG`), which a
    /// reload reads again; not a key of the file.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// Live reload of `[[tenants]]` (crate::reload): on SIGHUP, and when the
/// file's content changes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadSettings {
    /// How often the file's content is compared with the one in force; 0
    /// turns the watch off (SIGHUP still reloads).
    pub poll_interval_ms: u64,
}

impl Default for ReloadSettings {
    fn default() -> Self {
        ReloadSettings {
            poll_interval_ms: 2_000,
        }
    }
}

/// Secrets of the deployment itself.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecuritySettings {
    /// 32 bytes, base64 (`openssl rand -base64 32`), the same in every
    /// ingest and dispatcher: seals provider credentials that arrive in
    /// webhook URLs (seed 000's `key_api`) before the event is written
    /// anywhere. Unset: they travel in clear (a warning at start).
    pub seal_key: Option<String>,
}

impl std::fmt::Debug for SecuritySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecuritySettings")
            .field("seal_key_set", &self.seal_key.is_some())
            .finish()
    }
}

impl SecuritySettings {
    /// The sealer for `seal_key`, when set (validated at load).
    pub fn sealer(&self) -> Option<crate::seal::Sealer> {
        self.seal_key
            .as_deref()
            .and_then(|k| crate::seal::Sealer::from_base64(k).ok())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestSettings {
    /// Public webhook port.
    pub listen: String,
    /// Bodies above this are refused with 413.
    pub max_body_bytes: usize,
    /// How long a request waits for the broker's confirm before the event
    /// goes to the spool instead (AmoCRM gives us 2 s in all).
    pub publish_timeout_ms: u64,
    /// actix workers; 0 = one per core.
    pub workers: usize,
    /// Serve `/metrics` on this internal address instead of the public
    /// webhook port (e.g. `127.0.0.1:9100`). Unset: on the public port.
    pub metrics_listen: Option<String>,
}

impl Default for IngestSettings {
    fn default() -> Self {
        IngestSettings {
            listen: "0.0.0.0:8080".into(),
            max_body_bytes: 1024 * 1024,
            publish_timeout_ms: 1500,
            workers: 0,
            metrics_listen: None,
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RabbitSettings {
    /// One node; `urls` (when not empty) lists a cluster's nodes instead.
    pub url: String,
    /// The nodes of a RabbitMQ cluster: connect to one that answers, fail
    /// over to the next when it is lost (`shared::amqp`).
    pub urls: Vec<String>,
    /// `x-quorum-initial-group-size` of the quorum queues (default: every
    /// node of the cluster, RabbitMQ's own default); set it below the
    /// cluster size only to keep replicas off some nodes.
    pub quorum_initial_group_size: Option<u32>,
    /// Prefix of every exchange and queue name, so several deployments (or
    /// test runs) can share one broker.
    pub prefix: String,
    /// Delay of the one second attempt after a first failure (seed 003: 9m30s).
    pub second_attempt_delay_secs: u64,
    /// Quorum-queue redelivery limit before a message is dead-lettered as poison.
    pub delivery_limit: u32,
    /// How long a delivery waits in the lease-wait queue when another
    /// dispatcher holds its lease (sending it now, or dead with the lease not
    /// yet expired) before it is tried again. It waits in the broker, not in
    /// a worker, so it holds no concurrency permit.
    pub lease_wait_secs: u64,
    /// Publishing channels the ingest spreads its confirms over.
    pub publish_channels: usize,
    /// AMQP heartbeat asked for on every connection whose URL does not set
    /// `heartbeat=` itself (0: the server's, 60 s). Without it a node that
    /// hangs (stopped, partitioned) with its socket open is noticed only by
    /// TCP, minutes later; with it lapin closes the connection after two
    /// missed heartbeats and the caller fails over to the next node.
    pub heartbeat_secs: u16,
}

impl Default for RabbitSettings {
    fn default() -> Self {
        RabbitSettings {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            urls: Vec::new(),
            quorum_initial_group_size: None,
            prefix: "vestnik".into(),
            second_attempt_delay_secs: 570,
            delivery_limit: 20,
            lease_wait_secs: crate::topology::DEFAULT_LEASE_WAIT_SECS,
            publish_channels: 4,
            heartbeat_secs: 10,
        }
    }
}

/// `url` with `heartbeat=<secs>` added to its query, unless it has one.
fn with_heartbeat(url: String, secs: u16) -> String {
    let query = url.split_once('?').map(|(_, q)| q).unwrap_or("");
    if secs == 0 || query.split('&').any(|kv| kv.starts_with("heartbeat=")) {
        return url;
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}heartbeat={secs}")
}

impl RabbitSettings {
    /// The nodes to connect to: `urls`, or `url` alone.
    pub fn endpoints(&self) -> Vec<String> {
        let urls = if self.urls.is_empty() {
            vec![self.url.clone()]
        } else {
            self.urls.clone()
        };
        urls.into_iter()
            .map(|u| with_heartbeat(u, self.heartbeat_secs))
            .collect()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (i, u) in self.endpoints().iter().enumerate() {
            // Named by position: the URL may hold a password.
            if !(u.starts_with("amqp://") || u.starts_with("amqps://")) {
                return Err(ConfigError::Invalid(format!(
                    "rabbitmq.urls (entry {}) is not an amqp:// or amqps:// URL",
                    i + 1
                )));
            }
        }
        if self.quorum_initial_group_size == Some(0) {
            return Err(ConfigError::Invalid(
                "rabbitmq.quorum_initial_group_size must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

impl std::fmt::Debug for RabbitSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitSettings")
            .field("url", &crate::mask::url(&self.url))
            .field(
                "urls",
                &self
                    .urls
                    .iter()
                    .map(|u| crate::mask::url(u))
                    .collect::<Vec<_>>(),
            )
            .field("quorum_initial_group_size", &self.quorum_initial_group_size)
            .field("prefix", &self.prefix)
            .field("second_attempt_delay_secs", &self.second_attempt_delay_secs)
            .field("delivery_limit", &self.delivery_limit)
            .field("lease_wait_secs", &self.lease_wait_secs)
            .field("publish_channels", &self.publish_channels)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolSettings {
    /// Where events wait (fsynced) while the broker is unreachable: each
    /// ingest keeps its own spool in `<dir>/<instance id>`, so several
    /// ingests can share one volume.
    pub dir: PathBuf,
    /// This ingest's name for its spool (default: the host name, which is
    /// the container's in compose). Letters, digits, `.`, `_`, `-`.
    pub instance_id: Option<String>,
    /// How often an ingest looks for spools whose ingest is gone (their lock
    /// is free) and drains them.
    pub adopt_interval_secs: u64,
    /// Above this many pending bytes new webhooks get 503.
    pub max_bytes: u64,
    /// Size at which a new segment file is started.
    pub segment_bytes: u64,
}

impl SpoolSettings {
    /// This ingest's spool name: `instance_id`, else the host name.
    pub fn instance(&self) -> String {
        self.instance_id
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|h| h.trim().to_string())
            })
            .filter(|h| valid_instance(h))
            .unwrap_or_else(|| "ingest".into())
    }

    /// This ingest's own spool directory.
    pub fn own_dir(&self) -> PathBuf {
        self.dir.join(self.instance())
    }
}

fn valid_instance(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// What marks the example's webhook keys as placeholders.
pub const PLACEHOLDER_KEY_MARK: &str = "change-me";

/// Where the spool lives unless configured: not under whatever directory
/// the process happened to start in.
pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/vestnik/spool";

impl Default for SpoolSettings {
    fn default() -> Self {
        SpoolSettings {
            dir: PathBuf::from(DEFAULT_SPOOL_DIR),
            instance_id: None,
            adopt_interval_secs: 10,
            max_bytes: 1024 * 1024 * 1024,
            segment_bytes: 64 * 1024 * 1024,
        }
    }
}

/// How the dispatcher reaches Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// One server at `url`.
    #[default]
    Single,
    /// The primary that `sentinels` name for `master_name`, found again
    /// after a failover.
    Sentinel,
    /// A Redis Cluster, discovered from the seed nodes in `urls`.
    Cluster,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    pub mode: RedisMode,
    /// The server (`mode = "single"`).
    pub url: String,
    /// Seed nodes of the cluster (`mode = "cluster"`); the rest is discovered.
    pub urls: Vec<String>,
    /// Sentinels (`mode = "sentinel"`), e.g. `redis://10.0.0.5:26379`.
    pub sentinels: Vec<String>,
    /// The monitored primary's name in the Sentinels' configuration.
    pub master_name: String,
    /// Credentials of the primary and replicas the Sentinels name (the
    /// Sentinels' own go in their URLs).
    pub master_username: Option<String>,
    pub master_password: Option<String>,
    /// Prefix of every key, so deployments (or test runs) can share a server.
    pub prefix: String,
    pub pool_size: usize,
    /// Per-command timeout; past it Redis counts as unreachable (fail closed).
    pub timeout_ms: u64,
    /// Replicas that must have a done mark (or another mark that must
    /// survive a failover) before the broker is acked: `WAIT n`. Default: 1
    /// with Sentinel or Cluster, 0 (no wait) for a single server.
    pub wait_replicas: Option<u32>,
    /// The longest that wait lasts (default 250 ms, or half of `timeout_ms`
    /// when that is less; below both `timeout_ms` and the Redis client's
    /// 500 ms response timeout, so a slow replica never turns into "Redis
    /// unreachable"); past it the mark stays written on the primary only
    /// (counted in `vestnik_dispatcher_redis_wait_shortfalls_total`).
    pub wait_timeout_ms: Option<u64>,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls = |v: &[String]| v.iter().map(|u| crate::mask::url(u)).collect::<Vec<_>>();
        f.debug_struct("RedisSettings")
            .field("mode", &self.mode)
            .field("url", &crate::mask::url(&self.url))
            .field("urls", &urls(&self.urls))
            .field("sentinels", &urls(&self.sentinels))
            .field("master_name", &self.master_name)
            .field("master_username", &self.master_username)
            .field("master_password_set", &self.master_password.is_some())
            .field("prefix", &self.prefix)
            .field("pool_size", &self.pool_size)
            .field("timeout_ms", &self.timeout_ms)
            .field("wait_replicas", &self.replicas_to_wait_for())
            .field("wait_timeout", &self.wait_timeout())
            .finish()
    }
}

/// Default of `redis.wait_timeout_ms`.
const DEFAULT_WAIT_TIMEOUT_MS: u64 = 250;
/// The `redis` crate's response timeout on a multiplexed connection: a
/// command that takes longer fails.
const CLIENT_RESPONSE_TIMEOUT_MS: u64 = 500;

impl RedisSettings {
    /// The replicas a durable mark waits for (see `wait_replicas`).
    pub fn replicas_to_wait_for(&self) -> u32 {
        self.wait_replicas.unwrap_or(match self.mode {
            RedisMode::Single => 0,
            RedisMode::Sentinel | RedisMode::Cluster => 1,
        })
    }

    /// The longest a durable mark waits for its replicas.
    pub fn wait_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.wait_timeout_ms
                .unwrap_or((self.timeout_ms / 2).min(DEFAULT_WAIT_TIMEOUT_MS)),
        )
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let check_urls = |what: &str, urls: &[String]| -> Result<(), ConfigError> {
            for (i, u) in urls.iter().enumerate() {
                // The URL may hold a password: named by position, not shown.
                if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                    return Err(ConfigError::Invalid(format!(
                        "redis.{what} (entry {}) is not a redis:// or rediss:// URL",
                        i + 1
                    )));
                }
            }
            Ok(())
        };
        match self.mode {
            RedisMode::Single => check_urls("url", std::slice::from_ref(&self.url))?,
            RedisMode::Cluster if self.urls.is_empty() => {
                return bad("redis.mode = \"cluster\" needs redis.urls (seed nodes)".into());
            }
            RedisMode::Cluster => check_urls("urls", &self.urls)?,
            RedisMode::Sentinel
                if self.sentinels.is_empty() || self.master_name.trim().is_empty() =>
            {
                return bad(
                    "redis.mode = \"sentinel\" needs redis.sentinels and redis.master_name".into(),
                );
            }
            RedisMode::Sentinel => check_urls("sentinels", &self.sentinels)?,
        }
        if self.prefix.is_empty()
            || self
                .prefix
                .chars()
                .any(|c| c.is_whitespace() || c == '{' || c == '}')
        {
            return bad("redis.prefix must be non-empty without spaces or braces".into());
        }
        // The wait runs inside a command's time budget: a longer one would
        // turn every slow replica into "Redis unreachable".
        let wait = self.wait_timeout().as_millis() as u64;
        let limit = self.timeout_ms.min(CLIENT_RESPONSE_TIMEOUT_MS);
        if self.replicas_to_wait_for() > 0 && (wait == 0 || wait >= limit) {
            return bad(format!(
                "redis.wait_timeout_ms must be at least 1 and below {limit} (redis.timeout_ms, and the Redis client's response timeout of {CLIENT_RESPONSE_TIMEOUT_MS} ms)"
            ));
        }
        Ok(())
    }
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            mode: RedisMode::Single,
            url: "redis://127.0.0.1:6379".into(),
            urls: Vec::new(),
            sentinels: Vec::new(),
            master_name: "vestnik".into(),
            master_username: None,
            master_password: None,
            prefix: "vestnik".into(),
            pool_size: 32,
            timeout_ms: 1000,
            wait_replicas: None,
            wait_timeout_ms: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatcherSettings {
    /// Health, readiness and metrics (not public).
    pub listen: String,
    /// Unacknowledged deliveries the broker hands one dispatcher at a time.
    pub prefetch: u16,
    /// Events processed at the same time by one dispatcher.
    pub concurrency: usize,
    /// How long the "sent" mark (with the provider's message id) is kept:
    /// the window in which a duplicate webhook or a replay cannot send again.
    pub done_ttl_secs: u64,
    /// The lease held while sending; must outlast one whole attempt
    /// (provider timeout times quick retries).
    pub lease_ttl_secs: u64,
    /// On SIGTERM: how long in-flight events may take before they are handed back.
    pub shutdown_timeout_secs: u64,
    pub retry: QuickRetrySettings,
    /// Wazzup API used for accounts that come with a webhook URL (seed 000's
    /// `key_api`/`channel_id`/`chat_type`) rather than tenant config.
    pub wazzup_base_url: String,
    /// How long each event's delivery journal (received, attempts,
    /// callbacks, fallback, dead letter) is kept in Redis; 0 keeps none.
    pub journal_ttl_secs: u64,
    /// How often the fleet reads the balances of the accounts that have
    /// one (SMS.ru, Exolve): one dispatcher per period, claimed in Redis;
    /// every dispatcher exports the last read; 0 never.
    pub balance_poll_secs: u64,
    /// While a provider account stays paused, how often (at most) the head
    /// of its hold queue is looked at for messages past the tenant's
    /// `hold_max_secs` (`dispatcher::hold`).
    pub hold_recheck_secs: u64,
    /// How many held messages a drain sends at once when a paused account
    /// heals: each customer's own messages still go one at a time in the
    /// order held; 1 sends the whole queue one at a time, in account order
    /// (`dispatcher::hold`).
    pub hold_drain_window: usize,
}

impl Default for DispatcherSettings {
    fn default() -> Self {
        DispatcherSettings {
            listen: "0.0.0.0:9090".into(),
            prefetch: 64,
            concurrency: 32,
            done_ttl_secs: 7 * 24 * 3600,
            lease_ttl_secs: 120,
            shutdown_timeout_secs: 30,
            retry: QuickRetrySettings::default(),
            wazzup_base_url: "https://api.wazzup24.com".into(),
            journal_ttl_secs: 7 * 24 * 3600,
            balance_poll_secs: 300,
            hold_recheck_secs: 30,
            hold_drain_window: 16,
        }
    }
}

/// The dispatcher's admin HTTP API (dead-letter queue, delivery journal):
/// its own port, never the public webhook port, and a bearer token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    pub listen: String,
    /// `Authorization: Bearer <token>`. Empty: the admin API is not started.
    pub token: String,
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings {
            listen: "127.0.0.1:9091".into(),
            token: String::new(),
        }
    }
}

/// The quick retries inside one attempt, for transient errors only.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuickRetrySettings {
    /// Retries after the first try (0 = none).
    pub retries: usize,
    pub min_delay_ms: u64,
    pub max_delay_ms: u64,
    /// A provider's Retry-After longer than this is not waited for inside
    /// the attempt: the attempt fails and the ladder takes over.
    pub max_retry_after_ms: u64,
}

impl Default for QuickRetrySettings {
    fn default() -> Self {
        QuickRetrySettings {
            retries: 3,
            min_delay_ms: 200,
            max_delay_ms: 2000,
            max_retry_after_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `json` (production) or `pretty`.
    pub format: String,
    /// tracing filter, e.g. `info,ingest=debug`; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: "json".into(),
            level: "info".into(),
        }
    }
}

/// Providers' delivery-status callbacks (`/api/callback/{meta,dialog360,wazzup}`).
/// Every list takes several values so a secret can be rotated without
/// downtime. An endpoint whose secrets are empty is not configured: it
/// answers 503 `callback_not_configured` (see docs/CALLBACKS.md).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallbackSettings {
    /// Meta: the "Verify token" typed into the app dashboard; the GET
    /// verification echoes `hub.challenge` only when it matches.
    pub meta_verify_token: String,
    /// Meta: app secrets; `X-Hub-Signature-256` must match one of them.
    pub meta_app_secrets: Vec<String>,
    /// 360dialog: the custom header registered with the webhook URL.
    pub dialog360_header: String,
    /// 360dialog: accepted values of that header (or of `?key=`).
    pub dialog360_secrets: Vec<String>,
    /// Wazzup24: accepted `Authorization: Bearer <crmKey>` / `?key=` values.
    pub wazzup_keys: Vec<String>,
    /// An inbound message (Meta, 360dialog, Wazzup) that says only one of
    /// these (case, spaces and punctuation around it aside) opts its sender
    /// out of every message of the tenant that owns the number written to.
    /// Empty: inbound messages opt nobody out.
    pub stop_words: Vec<String>,
}

impl Default for CallbackSettings {
    fn default() -> Self {
        CallbackSettings {
            meta_verify_token: String::new(),
            meta_app_secrets: Vec::new(),
            dialog360_header: "X-Vestnik-Secret".into(),
            dialog360_secrets: Vec::new(),
            wazzup_keys: Vec::new(),
            stop_words: ["stop", "unsubscribe", "стоп", "отписаться", "отписка"]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// Secrets are never printed, only how many there are.
impl std::fmt::Debug for CallbackSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackSettings")
            .field("meta_verify_token_set", &!self.meta_verify_token.is_empty())
            .field("meta_app_secrets", &self.meta_app_secrets.len())
            .field("dialog360_header", &self.dialog360_header)
            .field("dialog360_secrets", &self.dialog360_secrets.len())
            .field("wazzup_keys", &self.wazzup_keys.len())
            .field("stop_words", &self.stop_words)
            .finish()
    }
}

/// Secrets we choose ourselves must not be guessable.
const MIN_CALLBACK_SECRET: usize = 16;

impl CallbackSettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.meta_app_secrets.iter().any(|s| s.trim().is_empty()) {
            return invalid("callbacks.meta_app_secrets must not contain empty values".into());
        }
        if self
            .stop_words
            .iter()
            .any(|w| crate::status::stop_word_form(w).is_empty())
        {
            return invalid(
                "callbacks.stop_words: every word must have a letter or digit in it".into(),
            );
        }
        for (key, list) in [
            ("dialog360_secrets", &self.dialog360_secrets),
            ("wazzup_keys", &self.wazzup_keys),
        ] {
            if list.iter().any(|s| s.chars().count() < MIN_CALLBACK_SECRET) {
                return invalid(format!(
                    "callbacks.{key}: every value must be at least {MIN_CALLBACK_SECRET} characters"
                ));
            }
        }
        let h = &self.dialog360_header;
        if h.is_empty()
            || !h
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            return invalid(
                "callbacks.dialog360_header must be an HTTP header name (letters, digits, '-')"
                    .into(),
            );
        }
        let reserved = [
            "authorization",
            "content-type",
            "content-length",
            "host",
            "cookie",
        ];
        if reserved.contains(&h.to_ascii_lowercase().as_str()) {
            return invalid(format!(
                "callbacks.dialog360_header must be a custom header, not {h:?}"
            ));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The values it quotes are masked: a key written where a list belongs
    /// is quoted whole by the parser, and this text reaches logs.
    #[error("configuration: {}", crate::mask::quoted(&.0.to_string()))]
    Load(#[from] config::ConfigError),
    #[error("configuration: {0}")]
    Invalid(String),
}

impl Settings {
    /// File (optional) then environment. `path` wins over `VESTNIK_CONFIG`.
    pub fn load(path: Option<&Path>) -> Result<Settings, ConfigError> {
        let env_path = std::env::var_os("VESTNIK_CONFIG").map(PathBuf::from);
        let mut builder = config::Config::builder();
        let file = path.map(Path::to_path_buf).or(env_path);
        if let Some(p) = &file {
            builder = builder.add_source(config::File::from(p.clone()).required(true));
        }
        let mut settings: Settings = builder
            .add_source(
                config::Environment::with_prefix("VESTNIK")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true)
                    .source(Some(overrides_from_env())),
            )
            .build()?
            .try_deserialize()?;
        // A relative spool directory is the config file's neighbour, never
        // the working directory's (which differs between a shell, systemd
        // and a container).
        if let Some(base) = file.as_deref().and_then(Path::parent)
            && settings.spool.dir.is_relative()
        {
            settings.spool.dir = base.join(&settings.spool.dir);
        }
        settings.validate()?;
        settings.source = file;
        Ok(settings)
    }

    /// The sections other than `[[tenants]]` that differ from `new`: a
    /// reload does not apply them (they are read at start). Compared by
    /// their Debug text, which masks secrets, so a changed password alone
    /// is not noticed here.
    pub fn restart_needed(&self, new: &Settings) -> Vec<&'static str> {
        macro_rules! differing {
            ($($section:ident),*) => {
                [$((
                    stringify!($section),
                    format!("{:?}", self.$section) != format!("{:?}", new.$section),
                )),*]
            };
        }
        differing!(
            production, ingest, rabbitmq, spool, redis, dispatcher, admin, log, callbacks,
            security, reload
        )
        .into_iter()
        .filter_map(|(name, differs)| differs.then_some(name))
        .collect()
    }

    pub fn from_toml(text: &str) -> Result<Settings, ConfigError> {
        let settings: Settings = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()?
            .try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.production {
            for t in &self.tenants {
                if t.keys.iter().any(|k| k.contains(PLACEHOLDER_KEY_MARK)) {
                    return Err(ConfigError::Invalid(format!(
                        "tenant {}: a webhook key is the example's placeholder (\"…{PLACEHOLDER_KEY_MARK}\"); \
                         set your own (production = true)",
                        t.id
                    )));
                }
            }
        }
        if let Some(key) = &self.security.seal_key {
            crate::seal::Sealer::from_base64(key)
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        if self.ingest.publish_timeout_ms == 0 || self.ingest.publish_timeout_ms > 1900 {
            return Err(ConfigError::Invalid(
                "ingest.publish_timeout_ms must be between 1 and 1900 (AmoCRM's budget is 2 s)"
                    .into(),
            ));
        }
        if self.ingest.max_body_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "ingest.max_body_bytes must be at least 1024".into(),
            ));
        }
        if self.rabbitmq.prefix.is_empty()
            || !self
                .rabbitmq
                .prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(ConfigError::Invalid(
                "rabbitmq.prefix must be non-empty ASCII letters, digits, '-', '_' or '.'".into(),
            ));
        }
        self.redis.validate()?;
        if let Some(id) = &self.spool.instance_id
            && !valid_instance(id)
        {
            return Err(ConfigError::Invalid(
                "spool.instance_id must be 1-64 letters, digits, '.', '_' or '-'".into(),
            ));
        }
        if self.spool.adopt_interval_secs == 0 {
            return Err(ConfigError::Invalid(
                "spool.adopt_interval_secs must be at least 1".into(),
            ));
        }
        self.rabbitmq.validate()?;
        if !self.admin.token.is_empty() && self.admin.token.trim().len() < 16 {
            return Err(ConfigError::Invalid(
                "admin.token must be at least 16 characters (or empty to disable the admin API)"
                    .into(),
            ));
        }
        if self.dispatcher.concurrency == 0 || self.dispatcher.prefetch == 0 {
            return Err(ConfigError::Invalid(
                "dispatcher.concurrency and dispatcher.prefetch must be at least 1".into(),
            ));
        }
        if self.dispatcher.lease_ttl_secs == 0
            || self.dispatcher.done_ttl_secs < self.dispatcher.lease_ttl_secs
        {
            return Err(ConfigError::Invalid(
                "dispatcher.lease_ttl_secs must be at least 1 and below dispatcher.done_ttl_secs"
                    .into(),
            ));
        }
        if self.rabbitmq.publish_channels == 0 {
            return Err(ConfigError::Invalid(
                "rabbitmq.publish_channels must be at least 1".into(),
            ));
        }
        if self.spool.segment_bytes < 4096 || self.spool.max_bytes < self.spool.segment_bytes {
            return Err(ConfigError::Invalid(
                "spool.segment_bytes must be >= 4096 and <= spool.max_bytes".into(),
            ));
        }
        self.callbacks.validate()?;
        crate::tenant::Tenants::new(self.tenants.clone()).map_err(ConfigError::Invalid)?;
        Ok(())
    }
}

/// `VESTNIK_*` variables except `VESTNIK_CONFIG`, which names the file
/// rather than setting a key.
fn overrides_from_env() -> config::Map<String, String> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("VESTNIK_") && k != "VESTNIK_CONFIG")
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn production_refuses_the_examples_placeholder_key() {
        let toml = |production: bool, key: &str| {
            format!("production = {production}\n[[tenants]]\nid = \"demo\"\nkeys = [\"{key}\"]\n")
        };
        let err = Settings::from_toml(&toml(true, "demo-webhook-key-change-me"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tenant demo") && err.contains("placeholder"),
            "{err}"
        );
        assert!(Settings::from_toml(&toml(true, "a-real-secret-key-0001")).is_ok());
        assert!(Settings::from_toml(&toml(false, "demo-webhook-key-change-me")).is_ok());
    }

    #[test]
    fn a_relative_spool_dir_is_the_config_files_neighbour() {
        let dir = std::env::temp_dir().join(format!("vestnik-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("vestnik.toml");
        std::fs::write(&file, "[spool]\ndir = \"spool-here\"\n").unwrap();
        let s = Settings::load(Some(&file)).unwrap();
        assert_eq!(s.spool.dir, dir.join("spool-here"));
        std::fs::write(&file, "[spool]\ndir = \"/srv/spool\"\n").unwrap();
        assert_eq!(
            Settings::load(Some(&file)).unwrap().spool.dir,
            Path::new("/srv/spool")
        );
        std::fs::write(&file, "").unwrap();
        assert_eq!(
            Settings::load(Some(&file)).unwrap().spool.dir,
            Path::new(DEFAULT_SPOOL_DIR)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    use super::*;

    #[test]
    fn defaults_are_sane() {
        let s = Settings::from_toml("").unwrap();
        assert_eq!(s.ingest.publish_timeout_ms, 1500);
        assert_eq!(s.rabbitmq.second_attempt_delay_secs, 570);
        assert_eq!(s.ingest.max_body_bytes, 1 << 20);
    }

    #[test]
    fn unknown_keys_are_an_error_not_silently_ignored() {
        let err = Settings::from_toml("[ingest]\nlisten_port = 1\n").unwrap_err();
        assert!(err.to_string().contains("listen_port"), "{err}");
    }

    #[test]
    fn callbacks_default_to_off_with_the_documented_header() {
        let s = Settings::from_toml("").unwrap();
        assert!(s.callbacks.meta_app_secrets.is_empty());
        assert!(s.callbacks.meta_verify_token.is_empty());
        assert_eq!(s.callbacks.dialog360_header, "X-Vestnik-Secret");
    }

    #[test]
    fn callback_secrets_are_checked_and_never_printed() {
        let s = Settings::from_toml(
            "[callbacks]\nmeta_app_secrets = [\"app-secret-one\"]\nwazzup_keys = [\"wazzup-key-0000000001\"]\n",
        )
        .unwrap();
        let debug = format!("{s:?}");
        assert!(!debug.contains("app-secret-one"), "{debug}");
        assert!(!debug.contains("wazzup-key-0000000001"), "{debug}");
        let err = Settings::from_toml("[callbacks]\nwazzup_keys = [\"short\"]\n").unwrap_err();
        assert!(err.to_string().contains("wazzup_keys"), "{err}");
        let err = Settings::from_toml("[callbacks]\ndialog360_header = \"X Bad\"\n").unwrap_err();
        assert!(err.to_string().contains("dialog360_header"), "{err}");
        let err = Settings::from_toml("[callbacks]\nmeta_secret = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("meta_secret"), "{err}");
    }

    #[test]
    fn redis_modes_need_their_addresses_and_hide_passwords() {
        let s = Settings::from_toml("").unwrap();
        assert_eq!(s.redis.mode, RedisMode::Single);
        assert_eq!(
            s.redis.replicas_to_wait_for(),
            0,
            "a single server has none"
        );
        let s = Settings::from_toml(
            "[redis]\nmode = \"sentinel\"\nsentinels = [\"redis://:sentinel-pw@10.0.0.5:26379\"]\nmaster_name = \"vestnik\"\nmaster_password = \"primary-pw\"\n",
        )
        .unwrap();
        assert_eq!(
            s.redis.replicas_to_wait_for(),
            1,
            "on by default with Sentinel"
        );
        assert_eq!(
            s.redis.wait_timeout(),
            std::time::Duration::from_millis(250)
        );
        let debug = format!("{s:?}");
        assert!(!debug.contains("sentinel-pw"), "{debug}");
        assert!(!debug.contains("primary-pw"), "{debug}");
        let s = Settings::from_toml(
            "[redis]\nmode = \"cluster\"\nurls = [\"redis://10.0.0.1:7000\"]\nwait_replicas = 0\n",
        )
        .unwrap();
        assert_eq!(s.redis.replicas_to_wait_for(), 0, "explicitly off");
        for (bad, says) in [
            ("mode = \"cluster\"", "redis.urls"),
            (
                "mode = \"sentinel\"\nmaster_name = \"x\"",
                "redis.sentinels",
            ),
            ("mode = \"cluster\"\nurls = [\"http://x:1\"]", "entry 1"),
            ("url = \"10.0.0.1:6379\"", "redis.url"),
            ("prefix = \"a{b}\"", "braces"),
            (
                "mode = \"cluster\"\nurls = [\"redis://x:1\"]\nwait_timeout_ms = 600",
                "below 500",
            ),
            ("mode = \"ring\"", "mode"),
        ] {
            let err = Settings::from_toml(&format!("[redis]\n{bad}\n")).unwrap_err();
            assert!(err.to_string().contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn publish_timeout_must_fit_amocrm_budget() {
        let err = Settings::from_toml("[ingest]\npublish_timeout_ms = 2500\n").unwrap_err();
        assert!(err.to_string().contains("2 s"), "{err}");
    }
}
