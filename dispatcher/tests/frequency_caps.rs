//! Frequency caps per recipient (issue 11): "at most one review request per
//! phone in 30 days, across the chain", held in Redis for the fleet. A
//! capped event is journaled `skipped`, sends nothing and is not
//! dead-lettered; the event that took the place keeps it through its
//! redeliveries; concurrent events for one phone take exactly the places
//! there are.

mod common;

use std::time::Duration;

use common::{Harness, Options, event, meta_ok, requests};
use shared::EventKind;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer};

fn capped(fake: &MockServer) -> Options {
    let mut o = Options::meta(fake);
    o.channels = r#"["whatsapp"]"#;
    o.providers.push_str(
        r#"
[tenants.frequency_caps.order_completed]
window_secs = 2592000
[tenants.frequency_caps.visit_completed]
at_most = 2
window_secs = 3600
"#,
    );
    o
}

fn sent_to(got: &[wiremock::Request], phone: &str) -> usize {
    got.iter()
        .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
        .filter(|b| b["to"] == phone)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_within_the_window_is_skipped_and_journaled() {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(meta_ok("wamid.cap"))
        .mount(&fake)
        .await;
    let h = Harness::start("cap", &capped(&fake)).await;
    let (a, b) = ("+79161230001", "+79161230002");

    let first = event(EventKind::OrderCompleted, "org:o-cap-1:Delivered", a);
    h.publish(&first).await;
    assert_eq!(requests(&fake, 1, Duration::from_secs(10)).await.len(), 1);

    // The next order of the same customer: capped. Another customer's: sent.
    let repeat = event(EventKind::OrderCompleted, "org:o-cap-2:Delivered", a);
    let other = event(EventKind::OrderCompleted, "org:o-cap-3:Delivered", b);
    h.publish(&repeat).await;
    h.publish(&other).await;
    // The first order's webhook again (the POS retried): its own place, so
    // not capped, and already sent, so not sent again.
    h.publish(&first).await;
    // A kind without a cap for the capped customer: sent.
    let deal = event(EventKind::DealWon, "amo:deal-cap:won", a);
    h.publish(&deal).await;

    let got = requests(&fake, 3, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let got = fake.received_requests().await.unwrap_or(got);
    assert_eq!(got.len(), 3, "first order, other customer, the deal");
    assert_eq!(sent_to(&got, a), 2, "the first order and the deal");
    assert_eq!(sent_to(&got, b), 1);

    let journal = &h.running().worker.journal;
    let history = journal
        .history(&repeat.id.to_string())
        .await
        .expect("journal");
    let view = dispatcher::journal::view(&repeat.id.to_string(), &history);
    assert_eq!(view["status"], "skipped", "{view}");
    let text = view.to_string();
    assert!(text.contains(r#""reason":"frequency cap""#), "{text}");
    assert_eq!(
        h.queue_len(&h.topology.dead_letter_queue()).await,
        0,
        "not a failure"
    );
    assert_eq!(
        h.running()
            .worker
            .metrics
            .skipped
            .with_label_values(&["frequency_cap"])
            .get(),
        1
    );
    // The cap key holds no phone in clear.
    let mut c = common::redis_conn().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:cap:*", h.prefix))
        .query_async(&mut c)
        .await
        .unwrap_or_default();
    assert!(!keys.is_empty());
    assert!(keys.iter().all(|k| !k.contains("9161230001")), "{keys:?}");
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_events_for_one_phone_take_exactly_the_places_there_are() {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(meta_ok("wamid.cap-race"))
        .mount(&fake)
        .await;
    let h = Harness::start("cap-race", &capped(&fake)).await;
    let phone = "+79161230009";
    // Eight visits of one customer at once (concurrency 8): two places.
    for i in 0..8 {
        let e = event(
            EventKind::VisitCompleted,
            &format!("yc:v-race-{i}:done"),
            phone,
        );
        h.publish(&e).await;
    }
    requests(&fake, 2, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = fake.received_requests().await.unwrap_or_default();
    assert_eq!(sent_to(&got, phone), 2, "at_most = 2");
    assert_eq!(
        h.running()
            .worker
            .metrics
            .skipped
            .with_label_values(&["frequency_cap"])
            .get(),
        6
    );
    h.finish().await;
}
