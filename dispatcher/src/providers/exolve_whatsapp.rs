//! Exolve (MTS) WhatsApp, **unverified** (providers.md B4, seed 001 names
//! Meta and Exolve as its two WhatsApp providers). Exolve publishes no
//! WhatsApp API reference (access goes through sales); the integrations that
//! exist call `POST {base_url}/messaging/v1/whatsapp/send` with
//! `{sender_id, destination, text}` for free text and
//! `POST {base_url}/messaging/v1/whatsapp/template` with
//! `{sender_id, destination, template_name}` for an approved template, with
//! the application's Bearer key, and read `{message_id}` back. Both paths
//! are configuration (`send_path`, `template_path`) so a deployment can
//! follow what its Exolve manager gives it without a release. The template
//! call also carries `language` and, when the template has body parameters,
//! `params` (our guess, marked as such in docs/DISPATCHER.md). Errors are
//! classified by HTTP status, as for Exolve's SMS, until a real error shape
//! is known; the raw answer is logged masked.

use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::json;
use shared::tenant::Channel;

use super::{Address, Body, Message, Outcome, Provider, section};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "super::exolve::default_base_url")]
    base_url: String,
    /// The application's API key.
    api_key: String,
    /// Our WhatsApp sender as Exolve knows it (the connected number, digits).
    sender_id: String,
    #[serde(default = "default_send_path")]
    send_path: String,
    #[serde(default = "default_template_path")]
    template_path: String,
    #[serde(default = "super::default_timeout_ms")]
    timeout_ms: u64,
}

fn default_send_path() -> String {
    "/messaging/v1/whatsapp/send".into()
}

fn default_template_path() -> String {
    "/messaging/v1/whatsapp/template".into()
}

pub struct ExolveWhatsapp {
    send_url: String,
    template_url: String,
    /// A digest of the credentials: the account a pause names.
    account: String,
    api_key: String,
    sender_id: String,
    timeout: Duration,
    http: reqwest::Client,
}

fn join(base: &str, path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!("path {path:?} must start with '/'"));
    }
    Ok(format!("{}{path}", base.trim_end_matches('/')))
}

impl ExolveWhatsapp {
    pub fn from_config(
        v: &serde_json::Value,
        http: reqwest::Client,
    ) -> Result<ExolveWhatsapp, String> {
        let c: Config = section(v)?;
        if c.api_key.is_empty() {
            return Err("api_key is required".into());
        }
        let sender_id: String = c.sender_id.chars().filter(char::is_ascii_digit).collect();
        if sender_id.is_empty() {
            return Err("sender_id is required (our WhatsApp number at Exolve, digits)".into());
        }
        Ok(ExolveWhatsapp {
            send_url: join(&c.base_url, &c.send_path)?,
            template_url: join(&c.base_url, &c.template_path)?,
            account: crate::shared_limit::digest(&c.api_key),
            api_key: c.api_key,
            sender_id,
            timeout: Duration::from_millis(c.timeout_ms),
            http,
        })
    }

    /// The URL and JSON body for this message, or why it cannot go.
    fn request(&self, m: &Message) -> Result<(&str, serde_json::Value), Outcome> {
        let Address::Phone(phone) = &m.to else {
            return Err(Outcome::Config {
                reason: "WhatsApp needs a phone number".into(),
            });
        };
        let destination = phone.digits();
        Ok(match &m.body {
            Body::Text(text) | Body::Email { text, .. } => (
                &self.send_url,
                json!({
                    "sender_id": self.sender_id,
                    "destination": destination,
                    "text": text,
                }),
            ),
            Body::Template {
                header: Some(_), ..
            } => {
                return Err(Outcome::Config {
                    reason: "exolve_whatsapp: template headers are not supported (Exolve's template API is unverified)".into(),
                });
            }
            Body::Template { buttons, .. } if !buttons.is_empty() => {
                return Err(Outcome::Config {
                    reason: "exolve_whatsapp: template buttons are not supported (Exolve's template API is unverified)".into(),
                });
            }
            Body::Template {
                name,
                language,
                params,
                ..
            } => {
                let mut body = json!({
                    "sender_id": self.sender_id,
                    "destination": destination,
                    "template_name": name,
                    "language": language,
                });
                if !params.is_empty() {
                    body["params"] = json!(params);
                }
                (&self.template_url, body)
            }
        })
    }

    async fn send_one(&self, m: &Message) -> Outcome {
        let (url, body) = match self.request(m) {
            Ok(r) => r,
            Err(o) => return o,
        };
        super::exolve::post(
            &self.http,
            url,
            &self.api_key,
            self.timeout,
            &body,
            "exolve_whatsapp",
        )
        .await
    }
}

impl Provider for ExolveWhatsapp {
    fn name(&self) -> &'static str {
        "exolve_whatsapp"
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_needs_key_and_sender_and_joins_paths() {
        let http = reqwest::Client::new();
        let ok = ExolveWhatsapp::from_config(
            &json!({"api_key": "k", "sender_id": "+7 999 000-11-22", "base_url": "http://x/"}),
            http.clone(),
        )
        .expect("valid");
        assert_eq!(ok.send_url, "http://x/messaging/v1/whatsapp/send");
        assert_eq!(ok.template_url, "http://x/messaging/v1/whatsapp/template");
        assert_eq!(ok.sender_id, "79990001122");
        let custom = ExolveWhatsapp::from_config(
            &json!({"api_key": "k", "sender_id": "7999", "send_path": "/wa/v2/send"}),
            http.clone(),
        )
        .expect("valid");
        assert_eq!(custom.send_url, "https://api.exolve.ru/wa/v2/send");
        for bad in [
            json!({"api_key": "", "sender_id": "7999"}),
            json!({"api_key": "k", "sender_id": "alpha"}),
            json!({"api_key": "k", "sender_id": "7999", "send_path": "no-slash"}),
            json!({"api_key": "k", "sender_id": "7999", "sender": "typo"}),
        ] {
            assert!(
                ExolveWhatsapp::from_config(&bad, http.clone()).is_err(),
                "{bad}"
            );
        }
    }
}
