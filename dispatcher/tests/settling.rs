//! How a delivery settles when things go wrong around it: a lease held by
//! another (possibly dead) dispatcher, a send whose outcome is uncertain, a
//! worker task that panics, and bulk replays that must leave uncertain
//! letters alone.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Harness, Options, event, header, meta_ok, redis_conn, requests};
use deadpool_redis::redis;
use dispatcher::dlq::{Dlq, Filter};
use dispatcher::providers::{Address, Message, Outcome, Provider};
use futures_util::future::BoxFuture;
use shared::EventKind;
use shared::tenant::Channel;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer};

/// A lease held by a dispatcher that died (its TTL not yet run out) must not
/// stall the survivor: with one worker slot, the held event waits in the
/// broker and the next event is sent at once; the held one is sent once the
/// lease has expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lease_waits_in_the_broker_and_stalls_nothing() {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(meta_ok("wamid.ok"))
        .mount(&fake)
        .await;
    let mut h = Harness::prepare("lease-wait", &Options::meta(&fake)).await;
    h.settings.dispatcher.concurrency = 1;
    let held = event(EventKind::OrderCompleted, "org:o-held:x", "+79161110001");
    let free = event(EventKind::OrderCompleted, "org:o-free:x", "+79161110002");
    // What a SIGKILLed dispatcher leaves: its lease, running out in 6 s.
    let lease = common::mark(&h.prefix, "lease", &held.dedup_key, "whatsapp");
    let mut c = redis_conn().await;
    let _: () = redis::cmd("SET")
        .arg(&lease)
        .arg("a-dead-worker")
        .arg("PX")
        .arg(6000)
        .query_async(&mut c)
        .await
        .unwrap();
    h.publish(&held).await;
    h.publish(&free).await;
    let h = h.with_dispatcher().await;

    let first = requests(&fake, 1, Duration::from_secs(3)).await;
    assert_eq!(
        first.len(),
        1,
        "the free event is not held up by the held one"
    );
    assert!(
        String::from_utf8_lossy(&first[0].body).contains("79161110002"),
        "and it is the free one"
    );
    let both = requests(&fake, 2, Duration::from_secs(20)).await;
    assert_eq!(
        both.len(),
        2,
        "the held event is sent once its lease expired"
    );
    assert!(String::from_utf8_lossy(&both[1].body).contains("79161110001"));
    assert!(h.running().worker.metrics.lease_waits.get() >= 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        fake.received_requests().await.unwrap().len(),
        2,
        "once each"
    );
    h.finish().await;
}

/// SMS.ru's answer to a send.
fn sms_ok() -> wiremock::ResponseTemplate {
    wiremock::ResponseTemplate::new(200).set_body_json(serde_json::json!({
        "status": "OK", "status_code": 100,
        "sms": {"79161234567": {"status": "OK", "status_code": 100, "sms_id": "000000-20000001"}}
    }))
}

/// A send that timed out after the request went out (SMS.ru takes no
/// idempotency key and calls nothing back) is uncertain: dead-lettered, and
/// neither a duplicate webhook nor a bulk replay sends it again; a replay by
/// id does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncertain_send_is_not_resent_by_duplicates_or_bulk_replay() {
    let fake = MockServer::start().await;
    // Longer than the provider timeout below (2 s).
    Mock::given(method("POST"))
        .respond_with(sms_ok().set_delay(Duration::from_secs(3)))
        .mount(&fake)
        .await;
    let mut o = Options::meta(&fake);
    o.channels = r#"["sms", "email"]"#;
    o.providers = format!(
        "\n[tenants.providers.smsru]\nbase_url = \"{}\"\napi_id = \"test-api-id-0001\"\ntimeout_ms = 2000\n",
        fake.uri()
    );
    let h = Harness::start("uncertain", &o).await;
    let e = event(EventKind::OrderCompleted, "org:o-unc:x", "+79161234567");
    h.publish(&e).await;
    let dlq = Dlq::connect(
        &shared::amqp::Endpoints::one(common::AMQP),
        h.topology.clone(),
    )
    .await
    .unwrap();
    let letters = wait_letters(&dlq, 1).await;
    assert_eq!(letters[0].reason, "uncertain");
    assert_eq!(fake.received_requests().await.unwrap().len(), 1);

    // The same order again (a duplicate webhook): not sent, on any channel.
    let mut again = e.clone();
    again.id = uuid::Uuid::now_v7();
    h.publish(&again).await;
    let letters = wait_letters(&dlq, 2).await;
    assert!(letters.iter().all(|l| l.reason == "uncertain"));
    assert_eq!(fake.received_requests().await.unwrap().len(), 1);

    // A bulk replay keeps them; the provider answers quickly now.
    fake.reset().await;
    Mock::given(method("POST"))
        .respond_with(sms_ok())
        .mount(&fake)
        .await;
    let tenant = Filter {
        tenant: Some("acme".into()),
        ..Filter::default()
    };
    let store = h.running().worker.store.clone();
    let r = dlq.replay(&tenant, &store, false, |_, _| {}).await.unwrap();
    assert_eq!((r.replayed, r.uncertain_kept), (0, 2));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(fake.received_requests().await.unwrap().is_empty());

    // By id (the admin checked it did not arrive): sent once.
    let by_id = Filter {
        id: Some(e.id.to_string()),
        ..Filter::default()
    };
    let r = dlq.replay(&by_id, &store, false, |_, _| {}).await.unwrap();
    assert_eq!(r.replayed, 1);
    assert_eq!(requests(&fake, 1, Duration::from_secs(10)).await.len(), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fake.received_requests().await.unwrap().len(), 1);
    h.finish().await;
}

/// A provider module with a bug: it panics for one recipient.
struct Panicky {
    sent: Arc<AtomicUsize>,
}

impl Provider for Panicky {
    fn name(&self) -> &'static str {
        "meta"
    }

    fn channel(&self) -> Channel {
        Channel::Whatsapp
    }

    fn send<'a>(&'a self, m: &'a Message) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let Address::Phone(p) = &m.to else {
                unreachable!("whatsapp goes to phones")
            };
            if p.e164().ends_with("0000") {
                panic!("index out of range for {}", p.e164());
            }
            self.sent.fetch_add(1, Ordering::SeqCst);
            Outcome::Sent {
                message_id: "wamid.ok".into(),
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_task_dead_letters_its_event_and_the_consumer_goes_on() {
    let fake = MockServer::start().await;
    let h = Harness::prepare("panic", &Options::meta(&fake)).await;
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let running = dispatcher::app::start_with(h.settings.clone(), move |w| {
        w.edit_tenants(|tenants| {
            let acme = tenants.get_mut("acme").expect("tenant acme");
            acme.routing
                .providers
                .insert(Channel::Whatsapp, vec![Arc::new(Panicky { sent: counter })]);
        });
    })
    .await
    .unwrap();
    h.publish(&event(
        EventKind::OrderCompleted,
        "org:o-bug:x",
        "+79160000000",
    ))
    .await;
    h.publish(&event(
        EventKind::OrderCompleted,
        "org:o-ok:x",
        "+79161234567",
    ))
    .await;

    let dead = h.dead_letters(1, Duration::from_secs(10)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        header(&dead[0].1, "x-dlq-reason").as_deref(),
        Some("internal")
    );
    let error = header(&dead[0].1, "x-dlq-error").unwrap();
    assert!(
        error.starts_with("worker panicked: index out of range"),
        "{error}"
    );
    assert!(
        !error.contains("79160000000"),
        "the phone is masked: {error}"
    );
    for _ in 0..50 {
        if sent.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        sent.load(Ordering::SeqCst),
        1,
        "the next event is still sent"
    );
    assert_eq!(running.worker.metrics.panics.get(), 1);
    running.stop().await;
    h.finish().await;
}

async fn wait_letters(dlq: &Dlq, n: usize) -> Vec<dispatcher::dlq::Entry> {
    for _ in 0..150 {
        let l = dlq.list(&Filter::default()).await.unwrap();
        if l.len() >= n {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    dlq.list(&Filter::default()).await.unwrap()
}

/// The `sending` mark says the request may be on the wire: the claim sets
/// it (the write follows at once), and a send that waits for a rate-limit
/// permit lifts it meanwhile. A worker that died in that wait leaves a
/// message that is simply sent once its lease has expired; one that died
/// after its claim without waiting leaves it uncertain. A worker whose lease
/// ran out meanwhile may not write at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_send_that_may_be_on_the_wire_is_uncertain_after_a_crash() {
    use dispatcher::delivery_state::{Claim, Store};
    let prefix = common::unique("write-gate");
    let lease = Duration::from_secs(2);
    let store = Store::new(
        &common::redis_settings(&prefix),
        lease,
        Duration::from_secs(60),
    )
    .unwrap();
    let wa = Channel::Whatsapp;
    // Died while waiting for a rate-limit permit.
    assert_eq!(
        store.claim("waiting", wa, &[], "dead-1", 1).await.unwrap(),
        Claim::Acquired
    );
    store.lift_sending("waiting", wa, "dead-1").await.unwrap();
    // Died right after its claim, at the write.
    assert_eq!(
        store.claim("writing", wa, &[], "dead-2", 1).await.unwrap(),
        Claim::Acquired
    );
    // Meanwhile nobody else may send either.
    assert_eq!(
        store.claim("waiting", wa, &[], "other", 1).await.unwrap(),
        Claim::Busy
    );
    assert!(!store.resume_sending("waiting", wa, "other").await.unwrap());

    tokio::time::sleep(lease + Duration::from_millis(300)).await;
    assert_eq!(
        store
            .claim("waiting", wa, &[], "survivor", 1)
            .await
            .unwrap(),
        Claim::Acquired,
        "never written: sent by the survivor"
    );
    assert_eq!(
        store
            .claim("writing", wa, &[], "survivor", 1)
            .await
            .unwrap(),
        Claim::Uncertain {
            mark: "dead-2".into()
        },
        "may have reached the provider: not sent again (the mark tells whose)"
    );
    assert!(
        !store.resume_sending("waiting", wa, "dead-1").await.unwrap(),
        "a worker whose lease ran out does not write"
    );
    common::delete_keys(&prefix).await;
}

/// A claim or take-over whose answer was lost (a timeout, a Redis failover)
/// is retried by its worker with the same token: it finds its own lease and
/// mark and acquires again, instead of waiting for its own lease and then
/// finding its own send "uncertain" although nothing went out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_retried_after_its_answer_was_lost_is_still_its_own() {
    use dispatcher::delivery_state::{Claim, Phase, Sending, Store};
    let prefix = common::unique("claim-retry");
    let store = Store::new(
        &common::redis_settings(&prefix),
        Duration::from_secs(120),
        Duration::from_secs(60),
    )
    .unwrap();
    let wa = Channel::Whatsapp;
    for _ in 0..2 {
        assert_eq!(
            store.claim("lost", wa, &[], "a1-mine", 1).await.unwrap(),
            Claim::Acquired
        );
    }
    assert_eq!(store.phase("lost", wa).await.unwrap(), Phase::Sending);
    assert_eq!(
        store.claim("lost", wa, &[], "a1-theirs", 1).await.unwrap(),
        Claim::Busy,
        "another worker's claim is still refused"
    );
    // Uncertain (a worker died mid-send), taken over; the take-over retried.
    store
        .release("lost", wa, "a1-mine", Sending::Keep)
        .await
        .unwrap();
    assert_eq!(
        store.claim("lost", wa, &[], "a2-next", 2).await.unwrap(),
        Claim::Uncertain {
            mark: "a1-mine".into()
        }
    );
    for _ in 0..2 {
        assert!(
            store
                .take_over("lost", wa, "a1-mine", "a2-next")
                .await
                .unwrap()
        );
    }
    assert!(
        !store
            .take_over("lost", wa, "a1-mine", "a2-other")
            .await
            .unwrap(),
        "only once"
    );
    common::delete_keys(&prefix).await;
}
