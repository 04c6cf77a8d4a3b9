//! The whole pipeline with the real binaries: `ingest` and `dispatcher`
//! (built by `cargo build --workspace --bins`, which deploy/test.sh runs
//! first) against the real RabbitMQ and Redis, with providers faked over
//! HTTP. Driven only through public interfaces: webhooks in, provider
//! requests out.

mod common;

use std::process::{Child, Command};
use std::time::Duration;

use common::*;

use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_source_reaches_the_provider_once() {
    let fake = MockServer::start().await;
    meta_accepts(&fake, "wamid.e2e").await;
    let stack = Stack::start("sources", &fake).await;

    let webhooks: [(&str, &str, &str, &str); 5] = [
        (
            "iiko",
            "application/json",
            r#"[{"eventType":"DeliveryOrderUpdate","eventTime":"2026-11-24 18:00:00.000","organizationId":"org-1","eventInfo":{"id":"o-1","creationStatus":"Success","order":{"id":"o-1","status":"Delivered","number":142,"phone":"+79160000001","customer":{"name":"Иван"}}}}]"#,
            "+79160000001",
        ),
        (
            "rkeeper",
            "application/json",
            r#"{"order":{"id":"rk-1","status":"Выполнен","customer":{"phone":"8 916 000-00-02","name":"Анна"}}}"#,
            "+79160000002",
        ),
        (
            "yclients",
            "application/json",
            r#"{"company_id":1,"resource":"record","resource_id":7,"status":"update","data":{"id":7,"company_id":1,"attendance":1,"client":{"name":"Олеся","phone":"+79160000003"}}}"#,
            "+79160000003",
        ),
        (
            "amocrm",
            "application/x-www-form-urlencoded",
            "leads%5Bstatus%5D%5B0%5D%5Bid%5D=5&leads%5Bstatus%5D%5B0%5D%5Bstatus_id%5D=142&leads%5Bstatus%5D%5B0%5D%5Bmain_contact%5D%5Bphone%5D=79160000004&account%5Bid%5D=9",
            "+79160000004",
        ),
        (
            "booking",
            "application/json",
            r#"{"event":"CheckIn","case":{"id":"c-1","start":"2026-12-01T10:00:00+03:00","name":"Стрижка"},"client":{"name":"Пётр","phone":"+79160000005"}}"#,
            "+79160000005",
        ),
    ];
    for (source, ct, body, _) in &webhooks {
        let (status, resp) = stack.post(source, ct, body).await;
        assert_eq!(status, 202, "{source}: {resp}");
    }
    // The iiko webhook again (the POS retried): still one message.
    let (status, _) = stack
        .post(webhooks[0].0, webhooks[0].1, webhooks[0].2)
        .await;
    assert_eq!(status, 202);

    let got = wait_requests(&fake, 5).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let bodies = meta_bodies(&fake.received_requests().await.unwrap_or_default());
    let mut to: Vec<String> = bodies
        .iter()
        .map(|b| b["to"].as_str().unwrap_or_default().to_string())
        .collect();
    to.sort();
    let mut expected: Vec<String> = webhooks.iter().map(|w| w.3.to_string()).collect();
    expected.sort();
    assert_eq!(
        to,
        expected,
        "one WhatsApp message per source, the duplicate not sent ({} requests)",
        got.len()
    );

    let logs = stack.stop().await;
    // No full phone number or key in any log line.
    for secret in expected
        .iter()
        .map(|p| p.trim_start_matches('+').to_string())
        .chain([KEY.to_string(), "EAA-e2e-token".into()])
    {
        assert!(!logs.contains(&secret), "{secret} appears in the logs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsapp_unreachable_goes_by_sms_through_the_whole_stack() {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v21.0/1234567890/messages"))
        .respond_with(ResponseTemplate::new(400).set_body_json(serde_json::json!({
            "error": {"message": "(#131026) Message undeliverable", "code": 131026, "type": "OAuthException"}
        })))
        .mount(&fake)
        .await;
    Mock::given(method("POST"))
        .and(path("/sms/send"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "status": "OK", "status_code": 100,
            "sms": {"79160000009": {"status": "OK", "status_code": 100, "sms_id": "e2e-sms-1"}}
        })))
        .mount(&fake)
        .await;
    let stack = Stack::start("fallback", &fake).await;
    let (status, resp) = stack
        .post(
            "rkeeper",
            "application/json",
            r#"{"order":{"id":"rk-9","status":"Доставлен","client":{"phone":"+79160000009"}}}"#,
        )
        .await;
    assert_eq!(status, 202, "{resp}");
    let got = wait_requests(&fake, 2).await;
    let sms: Vec<&Request> = got.iter().filter(|r| r.url.path() == "/sms/send").collect();
    assert_eq!(sms.len(), 1);
    let form: std::collections::HashMap<String, String> =
        serde_urlencoded::from_bytes(&sms[0].body).unwrap();
    assert_eq!(form["to"], "79160000009");
    stack.stop().await;
}

fn meta_status_body(wamid: &str, status: &str) -> String {
    let mut st = serde_json::json!({"id": wamid, "status": status, "timestamp": "1764007200", "recipient_id": "79160000007"});
    if status == "failed" {
        st["errors"] = serde_json::json!([{"code": 131026, "title": "Message undeliverable", "message": "Message undeliverable"}]);
    }
    serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550000000", "phone_number_id": "1234567890"},
            "statuses": [st]
        }}]}]
    })
    .to_string()
}

fn sign(secret: &str, body: &str) -> String {
    use hmac::Mac;
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn meta_callback(stack: &Stack, body: &str, signature: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{}/api/callback/meta", stack.ingest_url))
        .header("content-type", "application/json")
        .header("x-hub-signature-256", signature)
        .body(body.to_string())
        .send()
        .await
        .expect("ingest answers")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_failed_callback_second_attempt_then_sms_through_the_whole_stack() {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v21.0/1234567890/messages"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"messages": [{"id": "wamid.e2e-1"}]})),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&fake)
        .await;
    Mock::given(method("POST"))
        .and(path("/v21.0/1234567890/messages"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"messages": [{"id": "wamid.e2e-2"}]})),
        )
        .with_priority(2)
        .mount(&fake)
        .await;
    Mock::given(method("POST"))
        .and(path("/sms/send"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "status": "OK", "status_code": 100,
            "sms": {"79160000007": {"status": "OK", "status_code": 100, "sms_id": "e2e-sms-7"}}
        })))
        .mount(&fake)
        .await;
    let stack = Stack::start("callback", &fake).await;
    let (status, resp) = stack
        .post(
            "rkeeper",
            "application/json",
            r#"{"order":{"id":"rk-7","status":"Выполнен","client":{"phone":"+79160000007"}}}"#,
        )
        .await;
    assert_eq!(status, 202, "{resp}");
    assert_eq!(wait_requests(&fake, 1).await.len(), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A forged callback is refused and changes nothing.
    let forged = meta_status_body("wamid.e2e-1", "failed");
    assert_eq!(
        meta_callback(&stack, &forged, &sign("not-the-app-secret", &forged)).await,
        401
    );

    // Meta reports the accepted message failed: second attempt after the delay (2 s here).
    let body = meta_status_body("wamid.e2e-1", "failed");
    assert_eq!(
        meta_callback(&stack, &body, &sign("e2e-meta-app-secret-0001", &body)).await,
        200
    );
    let notified = std::time::Instant::now();
    let got = wait_requests(&fake, 2).await;
    assert_eq!(
        got.iter()
            .filter(|r| r.url.path().ends_with("/messages"))
            .count(),
        2
    );
    assert!(
        notified.elapsed() >= Duration::from_millis(1500),
        "the second attempt waited for the delay"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The second attempt fails too: SMS.
    let body = meta_status_body("wamid.e2e-2", "failed");
    assert_eq!(
        meta_callback(&stack, &body, &sign("e2e-meta-app-secret-0001", &body)).await,
        200
    );
    let got = wait_requests(&fake, 3).await;
    let sms = got.iter().filter(|r| r.url.path() == "/sms/send").count();
    assert_eq!(sms, 1, "fallback to SMS after the second failure");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        fake.received_requests().await.unwrap_or_default().len(),
        3,
        "nothing more was sent"
    );
    stack.stop().await;
}

/// Runs the dispatcher's admin CLI against the stack's config.
fn admin(stack: &Stack, args: &[&str]) -> String {
    let out = Command::new(bin("dispatcher"))
        .arg("--config")
        .arg(&stack.config)
        .args(args)
        .output()
        .expect("dispatcher CLI runs");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_replays_the_dead_letter_queue_from_the_cli() {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_json(serde_json::json!({
            "error": {"message": "Invalid parameter", "type": "OAuthException", "code": 100}
        })))
        .mount(&fake)
        .await;
    let stack = Stack::start("dlq-cli", &fake).await;
    let (status, _) = stack
        .post(
            "rkeeper",
            "application/json",
            r#"{"order":{"id":"rk-dlq","status":"Выполнен","client":{"phone":"+79160000011"}}}"#,
        )
        .await;
    assert_eq!(status, 202);
    let mut listed = String::new();
    for _ in 0..100 {
        listed = admin(&stack, &["dlq", "list", "--json"]);
        if !listed.trim().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let entry: serde_json::Value =
        serde_json::from_str(listed.lines().next().expect("one dead letter")).unwrap();
    assert_eq!(entry["reason"], "config");
    assert_eq!(entry["source"], "rkeeper");
    assert_eq!(entry["recipient"], "+7******0011", "masked");
    assert!(!listed.contains("79160000011"));

    // The token is fixed; the admin replays what failed for that reason.
    fake.reset().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"messages": [{"id": "wamid.cli"}]})),
        )
        .mount(&fake)
        .await;
    let out = admin(
        &stack,
        &["dlq", "replay", "--reason", "config", "--dry-run"],
    );
    assert!(out.contains("would replay 1"), "{out}");
    let out = admin(&stack, &["dlq", "replay", "--reason", "config"]);
    assert!(
        out.contains("replayed 1, skipped 0 (poison), failed 0"),
        "{out}"
    );
    assert_eq!(wait_requests(&fake, 1).await.len(), 1, "sent once");
    let out = admin(&stack, &["dlq", "replay", "--reason", "config"]);
    assert!(out.contains("replayed 0"), "{out}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        fake.received_requests().await.unwrap_or_default().len(),
        1,
        "a second replay sends nothing"
    );
    stack.stop().await;
}

/// A customer's WhatsApp message to the business's Meta number.
fn meta_inbound_body(from: &str, text: &str) -> String {
    serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550000000", "phone_number_id": "1234567890"},
            "contacts": [{"profile": {"name": "Иван"}, "wa_id": from}],
            "messages": [{"from": from, "id": "wamid.in-1", "timestamp": "1764007200",
                "type": "text", "text": {"body": text}}]
        }}]}]
    })
    .to_string()
}

/// Runs the admin CLI and returns its exit code and output (no assertion).
fn admin_status(stack: &Stack, args: &[&str]) -> (i32, String) {
    let out = Command::new(bin("dispatcher"))
        .arg("--config")
        .arg(&stack.config)
        .args(args)
        .output()
        .expect("dispatcher CLI runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Meta inbound "СТОП" opts the sender out: the customer who wrote it gets
/// nothing more from the tenant, on any channel, until an admin removes
/// them; a customer who wrote something else is not opted out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meta_inbound_stop_word_opts_the_sender_out() {
    let fake = MockServer::start().await;
    meta_accepts(&fake, "wamid.stop").await;
    Mock::given(method("POST"))
        .and(path("/sms/send"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "status": "OK", "status_code": 100,
            "sms": {"79160000031": {"status": "OK", "status_code": 100, "sms_id": "e2e-sms-31"}}
        })))
        .mount(&fake)
        .await;
    let stack = Stack::start("stop-word", &fake).await;
    let order = |id: &str, phone: &str| {
        format!(r#"{{"order":{{"id":"{id}","status":"Выполнен","client":{{"phone":"{phone}"}}}}}}"#)
    };
    let (status, _) = stack
        .post(
            "rkeeper",
            "application/json",
            &order("rk-s1", "+79160000031"),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(wait_requests(&fake, 1).await.len(), 1, "the review request");

    // The customer answers "СТОП!"; another answers "Спасибо".
    for (from, text) in [("79160000031", "СТОП!"), ("79160000032", "Спасибо")] {
        let body = meta_inbound_body(from, text);
        assert_eq!(
            meta_callback(&stack, &body, &sign("e2e-meta-app-secret-0001", &body)).await,
            200
        );
    }
    let mut opted = (1, String::new());
    for _ in 0..100 {
        opted = admin_status(
            &stack,
            &["opt-out", "check", "+79160000031", "--tenant", "acme"],
        );
        if opted.0 == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(opted.0, 0, "opted out: {}", opted.1);
    let (code, _) = admin_status(
        &stack,
        &["opt-out", "check", "+79160000032", "--tenant", "acme"],
    );
    assert_eq!(code, 1, "\"Спасибо\" opts nobody out");
    let listed = admin(&stack, &["opt-out", "list", "--tenant", "acme", "--json"]);
    let entry: serde_json::Value =
        serde_json::from_str(listed.lines().next().expect("one entry")).expect("json");
    assert_eq!(entry["source"], "meta inbound");
    assert!(!listed.contains("9160000031"), "masked: {listed}");

    // The next order of that customer: nothing on WhatsApp, nor by SMS.
    let (status, _) = stack
        .post(
            "rkeeper",
            "application/json",
            &order("rk-s2", "+79160000031"),
        )
        .await;
    assert_eq!(status, 202);
    let mut skipped = false;
    for _ in 0..100 {
        if stack.logs().contains("skipped: the recipient opted out") {
            skipped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(skipped, "the dispatcher skipped it");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        fake.received_requests().await.unwrap_or_default().len(),
        1,
        "nothing sent to the opted-out customer"
    );

    // An admin takes them off the list (they asked to hear again): sent.
    let out = admin(
        &stack,
        &["opt-out", "remove", "+79160000031", "--tenant", "acme"],
    );
    assert!(out.contains("removed"), "{out}");
    let (status, _) = stack
        .post(
            "rkeeper",
            "application/json",
            &order("rk-s3", "+79160000031"),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(wait_requests(&fake, 2).await.len(), 2);
    stack.stop().await;
}

fn account_update_body(ban_state: &str, time: i64) -> String {
    serde_json::json!({"object": "whatsapp_business_account", "entry": [{
        "id": WABA, "time": time, "changes": [{"field": "account_update", "value": {
            "event": "DISABLED_UPDATE",
            "ban_info": {"waba_ban_state": ban_state, "waba_ban_date": "2026-12-04"}
        }}]
    }]})
    .to_string()
}

/// Meta's `account_update` webhook, through the real ingest and broker:
/// DISABLE pauses the tenant's number fleet-wide (its orders go by SMS at
/// once), REINSTATE resumes it (WhatsApp again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meta_account_ban_webhook_sends_by_sms_until_reinstated() {
    let fake = MockServer::start().await;
    meta_accepts(&fake, "wamid.after-ban").await;
    Mock::given(method("POST"))
        .and(path("/sms/send"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "status": "OK", "status_code": 100,
            "sms": {"79160000041": {"status": "OK", "status_code": 100, "sms_id": "e2e-sms-41"}}
        })))
        .mount(&fake)
        .await;
    let stack = Stack::start("account-ban", &fake).await;
    let pauses = format!("{}:pauses", stack.prefix);
    let paused = || {
        let pauses = pauses.clone();
        async move {
            let client = redis::Client::open("redis://127.0.0.1:6379").expect("redis url");
            let mut c = client
                .get_multiplexed_async_connection()
                .await
                .expect("redis");
            redis::cmd("HEXISTS")
                .arg(&pauses)
                .arg("acme|meta|1234567890")
                .query_async::<bool>(&mut c)
                .await
                .expect("hexists")
        }
    };
    let now = chrono::Utc::now().timestamp();
    let body = account_update_body("DISABLE", now);
    assert_eq!(
        meta_callback(&stack, &body, &sign("e2e-meta-app-secret-0001", &body)).await,
        200
    );
    let mut ok = false;
    for _ in 0..100 {
        if paused().await {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the number is paused");
    let order = |id: &str| {
        format!(
            r#"{{"order":{{"id":"{id}","status":"Выполнен","client":{{"phone":"+79160000041"}}}}}}"#
        )
    };
    let (status, _) = stack
        .post("rkeeper", "application/json", &order("rk-ban-1"))
        .await;
    assert_eq!(status, 202);
    let got = wait_requests(&fake, 1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].url.path(), "/sms/send", "by SMS while banned");

    let body = account_update_body("REINSTATE", now + 1);
    assert_eq!(
        meta_callback(&stack, &body, &sign("e2e-meta-app-secret-0001", &body)).await,
        200
    );
    let mut ok = false;
    for _ in 0..100 {
        if !paused().await {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the number is resumed");
    let (status, _) = stack
        .post("rkeeper", "application/json", &order("rk-ban-2"))
        .await;
    assert_eq!(status, 202);
    let got = wait_requests(&fake, 2).await;
    assert_eq!(got.len(), 2);
    assert_eq!(
        got[1].url.path(),
        "/v21.0/1234567890/messages",
        "WhatsApp again"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fake.received_requests().await.unwrap_or_default().len(), 2);
    stack.stop().await;
}

/// Wazzup's `channelsUpdates` webhook, through the real ingest and broker:
/// the tenant's channel goes `phoneUnavailable` (the phone behind it went
/// offline), the channel is paused fleet-wide and orders go by SMS at once,
/// while the probe (`GET /v3/channels`) keeps seeing it offline; the
/// webhook says `active` again, and WhatsApp through Wazzup it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wazzup_channel_going_offline_sends_by_sms_until_it_is_active() {
    const CHANNEL: &str = "3f0c1b7e-2d4a-4f5e-9a61-0b7c2d9e4f11";
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v3/message"))
        .respond_with(
            ResponseTemplate::new(201).set_body_json(serde_json::json!({"messageId": "wz-e2e-1"})),
        )
        .mount(&fake)
        .await;
    Mock::given(method("GET"))
        .and(path("/v3/channels"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!([
            {"channelId": CHANNEL, "transport": "whatsapp", "state": "phoneUnavailable"}
        ])))
        .mount(&fake)
        .await;
    Mock::given(method("POST"))
        .and(path("/sms/send"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "status": "OK", "status_code": 100,
            "sms": {"79160000061": {"status": "OK", "status_code": 100, "sms_id": "e2e-sms-61"}}
        })))
        .mount(&fake)
        .await;
    let more = format!(
        r#"
[tenants.providers.wazzup]
base_url = "{}"
api_key = "wz-e2e-key"
channel_id = "{CHANNEL}"
[tenants.provider_for]
whatsapp = "wazzup"
"#,
        fake.uri()
    );
    let stack = Stack::start_with("wazzup-offline", &fake, &more).await;
    let id = format!("acme|wazzup|{CHANNEL}");
    let paused = || {
        let (pauses, id) = (format!("{}:pauses", stack.prefix), id.clone());
        async move {
            let client = redis::Client::open("redis://127.0.0.1:6379").expect("redis url");
            let mut c = client
                .get_multiplexed_async_connection()
                .await
                .expect("redis");
            redis::cmd("HEXISTS")
                .arg(&pauses)
                .arg(&id)
                .query_async::<bool>(&mut c)
                .await
                .expect("hexists")
        }
    };
    let channel_state = |state: &str| {
        let body = serde_json::json!({"channelsUpdates": [{"channelId": CHANNEL, "state": state}]});
        let url = format!(
            "{}/api/callback/wazzup?key=e2e-wazzup-key-0001",
            stack.ingest_url
        );
        async move {
            reqwest::Client::new()
                .post(url)
                .json(&body)
                .send()
                .await
                .expect("ingest answers")
                .status()
                .as_u16()
        }
    };
    let wrong_key = reqwest::Client::new()
        .post(format!(
            "{}/api/callback/wazzup?key=not-ours",
            stack.ingest_url
        ))
        .json(&serde_json::json!({"channelsUpdates": [{"channelId": CHANNEL, "state": "active"}]}))
        .send()
        .await
        .expect("ingest answers")
        .status()
        .as_u16();
    assert_eq!(wrong_key, 401, "a webhook without our key changes nothing");

    assert_eq!(channel_state("phoneUnavailable").await, 200);
    let mut ok = false;
    for _ in 0..100 {
        if paused().await {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the channel is paused");
    let order = |id: &str| {
        format!(
            r#"{{"order":{{"id":"{id}","status":"Выполнен","client":{{"phone":"+79160000061"}}}}}}"#
        )
    };
    let (status, _) = stack
        .post("rkeeper", "application/json", &order("rk-wz-1"))
        .await;
    assert_eq!(status, 202);
    let mut sms = 0;
    for _ in 0..100 {
        let got = fake.received_requests().await.unwrap_or_default();
        sms = got.iter().filter(|r| r.url.path() == "/sms/send").count();
        if sms >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sms, 1, "by SMS while the channel is offline");
    // The probe sees it offline too: still paused, nothing sent to Wazzup.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        paused().await,
        "the probe does not resume an offline channel"
    );
    let got = fake.received_requests().await.unwrap_or_default();
    assert!(got.iter().any(|r| r.url.path() == "/v3/channels"), "probed");
    assert!(!got.iter().any(|r| r.url.path() == "/v3/message"));

    assert_eq!(channel_state("active").await, 200);
    let mut ok = false;
    for _ in 0..100 {
        if !paused().await {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the channel is live again");
    let (status, _) = stack
        .post("rkeeper", "application/json", &order("rk-wz-2"))
        .await;
    assert_eq!(status, 202);
    let mut wz = Vec::new();
    for _ in 0..100 {
        let got = fake.received_requests().await.unwrap_or_default();
        wz = got
            .into_iter()
            .filter(|r| r.url.path() == "/v3/message")
            .collect();
        if !wz.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(wz.len(), 1, "WhatsApp through Wazzup again");
    let body: serde_json::Value = serde_json::from_slice(&wz[0].body).expect("json");
    assert_eq!(body["channelId"], CHANNEL);
    stack.stop().await;
}

/// An SRE pauses a number from the CLI (before rotating its token): the
/// tenant's orders go by SMS; `pauses list` shows it; resumed, WhatsApp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_pauses_and_resumes_a_number_from_the_cli() {
    let fake = MockServer::start().await;
    meta_accepts(&fake, "wamid.cli").await;
    Mock::given(method("POST"))
        .and(path("/sms/send"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "status": "OK", "status_code": 100,
            "sms": {"79160000051": {"status": "OK", "status_code": 100, "sms_id": "e2e-sms-51"}}
        })))
        .mount(&fake)
        .await;
    let stack = Stack::start("pause-cli", &fake).await;
    let (code, _) = admin_status(&stack, &["pauses", "pause", "acme|meta|not-ours"]);
    assert_eq!(code, 1, "an account no tenant has is refused");
    let out = admin(&stack, &["pauses", "pause", "acme|meta|1234567890"]);
    assert!(out.contains("paused by hand"), "{out}");
    let listed = admin(&stack, &["pauses", "list", "--json"]);
    let entry: serde_json::Value =
        serde_json::from_str(listed.lines().next().expect("one pause")).expect("json");
    assert_eq!(entry["id"], "acme|meta|1234567890");
    assert_eq!(entry["manual"], true);
    let order = |id: &str| {
        format!(
            r#"{{"order":{{"id":"{id}","status":"Выполнен","client":{{"phone":"+79160000051"}}}}}}"#
        )
    };
    let (status, _) = stack
        .post("rkeeper", "application/json", &order("rk-cli-1"))
        .await;
    assert_eq!(status, 202);
    let got = wait_requests(&fake, 1).await;
    assert_eq!(got[0].url.path(), "/sms/send", "by SMS while paused");
    let out = admin(&stack, &["pauses", "resume", "acme|meta|1234567890"]);
    assert!(out.contains("resumed"), "{out}");
    let (code, _) = admin_status(&stack, &["pauses", "resume", "acme|meta|1234567890"]);
    assert_eq!(code, 1, "no longer paused");
    let (status, _) = stack
        .post("rkeeper", "application/json", &order("rk-cli-2"))
        .await;
    assert_eq!(status, 202);
    let got = wait_requests(&fake, 2).await;
    assert_eq!(got.len(), 2);
    assert_eq!(
        got[1].url.path(),
        "/v21.0/1234567890/messages",
        "WhatsApp again"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_500_gets_the_second_attempt_and_the_journal_tells_it() {
    let fake = MockServer::start().await;
    // The first attempt (one try and one quick retry) meets a 500.
    Mock::given(method("POST"))
        .and(path("/v21.0/1234567890/messages"))
        .respond_with(ResponseTemplate::new(500).set_body_string("internal"))
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&fake)
        .await;
    Mock::given(method("POST"))
        .and(path("/v21.0/1234567890/messages"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"messages": [{"id": "wamid.ladder"}]})),
        )
        .with_priority(2)
        .mount(&fake)
        .await;
    let stack = Stack::start("ladder", &fake).await;
    let (status, answer) = stack
        .post(
            "rkeeper",
            "application/json",
            r#"{"order":{"id":"rk-ladder-142","status":"Выполнен","client":{"phone":"+79160000012"}}}"#,
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["events"][0]["id"]
        .as_str()
        .expect("event id")
        .to_string();
    let got = wait_requests(&fake, 3).await;
    assert_eq!(got.len(), 3, "try, quick retry, second attempt");

    // An admin asks what happened to order rk-ladder-142.
    let mut found = serde_json::Value::Null;
    for _ in 0..50 {
        let out = Command::new(bin("dispatcher"))
            .arg("--config")
            .arg(&stack.config)
            .args([
                "events",
                "find",
                "rk-ladder-142",
                "--tenant",
                "acme",
                "--json",
            ])
            .output()
            .expect("dispatcher CLI runs");
        if let Some(line) = String::from_utf8_lossy(&out.stdout).lines().next()
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
            && v["status"] == "sent"
        {
            found = v;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(found["id"], id.as_str(), "{found}");
    let steps: Vec<&str> = found["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|r| r["step"].as_str())
        .collect();
    assert_eq!(
        steps,
        [
            "received",
            "attempt",
            "second_attempt_scheduled",
            "received",
            "attempt"
        ],
        "{found}"
    );
    let text = admin(&stack, &["events", "show", &id]);
    assert!(text.contains(&format!("event {id}: sent")), "{text}");
    assert!(text.contains("message_id=wamid.ladder"), "{text}");
    assert!(!text.contains("79160000012"), "masked: {text}");
    let logs = stack.stop().await;
    assert!(!logs.contains("79160000012"), "no full phone in the logs");
}

/// Real lifecycles, each status posted twice and all of them shuffled: one
/// message per order, visit and won deal, and one per booking change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_lifecycle_sends_one_message_per_happening() {
    let fake = MockServer::start().await;
    meta_accepts(&fake, "wamid.e2e").await;
    let stack = Stack::start("lifecycles", &fake).await;

    let json = "application/json";
    let form = "application/x-www-form-urlencoded";
    let mut hooks: Vec<(&str, &str, String)> = Vec::new();
    // iiko courier order: Delivered and Closed are both final by default.
    for s in [
        "Unconfirmed",
        "WaitCooking",
        "CookingStarted",
        "CookingCompleted",
        "OnWay",
        "Delivered",
        "Closed",
    ] {
        hooks.push(("iiko", json, format!(
            r#"[{{"eventType":"DeliveryOrderUpdate","eventTime":"2026-11-24 18:00:00.000","organizationId":"org-1","eventInfo":{{"id":"o-life","creationStatus":"Success","order":{{"id":"o-life","status":"{s}","number":143,"phone":"+79160000101"}}}}}}]"#
        )));
    }
    // R-Keeper delivery: Доставлен then Выполнен.
    for s in ["Новый", "Передан на кухню", "Доставлен", "Выполнен"]
    {
        hooks.push(("rkeeper", json, format!(
            r#"{{"order":{{"id":"rk-life","status":"{s}","customer":{{"phone":"+79160000102"}}}}}}"#
        )));
    }
    // YCLIENTS record: created (waiting), confirmed, arrived, edited after the visit.
    for (status, attendance) in [("create", 0), ("update", 2), ("update", 1), ("update", 1)] {
        hooks.push(("yclients", json, format!(
            r#"{{"company_id":1,"resource":"record","resource_id":77,"status":"{status}","data":{{"id":77,"company_id":1,"attendance":{attendance},"client":{{"name":"Олеся","phone":"+79160000103"}}}}}}"#
        )));
    }
    // AmoCRM lead: in progress, won.
    for s in [10216994, 142] {
        hooks.push(("amocrm", form, format!(
            "leads%5Bstatus%5D%5B0%5D%5Bid%5D=55&leads%5Bstatus%5D%5B0%5D%5Bstatus_id%5D={s}&leads%5Bstatus%5D%5B0%5D%5Bmain_contact%5D%5Bphone%5D=79160000104&account%5Bid%5D=9"
        )));
    }
    // Booking: created, moved twice, moved to another place, completed: five messages.
    for (event, start, address) in [
        ("CheckIn", "2026-12-01T10:00:00+03:00", "ул. Мира, 5"),
        ("UpdateCaseTime", "2026-12-01T12:00:00+03:00", "ул. Мира, 5"),
        ("UpdateCaseTime", "2026-12-02T12:00:00+03:00", "ул. Мира, 5"),
        (
            "UpdateCasePlace",
            "2026-12-02T12:00:00+03:00",
            "ул. Ленина, 1",
        ),
        ("CaseComplete", "2026-12-02T12:00:00+03:00", "ул. Ленина, 1"),
    ] {
        hooks.push(("booking", json, format!(
            r#"{{"event":"{event}","case":{{"id":"c-life","start":"{start}","address":"{address}"}},"client":{{"phone":"+79160000105"}}}}"#
        )));
    }
    // Every webhook twice (the source retried), in a random order.
    let mut posts: Vec<_> = hooks.iter().chain(hooks.iter()).collect();
    let seed = fastrand::u64(..);
    fastrand::Rng::with_seed(seed).shuffle(&mut posts);
    for (source, ct, body) in posts {
        let (status, resp) = stack.post(source, ct, body).await;
        assert!(
            status == 200 || status == 202,
            "{source} (seed {seed}): {status} {resp}"
        );
    }

    let expected = [
        ("+79160000101", 1),
        ("+79160000102", 1),
        ("+79160000103", 1),
        ("+79160000104", 1),
        ("+79160000105", 5),
    ];
    wait_requests(&fake, 9).await;
    // Longer than a lease wait (5 s), so a duplicate that waited out a
    // concurrent send has come back and been absorbed.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let bodies = meta_bodies(&fake.received_requests().await.unwrap_or_default());
    for (phone, n) in expected {
        let got = bodies.iter().filter(|b| b["to"] == phone).count();
        assert_eq!(got, n, "messages to {phone} (shuffle seed {seed})");
    }
    assert_eq!(bodies.len(), 9, "seed {seed}");
    stack.stop().await;
}

const BISTRO_KEY: &str = "e2e-bistro-key-0000000002";
const GONE_KEY: &str = "e2e-gone-key-000000000003";

/// One webhook of the steady flow: whose key, when it left and came back,
/// and what the ingest answered (None: no answer at all).
struct Sent {
    tenant: &'static str,
    phone: String,
    start: std::time::Instant,
    end: std::time::Instant,
    status: Option<u16>,
}

/// A gauge of a `/metrics` page, 0 when absent.
async fn gauge(url: &str, name: &str) -> i64 {
    let text = match reqwest::get(format!("{url}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => return 0,
    };
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

async fn wait_gauge(url: &str, name: &str, at_least: i64) {
    for _ in 0..200 {
        if gauge(url, name).await >= at_least {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url}: {name} never reached {at_least}");
}

/// As an operator's tooling does: the whole new file at once (rename).
fn replace_file(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("toml.new");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

fn signal_hup(child: &Child) {
    let ok = Command::new("kill")
        .arg("-HUP")
        .arg(child.id().to_string())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -HUP");
}

/// Tenants added, changed and removed while webhooks flow: every webhook is
/// answered as the tenants in force when it arrived say, none is refused
/// or lost for the reload, the dispatcher sends with the new templates and
/// accounts, and a broken file (noticed by the file watch, no signal)
/// changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_reload_live_while_webhooks_flow() {
    let fake = MockServer::start().await;
    meta_accepts(&fake, "wamid.acme").await;
    Mock::given(method("POST"))
        .and(path("/v21.0/2222222222/messages"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"messages": [{"id": "wamid.bistro"}]})),
        )
        .mount(&fake)
        .await;
    let gone = format!(
        r#"
[[tenants]]
id = "gone"
keys = ["{GONE_KEY}"]
[tenants.providers.meta]
base_url = "{fake}/v21.0"
phone_number_id = "1234567890"
access_token = "EAA-e2e-token"
"#,
        fake = fake.uri()
    );
    let stack = Stack::start_with("reload", &fake, &gone).await;
    let original = std::fs::read_to_string(&stack.config).expect("config");
    let base = &original[..original.find("[[tenants]]").expect("tenants")];
    let reloaded = format!(
        r#"{base}
[[tenants]]
id = "acme"
keys = ["{KEY}"]
[tenants.channels]
default = ["whatsapp", "sms"]
[tenants.templates.order_completed]
text = "acme v2 {{{{ order_number }}}}"
[tenants.providers.meta]
base_url = "{fake}/v21.0"
phone_number_id = "1234567890"
access_token = "EAA-e2e-token"

[[tenants]]
id = "bistro"
keys = ["{BISTRO_KEY}"]
[tenants.templates.order_completed]
text = "bistro v1 {{{{ order_number }}}}"
[tenants.providers.meta]
base_url = "{fake}/v21.0"
phone_number_id = "2222222222"
access_token = "EAA-e2e-bistro"
"#,
        fake = fake.uri()
    );

    // The steady flow: 40 webhooks a second, the three keys in turn.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flow = {
        let (url, stop) = (stack.ingest_url.clone(), stop.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut sent = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(25));
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                let (tenant, key, range) = match n % 3 {
                    0 => ("acme", KEY, 1),
                    1 => ("bistro", BISTRO_KEY, 2),
                    _ => ("gone", GONE_KEY, 3),
                };
                let phone = format!("+7916{range}{n:06}");
                let body = format!(
                    r#"[{{"eventType":"DeliveryOrderUpdate","eventTime":"2026-12-03 18:00:00.000","organizationId":"org-1","eventInfo":{{"id":"o-{n}","creationStatus":"Success","order":{{"id":"o-{n}","status":"Delivered","number":{n},"phone":"{phone}"}}}}}}]"#
                );
                let start = std::time::Instant::now();
                let status = http
                    .post(format!("{url}/api/webhook/iiko?key={key}"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .ok()
                    .map(|r| r.status().as_u16());
                sent.push(Sent {
                    tenant,
                    phone,
                    start,
                    end: std::time::Instant::now(),
                    status,
                });
                n += 1;
            }
            sent
        })
    };

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let reload_sent = std::time::Instant::now();
    replace_file(&stack.config, &reloaded);
    signal_hup(&stack.ingest);
    signal_hup(&stack.dispatcher);
    wait_gauge(&stack.ingest_url, "vestnik_ingest_config_generation", 1).await;
    wait_gauge(&stack.health_url, "vestnik_dispatcher_config_generation", 1).await;
    let applied = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // A broken file, no signal: the file watch notices it, refuses it.
    let generation = gauge(&stack.ingest_url, "vestnik_ingest_config_generation").await;
    let broken_at = std::time::Instant::now();
    replace_file(
        &stack.config,
        &format!("{reloaded}\n[[tenants]]\nid = \"broken\"\nkeys = 7\n"),
    );
    wait_gauge(&stack.ingest_url, "vestnik_ingest_config_reload_failing", 1).await;
    wait_gauge(
        &stack.health_url,
        "vestnik_dispatcher_config_reload_failing",
        1,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = flow.await.expect("flow");
    assert_eq!(
        gauge(&stack.ingest_url, "vestnik_ingest_config_generation").await,
        generation,
        "the broken file was not applied"
    );

    let mut checked = [0usize; 3];
    for s in &sent {
        let status = s.status.unwrap_or_else(|| panic!("{}: no answer", s.phone));
        // Which configuration the request met: the old one (answered
        // before the new file was written), the new one (sent after both
        // processes said it was in force), or either (in between).
        let old = s.end < reload_sent;
        let new = s.start > applied;
        let expected: &[u16] = match (s.tenant, old, new) {
            ("acme", ..) => &[202],
            ("bistro", true, _) | ("gone", _, true) => &[401],
            ("bistro", _, true) | ("gone", true, _) => &[202],
            _ => &[202, 401],
        };
        assert!(
            expected.contains(&status),
            "{} ({}) answered {status}, expected {expected:?} (old {old}, new {new}, broken file {})",
            s.phone,
            s.tenant,
            s.start > broken_at
        );
        checked[usize::from(old) + 2 * usize::from(new)] += 1;
    }
    assert!(
        checked[1] > 10 && checked[2] > 10,
        "the flow ran on both sides of the reload: {checked:?}"
    );

    // Every accepted acme and bistro webhook is one message, by its own
    // tenant's account and template.
    let accepted: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.status == Some(202) && s.tenant != "gone")
        .collect();
    let mut bodies = Vec::new();
    for _ in 0..300 {
        bodies = fake.received_requests().await.unwrap_or_default();
        let delivered = accepted
            .iter()
            .filter(|s| {
                bodies
                    .iter()
                    .any(|r| String::from_utf8_lossy(&r.body).contains(&s.phone[1..]))
            })
            .count();
        if delivered == accepted.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for s in &accepted {
        let to: Vec<(&str, serde_json::Value)> = bodies
            .iter()
            .filter_map(|r| Some((r.url.path(), r.body_json::<serde_json::Value>().ok()?)))
            .filter(|(_, b)| b["to"].as_str() == Some(s.phone.as_str()))
            .collect();
        assert_eq!(
            to.len(),
            1,
            "{} ({}): {} messages",
            s.phone,
            s.tenant,
            to.len()
        );
        let (account, body) = &to[0];
        let text = body["text"]["body"].as_str().unwrap_or_default();
        if s.tenant == "bistro" {
            assert_eq!(*account, "/v21.0/2222222222/messages");
            assert!(text.starts_with("bistro v1"), "{text}");
        } else {
            assert_eq!(*account, "/v21.0/1234567890/messages");
            if s.start > applied {
                assert!(
                    text.starts_with("acme v2"),
                    "{} sent after the reload: {text}",
                    s.phone
                );
            }
        }
    }
    let logs = stack.stop().await;
    assert!(
        logs.contains("configuration not reloaded"),
        "the refused file is logged"
    );
}

/// Issue 11, locations: a chain's iiko orders from two branches in two time
/// zones, and one from a branch nobody entered in the table yet. Each known
/// branch's customer gets that branch's name, review link and zone; the
/// unknown one gets the chain's link and zone, and the operator sees it in
/// the dispatcher's metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_branch_of_a_chain_gets_its_own_name_link_and_zone() {
    let fake = MockServer::start().await;
    meta_accepts(&fake, "wamid.e2e").await;
    let stack = Stack::start_with(
        "locations",
        &fake,
        r#"
[tenants.vars]
review_url = "https://r.example/chain"
[tenants.templates.order_completed]
text = "{{ location_name or '-' }}|{{ review_url }}|{{ time_zone }}|{{ occurred_at_local }}"
[tenants.locations."org-msk"]
name = "Тверская"
time_zone = "Europe/Moscow"
vars = { review_url = "https://yandex.ru/maps/org/1" }
[tenants.locations."org-vvo"]
name = "Светланская"
time_zone = "Asia/Vladivostok"
vars = { review_url = "https://2gis.ru/vladivostok/firm/2" }
"#,
    )
    .await;
    let order = |org: &str, n: u32| {
        format!(
            r#"[{{"eventType":"DeliveryOrderUpdate","eventTime":"2026-11-24 18:00:00.000","organizationId":"{org}","eventInfo":{{"id":"o-{n}","creationStatus":"Success","order":{{"id":"o-{n}","status":"Delivered","number":{n},"phone":"+7916000010{n}","customer":{{"name":"Гость"}}}}}}}}]"#
        )
    };
    for (org, n) in [("org-msk", 1), ("org-vvo", 2), ("org-new", 3)] {
        let (status, resp) = stack.post("iiko", "application/json", &order(org, n)).await;
        assert_eq!(status, 202, "{org}: {resp}");
    }
    wait_requests(&fake, 3).await;
    let bodies = meta_bodies(&fake.received_requests().await.unwrap_or_default());
    let text_to = |phone: &str| -> Vec<String> {
        bodies
            .iter()
            .filter(|b| b["to"] == phone)
            .map(|b| b["text"]["body"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let msk = text_to("+79160000101");
    let vvo = text_to("+79160000102");
    let new = text_to("+79160000103");
    assert_eq!(msk.len(), 1, "{bodies:?}");
    assert!(
        msk[0].starts_with("Тверская|https://yandex.ru/maps/org/1|Europe/Moscow|")
            && msk[0].ends_with("(Мск)"),
        "{msk:?}"
    );
    assert_eq!(vvo.len(), 1, "{bodies:?}");
    assert!(
        vvo[0].starts_with("Светланская|https://2gis.ru/vladivostok/firm/2|Asia/Vladivostok|")
            && !vvo[0].contains("Мск"),
        "{vvo:?}"
    );
    assert_eq!(new.len(), 1, "{bodies:?}");
    assert!(
        new[0].starts_with("-|https://r.example/chain|Europe/Moscow|"),
        "{new:?}"
    );
    assert_eq!(
        gauge(
            &stack.health_url,
            "vestnik_dispatcher_unknown_locations_total"
        )
        .await,
        1
    );
    stack.stop().await;
}

/// Meta's answer, with when each message arrived.
struct Arrivals(std::sync::Arc<std::sync::Mutex<Vec<chrono::DateTime<chrono::Utc>>>>);

impl wiremock::Respond for Arrivals {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        self.0.lock().expect("lock").push(chrono::Utc::now());
        ResponseTemplate::new(200)
            .set_body_json(serde_json::json!({"messages": [{"id": "wamid.e2e-quiet"}]}))
    }
}

/// Issue 11, end to end with the real binaries: an order posted just before
/// its tenant's send hours close, with a delay that ends in the quiet
/// hours, is sent when the window next opens and not before. The window is
/// set in seconds around the real clock (Moscow, the tenant's zone): open
/// now, closing 6 s from now, opening again 14 s from now; the delay of 8 s
/// after the order ends inside that gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_delayed_into_the_quiet_hours_goes_when_they_end() {
    use chrono::Timelike;
    let fake = MockServer::start().await;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    Mock::given(method("POST"))
        .and(path("/v21.0/1234567890/messages"))
        .respond_with(Arrivals(seen.clone()))
        .mount(&fake)
        .await;
    // Moscow keeps UTC+3 all year.
    let msk = chrono::Utc::now() + chrono::Duration::hours(3);
    let hms = |t: chrono::DateTime<chrono::Utc>| {
        format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second())
    };
    let closes = msk + chrono::Duration::seconds(6);
    let opens = msk + chrono::Duration::seconds(14);
    let stack = Stack::start_with(
        "quiet",
        &fake,
        &format!(
            r#"
[tenants.delays.order_completed]
after_secs = 8
[tenants.send_hours]
default = "{}-{}"
"#,
            hms(opens),
            hms(closes)
        ),
    )
    .await;
    let posted = chrono::Utc::now();
    assert!(
        posted + chrono::Duration::hours(3) < closes - chrono::Duration::seconds(1),
        "the stack took too long to start for this test's window"
    );
    // iiko's eventTime is UTC.
    let order = format!(
        r#"[{{"eventType":"DeliveryOrderUpdate","eventTime":"{}","organizationId":"org-1","eventInfo":{{"id":"o-quiet","creationStatus":"Success","order":{{"id":"o-quiet","status":"Delivered","number":7,"phone":"+79160000201","customer":{{"name":"Гость"}}}}}}}}]"#,
        posted.format("%Y-%m-%d %H:%M:%S%.3f")
    );
    let (status, resp) = stack.post("iiko", "application/json", &order).await;
    assert_eq!(status, 202, "{resp}");
    // The window reopens at `opens` (whole seconds), in UTC.
    let reopens = (opens - chrono::Duration::hours(3))
        .with_nanosecond(0)
        .expect("whole second");
    assert!(reopens > posted, "the test's window is ahead of the post");
    for _ in 0..300 {
        if !seen.lock().expect("lock").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = seen.lock().expect("lock").clone();
    assert_eq!(got.len(), 1, "sent once: {got:?}");
    let late = got[0] - reopens;
    assert!(
        late >= chrono::Duration::zero() && late <= chrono::Duration::milliseconds(1500),
        "reopens {reopens}, sent {} ({} ms)",
        got[0],
        late.num_milliseconds()
    );
    stack.stop().await;
}
