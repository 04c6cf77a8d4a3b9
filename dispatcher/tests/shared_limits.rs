//! A provider account's rate limit holds for the fleet: three dispatchers
//! on one queue, one Meta number limited to 20 messages/s, and the fake
//! provider never sees more than that in any second.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Harness, Options, event};
use dispatcher::app;
use shared::EventKind;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// Meta's answer, with the moment each request arrived.
struct Recording(Arc<Mutex<Vec<Instant>>>);

impl Respond for Recording {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let mut seen = self.0.lock().expect("lock");
        seen.push(Instant::now());
        common::meta_ok(&format!("wamid.rl-{}", seen.len()))
    }
}

/// A fake Meta that answers every request and records when it came.
async fn recording_meta() -> (MockServer, Arc<Mutex<Vec<Instant>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(Recording(seen.clone()))
        .mount(&fake)
        .await;
    (fake, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_dispatchers_keep_one_account_under_its_limit() {
    const N: usize = 600;
    const PER_SECOND: usize = 20;
    let (fake, seen) = recording_meta().await;
    let mut o = Options::meta(&fake);
    o.providers.push_str(&format!(
        "rate_limit = {{ per_second = {PER_SECOND}, burst = 1, per_recipient_every_secs = 0 }}\n"
    ));
    let h = Harness::start("shared-limit", &o).await;
    let second = app::start(h.settings.clone())
        .await
        .expect("second dispatcher");
    let third = app::start(h.settings.clone())
        .await
        .expect("third dispatcher");

    for i in 0..N {
        h.publish(&event(
            EventKind::OrderCompleted,
            &format!("org:rl-{i}"),
            &format!("+7916{:07}", 2_000_000 + i),
        ))
        .await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.lock().expect("lock").len() < N && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let times = seen.lock().expect("lock").clone();
    assert_eq!(times.len(), N, "every event sent once");

    // Any one-second window: at most the rate plus the burst of 1 (20 ± 5 %).
    let mut worst = 0;
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .take_while(|u| u.duration_since(*t) < Duration::from_secs(1))
            .count();
        worst = worst.max(in_window);
    }
    let span = times[N - 1].duration_since(times[0]);
    println!(
        "{N} sends by 3 dispatchers in {:.1} s: {:.1}/s; busiest second {worst}",
        span.as_secs_f64(),
        (N - 1) as f64 / span.as_secs_f64()
    );
    assert!(
        worst <= PER_SECOND + 1,
        "{worst} sends in one second, above {PER_SECOND}/s"
    );
    // Not trivially slow either: the three together use the limit. The
    // promise is the ceiling above; this only catches a fleet that takes
    // turns (one dispatcher at a time would need 3x as long). Debug builds
    // on this 2-core machine reach 67-76 % of the rate (30 s ideal, 39.5 to
    // 46.6 s measured), so the bound is twice the ideal, not a timing target.
    assert!(
        span < Duration::from_secs_f64(N as f64 / PER_SECOND as f64 * 2.0),
        "{span:?} for {N} at {PER_SECOND}/s"
    );
    // Each dispatcher took part.
    for (name, d) in [("second", &second), ("third", &third)] {
        let sent = d
            .worker
            .metrics
            .deliveries
            .with_label_values(&["meta", "whatsapp", "sent"])
            .get();
        assert!(sent > 0, "the {name} dispatcher sent nothing");
    }
    second.stop().await;
    third.stop().await;
    h.finish().await;
}

/// A send the limit would hold past `max_wait_ms` costs no attempt: it is
/// parked in the broker (lease-wait queue) and sent when it comes back, with
/// no quick retry and no second attempt scheduled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_send_waits_in_the_broker_and_spends_no_attempt() {
    let (fake, seen) = recording_meta().await;
    let mut o = Options::meta(&fake);
    // One message per 3 s to a recipient, and no waiting for it in a worker.
    o.providers.push_str(
        "rate_limit = { per_second = 80, burst = 80, per_recipient_every_secs = 3, per_recipient_burst = 1, max_wait_ms = 0 }\n",
    );
    let h = Harness::start("throttled", &o).await;
    let first = event(EventKind::OrderCompleted, "org:th-1", "+79161234567");
    let second = event(EventKind::OrderCompleted, "org:th-2", "+79161234567");
    h.publish(&first).await;
    h.publish(&second).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.lock().expect("lock").len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen.lock().expect("lock").len(), 2, "both sent in the end");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let journal = &h.running().worker.journal;
    let mut steps = Vec::new();
    for e in [&first, &second] {
        let history = journal.history(&e.id.to_string()).await.expect("journal");
        steps.push(serde_json::to_value(&history).expect("json").to_string());
    }
    let both = steps.join("\n");
    assert!(both.contains(r#""outcome":"throttled""#), "{both}");
    assert!(both.contains(r#""step":"lease_wait""#), "{both}");
    assert!(!both.contains("second_attempt_scheduled"), "{both}");
    let quick_retries: u64 = ["meta"]
        .iter()
        .map(|p| {
            h.running()
                .worker
                .metrics
                .quick_retries
                .with_label_values(&[p])
                .get()
        })
        .sum();
    assert_eq!(quick_retries, 0, "no quick retry spent on the wait");
    assert_eq!(h.dead_letters(1, Duration::from_millis(200)).await.len(), 0);
    h.finish().await;
}
