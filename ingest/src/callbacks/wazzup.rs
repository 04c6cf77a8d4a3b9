//! Wazzup24 webhooks (providers.md B3): `{"statuses": [{messageId,
//! timestamp, status, error?}]}`, inbound messages in `{"messages": [...]}`
//! (counted, not ours), and the registration ping `{"test": true}`, which
//! must get 200. Wazzup sends `Authorization: Bearer <crmKey>` when a crmKey
//! is known; otherwise a secret in the URL (`?key=`) is the only option.
//! Either is checked against `callbacks.wazzup_keys`, ping included (Wazzup
//! pings with the same URL and headers it will use).

use actix_web::HttpRequest;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use shared::status::{AccountNotice, DeliveryState, STATUS_SCHEMA_VERSION};

use super::{
    CallbackError, Callbacks, Inbound, Parsed, Provider, bearer, code_string, describe_json_error,
    query_param, update,
};

pub fn authenticate(cb: &Callbacks, req: &HttpRequest) -> Result<(), CallbackError> {
    if cb.wazzup.is_empty() {
        return Err(CallbackError::NotConfigured(Provider::Wazzup));
    }
    let key = query_param(req, "key");
    // The header may carry a crmKey set up for another purpose while the URL
    // carries ours: any presented credential that matches is enough.
    let presented = key.as_deref().into_iter().chain(bearer(req));
    if cb.wazzup.matches_any(presented.filter(|k| !k.is_empty())) {
        Ok(())
    } else {
        Err(CallbackError::Unauthorized(Provider::Wazzup))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WazzupStatus {
    message_id: String,
    status: String,
    #[serde(default)]
    timestamp: Option<Value>,
    #[serde(default)]
    error: Option<WazzupError>,
}

#[derive(Deserialize)]
struct WazzupError {
    #[serde(default)]
    error: Option<Value>,
    #[serde(default)]
    description: Option<String>,
}

/// The JSON Schema of what [`parse`] reads without a 400: an object whose
/// `statuses` and `messages` are arrays or null; an item that cannot be
/// used is counted as ignored, so items are not constrained here.
pub fn schema() -> Value {
    let list = serde_json::json!({"type": ["array", "null"]});
    serde_json::json!({
        "type": "object",
        "description": "`statuses[]` ({messageId, status, timestamp, error}), `messages[]` \
            (inbound and echoes), `channelsUpdates[]` ({channelId, state}), or `{\"test\": true}`",
        "properties": {"statuses": list, "messages": list, "channelsUpdates": list, "test": {}},
    })
}

pub fn parse(body: &[u8], received_at: DateTime<Utc>) -> Result<Parsed, String> {
    let root: Value = serde_json::from_slice(body).map_err(|e| describe_json_error(&e))?;
    let root = root.as_object().ok_or("body is not a JSON object")?;
    let mut out = Parsed {
        ping: root.get("test").and_then(Value::as_bool) == Some(true),
        ..Parsed::default()
    };
    match root.get("messages") {
        None | Some(Value::Null) => {}
        Some(Value::Array(m)) => {
            out.inbound = m.len();
            out.texts = m.iter().filter_map(inbound).collect();
        }
        Some(_) => return Err("messages is not an array".into()),
    }
    let statuses = match root.get("statuses") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(s)) => s.as_slice(),
        Some(_) => return Err("statuses is not an array".into()),
    };
    for item in statuses {
        match status(item, received_at) {
            Some(u) => out.updates.push(u),
            None => out.ignored += 1,
        }
    }
    match root.get("channelsUpdates") {
        None | Some(Value::Null) => {}
        Some(Value::Array(c)) => {
            for item in c {
                match channel_update(item, received_at) {
                    Some(n) => out.notices.push(n),
                    None => out.ignored += 1,
                }
            }
        }
        Some(_) => return Err("channelsUpdates is not an array".into()),
    }
    Ok(out)
}

/// A channel's new state (`channelsUpdates`, providers.md B7): only
/// `active` can send; any other state pauses the channel until it is
/// active again.
fn channel_update(item: &Value, received_at: DateTime<Utc>) -> Option<AccountNotice> {
    let text = |k: &str| {
        item.get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.len() <= 128)
    };
    let channel = text("channelId")?;
    let state = text("state")?;
    tracing::info!(provider = "wazzup", channel, state = %shared::mask::text(state), "channel state");
    Some(AccountNotice {
        schema: STATUS_SCHEMA_VERSION,
        provider: Provider::Wazzup.as_str().to_string(),
        account: channel.to_string(),
        template: None,
        healthy: state == "active",
        event: shared::mask::text(&format!("channel state {state}")),
        at: item
            .get("timestamp")
            .or_else(|| item.get("dateTime"))
            .and_then(timestamp)
            .unwrap_or(received_at),
        received_at,
        notice: true,
    })
}

/// A WhatsApp text the customer wrote (not our own echo), for the stop
/// words; other chat types' `chatId`s are not phone numbers.
fn inbound(m: &Value) -> Option<Inbound> {
    let echo = m.get("isEcho").and_then(Value::as_bool).unwrap_or(false);
    let whatsapp = m.get("chatType").and_then(Value::as_str) == Some("whatsapp");
    if echo || !whatsapp || m.get("type").and_then(Value::as_str) != Some("text") {
        return None;
    }
    Some(Inbound {
        account: m.get("channelId")?.as_str()?.to_string(),
        sender: m.get("chatId")?.as_str()?.to_string(),
        text: m.get("text")?.as_str()?.to_string(),
        at: m.get("dateTime").and_then(timestamp),
    })
}

fn status(item: &Value, received_at: DateTime<Utc>) -> Option<shared::status::StatusUpdate> {
    let s = match WazzupStatus::deserialize(item) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(provider = "wazzup", error = %describe_json_error(&e), "status item skipped");
            return None;
        }
    };
    let state = match s.status.as_str() {
        "sent" => DeliveryState::Sent,
        "delivered" => DeliveryState::Delivered,
        "read" => DeliveryState::Read,
        "error" => DeliveryState::Failed,
        // `edited` says nothing about delivery; anything else is unknown.
        other => {
            tracing::debug!(provider = "wazzup", status = %shared::mask::text(other), "status not tracked");
            return None;
        }
    };
    let at = s.timestamp.as_ref().and_then(timestamp);
    let code = s
        .error
        .as_ref()
        .and_then(|e| e.error.as_ref())
        .and_then(code_string);
    let text = s.error.as_ref().and_then(|e| e.description.as_deref());
    update(
        Provider::Wazzup,
        &s.message_id,
        state,
        at,
        received_at,
        code,
        text,
    )
}

/// ISO 8601 (`2025-02-05T06:01:07.499Z`, what the docs show), or a unix
/// time in seconds or milliseconds, in case a number is ever sent.
fn timestamp(v: &Value) -> Option<DateTime<Utc>> {
    match v {
        Value::String(s) => DateTime::parse_from_rfc3339(s.trim())
            .ok()
            .map(|t| t.with_timezone(&Utc)),
        Value::Number(n) => {
            let n = n.as_i64()?;
            if n > 100_000_000_000 {
                DateTime::from_timestamp_millis(n)
            } else {
                DateTime::from_timestamp(n, 0)
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;
    use shared::config::CallbackSettings;

    use super::super::fixture;
    use super::*;

    #[test]
    fn delivered_fixture_gives_a_delivered_update() {
        let p = parse(
            &fixture("wazzup_webhook_status_delivered_docs.json"),
            Utc::now(),
        )
        .unwrap();
        assert_eq!(p.updates.len(), 1);
        let u = &p.updates[0];
        assert_eq!(u.provider, "wazzup");
        assert_eq!(u.message_id, "be3dc577-60c4-4fc8-83a5-8c358e0bfe15");
        assert_eq!(u.state, DeliveryState::Delivered);
        assert_eq!(u.at.to_rfc3339(), "2025-02-05T06:01:07.499+00:00");
        assert!(!p.ping);
    }

    #[test]
    fn channel_updates_become_notices_active_or_not() {
        let body = br#"{"channelsUpdates":[
            {"channelId":"c5e1f3a0-0000-4000-8000-000000000001","state":"phoneUnavailable"},
            {"channelId":"c5e1f3a0-0000-4000-8000-000000000002","state":"active","transport":"whatsapp"},
            {"state":"active"}
        ]}"#;
        let p = parse(body, Utc::now()).unwrap();
        assert_eq!(p.notices.len(), 2);
        assert_eq!(p.ignored, 1, "an item without a channel id is ignored");
        assert_eq!(p.notices[0].account, "c5e1f3a0-0000-4000-8000-000000000001");
        assert!(!p.notices[0].healthy);
        assert_eq!(p.notices[0].event, "channel state phoneUnavailable");
        assert!(p.notices[1].healthy);
        assert!(p.notices.iter().all(|n| n.provider == "wazzup" && n.notice));
        assert!(parse(br#"{"channelsUpdates":{"channelId":"x"}}"#, Utc::now()).is_err());
    }

    #[test]
    fn ping_and_inbound_give_no_updates() {
        let p = parse(&fixture("wazzup_webhook_test_ping_docs.json"), Utc::now()).unwrap();
        assert!(p.ping);
        assert!(p.updates.is_empty());
        let p = parse(
            &fixture("wazzup_webhook_inbound_sticker_docs.json"),
            Utc::now(),
        )
        .unwrap();
        assert_eq!((p.updates.len(), p.inbound, p.ping), (0, 1, false));
        assert!(p.texts.is_empty(), "a sticker says no words");
        let text = r#"{"messages":[
            {"messageId":"m1","channelId":"ch-1","chatType":"whatsapp","chatId":"79161234567",
             "type":"text","isEcho":false,"text":"СТОП","dateTime":"2025-05-06T14:16:00.002Z","status":"inbound"},
            {"messageId":"m2","channelId":"ch-1","chatType":"whatsapp","chatId":"79161234567",
             "type":"text","isEcho":true,"text":"stop","status":"sent"},
            {"messageId":"m3","channelId":"ch-1","chatType":"telegram","chatId":"12345",
             "type":"text","isEcho":false,"text":"stop","status":"inbound"}]}"#;
        let p = parse(text.as_bytes(), Utc::now()).unwrap();
        assert_eq!(p.inbound, 3);
        assert_eq!(
            p.texts,
            vec![Inbound {
                account: "ch-1".into(),
                sender: "79161234567".into(),
                text: "СТОП".into(),
                at: timestamp(&serde_json::json!("2025-05-06T14:16:00.002Z")),
            }],
            "only the customer's own WhatsApp text"
        );
    }

    #[test]
    fn error_is_failed_with_code_and_masked_text_and_edited_is_ignored() {
        let body = br#"{"statuses":[
            {"messageId":"m-1","timestamp":"2025-02-05T06:01:07Z","status":"error",
             "error":{"error":"BAD_CONTACT","description":"Number 79161234567 is not on WhatsApp"}},
            {"messageId":"m-2","timestamp":"2025-02-05T06:01:08Z","status":"edited"},
            {"messageId":"m-3","timestamp":1738735269000,"status":"read"},
            {"timestamp":"2025-02-05T06:01:08Z","status":"read"}]}"#;
        let p = parse(body, Utc::now()).unwrap();
        assert_eq!(p.updates.len(), 2);
        assert_eq!(p.ignored, 2);
        let f = &p.updates[0];
        assert_eq!(f.state, DeliveryState::Failed);
        assert_eq!(f.error_code.as_deref(), Some("BAD_CONTACT"));
        let text = f.error.as_deref().unwrap();
        assert!(
            !text.contains("79161234567") && text.contains("not on WhatsApp"),
            "{text}"
        );
        assert_eq!(p.updates[1].message_id, "m-3");
        assert_eq!(p.updates[1].at.timestamp(), 1738735269);
    }

    #[test]
    fn wrong_shapes_are_malformed() {
        for body in [
            &b"nope"[..],
            b"[]",
            b"{\"statuses\":{}}",
            b"{\"messages\":1}",
        ] {
            assert!(
                parse(body, Utc::now()).is_err(),
                "{:?}",
                std::str::from_utf8(body)
            );
        }
    }

    #[test]
    fn bearer_or_url_key_authenticates() {
        let cb = Callbacks::new(&CallbackSettings {
            wazzup_keys: vec!["wazzup-crm-key-000001".into()],
            ..CallbackSettings::default()
        })
        .unwrap();
        let ok = |req: HttpRequest| authenticate(&cb, &req).is_ok();
        assert!(ok(TestRequest::default()
            .insert_header(("authorization", "Bearer wazzup-crm-key-000001"))
            .to_http_request()));
        assert!(ok(
            TestRequest::with_uri("/?key=wazzup-crm-key-000001").to_http_request()
        ));
        // A foreign crmKey in the header does not spoil a right URL key.
        assert!(ok(TestRequest::with_uri("/?key=wazzup-crm-key-000001")
            .insert_header(("authorization", "Bearer some-other-crm-key"))
            .to_http_request()));
        assert!(!ok(TestRequest::default()
            .insert_header(("authorization", "wazzup-crm-key-000001"))
            .to_http_request()));
        assert!(!ok(
            TestRequest::with_uri("/?key=wazzup-crm-key-000002").to_http_request()
        ));
        assert!(!ok(TestRequest::default().to_http_request()));
    }
}
