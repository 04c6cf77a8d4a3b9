//! Meta WhatsApp Cloud API: `POST {base_url}/{phone_number_id}/messages`.
//! Classified by `error.code` (not by HTTP status), as providers.md B1 says.

use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::json;
use shared::phone::Phone;
use shared::tenant::{Channel, WhatsappButton, WhatsappHeader};

use super::{Address, Body, Message, Outcome, Provider, excerpt, exchange, section};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_base_url")]
    base_url: String,
    phone_number_id: String,
    access_token: String,
    /// The WhatsApp Business Account the number belongs to: Meta's
    /// `account_update` and template notices name it (optional; without it
    /// only pauses from failed sends apply).
    #[serde(default)]
    waba_id: Option<String>,
    #[serde(default = "super::default_timeout_ms")]
    timeout_ms: u64,
}

fn default_base_url() -> String {
    "https://graph.facebook.com/v21.0".into()
}

pub struct Meta {
    url: String,
    /// `{base_url}/{phone_number_id}`: the number, read by the probe.
    number_url: String,
    phone_number_id: String,
    waba_id: Option<String>,
    token: String,
    timeout: Duration,
    http: reqwest::Client,
}

impl Meta {
    pub fn from_config(v: &serde_json::Value, http: reqwest::Client) -> Result<Meta, String> {
        let c: Config = section(v)?;
        if c.phone_number_id.is_empty() || c.access_token.is_empty() {
            return Err("phone_number_id and access_token are required".into());
        }
        let number_url = format!("{}/{}", c.base_url.trim_end_matches('/'), c.phone_number_id);
        Ok(Meta {
            url: format!("{number_url}/messages"),
            number_url,
            phone_number_id: c.phone_number_id,
            waba_id: c
                .waba_id
                .map(|w| w.trim().to_string())
                .filter(|w| !w.is_empty()),
            token: c.access_token,
            timeout: Duration::from_millis(c.timeout_ms),
            http,
        })
    }

    async fn send_one(&self, m: &Message) -> Outcome {
        let request = self
            .http
            .post(&self.url)
            .bearer_auth(&self.token)
            .timeout(self.timeout);
        send_cloud_api(request, m, classify).await
    }
}

/// Meta's limit on `biz_opaque_callback_data` (providers.md B7).
const MAX_CALLBACK_DATA: usize = 512;

/// One Cloud API send, for Meta and for 360dialog (which differ only in
/// how the request is addressed and authenticated, and in how their own
/// non-Meta errors read): body, send, classify.
pub(crate) async fn send_cloud_api(
    request: reqwest::RequestBuilder,
    m: &Message,
    classify: fn(u16, &str, Option<Duration>) -> Outcome,
) -> Outcome {
    let Address::Phone(phone) = &m.to else {
        return Outcome::Config {
            reason: "WhatsApp needs a phone number".into(),
        };
    };
    let mut body = match cloud_api_body(phone, &m.body) {
        Ok(b) => b,
        Err(o) => return o,
    };
    // Echoed in every status callback of this message: a `sent` for a send
    // whose answer was lost tells the dispatcher it arrived (B7).
    if m.idempotency_key.len() <= MAX_CALLBACK_DATA {
        body["biz_opaque_callback_data"] = json!(m.idempotency_key);
    }
    // No idempotency key in the Cloud API: a timeout after sending is uncertain.
    match exchange(request.json(&body), false).await {
        Ok(a) => for_template(&m.body, classify(a.status, &a.text, a.retry_after)),
        Err(o) => o,
    }
}

/// A template error (Meta's 132xxx: missing in this language, paused,
/// disabled, parameters not matching) is a config error of that template:
/// its name and language lead the reason, so the alert says which one to
/// fix. Not retried, like every config error.
pub(crate) fn for_template(body: &Body, outcome: Outcome) -> Outcome {
    match (body, outcome) {
        (Body::Template { name, language, .. }, Outcome::Config { reason })
            if reason.starts_with("meta 132") =>
        {
            Outcome::Config {
                reason: format!("template {name} ({language}): {reason}"),
            }
        }
        (_, o) => o,
    }
}

/// The Cloud API request body for one message (providers.md B1); 360dialog
/// sends the same body (B2), so both build it here.
pub(crate) fn cloud_api_body(phone: &Phone, body: &Body) -> Result<serde_json::Value, Outcome> {
    match body {
        Body::Text(text) => Ok(json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": phone.e164(),
            "type": "text",
            "text": {"preview_url": false, "body": text},
        })),
        Body::Template {
            name,
            language,
            params,
            header,
            buttons,
            ..
        } => {
            let mut components = Vec::new();
            if let Some(h) = header {
                let parameter = match h {
                    WhatsappHeader::Text { text } => json!({"type": "text", "text": text}),
                    WhatsappHeader::Image { link } => {
                        json!({"type": "image", "image": {"link": link}})
                    }
                    WhatsappHeader::Document { link, filename } => {
                        let mut document = json!({"link": link});
                        if let Some(f) = filename {
                            document["filename"] = json!(f);
                        }
                        json!({"type": "document", "document": document})
                    }
                };
                components.push(json!({"type": "header", "parameters": [parameter]}));
            }
            if !params.is_empty() {
                let parameters: Vec<_> = params
                    .iter()
                    .map(|p| json!({"type": "text", "text": p}))
                    .collect();
                components.push(json!({"type": "body", "parameters": parameters}));
            }
            for b in buttons {
                components.push(match b {
                    WhatsappButton::Url { index, suffix } => json!({
                        "type": "button", "sub_type": "url", "index": index.to_string(),
                        "parameters": [{"type": "text", "text": suffix}],
                    }),
                    WhatsappButton::QuickReply { index, payload } => json!({
                        "type": "button", "sub_type": "quick_reply", "index": index.to_string(),
                        "parameters": [{"type": "payload", "payload": payload}],
                    }),
                });
            }
            Ok(json!({
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": phone.e164(),
                "type": "template",
                "template": {"name": name, "language": {"code": language}, "components": components},
            }))
        }
        Body::Email { .. } => Err(Outcome::Config {
            reason: "an e-mail body cannot go to WhatsApp".into(),
        }),
    }
}

impl Provider for Meta {
    fn name(&self) -> &'static str {
        "meta"
    }

    fn echoes_delivery_key(&self) -> bool {
        true
    }

    fn channel(&self) -> Channel {
        Channel::Whatsapp
    }

    fn send<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Outcome> {
        self.send_one(message).boxed()
    }

    fn account(&self) -> String {
        self.phone_number_id.clone()
    }

    fn answers_to(&self, account: &str) -> bool {
        self.waba_id.as_deref() == Some(account) || self.phone_number_id == account
    }

    /// Healthy: the phone number reads with the token (`GET
    /// /{phone_number_id}?fields=id`).
    fn probe(&self) -> Option<BoxFuture<'_, Result<(), String>>> {
        let url = format!("{}?fields=id", self.number_url);
        Some(
            async move { super::probe_get(&self.http, &url, &self.token, self.timeout).await }
                .boxed(),
        )
    }
}

#[derive(Deserialize)]
struct Success {
    #[serde(default)]
    messages: Vec<MessageId>,
}

#[derive(Deserialize)]
struct MessageId {
    id: String,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: i64,
    #[serde(default)]
    message: String,
    #[serde(default)]
    error_data: Option<ErrorData>,
}

#[derive(Deserialize)]
struct ErrorData {
    #[serde(default)]
    details: String,
}

pub(crate) fn classify(status: u16, text: &str, retry_after: Option<Duration>) -> Outcome {
    if (200..300).contains(&status) {
        return match serde_json::from_str::<Success>(text) {
            Ok(s) => match s.messages.into_iter().next() {
                Some(m) => Outcome::Sent { message_id: m.id },
                None => Outcome::Uncertain {
                    reason: format!("HTTP {status} without a message id: {}", excerpt(text)),
                },
            },
            Err(_) => Outcome::Uncertain {
                reason: format!("HTTP {status} with an unreadable body: {}", excerpt(text)),
            },
        };
    }
    let Ok(ErrorEnvelope { error }) = serde_json::from_str::<ErrorEnvelope>(text) else {
        // No Meta error object: go by HTTP status.
        let reason = format!("HTTP {status}: {}", excerpt(text));
        return match status {
            429 | 500..=599 => Outcome::Transient {
                reason,
                retry_after,
            },
            _ => Outcome::Config { reason },
        };
    };
    let details = error.error_data.map(|d| d.details).unwrap_or_default();
    let reason = format!(
        "meta {}: {} {}",
        error.code,
        excerpt(&error.message),
        excerpt(&details)
    )
    .trim_end()
    .to_string();
    match error.code {
        // Temporary: API down, rate limits, throughput.
        1 | 2 | 4 | 80007 | 130429 | 131000 | 131016 | 133004 => Outcome::Transient {
            reason,
            retry_after,
        },
        // Pair rate limit: this recipient only, wait at least 6 s.
        131056 => Outcome::Transient {
            reason,
            retry_after: Some(
                retry_after
                    .unwrap_or(Duration::ZERO)
                    .max(Duration::from_secs(6)),
            ),
        },
        // The account: token expired or invalid, blocked for policy,
        // locked, its payment (providers.md): pause it.
        190 | 368 | 131031 | 131042 => Outcome::AccountDown { reason },
        // Restricted from messaging users in this recipient's country.
        130497 => Outcome::CountryDown { reason },
        // This recipient cannot get this message on WhatsApp.
        131026 | 131047 | 131051 | 131021 | 130472 | 131049 | 131050 => {
            Outcome::Recipient { reason }
        }
        // Request, template, token, permission, account: fix and alert, no hot retry.
        _ => Outcome::Config { reason },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/fixtures")
            .join(name);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn a_text_header_and_no_body_parameters_give_only_the_header() {
        let phone = shared::phone::normalise("+79161234567").unwrap();
        let body = Body::Template {
            name: "visit_thanks".into(),
            language: "ru".into(),
            params: vec![],
            header: Some(WhatsappHeader::Text {
                text: "Кофейня".into(),
            }),
            buttons: vec![],
            wazzup_template_id: None,
        };
        let json = cloud_api_body(&phone, &body).unwrap();
        assert_eq!(
            json["template"],
            json!({"name": "visit_thanks", "language": {"code": "ru"}, "components": [
                {"type": "header", "parameters": [{"type": "text", "text": "Кофейня"}]}
            ]})
        );
        // A 132xxx answer names the template; other config errors do not.
        let refused = |code: i64| Outcome::Config {
            reason: format!("meta {code}: m"),
        };
        assert_eq!(
            for_template(&body, refused(132015)).reason(),
            "template visit_thanks (ru): meta 132015: m"
        );
        assert_eq!(for_template(&body, refused(190)).reason(), "meta 190: m");
    }

    #[test]
    fn success_fixture_gives_the_wamid() {
        let o = classify(
            200,
            &fixture("meta_wa_send_success_docs_barokatu.json"),
            None,
        );
        assert!(
            matches!(o, Outcome::Sent { ref message_id } if message_id.starts_with("wamid.")),
            "{o:?}"
        );
    }

    #[test]
    fn real_131009_log_is_a_config_error() {
        let o = classify(
            400,
            &fixture("meta_wa_send_error_131009_real_log.json"),
            None,
        );
        assert_eq!(o.class(), "config", "{o:?}");
        assert!(o.reason().contains("131009"));
    }

    #[test]
    fn classes_follow_the_error_code_not_the_http_status() {
        let err = |code: i64| {
            format!(
                r#"{{"error":{{"message":"m","type":"OAuthException","code":{code},"fbtrace_id":"x"}}}}"#
            )
        };
        assert_eq!(classify(400, &err(131026), None).class(), "recipient");
        assert_eq!(classify(400, &err(131047), None).class(), "recipient");
        assert_eq!(classify(400, &err(130429), None).class(), "transient");
        assert_eq!(classify(400, &err(131000), None).class(), "transient");
        assert_eq!(classify(401, &err(190), None).class(), "account");
        assert_eq!(classify(400, &err(131031), None).class(), "account");
        assert_eq!(classify(400, &err(131042), None).class(), "account");
        assert_eq!(classify(400, &err(132001), None).class(), "config");
        assert_eq!(classify(400, &err(368), None).class(), "account");
        assert!(matches!(
            classify(400, &err(130497), None),
            Outcome::CountryDown { .. }
        ));
        match classify(400, &err(131056), None) {
            Outcome::Transient { retry_after, .. } => {
                assert!(retry_after >= Some(Duration::from_secs(6)))
            }
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn bodies_without_meta_error_go_by_status() {
        assert_eq!(
            classify(503, "<html>down</html>", None).class(),
            "transient"
        );
        assert_eq!(
            classify(429, "", Some(Duration::from_secs(2))).class(),
            "transient"
        );
        assert_eq!(classify(404, "not found", None).class(), "config");
        assert_eq!(classify(200, "{}", None).class(), "uncertain");
    }

    #[test]
    fn reasons_do_not_echo_phone_numbers() {
        let body = r#"{"error":{"message":"(#131026) Message undeliverable to +79161234567","code":131026,"error_data":{"details":"79161234567 is not on WhatsApp"}}}"#;
        let o = classify(400, body, None);
        assert!(!o.reason().contains("9161234567"), "{}", o.reason());
    }
}
