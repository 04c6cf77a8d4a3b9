//! The booking platform of seed 000 (Torrow): one JSON event per request.
//!
//! Seed 000 only documents the URL and the event names, so the body shape is
//! ours; docs/SOURCES.md has a full example:
//! `{event, event_id?, occurred_at?, case: {id, number, type, name, start,
//! previous_start, address, previous_address, resources[], service{}, ...},
//! client: {name, phone, phones[], email}, payment: {amount, currency, id}}`.
//! Formatting options come from the query string and are handled by the route.

use chrono::{DateTime, FixedOffset, Utc};
use serde::Deserialize;
use serde_json::Value;
use shared::event::EventKind;
use shared::{SourceId, Tenant};

use super::{
    Body, Components, ContentKind, Draft, Item, NOT_BLANK, ParseError, Source, amount, component,
    describe, id_string, json_object, text,
};

pub struct Booking;

impl Source for Booking {
    fn id(&self) -> SourceId {
        SourceId::Booking
    }

    fn accepts(&self) -> &'static [ContentKind] {
        &[ContentKind::Json]
    }

    fn parse(&self, body: Body<'_>, _tenant: &Tenant) -> Result<Vec<Item>, ParseError> {
        let bytes = json_object(body).map_err(|why| malformed(&why))?;
        let hook: Hook = serde_json::from_slice(bytes)
            .map_err(|e| malformed(&format!("not a booking event: {}", describe(&e))))?;
        Ok(vec![item(&hook)?])
    }

    /// Vestnik's own shape (docs/SOURCES.md): `event` and `case.id` are
    /// required.
    fn json_schema(&self, components: &mut Components) -> Value {
        let hook = component::<Hook>(components);
        serde_json::json!({"allOf": [hook, {
            "required": ["event", "case"],
            "properties": {
                "event": {"type": "string", "pattern": NOT_BLANK},
                "case": {"type": "object", "required": ["id"], "properties": {"id": {"anyOf": [
                    {"type": "string", "minLength": 1}, {"type": "number"}
                ]}}},
            },
        }]})
    }

    fn example(&self) -> &'static str {
        include_str!("../../openapi-examples/booking_update_case_time_docs.json")
    }
}

#[derive(Debug, Default, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[schema(as = booking::Hook)]
#[serde(default)]
struct Hook {
    event: Option<String>,
    event_id: Option<Value>,
    occurred_at: Option<String>,
    #[serde(deserialize_with = "super::record")]
    case: Option<Case>,
    #[serde(deserialize_with = "super::record")]
    client: Option<Client>,
    #[serde(deserialize_with = "super::record")]
    payment: Option<Payment>,
}

#[derive(Debug, Default, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[schema(as = booking::Case)]
#[serde(default)]
struct Case {
    id: Option<Value>,
    number: Option<Value>,
    #[serde(rename = "type")]
    kind: Option<String>,
    name: Option<String>,
    description: Option<String>,
    url: Option<String>,
    start: Option<String>,
    end: Option<String>,
    duration_minutes: Option<Value>,
    previous_start: Option<String>,
    address: Option<String>,
    previous_address: Option<String>,
    #[serde(deserialize_with = "super::records")]
    resources: Option<Vec<Resource>>,
    #[serde(deserialize_with = "super::record")]
    service: Option<Service>,
}

#[derive(Debug, Default, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[schema(as = booking::Resource)]
#[serde(default)]
struct Resource {
    name: Option<String>,
    description: Option<String>,
}

#[derive(Debug, Default, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[schema(as = booking::Service)]
#[serde(default)]
struct Service {
    name: Option<String>,
    url: Option<String>,
}

#[derive(Debug, Default, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[schema(as = booking::Client)]
#[serde(default)]
struct Client {
    name: Option<String>,
    phone: Option<Value>,
    phones: Option<Vec<Value>>,
    email: Option<String>,
}

#[derive(Debug, Default, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[schema(as = booking::Payment)]
#[serde(default)]
struct Payment {
    amount: Option<Value>,
    currency: Option<String>,
    id: Option<Value>,
}

fn item(hook: &Hook) -> Result<Item, ParseError> {
    let event = hook
        .event
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .ok_or_else(|| malformed("missing `event`"))?;
    let case = hook.case.as_ref();
    let case_id = case
        .and_then(|c| c.id.as_ref())
        .and_then(id_string)
        .ok_or_else(|| malformed("missing `case.id`"))?;
    let kind = match event {
        "CheckIn" => EventKind::BookingCreated,
        "CaseCancel" => EventKind::BookingCancelled,
        "CaseComplete" => EventKind::BookingCompleted,
        "UpdateCaseTime" => EventKind::BookingTimeChanged,
        "UpdateCasePlace" => EventKind::BookingPlaceChanged,
        "ApproveMoneyReceive" => EventKind::PaymentReceived,
        other => {
            let shown: String = other.chars().take(40).collect();
            return Ok(Item::Ignore(format!(
                "booking event {shown} is not notified"
            )));
        }
    };
    let start = case.and_then(|c| c.start.as_deref()).and_then(parse_time);
    let address = case.and_then(|c| text(c.address.as_deref()));
    let payment = hook.payment.as_ref();
    let amount = payment.and_then(|p| p.amount.as_ref()).and_then(amount);

    // Each change notifies once: the identity carries what changed.
    let identity = match kind {
        EventKind::BookingTimeChanged => {
            let Some(start) = start else {
                return Ok(Item::Ignore(
                    "booking UpdateCaseTime without a valid case.start".into(),
                ));
            };
            format!("{case_id}:{event}:{}", start.to_rfc3339())
        }
        EventKind::BookingPlaceChanged => {
            let Some(address) = &address else {
                return Ok(Item::Ignore(
                    "booking UpdateCasePlace without case.address".into(),
                ));
            };
            format!("{case_id}:{event}:{address}")
        }
        EventKind::PaymentReceived => {
            match payment
                .and_then(|p| p.id.as_ref())
                .and_then(id_string)
                .or(amount.clone())
            {
                Some(what) => format!("{case_id}:{event}:{what}"),
                None => format!("{case_id}:{event}"),
            }
        }
        _ => format!("{case_id}:{event}"),
    };

    let mut draft = Draft::new(kind, identity);
    draft.reference = Some(case_id.to_string());
    draft.occurred_at = hook
        .occurred_at
        .as_deref()
        .and_then(parse_time)
        .map(|t| t.with_timezone(&Utc));
    if let Some(client) = &hook.client {
        let phones = client.phone.iter().chain(client.phones.iter().flatten());
        for phone in phones.filter_map(id_string) {
            if !draft.phones.contains(&phone) {
                draft.phones.push(phone);
            }
        }
        draft.name = text(client.name.as_deref());
        draft.email = text(client.email.as_deref());
    }

    let params = &mut draft.params;
    params.order_number = case.and_then(|c| c.number.as_ref()).and_then(id_string);
    params.starts_at = start;
    params.previous_starts_at = case
        .and_then(|c| c.previous_start.as_deref())
        .and_then(parse_time);
    params.place = address;
    params.previous_place = case.and_then(|c| text(c.previous_address.as_deref()));
    params.duration_minutes = case.and_then(|c| duration(c, start));
    params.description = case.and_then(|c| text(c.description.as_deref()));
    params.url = case.and_then(|c| text(c.url.as_deref()));
    params.amount = amount;
    params.currency = payment.and_then(|p| text(p.currency.as_deref()));
    let resources = case
        .and_then(|c| c.resources.as_deref())
        .unwrap_or_default();
    params.services = resources
        .iter()
        .filter_map(|r| text(r.name.as_deref()))
        .collect();
    params.staff = (!params.services.is_empty()).then(|| params.services.join(", "));

    let service = case.and_then(|c| c.service.as_ref());
    // One line per named resource (empty when it has no description), so the
    // message can pair each description with its resource.
    let descriptions: Vec<String> = resources
        .iter()
        .filter(|r| text(r.name.as_deref()).is_some())
        .map(|r| text(r.description.as_deref()).unwrap_or_default())
        .collect();
    let extra = [
        ("case_type", case.and_then(|c| text(c.kind.as_deref()))),
        ("case_name", case.and_then(|c| text(c.name.as_deref()))),
        (
            "service_name",
            service.and_then(|s| text(s.name.as_deref())),
        ),
        ("service_url", service.and_then(|s| text(s.url.as_deref()))),
        (
            "resource_descriptions",
            descriptions
                .iter()
                .any(|d| !d.is_empty())
                .then(|| descriptions.join("\n")),
        ),
        (
            "payment_id",
            payment.and_then(|p| p.id.as_ref()).and_then(id_string),
        ),
        ("event_id", hook.event_id.as_ref().and_then(id_string)),
    ];
    for (k, v) in extra {
        if let Some(v) = v {
            params.extra.insert(k.to_string(), v);
        }
    }
    Ok(Item::Accept(draft))
}

/// `duration_minutes` as given, else `end - start`.
fn duration(case: &Case, start: Option<DateTime<FixedOffset>>) -> Option<u32> {
    let given = case.duration_minutes.as_ref().and_then(|v| match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    });
    given
        .and_then(|m| u32::try_from(m).ok())
        .or_else(|| {
            let end = case.end.as_deref().and_then(parse_time)?;
            let minutes = (end - start?).num_minutes();
            u32::try_from(minutes).ok()
        })
        .filter(|m| *m > 0)
}

fn parse_time(s: &str) -> Option<DateTime<FixedOffset>> {
    DateTime::parse_from_rfc3339(s.trim()).ok()
}

fn malformed(msg: &str) -> ParseError {
    ParseError::Malformed(format!("booking: {msg}"))
}

#[cfg(test)]
mod tests {
    use super::super::tenant;
    use super::*;

    /// The example of docs/SOURCES.md.
    const FULL: &str = r#"{
      "event": "UpdateCaseTime",
      "event_id": "evt-42",
      "occurred_at": "2026-11-20T09:15:00+03:00",
      "case": {
        "id": "c-1001", "number": "1001", "type": "booking", "name": "Стрижка",
        "description": "Мужская стрижка и укладка", "url": "https://torrow.net/case/c-1001",
        "start": "2026-12-01T10:00:00+03:00", "end": "2026-12-01T11:00:00+03:00",
        "previous_start": "2026-11-30T12:00:00+03:00",
        "address": "ул. Ленина, 1",
        "resources": [{"name": "Мастер Анна", "description": "Топ-стилист"}, {"name": "Кресло 2"}],
        "service": {"name": "Салон «Берёза»", "url": "https://torrow.net/service/s-1"}
      },
      "client": {"name": "Иван", "phone": "+79161234567", "email": "ivan@example.com"},
      "payment": {"amount": "1500.00", "currency": "RUB", "id": "p-1"}
    }"#;

    fn one(body: &str) -> Item {
        let mut items = Booking
            .parse(Body::Json(body.as_bytes()), &tenant())
            .unwrap();
        assert_eq!(items.len(), 1);
        items.remove(0)
    }

    fn accepted(item: Item) -> Draft {
        match item {
            Item::Accept(d) => d,
            Item::Ignore(r) => panic!("expected Accept, got Ignore({r})"),
        }
    }

    fn with_event(event: &str) -> String {
        FULL.replace("\"UpdateCaseTime\"", &format!("\"{event}\""))
    }

    fn malformed_msg(body: &str) -> String {
        let ParseError::Malformed(msg) = Booking
            .parse(Body::Json(body.as_bytes()), &tenant())
            .unwrap_err();
        msg
    }

    #[test]
    fn documented_example_fills_every_param() {
        let d = accepted(one(FULL));
        assert_eq!(d.kind, EventKind::BookingTimeChanged);
        assert_eq!(
            d.identity,
            "c-1001:UpdateCaseTime:2026-12-01T10:00:00+03:00"
        );
        assert_eq!(
            d.occurred_at.unwrap().to_rfc3339(),
            "2026-11-20T06:15:00+00:00"
        );
        assert_eq!(d.phones, ["+79161234567"]);
        assert_eq!(d.name.as_deref(), Some("Иван"));
        assert_eq!(d.email.as_deref(), Some("ivan@example.com"));
        assert_eq!(d.lookup, None);
        let p = &d.params;
        assert_eq!(p.order_number.as_deref(), Some("1001"));
        assert_eq!(
            p.starts_at.unwrap().to_rfc3339(),
            "2026-12-01T10:00:00+03:00"
        );
        assert_eq!(
            p.previous_starts_at.unwrap().to_rfc3339(),
            "2026-11-30T12:00:00+03:00"
        );
        assert_eq!(p.duration_minutes, Some(60));
        assert_eq!(p.place.as_deref(), Some("ул. Ленина, 1"));
        assert_eq!(p.services, ["Мастер Анна", "Кресло 2"]);
        assert_eq!(p.staff.as_deref(), Some("Мастер Анна, Кресло 2"));
        assert_eq!(p.description.as_deref(), Some("Мужская стрижка и укладка"));
        assert_eq!(p.url.as_deref(), Some("https://torrow.net/case/c-1001"));
        assert_eq!(p.amount.as_deref(), Some("1500.00"));
        assert_eq!(p.currency.as_deref(), Some("RUB"));
        assert_eq!(p.extra["case_type"], "booking");
        assert_eq!(p.extra["case_name"], "Стрижка");
        assert_eq!(p.extra["service_name"], "Салон «Берёза»");
        // One line per resource: "Кресло 2" has no description.
        assert_eq!(p.extra["resource_descriptions"], "Топ-стилист\n");
        assert_eq!(p.extra["event_id"], "evt-42");
    }

    #[test]
    fn every_seed_000_event_maps_to_its_kind_and_identity() {
        let cases = [
            ("CheckIn", EventKind::BookingCreated, "c-1001:CheckIn"),
            (
                "CaseCancel",
                EventKind::BookingCancelled,
                "c-1001:CaseCancel",
            ),
            (
                "CaseComplete",
                EventKind::BookingCompleted,
                "c-1001:CaseComplete",
            ),
            (
                "UpdateCasePlace",
                EventKind::BookingPlaceChanged,
                "c-1001:UpdateCasePlace:ул. Ленина, 1",
            ),
            (
                "ApproveMoneyReceive",
                EventKind::PaymentReceived,
                "c-1001:ApproveMoneyReceive:p-1",
            ),
        ];
        for (event, kind, identity) in cases {
            let d = accepted(one(&with_event(event)));
            assert_eq!(d.kind, kind, "{event}");
            assert_eq!(d.identity, identity, "{event}");
        }
    }

    #[test]
    fn each_change_notifies_once() {
        let a = accepted(one(FULL)).identity;
        assert_eq!(a, accepted(one(FULL)).identity);
        let moved = FULL.replace(
            "\"start\": \"2026-12-01T10:00:00+03:00\"",
            "\"start\": \"2026-12-02T10:00:00+03:00\"",
        );
        assert_ne!(a, accepted(one(&moved)).identity);
        let second_payment = with_event("ApproveMoneyReceive").replace("\"p-1\"", "\"p-2\"");
        assert_eq!(
            accepted(one(&second_payment)).identity,
            "c-1001:ApproveMoneyReceive:p-2"
        );
        let no_payment_id = with_event("ApproveMoneyReceive").replace(", \"id\": \"p-1\"", "");
        assert_eq!(
            accepted(one(&no_payment_id)).identity,
            "c-1001:ApproveMoneyReceive:1500.00"
        );
    }

    #[test]
    fn minimal_body_and_changes_without_the_new_value() {
        let d = accepted(one(r#"{"event": "CheckIn", "case": {"id": 77}}"#));
        assert_eq!(d.identity, "77:CheckIn");
        assert!(d.phones.is_empty());
        assert_eq!(d.params, Default::default());
        let Item::Ignore(r) =
            one(r#"{"event": "UpdateCaseTime", "case": {"id": 1, "start": "soon"}}"#)
        else {
            panic!()
        };
        assert_eq!(r, "booking UpdateCaseTime without a valid case.start");
        let Item::Ignore(r) = one(r#"{"event": "UpdateCasePlace", "case": {"id": 1}}"#) else {
            panic!()
        };
        assert_eq!(r, "booking UpdateCasePlace without case.address");
        let d = accepted(one(r#"{"event": "CheckIn", "case": {"id": "x"},
            "client": {"phone": "89161234567", "phones": ["+79161234567", "89161234567"]}}"#));
        assert_eq!(d.phones, ["89161234567", "+79161234567"]);
    }

    #[test]
    fn unknown_events_are_ignored() {
        let Item::Ignore(r) = one(&with_event("CaseCommentAdded")) else {
            panic!()
        };
        assert_eq!(r, "booking event CaseCommentAdded is not notified");
    }

    #[test]
    fn missing_event_or_case_id_is_malformed() {
        assert_eq!(
            malformed_msg(r#"{"case": {"id": "c"}}"#),
            "booking: missing `event`"
        );
        assert_eq!(
            malformed_msg(r#"{"event": "CheckIn", "case": {}}"#),
            "booking: missing `case.id`"
        );
        assert_eq!(
            malformed_msg(r#"{"event": "CheckIn"}"#),
            "booking: missing `case.id`"
        );
        assert_eq!(
            malformed_msg("[]"),
            "booking: expected a JSON object: not an object"
        );
        assert!(malformed_msg("{").contains("unexpected end of JSON"));
        let msg = malformed_msg(
            r#"{"event": "CheckIn", "case": {"id": 1}, "client": {"email": 79161234567}}"#,
        );
        assert!(!msg.contains("79161234567"), "{msg}");
    }
}
