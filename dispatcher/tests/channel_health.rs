//! Channel health: an account-level failure (Meta 190: the token expired)
//! pauses the account for the fleet. After that first failure nothing but
//! the probes reaches the provider; the messages meanwhile are held (no
//! attempt spent) or, where the tenant has another channel, sent there at
//! once; when the probe finds the account healthy the held ones are sent,
//! each once. A message held longer than the tenant's limit goes to the DLQ.

mod common;

use std::time::{Duration, Instant};

use common::{Harness, Options, event, header, meta_ok};
use shared::EventKind;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_account_is_paused_its_messages_held_and_sent_once_when_it_heals() {
    let fake = MockServer::start().await;
    broken_meta(&fake).await;
    let h = Harness::start("pause-hold", &options(&fake, r#"["whatsapp"]"#)).await;
    let first = events(1, "pause-first");
    h.publish(&first[0]).await;
    until(
        "the first message meets the broken account",
        Duration::from_secs(20),
        || async { !received(&fake, "POST", MESSAGES).await.is_empty() },
    )
    .await;
    // A dinner peak's worth meanwhile.
    let rest = events(500, "pause-rest");
    for e in &rest {
        h.publish(e).await;
    }
    // Probes come (1 s, 2 s, 4 s apart); messages do not.
    until(
        "probes reach the provider",
        Duration::from_secs(20),
        || async { received(&fake, "GET", NUMBER).await.len() >= 2 },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        received(&fake, "POST", MESSAGES).await.len(),
        1,
        "after the first failure only probes reach a paused account"
    );
    let pauses = h
        .running()
        .worker
        .store
        .pauses()
        .await
        .expect("pauses readable");
    assert_eq!(pauses.len(), 1, "{pauses:?}");
    assert_eq!(pauses[0].id, "acme|meta|1234567890");
    assert!(pauses[0].reason.contains("190"), "{}", pauses[0].reason);
    assert_eq!(
        h.queue_len(&h.topology.dead_letter_queue()).await,
        0,
        "nothing dead-lettered"
    );

    healthy_meta(&fake).await;
    until(
        "every held message is sent",
        Duration::from_secs(60),
        || async { received(&fake, "POST", MESSAGES).await.len() >= 501 },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sent = received(&fake, "POST", MESSAGES).await;
    let got = keys(&sent);
    assert_eq!(got.len(), 501, "501 sends");
    for e in first.iter().chain(rest.iter()) {
        let key = format!("{}/whatsapp", e.dedup_key);
        let n = got.iter().filter(|k| **k == key).count();
        assert_eq!(n, 1, "{} sent {n} times", e.dedup_key);
    }
    assert!(
        h.running()
            .worker
            .store
            .pauses()
            .await
            .expect("pauses")
            .is_empty(),
        "the probe resumed the account"
    );
    let metrics = reqwest::get(format!("http://{}/metrics", h.running().addr))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("vestnik_dispatcher_second_attempts_total 0"),
        "no attempt was burnt: no second attempt scheduled"
    );
    assert!(
        metrics.contains(
            r#"vestnik_dispatcher_account_pauses_total{provider="meta",what="paused"} 1"#
        ),
        "{metrics}"
    );
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
    for e in events(20, "pause-fallback") {
        h.publish(&e).await;
    }
    until("all twenty go by SMS", Duration::from_secs(30), || async {
        received(&fake, "POST", "/sms/send").await.len() >= 20
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(received(&fake, "POST", "/sms/send").await.len(), 20);
    let whatsapp = received(&fake, "POST", MESSAGES).await.len();
    // The messages taken before the pause was written may each have met
    // the broken account once; none after.
    assert!(
        (1..=8).contains(&whatsapp),
        "WhatsApp tried {whatsapp} times for 20 messages (concurrency 8)"
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
