//! The normalised event: what ingest publishes and the dispatcher consumes.
//!
//! Versioned: `schema` is bumped on any change a v1 reader cannot ignore.
//! Readers accept unknown fields (forward compatible within a version).
//! docs/EVENT_SCHEMA.md documents every field with an example.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::phone::Phone;

pub const SCHEMA_VERSION: u16 = 1;

/// The systems that send us webhooks. The path segment of
/// `POST /api/webhook/{source}` is the lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum SourceId {
    Iiko,
    Rkeeper,
    Yclients,
    Amocrm,
    Booking,
}

impl SourceId {
    pub const ALL: [SourceId; 5] = [
        SourceId::Iiko,
        SourceId::Rkeeper,
        SourceId::Yclients,
        SourceId::Amocrm,
        SourceId::Booking,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SourceId::Iiko => "iiko",
            SourceId::Rkeeper => "rkeeper",
            SourceId::Yclients => "yclients",
            SourceId::Amocrm => "amocrm",
            SourceId::Booking => "booking",
        }
    }

    pub fn from_path(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|id| id.as_str() == s)
    }
}

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened, in the customer's terms; templates are chosen by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    OrderCompleted,
    VisitCompleted,
    DealWon,
    BookingCreated,
    BookingCancelled,
    BookingCompleted,
    BookingTimeChanged,
    BookingPlaceChanged,
    PaymentReceived,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::OrderCompleted => "order_completed",
            EventKind::VisitCompleted => "visit_completed",
            EventKind::DealWon => "deal_won",
            EventKind::BookingCreated => "booking_created",
            EventKind::BookingCancelled => "booking_cancelled",
            EventKind::BookingCompleted => "booking_completed",
            EventKind::BookingTimeChanged => "booking_time_changed",
            EventKind::BookingPlaceChanged => "booking_place_changed",
            EventKind::PaymentReceived => "payment_received",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Schema version, [`SCHEMA_VERSION`].
    pub schema: u16,
    /// UUIDv7: sortable by creation time, unique per accepted webhook item.
    pub id: Uuid,
    pub tenant: String,
    pub source: SourceId,
    pub kind: EventKind,
    /// When it happened at the source (falls back to `received_at`).
    pub occurred_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    /// Identity of the happening at the source, e.g.
    /// `acme:iiko:<org>:<order id>:order_completed`. The same webhook sent twice
    /// yields the same key; the dispatcher's idempotency is keyed on it.
    pub dedup_key: String,
    /// The source's own id of the record (iiko order id, YCLIENTS record id,
    /// AmoCRM lead id, ...): the delivery journal is searchable by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ref: Option<String>,
    /// The location/organisation inside the tenant (iiko organizationId, YCLIENTS company, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    pub recipient: Recipient,
    #[serde(default)]
    pub params: Params,
    /// Formatting options that came with the webhook URL (seed 000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<FormatOptions>,
    /// Provider routing that came with the webhook URL (seed 000's Wazzup parameters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<Route>,
    /// Set when the payload had no usable phone: what the dispatcher needs to fetch it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookup: Option<Lookup>,
}

impl Event {
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain data (strings, numbers, maps with string keys) cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// One parse on the normal path (this runs for every event the
    /// dispatcher consumes); only a body that does not read as a v1 event is
    /// probed for its schema number, to tell "newer" from "malformed".
    pub fn from_json(bytes: &[u8]) -> Result<Self, EventDecodeError> {
        #[derive(Deserialize)]
        struct Version {
            schema: u16,
        }
        let check = |schema: u16| {
            if schema == 0 || schema > SCHEMA_VERSION {
                Err(EventDecodeError::UnsupportedSchema(schema))
            } else {
                Ok(())
            }
        };
        match serde_json::from_slice::<Event>(bytes) {
            Ok(event) => check(event.schema).map(|()| event),
            Err(e) => match serde_json::from_slice::<Version>(bytes) {
                Ok(v) => check(v.schema).and(Err(EventDecodeError::Malformed(e))),
                Err(_) => Err(EventDecodeError::Malformed(e)),
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EventDecodeError {
    #[error("not a Vestnik event: {0}")]
    Malformed(serde_json::Error),
    #[error("event schema {0} is newer than this build understands ({SCHEMA_VERSION})")]
    UnsupportedSchema(u16),
}

#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Recipient {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<Phone>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl fmt::Debug for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recipient")
            .field("phone", &self.phone)
            .field("email", &self.email.as_deref().map(crate::mask::email))
            .field("name", &self.name.as_ref().map(|_| "…"))
            .finish()
    }
}

/// Values a template may use. All optional: each source fills what it has.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Params {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_number: Option<String>,
    /// Decimal as a string, never a float (`"1500.00"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// Restaurant / salon / venue name or address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub place: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_place: Option<String>,
    /// Start of the visit/booking, RFC 3339 with the source's offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<DateTime<chrono::FixedOffset>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_starts_at: Option<DateTime<chrono::FixedOffset>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_minutes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staff: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Source-specific values (deal name, pipeline, case type, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, String>,
}

/// Seed 000's formatting parameters, validated at ingest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FormatOptions {
    /// Free text prepended to the formatted message ("Вы записаны на услугу").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail_section_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case_type_name: Option<String>,
    /// The `hide_*` flags, by name without the prefix (`detail_section`, `url`, ...).
    /// Defaults of seed 000 are applied: only `contact_info` is hidden by default.
    pub hide: BTreeMap<HideFlag, bool>,
    pub date_locale: DateLocale,
    /// IANA zone, validated (`Europe/Moscow` by default).
    pub time_zone: String,
    /// Shown after times ("Мск" by default).
    pub time_zone_name: String,
}

impl Default for FormatOptions {
    fn default() -> Self {
        FormatOptions {
            message: None,
            resource_name: None,
            detail_section_name: None,
            case_type_name: None,
            hide: HideFlag::ALL
                .iter()
                .map(|f| (*f, f.default_value()))
                .collect(),
            date_locale: DateLocale::RuRu,
            time_zone: "Europe/Moscow".into(),
            time_zone_name: "Мск".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HideFlag {
    DetailSection,
    ResourceDescription,
    OrderDuration,
    Address,
    ServiceName,
    OrderDescription,
    Url,
    ContactInfo,
}

impl HideFlag {
    pub const ALL: [HideFlag; 8] = [
        HideFlag::DetailSection,
        HideFlag::ResourceDescription,
        HideFlag::OrderDuration,
        HideFlag::Address,
        HideFlag::ServiceName,
        HideFlag::OrderDescription,
        HideFlag::Url,
        HideFlag::ContactInfo,
    ];

    /// The URL parameter name, e.g. `hide_detail_section`.
    pub fn param(self) -> &'static str {
        match self {
            HideFlag::DetailSection => "hide_detail_section",
            HideFlag::ResourceDescription => "hide_resource_description",
            HideFlag::OrderDuration => "hide_order_duration",
            HideFlag::Address => "hide_address",
            HideFlag::ServiceName => "hide_service_name",
            HideFlag::OrderDescription => "hide_order_description",
            HideFlag::Url => "hide_url",
            HideFlag::ContactInfo => "hide_contact_info",
        }
    }

    pub fn from_param(p: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.param() == p)
    }

    /// Seed 000: every flag defaults to false except `hide_contact_info`.
    pub fn default_value(self) -> bool {
        matches!(self, HideFlag::ContactInfo)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DateLocale {
    #[serde(rename = "ru-RU")]
    RuRu,
    #[serde(rename = "en-US")]
    EnUs,
}

impl DateLocale {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ru-RU" | "ru-ru" | "ru" => Some(DateLocale::RuRu),
            "en-US" | "en-us" | "en" => Some(DateLocale::EnUs),
            _ => None,
        }
    }
}

/// Provider routing carried by the webhook URL instead of tenant config.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "provider", rename_all = "lowercase")]
pub enum Route {
    /// Seed 000: `key_api`, `channel_id`, `chat_type`.
    Wazzup {
        api_key: String,
        channel_id: String,
        chat_type: String,
    },
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Route::Wazzup {
                api_key,
                channel_id,
                chat_type,
            } => f
                .debug_struct("Wazzup")
                .field("api_key", &crate::mask::secret(api_key))
                .field("channel_id", channel_id)
                .field("chat_type", chat_type)
                .finish(),
        }
    }
}

/// What the dispatcher needs to fetch a phone the webhook did not carry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "via", rename_all = "lowercase")]
pub enum Lookup {
    /// `GET /api/v4/leads/{lead_id}?with=contacts` on the account.
    Amocrm {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        account_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subdomain: Option<String>,
        lead_id: String,
    },
    /// `GET /api/v1/record/{company_id}/{record_id}`.
    Yclients {
        company_id: String,
        record_id: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Event {
        Event {
            schema: SCHEMA_VERSION,
            id: Uuid::now_v7(),
            tenant: "acme".into(),
            source: SourceId::Iiko,
            kind: EventKind::OrderCompleted,
            occurred_at: Utc::now(),
            received_at: Utc::now(),
            dedup_key: "acme:iiko:org:order:Delivered".into(),
            source_ref: None,
            location: Some("org".into()),
            recipient: Recipient {
                phone: crate::phone::normalise("+79161234567").ok(),
                email: None,
                name: Some("Иван".into()),
            },
            params: Params {
                order_number: Some("142".into()),
                ..Params::default()
            },
            format: Some(FormatOptions::default()),
            route: None,
            lookup: None,
        }
    }

    #[test]
    fn round_trips_through_json() {
        let e = sample();
        let back = Event::from_json(&e.to_json()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn rejects_newer_schema_and_garbage() {
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
        v["schema"] = 99.into();
        let err = Event::from_json(v.to_string().as_bytes()).unwrap_err();
        assert!(matches!(err, EventDecodeError::UnsupportedSchema(99)));
        assert!(Event::from_json(b"{not json").is_err());
    }

    /// A recipient phone that is not E.164 makes the event malformed
    /// instead of a panic later in a provider (`Phone::digits`).
    #[test]
    fn event_with_a_non_e164_phone_is_malformed() {
        for phone in ["", "é", "abc", "89161234567"] {
            let mut v: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
            v["recipient"]["phone"] = phone.into();
            let err = Event::from_json(v.to_string().as_bytes()).unwrap_err();
            assert!(
                matches!(err, EventDecodeError::Malformed(_)),
                "{phone:?}: {err}"
            );
        }
    }

    #[test]
    fn unknown_fields_are_ignored_within_a_version() {
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
        v["added_in_a_later_minor"] = "x".into();
        assert!(Event::from_json(v.to_string().as_bytes()).is_ok());
    }

    #[test]
    fn debug_output_masks_the_recipient_and_route_key() {
        let mut e = sample();
        e.route = Some(Route::Wazzup {
            api_key: "f8f1955587ac4d8894cee95f92dcaca4".into(),
            channel_id: "c".into(),
            chat_type: "whatsapp".into(),
        });
        let dbg = format!("{e:?}");
        assert!(!dbg.contains("9161234567"), "{dbg}");
        assert!(!dbg.contains("f8f1955587ac"), "{dbg}");
    }
}
