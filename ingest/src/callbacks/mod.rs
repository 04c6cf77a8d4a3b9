//! Providers' delivery-status callbacks: Meta WhatsApp Cloud API, 360dialog
//! and Wazzup24 tell us what became of the messages the dispatcher sent.
//!
//! Each provider module authenticates and parses only; this module turns
//! the result into durable [`StatusUpdate`]s on the `status` route (broker
//! confirm, or the spool when the broker cannot confirm in time), counts
//! what happened and answers in the providers' terms (200 for anything we
//! took or deliberately ignored). See docs/CALLBACKS.md.

pub mod dialog360;
pub mod meta;
pub mod wazzup;

use actix_web::http::StatusCode;
use actix_web::http::header::HeaderName;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use shared::config::CallbackSettings;
use shared::status::{
    AccountNotice, DeliveryState, OptOut, STATUS_SCHEMA_VERSION, StatusMessage, StatusUpdate,
    is_stop_word,
};
use subtle::{Choice, ConstantTimeEq};

use crate::app::AppState;
use crate::durable::DurableIn;
use crate::metrics::Metrics;
use crate::problem::Problem;

/// Longest provider message id we accept (wamids are ~60 characters, Wazzup
/// ids are UUIDs); anything longer is not one of ours.
const MAX_MESSAGE_ID: usize = 256;
/// Longest error text kept from a provider.
const MAX_ERROR_TEXT: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Meta,
    Dialog360,
    Wazzup,
}

impl Provider {
    /// The `provider` of a [`StatusUpdate`] and the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Meta => "meta",
            Provider::Dialog360 => "dialog360",
            Provider::Wazzup => "wazzup",
        }
    }

    fn config_keys(self) -> &'static str {
        match self {
            Provider::Meta => "callbacks.meta_app_secrets",
            Provider::Dialog360 => "callbacks.dialog360_secrets",
            Provider::Wazzup => "callbacks.wazzup_keys",
        }
    }

    fn how_to_authenticate(self) -> &'static str {
        match self {
            Provider::Meta => "X-Hub-Signature-256 must be sha256=<HMAC-SHA256 of the body>",
            Provider::Dialog360 => "send the configured secret header, or ?key=",
            Provider::Wazzup => "pass the key as ?key= or Authorization: Bearer",
        }
    }
}

/// Secrets compared in constant time: both sides are hashed first, so
/// neither the content nor the length of a configured secret shows in the
/// timing, and every configured secret is compared every time.
#[derive(Clone, Default)]
pub struct Secrets {
    digests: Vec<[u8; 32]>,
}

impl Secrets {
    pub fn new<S: AsRef<str>>(secrets: &[S]) -> Secrets {
        Secrets {
            digests: secrets
                .iter()
                .map(|s| s.as_ref())
                .filter(|s| !s.is_empty())
                .map(|s| Sha256::digest(s.as_bytes()).into())
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    pub fn matches(&self, presented: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let hit = self
            .digests
            .iter()
            .fold(Choice::from(0), |acc, d| acc | d.ct_eq(&presented));
        bool::from(hit)
    }

    /// True when any of the presented values matches (every one is checked).
    pub fn matches_any<'a>(&self, presented: impl IntoIterator<Item = &'a str>) -> bool {
        presented
            .into_iter()
            .fold(false, |acc, p| self.matches(p) | acc)
    }
}

/// The callback secrets, ready to check. Built once at start-up.
#[derive(Clone)]
pub struct Callbacks {
    pub(crate) meta_verify_token: Secrets,
    pub(crate) meta_app_secrets: Vec<Vec<u8>>,
    pub(crate) dialog360_header: HeaderName,
    pub(crate) dialog360: Secrets,
    pub(crate) wazzup: Secrets,
    pub(crate) stop_words: Vec<String>,
}

impl Callbacks {
    pub fn new(s: &CallbackSettings) -> Result<Callbacks, String> {
        let dialog360_header = HeaderName::from_bytes(s.dialog360_header.as_bytes())
            .map_err(|_| "callbacks.dialog360_header is not a valid header name".to_string())?;
        Ok(Callbacks {
            meta_verify_token: Secrets::new(std::slice::from_ref(&s.meta_verify_token)),
            meta_app_secrets: s
                .meta_app_secrets
                .iter()
                .filter(|k| !k.is_empty())
                .map(|k| k.as_bytes().to_vec())
                .collect(),
            dialog360_header,
            dialog360: Secrets::new(&s.dialog360_secrets),
            wazzup: Secrets::new(&s.wazzup_keys),
            stop_words: s.stop_words.clone(),
        })
    }

    /// Which endpoints have their secrets (for the start-up log).
    pub fn configured(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if !self.meta_app_secrets.is_empty() {
            out.push("meta");
        }
        if !self.dialog360.is_empty() {
            out.push("dialog360");
        }
        if !self.wazzup.is_empty() {
            out.push("wazzup");
        }
        out
    }
}

/// Every refusal of a callback, in the same JSON shape as [`Problem`]:
/// `{"error": "<code>", "message": "..."}`. Never echoes a secret or a
/// value from the body.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    #[error("{} callbacks are not configured on this server ({} is empty)", .0.as_str(), .0.config_keys())]
    NotConfigured(Provider),
    #[error("missing or invalid credentials for {} callbacks: {}", .0.as_str(), .0.how_to_authenticate())]
    Unauthorized(Provider),
    #[error("verification refused: hub.mode must be subscribe and hub.verify_token must match")]
    Forbidden,
    #[error("{0}")]
    Malformed(String),
    #[error("status updates could not be made durable ({0}); retry later")]
    Unavailable(String),
    #[error(transparent)]
    Request(#[from] Problem),
}

impl CallbackError {
    pub fn code(&self) -> &'static str {
        match self {
            CallbackError::NotConfigured(_) => "callback_not_configured",
            CallbackError::Unauthorized(_) => "unauthorized",
            CallbackError::Forbidden => "forbidden",
            CallbackError::Malformed(_) => "malformed_body",
            CallbackError::Unavailable(_) => "unavailable",
            CallbackError::Request(p) => p.code(),
        }
    }

    pub fn is_server_error(&self) -> bool {
        self.status_code().is_server_error()
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: String,
}

impl ResponseError for CallbackError {
    fn status_code(&self) -> StatusCode {
        match self {
            CallbackError::NotConfigured(_) | CallbackError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            CallbackError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            CallbackError::Forbidden => StatusCode::FORBIDDEN,
            CallbackError::Malformed(_) => StatusCode::BAD_REQUEST,
            CallbackError::Request(p) => p.status_code(),
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let CallbackError::Request(p) = self {
            return p.error_response();
        }
        let mut r = HttpResponse::build(self.status_code());
        if let CallbackError::Unavailable(_) = self {
            r.insert_header(("Retry-After", "5"));
        }
        r.json(ErrorBody {
            error: self.code(),
            message: self.to_string(),
        })
    }
}

/// What one callback body carried.
#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    /// Status updates to publish, in body order.
    pub updates: Vec<StatusUpdate>,
    /// Inbound (customer → business) messages: not ours to handle, counted.
    pub inbound: usize,
    /// Account/app-level errors reported by the provider (logged, counted).
    pub errors: usize,
    /// Status items we do not turn into updates (unknown or `edited`
    /// status, no message id), counted.
    pub ignored: usize,
    /// Wazzup's registration ping `{"test": true}`.
    pub ping: bool,
    /// The inbound messages' texts, to be compared with the stop words
    /// (only in memory: the text is the customer's own writing).
    pub texts: Vec<Inbound>,
    /// Sender accounts (or templates) that broke or recovered.
    pub notices: Vec<AccountNotice>,
}

/// One inbound text message: who wrote it, to which of our numbers.
#[derive(Debug, PartialEq)]
pub struct Inbound {
    /// Meta/360dialog `metadata.phone_number_id`, Wazzup `channelId`.
    pub account: String,
    /// The sender's number as the provider gives it (digits).
    pub sender: String,
    pub text: String,
    pub at: Option<DateTime<Utc>>,
}

/// Builds a normalised update; the recipient is never part of it (the
/// dispatcher matches by the provider's message id).
pub(crate) fn update(
    provider: Provider,
    message_id: &str,
    state: DeliveryState,
    at: Option<DateTime<Utc>>,
    received_at: DateTime<Utc>,
    error_code: Option<String>,
    error: Option<&str>,
) -> Option<StatusUpdate> {
    let message_id = message_id.trim();
    if message_id.is_empty() || message_id.chars().count() > MAX_MESSAGE_ID {
        return None;
    }
    Some(StatusUpdate {
        schema: STATUS_SCHEMA_VERSION,
        provider: provider.as_str().to_string(),
        message_id: message_id.to_string(),
        state,
        at: at.unwrap_or(received_at),
        received_at,
        error_code: error_code
            .map(|c| shared::mask::text(&truncate(&c, 64)))
            .filter(|c| !c.is_empty()),
        error: error
            .map(|e| shared::mask::text(&truncate(e.trim(), MAX_ERROR_TEXT)))
            .filter(|e| !e.is_empty()),
        delivery_key: None,
    })
}

/// A JSON number or a string of one, as a code (`130472` or `"130472"`).
pub(crate) fn code_string(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// serde_json's error without the offending value: where it is and what kind.
pub(crate) fn describe_json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Syntax => "invalid JSON",
        Category::Eof => "truncated JSON",
        Category::Data => "unexpected value type",
        Category::Io => "unreadable body",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

/// The value of `?name=` in the query string, if present.
pub(crate) fn query_param(req: &HttpRequest, name: &str) -> Option<String> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(req.query_string())
        .ok()?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// The token of `Authorization: Bearer <token>`.
pub(crate) fn bearer(req: &HttpRequest) -> Option<&str> {
    let auth = req.headers().get("authorization")?.to_str().ok()?.trim();
    let (scheme, token) = auth.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The opt-outs among inbound texts: a message that is only a stop word,
/// from a sender whose number reads as a phone. The sender is sealed when
/// the ingest has a key.
fn opt_outs(
    state: &AppState,
    provider: Provider,
    texts: &[Inbound],
    received_at: DateTime<Utc>,
) -> Vec<OptOut> {
    texts
        .iter()
        .filter(|t| is_stop_word(&t.text, &state.callbacks.stop_words))
        .filter_map(|t| {
            let digits = t.sender.trim().trim_start_matches('+');
            let phone = shared::phone::normalise(&format!("+{digits}"))
                .inspect_err(|_| {
                    tracing::info!(
                        provider = provider.as_str(),
                        "a stop word from a sender that is not a phone number: ignored"
                    );
                })
                .ok()?;
            tracing::info!(provider = provider.as_str(), sender = %shared::mask::phone(phone.e164()),
                "a stop word: the sender asks to be opted out");
            Some(OptOut {
                schema: STATUS_SCHEMA_VERSION,
                provider: provider.as_str().to_string(),
                account: t.account.clone(),
                sender: state.seal(phone.e164()),
                at: t.at.unwrap_or(received_at),
                received_at,
                opt_out: true,
            })
        })
        .collect()
}

/// Makes the parsed updates (and opt-outs) durable and answers 200 with
/// what was done. Returns the answer and the metric outcome.
pub async fn accept(
    state: &AppState,
    provider: Provider,
    parsed: Parsed,
) -> Result<(HttpResponse, &'static str), CallbackError> {
    let received_at = Utc::now();
    let stops = opt_outs(state, provider, &parsed.texts, received_at);
    let m = &state.metrics.callback_items;
    let p = provider.as_str();
    m.with_label_values(&[p, "status"])
        .inc_by(parsed.updates.len() as u64);
    m.with_label_values(&[p, "inbound_message"])
        .inc_by(parsed.inbound as u64);
    m.with_label_values(&[p, "error"])
        .inc_by(parsed.errors as u64);
    m.with_label_values(&[p, "ignored_status"])
        .inc_by(parsed.ignored as u64);
    m.with_label_values(&[p, "opt_out"])
        .inc_by(stops.len() as u64);
    m.with_label_values(&[p, "account_notice"])
        .inc_by(parsed.notices.len() as u64);
    let answer = |outcome: &'static str, queued: usize| {
        HttpResponse::Ok().json(CallbackAnswer {
            status: outcome,
            queued,
            inbound_ignored: parsed.inbound,
            statuses_ignored: parsed.ignored,
            opt_outs: stops.len(),
            account_notices: parsed.notices.len(),
        })
    };
    if parsed.updates.is_empty() && stops.is_empty() && parsed.notices.is_empty() {
        let outcome = if parsed.ping { "ping" } else { "ignored" };
        tracing::debug!(
            provider = p,
            inbound = parsed.inbound,
            ignored = parsed.ignored,
            "callback without status updates"
        );
        return Ok((answer(outcome, 0), outcome));
    }
    let messages: Vec<StatusMessage> = parsed
        .updates
        .iter()
        .cloned()
        .map(StatusMessage::Update)
        .chain(stops.iter().cloned().map(StatusMessage::OptOut))
        .chain(parsed.notices.iter().cloned().map(StatusMessage::Notice))
        .collect();
    let durable_in = state
        .durable
        .store_statuses(&messages)
        .await
        .map_err(|e| CallbackError::Unavailable(e.to_string()))?;
    for u in &parsed.updates {
        tracing::debug!(provider = p, message_id = %u.message_id, state = %u.state,
            error_code = ?u.error_code, "status update queued");
    }
    let outcome = match durable_in {
        DurableIn::Broker => "queued",
        DurableIn::Spool => "spooled",
    };
    Ok((answer("queued", messages.len()), outcome))
}

/// A callback's answer (200).
#[derive(Serialize, utoipa::ToSchema)]
pub struct CallbackAnswer {
    /// `queued`, `ignored` (nothing to record) or `ping` (Wazzup's test).
    status: &'static str,
    /// Status updates, opt-outs and account notices made durable.
    queued: usize,
    /// Inbound messages seen (those that are a stop word also count in `opt_outs`).
    inbound_ignored: usize,
    /// Status items that could not be used (no id, unknown state, ...).
    statuses_ignored: usize,
    /// Senders of a stop word, opted out.
    opt_outs: usize,
    /// Sender accounts or templates reported broken or recovered, queued
    /// for the dispatchers (pause or resume).
    account_notices: usize,
}

/// Counts and logs a callback's result; the handlers' last step.
pub fn finish(
    metrics: &Metrics,
    provider: Provider,
    result: Result<(HttpResponse, &'static str), CallbackError>,
) -> Result<HttpResponse, CallbackError> {
    let outcome = match &result {
        Ok((_, outcome)) => *outcome,
        Err(e) => e.code(),
    };
    metrics
        .callbacks
        .with_label_values(&[provider.as_str(), outcome])
        .inc();
    match result {
        Ok((resp, _)) => Ok(resp),
        Err(e) => {
            if e.is_server_error() {
                tracing::warn!(provider = provider.as_str(), error = %e, "callback not accepted");
            } else {
                tracing::info!(
                    provider = provider.as_str(),
                    error = e.code(),
                    "callback refused"
                );
            }
            Err(e)
        }
    }
}

#[cfg(test)]
pub(crate) fn fixture(name: &str) -> Vec<u8> {
    crate::sources::fixture(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_match_exactly_and_any_of_several() {
        let s = Secrets::new(&["first-secret-000001", "second-secret-00002"]);
        assert!(s.matches("first-secret-000001"));
        assert!(s.matches("second-secret-00002"));
        assert!(!s.matches("first-secret-00000"));
        assert!(!s.matches("first-secret-0000011"));
        assert!(!s.matches(""));
        assert!(s.matches_any(["wrong", "second-secret-00002"]));
        assert!(!s.matches_any(["wrong", "also-wrong"]));
    }

    #[test]
    fn empty_secrets_never_match() {
        let s = Secrets::new(&[""]);
        assert!(s.is_empty());
        assert!(!s.matches(""));
    }

    #[test]
    fn update_masks_error_text_and_refuses_bad_ids() {
        let now = Utc::now();
        let u = update(
            Provider::Meta,
            "wamid.1",
            DeliveryState::Failed,
            None,
            now,
            Some("131026".into()),
            Some("Message undeliverable to +7 916 123-45-67"),
        )
        .unwrap();
        assert_eq!(u.at, now);
        assert_eq!(u.error_code.as_deref(), Some("131026"));
        let e = u.error.unwrap();
        assert!(!e.contains("123-45-67"), "{e}");
        assert!(e.starts_with("Message undeliverable"), "{e}");
        let long = "x".repeat(MAX_MESSAGE_ID + 1);
        assert!(
            update(
                Provider::Meta,
                &long,
                DeliveryState::Sent,
                None,
                now,
                None,
                None
            )
            .is_none()
        );
        assert!(
            update(
                Provider::Meta,
                "  ",
                DeliveryState::Sent,
                None,
                now,
                None,
                None
            )
            .is_none()
        );
    }

    #[test]
    fn errors_answer_json_problems_without_secrets() {
        let e = CallbackError::NotConfigured(Provider::Wazzup);
        assert_eq!(e.status_code(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(e.to_string().contains("callbacks.wazzup_keys"), "{e}");
        assert_eq!(
            CallbackError::Unauthorized(Provider::Meta).status_code(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            CallbackError::Forbidden.status_code(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            CallbackError::Request(Problem::TooLarge { size: 2, limit: 1 }).status_code(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
