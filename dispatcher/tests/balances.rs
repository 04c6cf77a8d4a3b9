//! Provider balances: the accounts that have a balance call (SMS.ru
//! `my/balance` + `my/limit`, Exolve `GetBalance`) are polled into gauges
//! per tenant and provider, with the configured alert threshold beside
//! them; a poll that fails says so and keeps the last balance.

mod common;

use std::time::{Duration, Instant};

use common::{Harness, Options};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const API_ID: &str = "test-api-id-balance-0001";
const EXOLVE_KEY: &str = "exolve-key-balance-0001";

fn options(fake: &MockServer) -> Options {
    let mut o = Options::meta_at("http://127.0.0.1:9");
    o.channels = r#"["sms"]"#;
    o.providers = format!(
        r#"
[tenants.providers.smsru]
base_url = "{uri}"
api_id = "{API_ID}"
balance_alert_below = 100

[tenants.providers.exolve]
base_url = "{uri}"
api_key = "{EXOLVE_KEY}"
sender = "Acme"

[tenants.provider_for]
sms = "smsru"
"#,
        uri = fake.uri()
    );
    // A pure period: how often the figures are read, not what they are.
    o.dispatcher_extra = "balance_poll_secs = 1\n".into();
    o
}

async fn metrics(h: &Harness) -> String {
    reqwest::get(format!("http://{}/metrics", h.running().addr))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

/// The value of `name` for tenant acme and `provider`, if there is one.
fn value(text: &str, name: &str, provider: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| l.contains(&format!("provider=\"{provider}\"")) && l.contains("tenant=\"acme\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn until(h: &Harness, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        let text = metrics(h).await;
        if ok(&text) {
            return text;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{what}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balances_are_polled_into_gauges_with_their_threshold() {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/my/balance"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "status": "OK", "status_code": 100, "balance": "42.50"
        })))
        .mount(&fake)
        .await;
    Mock::given(method("POST"))
        .and(path("/my/limit"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "status": "OK", "status_code": 100, "total_limit": 500, "used_today": 120
        })))
        .mount(&fake)
        .await;
    Mock::given(method("POST"))
        .and(path("/finance/v1/GetBalance"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "balance": 1500.25, "currency": "RUB"
        })))
        .mount(&fake)
        .await;
    let h = Harness::start("balances", &options(&fake)).await;

    let text = until(&h, "both balances read", |t| {
        value(t, "vestnik_dispatcher_provider_balance", "smsru").is_some()
            && value(t, "vestnik_dispatcher_provider_balance", "exolve").is_some()
    })
    .await;
    assert_eq!(
        value(&text, "vestnik_dispatcher_provider_balance", "smsru"),
        Some(42.5)
    );
    assert_eq!(
        value(&text, "vestnik_dispatcher_provider_daily_left", "smsru"),
        Some(380.0)
    );
    assert_eq!(
        value(
            &text,
            "vestnik_dispatcher_provider_balance_alert_below",
            "smsru"
        ),
        Some(100.0)
    );
    assert_eq!(
        value(&text, "vestnik_dispatcher_provider_balance", "exolve"),
        Some(1500.25)
    );
    assert_eq!(
        value(
            &text,
            "vestnik_dispatcher_provider_balance_alert_below",
            "exolve"
        ),
        None,
        "no threshold configured, none exported"
    );
    assert_eq!(
        value(
            &text,
            "vestnik_dispatcher_provider_balance_poll_ok",
            "smsru"
        ),
        Some(1.0)
    );
    assert!(
        !text.contains(API_ID) && !text.contains(EXOLVE_KEY),
        "no key in the metrics"
    );

    // The keys went where their owner configured them, in the body or the
    // Authorization header, never in a URL.
    let requests = fake.received_requests().await.unwrap_or_default();
    let smsru = requests
        .iter()
        .find(|r| r.url.path() == "/my/balance")
        .expect("my/balance was called");
    assert!(!smsru.url.as_str().contains(API_ID));
    assert!(String::from_utf8_lossy(&smsru.body).contains(&format!("api_id={API_ID}")));
    let exolve = requests
        .iter()
        .find(|r| r.url.path() == "/finance/v1/GetBalance")
        .expect("GetBalance was called");
    let auth = exolve
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    assert_eq!(auth, Some(format!("Bearer {EXOLVE_KEY}").as_str()));

    // SMS.ru stops answering: the poll says so, the last balance stays.
    fake.reset().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "status": "ERROR", "status_code": 200, "status_text": "Неправильный api_id"
        })))
        .mount(&fake)
        .await;
    let text = until(&h, "the failed poll is seen", |t| {
        value(t, "vestnik_dispatcher_provider_balance_poll_ok", "smsru") == Some(0.0)
    })
    .await;
    assert_eq!(
        value(&text, "vestnik_dispatcher_provider_balance", "smsru"),
        Some(42.5)
    );
    h.finish().await;
}

/// Two dispatchers, one period of 2 s: the accounts are read once per
/// period for the fleet, not once per dispatcher, and both export the read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_reads_each_balance_once_per_period_and_every_dispatcher_exports_it() {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/my/balance"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "status": "OK", "status_code": 100, "balance": "77.00"
        })))
        .mount(&fake)
        .await;
    Mock::given(method("POST"))
        .and(path("/my/limit"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "status": "OK", "status_code": 100, "total_limit": 500, "used_today": 0
        })))
        .mount(&fake)
        .await;
    Mock::given(method("POST"))
        .and(path("/finance/v1/GetBalance"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "balance": 10.0, "currency": "RUB"
        })))
        .mount(&fake)
        .await;
    let mut o = options(&fake);
    o.dispatcher_extra = "balance_poll_secs = 2\n".into();
    let h = Harness::start("balances-fleet", &o).await;
    let second = dispatcher::app::start(h.settings.clone())
        .await
        .expect("a second dispatcher starts");

    let balance_reads = || async {
        fake.received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .filter(|r| r.url.path() == "/my/balance")
            .count()
    };
    let started = Instant::now();
    while balance_reads().await == 0 {
        assert!(started.elapsed() < Duration::from_secs(20), "never read");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first = Instant::now();
    tokio::time::sleep(Duration::from_secs(9)).await;
    let reads = balance_reads().await;
    let periods = first.elapsed().as_secs_f64() / 2.0;
    // One read per period and the one that started the window; two
    // dispatchers reading on their own would make about twice as many.
    assert!(
        reads as f64 <= periods.floor() + 2.0,
        "{reads} reads of my/balance in {periods:.1} periods by two dispatchers"
    );
    assert!(reads >= 3, "polled on: {reads}");

    for addr in [h.running().addr, second.addr] {
        let started = Instant::now();
        loop {
            let text = reqwest::get(format!("http://{addr}/metrics"))
                .await
                .expect("metrics")
                .text()
                .await
                .expect("text");
            if value(&text, "vestnik_dispatcher_provider_balance", "smsru") == Some(77.0) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{addr} exports the fleet's read:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    second.stop().await;
    h.finish().await;
}
