//! SMS.ru: `POST {base_url}/sms/send` (form, `json=1`). HTTP is 200 even on
//! errors: the answer is read from `status_code`, top level and per number
//! (providers.md B5).

use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde::Deserialize;
use shared::tenant::Channel;

use super::{Address, Balance, Body, Message, Outcome, Provider, excerpt, exchange, section};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_base_url")]
    base_url: String,
    api_id: String,
    /// Approved sender name; the account default when absent.
    #[serde(default)]
    sender: Option<String>,
    /// `test=1`: SMS.ru validates and answers but sends nothing.
    #[serde(default)]
    test: bool,
    #[serde(default = "super::default_timeout_ms")]
    timeout_ms: u64,
    /// The balance (in roubles) under which the balance alert fires.
    #[serde(default)]
    balance_alert_below: Option<f64>,
}

fn default_base_url() -> String {
    "https://sms.ru".into()
}

pub struct SmsRu {
    url: String,
    base_url: String,
    balance_alert_below: Option<f64>,
    /// A digest of the credentials: the account a pause names.
    account: String,
    api_id: String,
    sender: Option<String>,
    test: bool,
    timeout: Duration,
    http: reqwest::Client,
}

impl SmsRu {
    pub fn from_config(v: &serde_json::Value, http: reqwest::Client) -> Result<SmsRu, String> {
        let c: Config = section(v)?;
        if c.api_id.is_empty() {
            return Err("api_id is required".into());
        }
        Ok(SmsRu {
            url: format!("{}/sms/send", c.base_url.trim_end_matches('/')),
            base_url: c.base_url.trim_end_matches('/').to_string(),
            balance_alert_below: c.balance_alert_below,
            account: crate::shared_limit::digest(&c.api_id),
            api_id: c.api_id,
            sender: c.sender,
            test: c.test,
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
            Body::Text(t) => t.as_str(),
            Body::Email { text, .. } => text.as_str(),
            Body::Template { .. } => {
                return Outcome::Config {
                    reason: "a WhatsApp template cannot go by SMS".into(),
                };
            }
        };
        let mut form: Vec<(&str, &str)> = vec![
            ("api_id", &self.api_id),
            ("to", phone.digits()),
            ("msg", text),
            ("json", "1"),
        ];
        if let Some(s) = &self.sender {
            form.push(("from", s));
        }
        if self.test {
            form.push(("test", "1"));
        }
        let request = self.http.post(&self.url).timeout(self.timeout).form(&form);
        // No idempotency at SMS.ru: a timeout after sending may have sent it.
        match exchange(request, false).await {
            Ok(a) => classify(a.status, &a.text, phone.digits()),
            Err(o) => o,
        }
    }
}

impl Provider for SmsRu {
    fn name(&self) -> &'static str {
        "smsru"
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

    /// Healthy: `my/balance` answers with money left and `my/limit` with
    /// messages left today.
    fn probe(&self) -> Option<BoxFuture<'_, Result<(), String>>> {
        Some(async move { self.read_balance().await?.healthy() }.boxed())
    }
}

impl SmsRu {
    /// `my/balance` and `my/limit` (providers.md: `{status, status_code: 100,
    /// balance}` and `{…, total_limit, used_today}`), by POST so the api_id
    /// stays out of URLs.
    async fn read_balance(&self) -> Result<Balance, String> {
        let balance = self.account_call("my/balance").await?;
        let amount = super::json_number(&balance["balance"]).ok_or("my/balance: no balance")?;
        let limit = self.account_call("my/limit").await?;
        let daily_left = super::json_number(&limit["total_limit"])
            .map(|total| total - super::json_number(&limit["used_today"]).unwrap_or(0.0));
        Ok(Balance {
            amount,
            daily_left,
            alert_below: self.balance_alert_below,
        })
    }

    async fn account_call(&self, method: &str) -> Result<serde_json::Value, String> {
        let request = self
            .http
            .post(format!("{}/{method}", self.base_url))
            .timeout(self.timeout)
            .form(&[("api_id", self.api_id.as_str()), ("json", "1")]);
        let answer = exchange(request, true)
            .await
            .map_err(|o| format!("{method}: {}", o.reason()))?;
        let v: serde_json::Value = serde_json::from_str(&answer.text).map_err(|_| {
            format!(
                "{method}: HTTP {}: {}",
                answer.status,
                excerpt(&answer.text)
            )
        })?;
        if v["status"] != "OK" {
            return Err(format!(
                "{method}: status_code {}: {}",
                v["status_code"],
                excerpt(v["status_text"].as_str().unwrap_or_default())
            ));
        }
        Ok(v)
    }
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    status_code: i64,
    #[serde(default)]
    status_text: Option<String>,
    #[serde(default)]
    sms: std::collections::HashMap<String, NumberAnswer>,
}

#[derive(Deserialize)]
struct NumberAnswer {
    status: String,
    status_code: i64,
    #[serde(default)]
    sms_id: Option<String>,
    #[serde(default)]
    status_text: Option<String>,
}

pub(crate) fn classify(http_status: u16, body: &str, digits: &str) -> Outcome {
    if !(200..300).contains(&http_status) {
        let reason = format!("HTTP {http_status}: {}", excerpt(body));
        return if http_status >= 500 || http_status == 429 {
            Outcome::transient(reason)
        } else {
            Outcome::Config { reason }
        };
    }
    let Ok(answer) = serde_json::from_str::<Answer>(body) else {
        return Outcome::Uncertain {
            reason: format!("unreadable answer: {}", excerpt(body)),
        };
    };
    if answer.status != "OK" {
        return by_code(
            answer.status_code,
            answer.status_text.as_deref().unwrap_or(""),
        );
    }
    // Keys are the numbers as SMS.ru normalised them: digits, like ours.
    let Some(n) = answer.sms.get(digits).or_else(|| {
        (answer.sms.len() == 1)
            .then(|| answer.sms.values().next())
            .flatten()
    }) else {
        return Outcome::Uncertain {
            reason: "answer has no result for the number".into(),
        };
    };
    if n.status == "OK" {
        return match &n.sms_id {
            Some(id) => Outcome::Sent {
                message_id: id.clone(),
            },
            None => Outcome::Uncertain {
                reason: "OK without sms_id".into(),
            },
        };
    }
    by_code(n.status_code, n.status_text.as_deref().unwrap_or(""))
}

/// providers.md B5's classification of SMS.ru request/error codes.
fn by_code(code: i64, text: &str) -> Outcome {
    let reason = format!("smsru {code}: {}", excerpt(text))
        .trim_end()
        .to_string();
    match code {
        220 | 500 | 230..=233 | 501..=508 => Outcome::transient(reason),
        209 => Outcome::OptedOut { reason },
        // The account: bad api_id, token or password, not confirmed, no
        // money, the daily limit reached (providers.md): pause it.
        200 | 201 | 206 | 300 | 301 | 302 => Outcome::AccountDown { reason },
        202 | 203 | 205 | 207 | 212 | 214 | 215 | 216 => Outcome::Recipient { reason },
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
    fn official_mixed_answer_is_read_per_number() {
        let body = fixture("smsru_send_response_mixed_ok_error_official_docs.json");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let numbers: Vec<&String> = v["sms"].as_object().unwrap().keys().collect();
        let mut classes = Vec::new();
        for n in &numbers {
            classes.push(classify(200, &body, n).class());
        }
        assert!(classes.contains(&"sent"), "{classes:?}");
        assert!(classes.iter().any(|c| *c != "sent"), "{classes:?}");
    }

    #[test]
    fn golib_202_is_a_recipient_failure() {
        let body = fixture("smsru_send_response_mixed_ok_202_golib.json");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let failed = v["sms"]
            .as_object()
            .unwrap()
            .iter()
            .find(|(_, r)| r["status"] == "ERROR")
            .unwrap()
            .0;
        assert_eq!(classify(200, &body, failed).class(), "recipient");
    }

    #[test]
    fn plain_text_answer_without_json_is_uncertain() {
        let body = fixture("smsru_send_response_plaintext_nojson_official_docs.txt");
        assert_eq!(classify(200, &body, "79255070602").class(), "uncertain");
    }

    #[test]
    fn top_level_errors_and_codes() {
        let top =
            |code: i64| format!(r#"{{"status":"ERROR","status_code":{code},"status_text":"x"}}"#);
        assert_eq!(classify(200, &top(200), "7").class(), "account"); // bad api_id
        assert_eq!(classify(200, &top(201), "7").class(), "account"); // no money
        assert_eq!(classify(200, &top(206), "7").class(), "account"); // daily limit
        assert_eq!(classify(200, &top(220), "7").class(), "transient");
        assert_eq!(classify(200, &top(207), "7").class(), "recipient");
        assert_eq!(classify(502, "", "7").class(), "transient");
    }
}
