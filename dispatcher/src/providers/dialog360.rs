//! 360dialog Cloud API: `POST {base_url}/messages` with `D360-API-KEY`
//! (providers.md B2). The body and the answers are Meta's Cloud API ones
//! (360dialog adds the phone number id itself), so both are Meta's code;
//! only 360dialog's own gateway errors are classified here.

use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde::Deserialize;
use shared::tenant::Channel;

use super::meta::send_cloud_api;
use super::{Message, Outcome, Provider, excerpt, section};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_base_url")]
    base_url: String,
    api_key: String,
    /// The number's Cloud API id, as 360dialog's webhooks name it in
    /// `metadata.phone_number_id`: only needed for customers' stop words
    /// to opt them out of this tenant (sending does not use it).
    #[serde(default)]
    #[allow(dead_code)]
    phone_number_id: Option<String>,
    #[serde(default = "super::default_timeout_ms")]
    timeout_ms: u64,
}

fn default_base_url() -> String {
    "https://waba-v2.360dialog.io".into()
}

pub struct Dialog360 {
    url: String,
    /// A digest of the credentials: the account a pause names.
    account: String,
    api_key: String,
    timeout: Duration,
    http: reqwest::Client,
}

impl Dialog360 {
    pub fn from_config(v: &serde_json::Value, http: reqwest::Client) -> Result<Dialog360, String> {
        let c: Config = section(v)?;
        if c.api_key.is_empty() {
            return Err("api_key is required".into());
        }
        Ok(Dialog360 {
            url: format!("{}/messages", c.base_url.trim_end_matches('/')),
            account: crate::shared_limit::digest(&c.api_key),
            api_key: c.api_key,
            timeout: Duration::from_millis(c.timeout_ms),
            http,
        })
    }

    async fn send_one(&self, m: &Message) -> Outcome {
        let request = self
            .http
            .post(&self.url)
            .header("D360-API-KEY", &self.api_key)
            .timeout(self.timeout);
        send_cloud_api(request, m, classify).await
    }
}

impl Provider for Dialog360 {
    fn name(&self) -> &'static str {
        "dialog360"
    }

    fn echoes_delivery_key(&self) -> bool {
        true // the Cloud API body and its callbacks pass through (B7)
    }

    fn channel(&self) -> Channel {
        Channel::Whatsapp
    }

    fn send<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Outcome> {
        self.send_one(message).boxed()
    }

    fn account(&self) -> String {
        self.account.clone()
    }
}

/// A Meta error object (`{"error":{"code":..}}`), passed through by 360dialog.
fn is_meta_error(text: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v.get("error")?.get("code")?.as_i64())
        .is_some()
}

pub(crate) fn classify(status: u16, text: &str, retry_after: Option<Duration>) -> Outcome {
    let passes_meta_through = (200..300).contains(&status) || is_meta_error(text);
    if passes_meta_through {
        return super::meta::classify(status, text, retry_after);
    }
    // 360dialog's own gateway answers (docs.360dialog.com error list).
    let reason = format!("360dialog HTTP {status}: {}", excerpt(text))
        .trim_end()
        .to_string();
    let rate_limited = text
        .to_ascii_lowercase()
        .contains("exceeded the endpoint rate limit");
    match status {
        429 | 500..=599 => Outcome::Transient {
            reason,
            retry_after,
        },
        400 if rate_limited => Outcome::Transient {
            reason,
            retry_after,
        },
        // 401 invalid key, 403 endpoint blocked, 400 API disabled / lack of
        // payment, anything else: fix the account, do not hot-retry.
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

    fn meta_err(code: i64) -> String {
        format!(
            r#"{{"error":{{"message":"m","type":"OAuthException","code":{code},"error_data":{{"messaging_product":"whatsapp","details":"d"}},"fbtrace_id":"x"}}}}"#
        )
    }

    #[test]
    fn meta_fixtures_pass_through() {
        let o = classify(
            200,
            &fixture("meta_wa_send_success_docs_barokatu.json"),
            None,
        );
        assert_eq!(
            o,
            Outcome::Sent {
                message_id: "wamid.gBGGSFcCNEOPAgkO_KJ55r4w_ww".into()
            }
        );
        let o = classify(
            400,
            &fixture("meta_wa_send_error_131009_real_log.json"),
            None,
        );
        assert_eq!(o.class(), "config");
        assert!(o.reason().contains("131009"), "{o:?}");
    }

    #[test]
    fn meta_codes_keep_their_meaning() {
        assert_eq!(classify(400, &meta_err(131026), None).class(), "recipient");
        assert_eq!(classify(400, &meta_err(131047), None).class(), "recipient");
        assert_eq!(classify(400, &meta_err(130429), None).class(), "transient");
        assert_eq!(classify(400, &meta_err(368), None).class(), "account");
        // A Meta code wins over the HTTP status, as with Meta itself.
        assert_eq!(classify(500, &meta_err(131026), None).class(), "recipient");
        match classify(400, &meta_err(131056), None) {
            Outcome::Transient { retry_after, .. } => {
                assert!(retry_after >= Some(Duration::from_secs(6)))
            }
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn gateway_errors_of_360dialog() {
        let msg = |m: &str| {
            format!(r#"{{"meta":{{"success":false,"http_code":400,"developer_message":"{m}"}}}}"#)
        };
        assert_eq!(
            classify(401, &msg("Invalid api_key"), None).class(),
            "config"
        );
        assert_eq!(classify(403, "Endpoint blocked", None).class(), "config");
        assert_eq!(classify(500, "Internal Error", None).class(), "transient");
        assert_eq!(
            classify(502, "WhatsApp API is not available", None).class(),
            "transient"
        );
        let o = classify(
            400,
            &msg("You have Exceeded the endpoint rate limit"),
            Some(Duration::from_secs(2)),
        );
        assert_eq!(
            o,
            Outcome::Transient {
                reason: o.reason().to_string(),
                retry_after: Some(Duration::from_secs(2))
            }
        );
        assert_eq!(
            classify(
                400,
                &msg("WhatsApp for Business API has been disabled"),
                None
            )
            .class(),
            "config"
        );
        assert_eq!(
            classify(400, &msg("lack of payment"), None).class(),
            "config"
        );
        assert_eq!(classify(429, "", None).class(), "transient");
    }

    #[test]
    fn reasons_do_not_echo_phone_numbers() {
        let o = classify(
            400,
            r#"{"meta":{"developer_message":"recipient +79161234567 invalid"}}"#,
            None,
        );
        assert!(!o.reason().contains("9161234567"), "{}", o.reason());
        assert!(
            o.reason().starts_with("360dialog HTTP 400"),
            "{}",
            o.reason()
        );
    }
}
