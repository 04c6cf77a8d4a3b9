//! Channels working together: fallback from WhatsApp to SMS, delivery-status
//! callbacks driving the second attempt and the fallback, and the CRM phone
//! look-up for hooks without a phone.

mod common;

use std::time::{Duration, Instant};

use common::{Harness, Options, event, header, meta_ok, requests};
use shared::EventKind;
use shared::event::Lookup;
use shared::status::DeliveryState;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

fn meta_and_sms(fake: &MockServer) -> Options {
    let mut o = Options::meta(fake);
    o.providers.push_str(&format!(
        "\n[tenants.providers.smsru]\nbase_url = \"{}\"\napi_id = \"test-api-id-0001\"\n",
        fake.uri()
    ));
    o
}

fn sms_ok() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(serde_json::json!({
        "status": "OK", "status_code": 100,
        "sms": {"79161234567": {"status": "OK", "status_code": 100, "sms_id": "000000-20000001"}}
    }))
}

fn at(fake: &[Request], p: &str) -> usize {
    fake.iter().filter(|r| r.url.path().ends_with(p)).count()
}

async fn publish_status(h: &Harness, provider: &str, message_id: &str, state: DeliveryState) {
    common::publish_status(h, &common::status(provider, message_id, state)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_whatsapp_falls_back_to_sms_exactly_once_each() {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v21.0/1234567890/messages"))
        .respond_with(ResponseTemplate::new(400).set_body_json(serde_json::json!({
            "error": {"message": "(#131026) Message undeliverable", "type": "OAuthException", "code": 131026, "fbtrace_id": "x"}
        })))
        .mount(&fake)
        .await;
    Mock::given(method("POST"))
        .and(path("/sms/send"))
        .respond_with(sms_ok())
        .mount(&fake)
        .await;
    let h = Harness::start("fallback", &meta_and_sms(&fake)).await;
    let e = event(
        EventKind::OrderCompleted,
        "org:o-fb:Delivered",
        "+79161234567",
    );
    h.publish(&e).await;

    let got = requests(&fake, 2, Duration::from_secs(10)).await;
    assert_eq!(
        (at(&got, "/messages"), at(&got, "/sms/send")),
        (1, 1),
        "one WhatsApp try, one SMS"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sms_mark = common::redis_get(&common::mark(&h.prefix, "done", &e.dedup_key, "sms"))
        .await
        .expect("sms sent");
    assert!(sms_mark.contains("000000-20000001"));
    assert!(
        common::redis_get(&common::mark(&h.prefix, "done", &e.dedup_key, "whatsapp"))
            .await
            .is_none()
    );

    // The same webhook again: the SMS is not sent a second time.
    let mut again = e.clone();
    again.id = uuid::Uuid::now_v7();
    h.publish(&again).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = fake.received_requests().await.unwrap_or_default();
    assert_eq!(at(&got, "/sms/send"), 1, "SMS exactly once");
    assert!(
        h.dead_letters(1, Duration::from_millis(200))
            .await
            .is_empty()
    );
    let metrics = reqwest::get(format!("http://{}/metrics", h.running().addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"vestnik_dispatcher_fallbacks_total{from_channel="whatsapp"}"#),
        "{metrics}"
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_callback_gives_a_second_attempt_then_falls_back() {
    second_attempt_then_fallback(false).await;
}

/// With a seal key, what Redis keeps about a sent message (for its
/// callbacks) holds no personal data in clear, and the ladder still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_record_still_gives_the_second_attempt_and_the_fallback() {
    second_attempt_then_fallback(true).await;
}

async fn second_attempt_then_fallback(sealed: bool) {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v21.0/1234567890/messages"))
        .respond_with(meta_ok("wamid.first"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&fake)
        .await;
    Mock::given(method("POST"))
        .and(path("/v21.0/1234567890/messages"))
        .respond_with(meta_ok("wamid.second"))
        .with_priority(2)
        .mount(&fake)
        .await;
    Mock::given(method("POST"))
        .and(path("/sms/send"))
        .respond_with(sms_ok())
        .mount(&fake)
        .await;
    let mut o = meta_and_sms(&fake);
    if sealed {
        o.extra =
            "[security]\nseal_key = \"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\"\n".into();
    }
    let h = Harness::start("callback", &o).await;
    let e = event(
        EventKind::OrderCompleted,
        "org:o-cb:Delivered",
        "+79161234567",
    );
    h.publish(&e).await;
    assert_eq!(requests(&fake, 1, Duration::from_secs(10)).await.len(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let record = common::redis_get(&format!("{}:msg:meta:wamid.first", h.prefix))
        .await
        .expect("the sent message is remembered for its callbacks");
    assert_eq!(
        record.contains("9161234567"),
        !sealed,
        "the phone is at rest in clear only without a seal key: {record}"
    );

    // Meta reports the accepted message failed: the one second attempt, after the delay.
    publish_status(&h, "meta", "wamid.first", DeliveryState::Sent).await;
    publish_status(&h, "meta", "wamid.first", DeliveryState::Failed).await;
    let failed_at = Instant::now();
    // The same failure reported twice must not schedule two second attempts.
    publish_status(&h, "meta", "wamid.first", DeliveryState::Failed).await;
    let got = requests(&fake, 2, Duration::from_secs(15)).await;
    assert_eq!(at(&got, "/messages"), 2, "second WhatsApp attempt");
    assert!(
        failed_at.elapsed() >= Duration::from_millis(1500),
        "after the configured delay"
    );

    // It fails too: next channel.
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish_status(&h, "meta", "wamid.second", DeliveryState::Failed).await;
    let got = requests(&fake, 3, Duration::from_secs(10)).await;
    assert_eq!((at(&got, "/messages"), at(&got, "/sms/send")), (2, 1));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = fake.received_requests().await.unwrap_or_default();
    assert_eq!(
        (at(&got, "/messages"), at(&got, "/sms/send")),
        (2, 1),
        "nothing more: one second attempt, one SMS"
    );

    // A late 'delivered' for the first message changes nothing and is recorded.
    publish_status(&h, "meta", "wamid.first", DeliveryState::Delivered).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fake.received_requests().await.unwrap_or_default().len(), 3);
    assert!(
        h.dead_letters(1, Duration::from_millis(200))
            .await
            .is_empty()
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amocrm_hook_without_phone_is_looked_up() {
    let fake = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v4/leads/23802129"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "id": 23802129, "status_id": 142,
            "_embedded": {"contacts": [{"id": 901, "is_main": false}, {"id": 555, "is_main": true}]}
        })))
        .mount(&fake)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v4/contacts/555"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "id": 555, "name": "Анна",
            "custom_fields_values": [
                {"field_id": 1, "field_name": "Email", "field_code": "EMAIL", "values": [{"value": "a@example.com"}]},
                {"field_id": 2, "field_name": "Телефон", "field_code": "PHONE", "values": [{"value": "+7 495 123-45-67", "enum_code": "WORK"}, {"value": "8 (916) 765-43-21", "enum_code": "MOB"}]}
            ]
        })))
        .mount(&fake)
        .await;
    Mock::given(method("POST"))
        .and(path("/v21.0/1234567890/messages"))
        .respond_with(meta_ok("wamid.lookup"))
        .mount(&fake)
        .await;
    let mut o = Options::meta(&fake);
    o.providers.push_str(&format!(
        "\n[tenants.lookup.amocrm]\nbase_url = \"{}\"\naccess_token = \"amo-long-lived-token\"\n",
        fake.uri()
    ));
    let h = Harness::start("lookup", &o).await;
    let mut e = event(EventKind::DealWon, "29013640:23802129:142", "");
    assert!(e.recipient.phone.is_none());
    e.lookup = Some(Lookup::Amocrm {
        account_id: Some("29013640".into()),
        subdomain: Some("drvorobjev".into()),
        lead_id: "23802129".into(),
    });
    h.publish(&e).await;

    let got = requests(&fake, 3, Duration::from_secs(10)).await;
    let send = got
        .iter()
        .find(|r| r.url.path().ends_with("/messages"))
        .expect("a message was sent");
    let body: serde_json::Value = send.body_json().unwrap();
    assert_eq!(
        body["to"], "+79167654321",
        "the main contact's mobile, not the landline"
    );
    assert!(got.iter().any(|r| {
        r.headers
            .get("authorization")
            .is_some_and(|v| v == "Bearer amo-long-lived-token")
    }));

    // A lead with no phone anywhere is a recorded permanent outcome.
    let mut none = event(EventKind::DealWon, "29013640:404:142", "");
    none.lookup = Some(Lookup::Amocrm {
        account_id: None,
        subdomain: Some("drvorobjev".into()),
        lead_id: "404".into(),
    });
    h.publish(&none).await;
    let dead = h.dead_letters(1, Duration::from_secs(10)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        header(&dead[0].1, "x-dlq-reason").as_deref(),
        Some("recipient")
    );
    assert!(
        header(&dead[0].1, "x-dlq-error")
            .unwrap()
            .contains("no phone")
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yclients_record_without_phone_is_looked_up() {
    let fake = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/record/358944/234961815"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "success": true,
            "data": {"id": 234961815, "client": {"id": 86694283, "name": "Олеся", "phone": "+79999856814"}}
        })))
        .mount(&fake)
        .await;
    Mock::given(method("POST"))
        .and(path("/v21.0/1234567890/messages"))
        .respond_with(meta_ok("wamid.yc"))
        .mount(&fake)
        .await;
    let mut o = Options::meta(&fake);
    o.providers.push_str(&format!(
        "\n[tenants.lookup.yclients]\nbase_url = \"{}\"\npartner_token = \"partner-token\"\nuser_token = \"user-token\"\n",
        fake.uri()
    ));
    let h = Harness::start("lookup-yc", &o).await;
    let mut e = event(EventKind::VisitCompleted, "358944:234961815:1", "");
    e.lookup = Some(Lookup::Yclients {
        company_id: "358944".into(),
        record_id: "234961815".into(),
    });
    h.publish(&e).await;
    let got = requests(&fake, 2, Duration::from_secs(10)).await;
    let send = got
        .iter()
        .find(|r| r.url.path().ends_with("/messages"))
        .expect("sent");
    assert_eq!(
        send.body_json::<serde_json::Value>().unwrap()["to"],
        "+79999856814"
    );
    let lookup = got
        .iter()
        .find(|r| r.url.path().starts_with("/api/v1/record"))
        .expect("looked up");
    // One header value with a comma, as YCLIENTS documents it.
    assert_eq!(
        lookup
            .headers
            .get("authorization")
            .map(|v| v.to_str().unwrap_or_default()),
        Some("Bearer partner-token, User user-token")
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn booking_url_routing_sends_through_its_wazzup_account() {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v3/message"))
        .respond_with(ResponseTemplate::new(201).set_body_json(serde_json::json!({"messageId": "f2b5a3c4-0000-4000-8000-000000000001", "chatId": "79161234567"})))
        .mount(&fake)
        .await;
    let mut o = Options::meta(&fake);
    o.providers = String::new(); // the tenant has no account of its own: the URL brings one
    o.dispatcher_extra = format!("wazzup_base_url = \"{}\"", fake.uri());
    let h = Harness::start("route", &o).await;
    let mut e = event(
        EventKind::BookingTimeChanged,
        "c-1001:UpdateCaseTime:2026-12-01T10:00:00+03:00",
        "+79161234567",
    );
    e.source = shared::SourceId::Booking;
    e.params.starts_at = chrono::DateTime::parse_from_rfc3339("2026-12-01T10:00:00+03:00").ok();
    e.format = Some(shared::event::FormatOptions {
        time_zone: "Asia/Yekaterinburg".into(),
        date_locale: shared::event::DateLocale::EnUs,
        time_zone_name: "YEKT".into(),
        ..Default::default()
    });
    e.route = Some(shared::event::Route::Wazzup {
        api_key: "f8f1955587ac6d7894cee95f92dcaca4".into(),
        channel_id: "3349fab8-b01b-4232-b9cb-a15ec3acc053".into(),
        chat_type: "whatsapp".into(),
    });
    h.publish(&e).await;
    let got = requests(&fake, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(
        r.headers
            .get("authorization")
            .map(|v| v.to_str().unwrap_or_default()),
        Some("Bearer f8f1955587ac6d7894cee95f92dcaca4")
    );
    let body: serde_json::Value = r.body_json().unwrap();
    assert_eq!(body["channelId"], "3349fab8-b01b-4232-b9cb-a15ec3acc053");
    assert_eq!(body["chatType"], "whatsapp");
    assert_eq!(body["chatId"], "79161234567");
    assert_eq!(body["crmMessageId"], format!("{}/whatsapp", e.dedup_key));
    let text = body["text"].as_str().unwrap();
    assert!(
        text.contains("12:00 PM") && text.contains("YEKT") && text.contains("December 1, 2026"),
        "{text}"
    );
    h.finish().await;
}

/// Each provider of issue 4 through the whole worker (RabbitMQ, Redis,
/// idempotency, templates): the right request at its fake, and the event
/// marked sent with the provider's own message id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_provider_sends_through_the_worker() {
    struct Case {
        name: &'static str,
        channel: &'static str,
        section: &'static str,
        path: &'static str,
        answer: ResponseTemplate,
        message_id: &'static str,
    }
    let cases = [
        Case {
            name: "dialog360",
            channel: "whatsapp",
            section: "api_key = \"d360-key-0000000001\"",
            path: "/messages",
            answer: ResponseTemplate::new(200).set_body_json(serde_json::json!({"messaging_product": "whatsapp", "messages": [{"id": "wamid.d360"}]})),
            message_id: "wamid.d360",
        },
        Case {
            name: "wazzup",
            channel: "whatsapp",
            section: "api_key = \"wazzup-key-00000001\"\nchannel_id = \"3349fab8-b01b-4232-b9cb-a15ec3acc053\"",
            path: "/v3/message",
            answer: ResponseTemplate::new(201).set_body_json(serde_json::json!({"messageId": "wz-0001", "chatId": "79161234567"})),
            message_id: "wz-0001",
        },
        Case {
            name: "exolve",
            channel: "sms",
            section: "api_key = \"exolve-key-0000001\"\nsender = \"79990000000\"",
            path: "/messaging/v1/SendSMS",
            answer: ResponseTemplate::new(200).set_body_json(serde_json::json!({"message_id": "ex-0001"})),
            message_id: "ex-0001",
        },
        Case {
            name: "resend",
            channel: "email",
            section: "api_key = \"re_test_key_000001\"\nfrom = \"Demo <noreply@example.com>\"",
            path: "/emails",
            answer: ResponseTemplate::new(200).set_body_json(serde_json::json!({"id": "rs-0001"})),
            message_id: "rs-0001",
        },
    ];
    for case in cases {
        let fake = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(case.path))
            .respond_with(case.answer)
            .mount(&fake)
            .await;
        let mut o = Options::meta(&fake);
        o.channels = match case.channel {
            "whatsapp" => r#"["whatsapp"]"#,
            "sms" => r#"["sms"]"#,
            _ => r#"["email"]"#,
        };
        o.providers = format!(
            "[tenants.providers.{}]\nbase_url = \"{}\"\n{}\nrate_limit = false\n",
            case.name,
            fake.uri(),
            case.section
        );
        let h = Harness::start(&format!("prov-{}", case.name), &o).await;
        let mut e = event(
            EventKind::OrderCompleted,
            &format!("org:o-{}:Delivered", case.name),
            "+79161234567",
        );
        e.recipient.email = Some("ivan@example.com".into());
        h.publish(&e).await;
        let got = requests(&fake, 1, Duration::from_secs(10)).await;
        assert_eq!(got.len(), 1, "{}: one request", case.name);
        let body: serde_json::Value = got[0].body_json().unwrap_or_default();
        match case.name {
            "dialog360" => {
                assert_eq!(
                    got[0]
                        .headers
                        .get("d360-api-key")
                        .map(|v| v.to_str().unwrap_or_default()),
                    Some("d360-key-0000000001")
                );
                assert_eq!(body["to"], "+79161234567");
            }
            "wazzup" => {
                assert_eq!(body["chatId"], "79161234567");
                assert_eq!(
                    body["crmMessageId"],
                    format!("{}/whatsapp", e.dedup_key),
                    "Wazzup's own idempotency as a second guard"
                );
            }
            "exolve" => {
                assert_eq!(body["number"], "79990000000", "number is the sender");
                assert_eq!(
                    body["destination"], "79161234567",
                    "destination is the recipient"
                );
            }
            _ => {
                assert_eq!(body["to"][0], "ivan@example.com");
                assert!(
                    got[0].headers.get("idempotency-key").is_some(),
                    "Resend's Idempotency-Key as a second guard"
                );
                assert!(
                    body["html"].as_str().unwrap_or_default().contains("142"),
                    "{body}"
                );
            }
        }
        let mut mark = None;
        for _ in 0..50 {
            mark = common::redis_get(&common::mark(&h.prefix, "done", &e.dedup_key, case.channel))
                .await;
            if mark.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mark = mark.unwrap_or_else(|| panic!("{}: not marked sent", case.name));
        assert!(mark.contains(case.message_id), "{}: {mark}", case.name);
        h.finish().await;
    }
}

/// The AmoCRM token goes only to the tenant's own account: a hook naming
/// another subdomain is dead-lettered as `config`, and no request leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amocrm_hook_from_another_account_gets_no_look_up() {
    let fake = MockServer::start().await;
    let mut o = Options::meta(&fake);
    o.providers.push_str(&format!(
        "\n[tenants.lookup.amocrm]\nbase_url = \"{}\"\nsubdomain = \"drvorobjev\"\naccess_token = \"amo-long-lived-token\"\n",
        fake.uri()
    ));
    let h = Harness::start("lookup-foreign", &o).await;
    let mut e = event(EventKind::DealWon, "1:23802129:142", "");
    e.lookup = Some(Lookup::Amocrm {
        account_id: Some("1".into()),
        subdomain: Some("attacker".into()),
        lead_id: "23802129".into(),
    });
    h.publish(&e).await;
    let dead = h.dead_letters(1, Duration::from_secs(10)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        header(&dead[0].1, "x-dlq-reason").as_deref(),
        Some("config")
    );
    let reason = header(&dead[0].1, "x-dlq-error").unwrap();
    assert!(
        reason.contains("attacker") && reason.contains("drvorobjev"),
        "{reason}"
    );
    assert!(
        fake.received_requests().await.unwrap().is_empty(),
        "the token went nowhere"
    );
    h.finish().await;
}
