//! AmoCRM: `GET /api/v4/leads/{id}?with=contacts`, then the main contact's
//! `GET /api/v4/contacts/{id}` and its PHONE field (several values: the
//! first that normalises).
//!
//! The tenant's token goes only to the account the tenant configured
//! (`base_url`, or `subdomain` → `https://<subdomain>.amocrm.ru`), never to a
//! host a hook names: a hook from another account (its `account[subdomain]`
//! is not ours) gets no look-up and is dead-lettered as `config`.

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde::Deserialize;
use shared::event::Lookup;
use shared::phone::{self, Phone};

use super::{LookupError, PhoneLookup, http_error, transport};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The account's API root; or give `subdomain`.
    #[serde(default)]
    base_url: Option<String>,
    /// `<subdomain>` of `https://<subdomain>.amocrm.ru`.
    #[serde(default)]
    subdomain: Option<String>,
    /// Long-lived token of the integration.
    access_token: String,
    #[serde(default = "crate::providers::default_timeout_ms")]
    timeout_ms: u64,
}

pub struct AmoCrm {
    base_url: String,
    /// The account's subdomain when known (configured, or read off an
    /// amoCRM/Kommo `base_url`): a hook naming another is refused.
    subdomain: Option<String>,
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
        let subdomain = match &c.subdomain {
            Some(s) if valid_subdomain(s) => Some(s.to_ascii_lowercase()),
            Some(s) => return Err(format!("subdomain {s:?} is not an amoCRM subdomain")),
            None => None,
        };
        let base_url = match (c.base_url, &subdomain) {
            (Some(b), _) => b.trim_end_matches('/').to_string(),
            (None, Some(s)) => format!("https://{s}.amocrm.ru"),
            (None, None) => {
                return Err(
                    "set base_url or subdomain: the token goes only to the account you configure"
                        .into(),
                );
            }
        };
        let subdomain = subdomain.or_else(|| subdomain_of(&base_url));
        Ok(AmoCrm {
            base_url,
            subdomain,
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
        if let (Some(hook), Some(ours)) = (subdomain, &self.subdomain)
            && !hook.eq_ignore_ascii_case(ours)
        {
            return Err(LookupError::Config(format!(
                "the hook comes from amoCRM account {:?}, but this tenant's look-up account is {ours:?}: \
                 no look-up (the token goes only to the configured account)",
                shared::mask::text(&hook.chars().take(64).collect::<String>())
            )));
        }
        let base = &self.base_url;
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

fn valid_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 63 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// `acme` of `https://acme.amocrm.ru` (or `.amocrm.com`, `.kommo.com`).
fn subdomain_of(base_url: &str) -> Option<String> {
    let host = reqwest::Url::parse(base_url)
        .ok()?
        .host_str()?
        .to_ascii_lowercase();
    let (first, rest) = host.split_once('.')?;
    matches!(rest, "amocrm.ru" | "amocrm.com" | "kommo.com")
        .then(|| first.to_string())
        .filter(|s| valid_subdomain(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built(v: serde_json::Value) -> Result<AmoCrm, String> {
        AmoCrm::from_config(&v, reqwest::Client::new())
    }

    #[test]
    fn the_account_is_configured_never_taken_from_the_hook() {
        let err = built(serde_json::json!({"access_token": "t"}))
            .err()
            .unwrap();
        assert!(err.contains("base_url or subdomain"), "{err}");
        let a = built(serde_json::json!({"access_token": "t", "subdomain": "Acme"})).unwrap();
        assert_eq!(a.base_url, "https://acme.amocrm.ru");
        assert_eq!(a.subdomain.as_deref(), Some("acme"));
        let b =
            built(serde_json::json!({"access_token": "t", "base_url": "https://shop.kommo.com/"}))
                .unwrap();
        assert_eq!(b.subdomain.as_deref(), Some("shop"));
        let c = built(serde_json::json!({"access_token": "t", "base_url": "http://127.0.0.1:9"}))
            .unwrap();
        assert_eq!(c.subdomain, None);
        assert!(
            built(serde_json::json!({"access_token": "t", "subdomain": "evil.com/x"})).is_err()
        );
    }

    #[tokio::test]
    async fn a_hook_from_another_account_gets_no_request() {
        // Nothing listens on port 9: a request would be a transient error, not this.
        let a = built(serde_json::json!({"access_token": "t", "subdomain": "acme",
            "base_url": "http://127.0.0.1:9"}))
        .unwrap();
        let lookup = Lookup::Amocrm {
            account_id: None,
            subdomain: Some("attacker".into()),
            lead_id: "1".into(),
        };
        match a.find_phone(&lookup).await {
            Err(LookupError::Config(reason)) => {
                assert!(
                    reason.contains("attacker") && reason.contains("acme"),
                    "{reason}"
                )
            }
            other => panic!("expected a config error, got {other:?}"),
        }
    }
}
