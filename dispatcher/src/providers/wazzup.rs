//! Wazzup24 API v3: `POST {base_url}/v3/message` (providers.md B3).
//! Classified by the `error` code of the answer, compared case- and
//! underscore-insensitively because the docs spell them both ways.

use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::json;
use shared::tenant::Channel;

use super::{Address, Body, Message, Outcome, Provider, excerpt, exchange, section};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_base_url")]
    base_url: String,
    api_key: String,
    /// The channel's GUID (from `GET /v3/channels` or its settings URL).
    channel_id: String,
    /// `whatsapp` also for WABA channels.
    #[serde(default = "default_chat_type")]
    chat_type: String,
    #[serde(default = "super::default_timeout_ms")]
    timeout_ms: u64,
}

pub const DEFAULT_BASE_URL: &str = "https://api.wazzup24.com";

fn default_base_url() -> String {
    DEFAULT_BASE_URL.into()
}

fn default_chat_type() -> String {
    "whatsapp".into()
}

pub struct Wazzup {
    url: String,
    api_key: String,
    channel_id: String,
    chat_type: String,
    timeout: Duration,
    http: reqwest::Client,
}

impl Wazzup {
    pub fn from_config(v: &serde_json::Value, http: reqwest::Client) -> Result<Wazzup, String> {
        let c: Config = section(v)?;
        if c.api_key.is_empty() || c.chat_type.is_empty() {
            return Err("api_key and chat_type are required".into());
        }
        if uuid::Uuid::parse_str(&c.channel_id).is_err() {
            return Err("channel_id is not a channel GUID".into());
        }
        let mut w = Wazzup::for_route(&c.base_url, &c.api_key, &c.channel_id, &c.chat_type, http);
        w.timeout = Duration::from_millis(c.timeout_ms);
        Ok(w)
    }

    /// A Wazzup account given by the webhook URL (seed 000's `key_api`,
    /// `channel_id`, `chat_type`, validated at ingest) instead of tenant
    /// config. `base_url` is [`DEFAULT_BASE_URL`] outside tests.
    pub fn for_route(
        base_url: &str,
        api_key: &str,
        channel_id: &str,
        chat_type: &str,
        http: reqwest::Client,
    ) -> Wazzup {
        Wazzup {
            url: format!("{}/v3/message", base_url.trim_end_matches('/')),
            api_key: api_key.into(),
            channel_id: channel_id.into(),
            chat_type: chat_type.into(),
            timeout: Duration::from_millis(super::default_timeout_ms()),
            http,
        }
    }

    async fn send_one(&self, m: &Message) -> Outcome {
        let Address::Phone(phone) = &m.to else {
            return Outcome::Config {
                reason: "Wazzup needs a phone number".into(),
            };
        };
        let mut body = json!({
            "channelId": self.channel_id,
            "chatType": self.chat_type,
            "chatId": phone.digits(),
            "crmMessageId": m.idempotency_key,
            // Automatic notifications must not clear the managers' unanswered counter.
            "clearUnanswered": false,
        });
        match &m.body {
            Body::Text(t) => body["text"] = json!(t),
            // A WABA template by Wazzup's own id (its GUID, not Meta's name
            // and language), the body parameters as `templateValues`
            // (providers.md B1: unverified beyond the field names).
            Body::Template {
                wazzup_template_id: Some(id),
                params,
                header,
                buttons,
                ..
            } => {
                if header.is_some() || !buttons.is_empty() {
                    return Outcome::Config {
                        reason: "Wazzup templates take body parameters only (templateValues): \
                                 no header or button values"
                            .into(),
                    };
                }
                body["templateId"] = json!(id);
                body["templateValues"] = json!(params);
            }
            Body::Template { name, .. } => {
                return Outcome::Config {
                    reason: format!(
                        "template {name}: Wazzup sends WABA templates by its own id; set wazzup_template_id"
                    ),
                };
            }
            Body::Email { .. } => {
                return Outcome::Config {
                    reason: "an e-mail body cannot go to WhatsApp".into(),
                };
            }
        }
        let request = self
            .http
            .post(&self.url)
            .bearer_auth(&self.api_key)
            .timeout(self.timeout)
            .json(&body);
        // crmMessageId turns a repeat within 60 s into REPEATED_CRM_MESSAGE_ID:
        // a timeout is uncertain, and the worker repeats it with the same id
        // only within that window (`resend_window`), never 9.5 min later.
        match exchange(request, false).await {
            Ok(a) => classify(a.status, &a.text, a.retry_after, &m.idempotency_key),
            Err(o) => o,
        }
    }
}

impl Provider for Wazzup {
    fn name(&self) -> &'static str {
        "wazzup"
    }

    fn resend_window(&self) -> Option<Duration> {
        // Wazzup keeps a crmMessageId for 60 s (A3); a margin for clocks and the trip.
        Some(Duration::from_secs(50))
    }

    fn channel(&self) -> Channel {
        Channel::Whatsapp
    }

    fn send<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Outcome> {
        self.send_one(message).boxed()
    }

    fn account(&self) -> String {
        self.channel_id.clone()
    }

    fn answers_to(&self, account: &str) -> bool {
        self.channel_id == account
    }

    /// The probe reads the channel's state, as `channelsUpdates` reports it.
    fn probe_sees_notices(&self) -> bool {
        true
    }

    /// Healthy: `GET /v3/channels` lists our channel as `active`.
    fn probe(&self) -> Option<BoxFuture<'_, Result<(), String>>> {
        Some(
            async move {
                let base = self.url.strip_suffix("/v3/message").unwrap_or(&self.url);
                let request = self
                    .http
                    .get(format!("{base}/v3/channels"))
                    .bearer_auth(&self.api_key)
                    .timeout(self.timeout);
                let a = super::exchange(request, true)
                    .await
                    .map_err(|o| o.reason().to_string())?;
                if !(200..300).contains(&a.status) {
                    return Err(format!("HTTP {}: {}", a.status, excerpt(&a.text)));
                }
                let channels: Vec<serde_json::Value> = serde_json::from_str(&a.text)
                    .map_err(|_| format!("not a channel list: {}", excerpt(&a.text)))?;
                let state = channels
                    .iter()
                    .find(|c| c["channelId"] == self.channel_id.as_str())
                    .map(|c| c["state"].as_str().unwrap_or("").to_string());
                match state.as_deref() {
                    Some("active") => Ok(()),
                    Some(other) => Err(format!("channel state {}", excerpt(other))),
                    None => Err("channel not in the account's list".into()),
                }
            }
            .boxed(),
        )
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Success {
    #[serde(default)]
    message_id: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

/// `REPEATED_CRM_MESSAGE_ID`, `repeatedCrmMessageId` → `repeatedcrmmessageid`.
fn fold(code: &str) -> String {
    code.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

#[derive(Debug, PartialEq)]
enum Class {
    Transient,
    Recipient,
    Config,
}

/// providers.md B3's classification of a folded error code.
fn by_code(folded: &str) -> Class {
    const TRANSIENT: &[&str] = &[
        "messagechannelunavailable",
        "messagescannotadd",
        "unknownerror",
        "unknownerrorwithtraceid",
        "messagedownloadcontenterror",
    ];
    const RECIPIENT: &[&str] = &[
        "badcontact",
        "invalidmessagedata",
        "validationerror",
        "wrongtransport",
        "messagetexttoolong",
        "messagesisspam",
        "templaterejected",
        "chatnoaccess",
        "messagesabnormalsend",
        "messagesinvalidcontacttype",
        "referencemessagenotfound",
    ];
    if TRANSIENT.contains(&folded) {
        Class::Transient
    } else if RECIPIENT.contains(&folded)
        // MESSAGES_TOO_LONG_* and MESSAGE_*CONTENT*.
        || folded.starts_with("messagestoolong")
        || (folded.starts_with("message") && folded.contains("content"))
    {
        Class::Recipient
    } else {
        // CHANNEL_NOT_FOUND, CHANNEL_BLOCKED, CHANNEL_WAPI_REJECTED,
        // CHANNEL_NO_MONEY, BALANCE_IS_EMPTY, CHANNEL_LIMIT_EXCEEDED,
        // MESSAGES_NOT_TEXT_FIRST, and codes we do not know.
        Class::Config
    }
}

/// Classifies an answer to `POST /v3/message`. `crm_message_id` is what we
/// sent, for the placeholder id of an already-sent message.
pub(crate) fn classify(
    status: u16,
    text: &str,
    retry_after: Option<Duration>,
    crm_message_id: &str,
) -> Outcome {
    if (200..300).contains(&status) {
        return match serde_json::from_str::<Success>(text) {
            Ok(Success {
                message_id: Some(id),
            }) if !id.is_empty() => Outcome::Sent { message_id: id },
            _ => Outcome::Uncertain {
                reason: format!("HTTP {status} without a messageId: {}", excerpt(text)),
            },
        };
    }
    let error = serde_json::from_str::<ErrorBody>(text).ok();
    let code = error
        .as_ref()
        .and_then(|e| e.error.as_deref())
        .unwrap_or("");
    let folded = fold(code);
    if folded == "repeatedcrmmessageid" {
        // Wazzup already accepted this crmMessageId (within the last 60 s).
        return Outcome::Sent {
            message_id: format!("wazzup-repeated:{crm_message_id}"),
        };
    }
    let description = error
        .as_ref()
        .and_then(|e| e.description.as_deref())
        .map(excerpt);
    let reason = match (code.is_empty(), description) {
        (false, Some(d)) => format!("wazzup {status} {}: {d}", excerpt(code)),
        (false, None) => format!("wazzup {status} {}", excerpt(code)),
        (true, _) => format!("wazzup HTTP {status}: {}", excerpt(text)),
    };
    let reason = reason.trim_end().to_string();
    if status == 429 || status >= 500 {
        return Outcome::Transient {
            reason,
            retry_after,
        };
    }
    // The channel or the key, not this message (providers.md): pause it.
    if status == 401
        || status == 403
        || matches!(
            folded.as_str(),
            "channelblocked" | "balanceisempty" | "invalidapikey" | "channelnomoney"
        )
    {
        return Outcome::AccountDown { reason };
    }
    match by_code(&folded) {
        Class::Transient => Outcome::Transient {
            reason,
            retry_after,
        },
        Class::Recipient => Outcome::Recipient { reason },
        Class::Config => Outcome::Config { reason },
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

    fn err(code: &str) -> String {
        format!(
            r#"{{"status":400,"requestId":"r1","error":"{code}","description":"d","data":{{}}}}"#
        )
    }

    #[test]
    fn success_fixture_gives_the_message_id() {
        let o = classify(
            201,
            &fixture("wazzup_send_success_201_docs.json"),
            None,
            "k",
        );
        assert_eq!(
            o,
            Outcome::Sent {
                message_id: "f66c53a6-957a-46b2-b41b-5a2ef4844bcb".into()
            }
        );
        // 200 is accepted as well as the documented 201.
        assert_eq!(
            classify(200, r#"{"messageId":"m-1","chatId":"7"}"#, None, "k").class(),
            "sent"
        );
        assert_eq!(classify(201, "{}", None, "k").class(), "uncertain");
        assert_eq!(classify(201, "", None, "k").class(), "uncertain");
    }

    #[test]
    fn repeated_crm_message_id_fixture_counts_as_already_sent() {
        let o = classify(
            400,
            &fixture("wazzup_send_error_repeated_crm_message_id_docs.json"),
            None,
            "evt-1/whatsapp",
        );
        assert_eq!(
            o,
            Outcome::Sent {
                message_id: "wazzup-repeated:evt-1/whatsapp".into()
            }
        );
        // The docs' other spelling.
        assert_eq!(
            classify(400, &err("repeatedCrmMessageId"), None, "k").class(),
            "sent"
        );
    }

    #[test]
    fn fixtures_of_bad_requests_are_recipient_failures() {
        for f in [
            "wazzup_send_error_wrong_transport_docs.json",
            "wazzup_send_error_invalid_message_data_docs.json",
        ] {
            let o = classify(400, &fixture(f), None, "k");
            assert_eq!(o.class(), "recipient", "{f}: {o:?}");
        }
        let o = classify(
            400,
            &fixture("wazzup_send_error_wrong_transport_docs.json"),
            None,
            "k",
        );
        assert!(o.reason().contains("WRONG_TRANSPORT"), "{o:?}");
    }

    #[test]
    fn codes_follow_providers_md_in_any_spelling() {
        let cases = [
            ("MESSAGE_CHANNEL_UNAVAILABLE", "transient"),
            ("messageChannelUnavailable", "transient"),
            ("MESSAGES_CAN_NOT_ADD", "transient"),
            ("UNKNOWN_ERROR", "transient"),
            ("UNKNOWN_ERROR_WITH_TRACE_ID", "transient"),
            ("MESSAGE_DOWNLOAD_CONTENT_ERROR", "transient"),
            ("BAD_CONTACT", "recipient"),
            ("badContact", "recipient"),
            ("VALIDATION_ERROR", "recipient"),
            ("MESSAGE_TEXT_TOO_LONG", "recipient"),
            ("MESSAGES_TOO_LONG_FOR_CHANNEL", "recipient"),
            ("MESSAGE_WRONG_CONTENT_TYPE", "recipient"),
            ("MESSAGE_CONTENT_TOO_BIG", "recipient"),
            ("MESSAGES_IS_SPAM", "recipient"),
            ("TEMPLATE_REJECTED", "recipient"),
            ("CHAT_NO_ACCESS", "recipient"),
            ("MESSAGES_ABNORMAL_SEND", "recipient"),
            ("MESSAGES_INVALID_CONTACT_TYPE", "recipient"),
            ("REFERENCE_MESSAGE_NOT_FOUND", "recipient"),
            ("CHANNEL_NOT_FOUND", "config"),
            ("channelNotFound", "config"),
            ("CHANNEL_BLOCKED", "account"),
            ("CHANNEL_WAPI_REJECTED", "config"),
            ("CHANNEL_NO_MONEY", "account"),
            ("BALANCE_IS_EMPTY", "account"),
            ("INVALID_API_KEY", "account"),
            ("CHANNEL_LIMIT_EXCEEDED", "config"),
            ("MESSAGES_NOT_TEXT_FIRST", "config"),
            ("SOMETHING_NEW", "config"),
        ];
        for (code, class) in cases {
            let o = classify(400, &err(code), None, "k");
            assert_eq!(o.class(), class, "{code}: {o:?}");
        }
    }

    #[test]
    fn http_status_decides_without_a_known_code() {
        let o = classify(429, "", Some(Duration::from_secs(3)), "k");
        assert_eq!(
            o,
            Outcome::Transient {
                reason: "wazzup HTTP 429:".into(),
                retry_after: Some(Duration::from_secs(3))
            }
        );
        assert_eq!(classify(500, "oops", None, "k").class(), "transient");
        assert_eq!(
            classify(502, &err("BAD_CONTACT"), None, "k").class(),
            "transient"
        );
        assert_eq!(classify(401, "", None, "k").class(), "account");
        assert_eq!(
            classify(403, &err("UNKNOWN_ERROR"), None, "k").class(),
            "account"
        );
        assert_eq!(classify(400, "", None, "k").class(), "config");
        assert_eq!(classify(404, "<html>", None, "k").class(), "config");
    }

    #[test]
    fn transient_codes_keep_retry_after() {
        match classify(
            400,
            &err("MESSAGE_CHANNEL_UNAVAILABLE"),
            Some(Duration::from_secs(5)),
            "k",
        ) {
            Outcome::Transient { retry_after, .. } => {
                assert_eq!(retry_after, Some(Duration::from_secs(5)))
            }
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn reasons_do_not_echo_phone_numbers_or_emails() {
        let body = r#"{"status":400,"requestId":"r","error":"BAD_CONTACT","description":"Number +79161234567 (ivan.petrov@mail.ru) has no WhatsApp","data":{"chatId":"79161234567"}}"#;
        let o = classify(400, body, None, "k");
        assert_eq!(o.class(), "recipient");
        assert!(!o.reason().contains("9161234567"), "{}", o.reason());
        assert!(!o.reason().contains("ivan.petrov@"), "{}", o.reason());
        let o = classify(500, "chat 79161234567 failed", None, "k");
        assert!(!o.reason().contains("9161234567"), "{}", o.reason());
    }
}
