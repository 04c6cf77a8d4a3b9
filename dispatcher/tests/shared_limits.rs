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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_dispatchers_keep_one_account_under_its_limit() {
    const N: usize = 600;
    const PER_SECOND: usize = 20;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(Recording(seen.clone()))
        .mount(&fake)
        .await;
    let mut o = Options::meta(&fake);
    o.providers.push_str(&format!(
        "rate_limit = {{ per_second = {PER_SECOND}, burst = 1, per_recipient_every_secs = 0 }}\n"
    ));
    let h = Harness::start("shared-limit", &o).await;
    let second = app::start(h.settings.clone()).await.expect("second dispatcher");
    let third = app::start(h.settings.clone()).await.expect("third dispatcher");

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
    // Not trivially slow either: the three together use the limit.
    assert!(
        span < Duration::from_secs_f64(N as f64 / PER_SECOND as f64 * 1.5),
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
