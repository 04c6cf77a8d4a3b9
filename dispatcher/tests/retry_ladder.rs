//! Seed 003's ladder: quick retries inside an attempt, exactly one second
//! attempt after the configured delay (9m30s in production, 2 s here), then
//! the dead-letter queue with the reason. Permanent failures skip it.

mod common;

use std::time::{Duration, Instant};

use common::{Harness, Options, event, header, meta_ok, requests};
use shared::EventKind;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

fn meta_error(code: i64) -> ResponseTemplate {
    ResponseTemplate::new(400).set_body_json(serde_json::json!({
        "error": {"message": format!("(#{code}) test"), "type": "OAuthException", "code": code,
                  "error_data": {"messaging_product": "whatsapp", "details": "details"}, "fbtrace_id": "x"}
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_attempt_fails_second_attempt_after_the_delay_sends() {
    let fake = MockServer::start().await;
    // First attempt: the try and its 2 quick retries all get 500.
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500).set_body_string("internal"))
        .up_to_n_times(3)
        .with_priority(1)
        .mount(&fake)
        .await;
    Mock::given(method("POST"))
        .respond_with(meta_ok("wamid.second"))
        .with_priority(2)
        .mount(&fake)
        .await;
    let h = Harness::start("second", &Options::meta(&fake)).await;
    let e = event(
        EventKind::OrderCompleted,
        "org:o-2nd:Delivered",
        "+79161234567",
    );
    h.publish(&e).await;

    let first = requests(&fake, 3, Duration::from_secs(10)).await;
    assert_eq!(first.len(), 3, "one try and two quick retries");
    let failed_at = Instant::now();
    let all = requests(&fake, 4, Duration::from_secs(15)).await;
    assert_eq!(all.len(), 4);
    let waited = failed_at.elapsed();
    assert!(
        waited >= Duration::from_millis(1500),
        "second attempt came after the delay, not at once ({waited:?})"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mark = common::redis_get(&common::mark(&h.prefix, "done", &e.dedup_key, "whatsapp"))
        .await
        .expect("sent");
    assert!(mark.contains("wamid.second"));
    assert!(
        h.dead_letters(1, Duration::from_millis(300))
            .await
            .is_empty()
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_twice_dead_letters_with_the_reason() {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(500).set_body_string("upstream exploded for +79161234567"),
        )
        .mount(&fake)
        .await;
    let h = Harness::start("twice", &Options::meta(&fake)).await;
    let e = event(
        EventKind::OrderCompleted,
        "org:o-twice:Delivered",
        "+79161234567",
    );
    h.publish(&e).await;

    let dead = h.dead_letters(1, Duration::from_secs(20)).await;
    assert_eq!(dead.len(), 1, "dead-lettered after the second attempt");
    let (body, headers) = &dead[0];
    let back = shared::Event::from_json(body).expect("the event itself is kept");
    assert_eq!(back.id, e.id);
    assert_eq!(
        header(headers, "x-dlq-reason").as_deref(),
        Some("second_attempt_failed")
    );
    assert_eq!(header(headers, "x-dlq-attempts").as_deref(), Some("2"));
    assert_eq!(
        header(headers, "x-dlq-channel").as_deref(),
        Some("whatsapp")
    );
    assert_eq!(header(headers, "x-dlq-provider").as_deref(), Some("meta"));
    assert!(header(headers, "x-first-failure-at").is_some());
    assert!(header(headers, "x-dlq-failed-at").is_some());
    let error = header(headers, "x-dlq-error").unwrap();
    assert!(error.contains("HTTP 500"), "{error}");
    assert!(
        !error.contains("9161234567"),
        "provider answer is masked: {error}"
    );
    assert_eq!(
        requests(&fake, 6, Duration::from_secs(1)).await.len(),
        6,
        "3 tries per attempt, 2 attempts"
    );
    let failed = common::redis_get(&common::mark(&h.prefix, "failed", &e.dedup_key, "whatsapp"))
        .await
        .expect("status failed");
    assert!(failed.contains("second_attempt_failed"));
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_131026_is_permanent_no_second_attempt() {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(meta_error(131026))
        .mount(&fake)
        .await;
    let h = Harness::start("perm", &Options::meta(&fake)).await;
    let e = event(
        EventKind::OrderCompleted,
        "org:o-perm:Delivered",
        "+79161234567",
    );
    h.publish(&e).await;

    let dead = h.dead_letters(1, Duration::from_secs(10)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        header(&dead[0].1, "x-dlq-reason").as_deref(),
        Some("recipient")
    );
    assert_eq!(header(&dead[0].1, "x-dlq-attempts").as_deref(), Some("1"));
    assert!(
        header(&dead[0].1, "x-dlq-error")
            .unwrap()
            .contains("131026")
    );
    tokio::time::sleep(Duration::from_secs(3)).await; // longer than the second-attempt delay
    assert_eq!(
        fake.received_requests().await.unwrap_or_default().len(),
        1,
        "no retry, no second attempt"
    );
    assert_eq!(h.queue_len(&h.topology.second_attempt_queue()).await, 0);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_errors_are_not_hot_retried() {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(meta_error(100))
        .mount(&fake)
        .await; // invalid parameter: a config failure
    let h = Harness::start("config", &Options::meta(&fake)).await;
    h.publish(&event(
        EventKind::OrderCompleted,
        "org:o-cfg:Delivered",
        "+79161234567",
    ))
    .await;
    let dead = h.dead_letters(1, Duration::from_secs(10)).await;
    assert_eq!(
        header(&dead[0].1, "x-dlq-reason").as_deref(),
        Some("config")
    );
    assert_eq!(fake.received_requests().await.unwrap_or_default().len(), 1);
    h.finish().await;
}

/// After a change of delay, the old wait queue (still draining through its
/// own TTL) no longer receives new second attempts: the route carries the
/// delay as the queue's name does, so each second attempt is queued once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_delay_queues_each_second_attempt_once() {
    let fake = MockServer::start().await;
    let mut o = Options::meta(&fake);
    o.delay_secs = 30;
    let h = Harness::prepare("delay-change", &o).await;
    // The same prefix as a deployment that used to run with 600 s.
    let old = shared::topology::Topology::new(&h.prefix, Duration::from_secs(600), 20);
    let conn = common::connect().await;
    let ch = conn.create_channel().await.expect("channel");
    old.declare(&ch).await.expect("old topology");
    h.topology.declare(&ch).await.expect("new topology");
    ch.confirm_select(Default::default())
        .await
        .expect("confirms");
    let e = event(
        EventKind::OrderCompleted,
        "org:o-delay:Delivered",
        "+79161234567",
    );
    dispatcher::outbox::second_attempt(
        &ch,
        &h.topology,
        &e.to_json(),
        &lapin::BasicProperties::default(),
        vec![],
    )
    .await
    .expect("second attempt queued");
    assert_eq!(h.queue_len(&h.topology.second_attempt_queue()).await, 1);
    assert_eq!(h.queue_len(&old.second_attempt_queue()).await, 0);
    let _ = old.delete(&ch).await;
    let _ = conn.close(200, "done".into()).await;
    h.finish().await;
}
