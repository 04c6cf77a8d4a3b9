//! YCLIENTS: `GET /api/v1/record/{company_id}/{record_id}` and the record's
//! `client.phone`.

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde::Deserialize;
use shared::event::Lookup;
use shared::phone::{self, Phone};

use super::{LookupError, PhoneLookup, http_error, transport};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_base_url")]
    base_url: String,
    partner_token: String,
    #[serde(default)]
    user_token: Option<String>,
    #[serde(default = "crate::providers::default_timeout_ms")]
    timeout_ms: u64,
}

fn default_base_url() -> String {
    "https://api.yclients.com".into()
}

pub struct Yclients {
    base_url: String,
    authorization: String,
    timeout: std::time::Duration,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    data: Option<Record>,
    #[serde(default)]
    client: Option<Client>,
}

#[derive(Deserialize)]
struct Record {
    #[serde(default)]
    client: Option<Client>,
}

#[derive(Deserialize)]
struct Client {
    #[serde(default)]
    phone: Option<serde_json::Value>,
}

impl Yclients {
    pub fn from_config(v: &serde_json::Value, http: reqwest::Client) -> Result<Yclients, String> {
        let c: Config = crate::providers::section(v)?;
        if c.partner_token.is_empty() {
            return Err("partner_token is required".into());
        }
        let authorization = match &c.user_token {
            Some(u) => format!("Bearer {}, User {u}", c.partner_token),
            None => format!("Bearer {}", c.partner_token),
        };
        Ok(Yclients {
            base_url: c.base_url.trim_end_matches('/').to_string(),
            authorization,
            timeout: std::time::Duration::from_millis(c.timeout_ms),
            http,
        })
    }

    async fn find_phone(&self, lookup: &Lookup) -> Result<Phone, LookupError> {
        let Lookup::Yclients {
            company_id,
            record_id,
        } = lookup
        else {
            return Err(LookupError::Config("not a YCLIENTS look-up".into()));
        };
        let ok_id = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
        if !ok_id(company_id) || !ok_id(record_id) {
            return Err(LookupError::NotFound(
                "company or record id is not a number".into(),
            ));
        }
        let r = self
            .http
            .get(format!(
                "{}/api/v1/record/{company_id}/{record_id}",
                self.base_url
            ))
            .header(reqwest::header::AUTHORIZATION, &self.authorization)
            .header(reqwest::header::ACCEPT, "application/vnd.yclients.v2+json")
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| transport(&e, "record"))?;
        let status = r.status().as_u16();
        if status != 200 {
            return Err(http_error(status, "record"));
        }
        let a: Answer = r
            .json()
            .await
            .map_err(|_| LookupError::Transient("record: unreadable answer".into()))?;
        let raw = a
            .data
            .and_then(|d| d.client)
            .or(a.client)
            .and_then(|c| c.phone)
            .and_then(|p| match p {
                serde_json::Value::String(s) => Some(s),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .ok_or_else(|| LookupError::NotFound("the record has no client phone".into()))?;
        phone::normalise(&raw)
            .map_err(|e| LookupError::NotFound(format!("record client has {}", e.reason())))
    }
}

impl PhoneLookup for Yclients {
    fn find<'a>(&'a self, lookup: &'a Lookup) -> BoxFuture<'a, Result<Phone, LookupError>> {
        self.find_phone(lookup).boxed()
    }
}
