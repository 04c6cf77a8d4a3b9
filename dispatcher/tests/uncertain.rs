//! Sends whose outcome is uncertain (the answer lost after the request went
//! out, or the dispatcher died mid-send), settled without an admin where the
//! provider lets us: Meta echoes our delivery key (`biz_opaque_callback_data`)
//! in its status callbacks, so a `sent` callback settles it and no callback
//! by the check attempt makes one resend safe; Wazzup turns a repeat of our
//! `crmMessageId` within 60 s into no second message, so a lost answer is
//! repeated at once with the same id.

mod common;

use std::time::Duration;

use common::{Harness, Options, event, meta_ok, redis_conn, requests};
use deadpool_redis::redis;
use shared::EventKind;
use shared::status::DeliveryState;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

/// Meta with a 1 s timeout; its answer to the first request comes too late.
async fn meta_losing_its_first_answer() -> (MockServer, Options) {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(meta_ok("wamid.late").set_delay(Duration::from_secs(3)))
        .up_to_n_times(1)
        .mount(&fake)
        .await;
    Mock::given(method("POST"))
        .respond_with(meta_ok("wamid.again"))
        .mount(&fake)
        .await;
    let mut o = Options::meta(&fake);
    o.providers = o
        .providers
        .replace("timeout_ms = 2000", "timeout_ms = 1000");
    (fake, o)
}

fn callback_data(r: &Request) -> String {
    let body: serde_json::Value = serde_json::from_slice(&r.body).expect("json body");
    body["biz_opaque_callback_data"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// What ingest publishes for a Meta status callback carrying our key.
async fn publish_status(h: &Harness, message_id: &str, state: DeliveryState, key: &str) {
    let mut s = common::status("meta", message_id, state);
    s.delivery_key = Some(key.into());
    common::publish_status(h, &s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_meta_answer_is_settled_by_the_sent_callback_and_not_repeated() {
    let (fake, o) = meta_losing_its_first_answer().await;
    let h = Harness::start("uncertain-cb", &o).await;
    let e = event(EventKind::OrderCompleted, "org:o-cb:x", "+79161110001");
    h.publish(&e).await;
    let first = requests(&fake, 1, Duration::from_secs(5)).await;
    assert_eq!(first.len(), 1);
    let key = callback_data(&first[0]);
    assert_eq!(
        key,
        format!("{}/whatsapp", e.dedup_key),
        "the delivery key rides in the request"
    );
    // The answer is lost (1 s timeout); Meta's callback says it went out.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    publish_status(&h, "wamid.late", DeliveryState::Sent, &key).await;
    // The check attempt (2 s in tests) finds it settled: nothing more goes out.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        fake.received_requests().await.unwrap().len(),
        1,
        "settled by the callback: not sent again"
    );
    assert!(
        h.dead_letters(1, Duration::from_millis(300))
            .await
            .is_empty(),
        "and no letter for an admin"
    );
    let sent = h
        .running()
        .worker
        .store
        .sent(&e.dedup_key, shared::tenant::Channel::Whatsapp)
        .await
        .unwrap()
        .expect("recorded as sent");
    assert_eq!(sent.message_id, "wamid.late");
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_meta_answer_without_a_callback_is_sent_once_more_then_left_alone() {
    let (fake, o) = meta_losing_its_first_answer().await;
    let h = Harness::start("uncertain-nocb", &o).await;
    let e = event(EventKind::OrderCompleted, "org:o-nocb:x", "+79161110002");
    h.publish(&e).await;
    let both = requests(&fake, 2, Duration::from_secs(10)).await;
    assert_eq!(
        both.len(),
        2,
        "no callback by the check attempt: one resend"
    );
    assert_eq!(
        callback_data(&both[0]),
        callback_data(&both[1]),
        "with the same delivery key"
    );
    // A duplicate webhook afterwards is absorbed.
    let mut dup = e.clone();
    dup.id = uuid::Uuid::now_v7();
    h.publish(&dup).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        fake.received_requests().await.unwrap().len(),
        2,
        "once more, not twice"
    );
    assert!(
        h.dead_letters(1, Duration::from_millis(300))
            .await
            .is_empty()
    );
    h.finish().await;
}

/// A dispatcher died mid-send (its sending mark outlived its lease): for
/// Meta the event waits for the callback instead of becoming a letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meta_send_cut_by_a_crash_is_settled_by_its_callback() {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v21.0/1234567890/messages"))
        .respond_with(meta_ok("wamid.new"))
        .mount(&fake)
        .await;
    let h = Harness::prepare("uncertain-crash", &Options::meta(&fake)).await;
    let e = event(EventKind::OrderCompleted, "org:o-crash:x", "+79161110003");
    // What the dead dispatcher left: its sending mark (attempt 1), no lease.
    let mark = common::mark(&h.prefix, "sending", &e.dedup_key, "whatsapp");
    let mut c = redis_conn().await;
    let _: () = redis::cmd("SET")
        .arg(&mark)
        .arg(format!("a1-{}", uuid::Uuid::now_v7()))
        .arg("EX")
        .arg(600)
        .query_async(&mut c)
        .await
        .unwrap();
    h.publish(&e).await;
    let h = h.with_dispatcher().await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    // Its request had reached Meta: the callback comes, carrying the key.
    publish_status(
        &h,
        "wamid.before-the-crash",
        DeliveryState::Delivered,
        &format!("{}/whatsapp", e.dedup_key),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        fake.received_requests().await.unwrap().is_empty(),
        "it arrived before the crash: never sent again"
    );
    assert!(
        h.dead_letters(1, Duration::from_millis(300))
            .await
            .is_empty()
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_wazzup_answer_is_repeated_at_once_with_the_same_crm_message_id() {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v3/message"))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(serde_json::json!({"messageId": "late"}))
                .set_delay(Duration::from_secs(3)),
        )
        .up_to_n_times(1)
        .mount(&fake)
        .await;
    Mock::given(method("POST"))
        .and(path("/v3/message"))
        .respond_with(ResponseTemplate::new(400).set_body_json(serde_json::json!({
            "error": "REPEATED_CRM_MESSAGE_ID", "description": "already sent", "data": {"messageId": "late"}
        })))
        .mount(&fake)
        .await;
    let mut o = Options::meta(&fake);
    o.providers = format!(
        r#"
[tenants.providers.wazzup]
base_url = "{}"
api_key = "wz-test-key"
channel_id = "6f9d2a7e-0000-4000-8000-000000000001"
timeout_ms = 1000
"#,
        fake.uri()
    );
    let h = Harness::start("uncertain-wazzup", &o).await;
    let e = event(EventKind::OrderCompleted, "org:o-wz:x", "+79161110004");
    h.publish(&e).await;
    let reqs = requests(&fake, 2, Duration::from_secs(8)).await;
    assert_eq!(reqs.len(), 2, "repeated within the window");
    let id = |r: &Request| {
        serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["crmMessageId"].clone()
    };
    assert_eq!(id(&reqs[0]), id(&reqs[1]), "with the same crmMessageId");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(fake.received_requests().await.unwrap().len(), 2);
    assert!(
        h.running()
            .worker
            .store
            .sent(&e.dedup_key, shared::tenant::Channel::Whatsapp)
            .await
            .unwrap()
            .is_some(),
        "Wazzup's REPEATED_CRM_MESSAGE_ID means it has it: sent"
    );
    h.finish().await;
}
