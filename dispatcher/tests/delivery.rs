//! An event becomes exactly one request at the provider, with the right
//! body; duplicates, poison messages and the dev-mode log provider.

mod common;

use std::time::Duration;

use common::{Harness, Options, event, header, meta_ok, requests};
use shared::EventKind;
use wiremock::matchers::{header as has_header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_becomes_one_meta_request_with_the_right_body() {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v21.0/1234567890/messages"))
        .and(has_header("authorization", "Bearer EAAtest-token-not-real"))
        .respond_with(meta_ok("wamid.HBgLNzkxNjEyMzQ1Njc"))
        .mount(&fake)
        .await;
    let h = Harness::start("one-send", &Options::meta(&fake)).await;
    let e = event(
        EventKind::OrderCompleted,
        "org:o-1:Delivered",
        "+79161234567",
    );
    h.publish(&e).await;

    let got = requests(&fake, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    let body: serde_json::Value = got[0].body_json().expect("json body");
    assert_eq!(body["messaging_product"], "whatsapp");
    assert_eq!(body["to"], "+79161234567");
    assert_eq!(body["type"], "text");
    assert_eq!(
        body["text"]["body"],
        "Иван, спасибо за заказ №142! Будем рады вашему отзыву."
    );

    // The done mark carries the provider's message id.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mark = common::redis_get(&common::mark(&h.prefix, "done", &e.dedup_key, "whatsapp"))
        .await
        .expect("done mark");
    assert!(mark.contains("wamid.HBgLNzkxNjEyMzQ1Njc"), "{mark}");
    assert_eq!(h.queue_len(&h.topology.dispatch_queue()).await, 0, "acked");
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_three_times_is_sent_once() {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(meta_ok("wamid.once"))
        .mount(&fake)
        .await;
    let h = Harness::start("dup", &Options::meta(&fake)).await;
    let e = event(
        EventKind::OrderCompleted,
        "org:o-dup:Delivered",
        "+79161234567",
    );
    // The same webhook delivered three times by the source: three events
    // with their own ids and one dedup key.
    for _ in 0..3 {
        let mut copy = e.clone();
        copy.id = uuid::Uuid::now_v7();
        h.publish(&copy).await;
    }
    assert_eq!(requests(&fake, 1, Duration::from_secs(5)).await.len(), 1);
    // A copy that found the lease busy may wait out a lease wait (5 s).
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = reqwest::get(format!("http://{}/metrics", h.running().addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains("vestnik_dispatcher_duplicates_total 2") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(fake.received_requests().await.unwrap().len(), 1);
    assert_eq!(h.queue_len(&h.topology.dispatch_queue()).await, 0);
    assert!(
        metrics.contains("vestnik_dispatcher_duplicates_total 2"),
        "{metrics}"
    );
    assert!(!metrics.contains("9161234567"));
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_ru_gets_the_form_it_documents() {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/sms/send"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "status": "OK", "status_code": 100,
            "sms": {"79161234567": {"status": "OK", "status_code": 100, "sms_id": "000000-10000001"}},
            "balance": 4122.56
        })))
        .mount(&fake)
        .await;
    let mut o = Options::meta(&fake);
    o.channels = r#"["sms"]"#;
    o.providers = format!(
        "[tenants.providers.smsru]\nbase_url = \"{}\"\napi_id = \"test-api-id-0001\"\nsender = \"Vestnik\"\n",
        fake.uri()
    );
    let h = Harness::start("smsru", &o).await;
    let e = event(EventKind::VisitCompleted, "358944:1:1", "8 916 123-45-67");
    h.publish(&e).await;
    let got = requests(&fake, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    let form: std::collections::HashMap<String, String> =
        serde_urlencoded::from_bytes(&got[0].body).unwrap();
    assert_eq!(form["api_id"], "test-api-id-0001");
    assert_eq!(form["to"], "79161234567");
    assert_eq!(form["json"], "1");
    assert_eq!(form["from"], "Vestnik");
    assert!(
        form["msg"].starts_with("Иван, спасибо за визит"),
        "{}",
        form["msg"]
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mark = common::redis_get(&common::mark(&h.prefix, "done", &e.dedup_key, "sms"))
        .await
        .expect("done mark");
    assert!(mark.contains("000000-10000001"));
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_goes_to_the_dlq_at_once_and_does_not_block_the_queue() {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(meta_ok("wamid.after-poison"))
        .mount(&fake)
        .await;
    let h = Harness::start("poison", &Options::meta(&fake)).await;
    common::publish_raw(
        &h.topology,
        b"{ this is not an event",
        lapin::BasicProperties::default(),
    )
    .await;
    let e = event(
        EventKind::OrderCompleted,
        "org:o-after:Delivered",
        "+79161234567",
    );
    h.publish(&e).await;

    let dead = h.dead_letters(1, Duration::from_secs(10)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0, b"{ this is not an event");
    assert_eq!(
        header(&dead[0].1, "x-dlq-reason").as_deref(),
        Some("poison")
    );
    assert_eq!(
        requests(&fake, 1, Duration::from_secs(10)).await.len(),
        1,
        "the next event still went out"
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credentials_messages_go_to_the_log() {
    let fake = MockServer::start().await;
    let mut o = Options::meta(&fake);
    o.providers = String::new();
    let h = Harness::start("log", &o).await;
    let e = event(EventKind::DealWon, "777:12345:142", "+79161234567");
    h.publish(&e).await;
    let key = common::mark(&h.prefix, "done", &e.dedup_key, "whatsapp");
    let mut mark = None;
    for _ in 0..100 {
        mark = common::redis_get(&key).await;
        if mark.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mark = mark.expect("log provider marks the event sent");
    assert!(mark.contains(r#""provider":"log""#), "{mark}");
    assert!(
        fake.received_requests()
            .await
            .unwrap_or_default()
            .is_empty()
    );
    h.finish().await;
}

/// A lease shorter than one attempt (every try's timeout and the waits
/// between tries) is refused at start, naming the tenant and provider.
#[test]
fn a_lease_shorter_than_one_attempt_is_refused() {
    let mut o = Options::meta_at("http://127.0.0.1:9");
    o.providers = o
        .providers
        .replace("timeout_ms = 2000", "timeout_ms = 10000");
    let mut settings = common::settings("lease-check", &o);
    settings.dispatcher.lease_ttl_secs = 20;
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let err = match dispatcher::app::build_worker(&settings, rx) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a 20 s lease passed for 3 tries of 10 s"),
    };
    assert!(
        err.contains("tenant acme") && err.contains("meta") && err.contains("lease_ttl_secs = 20"),
        "{err}"
    );
    settings.dispatcher.lease_ttl_secs = 120;
    let (_tx, rx) = tokio::sync::watch::channel(false);
    assert!(dispatcher::app::build_worker(&settings, rx).is_ok());
}

/// In production a tenant's channel without a provider stops the start
/// (its messages would otherwise be logged as sent, seed 001's dev mode).
#[test]
fn production_refuses_a_channel_without_a_provider() {
    let o = Options::meta_at("http://127.0.0.1:9"); // channels whatsapp, sms; only Meta
    let mut settings = common::settings("production", &o);
    let (_tx, rx) = tokio::sync::watch::channel(false);
    assert!(
        dispatcher::app::build_worker(&settings, rx).is_ok(),
        "dev: sms is skipped"
    );
    settings.production = true;
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let err = match dispatcher::app::build_worker(&settings, rx) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("production started with no SMS provider"),
    };
    assert!(
        err.contains("tenant acme") && err.contains("channel sms"),
        "{err}"
    );
}
