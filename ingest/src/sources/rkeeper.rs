//! R-Keeper webhooks, two shapes (providers.md A4):
//!
//! - the r_k Delivery "Канал API" push, as seed 001's customers configure it:
//!   `{"order": {"id"|"number"|"guid", "status": "Выполнен", "customer"|"client": {...}}}`
//!   (the real JSON is only visible in the admin panel, so we read it generously);
//! - the White Server event callback: `{responseEventCommon: {eventType:
//!   "OrderStatusChanged", ...}, response: {orderGuid, status: {value}}}`.
//!
//! Statuses are compared case-insensitively with the tenant's final statuses
//! (`Complited` is White Server's own spelling).

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use shared::event::EventKind;
use shared::{SourceId, Tenant};

use super::{
    Body, Components, ContentKind, Draft, Item, ParseError, Source, amount, component, describe,
    id_string, json_object, text,
};

pub struct Rkeeper;

impl Source for Rkeeper {
    fn id(&self) -> SourceId {
        SourceId::Rkeeper
    }

    fn accepts(&self) -> &'static [ContentKind] {
        &[ContentKind::Json]
    }

    fn parse(&self, body: Body<'_>, tenant: &Tenant) -> Result<Vec<Item>, ParseError> {
        let bytes = json_object(body).map_err(|why| malformed(&why))?;
        let push: Push = serde_json::from_slice(bytes)
            .map_err(|e| malformed(&format!("not an R-Keeper webhook: {}", describe(&e))))?;
        let item = if push.response_event_common.is_some() || push.response.is_some() {
            white_server(&push, tenant)?
        } else if let Some(order) = &push.order {
            delivery(&push, order, tenant)?
        } else {
            return Err(malformed(
                "expected an `order` object (Delivery push) or a White Server event",
            ));
        };
        Ok(vec![item])
    }

    /// A Delivery push (`order`, nothing of White Server's) or a White
    /// Server event (`response`, or only `responseEventCommon` of another
    /// type than `OrderStatusChanged`, which is not notified).
    fn json_schema(&self, components: &mut Components) -> Value {
        let push = component::<Push>(components);
        serde_json::json!({"allOf": [push, {"anyOf": [
            {"required": ["order"], "properties": {
                "order": {"type": "object"},
                "responseEventCommon": {"type": "null"},
                "response": {"type": "null"},
            }},
            {"required": ["response"], "properties": {"response": {"type": "object"}}},
            {"required": ["responseEventCommon"], "properties": {
                "responseEventCommon": {"type": "object", "properties": {
                    "eventType": {"not": {"const": "OrderStatusChanged"}},
                }},
                "response": {"type": "null"},
            }},
        ]}]})
    }

    fn example(&self) -> &'static str {
        include_str!("../../openapi-examples/rkeeper_ws_event_order_status_changed_docs.json")
    }
}

#[derive(Debug, Default, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[schema(as = rkeeper::Push)]
#[serde(default)]
struct Push {
    #[serde(deserialize_with = "super::record")]
    order: Option<Order>,
    #[serde(deserialize_with = "super::record")]
    customer: Option<Person>,
    #[serde(deserialize_with = "super::record")]
    client: Option<Person>,
    phone: Option<Value>,
    #[serde(rename = "responseEventCommon")]
    #[serde(deserialize_with = "super::record")]
    response_event_common: Option<EventCommon>,
    #[serde(deserialize_with = "super::record")]
    response: Option<WsResponse>,
}

#[derive(Debug, Default, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[schema(as = rkeeper::Order)]
#[serde(default)]
struct Order {
    id: Option<Value>,
    number: Option<Value>,
    guid: Option<Value>,
    /// A label (`"Выполнен"`) or an object (`{"value": ...}` / `{"name": ...}`).
    status: Option<Value>,
    #[serde(deserialize_with = "super::record")]
    customer: Option<Person>,
    #[serde(deserialize_with = "super::record")]
    client: Option<Person>,
    phone: Option<Value>,
    sum: Option<Value>,
    total: Option<Value>,
    address: Option<Value>,
}

#[derive(Debug, Default, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[schema(as = rkeeper::Person)]
#[serde(default)]
struct Person {
    phone: Option<Value>,
    name: Option<String>,
    email: Option<String>,
}

#[derive(Debug, Default, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[schema(as = rkeeper::EventCommon)]
#[serde(default, rename_all = "camelCase")]
struct EventCommon {
    object_id: Option<Value>,
    event_guid: Option<Value>,
    date_time_server_receive_event_from_agent: Option<String>,
    event_type: Option<String>,
}

#[derive(Debug, Default, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[schema(as = rkeeper::WsResponse)]
#[serde(default, rename_all = "camelCase")]
struct WsResponse {
    original_order_id: Option<Value>,
    order_guid: Option<Value>,
    status: Option<Value>,
}

fn delivery(push: &Push, order: &Order, tenant: &Tenant) -> Result<Item, ParseError> {
    let Some(status) = order.status.as_ref().and_then(status_text) else {
        return Ok(Item::Ignore("rkeeper order has no status".into()));
    };
    if !is_final(&status, tenant) {
        return Ok(Item::Ignore(format!(
            "rkeeper order status {status} is not final"
        )));
    }
    let id = [&order.id, &order.number, &order.guid]
        .into_iter()
        .find_map(|v| v.as_ref().and_then(id_string))
        .ok_or_else(|| malformed("order has no id or number"))?;

    // One order, one message: Доставлен then Выполнен is the same order.
    let mut draft = Draft::new(EventKind::OrderCompleted, format!("order:{id}"));
    draft.reference = Some(id.clone());
    let people = [
        order.customer.as_ref(),
        order.client.as_ref(),
        push.customer.as_ref(),
        push.client.as_ref(),
    ];
    let candidates = [
        people[0].and_then(|p| p.phone.as_ref()),
        people[1].and_then(|p| p.phone.as_ref()),
        order.phone.as_ref(),
        people[2].and_then(|p| p.phone.as_ref()),
        people[3].and_then(|p| p.phone.as_ref()),
        push.phone.as_ref(),
    ];
    for phone in candidates.into_iter().flatten().filter_map(id_string) {
        if !draft.phones.contains(&phone) {
            draft.phones.push(phone);
        }
    }
    let person = people.into_iter().flatten();
    draft.name = person.clone().find_map(|p| text(p.name.as_deref()));
    draft.email = person.clone().find_map(|p| text(p.email.as_deref()));
    draft.params.order_number = order
        .number
        .as_ref()
        .and_then(id_string)
        .or_else(|| Some(id.clone()));
    draft.params.amount = [&order.sum, &order.total]
        .into_iter()
        .find_map(|v| v.as_ref().and_then(amount));
    draft.params.place = order.address.as_ref().and_then(|a| text(a.as_str()));
    draft.params.extra.insert("status".into(), status);
    Ok(Item::Accept(draft))
}

fn white_server(push: &Push, tenant: &Tenant) -> Result<Item, ParseError> {
    let common = push.response_event_common.as_ref();
    let event_type = common.and_then(|c| c.event_type.as_deref()).unwrap_or("");
    if event_type != "OrderStatusChanged" {
        let shown = if event_type.is_empty() {
            "event without eventType"
        } else {
            event_type
        };
        return Ok(Item::Ignore(format!(
            "rkeeper White Server {shown} is not notified"
        )));
    }
    let Some(response) = push.response.as_ref() else {
        return Err(malformed("White Server event has no `response`"));
    };
    let Some(status) = response.status.as_ref().and_then(status_text) else {
        return Ok(Item::Ignore(
            "rkeeper White Server event has no status".into(),
        ));
    };
    if !is_final(&status, tenant) {
        return Ok(Item::Ignore(format!(
            "rkeeper order status {status} is not final"
        )));
    }
    let guid = response
        .order_guid
        .as_ref()
        .and_then(id_string)
        .ok_or_else(|| malformed("White Server event has no orderGuid"))?;

    let mut draft = Draft::new(EventKind::OrderCompleted, format!("ws:{guid}"));
    draft.reference = Some(guid.clone());
    draft.occurred_at = common
        .and_then(|c| c.date_time_server_receive_event_from_agent.as_deref())
        .and_then(|s| DateTime::parse_from_rfc3339(s.trim()).ok())
        .map(|t| t.with_timezone(&Utc));
    draft.location = common
        .and_then(|c| c.object_id.as_ref())
        .and_then(id_string);
    // White Server events carry no guest data; a top-level phone (a hand-made
    // proxy) is still honoured, otherwise the caller reports "no phone".
    draft.phones = push
        .phone
        .as_ref()
        .and_then(id_string)
        .into_iter()
        .collect();
    draft.params.order_number = response.original_order_id.as_ref().and_then(id_string);
    draft.params.extra.insert("order_guid".into(), guid);
    draft.params.extra.insert("status".into(), status);
    if let Some(event_guid) = common
        .and_then(|c| c.event_guid.as_ref())
        .and_then(id_string)
    {
        draft.params.extra.insert("event_guid".into(), event_guid);
    }
    Ok(Item::Accept(draft))
}

fn is_final(status: &str, tenant: &Tenant) -> bool {
    let status = status.to_lowercase();
    tenant
        .sources
        .rkeeper
        .final_statuses
        .iter()
        .any(|f| f.to_lowercase() == status)
}

/// A status label, or the `value`/`name`/`title` of a status object.
fn status_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => text(Some(s)),
        Value::Object(o) => ["value", "name", "title"]
            .iter()
            .find_map(|k| text(o.get(*k).and_then(Value::as_str))),
        _ => None,
    }
}

fn malformed(msg: &str) -> ParseError {
    ParseError::Malformed(format!("rkeeper: {msg}"))
}

#[cfg(test)]
mod tests {
    use super::super::{fixture, tenant};
    use super::*;

    fn parse(body: &[u8]) -> Result<Vec<Item>, ParseError> {
        Rkeeper.parse(Body::Json(body), &tenant())
    }

    /// serde's structs would read an array as their fields by position: a
    /// record is an object or nothing (the OpenAPI schema says the same).
    #[test]
    fn a_record_is_an_object_not_an_array() {
        for body in [
            r#"{"order": [null, null]}"#,
            r#"{"responseEventCommon": [null, null]}"#,
            r#"{"order": {"status": "Выполнен", "customer": ["+79161234567"]}}"#,
        ] {
            assert!(parse(body.as_bytes()).is_err(), "{body}");
        }
        assert!(parse(br#"{"order": {"status": "new", "customer": null}}"#).is_ok());
    }

    fn one(body: &[u8]) -> Item {
        let mut items = parse(body).unwrap();
        assert_eq!(items.len(), 1);
        items.remove(0)
    }

    fn accepted(item: Item) -> Draft {
        match item {
            Item::Accept(d) => d,
            Item::Ignore(r) => panic!("expected Accept, got Ignore({r})"),
        }
    }

    fn ignored(item: Item) -> String {
        match item {
            Item::Ignore(r) => r,
            Item::Accept(d) => panic!("expected Ignore, got Accept({})", d.identity),
        }
    }

    fn malformed_msg(body: &[u8]) -> String {
        let ParseError::Malformed(msg) = parse(body).unwrap_err();
        msg
    }

    #[test]
    fn fixture_white_server_status_changed_complited_is_accepted_without_phone() {
        let d = accepted(one(&fixture(
            "rkeeper_ws_event_order_status_changed_docs.json",
        )));
        assert_eq!(d.kind, EventKind::OrderCompleted);
        assert_eq!(d.identity, "ws:5e964af3-6e1d-4661-4db1-08d897c7079a");
        assert!(d.phones.is_empty());
        assert_eq!(d.lookup, None);
        assert_eq!(d.location.as_deref(), Some("199990160"));
        assert_eq!(
            d.occurred_at.unwrap().to_rfc3339(),
            "2020-12-11T08:36:51.703215800+00:00"
        );
        // originalOrderId is "" in the sample: no order number.
        assert_eq!(d.params.order_number, None);
        assert_eq!(
            d.params.extra["event_guid"],
            "31ee5577-5e75-4b5c-bad3-b650e5acb16f"
        );
    }

    #[test]
    fn white_server_non_final_and_other_events_are_ignored() {
        let sample =
            String::from_utf8(fixture("rkeeper_ws_event_order_status_changed_docs.json")).unwrap();
        let created = sample.replace("\"Complited\"", "\"Created\"");
        assert_eq!(
            ignored(one(created.as_bytes())),
            "rkeeper order status Created is not final"
        );
        let changed = sample.replace("\"OrderStatusChanged\"", "\"OrderChanged\"");
        assert_eq!(
            ignored(one(changed.as_bytes())),
            "rkeeper White Server OrderChanged is not notified"
        );
        let lowercase = sample.replace("\"Complited\"", "\"complited\"");
        assert_eq!(
            accepted(one(lowercase.as_bytes())).identity,
            "ws:5e964af3-6e1d-4661-4db1-08d897c7079a"
        );
        let no_guid = sample.replace("\"orderGuid\"", "\"otherGuid\"");
        assert_eq!(
            malformed_msg(no_guid.as_bytes()),
            "rkeeper: White Server event has no orderGuid"
        );
    }

    #[test]
    fn delivery_push_with_customer_phone_is_accepted() {
        let body = r#"{"order": {"id": 5012, "number": "A-17", "status": "Выполнен", "sum": 2450,
            "customer": {"phone": "+79991234567", "name": "Иван", "email": "ivan@example.com"}}}"#;
        let d = accepted(one(body.as_bytes()));
        assert_eq!(d.kind, EventKind::OrderCompleted);
        assert_eq!(d.identity, "order:5012");
        assert_eq!(d.phones, vec!["+79991234567".to_string()]);
        assert_eq!(d.name.as_deref(), Some("Иван"));
        assert_eq!(d.email.as_deref(), Some("ivan@example.com"));
        assert_eq!(d.params.order_number.as_deref(), Some("A-17"));
        assert_eq!(d.params.amount.as_deref(), Some("2450"));
    }

    #[test]
    fn delivery_status_is_case_insensitive_and_follows_the_tenant() {
        let body = r#"{"order": {"number": 77, "status": "ДОСТАВЛЕН", "client": {"phone": "89161234567"}}}"#;
        let d = accepted(one(body.as_bytes()));
        assert_eq!(d.identity, "order:77");
        assert_eq!(d.phones, vec!["89161234567".to_string()]);

        let body = r#"{"order": {"id": 1, "status": "Передан на кухню"}}"#;
        assert_eq!(
            ignored(one(body.as_bytes())),
            "rkeeper order status Передан на кухню is not final"
        );

        let mut t = tenant();
        t.sources.rkeeper.final_statuses = vec!["передан на кухню".into()];
        let items = Rkeeper.parse(Body::Json(body.as_bytes()), &t).unwrap();
        assert_eq!(
            accepted(items.into_iter().next().unwrap()).identity,
            "order:1"
        );
    }

    #[test]
    fn delivery_phone_paths_in_seed_001_priority() {
        let body = r#"{"phone": "+79990000005", "client": {"phone": "+79990000004"},
            "customer": {"phone": "+79990000003"},
            "order": {"guid": "g-1", "status": {"value": "Выполнен"},
                      "client": {"phone": "+79990000002"}, "customer": {"phone": "+79990000001"}}}"#;
        let d = accepted(one(body.as_bytes()));
        assert_eq!(d.identity, "order:g-1");
        assert_eq!(
            d.phones,
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
    fn same_push_twice_and_delivered_then_done_are_one_order() {
        let done = r#"{"order": {"id": "9", "status": "Выполнен"}}"#;
        let delivered = r#"{"order": {"id": "9", "status": "Доставлен"}}"#;
        let other = r#"{"order": {"id": "10", "status": "Выполнен"}}"#;
        let a = accepted(one(done.as_bytes())).identity;
        assert_eq!(a, accepted(one(done.as_bytes())).identity);
        assert_eq!(a, accepted(one(delivered.as_bytes())).identity);
        assert_ne!(a, accepted(one(other.as_bytes())).identity);
        // A push without any phone is still accepted: the caller reports "no phone".
        assert!(accepted(one(done.as_bytes())).phones.is_empty());
    }

    #[test]
    fn seed_001_curl_example_without_order_id_is_malformed() {
        let body = r#"{"order": {"status": "Выполнен", "customer": {"phone": "+79991234567"}}}"#;
        let msg = malformed_msg(body.as_bytes());
        assert_eq!(msg, "rkeeper: order has no id or number");
        // ...but a non-final one is simply ignored.
        let body = r#"{"order": {"status": "Новый", "customer": {"phone": "+79991234567"}}}"#;
        assert_eq!(
            ignored(one(body.as_bytes())),
            "rkeeper order status Новый is not final"
        );
        let body = r#"{"order": {"id": 3}}"#;
        assert_eq!(ignored(one(body.as_bytes())), "rkeeper order has no status");
    }

    #[test]
    fn other_bodies_are_malformed_without_echoing_values() {
        assert_eq!(
            malformed_msg(br#"{"hello": 1}"#),
            "rkeeper: expected an `order` object (Delivery push) or a White Server event"
        );
        assert_eq!(
            malformed_msg(b"[1]"),
            "rkeeper: expected a JSON object: not an object"
        );
        assert!(malformed_msg(b"{\"order\": ").contains("unexpected end of JSON"));
        let msg = malformed_msg(
            br#"{"order": {"id": 1, "status": "x", "customer": {"name": 79161234567}}}"#,
        );
        assert!(msg.contains("unexpected value type at line 1"), "{msg}");
        assert!(!msg.contains("79161234567"), "{msg}");
        let ParseError::Malformed(msg) = Rkeeper.parse(Body::Form(b"a=1"), &tenant()).unwrap_err();
        assert!(msg.contains("JSON"));
    }
}
