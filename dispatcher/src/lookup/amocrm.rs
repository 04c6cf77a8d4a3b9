//! AmoCRM: `GET /api/v4/leads/{id}?with=contacts`, then the main contact's
//! `GET /api/v4/contacts/{id}` and its PHONE field (several values: the
//! first that normalises).

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde::Deserialize;
use shared::event::Lookup;
use shared::phone::{self, Phone};

use super::{LookupError, PhoneLookup, http_error, transport};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// `https://<subdomain>.amocrm.ru` is derived from the hook when absent.
    #[serde(default)]
    base_url: Option<String>,
    /// Long-lived token of the integration.
    access_token: String,
    #[serde(default = "crate::providers::default_timeout_ms")]
    timeout_ms: u64,
}

pub struct AmoCrm {
    base_url: Option<String>,
    token: String,
    timeout: std::time::Duration,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct Lead {
    #[serde(default, rename = "_embedded")]
    embedded: Option<LeadEmbedded>,
}

#[derive(Deserialize)]
struct LeadEmbedded {
    #[serde(default)]
    contacts: Vec<ContactRef>,
}

#[derive(Deserialize)]
struct ContactRef {
    id: u64,
    #[serde(default)]
    is_main: bool,
}

#[derive(Deserialize)]
struct Contact {
    #[serde(default)]
    custom_fields_values: Option<Vec<Field>>,
}

#[derive(Deserialize)]
struct Field {
    #[serde(default)]
    field_code: Option<String>,
    #[serde(default)]
    field_name: Option<String>,
    #[serde(default)]
    values: Vec<FieldValue>,
}

#[derive(Deserialize)]
struct FieldValue {
    #[serde(default)]
    value: serde_json::Value,
}

impl AmoCrm {
    pub fn from_config(v: &serde_json::Value, http: reqwest::Client) -> Result<AmoCrm, String> {
        let c: Config = crate::providers::section(v)?;
        if c.access_token.is_empty() {
            return Err("access_token is required".into());
        }
        Ok(AmoCrm {
            base_url: c.base_url.map(|b| b.trim_end_matches('/').to_string()),
            token: c.access_token,
            timeout: std::time::Duration::from_millis(c.timeout_ms),
            http,
        })
    }

    async fn get<T: for<'de> Deserialize<'de>>(
        &self,
        url: &str,
        what: &str,
    ) -> Result<T, LookupError> {
        let r = self
            .http
            .get(url)
            .bearer_auth(&self.token)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| transport(&e, what))?;
        let status = r.status().as_u16();
        if status != 200 {
            return Err(http_error(status, what));
        }
        r.json()
            .await
            .map_err(|_| LookupError::Transient(format!("{what}: unreadable answer")))
    }

    async fn find_phone(&self, lookup: &Lookup) -> Result<Phone, LookupError> {
        let Lookup::Amocrm {
            subdomain, lead_id, ..
        } = lookup
        else {
            return Err(LookupError::Config("not an AmoCRM look-up".into()));
        };
        let base = match (&self.base_url, subdomain) {
            (Some(b), _) => b.clone(),
            (None, Some(s)) if s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') => {
                format!("https://{s}.amocrm.ru")
            }
            _ => {
                return Err(LookupError::Config(
                    "no base_url and no usable subdomain in the hook".into(),
                ));
            }
        };
        let lead_id: u64 = lead_id
            .parse()
            .map_err(|_| LookupError::NotFound("lead id is not a number".into()))?;
        let lead: Lead = self
            .get(
                &format!("{base}/api/v4/leads/{lead_id}?with=contacts"),
                "lead",
            )
            .await?;
        let contacts = lead.embedded.map(|e| e.contacts).unwrap_or_default();
        let mut ordered: Vec<&ContactRef> = contacts.iter().filter(|c| c.is_main).collect();
        ordered.extend(contacts.iter().filter(|c| !c.is_main));
        if ordered.is_empty() {
            return Err(LookupError::NotFound("the lead has no contact".into()));
        }
        let mut worst = phone::PhoneError::Empty;
        for c in ordered {
            let contact: Contact = self
                .get(&format!("{base}/api/v4/contacts/{}", c.id), "contact")
                .await?;
            let phones: Vec<String> = contact
                .custom_fields_values
                .unwrap_or_default()
                .into_iter()
                .filter(|f| {
                    f.field_code.as_deref() == Some("PHONE")
                        || f.field_name.as_deref().is_some_and(|n| {
                            n.eq_ignore_ascii_case("телефон") || n.eq_ignore_ascii_case("phone")
                        })
                })
                .flat_map(|f| f.values)
                .filter_map(|v| match v.value {
                    serde_json::Value::String(s) => Some(s),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .collect();
            match phone::first_valid(phones.iter().map(String::as_str)) {
                Ok(p) => return Ok(p),
                Err(e) if e != phone::PhoneError::Empty => worst = e,
                Err(_) => {}
            }
        }
        Err(LookupError::NotFound(format!(
            "contacts have {}",
            worst.reason()
        )))
    }
}

impl PhoneLookup for AmoCrm {
    fn find<'a>(&'a self, lookup: &'a Lookup) -> BoxFuture<'a, Result<Phone, LookupError>> {
        self.find_phone(lookup).boxed()
    }
}
