//! Webhook sources: each module turns one source's bytes into [`Item`]s.
//!
//! A source only parses and filters. It does not authenticate, normalise
//! phones, assign ids or publish: that is done once, for all sources, by the
//! route (`crate::accept`). Adding a source is adding a file here and a line
//! in [`Registry::new`].

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use shared::event::{EventKind, Lookup, Params};
use shared::{SourceId, Tenant};

pub mod amocrm;
pub mod booking;
pub mod iiko;
pub mod rkeeper;
pub mod yclients;

/// The body as the route received it, already classified by Content-Type.
#[derive(Debug, Clone, Copy)]
pub enum Body<'a> {
    Json(&'a [u8]),
    /// `application/x-www-form-urlencoded`, raw (still percent-encoded).
    Form(&'a [u8]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentKind {
    Json,
    Form,
}

impl ContentKind {
    pub fn mime(self) -> &'static str {
        match self {
            ContentKind::Json => "application/json",
            ContentKind::Form => "application/x-www-form-urlencoded",
        }
    }
}

/// One thing that happened at the source, before the common step turns it
/// into an [`shared::Event`] (phone normalisation, id, dedup key, times).
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    pub kind: EventKind,
    /// What the customer event is about, without tenant, source or kind:
    /// the order, visit or lead (e.g. `<organizationId>:<order id>`, never
    /// its status), or for a booking the case and what changed. Becomes the
    /// dedup key `<tenant>:<source>:<identity>:<kind>`; a webhook sent twice
    /// and a later status of the same order give the same identity.
    pub identity: String,
    /// The source's own id of the record (iiko order id, R-Keeper order,
    /// YCLIENTS record, AmoCRM lead, booking case): what an admin searches the
    /// delivery journal by.
    pub reference: Option<String>,
    pub occurred_at: Option<DateTime<Utc>>,
    /// The location inside the tenant (iiko organizationId, YCLIENTS company_id, ...).
    pub location: Option<String>,
    /// Raw phone strings in the source's priority order; the first that
    /// normalises wins. Empty when the payload has none.
    pub phones: Vec<String>,
    pub email: Option<String>,
    pub name: Option<String>,
    pub params: Params,
    /// How to fetch the phone later when the payload may not carry one.
    pub lookup: Option<Lookup>,
}

impl Draft {
    pub fn new(kind: EventKind, identity: impl Into<String>) -> Self {
        Draft {
            kind,
            identity: identity.into(),
            reference: None,
            occurred_at: None,
            location: None,
            phones: Vec::new(),
            email: None,
            name: None,
            params: Params::default(),
            lookup: None,
        }
    }
}

/// One item of a webhook body (a body may carry several: iiko batches,
/// several AmoCRM leads). Short-lived, so the size difference between the
/// variants does not matter and boxing would only add an allocation.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Item {
    Accept(Draft),
    /// Understood but not for us (non-final status, deleted record, event type
    /// we do not notify on, ...). The source must not retry these.
    Ignore(String),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    /// The body is not what this source sends; the message says what is wrong
    /// (it may be shown to the caller, so it must not echo phones or e-mails).
    #[error("{0}")]
    Malformed(String),
}

pub trait Source: Send + Sync + 'static {
    fn id(&self) -> SourceId;

    /// Content types this source sends; others get 415.
    fn accepts(&self) -> &'static [ContentKind];

    fn parse(&self, body: Body<'_>, tenant: &Tenant) -> Result<Vec<Item>, ParseError>;

    /// The JSON body as the OpenAPI document describes it (a JSON Schema):
    /// the schema of the parser's own types, whose named parts go into
    /// `components`, narrowed where the parser asks for more than its types
    /// say. It admits what [`parse`](Source::parse) reads without a 400.
    fn json_schema(&self, components: &mut Components) -> Value;

    /// The `application/x-www-form-urlencoded` body's schema, for a source
    /// that accepts one.
    fn form_schema(&self) -> Option<Value> {
        None
    }

    /// A body this source really sent (a copy of a file of
    /// `../shared/fixtures`, in `ingest/openapi-examples/`), in the first
    /// content type of [`accepts`](Source::accepts): the document's example.
    fn example(&self) -> &'static str;
}

/// A JSON Schema `pattern` for text that is not blank: it has a character
/// that Rust's `str::trim` keeps (the Unicode `White_Space` set, spelled
/// out: regex engines disagree on what `\S` means).
pub(crate) const NOT_BLANK: &str = "[^\\t\\n\\u000B\\f\\r \\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000]";

/// Named schemas an OpenAPI document keeps under `components.schemas`.
pub type Components = serde_json::Map<String, Value>;

/// A reference to `T`'s schema, with `T` and every schema it refers to
/// added to `components`.
pub(crate) fn component<T: utoipa::ToSchema>(components: &mut Components) -> Value {
    let mut named = Vec::new();
    T::schemas(&mut named);
    named.push((T::name().into_owned(), T::schema()));
    for (name, schema) in named {
        components.insert(name, serde_json::to_value(schema).unwrap_or_default());
    }
    serde_json::json!({"$ref": format!("#/components/schemas/{}", T::name())})
}

pub struct Registry {
    sources: HashMap<SourceId, Box<dyn Source>>,
}

impl Registry {
    pub fn new() -> Self {
        let all: Vec<Box<dyn Source>> = vec![
            Box::new(iiko::Iiko),
            Box::new(rkeeper::Rkeeper),
            Box::new(yclients::Yclients),
            Box::new(amocrm::Amocrm),
            Box::new(booking::Booking),
        ];
        Registry {
            sources: all.into_iter().map(|s| (s.id(), s)).collect(),
        }
    }

    pub fn get(&self, id: SourceId) -> Option<&dyn Source> {
        self.sources.get(&id).map(|s| s.as_ref())
    }

    /// Every source, in [`SourceId::ALL`]'s order.
    pub fn all(&self) -> impl Iterator<Item = &dyn Source> {
        SourceId::ALL.into_iter().filter_map(|id| self.get(id))
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

/// One record of a body: a JSON object, nothing else. serde's derived
/// structs also read an array (the fields by position), which no source
/// sends and which the OpenAPI schema does not admit; a field holding a
/// record says so with `#[serde(deserialize_with = "record")]` (or
/// `records` for a list of them).
pub(crate) struct Obj<T>(pub T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Obj<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
            type Value = Obj<T>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Obj<T>, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Obj)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// An optional record (object or null); see [`Obj`].
pub(crate) fn record<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    let o: Option<Obj<T>> = serde::Deserialize::deserialize(d)?;
    Ok(o.map(|Obj(t)| t))
}

/// An optional list of records; see [`Obj`].
pub(crate) fn records<'de, D, T>(d: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    let o: Option<Vec<Obj<T>>> = serde::Deserialize::deserialize(d)?;
    Ok(o.map(|v| v.into_iter().map(|Obj(t)| t).collect()))
}

/// Serde helper shared by sources: ids arrive as numbers or strings depending
/// on the source and its version; keep them as strings.
pub(crate) fn id_string(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A money value as a decimal string with kopeck precision (`1530.50`,
/// `1500`), so float noise like `33.710000000000001` never reaches a message.
pub(crate) fn amount(v: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    match v {
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        Value::Number(n) => n.as_f64().map(decimal),
        Value::String(s) => {
            let s = s.trim();
            s.parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(|_| s.to_string())
        }
        _ => None,
    }
}

pub(crate) fn decimal(f: f64) -> String {
    let s = format!("{f:.2}");
    s.strip_suffix(".00").map(str::to_string).unwrap_or(s)
}

/// The bytes of a body that must be one JSON object, or what is wrong with
/// it (for sources that send one event per request).
pub(crate) fn json_object(body: Body<'_>) -> Result<&[u8], String> {
    let bytes = match body {
        Body::Json(b) => b,
        Body::Form(_) => return Err("expected a JSON body, got a form".into()),
    };
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        let why = match serde_json::from_slice::<serde_json::Value>(bytes) {
            Err(e) => describe(&e),
            Ok(_) => "not an object".to_string(),
        };
        return Err(format!("expected a JSON object: {why}"));
    }
    Ok(bytes)
}

/// A trimmed, non-empty string, or nothing.
pub(crate) fn text(s: Option<&str>) -> Option<String> {
    s.map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// What is wrong with a JSON body, by kind and position only: serde_json's
/// own messages can quote payload values (phones, e-mails).
pub(crate) fn describe(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Syntax => "invalid JSON",
        Category::Eof => "unexpected end of JSON",
        Category::Data => "unexpected value type",
        Category::Io => "unreadable body",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

/// A tenant with default source settings, for unit tests.
#[cfg(test)]
pub(crate) fn tenant() -> Tenant {
    Tenant {
        id: "t".into(),
        sources: Default::default(),
    }
}

/// Path to a fixture in ../shared/fixtures, for unit tests.
#[cfg(test)]
pub(crate) fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}
