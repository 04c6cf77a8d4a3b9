//! Delays and send hours (issue 11), on the real RabbitMQ and Redis: an
//! event waits in the broker's delay ladder (fixed-TTL quorum queues, no
//! plugin, no polling store) and reaches the provider after its delay and
//! not before, also when the dispatcher restarts while it waits and when
//! delays of several lengths are in flight at once; an event in the quiet
//! hours goes when the window opens; a reminder whose booking has started
//! is dropped as expired. The delays are seconds here (a pure delay); the
//! mechanism is the production one.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use common::{Harness, Options, event, meta_ok};
use shared::EventKind;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// Each recipient's message and when it arrived.
type Seen = Arc<Mutex<Vec<(String, DateTime<Utc>)>>>;

/// Meta's answer, recording [`Seen`].
struct Arrivals(Seen);

impl Respond for Arrivals {
    fn respond(&self, r: &Request) -> ResponseTemplate {
        let to = serde_json::from_slice::<serde_json::Value>(&r.body)
            .ok()
            .and_then(|b| b["to"].as_str().map(String::from))
            .unwrap_or_default();
        self.0.lock().expect("lock").push((to, Utc::now()));
        meta_ok("wamid.delay")
    }
}

async fn arrivals_fake() -> (MockServer, Seen) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(Arrivals(seen.clone()))
        .mount(&fake)
        .await;
    (fake, seen)
}

async fn wait_for(seen: &Mutex<Vec<(String, DateTime<Utc>)>>, n: usize, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    while seen.lock().expect("lock").len() < n && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn arrival(seen: &Mutex<Vec<(String, DateTime<Utc>)>>, phone: &str) -> Vec<DateTime<Utc>> {
    seen.lock()
        .expect("lock")
        .iter()
        .filter(|(to, _)| to == phone)
        .map(|(_, at)| *at)
        .collect()
}

/// Arrived once, not before `due`, and at most this late.
const LATE: chrono::Duration = chrono::Duration::milliseconds(1500);

fn assert_on_time(seen: &Mutex<Vec<(String, DateTime<Utc>)>>, phone: &str, due: DateTime<Utc>) {
    let got = arrival(seen, phone);
    assert_eq!(got.len(), 1, "{phone}: {got:?}");
    let late = got[0] - due;
    assert!(
        late >= chrono::Duration::zero() && late <= LATE,
        "{phone}: due {due}, arrived {} ({} ms late)",
        got[0],
        late.num_milliseconds()
    );
}

fn options(fake: &MockServer, tenant_toml: &str) -> Options {
    let mut o = Options::meta(fake);
    o.channels = r#"["whatsapp"]"#;
    o.providers.push_str(tenant_toml);
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delays_of_several_lengths_arrive_on_time_also_across_a_restart() {
    let (fake, seen) = arrivals_fake().await;
    let o = options(
        &fake,
        r#"
[tenants.delays.order_completed]
after_secs = 8
"#,
    );
    let mut h = Harness::start("delays", &o).await;
    let now = Utc::now();
    // Four orders that happened 8, 6, 3 and 0 s ago: due now, in 2, 5 and 8 s.
    let phones = [
        "+79161240001",
        "+79161240002",
        "+79161240003",
        "+79161240004",
    ];
    let mut due = Vec::new();
    for (i, (phone, ago)) in phones.iter().zip([8, 6, 3, 0]).enumerate() {
        let mut e = event(
            EventKind::OrderCompleted,
            &format!("org:o-delay-{i}:Delivered"),
            phone,
        );
        e.occurred_at = now - chrono::Duration::seconds(ago);
        due.push((e.occurred_at + chrono::Duration::seconds(8)).max(now));
        h.publish(&e).await;
    }
    wait_for(&seen, 1, Duration::from_secs(5)).await;
    assert_on_time(&seen, phones[0], due[0].max(now));
    assert!(
        arrival(&seen, phones[1]).is_empty(),
        "nothing before its time"
    );

    // The dispatcher goes away while three wait in the ladder and comes back.
    tokio::time::sleep(Duration::from_millis(2_600)).await;
    assert_on_time(&seen, phones[1], due[1]);
    h.stop_dispatcher().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut h = h.with_dispatcher().await;

    wait_for(&seen, 4, Duration::from_secs(12)).await;
    assert_on_time(&seen, phones[2], due[2]);
    assert_on_time(&seen, phones[3], due[3]);

    // The journal says when it was scheduled for, once.
    let e3 = {
        let mut e = event(
            EventKind::OrderCompleted,
            "org:o-delay-journal:Delivered",
            "+79161240005",
        );
        e.occurred_at = Utc::now();
        e
    };
    h.publish(&e3).await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let history = h
        .running()
        .worker
        .journal
        .history(&e3.id.to_string())
        .await
        .expect("journal");
    let view = dispatcher::journal::view(&e3.id.to_string(), &history);
    assert_eq!(view["status"], "scheduled", "{view}");
    assert!(view.to_string().contains(r#""reason":"delay""#), "{view}");
    h.stop_dispatcher().await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_hours_hold_a_message_until_the_window_opens_and_a_started_booking_expires() {
    let (fake, seen) = arrivals_fake().await;
    // The window opens 6 s from now, Moscow time (the tenant's zone).
    let msk = Utc::now().with_timezone(&chrono_tz::Europe::Moscow);
    let open = msk + chrono::Duration::seconds(6);
    let close = msk + chrono::Duration::hours(2);
    let hms = |t: chrono::DateTime<chrono_tz::Tz>| {
        format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second())
    };
    let o = options(
        &fake,
        &format!(
            r#"
[tenants.send_hours]
default = "{}-{}"
[tenants.delays.booking_created]
before_start_secs = 3600
"#,
            hms(open),
            hms(close)
        ),
    );
    let h = Harness::start("quiet", &o).await;
    let quiet = event(
        EventKind::OrderCompleted,
        "org:o-quiet:Delivered",
        "+79161250001",
    );
    h.publish(&quiet).await;
    // A reminder an hour before a booking that started a minute ago: expired.
    let mut started = event(
        EventKind::BookingCreated,
        "bk:started:created",
        "+79161250002",
    );
    started.params.starts_at = Some((Utc::now() - chrono::Duration::minutes(1)).fixed_offset());
    h.publish(&started).await;

    wait_for(&seen, 1, Duration::from_secs(10)).await;
    let opened = open
        .with_timezone(&Utc)
        .with_nanosecond(0)
        .expect("whole second");
    assert_on_time(&seen, "+79161250001", opened);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        arrival(&seen, "+79161250002").is_empty(),
        "expired: not sent"
    );
    let history = h
        .running()
        .worker
        .journal
        .history(&started.id.to_string())
        .await
        .expect("journal");
    let view = dispatcher::journal::view(&started.id.to_string(), &history);
    assert_eq!(view["status"], "skipped", "{view}");
    assert!(view.to_string().contains(r#""reason":"expired""#), "{view}");
    assert_eq!(h.queue_len(&h.topology.dead_letter_queue()).await, 0);
    h.finish().await;
}
