//! Meta WhatsApp Cloud API webhooks (providers.md A5).
//!
//! - `GET` verification: `hub.mode=subscribe`, `hub.verify_token` equal to
//!   ours (constant time) → the `hub.challenge` verbatim; otherwise 403.
//! - `POST`: `X-Hub-Signature-256: sha256=<hex>` is the HMAC-SHA256 of the
//!   **raw** body with the app secret; it is checked against every configured
//!   secret before the body is parsed.
//! - Body: `entry[].changes[].value.{statuses,messages,errors}`. Every status
//!   of every change becomes one update; inbound messages and value-level
//!   errors are counted, not forwarded. 360dialog sends the same body, or
//!   on-premise's top-level `{"statuses": [...]}`, which this parser also takes.

use actix_web::HttpRequest;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;
use shared::status::{AccountNotice, DeliveryState, STATUS_SCHEMA_VERSION, TemplateRef};

use super::{
    CallbackError, Callbacks, Inbound, Parsed, Provider, code_string, describe_json_error, update,
};

pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";
/// Meta's challenge is a number; anything much longer is not Meta.
const MAX_CHALLENGE: usize = 256;

/// True when `header` (`sha256=<hex>`) is the HMAC-SHA256 of `body` under
/// one of `secrets`. The comparison is constant-time (`verify_slice`).
pub fn signature_valid(secrets: &[Vec<u8>], header: Option<&str>, body: &[u8]) -> bool {
    let Some(header) = header.map(str::trim) else {
        return false;
    };
    let Some(hex_sig) = header
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case("sha256="))
        .map(|_| &header[7..])
    else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    if sig.len() != 32 {
        return false;
    }
    secrets.iter().fold(false, |ok, secret| {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
            return ok;
        };
        mac.update(body);
        mac.verify_slice(&sig).is_ok() | ok
    })
}

/// Checks the POST's signature; the body must already be read (raw bytes).
pub fn authenticate(cb: &Callbacks, req: &HttpRequest, body: &[u8]) -> Result<(), CallbackError> {
    let header = req
        .headers()
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok());
    if signature_valid(&cb.meta_app_secrets, header, body) {
        Ok(())
    } else {
        Err(CallbackError::Unauthorized(Provider::Meta))
    }
}

/// Refuses before reading the body when no app secret is configured.
pub fn ensure_configured(cb: &Callbacks) -> Result<(), CallbackError> {
    if cb.meta_app_secrets.is_empty() {
        Err(CallbackError::NotConfigured(Provider::Meta))
    } else {
        Ok(())
    }
}

/// The subscription handshake: the challenge to echo, or why not.
pub fn verify_subscription(cb: &Callbacks, query: &str) -> Result<String, CallbackError> {
    if cb.meta_verify_token.is_empty() {
        return Err(CallbackError::NotConfigured(Provider::Meta));
    }
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let token_ok = cb
        .meta_verify_token
        .matches(get("hub.verify_token").unwrap_or(""));
    let mode_ok = get("hub.mode") == Some("subscribe");
    match get("hub.challenge") {
        Some(c) if token_ok && mode_ok && !c.is_empty() && c.len() <= MAX_CHALLENGE => {
            Ok(c.to_string())
        }
        _ => Err(CallbackError::Forbidden),
    }
}

#[derive(Deserialize)]
struct MetaStatus {
    id: String,
    status: String,
    #[serde(default)]
    timestamp: Option<Value>,
    #[serde(default)]
    errors: Vec<MetaError>,
    /// Our delivery key, echoed (providers.md B7).
    #[serde(default)]
    biz_opaque_callback_data: Option<String>,
    // recipient_id (a phone number) is deliberately not read.
}

#[derive(Deserialize)]
struct MetaError {
    #[serde(default)]
    code: Option<Value>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// The JSON Schema of what [`parse`] reads without a 400: an object whose
/// `entry` (when present) is an array, each entry's `changes` an array;
/// in a change of `field` `messages` (or none), and at the top level when
/// there is no `entry` (360dialog on-premise), `statuses`, `messages` and
/// `errors` are arrays or null. An item that cannot be used is counted as
/// ignored, not refused, so items are not constrained here.
pub fn schema() -> Value {
    let list = serde_json::json!({"type": ["array", "null"]});
    let value = serde_json::json!({
        "properties": {"statuses": list, "messages": list, "errors": list},
    });
    let change = serde_json::json!({"anyOf": [
        {"required": ["field"], "properties": {"field": {"type": "string", "not": {"const": "messages"}}}},
        {"properties": {"value": value}},
    ]});
    serde_json::json!({
        "type": "object",
        "description": "`entry[].changes[].value` with `metadata.phone_number_id`, `statuses[]` \
            ({id, status, timestamp, errors[], biz_opaque_callback_data}) and `messages[]`",
        "anyOf": [
            {"required": ["entry"], "properties": {"entry": {"type": "array", "items": {
                "properties": {"changes": {"type": "array", "items": change}},
            }}}},
            {"not": {"required": ["entry"]}, "allOf": [value]},
        ],
    })
}

/// Parses a Cloud API body (Meta or 360dialog). Only a body that is not a
/// JSON object, or whose `entry`/`changes`/`statuses` are not arrays, is
/// malformed; a single status we cannot use is counted as ignored, so one
/// odd item does not make the provider retry the whole batch for 7 days.
pub fn parse(
    body: &[u8],
    provider: Provider,
    received_at: DateTime<Utc>,
) -> Result<Parsed, String> {
    let root: Value = serde_json::from_slice(body).map_err(|e| describe_json_error(&e))?;
    let root = root.as_object().ok_or("body is not a JSON object")?;
    let mut values = Vec::new();
    let mut notices = Vec::new();
    match root.get("entry") {
        Some(entry) => {
            let entries = entry.as_array().ok_or("entry is not an array")?;
            for (i, e) in entries.iter().enumerate() {
                let changes = match e.get("changes") {
                    None => continue,
                    Some(c) => c
                        .as_array()
                        .ok_or_else(|| format!("entry[{i}].changes is not an array"))?,
                };
                for change in changes {
                    let field = change.get("field").and_then(Value::as_str);
                    // The account's and its templates' health (B7); other
                    // subscriptions carry nothing for us.
                    if field.is_some_and(|f| f != "messages") {
                        if let Some(n) = notice(e, change, provider, received_at) {
                            notices.push(n);
                        }
                        continue;
                    }
                    if let Some(v) = change.get("value").and_then(Value::as_object) {
                        values.push(v);
                    }
                }
            }
        }
        // 360dialog on-premise: statuses/messages/errors at the top level.
        None => values.push(root),
    }

    let mut out = Parsed {
        notices,
        ..Parsed::default()
    };
    for value in values {
        let messages = array(value.get("messages"), "messages")?;
        out.inbound += messages.len();
        let account = value
            .get("metadata")
            .and_then(|m| m.get("phone_number_id"))
            .and_then(code_string);
        if let Some(account) = account {
            out.texts
                .extend(messages.iter().filter_map(|m| inbound(m, &account)));
        }
        for err in array(value.get("errors"), "errors")? {
            out.errors += 1;
            let code = err.get("code").and_then(code_string);
            let title = err.get("title").and_then(Value::as_str).unwrap_or("");
            tracing::warn!(provider = provider.as_str(), code = ?code,
                title = %shared::mask::text(title), "provider reported an error in a callback");
        }
        for item in array(value.get("statuses"), "statuses")? {
            match status(item, provider, received_at) {
                Some(u) => out.updates.push(u),
                None => out.ignored += 1,
            }
        }
    }
    Ok(out)
}

/// An inbound message's words, whatever the customer typed or tapped:
/// `text.body`, a template quick reply's `button.text`, an interactive
/// reply's title.
fn inbound(m: &Value, account: &str) -> Option<Inbound> {
    let text = match m.get("type").and_then(Value::as_str)? {
        "text" => m.get("text")?.get("body")?,
        "button" => m.get("button")?.get("text")?,
        "interactive" => {
            let i = m.get("interactive")?;
            i.get("button_reply")
                .or_else(|| i.get("list_reply"))?
                .get("title")?
        }
        _ => return None,
    };
    Some(Inbound {
        account: account.to_string(),
        sender: m.get("from")?.as_str()?.to_string(),
        text: text.as_str()?.to_string(),
        at: m.get("timestamp").and_then(unix_seconds),
    })
}

fn array<'a>(v: Option<&'a Value>, name: &str) -> Result<&'a [Value], String> {
    match v {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(format!("{name} is not an array")),
    }
}

fn status(
    item: &Value,
    provider: Provider,
    received_at: DateTime<Utc>,
) -> Option<shared::status::StatusUpdate> {
    let s = match MetaStatus::deserialize(item) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(provider = provider.as_str(), error = %describe_json_error(&e), "status item skipped");
            return None;
        }
    };
    let state = match s.status.as_str() {
        "sent" => DeliveryState::Sent,
        "delivered" => DeliveryState::Delivered,
        "read" => DeliveryState::Read,
        "failed" => DeliveryState::Failed,
        other => {
            tracing::debug!(provider = provider.as_str(), status = %shared::mask::text(other), "status not tracked");
            return None;
        }
    };
    let at = s.timestamp.as_ref().and_then(unix_seconds);
    let first = s.errors.first();
    let code = first.and_then(|e| e.code.as_ref()).and_then(code_string);
    let text = first.and_then(|e| e.title.as_deref().or(e.message.as_deref()));
    let mut u = update(provider, &s.id, state, at, received_at, code, text)?;
    // Only what our dispatcher could have put there: `<dedup key>/<channel>`.
    u.delivery_key = s.biz_opaque_callback_data.filter(|k| {
        k.len() <= MAX_DELIVERY_KEY && k.contains('/') && !k.chars().any(char::is_control)
    });
    Some(u)
}

/// An `account_update` or `message_template_status_update` change that
/// says the account (entry `id`, the WhatsApp Business Account) or one of
/// its templates can or cannot send (providers.md B7). What changes nothing
/// for sending (a violation warning, a template flagged or pending, a
/// disable only scheduled) is logged and dropped.
fn notice(
    entry: &Value,
    change: &Value,
    provider: Provider,
    received_at: DateTime<Utc>,
) -> Option<AccountNotice> {
    let field = change.get("field").and_then(Value::as_str)?;
    let value = change.get("value")?;
    let event = value.get("event").and_then(Value::as_str).unwrap_or("");
    let (healthy, said, template) = match field {
        "account_update" => {
            let (healthy, said) = account_update(event, value)?;
            (healthy, said, None)
        }
        "message_template_status_update" => {
            let healthy = match event {
                "APPROVED" | "REINSTATED" => true,
                "PAUSED" | "DISABLED" | "LOCKED" | "REJECTED" | "ARCHIVED" | "DELETED"
                | "PENDING_DELETION" => false,
                _ => {
                    tracing::info!(provider = provider.as_str(), event = %shared::mask::text(event),
                        "template status that changes nothing for sending");
                    return None;
                }
            };
            let text = |k: &str| {
                value
                    .get(k)
                    .and_then(Value::as_str)
                    .map(str::trim)
                    .filter(|s| !s.is_empty() && s.len() <= 512)
            };
            let template = TemplateRef {
                name: text("message_template_name")?.to_string(),
                language: text("message_template_language")?.to_string(),
            };
            (healthy, format!("template {event}"), Some(template))
        }
        _ => return None,
    };
    let account = entry
        .get("id")
        .and_then(code_string)
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty() && a.len() <= 64)?;
    let at = entry.get("time").and_then(unix_seconds);
    tracing::info!(provider = provider.as_str(), account = %account, healthy,
        event = %shared::mask::text(&said), "account notice");
    Some(AccountNotice {
        schema: STATUS_SCHEMA_VERSION,
        provider: provider.as_str().to_string(),
        account,
        template,
        healthy,
        event: shared::mask::text(&said),
        at: at.unwrap_or(received_at),
        received_at,
        notice: true,
    })
}

/// An `account_update` event: whether the account can send, in words.
fn account_update(event: &str, value: &Value) -> Option<(bool, String)> {
    match event {
        "DISABLED_UPDATE" => {
            let state = value
                .get("ban_info")
                .and_then(|b| b.get("waba_ban_state"))
                .and_then(Value::as_str)?;
            let healthy = match state {
                "DISABLE" => false,
                "REINSTATE" => true,
                // SCHEDULE_FOR_DISABLE: it still sends until the date.
                _ => return None,
            };
            Some((healthy, format!("{event} {state}")))
        }
        // Only a restriction on business-initiated messages stops ours.
        "ACCOUNT_RESTRICTION" => {
            let restricted = value
                .get("restriction_info")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|r| r.get("restriction_type").and_then(Value::as_str))
                .any(|t| t == "RESTRICTED_BIZ_INITIATED_MESSAGING");
            restricted.then(|| (false, format!("{event} RESTRICTED_BIZ_INITIATED_MESSAGING")))
        }
        "ACCOUNT_DELETED" | "PARTNER_REMOVED" => Some((false, event.to_string())),
        _ => None,
    }
}

/// Meta's own limit on `biz_opaque_callback_data`.
const MAX_DELIVERY_KEY: usize = 512;

/// `"1689380458"` or `1689380458`.
fn unix_seconds(v: &Value) -> Option<DateTime<Utc>> {
    let secs = match v {
        Value::String(s) => s.trim().parse::<i64>().ok()?,
        Value::Number(n) => n.as_i64()?,
        _ => return None,
    };
    DateTime::from_timestamp(secs, 0)
}

#[cfg(test)]
mod tests {
    use super::super::fixture;
    use super::*;
    use shared::config::CallbackSettings;

    fn vector() -> (String, String, Vec<u8>) {
        let v: Value =
            serde_json::from_slice(&fixture("meta_wa_signature_test_vector_generated.json"))
                .unwrap();
        let body = fixture(v["body_file"].as_str().unwrap());
        (
            v["app_secret"].as_str().unwrap().to_string(),
            v["expected_header"].as_str().unwrap().to_string(),
            body,
        )
    }

    fn callbacks(secrets: &[&str], token: &str) -> Callbacks {
        Callbacks::new(&CallbackSettings {
            meta_verify_token: token.into(),
            meta_app_secrets: secrets.iter().map(|s| s.to_string()).collect(),
            ..CallbackSettings::default()
        })
        .unwrap()
    }

    #[test]
    fn signature_test_vector_verifies_over_the_raw_bytes() {
        let (secret, header, body) = vector();
        let secrets = vec![secret.clone().into_bytes()];
        assert!(signature_valid(&secrets, Some(&header), &body));
        // Upper-case hex is the same signature.
        let upper = format!("sha256={}", header[7..].to_ascii_uppercase());
        assert!(signature_valid(&secrets, Some(&upper), &body));
        // One byte more (a re-serialised or altered body) does not verify.
        let mut altered = body.clone();
        altered.push(b'\n');
        assert!(!signature_valid(&secrets, Some(&header), &altered));
    }

    #[test]
    fn any_configured_secret_verifies_and_wrong_ones_do_not() {
        let (secret, header, body) = vector();
        let both = vec![b"another-app-secret".to_vec(), secret.into_bytes()];
        assert!(signature_valid(&both, Some(&header), &body));
        let wrong = vec![b"another-app-secret".to_vec()];
        assert!(!signature_valid(&wrong, Some(&header), &body));
        assert!(!signature_valid(&[], Some(&header), &body));
    }

    #[test]
    fn malformed_signature_headers_are_refused() {
        let (secret, header, body) = vector();
        let secrets = vec![secret.into_bytes()];
        for bad in [
            "",
            "sha256=",
            &header[7..],                           // no prefix
            &header.replace("sha256=", "sha1="),    // other algorithm
            &format!("{}0", header),                // odd length
            &header[..header.len() - 2],            // 31 bytes
            &format!("sha256={}", "zz".repeat(32)), // not hex
        ] {
            assert!(!signature_valid(&secrets, Some(bad), &body), "{bad:?}");
        }
        assert!(!signature_valid(&secrets, None, &body));
    }

    #[test]
    fn failed_status_fixture_maps_code_and_title_and_drops_the_phone() {
        let now = Utc::now();
        let p = parse(
            &fixture("meta_wa_status_failed_pywa_fixture.json"),
            Provider::Meta,
            now,
        )
        .unwrap();
        assert_eq!(p.updates.len(), 1);
        let u = &p.updates[0];
        assert_eq!(u.provider, "meta");
        assert_eq!(u.message_id, "wamid.xyzxyz");
        assert_eq!(u.state, DeliveryState::Failed);
        assert_eq!(u.at.timestamp(), 1689380458);
        assert_eq!(u.received_at, now);
        assert_eq!(u.error_code.as_deref(), Some("130472"));
        assert_eq!(
            u.error.as_deref(),
            Some("User's number is part of an experiment")
        );
        let json = String::from_utf8(u.to_json()).unwrap();
        assert!(!json.contains("972987654321"), "{json}");
    }

    #[test]
    fn our_delivery_key_is_carried_and_anything_else_dropped() {
        let body = |data: &str| {
            serde_json::to_vec(&serde_json::json!({"entry": [{"changes": [{"field": "messages",
                "value": {"statuses": [{"id": "wamid.1", "status": "sent", "timestamp": "1698266945",
                    "recipient_id": "79161234567", "biz_opaque_callback_data": data}]}}]}]}))
            .unwrap()
        };
        let key = |data: &str| {
            parse(&body(data), Provider::Meta, Utc::now())
                .unwrap()
                .updates[0]
                .delivery_key
                .clone()
        };
        assert_eq!(
            key("acme:iiko:org:o-1:order_completed/whatsapp").as_deref(),
            Some("acme:iiko:org:o-1:order_completed/whatsapp")
        );
        assert_eq!(key("no channel"), None);
        assert_eq!(key("a\nb/whatsapp"), None);
        assert_eq!(key(&format!("{}/sms", "x".repeat(600))), None);
        let plain = parse(
            &fixture("meta_wa_status_sent_pywa_fixture.json"),
            Provider::Meta,
            Utc::now(),
        )
        .unwrap();
        assert_eq!(plain.updates[0].delivery_key, None);
    }

    #[test]
    fn each_status_fixture_gives_its_state() {
        for (file, state, ts) in [
            (
                "meta_wa_status_sent_pywa_fixture.json",
                DeliveryState::Sent,
                1698266945,
            ),
            (
                "meta_wa_status_delivered_pywa_fixture.json",
                DeliveryState::Delivered,
                -1,
            ),
            (
                "meta_wa_status_read_pywa_fixture.json",
                DeliveryState::Read,
                -1,
            ),
        ] {
            let p = parse(&fixture(file), Provider::Meta, Utc::now()).unwrap();
            assert_eq!(p.updates.len(), 1, "{file}");
            assert_eq!(p.updates[0].state, state, "{file}");
            assert!(p.updates[0].error.is_none(), "{file}");
            if ts > 0 {
                assert_eq!(p.updates[0].at.timestamp(), ts, "{file}");
            }
        }
    }

    #[test]
    fn inbound_messages_and_value_errors_are_counted_not_forwarded() {
        let p = parse(
            &fixture("meta_wa_inbound_text_message_pywa_fixture.json"),
            Provider::Meta,
            Utc::now(),
        )
        .unwrap();
        assert_eq!((p.updates.len(), p.inbound, p.errors), (0, 1, 0));
        assert_eq!(
            p.texts,
            vec![Inbound {
                account: "1122334455667".into(),
                sender: "972987654321".into(),
                text: "Body Text".into(),
                at: DateTime::from_timestamp(1697043223, 0),
            }],
            "the text is kept for the stop words"
        );
        let p = parse(
            &fixture("meta_wa_errors_webhook_syntax_docs.json"),
            Provider::Meta,
            Utc::now(),
        )
        .unwrap();
        assert_eq!((p.updates.len(), p.inbound, p.errors), (0, 0, 1));
    }

    #[test]
    fn every_status_of_every_entry_and_change_is_taken() {
        let body = br#"{"object":"whatsapp_business_account","entry":[
            {"id":"1","changes":[
                {"field":"messages","value":{"statuses":[
                    {"id":"wamid.A","status":"delivered","timestamp":"1700000000","recipient_id":"79161234567"},
                    {"id":"wamid.B","status":"read","timestamp":1700000001}]}},
                {"field":"account_update","value":{"statuses":[{"id":"x","status":"sent"}]}}]},
            {"id":"2","changes":[
                {"field":"messages","value":{"statuses":[
                    {"id":"wamid.C","status":"deleted","timestamp":"1700000002"},
                    {"status":"sent"},
                    {"id":"wamid.D","status":"sent","timestamp":"garbage"}]}}]}]}"#;
        let now = Utc::now();
        let p = parse(body, Provider::Meta, now).unwrap();
        let ids: Vec<_> = p.updates.iter().map(|u| u.message_id.as_str()).collect();
        assert_eq!(ids, ["wamid.A", "wamid.B", "wamid.D"]);
        assert_eq!(p.updates[1].at.timestamp(), 1700000001);
        // An unreadable timestamp falls back to when we received it.
        assert_eq!(p.updates[2].at, now);
        assert_eq!(p.ignored, 2);
    }

    fn change(field: &str, value: Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"object": "whatsapp_business_account", "entry": [
            {"id": "104996122399160", "time": 1733300000, "changes": [{"field": field, "value": value}]}
        ]}))
        .unwrap()
    }

    #[test]
    fn account_updates_that_stop_or_restart_sending_become_notices() {
        let now = Utc::now();
        let cases = [
            (
                serde_json::json!({"event": "DISABLED_UPDATE", "ban_info": {"waba_ban_state": "DISABLE", "waba_ban_date": "2024-12-01"}}),
                Some(false),
            ),
            (
                serde_json::json!({"event": "DISABLED_UPDATE", "ban_info": {"waba_ban_state": "REINSTATE"}}),
                Some(true),
            ),
            (
                serde_json::json!({"event": "DISABLED_UPDATE", "ban_info": {"waba_ban_state": "SCHEDULE_FOR_DISABLE"}}),
                None,
            ),
            (
                serde_json::json!({"event": "ACCOUNT_RESTRICTION", "restriction_info": [{"restriction_type": "RESTRICTED_BIZ_INITIATED_MESSAGING", "expiration": 1733400000}]}),
                Some(false),
            ),
            (
                serde_json::json!({"event": "ACCOUNT_RESTRICTION", "restriction_info": [{"restriction_type": "RESTRICTED_ADD_PHONE_NUMBER_ACTION"}]}),
                None,
            ),
            (serde_json::json!({"event": "ACCOUNT_DELETED"}), Some(false)),
            (serde_json::json!({"event": "PARTNER_REMOVED"}), Some(false)),
            (
                serde_json::json!({"event": "ACCOUNT_VIOLATION", "violation_info": {"violation_type": "SCAM"}}),
                None,
            ),
        ];
        for (value, healthy) in cases {
            let p = parse(
                &change("account_update", value.clone()),
                Provider::Meta,
                now,
            )
            .unwrap();
            assert!(p.updates.is_empty());
            assert_eq!(
                p.notices.iter().map(|n| n.healthy).next(),
                healthy,
                "{value}"
            );
            for n in &p.notices {
                assert_eq!(n.account, "104996122399160");
                assert_eq!(n.provider, "meta");
                assert!(n.template.is_none());
                assert_eq!(n.at.timestamp(), 1733300000);
            }
        }
    }

    #[test]
    fn template_statuses_pause_or_resume_that_template_only() {
        let now = Utc::now();
        let value = |event: &str| {
            serde_json::json!({"event": event, "message_template_id": 123456789,
                "message_template_name": "review_request", "message_template_language": "ru",
                "reason": null, "other_info": {"title": "FIRST_PAUSE", "description": "low quality"}})
        };
        for (event, healthy) in [
            ("PAUSED", Some(false)),
            ("DISABLED", Some(false)),
            ("APPROVED", Some(true)),
            ("REINSTATED", Some(true)),
            ("FLAGGED", None),
            ("PENDING", None),
        ] {
            let p = parse(
                &change("message_template_status_update", value(event)),
                Provider::Meta,
                now,
            )
            .unwrap();
            assert_eq!(
                p.notices.iter().map(|n| n.healthy).next(),
                healthy,
                "{event}"
            );
            if let Some(n) = p.notices.first() {
                let t = n.template.as_ref().unwrap();
                assert_eq!(
                    (t.name.as_str(), t.language.as_str()),
                    ("review_request", "ru")
                );
                assert_eq!(n.event, format!("template {event}"));
            }
        }
        // Without a name there is nothing to pause.
        let p = parse(
            &change(
                "message_template_status_update",
                serde_json::json!({"event": "PAUSED", "message_template_language": "ru"}),
            ),
            Provider::Meta,
            now,
        )
        .unwrap();
        assert!(p.notices.is_empty());
    }

    #[test]
    fn on_premise_top_level_statuses_are_taken() {
        let body = br#"{"statuses":[{"id":"gBEGkYiEB1VXAglK1ZEqA1YKPrU","recipient_id":"16315551234",
            "status":"failed","timestamp":"1518694700","errors":[{"code":470,"title":"Message failed to send because more than 24 hours have passed since the customer last replied to this number"}]}]}"#;
        let p = parse(body, Provider::Dialog360, Utc::now()).unwrap();
        assert_eq!(p.updates.len(), 1);
        assert_eq!(p.updates[0].provider, "dialog360");
        assert_eq!(p.updates[0].state, DeliveryState::Failed);
        assert_eq!(p.updates[0].error_code.as_deref(), Some("470"));
    }

    #[test]
    fn bodies_of_the_wrong_shape_are_malformed_without_echoing_values() {
        for body in [
            &b"{not json"[..],
            b"[1,2]",
            b"{\"entry\": {}}",
            b"{\"entry\": [{\"changes\": 5}]}",
            b"{\"statuses\": \"79161234567\"}",
        ] {
            let err = parse(body, Provider::Meta, Utc::now()).unwrap_err();
            assert!(!err.contains("79161234567"), "{err}");
        }
    }

    #[test]
    fn subscription_needs_mode_token_and_challenge() {
        let cb = callbacks(&["s"], "my_verify_token");
        assert_eq!(
            verify_subscription(
                &cb,
                "hub.mode=subscribe&hub.verify_token=my_verify_token&hub.challenge=1158201444"
            )
            .unwrap(),
            "1158201444"
        );
        for q in [
            "hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=1",
            "hub.mode=unsubscribe&hub.verify_token=my_verify_token&hub.challenge=1",
            "hub.mode=subscribe&hub.verify_token=my_verify_token",
            "hub.mode=subscribe&hub.challenge=1",
            "",
        ] {
            assert!(
                matches!(verify_subscription(&cb, q), Err(CallbackError::Forbidden)),
                "{q}"
            );
        }
        let off = callbacks(&["s"], "");
        assert!(matches!(
            verify_subscription(&off, "hub.mode=subscribe&hub.verify_token=&hub.challenge=1"),
            Err(CallbackError::NotConfigured(Provider::Meta))
        ));
    }
}
