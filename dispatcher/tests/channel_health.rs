//! Channel health: an account-level failure (Meta 190: the token expired)
//! pauses the account for the fleet. After that first failure nothing but
//! the probes reaches the provider; the messages meanwhile are held (no
//! attempt spent) or, where the tenant has another channel, sent there at
//! once; when the probe finds the account healthy the held ones are sent,
//! each once. A message held longer than the tenant's limit goes to the DLQ.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Harness, Options, event, header, meta_ok};
use shared::EventKind;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const MESSAGES: &str = "/v21.0/1234567890/messages";
const NUMBER: &str = "/v21.0/1234567890";

fn token_expired() -> ResponseTemplate {
    ResponseTemplate::new(401).set_body_json(serde_json::json!({
        "error": {"message": "Error validating access token", "type": "OAuthException", "code": 190}
    }))
}

async fn broken_meta(fake: &MockServer) {
    Mock::given(method("POST"))
        .and(path(MESSAGES))
        .respond_with(token_expired())
        .mount(fake)
        .await;
    Mock::given(method("GET"))
        .and(path(NUMBER))
        .respond_with(token_expired())
        .mount(fake)
        .await;
}

async fn healthy_meta(fake: &MockServer) {
    fake.reset().await;
    Mock::given(method("POST"))
        .and(path(MESSAGES))
        .respond_with(meta_ok("wamid.OK"))
        .mount(fake)
        .await;
    Mock::given(method("GET"))
        .and(path(NUMBER))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"id": "1234567890"})),
        )
        .mount(fake)
        .await;
}

fn options(fake: &MockServer, channels: &'static str) -> Options {
    let mut o = Options::meta(fake);
    o.channels = channels;
    // A pure period: how soon a held message looks again.
    o.dispatcher_extra = "hold_recheck_secs = 1\n".into();
    o
}

async fn received(fake: &MockServer, m: &str, p: &str) -> Vec<Request> {
    fake.received_requests()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.method.as_str() == m && r.url.path() == p)
        .collect()
}

async fn until<F: std::future::Future<Output = bool>>(
    what: &str,
    timeout: Duration,
    mut ok: impl FnMut() -> F,
) {
    let started = Instant::now();
    while !ok().await {
        assert!(started.elapsed() < timeout, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `n` orders of `n` customers (one each).
fn events(n: usize, tag: &str) -> Vec<shared::Event> {
    (0..n)
        .map(|i| {
            event(
                EventKind::OrderCompleted,
                &format!("org:{tag}-{i}"),
                &format!("+7916{:07}", 1_000_000 + i),
            )
        })
        .collect()
}

/// The delivery keys Meta was given (`biz_opaque_callback_data`), one per
/// message sent.
fn keys(requests: &[Request]) -> Vec<String> {
    let mut keys: Vec<String> = requests
        .iter()
        .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
        .filter_map(|b| b["biz_opaque_callback_data"].as_str().map(str::to_string))
        .collect();
    keys.sort();
    keys
}

/// Round `r` of a dinner peak: the `r`-th status of each of `customers`
/// customers' orders (the delivery key names round and customer).
fn round(r: usize, customers: usize, tag: &str) -> Vec<shared::Event> {
    (0..customers)
        .map(|c| {
            event(
                EventKind::OrderCompleted,
                &format!("{tag}-r{r}-c{c}"),
                &format!("+7916{:07}", 1_000_000 + c),
            )
        })
        .collect()
}

/// The round a delivery key (`acme:iiko:<tag>-r<r>-c<c>/whatsapp`) names.
fn round_of(key: &str) -> usize {
    key.split("-r")
        .nth(1)
        .and_then(|rest| rest.split('-').next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no round in {key}"))
}

/// The customer a delivery key names.
fn customer_of(key: &str) -> usize {
    key.rsplit("-c")
        .next()
        .and_then(|rest| rest.split('/').next())
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no customer in {key}"))
}

/// Each customer's messages went out in the order they were held (rounds
/// never go back for one customer); different customers' may interleave
/// (the drain window sends several customers side by side).
fn assert_each_customer_in_order(sent: &[String]) {
    let mut last: std::collections::HashMap<usize, usize> = Default::default();
    for (i, k) in sent.iter().enumerate() {
        let (c, r) = (customer_of(k), round_of(k));
        if let Some(&before) = last.get(&c) {
            assert!(
                before <= r,
                "customer {c} out of order at send {i}: round {r} after round {before}"
            );
        }
        last.insert(c, r);
    }
}

/// The delivery keys in the order Meta received them.
fn keys_in_order(requests: &[Request]) -> Vec<String> {
    requests
        .iter()
        .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
        .filter_map(|b| b["biz_opaque_callback_data"].as_str().map(str::to_string))
        .collect()
}

/// The issue's numbers, with two dispatchers: Meta answers 190; after that
/// first failure only the probes reach it while 500 events arrive (five
/// statuses of 100 customers' orders, round after round), all held, no
/// attempt burnt, nothing dead-lettered. Meta heals: the probe resumes the
/// account and the held messages go out exactly once each and in the order
/// they were held (no message of a round before one of an earlier round);
/// 50 events that arrive while they drain wait behind them; then the
/// account is live and its hold queue gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_account_holds_its_messages_and_sends_them_once_in_order_when_it_heals() {
    const PAUSE: &str = "acme|meta|1234567890";
    const CUSTOMERS: usize = 100;
    let fake = MockServer::start().await;
    broken_meta(&fake).await;
    let h = Harness::start("pause-hold", &options(&fake, r#"["whatsapp"]"#)).await;
    let second = dispatcher::app::start(h.settings.clone())
        .await
        .expect("a second dispatcher starts");
    let first = round(0, 1, "hold");
    h.publish_all(&first).await;
    until(
        "the first message meets the broken account and is held",
        Duration::from_secs(20),
        || async { h.held(PAUSE).await == 1 },
    )
    .await;
    assert_eq!(received(&fake, "POST", MESSAGES).await.len(), 1);
    // A dinner peak meanwhile: 5 rounds of 100 customers.
    let mut all = first.clone();
    for r in 1..=5 {
        let events = round(r, CUSTOMERS, "hold");
        h.publish_all(&events).await;
        all.extend(events);
        let want = (1 + CUSTOMERS * r) as u32;
        until(
            &format!("round {r} held"),
            Duration::from_secs(60),
            || async { h.held(PAUSE).await == want },
        )
        .await;
    }
    // Probes come (1 s, 2 s, 4 s apart); messages do not.
    until(
        "probes reach the provider",
        Duration::from_secs(20),
        || async { received(&fake, "GET", NUMBER).await.len() >= 3 },
    )
    .await;
    assert_eq!(
        received(&fake, "POST", MESSAGES).await.len(),
        1,
        "after the first failure only probes reach a paused account"
    );
    assert_eq!(
        h.queue_len(&h.topology.dead_letter_queue()).await,
        0,
        "nothing dead-lettered"
    );

    // Healthy again, a little slow: the drain takes a few seconds.
    fake.reset().await;
    Mock::given(method("POST"))
        .and(path(MESSAGES))
        .respond_with(meta_ok("wamid.OK").set_delay(Duration::from_millis(10)))
        .mount(&fake)
        .await;
    Mock::given(method("GET"))
        .and(path(NUMBER))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"id": "1234567890"})),
        )
        .mount(&fake)
        .await;
    until(
        "the probe resumes the account and the drain begins",
        Duration::from_secs(60),
        || async { received(&fake, "POST", MESSAGES).await.len() >= 2 },
    )
    .await;
    let late = round(6, 50, "hold");
    h.publish_all(&late).await;
    all.extend(late);
    until(
        "every message is sent",
        Duration::from_secs(120),
        || async { received(&fake, "POST", MESSAGES).await.len() >= all.len() },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let sent = keys_in_order(&received(&fake, "POST", MESSAGES).await);
    assert_eq!(sent.len(), all.len(), "{} sends", all.len());
    for e in &all {
        let key = format!("{}/whatsapp", e.dedup_key);
        let n = sent.iter().filter(|k| **k == key).count();
        assert_eq!(n, 1, "{} sent {n} times", e.dedup_key);
    }
    assert_each_customer_in_order(&sent);
    let pauses = h.running().worker.store.pauses().await.expect("pauses");
    assert!(pauses.is_empty(), "live again: {pauses:?}");
    assert!(
        common::hold_ids(&h.prefix).await.is_empty(),
        "the hold is over"
    );
    let mut released = 0;
    for addr in [h.running().addr, second.addr] {
        let metrics = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        assert!(
            metrics.contains("vestnik_dispatcher_second_attempts_total 0"),
            "no attempt was burnt: no second attempt scheduled"
        );
        released += metrics
            .lines()
            .find(|l| {
                l.starts_with(
                    r#"vestnik_dispatcher_paused_messages_total{provider="meta",what="released"}"#,
                )
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0);
    }
    assert_eq!(
        released,
        all.len() as u64,
        "every message went through the hold queue"
    );
    second.stop().await;
    h.finish().await;
}

/// Meta answers the first `ok` sends, then 190 (the account broke again).
struct BreaksAfter {
    ok: usize,
    seen: AtomicUsize,
}

impl Respond for BreaksAfter {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        if self.seen.fetch_add(1, Ordering::SeqCst) < self.ok {
            meta_ok("wamid.OK")
        } else {
            token_expired()
        }
    }
}

/// Heals for 30 messages, then breaks again mid-drain: the messages that met
/// the failure (those the drain window had out) go back to the head, the
/// rest stays held (nothing dead-lettered, no attempt burnt); healed for
/// good, the drain goes on from them, each sent once, each customer's in
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_that_breaks_again_mid_drain_keeps_the_rest_held_in_order() {
    const PAUSE: &str = "acme|meta|1234567890";
    let fake = MockServer::start().await;
    broken_meta(&fake).await;
    let h = Harness::start("hold-rebreak", &options(&fake, r#"["whatsapp"]"#)).await;
    let mut all = round(0, 1, "rebreak");
    h.publish_all(&all).await;
    until("the first is held", Duration::from_secs(20), || async {
        h.held(PAUSE).await == 1
    })
    .await;
    for r in 1..=2 {
        let events = round(r, 50, "rebreak");
        h.publish_all(&events).await;
        all.extend(events);
        let want = (1 + 50 * r) as u32;
        until(
            &format!("round {r} held"),
            Duration::from_secs(30),
            || async { h.held(PAUSE).await == want },
        )
        .await;
    }

    // Healthy by the probe, for 30 sends.
    fake.reset().await;
    Mock::given(method("POST"))
        .and(path(MESSAGES))
        .respond_with(BreaksAfter {
            ok: 30,
            seen: AtomicUsize::new(0),
        })
        .mount(&fake)
        .await;
    Mock::given(method("GET"))
        .and(path(NUMBER))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"id": "1234567890"})),
        )
        .up_to_n_times(1)
        .mount(&fake)
        .await;
    Mock::given(method("GET"))
        .and(path(NUMBER))
        .respond_with(token_expired())
        .mount(&fake)
        .await;
    until(
        "it breaks again mid-drain",
        Duration::from_secs(60),
        || async { received(&fake, "POST", MESSAGES).await.len() >= 31 },
    )
    .await;
    until("the rest stays held", Duration::from_secs(20), || async {
        h.held(PAUSE).await == (all.len() - 30) as u32
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = keys_in_order(&received(&fake, "POST", MESSAGES).await);
    // The window had up to 16 out when the account broke: each met the
    // failure and went back; nothing was taken after.
    assert!(
        (31..=46).contains(&before.len()),
        "30 sent, the window's others met the failure, none after: {}",
        before.len()
    );
    let pauses = h.running().worker.store.pauses().await.expect("pauses");
    assert_eq!(pauses.len(), 1, "{pauses:?}");
    assert!(!pauses[0].draining, "paused again: {:?}", pauses[0]);
    assert_eq!(h.queue_len(&h.topology.dead_letter_queue()).await, 0);

    healthy_meta(&fake).await;
    until("every message is sent", Duration::from_secs(90), || async {
        received(&fake, "POST", MESSAGES).await.len() >= all.len() - 30
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = keys_in_order(&received(&fake, "POST", MESSAGES).await);
    let met = &before[30..];
    for k in met {
        let at = after.iter().position(|a| a == k).expect("sent again");
        assert!(
            at < 16,
            "a message that met the failure went back to the head: in the first window, not at {at}"
        );
    }
    let sent: Vec<String> = before[..30].iter().chain(after.iter()).cloned().collect();
    assert_eq!(sent.len(), all.len());
    for e in &all {
        let key = format!("{}/whatsapp", e.dedup_key);
        assert_eq!(sent.iter().filter(|k| **k == key).count(), 1, "{key}");
    }
    assert_each_customer_in_order(&sent);
    assert_eq!(h.queue_len(&h.topology.dead_letter_queue()).await, 0);
    h.finish().await;
}

/// The dispatcher draining a hold is stopped half-way (a deploy): another
/// takes the hold over and goes on from the head, each message once, in
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_cut_short_by_a_deploy_is_taken_over_in_order() {
    const PAUSE: &str = "acme|meta|1234567890";
    let fake = MockServer::start().await;
    broken_meta(&fake).await;
    let mut o = options(&fake, r#"["whatsapp"]"#);
    // Strict account order: one message at a time, whoever drains.
    o.dispatcher_extra += "hold_drain_window = 1\n";
    let mut h = Harness::start("hold-takeover", &o).await;
    let mut all = round(0, 1, "takeover");
    h.publish_all(&all).await;
    until("the first is held", Duration::from_secs(20), || async {
        h.held(PAUSE).await == 1
    })
    .await;
    for r in 1..=2 {
        let events = round(r, 100, "takeover");
        h.publish_all(&events).await;
        all.extend(events);
        let want = (1 + 100 * r) as u32;
        until(
            &format!("round {r} held"),
            Duration::from_secs(30),
            || async { h.held(PAUSE).await == want },
        )
        .await;
    }
    fake.reset().await;
    Mock::given(method("POST"))
        .and(path(MESSAGES))
        .respond_with(meta_ok("wamid.OK").set_delay(Duration::from_millis(20)))
        .mount(&fake)
        .await;
    Mock::given(method("GET"))
        .and(path(NUMBER))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"id": "1234567890"})),
        )
        .mount(&fake)
        .await;
    until("the drain begins", Duration::from_secs(60), || async {
        received(&fake, "POST", MESSAGES).await.len() >= 20
    })
    .await;
    let second = dispatcher::app::start(h.settings.clone())
        .await
        .expect("a second dispatcher starts");
    h.stop_dispatcher().await;
    let stopped_at = received(&fake, "POST", MESSAGES).await.len();
    assert!(
        stopped_at < all.len(),
        "stopped half-way ({stopped_at} sent)"
    );
    until(
        "the other finishes the drain",
        Duration::from_secs(90),
        || async { received(&fake, "POST", MESSAGES).await.len() >= all.len() },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = keys_in_order(&received(&fake, "POST", MESSAGES).await);
    assert_eq!(sent.len(), all.len());
    for e in &all {
        let key = format!("{}/whatsapp", e.dedup_key);
        assert_eq!(sent.iter().filter(|k| **k == key).count(), 1, "{key}");
    }
    let rounds: Vec<usize> = sent.iter().map(|k| round_of(k)).collect();
    assert!(
        rounds.windows(2).all(|w| w[0] <= w[1]),
        "in the order held: {rounds:?}"
    );
    assert!(
        second
            .worker
            .store
            .pauses()
            .await
            .expect("pauses")
            .is_empty()
    );
    second.stop().await;
    h.finish().await;
}

/// Whether the hold queue of pause `id` exists.
async fn hold_queue_exists(h: &Harness, id: &str) -> bool {
    let conn = common::connect().await;
    let ch = conn.create_channel().await.expect("channel");
    let queue = h.topology.hold_queue(&dispatcher::hold::queue_key(id));
    let exists = ch
        .queue_declare(
            queue.as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .is_ok();
    let _ = conn.close(200, "done".into()).await;
    exists
}

/// Marks pause `id`'s drained queue as drained over a minute ago (the
/// pure wait before the delete, skipped).
async fn drained_long_ago(h: &Harness, id: &str) {
    let mut c = common::redis_conn().await;
    let at = chrono::Utc::now().timestamp_millis() - 61_000;
    let _: i64 = deadpool_redis::redis::cmd("HSET")
        .arg(format!("{}:pauses", h.prefix))
        .arg(format!("~idle|{id}"))
        .arg(at)
        .query_async(&mut c)
        .await
        .expect("HSET");
}

/// A drained hold queue is deleted a minute later, unless a message landed
/// in it after all (a holder the drain did not wait for): that one is
/// drained and sent, and the queue deleted after the next minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_hold_queue_is_deleted_unless_a_late_message_landed_in_it() {
    const PAUSE: &str = "acme|meta|1234567890";
    let fake = MockServer::start().await;
    healthy_meta(&fake).await;
    let h = Harness::start("hold-delete", &options(&fake, r#"["whatsapp"]"#)).await;
    let store = &h.running().worker.store;
    store.pause_by_hand(PAUSE).await.expect("paused");
    let held = round(0, 1, "delete");
    h.publish_all(&held).await;
    until("held", Duration::from_secs(20), || async {
        h.held(PAUSE).await == 1
    })
    .await;
    assert!(store.resume(PAUSE).await.expect("resumed"));
    until("drained and sent", Duration::from_secs(20), || async {
        received(&fake, "POST", MESSAGES).await.len() == 1
    })
    .await;
    until("marked to delete", Duration::from_secs(10), || async {
        common::idle_hold_ids(&h.prefix).await == vec![PAUSE.to_string()]
    })
    .await;
    assert!(hold_queue_exists(&h, PAUSE).await, "kept for a minute");

    // A late message lands in the drained queue.
    let late = round(1, 1, "delete").remove(0);
    {
        let conn = common::connect().await;
        let ch = conn.create_channel().await.expect("channel");
        ch.confirm_select(Default::default())
            .await
            .expect("confirms");
        ch.basic_publish(
            h.topology.exchange().into(),
            shared::topology::Topology::hold_route(&dispatcher::hold::queue_key(PAUSE))
                .as_str()
                .into(),
            lapin::options::BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &late.to_json(),
            shared::topology::event_properties(&late),
        )
        .await
        .expect("publish")
        .await
        .expect("confirmed");
        let _ = conn.close(200, "done".into()).await;
    }
    drained_long_ago(&h, PAUSE).await;
    until(
        "the late message is sent, not deleted",
        Duration::from_secs(20),
        || async { received(&fake, "POST", MESSAGES).await.len() == 2 },
    )
    .await;
    let keys = keys_in_order(&received(&fake, "POST", MESSAGES).await);
    assert_eq!(keys[1], format!("{}/whatsapp", late.dedup_key));
    assert!(hold_queue_exists(&h, PAUSE).await);

    until(
        "marked to delete again",
        Duration::from_secs(10),
        || async { common::idle_hold_ids(&h.prefix).await == vec![PAUSE.to_string()] },
    )
    .await;
    drained_long_ago(&h, PAUSE).await;
    until("deleted", Duration::from_secs(20), || async {
        !hold_queue_exists(&h, PAUSE).await
    })
    .await;
    assert!(common::hold_ids(&h.prefix).await.is_empty());
    assert!(common::idle_hold_ids(&h.prefix).await.is_empty());
    // Paused again later: a new queue, held and released as before.
    store.pause_by_hand(PAUSE).await.expect("paused");
    let again = round(2, 1, "delete");
    h.publish_all(&again).await;
    until("held again", Duration::from_secs(20), || async {
        h.held(PAUSE).await == 1
    })
    .await;
    assert!(store.resume(PAUSE).await.expect("resumed"));
    until("sent", Duration::from_secs(20), || async {
        received(&fake, "POST", MESSAGES).await.len() == 3
    })
    .await;
    assert_eq!(h.queue_len(&h.topology.dead_letter_queue()).await, 0);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_another_channel_the_messages_go_there_at_once() {
    let fake = MockServer::start().await;
    broken_meta(&fake).await;
    Mock::given(method("POST"))
        .and(path("/sms/send"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "status": "OK", "status_code": 100,
            "sms": {"79161234567": {"status": "OK", "status_code": 100, "sms_id": "000000-1"}}
        })))
        .mount(&fake)
        .await;
    let mut o = options(&fake, r#"["whatsapp", "sms"]"#);
    o.providers.push_str(&format!(
        "\n[tenants.providers.smsru]\nbase_url = \"{}\"\napi_id = \"test-api-id-0001\"\n",
        fake.uri()
    ));
    let h = Harness::start("pause-fallback", &o).await;
    // The issue's 500 events; SMS.ru's guard limit (20/s) paces them.
    let all = events(500, "pause-fallback");
    h.publish_all(&all).await;
    until("all 500 go by SMS", Duration::from_secs(120), || async {
        received(&fake, "POST", "/sms/send").await.len() >= all.len()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(received(&fake, "POST", "/sms/send").await.len(), all.len());
    let whatsapp = received(&fake, "POST", MESSAGES).await.len();
    // The messages taken before the pause was written may each have met
    // the broken account once; none after.
    assert!(
        (1..=8).contains(&whatsapp),
        "WhatsApp tried {whatsapp} times for 500 messages (concurrency 8)"
    );
    assert_eq!(h.queue_len(&h.topology.dead_letter_queue()).await, 0);
    let metrics = reqwest::get(format!("http://{}/metrics", h.running().addr))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("vestnik_dispatcher_second_attempts_total 0"),
        "no attempt was burnt"
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_held_past_the_tenants_limit_is_dead_lettered() {
    let fake = MockServer::start().await;
    broken_meta(&fake).await;
    let mut o = options(&fake, r#"["whatsapp"]"#);
    // What is under test: the limit itself.
    o.tenant_extra = "hold_max_secs = 2\n".into();
    let h = Harness::start("pause-expire", &o).await;
    let e = events(1, "pause-expire").remove(0);
    h.publish(&e).await;
    let letters = h.dead_letters(1, Duration::from_secs(30)).await;
    assert_eq!(letters.len(), 1);
    let (_, headers) = &letters[0];
    assert_eq!(
        header(headers, "x-dlq-reason").as_deref(),
        Some("expired_while_paused")
    );
    assert_eq!(received(&fake, "POST", MESSAGES).await.len(), 1);
    h.finish().await;
}

/// Meta 368 (blocked for policy) leaves the phone-number read working: the
/// probe resumes the account, the held message fails again, the account is
/// paused again. Each time it waits longer (2 s, 4 s, 8 s ...): in 20 s
/// Meta sees a handful of sends, not one a second; nothing is burnt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breakage_the_probe_cannot_see_is_retried_on_the_backoff_not_every_second() {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(MESSAGES))
        .respond_with(ResponseTemplate::new(400).set_body_json(serde_json::json!({
            "error": {"message": "Temporarily blocked for policies violations",
                      "type": "OAuthException", "code": 368}
        })))
        .mount(&fake)
        .await;
    Mock::given(method("GET"))
        .and(path(NUMBER))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"id": "1234567890"})),
        )
        .mount(&fake)
        .await;
    let h = Harness::start("pause-again", &options(&fake, r#"["whatsapp"]"#)).await;
    // One customer's three messages: a drain sends the head, the others
    // wait behind it, so each try is one send.
    let three: Vec<shared::Event> = (0..3)
        .map(|i| {
            event(
                EventKind::OrderCompleted,
                &format!("org:pause-again-{i}"),
                "+79161234567",
            )
        })
        .collect();
    h.publish_all(&three).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let sends = received(&fake, "POST", MESSAGES).await.len();
    // The first failures (up to the three at once), then one per backoff
    // step: 1 + 2 + 4 + 8 s fit in 20 s, 16 s more would not. Resumed to
    // fail every second or two, it would be ten or more.
    assert!(
        (2..=8).contains(&sends),
        "{sends} sends reached Meta in 20 s while it stayed blocked"
    );
    let p = h
        .running()
        .worker
        .store
        .paused("acme|meta|1234567890")
        .await
        .expect("redis")
        .expect("still paused");
    assert!(p.probes >= 3, "the backoff went on: {p:?}");
    assert_eq!(h.held("acme|meta|1234567890").await, 3, "all still held");
    assert_eq!(h.queue_len(&h.topology.dead_letter_queue()).await, 0);
    h.finish().await;
}

/// The account heals, but its provider is slow: the second held message
/// reaches the head of the draining queue past the tenant's limit and goes
/// to the DLQ, not to a customer hours late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_message_that_expires_while_the_queue_drains_is_dead_lettered() {
    let fake = MockServer::start().await;
    broken_meta(&fake).await;
    let mut o = options(&fake, r#"["whatsapp"]"#);
    // What is under test: the limit itself.
    o.tenant_extra = "hold_max_secs = 8\n".into();
    // Meta slow, not timing out: each send takes 9 s and answers.
    o.providers = o
        .providers
        .replace("timeout_ms = 2000", "timeout_ms = 15000");
    let h = Harness::start("pause-expire-drain", &o).await;
    // One customer's two messages: the second waits for the first.
    let two: Vec<shared::Event> = (0..2)
        .map(|i| {
            event(
                EventKind::OrderCompleted,
                &format!("org:pause-expire-drain-{i}"),
                "+79161234567",
            )
        })
        .collect();
    h.publish_all(&two).await;
    until("both held", Duration::from_secs(20), || async {
        h.held("acme|meta|1234567890").await == 2
    })
    .await;

    // Healthy again (the probe answers at once), each send taking 9 s.
    fake.reset().await;
    Mock::given(method("POST"))
        .and(path(MESSAGES))
        .respond_with(meta_ok("wamid.SLOW").set_delay(Duration::from_secs(9)))
        .mount(&fake)
        .await;
    Mock::given(method("GET"))
        .and(path(NUMBER))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"id": "1234567890"})),
        )
        .mount(&fake)
        .await;

    let letters = h.dead_letters(1, Duration::from_secs(40)).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(
        header(&letters[0].1, "x-dlq-reason").as_deref(),
        Some("expired_while_paused")
    );
    until("the account is live", Duration::from_secs(20), || async {
        h.held("acme|meta|1234567890").await == 0
    })
    .await;
    assert_eq!(
        received(&fake, "POST", MESSAGES).await.len(),
        1,
        "the head went out; the one behind it had waited too long"
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_sees_a_paused_account_and_resumes_it() {
    const TOKEN: &str = "admin-token-for-tests-0001";
    let fake = MockServer::start().await;
    broken_meta(&fake).await;
    let mut o = options(&fake, r#"["whatsapp"]"#);
    o.extra.push_str(&format!(
        "\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"
    ));
    let h = Harness::start("pause-admin", &o).await;
    let e = events(1, "pause-admin").remove(0);
    h.publish(&e).await;
    let admin = format!("http://{}", h.running().admin_addr.expect("admin API"));
    let http = reqwest::Client::new();
    let started = Instant::now();
    let listed = loop {
        let r = http
            .get(format!("{admin}/admin/pauses"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("request");
        let listed: serde_json::Value = r.json().await.unwrap_or_default();
        if listed["count"] == 1 {
            break listed;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "not listed: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        listed["paused"][0]["id"], "acme|meta|1234567890",
        "{listed}"
    );
    assert_eq!(listed["paused"][0]["provider"], "meta");
    // The number still reads as broken (no probe resumes it), but sends
    // work again: the admin knows better.
    fake.reset().await;
    Mock::given(method("POST"))
        .and(path(MESSAGES))
        .respond_with(meta_ok("wamid.OK"))
        .mount(&fake)
        .await;
    Mock::given(method("GET"))
        .and(path(NUMBER))
        .respond_with(token_expired())
        .mount(&fake)
        .await;
    let r = http
        .post(format!("{admin}/admin/pauses/resume"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"id": "acme|meta|1234567890"}))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 200);
    until(
        "the held message is sent",
        Duration::from_secs(20),
        || async { received(&fake, "POST", MESSAGES).await.len() == 1 },
    )
    .await;
    let r = http
        .post(format!("{admin}/admin/pauses/resume"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"id": "acme|meta|1234567890"}))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 404, "no longer paused");
    h.finish().await;
}

/// An admin pauses a healthy account by hand: its messages are held, no
/// probe resumes it (the provider is healthy all along), and nothing reaches
/// the provider until the admin resumes it; then each is sent once. An id
/// naming no configured account is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_paused_by_hand_holds_until_resumed_by_hand() {
    const TOKEN: &str = "admin-token-for-tests-0001";
    let fake = MockServer::start().await;
    healthy_meta(&fake).await;
    let mut o = options(&fake, r#"["whatsapp"]"#);
    o.extra.push_str(&format!(
        "\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"
    ));
    let h = Harness::start("pause-by-hand", &o).await;
    let admin = format!("http://{}", h.running().admin_addr.expect("admin API"));
    let http = reqwest::Client::new();
    let post = |path: &'static str, id: &'static str| {
        http.post(format!("{admin}{path}"))
            .bearer_auth(TOKEN)
            .json(&serde_json::json!({ "id": id }))
            .send()
    };
    let r = post("/admin/pauses/pause", "acme|meta|999")
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 404, "not an account of acme");
    let r = post("/admin/pauses/pause", "acme|meta|1234567890")
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 200);
    for e in events(3, "by-hand") {
        h.publish(&e).await;
    }
    // Held, not probed: several probe periods pass with nothing sent.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(received(&fake, "POST", MESSAGES).await.is_empty(), "held");
    assert!(
        received(&fake, "GET", NUMBER).await.is_empty(),
        "not probed"
    );
    let listed: serde_json::Value = http
        .get(format!("{admin}/admin/pauses"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(listed["paused"][0]["manual"], true, "{listed}");
    assert_eq!(listed["paused"][0]["reason"], "admin", "{listed}");
    let r = post("/admin/pauses/resume", "acme|meta|1234567890")
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 200);
    until(
        "the held messages are sent",
        Duration::from_secs(20),
        || async { received(&fake, "POST", MESSAGES).await.len() >= 3 },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let sent = received(&fake, "POST", MESSAGES).await;
    let mut unique = keys(&sent);
    unique.dedup();
    assert_eq!((sent.len(), unique.len()), (3, 3), "each sent once");
    h.finish().await;
}

/// Meta 130497: the account may not write to this recipient's country.
/// That country alone is paused for the account (not probed: a probe
/// cannot see a restriction lifted); messages to other countries still go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_country_meta_bars_is_paused_for_that_account_only() {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(MESSAGES))
        .and(wiremock::matchers::body_string_contains("+7701"))
        .respond_with(ResponseTemplate::new(400).set_body_json(serde_json::json!({
            "error": {"message": "Business account is restricted from messaging users in this country.",
                "type": "OAuthException", "code": 130497}
        })))
        .with_priority(1)
        .mount(&fake)
        .await;
    Mock::given(method("POST"))
        .and(path(MESSAGES))
        .respond_with(meta_ok("wamid.OK"))
        .mount(&fake)
        .await;
    let h = Harness::start("pause-country", &options(&fake, r#"["whatsapp"]"#)).await;
    let kz = |i: usize| {
        event(
            EventKind::OrderCompleted,
            &format!("org:kz-{i}"),
            &format!("+770112345{i:02}"),
        )
    };
    h.publish(&kz(0)).await;
    until(
        "the first message meets the restriction",
        Duration::from_secs(20),
        || async { !received(&fake, "POST", MESSAGES).await.is_empty() },
    )
    .await;
    let id = "acme|meta|1234567890/country/KZ";
    until("KZ is paused", Duration::from_secs(10), || async {
        h.running()
            .worker
            .store
            .pauses()
            .await
            .is_ok_and(|p| p.iter().any(|p| p.id == id && p.notice))
    })
    .await;
    for i in 1..4 {
        h.publish(&kz(i)).await;
    }
    let ru = events(3, "country-ru");
    for e in &ru {
        h.publish(e).await;
    }
    until("the Russian ones go", Duration::from_secs(20), || async {
        received(&fake, "POST", MESSAGES).await.len() >= 4
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sent = received(&fake, "POST", MESSAGES).await;
    let to_kz = sent
        .iter()
        .filter(|r| String::from_utf8_lossy(&r.body).contains("+7701"))
        .count();
    assert_eq!(
        (sent.len(), to_kz),
        (4, 1),
        "the three Russian orders, and only the first Kazakh one"
    );
    assert!(
        received(&fake, "GET", NUMBER).await.is_empty(),
        "not probed"
    );
    let pauses = h.running().worker.store.pauses().await.expect("pauses");
    assert_eq!(
        pauses.len(),
        1,
        "the account itself is not paused: {pauses:?}"
    );
    assert!(pauses[0].reason.contains("130497"), "{}", pauses[0].reason);
    assert_eq!(
        h.queue_len(&h.topology.dead_letter_queue()).await,
        0,
        "held, not dead-lettered"
    );
    h.finish().await;
}
