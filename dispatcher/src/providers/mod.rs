//! Channel providers: each module sends one message and classifies the
//! answer. A provider does not retry, fall back or deduplicate: the worker
//! does that, once, for all of them. Adding a provider is adding a file here
//! and a line in [`build`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use shared::phone::Phone;
use shared::tenant::Channel;

pub mod dialog360;
pub mod exolve;
pub mod exolve_whatsapp;
pub mod limit;
pub mod log;
pub mod meta;
pub mod resend;
pub mod smsru;
pub mod wazzup;

pub use limit::{Limited, RateLimit};

/// The worker's `sending` mark, as seen by the client-side rate limit
/// ([`Limited`]). The claim sets the mark, as the request is about to be
/// written; a send the limiter holds back lifts it before waiting and
/// resumes it when the permit comes, so a worker that dies while waiting
/// has written nothing and its message is not taken for uncertain. A send
/// that waits for nothing costs no round trip here.
pub trait Hold: Send + Sync {
    /// Before the wait (best effort: a mark left up only makes a crash in
    /// the wait look uncertain).
    fn lift(&self) -> BoxFuture<'_, ()>;
    /// After the wait, right before the write. An error stops the send
    /// (nothing was written) and says why.
    fn resume(&self) -> BoxFuture<'_, Result<(), String>>;
}

/// What to send, already rendered.
#[derive(Clone)]
pub struct Message {
    pub channel: Channel,
    pub to: Address,
    pub body: Body,
    /// Stable per (event, channel): providers with an idempotency mechanism
    /// of their own get it as a second guard behind ours.
    pub idempotency_key: String,
    pub hold: Option<Arc<dyn Hold>>,
}

#[derive(Clone)]
pub enum Address {
    Phone(Phone),
    Email(String),
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Phone(p) => write!(f, "{p}"),
            Address::Email(e) => f.write_str(&shared::mask::email(e)),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Text(String),
    /// A pre-approved WhatsApp template: positional body parameters, the
    /// header's parameter, the buttons that take a value (all rendered).
    Template {
        name: String,
        language: String,
        params: Vec<String>,
        header: Option<shared::tenant::WhatsappHeader>,
        buttons: Vec<shared::tenant::WhatsappButton>,
        /// Wazzup's id of the same template, when configured.
        wazzup_template_id: Option<String>,
    },
    Email {
        subject: String,
        html: String,
        text: String,
    },
}

/// The classified answer of one send.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Accepted by the provider, with its message id.
    Sent { message_id: String },
    /// Worth trying again (timeouts before the request went out, 5xx, 429,
    /// codes the provider documents as temporary).
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// This recipient cannot get this message on this channel (no WhatsApp,
    /// number in a stop-list, ...): no retry; the next channel may work.
    Recipient { reason: String },
    /// Our request or account is wrong (bad token, template missing, no
    /// balance): no retry until someone fixes it; alert.
    Config { reason: String },
    /// The request may or may not have been delivered (e.g. a read timeout on
    /// a provider without idempotency): retrying could send twice, so it
    /// is not retried; an admin decides.
    Uncertain { reason: String },
    /// The provider has this recipient on its stop list (SMS.ru 209): the
    /// recipient asked to hear nothing, so no other channel tries either and
    /// the tenant's own stop list takes the number.
    OptedOut { reason: String },
    /// Not sent: the fleet's rate limit (or the provider's own pause) for
    /// this account or recipient would hold it longer than `max_wait_ms`.
    /// Nothing went out, so it costs no attempt: the delivery waits in the
    /// broker and comes back.
    Throttled { reason: String, wait: Duration },
    /// The sender account itself is broken (Meta's token expired or account
    /// locked, a Wazzup channel blocked or unpaid, SMS.ru out of money or
    /// over its daily limit, a key refused): every message through it would
    /// fail the same way. The account is paused for the tenant
    /// ([`crate::pause`]); this message, like the ones after it, is held or
    /// falls back, no attempt spent.
    AccountDown { reason: String },
    /// The account may not write to this recipient's country (Meta 130497):
    /// the account is paused for that country only, not probed (a
    /// restriction is lifted by Meta, or an admin resumes it); this and the
    /// next messages to that country fall back or are held.
    CountryDown { reason: String },
}

impl Outcome {
    /// Short stable class name for metrics and DLQ headers.
    pub fn class(&self) -> &'static str {
        match self {
            Outcome::Sent { .. } => "sent",
            Outcome::Transient { .. } => "transient",
            Outcome::Recipient { .. } => "recipient",
            Outcome::Config { .. } => "config",
            Outcome::Uncertain { .. } => "uncertain",
            Outcome::Throttled { .. } => "throttled",
            Outcome::OptedOut { .. } => "opted_out",
            Outcome::AccountDown { .. } | Outcome::CountryDown { .. } => "account",
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Outcome::Sent { .. } => "sent",
            Outcome::Transient { reason, .. }
            | Outcome::Recipient { reason }
            | Outcome::Config { reason }
            | Outcome::Uncertain { reason }
            | Outcome::OptedOut { reason }
            | Outcome::AccountDown { reason }
            | Outcome::CountryDown { reason }
            | Outcome::Throttled { reason, .. } => reason,
        }
    }

    pub fn transient(reason: impl Into<String>) -> Outcome {
        Outcome::Transient {
            reason: reason.into(),
            retry_after: None,
        }
    }
}

pub trait Provider: Send + Sync {
    /// `meta`, `smsru`, ...: the key of its config section and metric label.
    fn name(&self) -> &'static str;
    fn channel(&self) -> Channel;
    fn send<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Outcome>;

    /// How long the provider itself turns a repeat of a request with the
    /// same idempotency key into no second message (Wazzup's `crmMessageId`:
    /// 60 s; Resend's `Idempotency-Key`: 24 h). Within it, a send whose
    /// outcome is uncertain is sent again with the same key; None: never.
    fn resend_window(&self) -> Option<Duration> {
        None
    }

    /// Whether the provider echoes our delivery key in its status callbacks
    /// (Meta's and 360dialog's `biz_opaque_callback_data`), so a callback
    /// settles a send whose outcome is uncertain.
    fn echoes_delivery_key(&self) -> bool {
        false
    }

    /// What the account has left, by a cheap authenticated call (SMS.ru
    /// `my/balance` and `my/limit`, Exolve `GetBalance`); `None` for a
    /// provider that has no such call. Polled by [`crate::balance`].
    fn balance(&self) -> Option<BoxFuture<'_, Result<Balance, String>>> {
        None
    }

    /// Which account [`balance`](Provider::balance) reads (a digest of its
    /// credentials, never them): a branch whose config only renames the
    /// sender shares the tenant's account, which is then read once.
    fn balance_account(&self) -> Option<String> {
        None
    }

    /// The sender account messages go through, as a pause names it: an id
    /// that is not a secret (Meta's phone number id, Wazzup's channel id) or
    /// a digest of the credentials.
    fn account(&self) -> String {
        self.name().to_string()
    }

    /// A cheap authenticated call that says whether a paused account works
    /// again ([`crate::pause`]); `None`: the provider has none, the pause is
    /// timed and the next message is the probe.
    fn probe(&self) -> Option<BoxFuture<'_, Result<(), String>>> {
        None
    }

    /// True when a provider's account notice (a webhook saying an account
    /// broke or recovered, [`shared::status::AccountNotice`]) naming
    /// `account` is about this sender: Meta's WhatsApp Business Account id
    /// (`waba_id`) or phone number id, Wazzup's channel id.
    fn answers_to(&self, _account: &str) -> bool {
        false
    }

    /// True when [`Provider::probe`] sees what the provider's notices say
    /// (Wazzup's channel state): a notice's pause is then probed like any
    /// other. Otherwise (Meta's bans and template pauses, which a phone
    /// number read does not show) only the provider's next notice or an
    /// admin resumes it.
    fn probe_sees_notices(&self) -> bool {
        false
    }
}

/// A number a provider writes as a number or as text (`"12.50"`).
pub(crate) fn json_number(v: &serde_json::Value) -> Option<f64> {
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        .filter(|f: &f64| f.is_finite())
}

/// A probe that reads something with the account's Bearer key: healthy
/// when the provider answers 2xx.
pub(crate) async fn probe_get(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    timeout: Duration,
) -> Result<(), String> {
    let request = http.get(url).bearer_auth(token).timeout(timeout);
    let a = exchange(request, true)
        .await
        .map_err(|o| o.reason().to_string())?;
    if (200..300).contains(&a.status) {
        Ok(())
    } else {
        Err(format!("HTTP {}: {}", a.status, excerpt(&a.text)))
    }
}

impl Balance {
    /// A probe's verdict on a balance: money left, and messages left today
    /// where the provider counts them.
    pub fn healthy(&self) -> Result<(), String> {
        if self.amount <= 0.0 {
            return Err(format!("balance {}", self.amount));
        }
        if self.daily_left.is_some_and(|left| left <= 0.0) {
            return Err("daily limit reached".into());
        }
        Ok(())
    }
}

/// An account's balance as its provider reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Balance {
    /// Money on the account, in the account's currency.
    pub amount: f64,
    /// Messages the account may still send today (SMS.ru's daily limit),
    /// for a provider that has such a limit.
    pub daily_left: Option<f64>,
    /// `balance_alert_below` of the provider's config: the alert fires
    /// under it.
    pub alert_below: Option<f64>,
}

/// So a built `Box<dyn Provider>` can be wrapped (e.g. in [`Limited`]).
impl<P: Provider + ?Sized> Provider for Box<P> {
    fn name(&self) -> &'static str {
        (**self).name()
    }

    fn channel(&self) -> Channel {
        (**self).channel()
    }

    fn send<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Outcome> {
        (**self).send(message)
    }

    fn resend_window(&self) -> Option<Duration> {
        (**self).resend_window()
    }

    fn echoes_delivery_key(&self) -> bool {
        (**self).echoes_delivery_key()
    }

    fn balance(&self) -> Option<BoxFuture<'_, Result<Balance, String>>> {
        (**self).balance()
    }

    fn balance_account(&self) -> Option<String> {
        (**self).balance_account()
    }

    fn account(&self) -> String {
        (**self).account()
    }

    fn probe(&self) -> Option<BoxFuture<'_, Result<(), String>>> {
        (**self).probe()
    }

    fn answers_to(&self, account: &str) -> bool {
        (**self).answers_to(account)
    }

    fn probe_sees_notices(&self) -> bool {
        (**self).probe_sees_notices()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("provider {provider}: {message}")]
pub struct ConfigError {
    pub provider: String,
    pub message: String,
}

/// Builds a tenant's providers from its `providers` config sections, each
/// behind its client-side rate limit (the section's `rate_limit` key or the
/// provider's default, see [`limit`]), shared by the fleet through `limits`.
pub fn build(
    sections: &BTreeMap<String, serde_json::Value>,
    http: &reqwest::Client,
    limits: &crate::shared_limit::SharedLimits,
) -> Result<Vec<Box<dyn Provider>>, ConfigError> {
    let mut out: Vec<Box<dyn Provider>> = Vec::new();
    for (name, section) in sections {
        let err = |message: String| ConfigError {
            provider: name.clone(),
            message,
        };
        let (section, rate_limit) = limit::split_section(name, section).map_err(err)?;
        let section = &section;
        let account = crate::shared_limit::account(name, section);
        let http = http.clone();
        let p: Box<dyn Provider> = match name.as_str() {
            "dialog360" => Box::new(dialog360::Dialog360::from_config(section, http).map_err(err)?),
            "exolve" => Box::new(exolve::Exolve::from_config(section, http).map_err(err)?),
            "exolve_whatsapp" => {
                Box::new(exolve_whatsapp::ExolveWhatsapp::from_config(section, http).map_err(err)?)
            }
            "meta" => Box::new(meta::Meta::from_config(section, http).map_err(err)?),
            "resend" => Box::new(resend::Resend::from_config(section, http).map_err(err)?),
            "smsru" => Box::new(smsru::SmsRu::from_config(section, http).map_err(err)?),
            "wazzup" => Box::new(wazzup::Wazzup::from_config(section, http).map_err(err)?),
            other => {
                return Err(err(format!(
                    "unknown provider {other:?}; known: {}",
                    KNOWN.join(", ")
                )));
            }
        };
        out.push(match rate_limit {
            Some(l) => Box::new(Limited::new(p, &l, limits.clone(), account)),
            None => p,
        });
    }
    Ok(out)
}

/// The longest one attempt through this provider can hold its lease
/// without renewing it: every try's timeout plus the waits between tries.
/// The lease must outlast it, or a second worker could claim a send still
/// in flight (and find it uncertain). A wait for a rate-limit permit does
/// not count: the permit renews the lease, and a try whose lease ran out
/// while it waited is not made.
pub fn attempt_budget(
    name: &str,
    section: &serde_json::Value,
    retry: &shared::config::QuickRetrySettings,
) -> Result<Duration, ConfigError> {
    let err = |message: String| ConfigError {
        provider: name.to_string(),
        message,
    };
    let (section, _) = limit::split_section(name, section).map_err(err)?;
    let timeout = Duration::from_millis(
        section
            .get("timeout_ms")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or_else(default_timeout_ms),
    );
    let gap = Duration::from_millis(retry.max_delay_ms.max(retry.max_retry_after_ms));
    let tries = retry.retries as u32 + 1;
    Ok(timeout * tries + gap * (tries - 1))
}

/// "Auto" provider choice when a tenant configured several for one channel
/// and forced none (`provider_for`): the official API first.
pub const AUTO_ORDER: &[&str] = &[
    "meta",
    "wazzup",
    "dialog360",
    "exolve_whatsapp",
    "smsru",
    "exolve",
    "resend",
];

pub fn auto_rank(name: &str) -> usize {
    AUTO_ORDER
        .iter()
        .position(|n| *n == name)
        .unwrap_or(AUTO_ORDER.len())
}

/// The provider names [`build`] knows, i.e. the config section names.
pub const KNOWN: &[&str] = &[
    "dialog360",
    "exolve",
    "exolve_whatsapp",
    "meta",
    "resend",
    "smsru",
    "wazzup",
];

/// Parses a provider's config section with its own struct (unknown keys are
/// an error, so a typo does not silently fall back to a default).
pub(crate) fn section<T: serde::de::DeserializeOwned>(v: &serde_json::Value) -> Result<T, String> {
    serde_json::from_value(v.clone()).map_err(|e| e.to_string())
}

/// A provider's answer trimmed and masked for logs and DLQ headers.
pub(crate) fn excerpt(body: &str) -> String {
    let trimmed: String = body.chars().take(300).collect();
    shared::mask::text(&trimmed)
}

/// A provider's answer, read the same way by every provider.
pub(crate) struct Answer {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub text: String,
}

/// Sends a request and reads the answer; a transport error is already
/// classified ([`transport_error`]).
pub(crate) async fn exchange(
    request: reqwest::RequestBuilder,
    idempotent_retry: bool,
) -> Result<Answer, Outcome> {
    let response = request
        .send()
        .await
        .map_err(|e| transport_error(&e, idempotent_retry))?;
    Ok(Answer {
        status: response.status().as_u16(),
        retry_after: retry_after(response.headers()),
        text: response.text().await.unwrap_or_default(),
    })
}

/// Classifies a transport error. `idempotent_retry` says whether the
/// provider makes a repeated request harmless; without it, a timeout after
/// the request went out is uncertain rather than transient.
pub(crate) fn transport_error(e: &reqwest::Error, idempotent_retry: bool) -> Outcome {
    if e.is_connect() {
        return Outcome::transient(format!("connection failed: {}", short(e)));
    }
    if e.is_timeout() && !idempotent_retry {
        return Outcome::Uncertain {
            reason: "timed out after the request was sent".into(),
        };
    }
    Outcome::transient(format!("request failed: {}", short(e)))
}

fn short(e: &reqwest::Error) -> String {
    // reqwest's Display includes the URL, which may carry credentials: cut it out.
    let mut s = e.to_string();
    if let Some(url) = e.url() {
        s = s.replace(url.as_str(), "<provider url>");
    }
    if let Some(cause) = std::error::Error::source(e) {
        s = format!("{s}: {cause}");
    }
    s.chars().take(200).collect()
}

/// `Retry-After` in seconds (the HTTP-date form is rare from these APIs).
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_millis((s * 1000.0) as u64))
}

pub(crate) fn default_timeout_ms() -> u64 {
    10_000
}
