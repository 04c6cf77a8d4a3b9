//! The hold's hand-over from draining to live, against the real Redis and
//! a model of the queue: holders (dispatchers holding a message for the
//! account: register, publish after a random broker delay, leave) race a
//! drainer (take the head; when empty, seal, look again, finish). Whatever
//! the interleaving, nothing is stranded in the queue once the hold is over,
//! and every message sent directly (its holder found the pause gone) went
//! after every message the drainer released: nothing overtakes a held one.

mod common;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use dispatcher::delivery_state::Store;
use dispatcher::hold::Seal;
use tokio::sync::Mutex;

const ID: &str = "acme|meta|1234567890";

#[derive(Default)]
struct World {
    queue: Mutex<VecDeque<u64>>,
    /// Logical clock: every publish, release and direct send takes a tick.
    clock: AtomicU64,
    released: Mutex<Vec<(u64, u64)>>,
    direct: Mutex<Vec<(u64, u64)>>,
    published: AtomicU64,
}

impl World {
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }
}

async fn jitter(max_ms: u64) {
    let ms = fastrand::u64(0..=max_ms);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// One dispatcher holding messages `first..first + n` as they come.
async fn holder(store: Store, world: Arc<World>, first: u64, n: u64) {
    for m in first..first + n {
        // Gaps between a dispatcher's holds: the drainer finds moments with
        // nobody in flight, seals, and must still see a hold that begins.
        jitter(20).await;
        let token = format!("t{m}");
        let paused = store
            .paused_any(&[ID.to_string()], false)
            .await
            .expect("redis");
        let registered = paused.is_some()
            && store
                .hold_begin(ID, &token, chrono::Utc::now())
                .await
                .expect("redis")
                == dispatcher::hold::Begin::Held;
        if registered {
            jitter(5).await; // the broker's confirm
            world.queue.lock().await.push_back(m);
            world.published.fetch_add(1, Ordering::SeqCst);
            world.tick();
            jitter(2).await;
            store.hold_end(ID, &token).await.expect("redis");
        } else {
            let t = world.tick();
            world.direct.lock().await.push((t, m));
        }
    }
}

async fn drainer(store: Store, world: Arc<World>, done: Arc<AtomicBool>) {
    assert!(store.hold_claim(ID, "drainer").await.expect("redis"));
    loop {
        let head = world.queue.lock().await.pop_front();
        if let Some(m) = head {
            jitter(1).await; // the send
            let t = world.tick();
            world.released.lock().await.push((t, m));
            continue;
        }
        match store.hold_seal(ID).await.expect("redis") {
            Seal::InFlight => {
                tokio::time::sleep(Duration::from_millis(2)).await;
                continue;
            }
            Seal::Gone => break,
            Seal::Sealed => {}
        }
        jitter(3).await; // the broker's answer to the second look
        if !world.queue.lock().await.is_empty() {
            continue;
        }
        jitter(2).await;
        if store.hold_finish(ID, "drainer").await.expect("redis") {
            break;
        }
    }
    done.store(true, Ordering::SeqCst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_goes_live_only_when_nothing_is_on_its_way_into_it() {
    for trial in 0..12 {
        let prefix = common::unique(&format!("hold-protocol-{trial}"));
        let settings = common::redis_settings(&prefix);
        let store = Store::new(&settings, Duration::from_secs(120), Duration::from_secs(60))
            .expect("store");
        let world = Arc::new(World::default());
        assert!(store.pause(ID, "meta 190").await.expect("redis"));

        // Six dispatchers hold 40 messages each while the account is paused;
        // part-way through, it heals and the drain begins.
        let holders: Vec<_> = (0..6)
            .map(|i| tokio::spawn(holder(store.clone(), world.clone(), i * 1000, 40)))
            .collect();
        while world.published.load(Ordering::SeqCst) < 5 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        jitter(100).await;
        let resumed = store.resume(ID).await.expect("redis");
        assert!(resumed, "trial {trial}: was paused");
        let done = Arc::new(AtomicBool::new(false));
        let drain = tokio::spawn(drainer(store.clone(), world.clone(), done.clone()));
        for h in holders {
            h.await.expect("holder");
        }
        drain.await.expect("drainer");
        assert!(done.load(Ordering::SeqCst));

        let left = world.queue.lock().await.len();
        assert_eq!(left, 0, "trial {trial}: {left} stranded in the queue");
        let released = world.released.lock().await.clone();
        let direct = world.direct.lock().await.clone();
        assert_eq!(
            released.len() as u64,
            world.published.load(Ordering::SeqCst),
            "trial {trial}: every held message released"
        );
        assert_eq!(released.len() + direct.len(), 240, "trial {trial}");
        assert!(
            !released.is_empty(),
            "trial {trial}: held before the resume"
        );
        let last_released = released.iter().map(|(t, _)| *t).max().unwrap_or(0);
        if let Some((first_direct, m)) = direct.iter().min() {
            assert!(
                *first_direct > last_released,
                "trial {trial}: message {m} sent directly at {first_direct}, before the held ones were out ({last_released})"
            );
        }
        assert!(
            store.pauses().await.expect("redis").is_empty(),
            "trial {trial}: live"
        );
        common::delete_keys(&prefix).await;
    }
}

#[tokio::test]
async fn a_drainer_that_lost_its_lease_cannot_make_the_account_live() {
    let prefix = common::unique("hold-lease");
    let settings = common::redis_settings(&prefix);
    let store =
        Store::new(&settings, Duration::from_secs(120), Duration::from_secs(60)).expect("store");
    assert!(store.pause(ID, "meta 190").await.expect("redis"));
    let begun = store
        .hold_begin(ID, "t1", chrono::Utc::now())
        .await
        .expect("redis");
    assert_eq!(begun, dispatcher::hold::Begin::Held);
    store.hold_end(ID, "t1").await.expect("redis");
    assert!(store.resume(ID).await.expect("redis"));

    // A drains, stalls; its lease goes to B.
    assert!(store.hold_claim(ID, "a").await.expect("redis"));
    assert!(
        !store.hold_claim(ID, "b").await.expect("redis"),
        "one drainer at a time"
    );
    store.hold_release(ID, "a").await.expect("redis");
    assert!(store.hold_claim(ID, "b").await.expect("redis"));

    assert_eq!(store.hold_seal(ID).await.expect("redis"), Seal::Sealed);
    assert!(
        !store.hold_finish(ID, "a").await.expect("redis"),
        "A no longer drains: only B may say the queue is empty"
    );
    let p = store
        .paused(ID)
        .await
        .expect("redis")
        .expect("still draining");
    assert!(p.draining);
    assert!(store.hold_finish(ID, "b").await.expect("redis"));
    assert!(store.paused(ID).await.expect("redis").is_none(), "live");
    common::delete_keys(&prefix).await;
}

/// An account that breaks again right after a probe resumed it (the probe
/// sees it healthy, the sends still fail) is paused on from the probes it
/// had, each time one more: its next try waits 2 s, 4 s, 8 s, not 1 s.
#[tokio::test]
async fn an_account_that_breaks_again_after_its_resume_waits_longer_each_time() {
    let prefix = common::unique("pause-again");
    let settings = common::redis_settings(&prefix);
    let store =
        Store::new(&settings, Duration::from_secs(120), Duration::from_secs(60)).expect("store");
    let fresh = store.pause(ID, "meta 368").await.expect("redis");
    assert!(fresh);
    assert_eq!(
        store
            .paused(ID)
            .await
            .expect("redis")
            .expect("paused")
            .probes,
        0
    );

    for want in 1..=3u32 {
        // The probe finds it healthy: live at once (nothing held)...
        assert!(store.resume(ID).await.expect("redis"));
        assert!(store.paused(ID).await.expect("redis").is_none());
        // ...and the next send fails again.
        assert!(store.pause(ID, "meta 368").await.expect("redis"));
        let p = store.paused(ID).await.expect("redis").expect("paused");
        assert_eq!(p.probes, want, "paused again: one more probe");
        let wait = (p.next_probe - chrono::Utc::now()).num_milliseconds();
        let backoff = dispatcher::pause::backoff(want).as_millis() as i64;
        assert!(
            (backoff - 1_000..=backoff).contains(&wait),
            "next try in {wait} ms, backoff {backoff} ms"
        );
    }

    // Paused again while it drains: the same.
    let begun = store
        .hold_begin(ID, "t1", chrono::Utc::now())
        .await
        .expect("redis");
    assert_eq!(begun, dispatcher::hold::Begin::Held);
    store.hold_end(ID, "t1").await.expect("redis");
    assert!(store.resume(ID).await.expect("redis"));
    assert!(
        store
            .paused(ID)
            .await
            .expect("redis")
            .expect("draining")
            .draining
    );
    assert!(store.pause(ID, "meta 368").await.expect("redis"));
    let p = store.paused(ID).await.expect("redis").expect("paused");
    assert!(!p.draining);
    assert_eq!(p.probes, 4);

    // Another account, never resumed: starts at the first probe.
    let other = "acme|meta|999";
    assert!(store.pause(other, "meta 190").await.expect("redis"));
    assert_eq!(
        store
            .paused(other)
            .await
            .expect("redis")
            .expect("paused")
            .probes,
        0
    );
    common::delete_keys(&prefix).await;
}
