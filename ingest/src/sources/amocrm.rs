//! AmoCRM (Kommo) webhooks.
//!
//! Real hooks are `application/x-www-form-urlencoded` with bracketed keys
//! (`leads[status][0][status_id]=142&account[subdomain]=acme`, brackets
//! percent-encoded); seed 001's customers also post the same structure as
//! JSON, where lists are arrays or objects keyed by index (providers.md A1).
//! Every `leads[status][i]` is one item: a lead moved into one of the
//! tenant's won statuses is a [`EventKind::DealWon`], anything else is ignored.
//!
//! Indexed lists are kept as maps keyed by the index string and ordered
//! numerically afterwards, so a hostile index such as
//! `leads[status][99999999999999]` allocates nothing.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::json;
use shared::event::{EventKind, Lookup};
use shared::{SourceId, Tenant};

use super::{Body, Components, ContentKind, Draft, Item, NOT_BLANK, ParseError, Source};

/// Deepest legitimate key: `contacts[update][0][custom_fields][0][values][0][value]` (7).
const MAX_DEPTH: usize = 10;

pub struct Amocrm;

impl Source for Amocrm {
    fn id(&self) -> SourceId {
        SourceId::Amocrm
    }

    fn accepts(&self) -> &'static [ContentKind] {
        &[ContentKind::Form, ContentKind::Json]
    }

    fn parse(&self, body: Body<'_>, tenant: &Tenant) -> Result<Vec<Item>, ParseError> {
        let hook = match body {
            Body::Form(bytes) => from_form(bytes)?,
            Body::Json(bytes) => from_json(bytes)?,
        };
        items(&hook, tenant)
    }

    /// Written beside the decoder rather than derived: lists arrive as
    /// arrays or as objects keyed by index, a record may be either, nulls
    /// read as absent and a leaf may be any JSON value (see [`Scalar`],
    /// [`Indexed`], [`lists_as_maps`]). A body must name a lead change, a
    /// contact change or the account; a lead whose status changed must
    /// have an id.
    fn json_schema(&self, components: &mut Components) -> Value {
        let name = |n: &str| json!({"$ref": format!("#/components/schemas/amocrm.{n}")});
        let scalar = json!({"description": "Any JSON value: text, a number, a boolean, or an object whose `value` is read"});
        let filled = json!({"anyOf": [
            {"type": "string", "pattern": NOT_BLANK},
            {"type": "number"},
            {"type": "boolean"},
            {"type": "object", "required": ["value"], "properties": {"value": {"anyOf": [
                {"type": "string", "pattern": NOT_BLANK}, {"type": "number"}, {"type": "boolean"},
            ]}}},
        ]});
        // A record: an object, an array (read as an object keyed by index)
        // or null (absent).
        let record = |properties: Value, extra: Value| {
            let mut object = json!({"type": "object", "properties": properties});
            if let (Some(o), Some(e)) = (object.as_object_mut(), extra.as_object()) {
                o.extend(e.clone());
            }
            json!({"anyOf": [object, {"type": "array"}, {"type": "null"}]})
        };
        let indexed = |item: Value| {
            let item = json!({"anyOf": [item, {"type": "null"}]});
            json!({"anyOf": [
                {"type": "object", "additionalProperties": item},
                {"type": "array", "items": item},
                {"type": "null"},
            ]})
        };
        // Holds at least one item that is not null.
        let some = json!({"anyOf": [
            {"type": "object", "not": {"additionalProperties": {"type": "null"}}},
            {"type": "array", "contains": {"not": {"type": "null"}}},
        ]});
        let both = |a: &str, b: &str| json!({"required": [a, b], "properties": {a: {"not": {"type": "null"}}, b: {"not": {"type": "null"}}}});
        components.insert("amocrm.Scalar".into(), scalar);
        components.insert(
            "amocrm.Field".into(),
            record(
                json!({
                    "id": name("Scalar"), "field_id": name("Scalar"),
                    "name": name("Scalar"), "field_name": name("Scalar"),
                    "code": name("Scalar"), "field_code": name("Scalar"),
                    "values": indexed(name("Scalar")),
                }),
                // `field_id` is another name of `id` (API v4): not both.
                json!({"not": {"anyOf": [
                    both("id", "field_id"), both("name", "field_name"), both("code", "field_code"),
                ]}}),
            ),
        );
        let fields = indexed(name("Field"));
        let lead_keys = [
            "id",
            "name",
            "status_id",
            "old_status_id",
            "pipeline_id",
            "price",
            "account_id",
            "last_modified",
        ];
        let mut lead: serde_json::Map<String, Value> = lead_keys
            .iter()
            .map(|k| (k.to_string(), name("Scalar")))
            .collect();
        lead.insert(
            "main_contact".into(),
            record(
                json!({"id": name("Scalar"), "name": name("Scalar"), "phone": name("Scalar")}),
                json!({}),
            ),
        );
        lead.insert("custom_fields".into(), fields.clone());
        lead.insert("custom_fields_values".into(), fields.clone());
        components.insert("amocrm.Lead".into(), record(Value::Object(lead), json!({})));
        components.insert(
            "amocrm.Contact".into(),
            record(
                json!({
                    "id": name("Scalar"), "name": name("Scalar"), "phone": name("Scalar"),
                    "email": name("Scalar"), "type": name("Scalar"),
                    "custom_fields": fields.clone(), "custom_fields_values": fields,
                }),
                json!({}),
            ),
        );
        let actions = [
            "status",
            "add",
            "update",
            "delete",
            "restore",
            "responsible",
            "note",
        ];
        let changed = |of: &str| {
            let with: Vec<Value> = actions
                .iter()
                .map(|a| json!({"required": [a], "properties": {*a: some.clone()}}))
                .collect();
            json!({"required": [of], "properties": {of: {"type": "object", "anyOf": with}}})
        };
        let mut leads: serde_json::Map<String, Value> = actions
            .iter()
            .map(|a| (a.to_string(), indexed(name("Lead"))))
            .collect();
        // A lead whose status changed is read by its id.
        leads.insert(
            "status".into(),
            indexed(json!({"allOf": [name("Lead"), {"type": "object", "required": ["id"], "properties": {"id": filled}}]})),
        );
        let contacts: serde_json::Map<String, Value> = actions
            .iter()
            .map(|a| (a.to_string(), indexed(name("Contact"))))
            .collect();
        json!({
            "type": "object",
            "properties": {
                "leads": record(Value::Object(leads), json!({})),
                "contacts": record(Value::Object(contacts), json!({})),
                "account": record(json!({"id": name("Scalar"), "subdomain": name("Scalar")}), json!({})),
            },
            "anyOf": [
                changed("leads"),
                changed("contacts"),
                {"required": ["account"], "properties": {"account": {"type": "object", "anyOf": [
                    {"required": ["id"], "properties": {"id": filled}},
                    {"required": ["subdomain"], "properties": {"subdomain": filled}},
                ]}}},
            ],
        })
    }

    /// AmoCRM's own encoding: bracketed keys (`leads[status][0][id]`), every
    /// value text. The keys Vestnik reads are listed; others are allowed
    /// and not read.
    fn form_schema(&self) -> Option<Value> {
        let lead = "leads[status][0]";
        Some(json!({
            "type": "object",
            "properties": {
                "account[id]": {"type": "string"},
                "account[subdomain]": {"type": "string"},
                format!("{lead}[id]"): {"type": "string", "pattern": NOT_BLANK},
                format!("{lead}[status_id]"): {"type": "string"},
                format!("{lead}[pipeline_id]"): {"type": "string"},
                format!("{lead}[old_status_id]"): {"type": "string"},
            },
            "additionalProperties": {"type": "string"},
            // A name and at most MAX_DEPTH bracketed parts, as `prepare_form` checks.
            "propertyNames": {"pattern": format!(
                "^[^\\[\\]]+((\\[[^\\[\\]]+\\]){{0,{MAX_DEPTH}}}|(\\[[^\\[\\]]+\\]){{0,{}}}\\[\\])$",
                MAX_DEPTH - 1
            )},
            "anyOf": [
                {"required": ["account[id]"], "properties": {"account[id]": {"pattern": NOT_BLANK}}},
                {"required": ["account[subdomain]"], "properties": {"account[subdomain]": {"pattern": NOT_BLANK}}},
                {"required": [format!("{lead}[id]")]},
            ],
            "dependentRequired": {
                format!("{lead}[status_id]"): [format!("{lead}[id]")],
                format!("{lead}[pipeline_id]"): [format!("{lead}[id]")],
                format!("{lead}[old_status_id]"): [format!("{lead}[id]")],
            },
        }))
    }

    fn example(&self) -> &'static str {
        include_str!(
            "../../openapi-examples/amocrm_form_leads_status_minimal_v4_logged_drvorobjev.txt"
        )
    }
}

// ---------------------------------------------------------------------------
// Decoding

fn from_form(bytes: &[u8]) -> Result<Hook, ParseError> {
    let prepared = prepare_form(bytes)?;
    serde_qs::Config::new()
        .max_depth(MAX_DEPTH)
        .use_form_encoding(true)
        .deserialize_bytes::<Hook>(&prepared)
        .map_err(|e| {
            malformed(&format!(
                "not an AmoCRM form body: {}",
                scrub(&e.to_string())
            ))
        })
}

/// `name[part][part]...`: a name without brackets, then bracketed parts
/// without brackets inside, only the last of which may be empty (`x[]`).
/// serde_qs refuses or misreads other keys (`a]`, `a[b`, `a[][b]`, an
/// empty name), at the cost of the pairs after them.
fn well_formed_key(key: &[u8]) -> bool {
    let name = key.iter().take_while(|b| !matches!(b, b'[' | b']')).count();
    if name == 0 {
        return false;
    }
    let mut part: Option<usize> = None;
    let mut empty_part = false;
    for &b in &key[name..] {
        if empty_part {
            return false;
        }
        part = match (b, part) {
            (b'[', None) => Some(0),
            (b']', Some(len)) => {
                empty_part = len == 0;
                None
            }
            (b'[' | b']', _) | (_, None) => return false,
            (_, Some(len)) => Some(len + 1),
        };
    }
    part.is_none()
}

/// Checks what serde_qs tolerates silently, and makes escapes uniform:
/// broken `%` escapes, keys nested deeper than [`MAX_DEPTH`] and bytes that
/// are not UTF-8 once decoded are refused; hex digits are upper-cased because
/// serde_qs only recognises `%5B`/`%5D` (not `%5b`) as brackets.
fn prepare_form(bytes: &[u8]) -> Result<Vec<u8>, ParseError> {
    let body = bytes.trim_ascii();
    if body.is_empty() {
        return Err(malformed("empty body"));
    }
    let mut out = Vec::with_capacity(body.len());
    for (n, pair) in body.split(|b| *b == b'&').enumerate() {
        if n > 0 {
            out.push(b'&');
        }
        let mut decoded = Vec::with_capacity(pair.len());
        let mut key_depth = 0usize;
        let mut in_key = true;
        // The key ends at the first `=` as sent (`%3D` is part of a key).
        let mut key_len = None;
        let mut i = 0;
        while let Some(&b) = pair.get(i) {
            let byte = match b {
                b'%' => {
                    let (Some(h), Some(l)) = (
                        pair.get(i + 1).filter(|c| c.is_ascii_hexdigit()),
                        pair.get(i + 2).filter(|c| c.is_ascii_hexdigit()),
                    ) else {
                        return Err(malformed(&format!(
                            "broken percent-encoding in pair {}",
                            n + 1
                        )));
                    };
                    let (h, l) = (h.to_ascii_uppercase(), l.to_ascii_uppercase());
                    out.extend_from_slice(&[b'%', h, l]);
                    i += 3;
                    hex(h) * 16 + hex(l)
                }
                b'+' => {
                    out.push(b);
                    i += 1;
                    b' '
                }
                _ => {
                    out.push(b);
                    i += 1;
                    b
                }
            };
            if in_key && b == b'=' {
                in_key = false;
                key_len = Some(decoded.len());
            } else if in_key && byte == b'[' {
                key_depth += 1;
            }
            decoded.push(byte);
        }
        let key = &decoded[..key_len.unwrap_or(decoded.len())];
        if !well_formed_key(key) {
            return Err(malformed(&format!(
                "the key of pair {} is not a name followed by [bracketed] parts",
                n + 1
            )));
        }
        if key_depth > MAX_DEPTH {
            return Err(malformed(&format!(
                "key of pair {} is nested deeper than {MAX_DEPTH} levels",
                n + 1
            )));
        }
        if std::str::from_utf8(&decoded).is_err() {
            return Err(malformed(&format!(
                "pair {} is not valid UTF-8 once decoded",
                n + 1
            )));
        }
    }
    Ok(out)
}

fn hex(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    }
}

fn from_json(bytes: &[u8]) -> Result<Hook, ParseError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        malformed(&format!(
            "invalid JSON at line {} column {}",
            e.line(),
            e.column()
        ))
    })?;
    if !value.is_object() {
        return Err(malformed("expected a JSON object"));
    }
    Hook::deserialize(lists_as_maps(value))
        .map_err(|e| malformed(&format!("unexpected JSON shape: {}", scrub(&e.to_string()))))
}

/// JSON hooks may write a list as an array or as an object keyed by index;
/// make it always the latter (as the form decoder produces), and drop nulls
/// so they read as absent.
fn lists_as_maps(v: Value) -> Value {
    match v {
        Value::Array(items) => Value::Object(
            items
                .into_iter()
                .enumerate()
                .filter(|(_, v)| !v.is_null())
                .map(|(i, v)| (i.to_string(), lists_as_maps(v)))
                .collect(),
        ),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, lists_as_maps(v)))
                .collect(),
        ),
        other => other,
    }
}

/// Library error texts may quote input (`invalid type: string "+7..."`);
/// keep their structure but never a quoted value, long number or e-mail.
fn scrub(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut quote: Option<char> = None;
    for c in msg.chars() {
        match quote {
            Some(q) if c == q => {
                out.push('…');
                out.push(c);
                quote = None;
            }
            Some(_) => {}
            None if c == '"' || c == '`' => {
                out.push(c);
                quote = Some(c);
            }
            None => out.push(c),
        }
    }
    out.split(' ')
        .map(|word| {
            let digits = word.chars().filter(char::is_ascii_digit).count();
            if word.contains('@') || digits >= 5 {
                "…"
            } else {
                word
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------
// Shape

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Hook {
    leads: Actions<Lead>,
    contacts: Actions<Contact>,
    account: Account,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Actions<T> {
    status: Indexed<T>,
    add: Indexed<T>,
    update: Indexed<T>,
    delete: Indexed<T>,
    restore: Indexed<T>,
    responsible: Indexed<T>,
    note: Indexed<T>,
}

impl<T> Actions<T> {
    /// Every action but `status`, with its name, in a stable order.
    fn others(&self) -> [(&'static str, &Indexed<T>); 6] {
        [
            ("add", &self.add),
            ("update", &self.update),
            ("delete", &self.delete),
            ("restore", &self.restore),
            ("responsible", &self.responsible),
            ("note", &self.note),
        ]
    }

    fn all(&self) -> impl Iterator<Item = &T> {
        std::iter::once(&self.status)
            .chain(self.others().into_iter().map(|(_, l)| l))
            .flat_map(|l| l.iter())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Account {
    id: Scalar,
    subdomain: Scalar,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Lead {
    id: Scalar,
    name: Scalar,
    status_id: Scalar,
    old_status_id: Scalar,
    pipeline_id: Scalar,
    price: Scalar,
    account_id: Scalar,
    last_modified: Scalar,
    main_contact: MainContact,
    custom_fields: Indexed<Field>,
    custom_fields_values: Indexed<Field>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MainContact {
    id: Scalar,
    name: Scalar,
    phone: Scalar,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Contact {
    id: Scalar,
    name: Scalar,
    phone: Scalar,
    email: Scalar,
    /// `contact` or `company` (companies arrive under `contacts` in legacy hooks).
    #[serde(rename = "type")]
    kind: Scalar,
    custom_fields: Indexed<Field>,
    custom_fields_values: Indexed<Field>,
}

/// A legacy (`id`, `name`, `code`) or API v4 (`field_id`, `field_name`,
/// `field_code`) custom field.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Field {
    #[serde(alias = "field_id")]
    id: Scalar,
    #[serde(alias = "field_name")]
    name: Scalar,
    #[serde(alias = "field_code")]
    code: Scalar,
    values: Indexed<Scalar>,
}

/// A list written as `x[0]=..&x[1]=..` (or a JSON array turned into an object
/// by [`lists_as_maps`]), in numeric index order.
#[derive(Debug)]
struct Indexed<T>(Vec<(String, T)>);

impl<T> Default for Indexed<T> {
    fn default() -> Self {
        Indexed(Vec::new())
    }
}

impl<T> Indexed<T> {
    fn iter(&self) -> impl Iterator<Item = &T> {
        self.0.iter().map(|(_, v)| v)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Indexed<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Indexed<T>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an indexed list")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut items = BTreeMap::new();
                while let Some((k, v)) = map.next_entry::<String, T>()? {
                    items.insert(k, v);
                }
                let mut items: Vec<(String, T)> = items.into_iter().collect();
                items.sort_by(|(a, _), (b, _)| index_order(a).cmp(&index_order(b)));
                Ok(Indexed(items))
            }

            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Indexed::default())
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                if s.trim().is_empty() {
                    Ok(Indexed::default())
                } else {
                    Err(E::custom("expected an indexed list, found text"))
                }
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

/// Numeric indices first, by value (without parsing, so any length works),
/// then other keys.
fn index_order(key: &str) -> (bool, usize, &str) {
    let numeric = !key.is_empty() && key.bytes().all(|b| b.is_ascii_digit());
    let trimmed = key.trim_start_matches('0');
    if numeric {
        (false, trimmed.len(), trimmed)
    } else {
        (true, key.len(), key)
    }
}

/// A leaf value as text: form values are always text, JSON ones may be
/// numbers or booleans. An object stands for its `value` (a custom field
/// value is `values[0][value]=...` or, for dates, just `values[0]=...`).
#[derive(Debug, Default, Clone, PartialEq)]
struct Scalar(Option<String>);

impl Scalar {
    fn get(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a value")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<Scalar, E> {
                let s = s.trim();
                Ok(Scalar((!s.is_empty()).then(|| s.to_string())))
            }

            fn visit_bytes<E: de::Error>(self, b: &[u8]) -> Result<Scalar, E> {
                match std::str::from_utf8(b) {
                    Ok(s) => self.visit_str(s),
                    Err(_) => Ok(Scalar(None)),
                }
            }

            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Scalar, E> {
                Ok(Scalar(Some(n.to_string())))
            }

            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Scalar, E> {
                Ok(Scalar(Some(n.to_string())))
            }

            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Scalar, E> {
                Ok(Scalar(n.is_finite().then(|| n.to_string())))
            }

            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Scalar, E> {
                Ok(Scalar(Some(b.to_string())))
            }

            fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
                Ok(Scalar(None))
            }

            fn visit_none<E: de::Error>(self) -> Result<Scalar, E> {
                Ok(Scalar(None))
            }

            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Scalar, D2::Error> {
                Scalar::deserialize(d)
            }

            /// Repeated keys (`a=1&a=2`): the last value wins, as in Rails/PHP.
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
                let mut last = Scalar(None);
                while let Ok(Some(v)) = seq.next_element::<Scalar>() {
                    if v.0.is_some() {
                        last = v;
                    }
                }
                Ok(last)
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
                let mut value = Scalar(None);
                while let Some(key) = map.next_key::<String>()? {
                    if key == "value" {
                        value = map.next_value()?;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(value)
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------
// Filtering and drafts

fn items(hook: &Hook, tenant: &Tenant) -> Result<Vec<Item>, ParseError> {
    let mut items = Vec::new();
    for (index, lead) in &hook.leads.status.0 {
        items.push(status_change(hook, index, lead, tenant)?);
    }
    for (action, list) in hook.leads.others() {
        for lead in list.iter() {
            let reason = match action {
                "delete" => "amocrm lead deleted".to_string(),
                _ => format!("amocrm lead {action} is not a status change"),
            };
            let id = lead
                .id
                .get()
                .map(|id| format!(" ({id})"))
                .unwrap_or_default();
            items.push(Item::Ignore(format!("{reason}{id}")));
        }
    }
    if items.is_empty() {
        if let Some((action, _)) = std::iter::once(("status", &hook.contacts.status))
            .chain(hook.contacts.others())
            .find(|(_, l)| !l.is_empty())
        {
            items.push(Item::Ignore(format!(
                "amocrm contact {action} is not notified (no lead status change)"
            )));
        } else if hook.account.id.get().is_some() || hook.account.subdomain.get().is_some() {
            items.push(Item::Ignore(
                "amocrm event without leads is not notified".into(),
            ));
        } else {
            return Err(malformed("body has no leads, contacts or account"));
        }
    }
    Ok(items)
}

fn status_change(
    hook: &Hook,
    index: &str,
    lead: &Lead,
    tenant: &Tenant,
) -> Result<Item, ParseError> {
    let Some(lead_id) = lead.id.get() else {
        return Err(malformed(&format!(
            "leads[status][{}] has no id",
            short(index)
        )));
    };
    let Some(status) = lead.status_id.get() else {
        return Ok(Item::Ignore(format!(
            "amocrm lead {lead_id} has no status_id"
        )));
    };
    let Ok(status_id) = status.parse::<u64>() else {
        return Ok(Item::Ignore(format!(
            "amocrm lead {lead_id} status is not a number"
        )));
    };
    if !tenant.sources.amocrm.won_status_ids.contains(&status_id) {
        return Ok(Item::Ignore(format!("lead status {status_id} is not won")));
    }

    let account_id = hook.account.id.get().or(lead.account_id.get());
    let subdomain = hook.account.subdomain.get();
    let account = account_id.or(subdomain).unwrap_or("-");
    // One won deal, one message: a lead moved between two won statuses
    // (or won again after a reopen) is the same deal.
    let mut draft = Draft::new(EventKind::DealWon, format!("{account}:{lead_id}"));
    draft.reference = Some(lead_id.to_string());
    draft.location = subdomain.or(account_id).map(str::to_string);
    draft.occurred_at = lead
        .last_modified
        .get()
        .and_then(|s| s.parse::<i64>().ok())
        .and_then(|secs| DateTime::<Utc>::from_timestamp(secs, 0));

    let contacts = related_contacts(hook, lead);
    draft.phones = phones(lead, &contacts, &tenant.sources.amocrm.phone_field_ids);
    if draft.phones.is_empty() {
        draft.lookup = Some(Lookup::Amocrm {
            account_id: account_id.map(str::to_string),
            subdomain: subdomain.map(str::to_string),
            lead_id: lead_id.to_string(),
        });
    }
    draft.name = lead
        .main_contact
        .name
        .get()
        .map(str::to_string)
        .or_else(|| {
            contacts
                .iter()
                .filter(|c| c.kind.get() != Some("company"))
                .find_map(|c| c.name.get().map(str::to_string))
        });
    draft.email = email(&contacts);

    let params = &mut draft.params;
    params.order_number = Some(lead_id.to_string());
    params.amount = lead
        .price
        .get()
        .filter(|p| p.parse::<f64>().is_ok_and(f64::is_finite))
        .map(str::to_string);
    let extra = [
        ("deal_name", lead.name.get()),
        ("pipeline_id", lead.pipeline_id.get()),
        ("status_id", Some(status)),
        ("old_status_id", lead.old_status_id.get()),
    ];
    for (k, v) in extra {
        if let Some(v) = v {
            params.extra.insert(k.to_string(), v.to_string());
        }
    }
    Ok(Item::Accept(draft))
}

/// Contacts of the body, the lead's main contact first, companies last.
fn related_contacts<'a>(hook: &'a Hook, lead: &Lead) -> Vec<&'a Contact> {
    let main = lead.main_contact.id.get();
    let mut contacts: Vec<&Contact> = hook.contacts.all().collect();
    contacts.sort_by_key(|c| {
        (
            main.is_none() || c.id.get() != main,
            c.kind.get() == Some("company"),
        )
    });
    contacts
}

/// Seed 001's priority: the lead's main contact phone; contacts' API v4
/// custom fields; their legacy custom fields; their `phone`; then phone
/// fields on the lead itself. Contacts are taken main contact first; within
/// one contact's fields a configured field id beats `code = PHONE`, which
/// beats the name Телефон/Phone. Every value of a matching field is a
/// candidate (the caller keeps the first valid one).
fn phones(lead: &Lead, contacts: &[&Contact], field_ids: &[u64]) -> Vec<String> {
    let mut out = Vec::new();
    push_phone(&mut out, lead.main_contact.phone.get());
    for contact in contacts {
        field_phones(&[&contact.custom_fields_values], field_ids, &mut out);
    }
    for contact in contacts {
        field_phones(&[&contact.custom_fields], field_ids, &mut out);
    }
    for contact in contacts {
        push_phone(&mut out, contact.phone.get());
    }
    field_phones(
        &[&lead.custom_fields_values, &lead.custom_fields],
        field_ids,
        &mut out,
    );
    out
}

fn field_phones(lists: &[&Indexed<Field>], field_ids: &[u64], out: &mut Vec<String>) {
    for rule in [Match::Id, Match::Code, Match::Name] {
        for field in lists.iter().flat_map(|l| l.iter()) {
            if rule.phone(field, field_ids) {
                for value in field.values.iter() {
                    push_phone(out, value.get());
                }
            }
        }
    }
}

fn push_phone(out: &mut Vec<String>, phone: Option<&str>) {
    if let Some(phone) = phone
        && !out.iter().any(|p| p == phone)
    {
        out.push(phone.to_string());
    }
}

#[derive(Clone, Copy)]
enum Match {
    Id,
    Code,
    Name,
}

impl Match {
    fn phone(self, field: &Field, field_ids: &[u64]) -> bool {
        match self {
            Match::Id => field
                .id
                .get()
                .and_then(|id| id.parse::<u64>().ok())
                .is_some_and(|id| field_ids.contains(&id)),
            Match::Code => field
                .code
                .get()
                .is_some_and(|c| c.eq_ignore_ascii_case("PHONE")),
            Match::Name => field
                .name
                .get()
                .is_some_and(|n| matches!(n.to_lowercase().as_str(), "телефон" | "phone")),
        }
    }
}

fn email(contacts: &[&Contact]) -> Option<String> {
    let is_email = |f: &Field| {
        f.code
            .get()
            .is_some_and(|c| c.eq_ignore_ascii_case("EMAIL"))
            || f.name
                .get()
                .is_some_and(|n| matches!(n.to_lowercase().as_str(), "email" | "e-mail" | "почта"))
    };
    contacts.iter().find_map(|c| {
        c.email.get().map(str::to_string).or_else(|| {
            c.custom_fields_values
                .iter()
                .chain(c.custom_fields.iter())
                .filter(|f| is_email(f))
                .flat_map(|f| f.values.iter())
                .find_map(|v| v.get().filter(|v| v.contains('@')).map(str::to_string))
        })
    })
}

/// An index as shown in a message (hostile ones can be long).
fn short(index: &str) -> String {
    index.chars().take(20).collect()
}

fn malformed(msg: &str) -> ParseError {
    ParseError::Malformed(format!("amocrm: {msg}"))
}

#[cfg(test)]
mod tests {
    use super::super::{fixture, tenant};
    use super::*;

    fn form(body: &str) -> Result<Vec<Item>, ParseError> {
        Amocrm.parse(Body::Form(body.as_bytes()), &tenant())
    }

    /// A key is a name and bracketed parts, only the last of which may be
    /// empty: serde_qs misreads the others and loses the pairs after them.
    /// A `%3D` is part of the key, not its end.
    #[test]
    fn keys_that_are_not_name_and_parts_are_refused() {
        let account = "account%5Bsubdomain%5D=shop";
        for key in [
            "a%5D",
            "a%5Bb",
            "a%5B%5D%5Bb%5D",
            "",
            "%5Bx%5D",
            "a%5Bb%5D%5Bc",
        ] {
            let body = format!("{key}=1&{account}");
            let e = form(&body).expect_err(&body);
            assert!(e.to_string().contains("pair 1"), "{body}: {e}");
        }
        for key in ["a", "a%5B%5D", "a%5Bb%5D%5B0%5D", "a%3Db", "a%5Bx%3Dy%5D"] {
            let body = format!("{key}=1&{account}");
            assert!(form(&body).is_ok(), "{body}");
        }
    }

    fn json(body: &str) -> Result<Vec<Item>, ParseError> {
        Amocrm.parse(Body::Json(body.as_bytes()), &tenant())
    }

    fn accepted(item: &Item) -> &Draft {
        match item {
            Item::Accept(d) => d,
            Item::Ignore(r) => panic!("expected Accept, got Ignore({r})"),
        }
    }

    fn ignored(item: &Item) -> &str {
        match item {
            Item::Ignore(r) => r,
            Item::Accept(d) => panic!("expected Ignore, got Accept({})", d.identity),
        }
    }

    fn malformed_msg(r: Result<Vec<Item>, ParseError>) -> String {
        let ParseError::Malformed(msg) = r.unwrap_err();
        msg
    }

    /// Percent-encodes the brackets as AmoCRM does, and spaces as `+`.
    fn encode(pairs: &[(&str, &str)]) -> String {
        let enc = |s: &str| {
            let mut out = String::new();
            for b in s.bytes() {
                match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                        out.push(b as char)
                    }
                    b' ' => out.push('+'),
                    _ => out.push_str(&format!("%{b:02X}")),
                }
            }
            out
        };
        pairs
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&")
    }

    #[test]
    fn fixture_nonfinal_status_change_is_ignored() {
        let items = Amocrm
            .parse(
                Body::Form(&fixture(
                    "amocrm_form_leads_status_nonfinal_zapier_capture.txt",
                )),
                &tenant(),
            )
            .unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(ignored(&items[0]), "lead status 10216994 is not won");
    }

    #[test]
    fn fixture_nonfinal_becomes_won_for_a_tenant_that_says_so() {
        let mut t = tenant();
        t.sources.amocrm.won_status_ids = vec![142, 10216994];
        let items = Amocrm
            .parse(
                Body::Form(&fixture(
                    "amocrm_form_leads_status_nonfinal_zapier_capture.txt",
                )),
                &t,
            )
            .unwrap();
        let d = accepted(&items[0]);
        // No account[id]: the lead's account_id is the account.
        assert_eq!(d.identity, "10216991:31926520");
        assert_eq!(d.location.as_deref(), Some("test000002"));
        assert_eq!(d.params.amount.as_deref(), Some("1000"));
        assert_eq!(d.params.extra["deal_name"], "Some test lead");
        assert_eq!(d.params.extra["pipeline_id"], "2116");
        assert_eq!(
            d.occurred_at.unwrap().to_rfc3339(),
            "2016-03-01T08:26:20+00:00"
        );
        // "Some text field" is not a phone field.
        assert!(d.phones.is_empty());
        assert!(matches!(&d.lookup, Some(Lookup::Amocrm { lead_id, .. }) if lead_id == "31926520"));
    }

    #[test]
    fn fixture_lead_update_and_add_are_not_status_changes() {
        let items = Amocrm
            .parse(
                Body::Form(&fixture("amocrm_form_leads_update_zapier_capture.txt")),
                &tenant(),
            )
            .unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(
            ignored(&items[0]),
            "amocrm lead update is not a status change (31926520)"
        );
        let items = Amocrm
            .parse(
                Body::Form(&fixture("amocrm_form_leads_add_zapier_capture.txt")),
                &tenant(),
            )
            .unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(
            ignored(&items[0]),
            "amocrm lead add is not a status change (31926529)"
        );
    }

    #[test]
    fn fixture_contact_add_without_phone_is_ignored() {
        let items = Amocrm
            .parse(
                Body::Form(&fixture(
                    "amocrm_form_contacts_add_no_phone_zapier_capture.txt",
                )),
                &tenant(),
            )
            .unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(
            ignored(&items[0]),
            "amocrm contact add is not notified (no lead status change)"
        );
    }

    #[test]
    fn fixture_minimal_v4_status_change_asks_for_a_lookup() {
        let body = fixture("amocrm_form_leads_status_minimal_v4_logged_drvorobjev.txt");
        let items = Amocrm.parse(Body::Form(&body), &tenant()).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(ignored(&items[0]), "lead status 47873533 is not won");

        let mut t = tenant();
        t.sources.amocrm.won_status_ids = vec![47873533];
        let items = Amocrm.parse(Body::Form(&body), &t).unwrap();
        let d = accepted(&items[0]);
        assert_eq!(d.kind, EventKind::DealWon);
        assert_eq!(d.identity, "29013640:23802129");
        assert_eq!(d.location.as_deref(), Some("drvorobjev"));
        assert!(d.phones.is_empty());
        assert_eq!(
            d.lookup,
            Some(Lookup::Amocrm {
                account_id: Some("29013640".into()),
                subdomain: Some("drvorobjev".into()),
                lead_id: "23802129".into(),
            })
        );
        assert_eq!(d.params.order_number.as_deref(), Some("23802129"));
        assert_eq!(d.params.extra["pipeline_id"], "5389528");
        assert_eq!(d.params.extra["old_status_id"], "47888833");
        assert_eq!(d.occurred_at, None);
    }

    #[test]
    fn seed_001_form_example_takes_the_contact_phone_field() {
        let body = encode(&[
            ("leads[status][0][id]", "12345"),
            ("leads[status][0][status_id]", "142"),
            ("leads[status][0][pipeline_id]", "789"),
            ("leads[status][0][old_status_id]", "456"),
            ("contacts[update][0][id]", "111"),
            ("contacts[update][0][custom_fields][0][id]", "66192"),
            ("contacts[update][0][custom_fields][0][name]", "Телефон"),
            (
                "contacts[update][0][custom_fields][0][values][0][value]",
                "79991234567",
            ),
            ("account[subdomain]", "acme"),
        ]);
        let items = form(&body).unwrap();
        assert_eq!(items.len(), 1);
        let d = accepted(&items[0]);
        assert_eq!(d.identity, "acme:12345");
        assert_eq!(d.location.as_deref(), Some("acme"));
        assert_eq!(d.phones, vec!["79991234567".to_string()]);
        assert_eq!(d.lookup, None);
    }

    #[test]
    fn legacy_phone_field_with_several_values_gives_every_candidate() {
        let body = encode(&[
            ("leads[status][0][id]", "500"),
            ("leads[status][0][name]", "Кухня на заказ"),
            ("leads[status][0][status_id]", "142"),
            ("leads[status][0][price]", "150000"),
            ("leads[status][0][account_id]", "777"),
            ("contacts[update][0][id]", "9"),
            ("contacts[update][0][name]", "Мария"),
            ("contacts[update][0][type]", "contact"),
            ("contacts[update][0][custom_fields][0][id]", "1001"),
            (
                "contacts[update][0][custom_fields][0][name]",
                "Дата рождения",
            ),
            (
                "contacts[update][0][custom_fields][0][values][0]",
                "1471813200",
            ),
            ("contacts[update][0][custom_fields][1][id]", "1002"),
            ("contacts[update][0][custom_fields][1][name]", "Телефон"),
            (
                "contacts[update][0][custom_fields][1][values][0][value]",
                "8 (916) 123-45-67",
            ),
            (
                "contacts[update][0][custom_fields][1][values][0][enum]",
                "3001",
            ),
            (
                "contacts[update][0][custom_fields][1][values][1][value]",
                "+7 903 000-00-01",
            ),
            (
                "contacts[update][0][custom_fields][1][values][1][enum]",
                "3003",
            ),
            ("contacts[update][0][custom_fields][2][id]", "1003"),
            ("contacts[update][0][custom_fields][2][name]", "Email"),
            (
                "contacts[update][0][custom_fields][2][values][0][value]",
                "maria@example.com",
            ),
            ("account[subdomain]", "acme"),
            ("account[id]", "777"),
        ]);
        let items = form(&body).unwrap();
        let d = accepted(&items[0]);
        assert_eq!(d.identity, "777:500");
        assert_eq!(d.phones, ["8 (916) 123-45-67", "+7 903 000-00-01"]);
        assert_eq!(d.name.as_deref(), Some("Мария"));
        assert_eq!(d.email.as_deref(), Some("maria@example.com"));
        assert_eq!(d.params.amount.as_deref(), Some("150000"));
        assert_eq!(d.params.extra["deal_name"], "Кухня на заказ");
    }

    #[test]
    fn phone_field_matching_prefers_configured_id_then_code_then_name() {
        let body = encode(&[
            ("leads[status][0][id]", "1"),
            ("leads[status][0][status_id]", "142"),
            ("contacts[update][0][custom_fields][0][name]", "phone"),
            (
                "contacts[update][0][custom_fields][0][values][0][value]",
                "+79990000003",
            ),
            ("contacts[update][0][custom_fields][1][code]", "PHONE"),
            (
                "contacts[update][0][custom_fields][1][values][0][value]",
                "+79990000002",
            ),
            ("contacts[update][0][custom_fields][2][id]", "555"),
            ("contacts[update][0][custom_fields][2][name]", "Мобильный"),
            (
                "contacts[update][0][custom_fields][2][values][0][value]",
                "+79990000001",
            ),
            ("contacts[update][0][phone]", "+79990000004"),
            ("account[subdomain]", "acme"),
        ]);
        let mut t = tenant();
        t.sources.amocrm.phone_field_ids = vec![555];
        let items = Amocrm.parse(Body::Form(body.as_bytes()), &t).unwrap();
        assert_eq!(
            accepted(&items[0]).phones,
            [
                "+79990000001",
                "+79990000002",
                "+79990000003",
                "+79990000004"
            ]
        );
        // Without the configured id, field 555 is not a phone.
        let items = form(&body).unwrap();
        assert_eq!(
            accepted(&items[0]).phones,
            ["+79990000002", "+79990000003", "+79990000004"]
        );
    }

    #[test]
    fn main_contact_phone_comes_first_then_v4_fields_then_lead_fields() {
        let body = encode(&[
            ("leads[status][0][id]", "1"),
            ("leads[status][0][status_id]", "142"),
            ("leads[status][0][main_contact][id]", "20"),
            ("leads[status][0][main_contact][phone]", "+79990000001"),
            ("leads[status][0][custom_fields][0][name]", "Телефон"),
            (
                "leads[status][0][custom_fields][0][values][0][value]",
                "+79990000009",
            ),
            ("contacts[update][0][id]", "10"),
            (
                "contacts[update][0][custom_fields_values][0][field_code]",
                "PHONE",
            ),
            (
                "contacts[update][0][custom_fields_values][0][values][0][value]",
                "+79990000003",
            ),
            ("contacts[update][1][id]", "20"),
            (
                "contacts[update][1][custom_fields_values][0][field_name]",
                "Телефон",
            ),
            (
                "contacts[update][1][custom_fields_values][0][values][0][value]",
                "+79990000002",
            ),
            ("account[subdomain]", "acme"),
        ]);
        let items = form(&body).unwrap();
        // The main contact (id 20) is read before the other contact.
        assert_eq!(
            accepted(&items[0]).phones,
            [
                "+79990000001",
                "+79990000002",
                "+79990000003",
                "+79990000009"
            ]
        );
    }

    #[test]
    fn two_leads_in_one_body_give_two_items_in_index_order() {
        let body = encode(&[
            ("leads[status][1][id]", "2"),
            ("leads[status][1][status_id]", "143"),
            ("leads[status][0][id]", "1"),
            ("leads[status][0][status_id]", "142"),
            ("leads[status][0][main_contact][phone]", "+79161234567"),
            ("leads[status][10][id]", "3"),
            ("leads[status][10][status_id]", "142"),
            ("leads[status][2][id]", "4"),
            ("leads[status][2][status_id]", "100"),
            ("account[id]", "42"),
        ]);
        let items = form(&body).unwrap();
        assert_eq!(items.len(), 4);
        assert_eq!(accepted(&items[0]).identity, "42:1");
        assert_eq!(accepted(&items[0]).phones, ["+79161234567"]);
        assert_eq!(ignored(&items[1]), "lead status 143 is not won");
        assert_eq!(ignored(&items[2]), "lead status 100 is not won");
        assert_eq!(accepted(&items[3]).identity, "42:3");
    }

    #[test]
    fn json_variant_with_main_contact_phone_and_v4_fields() {
        let body = r#"{
          "leads": {"status": [{"id": 12345, "status_id": 142, "pipeline_id": 789,
                                "price": 2500.5, "name": "Сделка",
                                "main_contact": {"id": 111, "phone": "+79991234567"}}]},
          "contacts": {"update": [{"id": 111,
              "custom_fields_values": [{"field_name": "Телефон", "field_code": "PHONE",
                                        "values": [{"value": "79991234567"}]}]}]},
          "account": {"id": 5, "subdomain": "acme"}
        }"#;
        let items = json(body).unwrap();
        assert_eq!(items.len(), 1);
        let d = accepted(&items[0]);
        assert_eq!(d.identity, "5:12345");
        assert_eq!(d.phones, ["+79991234567", "79991234567"]);
        assert_eq!(d.params.amount.as_deref(), Some("2500.5"));
        assert_eq!(d.params.order_number.as_deref(), Some("12345"));
        // The curl example of seed 001: no account at all.
        let items = json(
            r#"{"leads": {"status": [{"id": 12345, "status_id": 142,
                                "main_contact": {"phone": "+79991234567"}}]}}"#,
        )
        .unwrap();
        assert_eq!(accepted(&items[0]).identity, "-:12345");
    }

    #[test]
    fn json_lists_may_be_objects_keyed_by_index() {
        let body = r#"{"leads": {"status": {"1": {"id": "8", "status_id": "142"},
                                            "0": {"id": "7", "status_id": "143"}}},
                       "contacts": {"update": {"0": {"custom_fields": {"0": {"name": "Телефон",
                            "values": {"0": {"value": "+79161112233"}}}}}}},
                       "account": {"subdomain": "acme", "id": null}}"#;
        let items = json(body).unwrap();
        assert_eq!(ignored(&items[0]), "lead status 143 is not won");
        let d = accepted(&items[1]);
        assert_eq!(d.identity, "acme:8");
        assert_eq!(d.phones, ["+79161112233"]);
    }

    #[test]
    fn hostile_index_allocates_nothing_and_parses() {
        let body = encode(&[
            ("leads[status][99999999999999][id]", "1"),
            ("leads[status][99999999999999][status_id]", "142"),
            ("leads[status][4294967295][id]", "2"),
            ("leads[status][4294967295][status_id]", "142"),
            ("account[subdomain]", "acme"),
        ]);
        let items = form(&body).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(accepted(&items[0]).identity, "acme:2");
        assert_eq!(accepted(&items[1]).identity, "acme:1");
        let items =
            json(r#"{"leads": {"status": {"99999999999999999999": {"id": 1, "status_id": 142}}}}"#)
                .unwrap();
        assert_eq!(accepted(&items[0]).identity, "-:1");
    }

    #[test]
    fn lowercase_escapes_and_raw_brackets_also_decode() {
        let body =
            "leads%5bstatus%5d%5b0%5d%5bid%5d=1&leads[status][0][status_id]=142&account%5Bid%5D=3";
        let items = form(body).unwrap();
        assert_eq!(accepted(&items[0]).identity, "3:1");
    }

    #[test]
    fn broken_bodies_are_malformed_not_panics() {
        assert_eq!(malformed_msg(form("")), "amocrm: empty body");
        assert_eq!(malformed_msg(form("  \n")), "amocrm: empty body");
        assert_eq!(
            malformed_msg(form("leads%5Bstatus%5D%5B0%5D%5Bid%5D=%ZZ")),
            "amocrm: broken percent-encoding in pair 1"
        );
        assert_eq!(
            malformed_msg(form("account%5Bid%5D=1&a=%4")),
            "amocrm: broken percent-encoding in pair 2"
        );
        assert_eq!(
            malformed_msg(form("account%5Bsubdomain%5D=%FF%FE")),
            "amocrm: pair 1 is not valid UTF-8 once decoded"
        );
        let deep = format!("leads{}=1", "[a]".repeat(11));
        assert_eq!(
            malformed_msg(form(&deep)),
            "amocrm: key of pair 1 is nested deeper than 10 levels"
        );
        let deep_encoded = format!("leads{}=1", "%5Ba%5D".repeat(50));
        assert!(malformed_msg(form(&deep_encoded)).contains("deeper than 10"));
        assert_eq!(
            malformed_msg(form("foo=bar")),
            "amocrm: body has no leads, contacts or account"
        );
        assert!(
            malformed_msg(form("leads[status][0][id]=1&leads[status][0]]=2"))
                .starts_with("amocrm: ")
        );
        assert_eq!(
            malformed_msg(form("leads[status][0][status_id]=142&account[id]=1")),
            "amocrm: leads[status][0] has no id"
        );
        assert!(malformed_msg(json("[1]")).contains("expected a JSON object"));
        assert!(malformed_msg(json("{")).contains("invalid JSON at line 1"));
        assert!(malformed_msg(json("")).starts_with("amocrm: invalid JSON"));
        let deep_json = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(malformed_msg(json(&deep_json)).starts_with("amocrm: invalid JSON"));
    }

    #[test]
    fn error_messages_never_echo_phones_or_emails() {
        let msg = malformed_msg(json(
            r#"{"leads": {"status": "+79161234567 ivan@example.com"}}"#,
        ));
        assert!(msg.starts_with("amocrm: unexpected JSON shape"), "{msg}");
        assert!(
            !msg.contains("9161234567") && !msg.contains("example.com"),
            "{msg}"
        );
        let msg = malformed_msg(json(
            r#"{"leads": {"status": [{"main_contact": 79161234567}]}}"#,
        ));
        assert!(!msg.contains("9161234567"), "{msg}");
        assert_eq!(
            scrub(r#"invalid type: string "+7 916", expected x"#),
            r#"invalid type: string "…", expected x"#
        );
        assert_eq!(scrub("at 79161234567 and a@b.c"), "at … and …");
    }

    #[test]
    fn other_entities_and_actions_are_ignored() {
        let items = form("leads%5Bdelete%5D%5B0%5D%5Bid%5D=5&account%5Bsubdomain%5D=acme").unwrap();
        assert_eq!(ignored(&items[0]), "amocrm lead deleted (5)");
        let items = form("task%5Badd%5D%5B0%5D%5Bid%5D=5&account%5Bsubdomain%5D=acme").unwrap();
        assert_eq!(
            ignored(&items[0]),
            "amocrm event without leads is not notified"
        );
        let items = form(
            "leads%5Bstatus%5D%5B0%5D%5Bid%5D=5&leads%5Bstatus%5D%5B0%5D%5Bstatus_id%5D=142\
             &leads%5Bupdate%5D%5B0%5D%5Bid%5D=5&account%5Bsubdomain%5D=acme",
        )
        .unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(accepted(&items[0]).identity, "acme:5");
        assert_eq!(
            ignored(&items[1]),
            "amocrm lead update is not a status change (5)"
        );
    }

    #[test]
    fn a_lead_moved_between_won_statuses_is_one_deal() {
        let mut t = tenant();
        t.sources.amocrm.won_status_ids = vec![142, 555];
        let hook = |status: u64| {
            format!(
                r#"{{"leads": {{"status": [{{"id": 9, "status_id": {status}, "main_contact": {{"phone": "+79161112233"}}}}]}}, "account": {{"id": 42}}}}"#
            )
        };
        let parse = |body: String| match Amocrm
            .parse(Body::Json(body.as_bytes()), &t)
            .unwrap()
            .remove(0)
        {
            Item::Accept(d) => d.identity,
            other => panic!("{other:?}"),
        };
        assert_eq!(parse(hook(142)), "42:9");
        assert_eq!(parse(hook(555)), parse(hook(142)));
    }

    #[test]
    fn same_hook_twice_gives_the_same_identity() {
        let body = fixture("amocrm_form_leads_status_minimal_v4_logged_drvorobjev.txt");
        let mut t = tenant();
        t.sources.amocrm.won_status_ids = vec![47873533];
        let a = Amocrm.parse(Body::Form(&body), &t).unwrap();
        let b = Amocrm.parse(Body::Form(&body), &t).unwrap();
        assert_eq!(a, b);
    }
}
