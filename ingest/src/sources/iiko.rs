//! iiko (iikoCloud / iikoTransport) webhooks.
//!
//! The real body is a JSON array of events
//! `[{eventType, eventTime, organizationId, correlationId, eventInfo}]`
//! (providers.md A3). Seed 001's customers also send one event object, with
//! `eventTime` as `2024-01-15T14:30:00.000`. Each event of a batch becomes one
//! [`Item`], in order: only a successfully created delivery or table order in
//! one of the tenant's final statuses is accepted.

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use shared::event::EventKind;
use shared::{SourceId, Tenant};

use super::{
    Body, Components, ContentKind, Draft, Item, ParseError, Source, amount, component, describe,
    id_string,
};

pub struct Iiko;

impl Source for Iiko {
    fn id(&self) -> SourceId {
        SourceId::Iiko
    }

    fn accepts(&self) -> &'static [ContentKind] {
        &[ContentKind::Json]
    }

    fn parse(&self, body: Body<'_>, tenant: &Tenant) -> Result<Vec<Item>, ParseError> {
        let bytes = match body {
            Body::Json(b) => b,
            Body::Form(_) => return Err(malformed("expected a JSON body, got a form")),
        };
        // Look at the first significant byte so serde's error keeps its position
        // (and never quotes payload values: see `json_error`).
        let events: Vec<Event> = match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'[') => serde_json::from_slice::<Vec<super::Obj<Event>>>(bytes)
                .map_err(|e| json_error(&e))?
                .into_iter()
                .map(|super::Obj(e)| e)
                .collect(),
            Some(b'{') => vec![serde_json::from_slice(bytes).map_err(|e| json_error(&e))?],
            _ => {
                let why = match serde_json::from_slice::<Value>(bytes) {
                    Err(e) => describe(&e),
                    Ok(_) => "not an array or an object".to_string(),
                };
                return Err(malformed(&format!(
                    "expected a JSON array of events or one event object: {why}"
                )));
            }
        };
        events.iter().map(|e| event_item(e, tenant)).collect()
    }

    /// An array of events, or one event object (seed 001).
    fn json_schema(&self, components: &mut Components) -> Value {
        let event = component::<Event>(components);
        serde_json::json!({"oneOf": [{"type": "array", "items": event}, event]})
    }

    fn example(&self) -> &'static str {
        include_str!(
            "../../openapi-examples/iiko_delivery_update_cooking_nonfinal_synthetic_spec.json"
        )
    }
}

#[derive(Debug, Default, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[schema(as = iiko::Event)]
#[serde(default, rename_all = "camelCase")]
struct Event {
    event_type: Option<String>,
    event_time: Option<String>,
    organization_id: Option<Value>,
    #[serde(deserialize_with = "super::record")]
    event_info: Option<EventInfo>,
    // Seed 001 phone paths relative to the event itself.
    #[serde(deserialize_with = "super::record")]
    order: Option<Order>,
    #[serde(deserialize_with = "super::record")]
    delivery_order: Option<Order>,
    #[serde(deserialize_with = "super::record")]
    customer: Option<Customer>,
    phone: Option<Value>,
}

#[derive(Debug, Default, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[schema(as = iiko::EventInfo)]
#[serde(default, rename_all = "camelCase")]
struct EventInfo {
    id: Option<Value>,
    organization_id: Option<Value>,
    creation_status: Option<String>,
    #[serde(deserialize_with = "super::record")]
    order: Option<Order>,
    #[serde(deserialize_with = "super::record")]
    delivery_order: Option<Order>,
    #[serde(deserialize_with = "super::record")]
    customer: Option<Customer>,
    phone: Option<Value>,
}

#[derive(Debug, Default, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[schema(as = iiko::Order)]
#[serde(default, rename_all = "camelCase")]
struct Order {
    id: Option<Value>,
    phone: Option<Value>,
    status: Option<String>,
    is_deleted: Option<bool>,
    number: Option<Value>,
    sum: Option<Value>,
    #[serde(deserialize_with = "super::record")]
    customer: Option<Customer>,
    #[serde(deserialize_with = "super::record")]
    delivery_point: Option<DeliveryPoint>,
}

#[derive(Debug, Default, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[schema(as = iiko::Customer)]
#[serde(default)]
struct Customer {
    name: Option<String>,
    surname: Option<String>,
    phone: Option<Value>,
    email: Option<String>,
}

#[derive(Debug, Default, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[schema(as = iiko::DeliveryPoint)]
#[serde(default)]
struct DeliveryPoint {
    /// An object (`street.name`, `house`, `flat`, or `line1`) or, in hand-made
    /// payloads, a plain string.
    address: Option<Value>,
}

fn event_item(event: &Event, tenant: &Tenant) -> Result<Item, ParseError> {
    let kind = event.event_type.as_deref().unwrap_or("");
    if kind != "DeliveryOrderUpdate" && kind != "TableOrderUpdate" {
        let shown = if kind.is_empty() {
            "event without eventType"
        } else {
            kind
        };
        return Ok(Item::Ignore(format!("iiko {shown} is not notified")));
    }
    let info = event.event_info.as_ref();
    if let Some(status) = info.and_then(|i| i.creation_status.as_deref())
        && status != "Success"
    {
        return Ok(Item::Ignore(format!("iiko order creation status {status}")));
    }
    // Seed 001 payloads may put the order at the top level instead of eventInfo.
    let order = match info {
        Some(i) => i.order.as_ref(),
        None => event.order.as_ref().or(event.delivery_order.as_ref()),
    };
    let Some(order) = order else {
        return Ok(Item::Ignore("iiko event has no order".into()));
    };
    if order.is_deleted == Some(true) {
        return Ok(Item::Ignore("iiko order is deleted".into()));
    }
    let Some(status) = order.status.as_deref().filter(|s| !s.is_empty()) else {
        return Ok(Item::Ignore("iiko order has no status".into()));
    };
    let finals = &tenant.sources.iiko.final_statuses;
    if !finals.iter().any(|f| f.eq_ignore_ascii_case(status)) {
        return Ok(Item::Ignore(format!(
            "iiko order status {status} is not final"
        )));
    }

    let order_id = info
        .and_then(|i| i.id.as_ref())
        .and_then(id_string)
        .or_else(|| order.id.as_ref().and_then(id_string))
        .ok_or_else(|| malformed("order has no id (eventInfo.id or order.id)"))?;
    let org = event
        .organization_id
        .as_ref()
        .and_then(id_string)
        .or_else(|| {
            info.and_then(|i| i.organization_id.as_ref())
                .and_then(id_string)
        });

    // One order, one message: Delivered then Closed is the same order
    // (docs/SOURCES.md), so the status is not part of the identity.
    let mut draft = Draft::new(
        EventKind::OrderCompleted,
        format!("{}:{order_id}", org.as_deref().unwrap_or("-")),
    );
    draft.reference = Some(order_id);
    draft.occurred_at = event.event_time.as_deref().and_then(parse_event_time);
    draft.location = org;
    draft.phones = phones(event, order);
    let customer = order.customer.as_ref();
    draft.name = customer.and_then(full_name);
    draft.email = customer
        .and_then(|c| c.email.clone())
        .filter(|e| !e.trim().is_empty());
    draft.params.order_number = order.number.as_ref().and_then(id_string);
    draft.params.amount = order.sum.as_ref().and_then(amount);
    draft.params.place = order
        .delivery_point
        .as_ref()
        .and_then(|p| p.address.as_ref())
        .and_then(address);
    let order_type = if kind == "TableOrderUpdate" {
        "table"
    } else {
        "delivery"
    };
    draft
        .params
        .extra
        .insert("order_type".into(), order_type.into());
    draft.params.extra.insert("status".into(), status.into());
    Ok(Item::Accept(draft))
}

/// The order's own phone (required on delivery orders), then the paths seed
/// 001's customers already rely on, relative to the order, eventInfo and the
/// event.
fn phones(event: &Event, order: &Order) -> Vec<String> {
    let info = event.event_info.as_ref();
    let candidates = [
        order.phone.as_ref(),
        customer_phone(order.customer.as_ref()),
        order_customer(event.order.as_ref()),
        order_customer(info.and_then(|i| i.delivery_order.as_ref())),
        order_customer(event.delivery_order.as_ref()),
        customer_phone(info.and_then(|i| i.customer.as_ref())),
        customer_phone(event.customer.as_ref()),
        info.and_then(|i| i.phone.as_ref()),
        event.phone.as_ref(),
    ];
    let mut out: Vec<String> = Vec::new();
    for phone in candidates.into_iter().flatten().filter_map(id_string) {
        if !out.contains(&phone) {
            out.push(phone);
        }
    }
    out
}

fn customer_phone(c: Option<&Customer>) -> Option<&Value> {
    c.and_then(|c| c.phone.as_ref())
}

fn order_customer(o: Option<&Order>) -> Option<&Value> {
    customer_phone(o.and_then(|o| o.customer.as_ref()))
}

fn full_name(c: &Customer) -> Option<String> {
    let parts: Vec<&str> = [c.name.as_deref(), c.surname.as_deref()]
        .into_iter()
        .flatten()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    (!parts.is_empty()).then(|| parts.join(" "))
}

/// `yyyy-MM-dd HH:mm:ss.fff` in UTC (the spec), the seed's `T` variant, or
/// RFC 3339 with an offset.
fn parse_event_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
        .map(|n| n.and_utc())
}

fn address(v: &Value) -> Option<String> {
    let text = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    match v {
        Value::String(_) => text(Some(v)),
        Value::Object(o) => text(o.get("line1")).or_else(|| {
            let street = text(o.get("street").and_then(|s| s.get("name")));
            let parts: Vec<String> = [street, text(o.get("house")), text(o.get("flat"))]
                .into_iter()
                .flatten()
                .collect();
            (!parts.is_empty()).then(|| parts.join(", "))
        }),
        _ => None,
    }
}

fn malformed(msg: &str) -> ParseError {
    ParseError::Malformed(format!("iiko: {msg}"))
}

fn json_error(e: &serde_json::Error) -> ParseError {
    malformed(&format!("not an iiko event batch: {}", describe(e)))
}

#[cfg(test)]
mod tests {
    use super::super::{fixture, tenant};
    use super::*;

    /// Each event of a batch, and each record in one, is an object.
    #[test]
    fn events_and_records_are_objects_not_arrays() {
        for body in [
            r#"[[null]]"#,
            r#"[{"eventType": "DeliveryOrderUpdate", "eventInfo": [1]}]"#,
        ] {
            assert!(
                Iiko.parse(Body::Json(body.as_bytes()), &tenant()).is_err(),
                "{body}"
            );
        }
    }

    fn parse(body: &[u8]) -> Result<Vec<Item>, ParseError> {
        Iiko.parse(Body::Json(body), &tenant())
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

    const DELIVERED: &str = r#"[{
        "eventType": "DeliveryOrderUpdate",
        "eventTime": "2026-02-14 13:45:10.123",
        "organizationId": "550e8400-e29b-41d4-a716-446655440000",
        "correlationId": "e111de0b-8550-6e17-70b2-bbba152bcbd3",
        "eventInfo": {
            "id": "dddd1111-2222-3333-4444-555566667777",
            "posId": null,
            "organizationId": "550e8400-e29b-41d4-a716-446655440000",
            "timestamp": 1771076710123,
            "creationStatus": "Success",
            "errorInfo": null,
            "order": {
                "id": "ffff1111-2222-3333-4444-555566667777",
                "phone": "+79161234567",
                "status": "Delivered",
                "isDeleted": false,
                "number": 144,
                "sum": 1530.5,
                "customer": {"type": "regular", "id": "c1", "name": "Иван", "surname": "Петров"},
                "deliveryPoint": {"address": {"street": {"name": "Ленина"}, "house": "1", "flat": "12"}},
                "whenDelivered": "2026-02-14 16:45:00.000"
            }
        }
    }]"#;

    #[test]
    fn delivered_order_is_accepted_with_the_order_phone_first() {
        let items = parse(DELIVERED.as_bytes()).unwrap();
        assert_eq!(items.len(), 1);
        let d = accepted(&items[0]);
        assert_eq!(d.kind, EventKind::OrderCompleted);
        assert_eq!(
            d.identity,
            "550e8400-e29b-41d4-a716-446655440000:dddd1111-2222-3333-4444-555566667777"
        );
        assert_eq!(
            d.location.as_deref(),
            Some("550e8400-e29b-41d4-a716-446655440000")
        );
        assert_eq!(d.phones, vec!["+79161234567".to_string()]);
        assert_eq!(d.name.as_deref(), Some("Иван Петров"));
        assert_eq!(
            d.occurred_at.unwrap().to_rfc3339(),
            "2026-02-14T13:45:10.123+00:00"
        );
        assert_eq!(d.params.order_number.as_deref(), Some("144"));
        assert_eq!(d.params.amount.as_deref(), Some("1530.50"));
        assert_eq!(d.params.place.as_deref(), Some("Ленина, 1, 12"));
        assert_eq!(d.params.extra["order_type"], "delivery");
        assert_eq!(d.lookup, None);
    }

    #[test]
    fn same_webhook_twice_gives_the_same_identity() {
        let a = parse(DELIVERED.as_bytes()).unwrap();
        let b = parse(DELIVERED.as_bytes()).unwrap();
        assert_eq!(accepted(&a[0]).identity, accepted(&b[0]).identity);
    }

    #[test]
    fn delivered_then_closed_is_one_order() {
        let delivered = parse(DELIVERED.as_bytes()).unwrap();
        let closed = DELIVERED.replace("\"Delivered\"", "\"Closed\"");
        let closed = parse(closed.as_bytes()).unwrap();
        assert_eq!(
            accepted(&delivered[0]).identity,
            accepted(&closed[0]).identity
        );
        let other = DELIVERED.replace("dddd1111", "eeee1111");
        let other = parse(other.as_bytes()).unwrap();
        assert_ne!(
            accepted(&delivered[0]).identity,
            accepted(&other[0]).identity
        );
    }

    #[test]
    fn batch_of_three_mixed_events_gives_one_item_each_in_order() {
        let body = r#"[
          {"eventType": "StopListUpdate", "eventTime": "2026-02-14 13:00:00.000",
           "organizationId": "org-1", "eventInfo": {"terminalGroupsStopListsUpdates": []}},
          {"eventType": "TableOrderUpdate", "eventTime": "2026-02-14 13:01:00.000",
           "organizationId": "org-1",
           "eventInfo": {"id": "t-1", "creationStatus": "Success",
                         "order": {"status": "Closed", "phone": null, "number": "77",
                                   "customer": {"id": "c", "name": "Анна", "phone": "89161112233"}}}},
          {"eventType": "DeliveryOrderUpdate", "eventTime": "2026-02-14 13:02:00.000",
           "organizationId": "org-1",
           "eventInfo": {"id": "d-1", "creationStatus": "Success",
                         "order": {"status": "OnWay", "phone": "+79160000000"}}}
        ]"#;
        let items = parse(body.as_bytes()).unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(ignored(&items[0]), "iiko StopListUpdate is not notified");
        let table = accepted(&items[1]);
        assert_eq!(table.identity, "org-1:t-1");
        assert_eq!(table.phones, vec!["89161112233".to_string()]);
        assert_eq!(table.params.order_number.as_deref(), Some("77"));
        assert_eq!(table.params.extra["order_type"], "table");
        assert_eq!(ignored(&items[2]), "iiko order status OnWay is not final");
    }

    #[test]
    fn fixture_cooking_started_is_not_final() {
        let items = parse(&fixture(
            "iiko_delivery_update_cooking_nonfinal_synthetic_spec.json",
        ))
        .unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(
            ignored(&items[0]),
            "iiko order status CookingStarted is not final"
        );
    }

    #[test]
    fn fixture_creation_error_with_null_order_is_ignored() {
        let items = parse(&fixture(
            "iiko_delivery_update_creation_error_null_order_synthetic_spec.json",
        ))
        .unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(ignored(&items[0]), "iiko order creation status Error");
    }

    #[test]
    fn success_with_null_order_is_ignored() {
        let body = r#"[{"eventType": "DeliveryOrderUpdate", "organizationId": "o",
                        "eventInfo": {"id": "x", "creationStatus": "Success", "order": null}}]"#;
        let items = parse(body.as_bytes()).unwrap();
        assert_eq!(ignored(&items[0]), "iiko event has no order");
    }

    #[test]
    fn fixture_stop_list_update_is_ignored() {
        let items = parse(&fixture("iiko_stoplist_update_ignored_synthetic_spec.json")).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(ignored(&items[0]), "iiko StopListUpdate is not notified");
    }

    #[test]
    fn fixture_empty_array_gives_no_items() {
        assert_eq!(
            parse(&fixture("iiko_empty_array_synthetic.json")).unwrap(),
            vec![]
        );
    }

    #[test]
    fn openapi_extract_names_the_fields_we_read() {
        // Guards the field names against the official schema.
        let spec: Value =
            serde_json::from_slice(&fixture("iiko_openapi_webhook_schemas_extract.json")).unwrap();
        let schemas = &spec["schemas"];
        let info = &schemas["iikoTransport.PublicApi.Contracts.Deliveries.Response.Order.OrderInfo"]
            ["properties"];
        for field in ["id", "organizationId", "creationStatus", "order"] {
            assert!(info.get(field).is_some(), "OrderInfo.{field}");
        }
        let order = &schemas["...Deliveries.Response.Order.Order (props subset)"]["properties"];
        for field in ["phone", "status", "isDeleted", "number", "customer"] {
            assert!(order.get(field).is_some(), "Order.{field}");
        }
        let event = &schemas["iikoTransport.PublicApi.Contracts.WebHooks.DeliveryOrderUpdateWebHookEventInfo"]
            ["properties"];
        assert_eq!(event["eventTime"]["format"], "yyyy-MM-dd HH:mm:ss.fff");
        assert!(event.get("eventType").is_some() && event.get("organizationId").is_some());
        let statuses =
            &schemas["iikoTransport.PublicApi.Contracts.Deliveries.Common.DeliveryStatus"]["enum"];
        let defaults = tenant().sources.iiko.final_statuses;
        for s in &defaults {
            let in_delivery = statuses.as_array().unwrap().iter().any(|v| v == s.as_str());
            assert!(in_delivery, "{s} is a delivery status");
        }
    }

    #[test]
    fn seed_001_single_object_shape_with_customer_phone() {
        let body = r#"{
          "eventType": "DeliveryOrderUpdate",
          "eventTime": "2024-01-15T14:30:00.000",
          "correlationId": "uuid",
          "eventInfo": {
            "id": "order-uuid",
            "posId": "pos-uuid",
            "creationStatus": "Success",
            "order": {"id": "...", "status": "Delivered",
                      "customer": {"phone": "+79991234567", "name": "Иван"}}
          }
        }"#;
        let items = parse(body.as_bytes()).unwrap();
        assert_eq!(items.len(), 1);
        let d = accepted(&items[0]);
        assert_eq!(d.identity, "-:order-uuid");
        assert_eq!(d.location, None);
        assert_eq!(d.phones, vec!["+79991234567".to_string()]);
        assert_eq!(d.name.as_deref(), Some("Иван"));
        assert_eq!(
            d.occurred_at.unwrap().to_rfc3339(),
            "2024-01-15T14:30:00+00:00"
        );
    }

    #[test]
    fn phone_candidates_keep_priority_and_skip_duplicates() {
        let body = r#"{"eventType": "DeliveryOrderUpdate", "organizationId": "o",
          "phone": "+79990000005",
          "customer": {"phone": "+79990000004"},
          "deliveryOrder": {"customer": {"phone": "+79990000003"}},
          "eventInfo": {"id": "i", "creationStatus": "Success",
            "order": {"status": "Closed", "phone": "+79990000001",
                      "customer": {"phone": "+79990000002"}},
            "customer": {"phone": "+79990000001"}}}"#;
        let d = parse(body.as_bytes()).unwrap().remove(0);
        assert_eq!(
            accepted(&d).phones,
            [
                "+79990000001",
                "+79990000002",
                "+79990000003",
                "+79990000004",
                "+79990000005"
            ]
        );
    }

    #[test]
    fn final_status_follows_the_tenant_and_ignores_case() {
        let mut t = tenant();
        t.sources.iiko.final_statuses = vec!["cookingcompleted".into()];
        let body = DELIVERED.replace("\"Delivered\"", "\"CookingCompleted\"");
        let items = Iiko.parse(Body::Json(body.as_bytes()), &t).unwrap();
        assert_eq!(
            accepted(&items[0]).params.extra["status"],
            "CookingCompleted"
        );
        let items = Iiko.parse(Body::Json(DELIVERED.as_bytes()), &t).unwrap();
        assert_eq!(
            ignored(&items[0]),
            "iiko order status Delivered is not final"
        );
    }

    #[test]
    fn deleted_order_and_other_event_types_are_ignored() {
        let deleted = DELIVERED.replace("\"isDeleted\": false", "\"isDeleted\": true");
        assert_eq!(
            ignored(&parse(deleted.as_bytes()).unwrap()[0]),
            "iiko order is deleted"
        );
        let reserve = DELIVERED.replace("DeliveryOrderUpdate", "ReserveUpdate");
        assert_eq!(
            ignored(&parse(reserve.as_bytes()).unwrap()[0]),
            "iiko ReserveUpdate is not notified"
        );
        let error = DELIVERED.replace("DeliveryOrderUpdate", "DeliveryOrderError");
        assert_eq!(
            ignored(&parse(error.as_bytes()).unwrap()[0]),
            "iiko DeliveryOrderError is not notified"
        );
        let in_progress = DELIVERED.replace("\"Success\"", "\"InProgress\"");
        assert_eq!(
            ignored(&parse(in_progress.as_bytes()).unwrap()[0]),
            "iiko order creation status InProgress"
        );
    }

    #[test]
    fn order_without_any_id_is_malformed() {
        let body = r#"{"eventType": "DeliveryOrderUpdate",
                       "eventInfo": {"order": {"status": "Delivered", "customer": {"phone": "+79991234567"}}}}"#;
        let ParseError::Malformed(msg) = parse(body.as_bytes()).unwrap_err();
        assert!(msg.starts_with("iiko: order has no id"), "{msg}");
        assert!(!msg.contains("7999"), "{msg}");
    }

    #[test]
    fn bodies_that_are_not_iiko_are_malformed_without_echoing_values() {
        let ParseError::Malformed(msg) = parse(b"[1, 2").unwrap_err();
        assert!(msg.starts_with("iiko: "), "{msg}");
        let ParseError::Malformed(msg) = parse(b"\"+79161234567\"").unwrap_err();
        assert_eq!(
            msg,
            "iiko: expected a JSON array of events or one event object: not an array or an object"
        );
        let ParseError::Malformed(msg) = parse(b"nope").unwrap_err();
        assert_eq!(
            msg,
            "iiko: expected a JSON array of events or one event object: invalid JSON at line 1 column 2"
        );
        assert!(parse(b"").is_err());
        // A wrong type inside an event: the message gives the position, not the value.
        let ParseError::Malformed(msg) =
            parse(br#"[{"eventType": "DeliveryOrderUpdate", "eventTime": 79161234567}]"#)
                .unwrap_err();
        assert!(msg.contains("unexpected value type at line 1"), "{msg}");
        assert!(!msg.contains("79161234567"), "{msg}");
        let ParseError::Malformed(msg) = Iiko.parse(Body::Form(b"a=1"), &tenant()).unwrap_err();
        assert!(msg.contains("JSON"), "{msg}");
    }

    #[test]
    fn amounts_never_show_float_noise() {
        assert_eq!(amount(&serde_json::json!(1500)), Some("1500".into()));
        assert_eq!(
            amount(&serde_json::from_str("33.710000000000001").unwrap()),
            Some("33.71".into())
        );
        assert_eq!(amount(&serde_json::json!(99.999)), Some("100".into()));
        assert_eq!(amount(&serde_json::json!("250.00")), Some("250.00".into()));
        assert_eq!(amount(&serde_json::json!("abc")), None);
    }
}
