//! Exolve (MTS) SMS: `POST {base_url}/messaging/v1/SendSMS` (providers.md B4).
//! `number` is the SENDER and `destination` the recipient (one public tool
//! schema swaps them; the docs' table does not). Exolve's error shapes are
//! not documented where we could read them, so classification goes by HTTP
//! status and the raw (masked) answer is logged.

use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::json;
use shared::tenant::Channel;

use super::{
    Address, Answer, Balance, Body, Message, Outcome, Provider, excerpt, exchange, section,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_base_url")]
    base_url: String,
    /// The application's API key.
    api_key: String,
    /// Our Exolve mobile number (digits; `+`, spaces and dashes are dropped)
    /// or a registered alpha-name.
    sender: String,
    #[serde(default = "super::default_timeout_ms")]
    timeout_ms: u64,
    /// The balance (in roubles) under which the balance alert fires.
    #[serde(default)]
    balance_alert_below: Option<f64>,
}

pub(crate) fn default_base_url() -> String {
    "https://api.exolve.ru".into()
}

/// One POST to Exolve with its Bearer key, classified by HTTP status (its
/// error shapes are undocumented, so a refusal is logged masked for whoever
/// extends the classification). Shared by the SMS and WhatsApp providers.
pub(crate) async fn post(
    http: &reqwest::Client,
    url: &str,
    api_key: &str,
    timeout: Duration,
    body: &serde_json::Value,
    provider: &'static str,
) -> Outcome {
    let request = http
        .post(url)
        .bearer_auth(api_key)
        .timeout(timeout)
        .json(body);
    // No idempotency at Exolve: a timeout after sending may have sent it.
    let Answer {
        status,
        retry_after,
        text,
    } = match exchange(request, false).await {
        Ok(a) => a,
        Err(o) => return o,
    };
    if !(200..300).contains(&status) {
        tracing::warn!(provider, status, answer = %excerpt(&text), "exolve refused the message");
    }
    classify(status, &text, retry_after)
}

pub struct Exolve {
    url: String,
    balance_url: String,
    balance_alert_below: Option<f64>,
    /// A digest of the credentials: the account a pause names.
    account: String,
    api_key: String,
    sender: String,
    timeout: Duration,
    http: reqwest::Client,
}

impl Exolve {
    pub fn from_config(v: &serde_json::Value, http: reqwest::Client) -> Result<Exolve, String> {
        let c: Config = section(v)?;
        if c.api_key.is_empty() {
            return Err("api_key is required".into());
        }
        let sender = sender(&c.sender).ok_or("sender is required (our number or alpha-name)")?;
        Ok(Exolve {
            url: format!("{}/messaging/v1/SendSMS", c.base_url.trim_end_matches('/')),
            balance_url: format!("{}/finance/v1/GetBalance", c.base_url.trim_end_matches('/')),
            balance_alert_below: c.balance_alert_below,
            account: crate::shared_limit::digest(&c.api_key),
            api_key: c.api_key,
            sender,
            timeout: Duration::from_millis(c.timeout_ms),
            http,
        })
    }

    async fn send_one(&self, m: &Message) -> Outcome {
        let Address::Phone(phone) = &m.to else {
            return Outcome::Config {
                reason: "SMS needs a phone number".into(),
            };
        };
        let text = match &m.body {
            Body::Text(t) => t,
            Body::Email { text, .. } => text,
            Body::Template { .. } => {
                return Outcome::Config {
                    reason: "a WhatsApp template cannot go by SMS".into(),
                };
            }
        };
        let body = json!({
            "number": self.sender,
            "destination": phone.digits(),
            "text": text,
        });
        post(
            &self.http,
            &self.url,
            &self.api_key,
            self.timeout,
            &body,
            "exolve",
        )
        .await
    }
}

impl Provider for Exolve {
    fn name(&self) -> &'static str {
        "exolve"
    }

    fn channel(&self) -> Channel {
        Channel::Sms
    }

    fn send<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Outcome> {
        self.send_one(message).boxed()
    }

    fn balance(&self) -> Option<BoxFuture<'_, Result<Balance, String>>> {
        Some(self.read_balance().boxed())
    }

    fn balance_account(&self) -> Option<String> {
        Some(self.account.clone())
    }

    fn account(&self) -> String {
        self.account.clone()
    }

    /// Healthy: `GetBalance` answers with money left.
    fn probe(&self) -> Option<BoxFuture<'_, Result<(), String>>> {
        Some(async move { self.read_balance().await?.healthy() }.boxed())
    }
}

impl Exolve {
    /// `POST {base_url}/finance/v1/GetBalance` with `{}` and the same
    /// Bearer key → `{balance: N, …}` (providers.md).
    async fn read_balance(&self) -> Result<Balance, String> {
        let request = self
            .http
            .post(&self.balance_url)
            .bearer_auth(&self.api_key)
            .timeout(self.timeout)
            .json(&json!({}));
        let answer = exchange(request, true)
            .await
            .map_err(|o| format!("GetBalance: {}", o.reason()))?;
        if !(200..300).contains(&answer.status) {
            return Err(format!(
                "GetBalance: HTTP {}: {}",
                answer.status,
                excerpt(&answer.text)
            ));
        }
        let v: serde_json::Value = serde_json::from_str(&answer.text)
            .map_err(|_| format!("GetBalance: not JSON: {}", excerpt(&answer.text)))?;
        let amount = super::json_number(&v["balance"]).ok_or("GetBalance: no balance")?;
        Ok(Balance {
            amount,
            daily_left: None,
            alert_below: self.balance_alert_below,
        })
    }
}

/// A number-like sender becomes digits (`+7 999 000-11-22` → `79990001122`);
/// an alpha-name is kept as written.
fn sender(raw: &str) -> Option<String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return None;
    }
    let numeric = raw
        .chars()
        .all(|c| c.is_ascii_digit() || "+-() ".contains(c));
    if numeric {
        let digits: String = raw.chars().filter(char::is_ascii_digit).collect();
        return (!digits.is_empty()).then_some(digits);
    }
    Some(raw.to_string())
}

#[derive(Deserialize)]
struct Success {
    #[serde(default)]
    message_id: Option<serde_json::Value>,
}

pub(crate) fn classify(status: u16, text: &str, retry_after: Option<Duration>) -> Outcome {
    if (200..300).contains(&status) {
        let id = serde_json::from_str::<Success>(text)
            .ok()
            .and_then(|s| s.message_id)
            .and_then(|v| match v {
                serde_json::Value::String(s) if !s.is_empty() => Some(s),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            });
        return match id {
            Some(message_id) => Outcome::Sent { message_id },
            // Accepted or not, we cannot tell, and a resend may double it.
            None => Outcome::Uncertain {
                reason: format!("HTTP {status} without a message_id: {}", excerpt(text)),
            },
        };
    }
    let reason = format!("exolve HTTP {status}: {}", excerpt(text))
        .trim_end()
        .to_string();
    match status {
        429 | 500..=599 => Outcome::Transient {
            reason,
            retry_after,
        },
        // The key refused: the account, not this message.
        401 | 403 => Outcome::AccountDown { reason },
        // 400 may also mean a bad destination, but Exolve's codes are not
        // documented: providers.md B4 says permanent/config, so an operator
        // looks rather than the next channel silently taking over.
        _ => Outcome::Config { reason },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_id_means_sent() {
        assert_eq!(
            classify(200, r#"{"message_id":"539681701637458390"}"#, None),
            Outcome::Sent {
                message_id: "539681701637458390".into()
            }
        );
        // Some integrations see it as a number.
        assert_eq!(
            classify(200, r#"{"message_id":539681701637458390}"#, None),
            Outcome::Sent {
                message_id: "539681701637458390".into()
            }
        );
        assert_eq!(classify(200, "{}", None).class(), "uncertain");
        assert_eq!(classify(200, "OK", None).class(), "uncertain");
        assert_eq!(
            classify(200, r#"{"message_id":""}"#, None).class(),
            "uncertain"
        );
    }

    #[test]
    fn classes_by_status() {
        let wait = Some(Duration::from_secs(4));
        assert_eq!(
            classify(429, "too many", wait),
            Outcome::Transient {
                reason: "exolve HTTP 429: too many".into(),
                retry_after: wait
            }
        );
        assert_eq!(classify(500, "", None).class(), "transient");
        assert_eq!(classify(503, "<html>", None).class(), "transient");
        assert_eq!(
            classify(400, r#"{"error":{"message":"invalid destination"}}"#, None).class(),
            "config"
        );
        assert_eq!(classify(401, "", None).class(), "account");
        assert_eq!(classify(403, "forbidden", None).class(), "account");
        assert_eq!(classify(404, "", None).class(), "config");
    }

    #[test]
    fn reasons_do_not_echo_phone_numbers() {
        let o = classify(
            400,
            r#"{"error":"destination 79161234567 is not valid for +79990001122"}"#,
            None,
        );
        assert!(!o.reason().contains("9161234567"), "{}", o.reason());
        assert!(!o.reason().contains("9990001122"), "{}", o.reason());
    }

    #[test]
    fn sender_numbers_become_digits_and_names_stay() {
        assert_eq!(sender("+7 999 000-11-22").as_deref(), Some("79990001122"));
        assert_eq!(sender("79990001122").as_deref(), Some("79990001122"));
        assert_eq!(sender("Vestnik").as_deref(), Some("Vestnik"));
        assert_eq!(sender("  "), None);
        assert_eq!(sender("+"), None);
    }
}
