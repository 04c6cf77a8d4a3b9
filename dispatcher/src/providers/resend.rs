//! Resend: `POST {base_url}/emails` with an `Idempotency-Key`
//! (providers.md B6). Classified by HTTP status and the error `name`.

use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use shared::tenant::Channel;

use super::{Address, Body, Message, Outcome, Provider, excerpt, exchange, section};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_base_url")]
    base_url: String,
    /// `re_...`
    api_key: String,
    /// `Brand <noreply@brand.example>`, on a domain verified at Resend.
    from: String,
    /// Subject of plain-text messages (templates without an e-mail subject).
    #[serde(default)]
    default_subject: Option<String>,
    #[serde(default = "super::default_timeout_ms")]
    timeout_ms: u64,
}

fn default_base_url() -> String {
    "https://api.resend.com".into()
}

pub struct Resend {
    url: String,
    /// A digest of the credentials: the account a pause names.
    account: String,
    api_key: String,
    from: String,
    default_subject: Option<String>,
    timeout: Duration,
    http: reqwest::Client,
}

impl Resend {
    pub fn from_config(v: &serde_json::Value, http: reqwest::Client) -> Result<Resend, String> {
        let c: Config = section(v)?;
        if c.api_key.is_empty() || c.from.trim().is_empty() {
            return Err("api_key and from are required".into());
        }
        Ok(Resend {
            url: format!("{}/emails", c.base_url.trim_end_matches('/')),
            account: crate::shared_limit::digest(&c.api_key),
            api_key: c.api_key,
            from: c.from,
            default_subject: c.default_subject.filter(|s| !s.trim().is_empty()),
            timeout: Duration::from_millis(c.timeout_ms),
            http,
        })
    }

    async fn send_one(&self, m: &Message) -> Outcome {
        let Address::Email(to) = &m.to else {
            return Outcome::Config {
                reason: "e-mail needs an e-mail address".into(),
            };
        };
        let (subject, html, text) = match &m.body {
            Body::Email {
                subject,
                html,
                text,
            } => (subject.as_str(), html.clone(), text.as_str()),
            Body::Text(t) => {
                let Some(subject) = &self.default_subject else {
                    return Outcome::Config {
                        reason: "a plain-text message needs default_subject in the resend section"
                            .into(),
                    };
                };
                (subject.as_str(), text_to_html(t), t.as_str())
            }
            Body::Template { .. } => {
                return Outcome::Config {
                    reason: "a WhatsApp template cannot go by e-mail".into(),
                };
            }
        };
        let body = json!({
            "from": self.from,
            "to": [to],
            "subject": subject,
            "html": html,
            "text": text,
        });
        let mut request = self
            .http
            .post(&self.url)
            .bearer_auth(&self.api_key)
            .timeout(self.timeout)
            .json(&body);
        let key = idempotency_key(&m.idempotency_key);
        if let Some(k) = &key {
            request = request.header("Idempotency-Key", k);
        }
        // With the key, Resend answers a repeat with the first result
        // instead of sending again, so a timeout is worth retrying.
        match exchange(request, key.is_some()).await {
            Ok(a) => classify(a.status, &a.text, a.retry_after),
            Err(o) => o,
        }
    }
}

impl Provider for Resend {
    fn name(&self) -> &'static str {
        "resend"
    }

    fn resend_window(&self) -> Option<Duration> {
        // Resend keeps an Idempotency-Key for 24 h (B6); an hour's margin.
        Some(Duration::from_secs(23 * 3600))
    }

    fn channel(&self) -> Channel {
        Channel::Email
    }

    fn send<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Outcome> {
        self.send_one(message).boxed()
    }

    fn account(&self) -> String {
        self.account.clone()
    }

    /// Healthy: the key lists the domains (`GET /domains`).
    fn probe(&self) -> Option<BoxFuture<'_, Result<(), String>>> {
        let base = self.url.strip_suffix("/emails").unwrap_or(&self.url);
        let url = format!("{base}/domains");
        Some(
            async move { super::probe_get(&self.http, &url, &self.api_key, self.timeout).await }
                .boxed(),
        )
    }
}

/// Resend takes 1–256 characters; a longer key (or one that is not a plain
/// header value) is replaced by its SHA-256, which is as stable. No key, no
/// header.
pub(crate) fn idempotency_key(key: &str) -> Option<String> {
    if key.is_empty() {
        return None;
    }
    let plain = key.len() <= 256 && key.bytes().all(|b| b.is_ascii_graphic());
    if plain {
        return Some(key.to_string());
    }
    let digest = Sha256::digest(key.as_bytes());
    Some(digest.iter().map(|b| format!("{b:02x}")).collect())
}

/// A plain-text message as HTML: escaped, line breaks kept.
fn text_to_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' => out.push_str("<br>\n"),
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

#[derive(Deserialize)]
struct Success {
    #[serde(default)]
    id: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

pub(crate) fn classify(status: u16, text: &str, retry_after: Option<Duration>) -> Outcome {
    if (200..300).contains(&status) {
        return match serde_json::from_str::<Success>(text) {
            Ok(Success { id: Some(id) }) if !id.is_empty() => Outcome::Sent { message_id: id },
            _ => Outcome::Uncertain {
                reason: format!("HTTP {status} without an id: {}", excerpt(text)),
            },
        };
    }
    let error = serde_json::from_str::<ErrorBody>(text).ok();
    let name = error
        .as_ref()
        .and_then(|e| e.name.as_deref())
        .unwrap_or("")
        .to_ascii_lowercase();
    let reason = match error.as_ref().and_then(|e| e.message.as_deref()) {
        Some(m) if !name.is_empty() => {
            format!("resend {status} {}: {}", excerpt(&name), excerpt(m))
        }
        _ => format!("resend HTTP {status}: {}", excerpt(text)),
    }
    .trim_end()
    .to_string();
    let transient = Outcome::Transient {
        reason: reason.clone(),
        retry_after,
    };
    match (status, name.as_str()) {
        // Quotas last until the next day or month: the account pauses (its
        // probe finds the key working, so a send tries again on the
        // probes' backoff, providers.md B6).
        (429, "daily_quota_exceeded" | "monthly_quota_exceeded") => Outcome::AccountDown { reason },
        (429, _) => transient,
        // The first request with this key is still in flight: retry with the same key.
        (409, "concurrent_idempotent_requests") => transient,
        // Same key, different payload: a bug on our side.
        (409, _) => Outcome::Config { reason },
        (500..=599, _) => transient,
        (422, "invalid_to_address") => Outcome::Recipient { reason },
        // The key refused or restricted, or the sending domain not verified
        // (403 validation_error: only testing e-mails to the owner): the
        // account, not this message.
        (401, _) | (403, "restricted_api_key" | "invalid_api_key" | "validation_error") => {
            Outcome::AccountDown { reason }
        }
        // 400/422 request validation, 404.
        _ => Outcome::Config { reason },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(status: u16, name: &str, message: &str) -> String {
        json!({"statusCode": status, "message": message, "name": name}).to_string()
    }

    #[test]
    fn id_means_sent() {
        assert_eq!(
            classify(
                200,
                r#"{"id":"49a3999c-0ce1-4ea6-ab68-afcd6dc2e794"}"#,
                None
            ),
            Outcome::Sent {
                message_id: "49a3999c-0ce1-4ea6-ab68-afcd6dc2e794".into()
            }
        );
        assert_eq!(classify(200, "{}", None).class(), "uncertain");
        assert_eq!(classify(200, "", None).class(), "uncertain");
    }

    #[test]
    fn rate_limit_and_quotas_are_told_apart() {
        let wait = Some(Duration::from_secs(1));
        match classify(
            429,
            &err(429, "rate_limit_exceeded", "Too many requests"),
            wait,
        ) {
            Outcome::Transient { retry_after, .. } => assert_eq!(retry_after, wait),
            o => panic!("{o:?}"),
        }
        // A quota: the account pauses until it is over.
        assert_eq!(
            classify(429, &err(429, "daily_quota_exceeded", "q"), wait).class(),
            "account"
        );
        assert_eq!(
            classify(429, &err(429, "monthly_quota_exceeded", "q"), wait).class(),
            "account"
        );
        assert_eq!(classify(429, "", None).class(), "transient");
    }

    #[test]
    fn idempotency_conflicts_409() {
        assert_eq!(
            classify(
                409,
                &err(409, "concurrent_idempotent_requests", "in flight"),
                None
            )
            .class(),
            "transient"
        );
        assert_eq!(
            classify(
                409,
                &err(409, "invalid_idempotent_request", "payload differs"),
                None
            )
            .class(),
            "config"
        );
        assert_eq!(classify(409, "", None).class(), "config");
    }

    #[test]
    fn other_classes() {
        assert_eq!(
            classify(422, &err(422, "invalid_to_address", "bad to"), None).class(),
            "recipient"
        );
        // The key: the account, paused.
        for (status, name) in [
            (401, "missing_api_key"),
            (401, "restricted_api_key"),
            (403, "invalid_api_key"),
            (403, "restricted_api_key"),
            (403, "validation_error"),
            (429, "daily_quota_exceeded"),
            (429, "monthly_quota_exceeded"),
        ] {
            let o = classify(status, &err(status, name, "m"), None);
            assert_eq!(o.class(), "account", "{status} {name}: {o:?}");
        }
        for (status, name) in [
            (400, "validation_error"),
            (400, "invalid_idempotency_key"),
            (422, "invalid_from_address"),
            (422, "missing_required_field"),
            (422, "validation_error"),
            (404, "not_found"),
        ] {
            let o = classify(status, &err(status, name, "m"), None);
            assert_eq!(o.class(), "config", "{status} {name}: {o:?}");
        }
        assert_eq!(
            classify(500, &err(500, "application_error", "m"), None).class(),
            "transient"
        );
        assert_eq!(classify(503, "<html>", None).class(), "transient");
    }

    #[test]
    fn reasons_do_not_echo_addresses() {
        let o = classify(
            422,
            &err(
                422,
                "invalid_to_address",
                "Invalid `to` field: ivan.petrov@mail.ru is not valid",
            ),
            None,
        );
        assert_eq!(o.class(), "recipient");
        assert!(!o.reason().contains("ivan.petrov@"), "{}", o.reason());
        let o = classify(
            403,
            &err(
                403,
                "validation_error",
                "You can only send testing emails to your own email address (owner@brand.example). Call +79161234567",
            ),
            None,
        );
        assert!(!o.reason().contains("owner@brand"), "{}", o.reason());
        assert!(!o.reason().contains("9161234567"), "{}", o.reason());
    }

    #[test]
    fn long_or_odd_keys_are_hashed() {
        assert_eq!(
            idempotency_key("evt/1:email").as_deref(),
            Some("evt/1:email")
        );
        let long = "k".repeat(257);
        let hashed = idempotency_key(&long).unwrap();
        assert_eq!(hashed.len(), 64);
        assert!(hashed.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(idempotency_key(&long), Some(hashed.clone()), "stable");
        assert_ne!(idempotency_key(&"k".repeat(258)), Some(hashed));
        assert_eq!(idempotency_key(&"k".repeat(256)).unwrap().len(), 256);
        assert_eq!(idempotency_key("заказ 1").unwrap().len(), 64);
        assert_eq!(idempotency_key(""), None);
    }

    #[test]
    fn plain_text_is_escaped_for_html() {
        assert_eq!(
            text_to_html("a < b & \"c\"\nline 2"),
            "a &lt; b &amp; &quot;c&quot;<br>\nline 2"
        );
    }
}
