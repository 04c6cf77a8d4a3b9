//! Failure cases of idempotency: Redis unreachable (fail closed, resume when
//! back) and a worker dying between the send and the ack.

mod common;

use std::time::Duration;

use common::{Harness, Options, Proxy, event, header, meta_ok, requests};
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use shared::EventKind;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unreachable_sends_nothing_and_resumes_when_back() {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(meta_ok("wamid.ok"))
        .mount(&fake)
        .await;
    let proxy = Proxy::start("127.0.0.1:6379").await;
    let mut o = Options::meta(&fake);
    o.redis_url = format!("redis://127.0.0.1:{}", proxy.port);
    let h = Harness::start("redis-down", &o).await;
    let ready = format!("http://{}/readyz", h.running().addr);

    proxy.cut().await;
    h.publish(&event(
        EventKind::OrderCompleted,
        "org:o-r1:Delivered",
        "+79161234567",
    ))
    .await;
    h.publish(&event(
        EventKind::OrderCompleted,
        "org:o-r2:Delivered",
        "+79161234568",
    ))
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        fake.received_requests()
            .await
            .unwrap_or_default()
            .is_empty(),
        "nothing sent without the idempotency check"
    );
    let r = reqwest::get(&ready).await.unwrap();
    assert_eq!(r.status(), 503, "not ready while Redis is down");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["redis"], "down");
    assert!(
        h.dead_letters(1, Duration::from_millis(200))
            .await
            .is_empty(),
        "held, not dead-lettered"
    );

    proxy.restore();
    let got = requests(&fake, 2, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 2, "both sent once Redis is back");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        fake.received_requests().await.unwrap_or_default().len(),
        2,
        "and only once each"
    );
    assert_eq!(reqwest::get(&ready).await.unwrap().status(), 200);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_dying_between_send_and_ack_does_not_send_again() {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(meta_ok("wamid.ok"))
        .mount(&fake)
        .await;
    let h = Harness::prepare("crash", &Options::meta(&fake)).await;
    let e = event(
        EventKind::OrderCompleted,
        "org:o-crash:Delivered",
        "+79161234567",
    );
    h.publish(&e).await;

    // A worker takes the delivery, sends (and records the send), then its
    // process dies before the ack: modelled by closing its connection
    // without acking. The worker code is the product's; only the death is staged.
    {
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let worker = dispatcher::app::build_worker(&h.settings, rx).expect("worker");
        let (conn, publisher, delivery) = doomed_delivery(&h).await;
        let settle = worker.handle(&delivery, &publisher).await;
        assert_eq!(
            settle,
            dispatcher::worker::Settle::Ack,
            "it would have acked"
        );
        assert_eq!(fake.received_requests().await.unwrap_or_default().len(), 1);
        conn.close(320, "killed".into()).await.unwrap(); // dies: no ack
    }
    assert_eq!(
        h.queue_len(&h.topology.dispatch_queue()).await,
        1,
        "the broker kept the unacked delivery"
    );

    // A fresh dispatcher gets the redelivery.
    let h = h.with_dispatcher().await;
    for _ in 0..100 {
        if h.queue_len(&h.topology.dispatch_queue()).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        h.queue_len(&h.topology.dispatch_queue()).await,
        0,
        "redelivery handled and acked"
    );
    assert_eq!(
        fake.received_requests().await.unwrap_or_default().len(),
        1,
        "not sent again"
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_work_and_hands_back_the_rest() {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(meta_ok("wamid.ok").set_delay(Duration::from_millis(800)))
        .mount(&fake)
        .await;
    let mut o = Options::meta(&fake);
    o.extra = String::new();
    let mut h = Harness::start("shutdown", &o).await;
    let events: Vec<_> = (0..20)
        .map(|i| {
            event(
                EventKind::OrderCompleted,
                &format!("org:o-sd-{i}:Delivered"),
                "+79161234567",
            )
        })
        .collect();
    for e in &events {
        h.publish(e).await;
    }
    requests(&fake, 1, Duration::from_secs(10)).await;
    let started = std::time::Instant::now();
    h.stop_dispatcher().await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "stopped within the shutdown timeout"
    );

    let sent = fake.received_requests().await.unwrap_or_default().len();
    let mut marked = 0;
    for e in &events {
        if common::redis_get(&common::mark(&h.prefix, "done", &e.dedup_key, "whatsapp"))
            .await
            .is_some()
        {
            marked += 1;
        }
    }
    let left = h.queue_len(&h.topology.dispatch_queue()).await as usize;
    assert_eq!(marked, sent, "every request that went out was recorded");
    assert_eq!(
        marked + left,
        events.len(),
        "nothing lost: sent or back in the queue ({marked} + {left})"
    );
    assert!(
        left > 0,
        "with 8 in flight and 20 queued, some were handed back"
    );

    // Another dispatcher finishes the job without sending anything twice.
    let h = h.with_dispatcher().await;
    let all = requests(&fake, events.len(), Duration::from_secs(20)).await;
    assert_eq!(all.len(), events.len());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        fake.received_requests().await.unwrap_or_default().len(),
        events.len()
    );
    h.finish().await;
}

/// A worker dying while its request is at the provider (SIGKILL mid-send):
/// the provider may have delivered it, so the redelivery must not send it
/// again. SMS.ru takes no idempotency key and calls nothing back, so it
/// goes to the DLQ as `uncertain` for an admin to check (Meta's and
/// Wazzup's are settled without one: tests/uncertain.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_dying_mid_send_leaves_it_uncertain_not_sent_twice() {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({
                    "status": "OK", "status_code": 100,
                    "sms": {"79161234567": {"status": "OK", "status_code": 100, "sms_id": "000000-20000001"}}
                }))
                .set_delay(Duration::from_millis(1500)),
        )
        .mount(&fake)
        .await;
    let mut o = Options::meta(&fake);
    o.channels = r#"["sms"]"#;
    o.providers = format!(
        "\n[tenants.providers.smsru]\nbase_url = \"{}\"\napi_id = \"test-api-id-0001\"\n",
        fake.uri()
    );
    let h = Harness::prepare("midsend", &o).await;
    let e = event(
        EventKind::OrderCompleted,
        "org:o-midsend:Delivered",
        "+79161234567",
    );
    h.publish(&e).await;
    {
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let worker =
            std::sync::Arc::new(dispatcher::app::build_worker(&h.settings, rx).expect("worker"));
        let (conn, publisher, delivery) = doomed_delivery(&h).await;
        let sending = tokio::spawn(async move { worker.handle(&delivery, &publisher).await });
        // The request reached the provider; the process dies before the answer.
        assert_eq!(requests(&fake, 1, Duration::from_secs(5)).await.len(), 1);
        sending.abort();
        let _ = sending.await;
        let _ = conn.close(320, "killed".into()).await;
    }
    // Its lease runs out (120 s in production).
    common::expire_leases(&h.prefix).await;

    let h = h.with_dispatcher().await;
    let dead = h.dead_letters(1, Duration::from_secs(15)).await;
    assert_eq!(dead.len(), 1, "the redelivery is dead-lettered");
    assert_eq!(
        header(&dead[0].1, "x-dlq-reason").as_deref(),
        Some("uncertain")
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        fake.received_requests().await.unwrap_or_default().len(),
        1,
        "not sent again, on this channel or the next"
    );
    h.finish().await;
}

/// A worker's connection, its publisher channel and one delivery taken from
/// the dispatch queue without acking: what a process about to die holds.
async fn doomed_delivery(
    h: &Harness,
) -> (lapin::Connection, lapin::Channel, lapin::message::Delivery) {
    let conn = common::connect().await;
    let publisher = conn.create_channel().await.unwrap();
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    let mut consumer = ch
        .basic_consume(
            h.topology.dispatch_queue().as_str().into(),
            "doomed".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(5), consumer.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    (conn, publisher, delivery)
}

/// Readiness follows Redis even with no traffic at all: the dispatcher
/// PINGs it on a timer (5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_redis_without_any_event() {
    let fake = MockServer::start().await;
    let proxy = Proxy::start("127.0.0.1:6379").await;
    let mut o = Options::meta(&fake);
    o.redis_url = format!("redis://127.0.0.1:{}", proxy.port);
    let h = Harness::start("redis-idle", &o).await;
    let ready = format!("http://{}/readyz", h.running().addr);
    let status = || async {
        reqwest::get(&ready)
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    let until = |want: u16| async move {
        for _ in 0..40 {
            if status().await == want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        false
    };
    assert!(until(200).await, "ready with Redis up");
    proxy.cut().await;
    assert!(
        until(503).await,
        "not ready within a check once Redis is gone"
    );
    proxy.restore();
    assert!(until(200).await, "ready again once it answers");
    h.finish().await;
}
