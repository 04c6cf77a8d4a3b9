//! Providers' delivery-status callbacks against a real ingest and the real
//! RabbitMQ: what is authenticated lands on `<prefix>.statuses` (read back
//! from the broker), what is not leaves nothing queued or spooled.

mod common;

use std::time::Duration;

use common::{AMQP, Harness, Proxy, fixture, status_depth, take_statuses};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use shared::status::DeliveryState;

const SECOND_APP_SECRET: &str = "first-configured-app-secret";
const VERIFY_TOKEN: &str = "my_verify_token";
const D360_SECRET: &str = "dialog360-secret-0001";
const WAZZUP_KEY: &str = "wazzup-crm-key-000001";

/// The generated test vector: app secret, expected header and body bytes.
struct Vector {
    secret: String,
    header: String,
    body: Vec<u8>,
}

fn vector() -> Vector {
    let v: serde_json::Value =
        serde_json::from_slice(&fixture("meta_wa_signature_test_vector_generated.json")).unwrap();
    Vector {
        secret: v["app_secret"].as_str().unwrap().into(),
        header: v["expected_header"].as_str().unwrap().into(),
        body: fixture(v["body_file"].as_str().unwrap()),
    }
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Two Meta app secrets: ours first, the test vector's second.
fn callbacks_toml() -> String {
    format!(
        r#"
[callbacks]
meta_verify_token = "{VERIFY_TOKEN}"
meta_app_secrets = ["{SECOND_APP_SECRET}", "{}"]
dialog360_header = "X-My-Secret"
dialog360_secrets = ["{D360_SECRET}"]
wazzup_keys = ["{WAZZUP_KEY}"]
"#,
        vector().secret
    )
}

async fn start(test: &str) -> Harness {
    Harness::start_with(test, AMQP, &callbacks_toml()).await
}

async fn post(
    h: &Harness,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let mut r = h
        .http
        .post(h.url(path))
        .header("content-type", "application/json");
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.body(body).send().await.expect("request");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

async fn post_meta(
    h: &Harness,
    signature: Option<&str>,
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let headers: Vec<(&str, &str)> = signature
        .map(|s| vec![("x-hub-signature-256", s)])
        .unwrap_or_default();
    post(h, "/api/callback/meta", &headers, body).await
}

/// Nothing on the statuses queue and nothing in the spool: the broker
/// confirms before ingest answers, so "not there now" means never sent.
async fn assert_nothing_queued(h: &Harness) {
    assert_eq!(
        status_depth(&h.topology).await,
        0,
        "statuses queue is empty"
    );
    assert_eq!(h.running().spool.pending_records(), 0, "spool is empty");
}

async fn metrics(h: &Harness) -> String {
    h.http
        .get(h.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn counter(metrics: &str, provider: &str, outcome: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("vestnik_ingest_callbacks_total{"))
        .filter(|l| l.contains(&format!("provider=\"{provider}\"")))
        .filter(|l| l.contains(&format!("outcome=\"{outcome}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_signed_failed_status_is_on_the_statuses_queue() {
    let h = start("cb-meta-vector").await;
    let v = vector();
    let (status, body) = post_meta(&h, Some(&v.header), v.body.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["queued"], 1, "{body}");

    let updates = take_statuses(&h.topology, 1, Duration::from_secs(2)).await;
    assert_eq!(updates.len(), 1);
    let u = &updates[0];
    assert_eq!(u.provider, "meta");
    assert_eq!(u.message_id, "wamid.xyzxyz");
    assert_eq!(u.state, DeliveryState::Failed);
    assert_eq!(u.at.timestamp(), 1689380458);
    assert_eq!(u.error_code.as_deref(), Some("130472"));
    assert_eq!(
        u.error.as_deref(),
        Some("User's number is part of an experiment")
    );
    let json = String::from_utf8(u.to_json()).unwrap();
    assert!(!json.contains("972987654321"), "no recipient phone: {json}");
    assert_eq!(h.running().spool.pending_records(), 0);
    assert_eq!(counter(&metrics(&h).await, "meta", "queued"), 1);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_wrong_or_missing_signature_is_401_and_queues_nothing() {
    let h = start("cb-meta-badsig").await;
    let v = vector();
    let forged = sign("not-a-configured-secret", &v.body);
    let mut altered = v.body.clone();
    altered.extend_from_slice(b" ");
    for (sig, body) in [
        (Some(forged.as_str()), v.body.clone()),
        (None, v.body.clone()),
        (Some("sha256=zz"), v.body.clone()),
        // The right signature over other bytes.
        (Some(v.header.as_str()), altered),
    ] {
        let (status, answer) = post_meta(&h, sig, body).await;
        assert_eq!(status, 401, "{sig:?}: {answer}");
        assert_eq!(answer["error"], "unauthorized", "{answer}");
    }
    assert_nothing_queued(&h).await;
    let m = metrics(&h).await;
    assert_eq!(counter(&m, "meta", "unauthorized"), 4);
    assert!(!m.contains(&v.secret) && !m.contains(SECOND_APP_SECRET));
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_each_status_fixture_gives_its_state_with_either_app_secret() {
    let h = start("cb-meta-states").await;
    let v = vector();
    let cases = [
        (
            "meta_wa_status_sent_pywa_fixture.json",
            DeliveryState::Sent,
            SECOND_APP_SECRET,
        ),
        (
            "meta_wa_status_delivered_pywa_fixture.json",
            DeliveryState::Delivered,
            v.secret.as_str(),
        ),
        (
            "meta_wa_status_read_pywa_fixture.json",
            DeliveryState::Read,
            SECOND_APP_SECRET,
        ),
    ];
    for (file, _, secret) in &cases {
        let body = fixture(file);
        let (status, answer) = post_meta(&h, Some(&sign(secret, &body)), body).await;
        assert_eq!(status, 200, "{file}: {answer}");
    }
    let updates = take_statuses(&h.topology, 3, Duration::from_secs(2)).await;
    let states: Vec<_> = updates.iter().map(|u| u.state).collect();
    let expected: Vec<_> = cases.iter().map(|c| c.1).collect();
    assert_eq!(states, expected);
    assert!(
        updates
            .iter()
            .all(|u| u.provider == "meta" && u.error.is_none())
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_inbound_message_is_200_and_queues_nothing() {
    let h = start("cb-meta-inbound").await;
    let body = fixture("meta_wa_inbound_text_message_pywa_fixture.json");
    let (status, answer) = post_meta(&h, Some(&sign(SECOND_APP_SECRET, &body)), body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["queued"], 0);
    assert_eq!(answer["inbound_ignored"], 1);
    assert_nothing_queued(&h).await;
    let m = metrics(&h).await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("vestnik_ingest_callback_items_total{")
                && l.contains("item=\"inbound_message\"")
                && l.ends_with(" 1")),
        "{m}"
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_malformed_json_with_a_valid_signature_is_400() {
    let h = start("cb-meta-malformed").await;
    let body = br#"{"entry": [{"changes": [{"value": {"statuses": [{"id": "wamid.1""#.to_vec();
    let (status, answer) = post_meta(&h, Some(&sign(SECOND_APP_SECRET, &body)), body).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"], "malformed_body");
    assert_nothing_queued(&h).await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_get_verification_echoes_the_challenge_only_for_our_token() {
    let h = start("cb-meta-verify").await;
    let get = |q: String| {
        let url = h.url(&format!("/api/callback/meta?{q}"));
        let http = h.http.clone();
        async move {
            let r = http.get(url).send().await.unwrap();
            let ct = r
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            (r.status().as_u16(), ct, r.text().await.unwrap())
        }
    };
    let (status, ct, body) = get(format!(
        "hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=1158201444"
    ))
    .await;
    assert_eq!((status, body.as_str()), (200, "1158201444"));
    assert!(ct.starts_with("text/plain"), "{ct}");

    let (status, _, body) =
        get("hub.mode=subscribe&hub.verify_token=wrong_token&hub.challenge=1158201444".into())
            .await;
    assert_eq!(status, 403, "{body}");
    assert!(!body.contains("1158201444"), "{body}");
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialog360_meta_body_with_the_secret_header_is_queued() {
    let h = start("cb-d360").await;
    let body = fixture("meta_wa_status_failed_pywa_fixture.json");
    let (status, answer) = post(
        &h,
        "/api/callback/dialog360",
        &[("X-My-Secret", D360_SECRET)],
        body.clone(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = post(
        &h,
        &format!("/api/callback/dialog360?key={D360_SECRET}"),
        &[],
        fixture("meta_wa_status_read_pywa_fixture.json"),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let updates = take_statuses(&h.topology, 2, Duration::from_secs(2)).await;
    assert_eq!(updates.len(), 2);
    assert!(updates.iter().all(|u| u.provider == "dialog360"));
    assert_eq!(updates[0].state, DeliveryState::Failed);
    assert_eq!(updates[0].error_code.as_deref(), Some("130472"));
    assert_eq!(updates[1].state, DeliveryState::Read);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialog360_wrong_or_missing_secret_is_401() {
    let h = start("cb-d360-bad").await;
    let body = fixture("meta_wa_status_failed_pywa_fixture.json");
    for (path, headers) in [
        (
            "/api/callback/dialog360",
            vec![("X-My-Secret", "dialog360-secret-0002")],
        ),
        ("/api/callback/dialog360", vec![]),
        // The secret in a header other than the configured one.
        (
            "/api/callback/dialog360",
            vec![("X-Vestnik-Secret", D360_SECRET)],
        ),
        ("/api/callback/dialog360?key=wrong-key-00000000", vec![]),
        // A Meta signature is no 360dialog credential.
        (
            "/api/callback/dialog360",
            vec![("x-hub-signature-256", vector().header.leak() as &str)],
        ),
    ] {
        let (status, answer) = post(&h, path, &headers, body.clone()).await;
        assert_eq!(status, 401, "{path} {headers:?}: {answer}");
        assert_eq!(answer["error"], "unauthorized");
    }
    assert_nothing_queued(&h).await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wazzup_ping_is_200_and_queues_nothing_but_needs_the_key() {
    let h = start("cb-wazzup-ping").await;
    let ping = fixture("wazzup_webhook_test_ping_docs.json");
    let (status, answer) = post(
        &h,
        &format!("/api/callback/wazzup?key={WAZZUP_KEY}"),
        &[],
        ping.clone(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "ping");
    let (status, _) = post(&h, "/api/callback/wazzup", &[], ping).await;
    assert_eq!(status, 401);
    let (status, answer) = post(
        &h,
        "/api/callback/wazzup",
        &[("authorization", &format!("Bearer {WAZZUP_KEY}"))],
        fixture("wazzup_webhook_inbound_sticker_docs.json"),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["inbound_ignored"], 1);
    assert_nothing_queued(&h).await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wazzup_delivered_status_is_queued_and_a_bad_key_is_401() {
    let h = start("cb-wazzup").await;
    let body = fixture("wazzup_webhook_status_delivered_docs.json");
    for (path, headers) in [
        (
            "/api/callback/wazzup?key=wazzup-crm-key-000002".to_string(),
            vec![],
        ),
        (
            "/api/callback/wazzup".to_string(),
            vec![("authorization", "Bearer wazzup-crm-key-000002")],
        ),
    ] {
        let (status, answer) = post(&h, &path, &headers, body.clone()).await;
        assert_eq!(status, 401, "{path}: {answer}");
    }
    assert_nothing_queued(&h).await;

    let bearer = format!("Bearer {WAZZUP_KEY}");
    let (status, answer) = post(
        &h,
        "/api/callback/wazzup",
        &[("authorization", &bearer)],
        body,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let updates = take_statuses(&h.topology, 1, Duration::from_secs(2)).await;
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].provider, "wazzup");
    assert_eq!(
        updates[0].message_id,
        "be3dc577-60c4-4fc8-83a5-8c358e0bfe15"
    );
    assert_eq!(updates[0].state, DeliveryState::Delivered);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfigured_callbacks_answer_503_not_configured() {
    let h = Harness::start("cb-off").await;
    let v = vector();
    let (status, answer) = post_meta(&h, Some(&v.header), v.body.clone()).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"], "callback_not_configured");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("callbacks.meta_app_secrets")
    );
    for path in [
        "/api/callback/dialog360",
        "/api/callback/wazzup?key=anything-at-all-123",
    ] {
        let (status, answer) = post(&h, path, &[], v.body.clone()).await;
        assert_eq!(status, 503, "{path}: {answer}");
        assert_eq!(answer["error"], "callback_not_configured");
    }
    let r = h
        .http
        .get(h.url("/api/callback/meta?hub.mode=subscribe&hub.verify_token=&hub.challenge=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let (status, _) = post(&h, "/api/callback/other", &[], b"{}".to_vec()).await;
    assert_eq!(status, 404);
    assert_nothing_queued(&h).await;
    h.finish().await;
}

/// With the broker unreachable a status goes to the spool (200 to the
/// provider) and, once the broker is back, to the statuses queue, not to
/// the dispatch queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_spools_the_status_and_drains_it_to_the_statuses_queue() {
    let proxy = Proxy::start(true).await;
    let h = Harness::start_with("cb-spool", &proxy.url(), &callbacks_toml()).await;
    proxy.cut().await;
    for _ in 0..100 {
        if !h.running().broker.is_up() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!h.running().broker.is_up());

    let v = vector();
    let (status, answer) = post_meta(&h, Some(&v.header), v.body.clone()).await;
    assert_eq!(status, 200, "{answer}");
    let bearer = format!("Bearer {WAZZUP_KEY}");
    let (status, answer) = post(
        &h,
        "/api/callback/wazzup",
        &[("authorization", &bearer)],
        fixture("wazzup_webhook_status_delivered_docs.json"),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(h.running().spool.pending_records(), 2);
    assert_eq!(counter(&metrics(&h).await, "meta", "spooled"), 1);

    proxy.restore();
    let updates = take_statuses(&h.topology, 2, Duration::from_secs(20)).await;
    let got: Vec<_> = updates
        .iter()
        .map(|u| (u.provider.as_str(), u.state))
        .collect();
    assert_eq!(
        got,
        [
            ("meta", DeliveryState::Failed),
            ("wazzup", DeliveryState::Delivered)
        ]
    );
    assert_eq!(updates[0].error_code.as_deref(), Some("130472"));
    for _ in 0..100 {
        if h.running().spool.pending_records() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(h.running().spool.pending_records(), 0);
    assert_eq!(
        common::queue_depth(&h.topology).await,
        0,
        "nothing went to the dispatch queue"
    );
    h.finish().await;
}
