//! YCLIENTS (and Altegio) webhooks.
//!
//! Real shape (providers.md A2): `{company_id, resource: "record"|"client"|...,
//! resource_id, status: "create"|"update"|"delete", data: {...record...}}`.
//! Seed 001's customers also send `{"resource": {...record...}, "webhook_type": ...}`;
//! the two are told apart by `resource` being a string or an object.
//! A record is notified once the visit is finished: its attendance is one of
//! the tenant's values (default 1 = arrived).

use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use serde::Deserialize;
use serde_json::Value;
use shared::event::{EventKind, Lookup};
use shared::{SourceId, Tenant};

use super::{
    Body, Components, ContentKind, Draft, Item, ParseError, Source, component, describe, id_string,
    json_object, text,
};

pub struct Yclients;

impl Source for Yclients {
    fn id(&self) -> SourceId {
        SourceId::Yclients
    }

    fn accepts(&self) -> &'static [ContentKind] {
        &[ContentKind::Json]
    }

    fn parse(&self, body: Body<'_>, tenant: &Tenant) -> Result<Vec<Item>, ParseError> {
        let bytes = json_object(body).map_err(|why| malformed(&why))?;
        let hook: Hook = serde_json::from_slice(bytes)
            .map_err(|e| malformed(&format!("not a YCLIENTS webhook: {}", describe(&e))))?;
        Ok(vec![item(&hook, tenant)?])
    }

    /// `resource: "record"` with the record in `data` (a record deleted
    /// needs none), another resource (not notified), or the record itself
    /// in `resource` (seed 001).
    fn json_schema(&self, components: &mut Components) -> Value {
        let hook = component::<Hook>(components);
        let record = component::<Record>(components);
        serde_json::json!({"allOf": [hook, {"anyOf": [
            {"required": ["resource"], "properties": {"resource": {"type": "string", "not": {"const": "record"}}}},
            {"required": ["resource", "status"], "properties": {"resource": {"const": "record"}, "status": {"const": "delete"}}},
            {"required": ["resource", "data"], "properties": {"resource": {"const": "record"}, "data": record}},
            {"required": ["resource"], "properties": {"resource": record}},
        ]}]})
    }

    fn example(&self) -> &'static str {
        include_str!("../../openapi-examples/yclients_record_update_real_capture_php_comment.json")
    }
}

#[derive(Debug, Default, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[schema(as = yclients::Hook)]
#[serde(default)]
struct Hook {
    company_id: Option<Value>,
    /// `"record"` (real) or the record object itself (seed 001).
    resource: Option<Value>,
    resource_id: Option<Value>,
    status: Option<String>,
    data: Option<Value>,
    // Seed 001 phone paths relative to the body.
    #[serde(deserialize_with = "super::record")]
    record: Option<Holder>,
    #[serde(deserialize_with = "super::record")]
    client: Option<Client>,
    phone: Option<Value>,
}

/// Anything with a `client` (used for the `record.client.phone` seed path).
#[derive(Debug, Default, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[schema(as = yclients::Holder)]
#[serde(default)]
struct Holder {
    #[serde(deserialize_with = "super::record")]
    client: Option<Client>,
}

#[derive(Debug, Default, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[schema(as = yclients::Record)]
#[serde(default)]
struct Record {
    id: Option<Value>,
    company_id: Option<Value>,
    attendance: Option<Value>,
    visit_attendance: Option<Value>,
    deleted: Option<Value>,
    #[serde(deserialize_with = "super::record")]
    client: Option<Client>,
    #[serde(deserialize_with = "super::records")]
    services: Option<Vec<Service>>,
    #[serde(deserialize_with = "super::record")]
    staff: Option<Staff>,
    /// ISO 8601 with offset (real) or a unix time (seed 001).
    datetime: Option<Value>,
    seance_length: Option<Value>,
    length: Option<Value>,
    last_change_date: Option<String>,
    // custom_fields is an object in one capture and an array in another:
    // we do not read it, and unknown/odd fields never fail the parse.
}

#[derive(Debug, Default, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[schema(as = yclients::Client)]
#[serde(default)]
struct Client {
    phone: Option<Value>,
    name: Option<String>,
    email: Option<String>,
}

#[derive(Debug, Default, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[schema(as = yclients::Service)]
#[serde(default)]
struct Service {
    title: Option<String>,
    cost: Option<Value>,
}

#[derive(Debug, Default, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[schema(as = yclients::Staff)]
#[serde(default)]
struct Staff {
    name: Option<String>,
}

fn item(hook: &Hook, tenant: &Tenant) -> Result<Item, ParseError> {
    let record_value = match &hook.resource {
        Some(Value::String(resource)) => {
            if resource != "record" {
                return Ok(Item::Ignore(format!(
                    "yclients {resource} webhook is not notified"
                )));
            }
            if hook.status.as_deref() == Some("delete") {
                return Ok(Item::Ignore("yclients record deleted".into()));
            }
            match &hook.data {
                Some(data @ Value::Object(_)) => data,
                _ => return Err(malformed("record webhook has no `data` object")),
            }
        }
        Some(record @ Value::Object(_)) => record,
        _ => {
            return Err(malformed(
                "expected `resource` (\"record\", ...) with `data`, or a record object in `resource`",
            ));
        }
    };
    let record = Record::deserialize(record_value)
        .map_err(|_| malformed("the record has an unexpected shape (a field of the wrong type)"))?;

    if record.deleted.as_ref().is_some_and(truthy) {
        return Ok(Item::Ignore("yclients record deleted".into()));
    }
    let attendance = [&record.attendance, &record.visit_attendance]
        .into_iter()
        .find_map(|v| v.as_ref().and_then(integer));
    let Some(attendance) = attendance else {
        return Ok(Item::Ignore("yclients visit attendance is missing".into()));
    };
    if !tenant.sources.yclients.attendance.contains(&attendance) {
        return Ok(Item::Ignore(format!(
            "yclients visit attendance {attendance} is not final"
        )));
    }
    let record_id = record
        .id
        .as_ref()
        .and_then(id_string)
        .or_else(|| hook.resource_id.as_ref().and_then(id_string))
        .ok_or_else(|| malformed("record has no id"))?;
    let company_id = hook
        .company_id
        .as_ref()
        .and_then(id_string)
        .or_else(|| record.company_id.as_ref().and_then(id_string));

    // One visit, one message: a record re-sent with another final
    // attendance (or edited after the visit) is the same visit.
    let mut draft = Draft::new(
        EventKind::VisitCompleted,
        format!("{}:{record_id}", company_id.as_deref().unwrap_or("-")),
    );
    draft.reference = Some(record_id.clone());
    draft.occurred_at = record
        .last_change_date
        .as_deref()
        .and_then(parse_iso)
        .map(|t| t.with_timezone(&Utc));
    draft.location = company_id.clone();

    let candidates = [
        record.client.as_ref().and_then(|c| c.phone.as_ref()),
        hook.record
            .as_ref()
            .and_then(|r| r.client.as_ref())
            .and_then(|c| c.phone.as_ref()),
        hook.client.as_ref().and_then(|c| c.phone.as_ref()),
        hook.phone.as_ref(),
    ];
    for phone in candidates.into_iter().flatten().filter_map(id_string) {
        if !draft.phones.contains(&phone) {
            draft.phones.push(phone);
        }
    }
    if draft.phones.is_empty()
        && let Some(company_id) = &company_id
    {
        draft.lookup = Some(Lookup::Yclients {
            company_id: company_id.clone(),
            record_id: record_id.clone(),
        });
    }
    let client = record.client.as_ref();
    draft.name = client.and_then(|c| text(c.name.as_deref()));
    draft.email = client.and_then(|c| text(c.email.as_deref()));

    let params = &mut draft.params;
    params.starts_at = record.datetime.as_ref().and_then(start);
    params.staff = record.staff.as_ref().and_then(|s| text(s.name.as_deref()));
    let services = record.services.as_deref().unwrap_or_default();
    params.services = services
        .iter()
        .filter_map(|s| text(s.title.as_deref()))
        .collect();
    params.amount = total(services);
    params.duration_minutes = [&record.seance_length, &record.length]
        .into_iter()
        .find_map(|v| v.as_ref().and_then(integer))
        .filter(|s| *s > 0)
        .and_then(|s| u32::try_from((s + 30) / 60).ok());
    params.order_number = Some(record_id);
    Ok(Item::Accept(draft))
}

/// Sum of service costs in kopecks, so `5900` and float noise like
/// `33.710000000000001` print as money.
fn total(services: &[Service]) -> Option<String> {
    let mut kopecks: i64 = 0;
    let mut any = false;
    for cost in services.iter().filter_map(|s| s.cost.as_ref()) {
        let value = match cost {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        if let Some(v) = value.filter(|v| v.is_finite() && v.abs() < 1e13) {
            // Bounded above, so the cast cannot saturate.
            kopecks = kopecks.saturating_add((v * 100.0).round() as i64);
            any = true;
        }
    }
    if !any {
        return None;
    }
    let sign = if kopecks < 0 { "-" } else { "" };
    let (units, cents) = (kopecks.unsigned_abs() / 100, kopecks.unsigned_abs() % 100);
    Some(if cents == 0 {
        format!("{sign}{units}")
    } else {
        format!("{sign}{units}.{cents:02}")
    })
}

fn start(v: &Value) -> Option<DateTime<FixedOffset>> {
    match v {
        Value::String(s) => parse_iso(s),
        Value::Number(n) => n
            .as_i64()
            .and_then(|secs| Utc.timestamp_opt(secs, 0).single())
            .map(|t| t.fixed_offset()),
        _ => None,
    }
}

/// RFC 3339 (`2020-11-21T16:00:00+03:00`) or YCLIENTS' `+0300` offsets.
fn parse_iso(s: &str) -> Option<DateTime<FixedOffset>> {
    let s = s.trim();
    DateTime::parse_from_rfc3339(s)
        .or_else(|_| DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%z"))
        .ok()
}

fn integer(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_i64().is_some_and(|n| n != 0),
        Value::String(s) => matches!(s.trim(), "1" | "true"),
        _ => false,
    }
}

fn malformed(msg: &str) -> ParseError {
    ParseError::Malformed(format!("yclients: {msg}"))
}

#[cfg(test)]
mod tests {
    use super::super::{fixture, tenant};
    use super::*;

    fn one(body: &[u8]) -> Item {
        let mut items = Yclients.parse(Body::Json(body), &tenant()).unwrap();
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
        let ParseError::Malformed(msg) = Yclients.parse(Body::Json(body), &tenant()).unwrap_err();
        msg
    }

    fn real_capture() -> String {
        String::from_utf8(fixture(
            "yclients_record_update_real_capture_php_comment.json",
        ))
        .unwrap()
    }

    /// The real capture with the visit marked as arrived.
    fn arrived() -> String {
        real_capture()
            .replace("\"visit_attendance\":0", "\"visit_attendance\":1")
            .replace("\"attendance\":0", "\"attendance\":1")
    }

    #[test]
    fn fixture_real_capture_waiting_visit_is_ignored() {
        assert_eq!(
            ignored(one(real_capture().as_bytes())),
            "yclients visit attendance 0 is not final"
        );
    }

    #[test]
    fn real_capture_arrived_is_accepted_with_all_params() {
        let d = accepted(one(arrived().as_bytes()));
        assert_eq!(d.kind, EventKind::VisitCompleted);
        assert_eq!(d.identity, "358944:234961815");
        assert_eq!(d.location.as_deref(), Some("358944"));
        assert_eq!(d.phones, vec!["+79999856814".to_string()]);
        assert_eq!(d.lookup, None);
        assert_eq!(d.name.as_deref(), Some("Олеся"));
        // "email": "" in the capture.
        assert_eq!(d.email, None);
        assert_eq!(
            d.occurred_at.unwrap().to_rfc3339(),
            "2020-11-17T10:58:19+00:00"
        );
        let p = &d.params;
        assert_eq!(
            p.starts_at.unwrap().to_rfc3339(),
            "2020-11-21T16:00:00+03:00"
        );
        assert_eq!(p.staff.as_deref(), Some("Герасимова Лариса"));
        assert_eq!(
            p.services,
            vec!["Окрашивание 2 (до 120 гр красителя) (Стилист)".to_string()]
        );
        assert_eq!(p.amount.as_deref(), Some("5900"));
        assert_eq!(p.duration_minutes, Some(135));
        assert_eq!(p.order_number.as_deref(), Some("234961815"));
    }

    #[test]
    fn attendance_falls_back_to_visit_attendance_and_follows_the_tenant() {
        let only_visit = arrived().replace("\"attendance\":1,", "");
        assert_eq!(
            accepted(one(only_visit.as_bytes())).identity,
            "358944:234961815"
        );

        let no_show = real_capture()
            .replace("\"attendance\":0", "\"attendance\":-1")
            .replace("\"visit_attendance\":0", "\"visit_attendance\":-1");
        assert_eq!(
            ignored(one(no_show.as_bytes())),
            "yclients visit attendance -1 is not final"
        );

        let mut t = tenant();
        t.sources.yclients.attendance = vec![1, 2];
        let confirmed = real_capture().replace("\"attendance\":0", "\"attendance\":2");
        let items = Yclients
            .parse(Body::Json(confirmed.as_bytes()), &t)
            .unwrap();
        let Item::Accept(d) = &items[0] else {
            panic!("{items:?}")
        };
        // Confirmed then arrived is one visit.
        assert_eq!(d.identity, accepted(one(arrived().as_bytes())).identity);
    }

    #[test]
    fn deleted_records_and_other_resources_are_ignored() {
        let delete = arrived().replace("\"status\":\"update\"", "\"status\":\"delete\"");
        assert_eq!(ignored(one(delete.as_bytes())), "yclients record deleted");
        let flagged = arrived().replace("\"deleted\":false", "\"deleted\":true");
        assert_eq!(ignored(one(flagged.as_bytes())), "yclients record deleted");
        let client = r#"{"company_id": 1, "resource": "client", "resource_id": 5, "status": "update",
                         "data": {"id": 5, "phone": "+79991234567"}}"#;
        assert_eq!(
            ignored(one(client.as_bytes())),
            "yclients client webhook is not notified"
        );
    }

    #[test]
    fn missing_client_phone_asks_for_a_lookup() {
        let no_phone = arrived().replace("\"phone\":\"+79999856814\",", "");
        let d = accepted(one(no_phone.as_bytes()));
        assert!(d.phones.is_empty());
        assert_eq!(
            d.lookup,
            Some(Lookup::Yclients {
                company_id: "358944".into(),
                record_id: "234961815".into()
            })
        );
        let body = r#"{"company_id": 7, "resource": "record", "resource_id": 9, "status": "update",
                       "data": {"id": 9, "attendance": 1, "client": null, "custom_fields": []}}"#;
        let d = accepted(one(body.as_bytes()));
        assert_eq!(d.identity, "7:9");
        assert_eq!(
            d.lookup,
            Some(Lookup::Yclients {
                company_id: "7".into(),
                record_id: "9".into()
            })
        );
        assert_eq!(d.name, None);
    }

    #[test]
    fn seed_001_shape_with_unix_datetime() {
        let body = r#"{
          "resource": {
            "id": 12345, "company_id": 4564, "visit_attendance": 1, "deleted": false,
            "client": {"id": 789, "name": "Иван Петров", "phone": "+79991234567"},
            "services": [{"id": 1, "title": "Стрижка", "cost": 1500},
                         {"id": 2, "title": "Укладка", "cost": 499.99}],
            "staff": {"id": 9, "name": "Мастер Анна"},
            "datetime": 1547622000
          },
          "webhook_type": "record_changed"
        }"#;
        let d = accepted(one(body.as_bytes()));
        assert_eq!(d.identity, "4564:12345");
        assert_eq!(d.location.as_deref(), Some("4564"));
        assert_eq!(d.phones, vec!["+79991234567".to_string()]);
        assert_eq!(d.name.as_deref(), Some("Иван Петров"));
        assert_eq!(
            d.params.starts_at.unwrap().to_rfc3339(),
            "2019-01-16T07:00:00+00:00"
        );
        assert_eq!(
            d.params.services,
            vec!["Стрижка".to_string(), "Укладка".to_string()]
        );
        assert_eq!(d.params.amount.as_deref(), Some("1999.99"));
        assert_eq!(d.params.staff.as_deref(), Some("Мастер Анна"));
        let deleted = body.replace("\"deleted\": false", "\"deleted\": true");
        assert_eq!(ignored(one(deleted.as_bytes())), "yclients record deleted");
    }

    #[test]
    fn seed_phone_paths_follow_the_record_client() {
        let body = r#"{"company_id": 1, "resource": "record", "status": "update",
            "data": {"id": 2, "attendance": "1", "client": {"phone": "77771234567"}},
            "record": {"client": {"phone": "+79990000002"}},
            "client": {"phone": "+79990000003"}, "phone": "77771234567"}"#;
        let d = accepted(one(body.as_bytes()));
        assert_eq!(d.phones, ["77771234567", "+79990000002", "+79990000003"]);
        assert_eq!(d.lookup, None);
    }

    #[test]
    fn float_noise_never_reaches_the_amount() {
        let services = |costs: &[Value]| -> Vec<Service> {
            costs
                .iter()
                .map(|c| Service {
                    title: None,
                    cost: Some(c.clone()),
                })
                .collect()
        };
        assert_eq!(
            total(&services(&[
                serde_json::from_str("33.710000000000001").unwrap()
            ]))
            .as_deref(),
            Some("33.71")
        );
        assert_eq!(
            total(&services(&[serde_json::json!(0.1), serde_json::json!(0.2)])).as_deref(),
            Some("0.30")
        );
        assert_eq!(
            total(&services(&[serde_json::json!("1500")])).as_deref(),
            Some("1500")
        );
        assert_eq!(total(&services(&[serde_json::json!(null)])), None);
        assert_eq!(total(&[]), None);
    }

    #[test]
    fn malformed_bodies_name_the_problem_without_values() {
        assert_eq!(
            malformed_msg(br#"{"webhook_type": "x"}"#),
            "yclients: expected `resource` (\"record\", ...) with `data`, or a record object in `resource`"
        );
        assert_eq!(
            malformed_msg(br#"{"resource": "record", "status": "update"}"#),
            "yclients: record webhook has no `data` object"
        );
        assert_eq!(
            malformed_msg(
                br#"{"resource": {"visit_attendance": 1, "client": {"phone": "+79991234567"}}}"#
            ),
            "yclients: record has no id"
        );
        let msg = malformed_msg(br#"{"resource": {"id": 1, "client": {"name": 79161234567}}}"#);
        assert!(!msg.contains("79161234567"), "{msg}");
        assert!(malformed_msg(b"[]").contains("expected a JSON object"));
        assert!(malformed_msg(b"{").contains("unexpected end of JSON"));
    }
}
