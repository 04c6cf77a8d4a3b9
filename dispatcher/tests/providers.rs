//! Each provider built through `providers::build` from a config section, as
//! the dispatcher builds it, talking HTTP to a wiremock fake: the exact
//! request it sends and how it classifies each kind of answer. The answers
//! are the shapes of providers.md and `shared/fixtures`.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dispatcher::providers::{self, Address, Body, Message, Outcome, Provider};
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use shared::tenant::Channel;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const PHONE: &str = "+79161234567";
const EMAIL: &str = "ivan.petrov@mail.ru";
const CHANNEL_ID: &str = "dffa1c7b-6db8-4b8f-b559-91166aba879e";

fn fixture(name: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Rate-limit buckets of their own in the test Redis (they expire by
/// themselves within the bucket's horizon).
fn limits() -> dispatcher::shared_limit::SharedLimits {
    let settings = common::redis_settings(&common::unique("providers"));
    let store = dispatcher::delivery_state::Store::new(
        &settings,
        Duration::from_secs(120),
        Duration::from_secs(60),
    )
    .expect("store");
    dispatcher::shared_limit::SharedLimits::new(store)
}

fn build(name: &str, section: Value) -> Box<dyn Provider> {
    let mut sections = BTreeMap::new();
    sections.insert(name.to_string(), section);
    let mut built = providers::build(&sections, &reqwest::Client::new(), &limits())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(built.len(), 1);
    built.pop().unwrap()
}

fn build_err(name: &str, section: Value) -> String {
    let mut sections = BTreeMap::new();
    sections.insert(name.to_string(), section);
    match providers::build(&sections, &reqwest::Client::new(), &limits()) {
        Ok(_) => panic!("{name}: built from a bad section"),
        Err(e) => e.to_string(),
    }
}

fn to_phone(channel: Channel, body: Body, key: &str) -> Message {
    Message {
        channel,
        to: Address::Phone(shared::phone::normalise(PHONE).unwrap()),
        body,
        idempotency_key: key.into(),
        hold: None,
    }
}

fn to_email(body: Body, key: &str) -> Message {
    Message {
        channel: Channel::Email,
        to: Address::Email(EMAIL.into()),
        body,
        idempotency_key: key.into(),
        hold: None,
    }
}

fn text(t: &str) -> Body {
    Body::Text(t.into())
}

async fn only_request(fake: &MockServer) -> Request {
    let mut r = fake.received_requests().await.unwrap_or_default();
    assert_eq!(r.len(), 1, "exactly one request");
    r.pop().unwrap()
}

fn header<'a>(r: &'a Request, name: &str) -> Option<&'a str> {
    r.headers.get(name).and_then(|v| v.to_str().ok())
}

fn json_body(r: &Request) -> Value {
    serde_json::from_slice(&r.body).expect("JSON body")
}

/// One provider per answer, so each case starts with a full rate-limit bucket.
async fn answer(
    name: &str,
    section: impl Fn(&MockServer) -> Value,
    route: &str,
    response: ResponseTemplate,
    message: &Message,
) -> (Outcome, usize) {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(route))
        .respond_with(response)
        .mount(&fake)
        .await;
    let p = build(name, section(&fake));
    let o = p.send(message).await;
    let n = fake.received_requests().await.unwrap_or_default().len();
    (o, n)
}

fn assert_masked(o: &Outcome) {
    let r = o.reason();
    assert!(!r.contains("9161234567"), "phone in reason: {r}");
    assert!(!r.contains("ivan.petrov@"), "e-mail in reason: {r}");
}

// ---------------------------------------------------------------- Wazzup24

fn wazzup(fake: &MockServer) -> Value {
    json!({
        "base_url": fake.uri(),
        "api_key": "wz-test-key",
        "channel_id": CHANNEL_ID,
    })
}

#[tokio::test]
async fn wazzup_sends_digits_and_the_crm_message_id() {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v3/message"))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_string(fixture("wazzup_send_success_201_docs.json")),
        )
        .mount(&fake)
        .await;
    let p = build("wazzup", wazzup(&fake));
    assert_eq!((p.name(), p.channel()), ("wazzup", Channel::Whatsapp));
    let o = p
        .send(&to_phone(
            Channel::Whatsapp,
            text("Заказ готов"),
            "org:o-1:Delivered/whatsapp",
        ))
        .await;
    assert_eq!(
        o,
        Outcome::Sent {
            message_id: "f66c53a6-957a-46b2-b41b-5a2ef4844bcb".into()
        }
    );
    let r = only_request(&fake).await;
    assert_eq!(r.url.path(), "/v3/message");
    assert_eq!(header(&r, "authorization"), Some("Bearer wz-test-key"));
    assert_eq!(
        json_body(&r),
        json!({
            "channelId": CHANNEL_ID,
            "chatType": "whatsapp",
            "chatId": "79161234567",
            "text": "Заказ готов",
            "crmMessageId": "org:o-1:Delivered/whatsapp",
            "clearUnanswered": false,
        })
    );
}

#[tokio::test]
async fn wazzup_answers_are_classified() {
    let m = to_phone(Channel::Whatsapp, text("hi"), "evt-7/whatsapp");
    let err = |code: &str| {
        ResponseTemplate::new(400).set_body_json(json!({
            "status": 400, "requestId": "r", "error": code,
            "description": "chat 79161234567 says no", "data": {"chatId": "79161234567"}
        }))
    };
    let cases: Vec<(ResponseTemplate, Outcome)> = vec![
        (
            ResponseTemplate::new(400).set_body_string(fixture(
                "wazzup_send_error_repeated_crm_message_id_docs.json",
            )),
            Outcome::Sent {
                message_id: "wazzup-repeated:evt-7/whatsapp".into(),
            },
        ),
        (
            ResponseTemplate::new(429).insert_header("Retry-After", "2"),
            Outcome::Transient {
                reason: "wazzup HTTP 429:".into(),
                retry_after: Some(Duration::from_secs(2)),
            },
        ),
    ];
    for (response, expected) in cases {
        let (o, n) = answer("wazzup", wazzup, "/v3/message", response, &m).await;
        assert_eq!(o, expected);
        assert_eq!(n, 1);
    }
    let classes = [
        (
            ResponseTemplate::new(400)
                .set_body_string(fixture("wazzup_send_error_wrong_transport_docs.json")),
            "recipient",
        ),
        (
            ResponseTemplate::new(400)
                .set_body_string(fixture("wazzup_send_error_invalid_message_data_docs.json")),
            "recipient",
        ),
        (err("BAD_CONTACT"), "recipient"),
        (err("badContact"), "recipient"),
        (err("MESSAGE_CHANNEL_UNAVAILABLE"), "transient"),
        (err("CHANNEL_NO_MONEY"), "account"),
        (err("CHANNEL_BLOCKED"), "account"),
        (err("BALANCE_IS_EMPTY"), "account"),
        (err("channelNotFound"), "config"),
        (err("NEVER_HEARD_OF_IT"), "config"),
        (ResponseTemplate::new(500), "transient"),
        (ResponseTemplate::new(401), "account"),
        (ResponseTemplate::new(403), "account"),
    ];
    for (response, class) in classes {
        let (o, n) = answer("wazzup", wazzup, "/v3/message", response, &m).await;
        assert_eq!(o.class(), class, "{o:?}");
        assert_eq!(n, 1);
        assert_masked(&o);
    }
}

#[tokio::test]
async fn wazzup_timeout_is_uncertain_and_repeatable_only_within_the_crm_message_id_window() {
    let section = |fake: &MockServer| {
        let mut s = wazzup(fake);
        s["timeout_ms"] = json!(200);
        s
    };
    let (o, _) = answer(
        "wazzup",
        section,
        "/v3/message",
        ResponseTemplate::new(201)
            .set_body_json(json!({"messageId": "late"}))
            .set_delay(Duration::from_secs(2)),
        &to_phone(Channel::Whatsapp, text("hi"), "k"),
    )
    .await;
    // The request went out: whether it arrived is not known. The worker
    // repeats it with the same crmMessageId within Wazzup's 60 s only.
    assert_eq!(o.class(), "uncertain", "{o:?}");
    let p = build("wazzup", section(&MockServer::start().await));
    let window = p.resend_window().expect("wazzup dedups by crmMessageId");
    assert!(window < Duration::from_secs(60), "{window:?}");
}

#[tokio::test]
async fn wazzup_refuses_what_it_cannot_send_without_a_request() {
    let fake = MockServer::start().await;
    let p = build("wazzup", wazzup(&fake));
    let template = Body::Template {
        name: "order_ready".into(),
        language: "ru".into(),
        params: vec!["1".into()],
        header: None,
        buttons: vec![],
        wazzup_template_id: None,
    };
    let o = p.send(&to_phone(Channel::Whatsapp, template, "k")).await;
    assert_eq!(
        o,
        Outcome::Config {
            reason: "template order_ready: Wazzup sends WABA templates by its own id; set wazzup_template_id".into()
        }
    );
    assert_eq!(p.send(&to_email(text("hi"), "k")).await.class(), "config");
    assert!(
        fake.received_requests()
            .await
            .unwrap_or_default()
            .is_empty()
    );
}

#[tokio::test]
async fn wazzup_for_route_uses_the_webhook_account() {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v3/message"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"messageId": "m-9"})))
        .mount(&fake)
        .await;
    let p = providers::wazzup::Wazzup::for_route(
        &fake.uri(),
        "route-key",
        CHANNEL_ID,
        "whatsgroup",
        reqwest::Client::new(),
    );
    let o = p
        .send(&to_phone(Channel::Whatsapp, text("hi"), "k-route"))
        .await;
    assert_eq!(
        o,
        Outcome::Sent {
            message_id: "m-9".into()
        }
    );
    let r = only_request(&fake).await;
    assert_eq!(header(&r, "authorization"), Some("Bearer route-key"));
    let b = json_body(&r);
    assert_eq!(b["chatType"], "whatsgroup");
    assert_eq!(b["channelId"], CHANNEL_ID);
    assert_eq!(b["crmMessageId"], "k-route");
}

#[test]
fn wazzup_section_is_checked() {
    let e = build_err(
        "wazzup",
        json!({"api_key": "k", "channel_id": "not-a-guid"}),
    );
    assert!(e.contains("channel_id"), "{e}");
    let e = build_err(
        "wazzup",
        json!({"api_key": "k", "channel_id": CHANNEL_ID, "chanel_type": "x"}),
    );
    assert!(e.contains("chanel_type"), "{e}");
}

// ---------------------------------------------------------------- 360dialog

fn dialog360(fake: &MockServer) -> Value {
    json!({"base_url": fake.uri(), "api_key": "d360-test-key"})
}

#[tokio::test]
async fn dialog360_sends_the_cloud_api_body_with_its_key() {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/messages"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_string(fixture("meta_wa_send_success_docs_barokatu.json")),
        )
        .mount(&fake)
        .await;
    let p = build("dialog360", dialog360(&fake));
    assert_eq!((p.name(), p.channel()), ("dialog360", Channel::Whatsapp));
    let template = Body::Template {
        name: "order_ready".into(),
        language: "ru".into(),
        params: vec!["42".into()],
        header: None,
        buttons: vec![],
        wazzup_template_id: None,
    };
    let o = p.send(&to_phone(Channel::Whatsapp, template, "k")).await;
    assert_eq!(
        o,
        Outcome::Sent {
            message_id: "wamid.gBGGSFcCNEOPAgkO_KJ55r4w_ww".into()
        }
    );
    let r = only_request(&fake).await;
    assert_eq!(r.url.path(), "/messages", "no phone number id in the path");
    assert_eq!(header(&r, "d360-api-key"), Some("d360-test-key"));
    assert_eq!(header(&r, "authorization"), None);
    assert_eq!(
        json_body(&r),
        json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": "+79161234567",
            "type": "template",
            "template": {
                "name": "order_ready",
                "language": {"code": "ru"},
                "components": [{"type": "body", "parameters": [{"type": "text", "text": "42"}]}]
            },
            "biz_opaque_callback_data": "k"
        })
    );
}

#[tokio::test]
async fn dialog360_text_body() {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"messages": [{"id": "wamid.T"}]})),
        )
        .mount(&fake)
        .await;
    let p = build("dialog360", dialog360(&fake));
    let o = p
        .send(&to_phone(Channel::Whatsapp, text("Готово"), "k"))
        .await;
    assert_eq!(o.class(), "sent");
    assert_eq!(
        json_body(&only_request(&fake).await),
        json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": "+79161234567",
            "type": "text",
            "text": {"preview_url": false, "body": "Готово"},
            "biz_opaque_callback_data": "k"
        })
    );
}

#[tokio::test]
async fn dialog360_answers_are_classified() {
    let m = to_phone(Channel::Whatsapp, text("hi"), "k");
    let meta = |code: i64| {
        ResponseTemplate::new(400).set_body_json(json!({"error": {
            "message": "(#131026) Message undeliverable to +79161234567", "type": "OAuthException",
            "code": code, "error_data": {"details": "d"}, "fbtrace_id": "x"}}))
    };
    let classes = [
        (meta(131026), "recipient"),
        (meta(130429), "transient"),
        (meta(132001), "config"),
        (
            ResponseTemplate::new(400)
                .set_body_string(fixture("meta_wa_send_error_131009_real_log.json")),
            "config",
        ),
        (
            ResponseTemplate::new(400).set_body_json(json!({"meta": {
                "success": false, "http_code": 400,
                "developer_message": "You have exceeded the endpoint rate limit"}})),
            "transient",
        ),
        (
            ResponseTemplate::new(400)
                .set_body_string("WhatsApp for Business API has been disabled"),
            "config",
        ),
        (
            ResponseTemplate::new(401).set_body_string("Invalid api_key"),
            "config",
        ),
        (ResponseTemplate::new(403), "config"),
        (ResponseTemplate::new(500), "transient"),
        (
            ResponseTemplate::new(502).set_body_string("WhatsApp API not available"),
            "transient",
        ),
    ];
    for (response, class) in classes {
        let (o, n) = answer("dialog360", dialog360, "/messages", response, &m).await;
        assert_eq!(o.class(), class, "{o:?}");
        assert_eq!(n, 1);
        assert_masked(&o);
    }
}

// ---------------------------------------------------------------- Exolve

fn exolve(fake: &MockServer) -> Value {
    json!({"base_url": fake.uri(), "api_key": "ex-test-key", "sender": "+7 999 000-11-22"})
}

#[tokio::test]
async fn exolve_number_is_the_sender_and_destination_the_recipient() {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/messaging/v1/SendSMS"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"message_id": "539681701637458390"})),
        )
        .mount(&fake)
        .await;
    let p = build("exolve", exolve(&fake));
    assert_eq!((p.name(), p.channel()), ("exolve", Channel::Sms));
    let o = p.send(&to_phone(Channel::Sms, text("Код 1234"), "k")).await;
    assert_eq!(
        o,
        Outcome::Sent {
            message_id: "539681701637458390".into()
        }
    );
    let r = only_request(&fake).await;
    assert_eq!(r.url.path(), "/messaging/v1/SendSMS");
    assert_eq!(header(&r, "authorization"), Some("Bearer ex-test-key"));
    assert_eq!(
        json_body(&r),
        json!({"number": "79990001122", "destination": "79161234567", "text": "Код 1234"})
    );
}

#[tokio::test]
async fn exolve_answers_are_classified() {
    let m = to_phone(Channel::Sms, text("hi"), "k");
    let (o, _) = answer(
        "exolve",
        exolve,
        "/messaging/v1/SendSMS",
        ResponseTemplate::new(429).insert_header("Retry-After", "3"),
        &m,
    )
    .await;
    assert_eq!(
        o,
        Outcome::Transient {
            reason: "exolve HTTP 429:".into(),
            retry_after: Some(Duration::from_secs(3))
        }
    );
    let classes = [
        (ResponseTemplate::new(500), "transient"),
        (ResponseTemplate::new(503), "transient"),
        (
            ResponseTemplate::new(400)
                .set_body_json(json!({"error": "bad destination 79161234567"})),
            "config",
        ),
        (ResponseTemplate::new(401), "account"),
        (ResponseTemplate::new(403), "account"),
        (
            ResponseTemplate::new(200).set_body_string("{}"),
            "uncertain",
        ),
    ];
    for (response, class) in classes {
        let (o, n) = answer("exolve", exolve, "/messaging/v1/SendSMS", response, &m).await;
        assert_eq!(o.class(), class, "{o:?}");
        assert_eq!(n, 1);
        assert_masked(&o);
    }
}

#[tokio::test]
async fn exolve_timeout_after_sending_is_uncertain() {
    let section = |fake: &MockServer| {
        let mut s = exolve(fake);
        s["timeout_ms"] = json!(200);
        s
    };
    let (o, _) = answer(
        "exolve",
        section,
        "/messaging/v1/SendSMS",
        ResponseTemplate::new(200)
            .set_body_json(json!({"message_id": "late"}))
            .set_delay(Duration::from_secs(2)),
        &to_phone(Channel::Sms, text("hi"), "k"),
    )
    .await;
    assert_eq!(o.class(), "uncertain", "{o:?}");
}

#[test]
fn exolve_needs_a_sender() {
    let e = build_err("exolve", json!({"api_key": "k"}));
    assert!(e.contains("sender"), "{e}");
    let e = build_err("exolve", json!({"api_key": "k", "sender": " "}));
    assert!(e.contains("sender"), "{e}");
}

// ---------------------------------------------------------------- Exolve WhatsApp (unverified API)

fn exolve_wa(fake: &MockServer) -> Value {
    json!({"base_url": fake.uri(), "api_key": "exwa-test-key", "sender_id": "+7 999 000-11-22"})
}

#[tokio::test]
async fn exolve_whatsapp_sends_text_and_templates_to_their_paths() {
    let fake = MockServer::start().await;
    for (route, id) in [
        ("/messaging/v1/whatsapp/send", "wa-text-1"),
        ("/messaging/v1/whatsapp/template", "wa-tpl-1"),
    ] {
        Mock::given(method("POST"))
            .and(path(route))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"message_id": id})))
            .mount(&fake)
            .await;
    }
    let p = build("exolve_whatsapp", exolve_wa(&fake));
    assert_eq!(
        (p.name(), p.channel()),
        ("exolve_whatsapp", Channel::Whatsapp)
    );
    let o = p
        .send(&to_phone(
            Channel::Whatsapp,
            text("Спасибо за заказ!"),
            "k1",
        ))
        .await;
    assert_eq!(
        o,
        Outcome::Sent {
            message_id: "wa-text-1".into()
        }
    );
    let template = Body::Template {
        name: "review_request".into(),
        language: "ru".into(),
        params: vec!["Иван".into(), "https://r.example/1".into()],
        header: None,
        buttons: vec![],
        wazzup_template_id: None,
    };
    let o = p.send(&to_phone(Channel::Whatsapp, template, "k2")).await;
    assert_eq!(
        o,
        Outcome::Sent {
            message_id: "wa-tpl-1".into()
        }
    );

    let got = fake.received_requests().await.unwrap_or_default();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].url.path(), "/messaging/v1/whatsapp/send");
    assert_eq!(
        header(&got[0], "authorization"),
        Some("Bearer exwa-test-key")
    );
    assert_eq!(
        json_body(&got[0]),
        json!({"sender_id": "79990001122", "destination": "79161234567", "text": "Спасибо за заказ!"})
    );
    assert_eq!(got[1].url.path(), "/messaging/v1/whatsapp/template");
    assert_eq!(
        json_body(&got[1]),
        json!({
            "sender_id": "79990001122",
            "destination": "79161234567",
            "template_name": "review_request",
            "language": "ru",
            "params": ["Иван", "https://r.example/1"],
        })
    );
}

#[tokio::test]
async fn exolve_whatsapp_paths_are_configuration_and_answers_classified_by_status() {
    let section = |fake: &MockServer| {
        let mut s = exolve_wa(fake);
        s["send_path"] = json!("/wa/v2/messages");
        s
    };
    let m = to_phone(Channel::Whatsapp, text("hi"), "k");
    let classes = [
        (
            ResponseTemplate::new(200).set_body_json(json!({"message_id": 77})),
            "sent",
        ),
        (
            ResponseTemplate::new(200).set_body_string("{}"),
            "uncertain",
        ),
        (ResponseTemplate::new(429), "transient"),
        (ResponseTemplate::new(502), "transient"),
        (
            ResponseTemplate::new(400)
                .set_body_json(json!({"error": "bad destination 79161234567"})),
            "config",
        ),
        (ResponseTemplate::new(401), "account"),
    ];
    for (response, class) in classes {
        let (o, n) = answer("exolve_whatsapp", section, "/wa/v2/messages", response, &m).await;
        assert_eq!(o.class(), class, "{o:?}");
        assert_eq!(n, 1, "one request to the configured path");
        assert_masked(&o);
    }
    // An e-mail address cannot go by WhatsApp: no request at all.
    let fake = MockServer::start().await;
    let p = build("exolve_whatsapp", exolve_wa(&fake));
    let o = p.send(&to_email(text("hi"), "k")).await;
    assert_eq!(o.class(), "config", "{o:?}");
    assert!(
        fake.received_requests()
            .await
            .unwrap_or_default()
            .is_empty()
    );
}

// ---------------------------------------------------------------- Resend

fn resend(fake: &MockServer) -> Value {
    json!({
        "base_url": fake.uri(),
        "api_key": "re_test_key",
        "from": "Brand <noreply@brand.example>",
        "default_subject": "Ваш заказ",
    })
}

#[tokio::test]
async fn resend_sends_the_e_mail_with_its_idempotency_key() {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/emails"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"id": "49a3999c-0ce1-4ea6-ab68-afcd6dc2e794"})),
        )
        .mount(&fake)
        .await;
    let p = build("resend", resend(&fake));
    assert_eq!((p.name(), p.channel()), ("resend", Channel::Email));
    let body = Body::Email {
        subject: "Заказ готов".into(),
        html: "<p>Заказ <b>42</b> готов</p>".into(),
        text: "Заказ 42 готов".into(),
    };
    let o = p.send(&to_email(body, "org:o-42:Delivered/email")).await;
    assert_eq!(
        o,
        Outcome::Sent {
            message_id: "49a3999c-0ce1-4ea6-ab68-afcd6dc2e794".into()
        }
    );
    let r = only_request(&fake).await;
    assert_eq!(r.url.path(), "/emails");
    assert_eq!(header(&r, "authorization"), Some("Bearer re_test_key"));
    assert_eq!(
        header(&r, "idempotency-key"),
        Some("org:o-42:Delivered/email")
    );
    assert_eq!(
        json_body(&r),
        json!({
            "from": "Brand <noreply@brand.example>",
            "to": [EMAIL],
            "subject": "Заказ готов",
            "html": "<p>Заказ <b>42</b> готов</p>",
            "text": "Заказ 42 готов",
        })
    );
}

#[tokio::test]
async fn resend_plain_text_gets_the_default_subject_and_escaped_html() {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "e-1"})))
        .mount(&fake)
        .await;
    let p = build("resend", resend(&fake));
    let long_key = format!("org:{}/email", "x".repeat(300));
    let o = p
        .send(&to_email(
            text("Скидка <10%> & бонус\nдо пятницы"),
            &long_key,
        ))
        .await;
    assert_eq!(o.class(), "sent");
    let r = only_request(&fake).await;
    let b = json_body(&r);
    assert_eq!(b["subject"], "Ваш заказ");
    assert_eq!(b["html"], "Скидка &lt;10%&gt; &amp; бонус<br>\nдо пятницы");
    assert_eq!(b["text"], "Скидка <10%> & бонус\nдо пятницы");
    // Over 256 characters: the key's SHA-256 in hex.
    let expected: String = Sha256::digest(long_key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(header(&r, "idempotency-key"), Some(expected.as_str()));
}

#[tokio::test]
async fn resend_answers_are_classified() {
    let m = to_email(text("hi"), "k");
    let err = |status: u16, name: &str| {
        ResponseTemplate::new(status).set_body_json(json!({
            "statusCode": status, "name": name,
            "message": "about ivan.petrov@mail.ru"
        }))
    };
    let (o, _) = answer(
        "resend",
        resend,
        "/emails",
        err(429, "rate_limit_exceeded").insert_header("retry-after", "1"),
        &m,
    )
    .await;
    match o {
        Outcome::Transient { retry_after, .. } => {
            assert_eq!(retry_after, Some(Duration::from_secs(1)))
        }
        o => panic!("{o:?}"),
    }
    let classes = [
        (err(429, "daily_quota_exceeded"), "account"),
        (err(429, "monthly_quota_exceeded"), "account"),
        (err(409, "concurrent_idempotent_requests"), "transient"),
        (err(409, "invalid_idempotent_request"), "config"),
        (err(422, "invalid_to_address"), "recipient"),
        (err(422, "invalid_from_address"), "config"),
        (err(400, "validation_error"), "config"),
        (err(401, "missing_api_key"), "account"),
        (err(403, "validation_error"), "account"),
        (err(500, "internal_server_error"), "transient"),
        (ResponseTemplate::new(502), "transient"),
    ];
    for (response, class) in classes {
        let (o, n) = answer("resend", resend, "/emails", response, &m).await;
        assert_eq!(o.class(), class, "{o:?}");
        assert_eq!(n, 1);
        assert_masked(&o);
    }
}

#[tokio::test]
async fn resend_timeout_is_transient_thanks_to_the_idempotency_key() {
    let section = |fake: &MockServer| {
        let mut s = resend(fake);
        s["timeout_ms"] = json!(200);
        s
    };
    let (o, _) = answer(
        "resend",
        section,
        "/emails",
        ResponseTemplate::new(200)
            .set_body_json(json!({"id": "late"}))
            .set_delay(Duration::from_secs(2)),
        &to_email(text("hi"), "k"),
    )
    .await;
    assert_eq!(o.class(), "transient", "{o:?}");
}

#[tokio::test]
async fn resend_without_default_subject_refuses_plain_text() {
    let fake = MockServer::start().await;
    let mut s = resend(&fake);
    s.as_object_mut().unwrap().remove("default_subject");
    let p = build("resend", s);
    let o = p.send(&to_email(text("hi"), "k")).await;
    assert_eq!(o.class(), "config");
    assert!(o.reason().contains("default_subject"), "{o:?}");
    assert!(
        fake.received_requests()
            .await
            .unwrap_or_default()
            .is_empty()
    );
}

// ---------------------------------------------------------------- build

#[test]
fn unknown_providers_are_named_with_the_known_ones() {
    let e = build_err("twilio", json!({}));
    for known in ["dialog360", "exolve", "meta", "resend", "smsru", "wazzup"] {
        assert!(e.contains(known), "{e}");
    }
}

#[test]
fn a_bad_rate_limit_stops_the_build() {
    let e = build_err(
        "resend",
        json!({"api_key": "re_x", "from": "a@b.c", "rate_limit": {"per_second": 0}}),
    );
    assert!(e.contains("rate_limit"), "{e}");
    let e = build_err(
        "resend",
        json!({"api_key": "re_x", "from": "a@b.c", "rate_limit": {"persecond": 5}}),
    );
    assert!(e.contains("persecond"), "{e}");
}

// ---------------------------------------------------------------- rate limits

async fn counting_fake(route: &str, response: ResponseTemplate) -> MockServer {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(route))
        .respond_with(response)
        .mount(&fake)
        .await;
    fake
}

/// 15 concurrent sends through a provider limited to 5/s (burst 5): 5 at
/// once, then one every 200 ms, so about 2 s, and nobody is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_second_limit_spreads_concurrent_sends() {
    let fake = counting_fake(
        "/v3/message",
        ResponseTemplate::new(201).set_body_json(json!({"messageId": "m"})),
    )
    .await;
    let mut s = wazzup(&fake);
    s["rate_limit"] = json!({"per_second": 5});
    let p = build("wazzup", s);
    let messages: Vec<Message> = (0..15)
        .map(|i| to_phone(Channel::Whatsapp, text("hi"), &format!("k-{i}")))
        .collect();
    let started = Instant::now();
    let outcomes = futures_util::future::join_all(messages.iter().map(|m| p.send(m))).await;
    let took = started.elapsed();
    assert!(outcomes.iter().all(|o| o.class() == "sent"), "{outcomes:?}");
    assert_eq!(fake.received_requests().await.unwrap().len(), 15);
    assert!(took >= Duration::from_millis(1800), "too fast: {took:?}");
    assert!(took < Duration::from_secs(10), "far too slow: {took:?}");
}

/// The same sends without a limit: what made the test above slow is the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_false_turns_it_off() {
    let fake = counting_fake(
        "/emails",
        ResponseTemplate::new(200).set_body_json(json!({"id": "e"})),
    )
    .await;
    let mut s = resend(&fake);
    s["rate_limit"] = json!(false);
    let p = build("resend", s);
    let started = Instant::now();
    for i in 0..15 {
        let o = p.send(&to_email(text("hi"), &format!("k-{i}"))).await;
        assert_eq!(o.class(), "sent");
    }
    // Resend's default (2/s, burst 1) would need 7 s for these.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_default_limit_is_two_per_second() {
    let fake = counting_fake(
        "/emails",
        ResponseTemplate::new(200).set_body_json(json!({"id": "e"})),
    )
    .await;
    let p = build("resend", resend(&fake));
    let started = Instant::now();
    for i in 0..4 {
        assert_eq!(
            p.send(&to_email(text("hi"), &format!("k-{i}")))
                .await
                .class(),
            "sent"
        );
    }
    // 1 at once, then 3 × 500 ms.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1400), "{took:?}");
    assert!(took < Duration::from_secs(6), "{took:?}");
}

fn meta_section(fake: &MockServer, rate_limit: Value) -> Value {
    json!({
        "base_url": fake.uri(),
        "phone_number_id": "1234567890",
        "access_token": "EAAtest",
        "rate_limit": rate_limit,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_holds_back_a_second_message_to_the_same_recipient() {
    let fake = counting_fake(
        "/1234567890/messages",
        ResponseTemplate::new(200).set_body_json(json!({"messages": [{"id": "wamid.x"}]})),
    )
    .await;
    let p = build(
        "meta",
        meta_section(
            &fake,
            json!({"per_recipient_every_secs": 1, "per_recipient_burst": 1}),
        ),
    );
    let mut other = to_phone(Channel::Whatsapp, text("hi"), "k2");
    other.to = Address::Phone(shared::phone::normalise("+79161234568").unwrap());
    let started = Instant::now();
    assert_eq!(
        p.send(&to_phone(Channel::Whatsapp, text("hi"), "k1"))
            .await
            .class(),
        "sent"
    );
    assert_eq!(p.send(&other).await.class(), "sent");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "another recipient is not held back"
    );
    assert_eq!(
        p.send(&to_phone(Channel::Whatsapp, text("hi"), "k3"))
            .await
            .class(),
        "sent"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the same recipient waited: {:?}",
        started.elapsed()
    );
    assert_eq!(fake.received_requests().await.unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_longer_than_max_wait_is_answered_throttled_without_a_request() {
    let fake = counting_fake(
        "/1234567890/messages",
        ResponseTemplate::new(200).set_body_json(json!({"messages": [{"id": "wamid.x"}]})),
    )
    .await;
    // Meta's default pair period (6 s) with a small burst and a short max_wait.
    let p = build(
        "meta",
        meta_section(&fake, json!({"per_recipient_burst": 3, "max_wait_ms": 100})),
    );
    for i in 0..3 {
        let o = p
            .send(&to_phone(Channel::Whatsapp, text("hi"), &format!("k{i}")))
            .await;
        assert_eq!(o.class(), "sent", "within the burst: {o:?}");
    }
    let o = p.send(&to_phone(Channel::Whatsapp, text("hi"), "k3")).await;
    match &o {
        Outcome::Throttled { wait, .. } => assert!(*wait > Duration::from_secs(5), "{wait:?}"),
        o => panic!("{o:?}"),
    }
    assert_masked(&o);
    assert_eq!(
        fake.received_requests().await.unwrap().len(),
        3,
        "the 4th was not sent"
    );
}

/// Records what the rate limiter did with the worker's sending mark.
struct Recorder {
    seen: Arc<Mutex<Vec<&'static str>>>,
    resume: Result<(), String>,
}

impl providers::Hold for Recorder {
    fn lift(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move { self.seen.lock().unwrap().push("lift") })
    }

    fn resume(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.seen.lock().unwrap().push("resume");
            self.resume.clone()
        })
    }
}

/// A Meta provider behind the given rate limit, a fake that accepts, and a
/// message whose sending mark is recorded.
async fn limited_meta(
    limit: Value,
    resume: Result<(), String>,
) -> (
    MockServer,
    Box<dyn Provider>,
    Message,
    Arc<Mutex<Vec<&'static str>>>,
) {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"messages": [{"id": "wamid.x"}]})),
        )
        .mount(&fake)
        .await;
    let p = build("meta", meta_section(&fake, limit));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut m = to_phone(Channel::Whatsapp, Body::Text("hi".into()), "k");
    m.hold = Some(Arc::new(Recorder {
        seen: seen.clone(),
        resume,
    }));
    (fake, p, m, seen)
}

/// The hot path: a send with a permit at hand leaves the mark the claim set
/// alone (no round trip) and is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_with_a_permit_at_hand_leaves_the_sending_mark_alone() {
    let (fake, p, m, seen) = limited_meta(json!({"per_second": 1000, "burst": 10}), Ok(())).await;
    assert_eq!(p.send(&m).await.class(), "sent");
    assert!(seen.lock().unwrap().is_empty());
    assert_eq!(fake.received_requests().await.unwrap().len(), 1);
}

/// A send the limiter holds back lifts the mark while it waits (a worker
/// dying there has written nothing) and sets it again before writing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_back_send_lifts_the_sending_mark_while_it_waits() {
    let (fake, p, m, seen) = limited_meta(json!({"per_second": 5, "burst": 1}), Ok(())).await;
    assert_eq!(p.send(&m).await.class(), "sent");
    assert!(seen.lock().unwrap().is_empty(), "the first had its permit");
    assert_eq!(p.send(&m).await.class(), "sent");
    assert_eq!(*seen.lock().unwrap(), ["lift", "resume"]);
    assert_eq!(fake.received_requests().await.unwrap().len(), 2);
}

/// When the mark cannot be set again after the wait (the lease ran out and
/// another worker may be sending), nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_whose_lease_ran_out_in_the_wait_writes_nothing() {
    let (fake, p, m, seen) = limited_meta(
        json!({"per_second": 5, "burst": 1}),
        Err("lease lost".into()),
    )
    .await;
    assert_eq!(p.send(&m).await.class(), "sent");
    let o = p.send(&m).await;
    assert_eq!(o.class(), "transient", "{o:?}");
    assert_eq!(o.reason(), "not sent: lease lost");
    assert_eq!(*seen.lock().unwrap(), ["lift", "resume"]);
    assert_eq!(fake.received_requests().await.unwrap().len(), 1);
}

/// A send the limiter refuses outright (the wait is over its budget) does
/// not wait, so the mark is not touched; the worker releases it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_send_leaves_the_sending_mark_to_the_worker() {
    let (fake, p, m, seen) = limited_meta(
        json!({"per_second": 0.01, "burst": 1, "max_wait_ms": 0}),
        Ok(()),
    )
    .await;
    assert_eq!(p.send(&m).await.class(), "sent");
    let held = p.send(&m).await;
    assert_eq!(held.class(), "throttled", "{held:?}");
    assert!(seen.lock().unwrap().is_empty());
    assert_eq!(fake.received_requests().await.unwrap().len(), 1);
}
