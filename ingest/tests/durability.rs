//! "Never answer 2xx for an event that is not durable", against the real
//! RabbitMQ: confirmed publish, the spool while the broker is unreachable,
//! the drain when it is back, and the spool surviving a restart.

mod common;

use std::time::Duration;

use common::{Harness, Proxy, take_events};

const DELIVERED: &str = r#"[{"eventType":"DeliveryOrderUpdate","eventTime":"2026-11-24 18:00:00.000",
 "organizationId":"org-1","correlationId":"c-1",
 "eventInfo":{"id":"order-1","creationStatus":"Success",
   "order":{"id":"order-1","status":"Delivered","number":142,"phone":"+79161234567","customer":{"name":"Иван"}}}}]"#;

fn delivered(order: &str) -> String {
    DELIVERED.replace("order-1", order)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_webhook_is_on_the_queue_when_answered() {
    let h = Harness::start("confirmed").await;
    let (status, body) = h.post_json("iiko", &delivered("o-confirmed")).await;
    assert_eq!(status, 202, "{body}");
    // Answered only after the broker's confirm: the event is already there.
    let events = take_events(&h.topology, 1, Duration::from_secs(2)).await;
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].id.to_string(),
        body["events"][0]["id"].as_str().unwrap()
    );
    assert_eq!(
        h.running().spool.pending_records(),
        0,
        "broker was up: nothing spooled"
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_unreachable_spools_and_drains_when_it_is_back() {
    let proxy = Proxy::start(true).await;
    let h = Harness::start_via("spool", &proxy.url()).await;
    assert!(
        h.running()
            .broker
            .wait_until_up(Duration::from_secs(10))
            .await
    );
    proxy.cut().await;
    // The ingest notices the cut connection.
    for _ in 0..100 {
        if !h.running().broker.is_up() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let started = std::time::Instant::now();
    let mut ids = Vec::new();
    for i in 0..5 {
        let (status, body) = h
            .post_json("iiko", &delivered(&format!("o-spool-{i}")))
            .await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["events"][0]["id"].as_str().unwrap().to_string());
    }
    assert!(
        started.elapsed() < Duration::from_secs(2 * 5),
        "each answer within AmoCRM's budget"
    );
    assert_eq!(h.running().spool.pending_records(), 5);
    let ready: serde_json::Value = h
        .http
        .get(h.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["broker"], "down");
    assert_eq!(ready["spool"]["records"], 5);

    proxy.restore();
    let events = take_events(&h.topology, 5, Duration::from_secs(20)).await;
    let mut got: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
    assert_eq!(got, ids, "drained in order");
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 5);
    for _ in 0..50 {
        if h.running().spool.pending_records() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(h.running().spool.pending_records(), 0);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_events_survive_an_ingest_restart() {
    let proxy = Proxy::start(false).await; // broker unreachable from the start
    let mut h = Harness::start_via("restart", &proxy.url()).await;
    let (status, body) = h.post_json("iiko", &delivered("o-restart")).await;
    assert_eq!(status, 202, "{body}");
    let id = body["events"][0]["id"].as_str().unwrap().to_string();
    h.stop().await;

    // A new process on the same spool directory, with the broker reachable.
    let prefix = h.prefix.clone();
    let spool_dir = std::mem::replace(&mut h.spool_dir, tempfile::tempdir().unwrap());
    let h2 = Harness::start_on(&prefix, common::AMQP, spool_dir).await;
    let events = take_events(&h2.topology, 1, Duration::from_secs(20)).await;
    assert_eq!(
        events.len(),
        1,
        "the spooled event reached the queue after restart"
    );
    assert_eq!(events[0].id.to_string(), id);
    h2.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_spool_answers_503_and_queues_nothing() {
    let proxy = Proxy::start(false).await;
    let prefix = common::unique_prefix("full");
    let dir = tempfile::tempdir().unwrap();
    let mut s = common::settings(&prefix, &proxy.url(), dir.path(), "");
    s.spool.max_bytes = 4096;
    s.spool.segment_bytes = 4096;
    let running = ingest::app::start(s, false).await.unwrap();
    let http = reqwest::Client::new();
    let mut statuses = Vec::new();
    for i in 0..10 {
        let r = http
            .post(format!(
                "http://{}/api/webhook/iiko?key={}",
                running.addr,
                common::KEY
            ))
            .header("content-type", "application/json")
            .body(delivered(&format!("o-full-{i}")))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 503 {
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["error"], "unavailable");
        }
    }
    assert!(statuses.contains(&202));
    assert!(statuses.contains(&503), "{statuses:?}");
    running.stop().await;
}

/// Two ingests share a spool volume, each with its own spool. While one is
/// alive, the other leaves its spool alone; once it is gone, the survivor
/// drains what it had acked into its spool (the broker was unreachable for
/// it), so no acked webhook is stranded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gone_ingests_spool_is_drained_by_its_sibling() {
    let proxy = Proxy::start(false).await; // ingest A cannot reach the broker
    let prefix = common::unique_prefix("adopt");
    let root = tempfile::tempdir().expect("tempdir");
    let root_path = root.path().to_path_buf();
    let mut a = Harness::start_on_tweaked(&prefix, &proxy.url(), root, "", |s| {
        s.spool.instance_id = Some("ingest-a".into());
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let (status, body) = a
            .post_json("iiko", &delivered(&format!("o-adopt-{i}")))
            .await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["events"][0]["id"].as_str().unwrap().to_string());
    }
    assert_eq!(a.running().spool.pending_records(), 5);
    assert!(a.running().spool.dir().ends_with("ingest-a"));

    let b_root = root_path.clone();
    let b = Harness::start_on_tweaked(
        &prefix,
        common::AMQP,
        tempfile::tempdir().expect("tempdir"),
        "",
        move |s| {
            s.spool.dir = b_root;
            s.spool.instance_id = Some("ingest-b".into());
            s.spool.adopt_interval_secs = 1;
        },
    )
    .await;
    // A lives: its spool is its own.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        common::queue_depth(&b.topology).await,
        0,
        "A's spool untouched"
    );
    assert_eq!(a.running().spool.pending_records(), 5);

    // A is gone (its lock with it): B drains A's spool.
    a.stop().await;
    let events = take_events(&b.topology, 5, Duration::from_secs(20)).await;
    let mut got: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
    got.sort();
    ids.sort();
    assert_eq!(got, ids, "every event A acked reached the queue through B");
    assert_eq!(
        b.running().spool.pending_records(),
        0,
        "B's own spool unused"
    );
    let metrics = reqwest::get(b.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("vestnik_ingest_spool_adoptions_total 1"),
        "{metrics}"
    );
    b.finish().await;
    drop(a);
}

/// The node the ingest is connected to hangs: its connection stays open and
/// confirms nothing (a SIGSTOPped node, packets dropped). Webhooks are still
/// answered from the spool, and the ingest gives the connection up for the
/// next node, where the drain delivers them, in order. The heartbeat is the
/// server's (60 s) here, so the failover is the stuck-link rule's doing,
/// not a missed heartbeat's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_node_is_given_up_for_the_next_one() {
    let proxy = Proxy::start(true).await;
    let prefix = common::unique_prefix("hung");
    let nodes = vec![proxy.url(), common::AMQP.to_string()];
    let h = Harness::start_on_tweaked(
        &prefix,
        &proxy.url(),
        tempfile::tempdir().expect("tempdir"),
        "",
        move |s| {
            s.rabbitmq.urls = nodes;
            s.rabbitmq.heartbeat_secs = 0;
        },
    )
    .await;
    assert!(
        h.running()
            .broker
            .wait_until_up(Duration::from_secs(10))
            .await
    );
    // Through the first node (the proxy): confirmed, nothing spooled.
    let (status, body) = h.post_json("iiko", &delivered("o-hung-first")).await;
    assert_eq!(status, 202, "{body}");
    let first = take_events(&h.topology, 1, Duration::from_secs(5)).await;
    assert_eq!(first.len(), 1);
    assert_eq!(h.running().spool.pending_records(), 0);

    proxy.freeze();
    let mut ids = Vec::new();
    for i in 0..5 {
        let started = std::time::Instant::now();
        let (status, body) = h
            .post_json("iiko", &delivered(&format!("o-hung-{i}")))
            .await;
        assert_eq!(status, 202, "{body}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "answered within AmoCRM's budget: {:?}",
            started.elapsed()
        );
        ids.push(body["events"][0]["id"].as_str().unwrap().to_string());
    }
    // The hung connection is still "connected"; only the stuck-link rule
    // moves the ingest on (a missed heartbeat would take two minutes).
    let events = take_events(&h.topology, 5, Duration::from_secs(40)).await;
    let got: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
    assert_eq!(got, ids, "every spooled webhook delivered once, in order");
    for _ in 0..100 {
        if h.running().spool.pending_records() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(h.running().spool.pending_records(), 0);
    let metrics = reqwest::get(h.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("vestnik_ingest_broker_stuck_connections_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("vestnik_ingest_broker_circuit_open 0"),
        "{metrics}"
    );
    // Published since the failover: straight to the broker again.
    let (status, body) = h.post_json("iiko", &delivered("o-hung-after")).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(h.running().spool.pending_records(), 0);
    proxy.thaw();
    h.finish().await;
}
