//! Phone look-up for hooks that carry none (seed 001, issue 4): a modern
//! AmoCRM status hook has only the lead id; some YCLIENTS hooks lack the
//! client's phone. One file per CRM; the worker treats a transient failure
//! like a transient send (retry ladder) and "no phone anywhere" as a
//! recorded permanent outcome.

use std::collections::BTreeMap;

use futures_util::future::BoxFuture;
use shared::event::Lookup;
use shared::phone::Phone;

pub mod amocrm;
pub mod yclients;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LookupError {
    #[error("look-up failed for now: {0}")]
    Transient(String),
    #[error("no phone found: {0}")]
    NotFound(String),
    #[error("look-up misconfigured: {0}")]
    Config(String),
}

pub trait PhoneLookup: Send + Sync {
    fn find<'a>(&'a self, lookup: &'a Lookup) -> BoxFuture<'a, Result<Phone, LookupError>>;
}

/// A tenant's CRM accounts for look-ups.
#[derive(Default)]
pub struct Lookups {
    amocrm: Option<amocrm::AmoCrm>,
    yclients: Option<yclients::Yclients>,
}

impl Lookups {
    pub fn from_config(
        sections: &BTreeMap<String, serde_json::Value>,
        http: &reqwest::Client,
    ) -> Result<Lookups, String> {
        let mut out = Lookups::default();
        for (name, section) in sections {
            match name.as_str() {
                "amocrm" => {
                    out.amocrm = Some(
                        amocrm::AmoCrm::from_config(section, http.clone())
                            .map_err(|e| format!("lookup amocrm: {e}"))?,
                    )
                }
                "yclients" => {
                    out.yclients = Some(
                        yclients::Yclients::from_config(section, http.clone())
                            .map_err(|e| format!("lookup yclients: {e}"))?,
                    )
                }
                other => return Err(format!("unknown lookup {other:?}; known: amocrm, yclients")),
            }
        }
        Ok(out)
    }

    pub async fn phone(&self, lookup: &Lookup) -> Result<Phone, LookupError> {
        let lookup_impl: &dyn PhoneLookup = match lookup {
            Lookup::Amocrm { .. } => self
                .amocrm
                .as_ref()
                .map(|a| a as &dyn PhoneLookup)
                .ok_or_else(|| {
                    LookupError::Config("no [tenants.lookup.amocrm] account configured".into())
                })?,
            Lookup::Yclients { .. } => self
                .yclients
                .as_ref()
                .map(|y| y as &dyn PhoneLookup)
                .ok_or_else(|| {
                    LookupError::Config("no [tenants.lookup.yclients] account configured".into())
                })?,
        };
        lookup_impl.find(lookup).await
    }
}

/// Status classes shared by the CRM APIs.
pub(crate) fn http_error(status: u16, what: &str) -> LookupError {
    match status {
        401 | 403 => LookupError::Config(format!("{what}: HTTP {status} (token)")),
        404 | 204 => LookupError::NotFound(format!("{what}: HTTP {status}")),
        429 | 500..=599 => LookupError::Transient(format!("{what}: HTTP {status}")),
        _ => LookupError::Config(format!("{what}: HTTP {status}")),
    }
}

pub(crate) fn transport(e: &reqwest::Error, what: &str) -> LookupError {
    // Reads are idempotent: any transport failure is worth a retry.
    let kind = if e.is_timeout() {
        "timed out"
    } else {
        "request failed"
    };
    LookupError::Transient(format!("{what}: {kind}"))
}
