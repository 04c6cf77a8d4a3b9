//! The admins' DLQ: letters forced into it are listed with their reasons,
//! replayed by filter with exactly one send each, and a second replay sends
//! nothing. Nothing leaves the DLQ before its replacement is confirmed.

mod common;

use std::time::Duration;

use common::{Harness, Options, event, meta_ok, requests};
use dispatcher::dlq::{Dlq, Filter};
use shared::EventKind;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_replayed_once_and_not_again() {
    let fake = MockServer::start().await;
    // The provider is down for good (config error): every event is dead-lettered.
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_json(serde_json::json!({
            "error": {"message": "Invalid parameter", "type": "OAuthException", "code": 100}
        })))
        .mount(&fake)
        .await;
    let mut o = Options::meta(&fake);
    o.channels = r#"["whatsapp"]"#;
    let h = Harness::start("dlq", &o).await;
    let events: Vec<_> = (0..3)
        .map(|i| {
            event(
                EventKind::OrderCompleted,
                &format!("org:o-dlq-{i}:Delivered"),
                "+79161234567",
            )
        })
        .collect();
    for e in &events {
        h.publish(e).await;
    }
    common::publish_raw(
        &h.topology,
        b"not an event",
        lapin::BasicProperties::default(),
    )
    .await;
    for _ in 0..100 {
        if h.queue_len(&h.topology.dead_letter_queue()).await == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(fake.received_requests().await.unwrap_or_default().len(), 3);

    let dlq = Dlq::connect(
        &shared::amqp::Endpoints::one(common::AMQP),
        h.topology.clone(),
    )
    .await
    .unwrap();
    let all = dlq.list(&Filter::default()).await.unwrap();
    assert_eq!(all.len(), 4, "listing does not consume");
    let config: Vec<_> = all.iter().filter(|e| e.reason == "config").collect();
    assert_eq!(config.len(), 3);
    assert!(
        config
            .iter()
            .all(|e| e.tenant == "acme" && e.attempts == 1 && e.error.contains("meta 100"))
    );
    assert!(
        config.iter().all(|e| e.recipient == "+7******4567"),
        "recipients are masked"
    );
    assert_eq!(all.iter().filter(|e| e.reason == "poison").count(), 1);
    assert_eq!(
        h.queue_len(&h.topology.dead_letter_queue()).await,
        4,
        "still all there"
    );

    // The token is fixed: replay what failed for that reason.
    fake.reset().await;
    Mock::given(method("POST"))
        .respond_with(meta_ok("wamid.replayed"))
        .mount(&fake)
        .await;
    let store = &h.running().worker.store;
    let by_reason = Filter {
        reason: Some("config".into()),
        ..Filter::default()
    };
    let dry = dlq
        .replay(&by_reason, store, true, |_, _| {})
        .await
        .unwrap();
    assert_eq!(dry.replayed, 3, "dry run counts");
    assert_eq!(
        h.queue_len(&h.topology.dead_letter_queue()).await,
        4,
        "dry run moves nothing"
    );

    let mut seen = 0;
    let report = dlq
        .replay(&by_reason, store, false, |done, _| seen = done)
        .await
        .unwrap();
    assert_eq!((report.replayed, report.skipped, report.failed), (3, 0, 0));
    assert_eq!(seen, 3, "progress reported");
    let got = requests(&fake, 3, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 3, "exactly one send per replayed event");
    assert_eq!(
        h.queue_len(&h.topology.dead_letter_queue()).await,
        1,
        "only the poison is left"
    );

    // Replaying again (e.g. an interrupted run started over): nothing to send.
    // Put copies back as if the first replay had died before removing them.
    for e in &events {
        h.publish(e).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        fake.received_requests().await.unwrap_or_default().len(),
        3,
        "already sent: not again"
    );
    let again = dlq
        .replay(&by_reason, store, false, |_, _| {})
        .await
        .unwrap();
    assert_eq!(again.replayed, 0, "nothing left to replay");

    let purged = dlq
        .purge(&Filter {
            reason: Some("poison".into()),
            ..Filter::default()
        })
        .await
        .unwrap();
    assert_eq!(purged, 1);
    assert_eq!(h.queue_len(&h.topology.dead_letter_queue()).await, 0);
    dlq.close().await;
    h.finish().await;
}
