//! The admin console over plain HTTP (tests/tests/console_browser.rs drives it in
//! Chromium): sessions in Redis that any dispatcher honours and sign-out
//! ends, the CSRF token on every state-changing form, a purge that asks
//! first, pause and resume from the tenants page, a bulk replay that leaves
//! uncertain letters in the DLQ unless asked, and no phone in any page.

mod common;

use std::time::Duration;

use common::{Harness, Options, event};
use shared::EventKind;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

const TOKEN: &str = "admin-token-for-tests-0001";

struct Browser {
    http: reqwest::Client,
    base: String,
    cookie: String,
}

impl Browser {
    async fn sign_in(base: &str) -> Browser {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let r = http
            .post(format!("{base}/console/sign-in"))
            .form(&[("token", TOKEN)])
            .send()
            .await
            .expect("request");
        assert_eq!(r.status().as_u16(), 303);
        let set = r
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .expect("a session cookie")
            .to_string();
        for attr in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/console"] {
            assert!(set.contains(attr), "{attr}: {set}");
        }
        let cookie = set.split(';').next().expect("name=value").to_string();
        Browser {
            http,
            base: base.to_string(),
            cookie,
        }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .send()
            .await
            .expect("request");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> (u16, String, Option<String>) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .form(form)
            .send()
            .await
            .expect("request");
        let location = r
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        (
            r.status().as_u16(),
            r.text().await.unwrap_or_default(),
            location,
        )
    }

    /// The session's CSRF token, as a page's forms carry it.
    async fn csrf(&self) -> String {
        let (_, page) = self.get("/console/tenants").await;
        let at = page.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
        page[at..at + 64].to_string()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_sessions_csrf_purge_and_pauses() {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_json(serde_json::json!({
            "error": {"message": "Invalid parameter", "type": "OAuthException", "code": 100}
        })))
        .mount(&fake)
        .await;
    let mut o = Options::meta(&fake);
    o.extra.push_str(&format!(
        "\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"
    ));
    let h = Harness::start("console", &o).await;
    let base = format!("http://{}", h.running().admin_addr.expect("admin API"));
    let e = event(EventKind::OrderCompleted, "org:console-1", "+79161234567");
    h.publish(&e).await;

    // No session: the pages and the forms send to sign-in.
    let anon = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    for path in ["/console", "/console/dead-letters", "/console/tenants"] {
        let r = anon
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status().as_u16(), 303, "{path}");
        assert_eq!(r.headers()["location"], "/console/sign-in");
    }
    let r = anon
        .post(format!("{base}/console/sign-in"))
        .form(&[("token", "wrong-token-wrong-token")])
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.headers().get("set-cookie").is_none());

    let b = Browser::sign_in(&base).await;
    let csrf = b.csrf().await;
    // The letter arrives in the DLQ; the page lists it, masked.
    let mut page = String::new();
    for _ in 0..100 {
        page = b.get("/console/dead-letters").await.1;
        if page.contains(&e.id.to_string()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = e.id.to_string();
    assert!(page.contains(&id), "listed: {page}");
    assert!(!page.contains("79161234567"), "the phone is masked");
    let (s, shown) = b.get(&format!("/console/dead-letters/{id}")).await;
    assert_eq!(s, 200);
    assert!(
        !shown.contains("79161234567"),
        "masked on the letter's page"
    );

    // A purge asks first; without the CSRF token it is refused outright.
    let (s, _, _) = b
        .post(
            "/console/dead-letters/action",
            &[
                ("action", "purge-selected"),
                ("id", &id),
                ("confirm", "yes"),
            ],
        )
        .await;
    assert_eq!(s, 403, "no CSRF token");
    let (s, confirm, _) = b
        .post(
            "/console/dead-letters/action",
            &[("csrf", &csrf), ("action", "purge-selected"), ("id", &id)],
        )
        .await;
    assert_eq!(s, 200);
    assert!(confirm.contains("Purge 1 dead letter"), "{confirm}");
    assert_eq!(
        h.queue_len(&h.topology.dead_letter_queue()).await,
        1,
        "asked, not purged"
    );
    let (s, done, _) = b
        .post(
            "/console/dead-letters/action",
            &[
                ("csrf", &csrf),
                ("action", "purge-selected"),
                ("id", &id),
                ("confirm", "yes"),
            ],
        )
        .await;
    assert_eq!(s, 200);
    assert!(done.contains("Purged 1 dead letter"), "{done}");
    assert_eq!(h.queue_len(&h.topology.dead_letter_queue()).await, 0);

    // Pause and resume an account from the tenants page.
    let account = "acme|meta|1234567890";
    let (s, _, _) = b
        .post("/console/pauses", &[("action", "pause"), ("id", account)])
        .await;
    assert_eq!(s, 403, "no CSRF token");
    let (s, _, to) = b
        .post(
            "/console/pauses",
            &[("csrf", &csrf), ("action", "pause"), ("id", account)],
        )
        .await;
    assert_eq!((s, to.as_deref()), (303, Some("/console/tenants")));
    let (_, tenants) = b.get("/console/tenants").await;
    assert!(tenants.contains("paused: by an admin"), "{tenants}");
    assert!(!tenants.contains("EAA"), "no token on the page");
    let (s, _, _) = b
        .post(
            "/console/pauses",
            &[("csrf", &csrf), ("action", "pause"), ("id", "acme|meta|1")],
        )
        .await;
    assert_eq!(s, 404, "not an account of the tenant");
    let (s, _, _) = b
        .post(
            "/console/pauses",
            &[("csrf", &csrf), ("action", "resume"), ("id", account)],
        )
        .await;
    assert_eq!(s, 303);
    let (_, overview) = b.get("/console").await;
    assert!(
        overview.contains("all provider accounts healthy"),
        "{overview}"
    );

    // The event's journal, found by the source's record id.
    let (s, events) = b.get("/console/events?q=142&tenant=acme").await;
    assert_eq!(s, 200);
    assert!(events.contains(&id), "{events}");
    let (s, _) = b.get("/console/events?q=142").await;
    assert_eq!(s, 400, "a record id needs its tenant");

    // Signing out ends the session for every dispatcher (it lived in Redis).
    let (s, _, _) = b.post("/console/sign-out", &[("csrf", &csrf)]).await;
    assert_eq!(s, 303);
    let (s, _) = b.get("/console").await;
    assert_eq!(s, 303, "the old cookie opens nothing");
    h.finish().await;
}

/// SMS.ru's answer to a send.
fn sms_ok() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(serde_json::json!({
        "status": "OK", "status_code": 100,
        "sms": {"79161234567": {"status": "OK", "status_code": 100, "sms_id": "000000-30000001"}}
    }))
}

/// Waits for a replay job's page to say done; returns the page.
async fn job_done(b: &Browser, job: &str) -> String {
    for _ in 0..150 {
        let (_, page) = b.get(job).await;
        if page.contains("data-state=\"done\"") {
            return page;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the replay never finished: {}", b.get(job).await.1);
}

/// A number in the job's report, by its row's heading.
fn reported(page: &str, heading: &str) -> u64 {
    let at = page
        .find(heading)
        .unwrap_or_else(|| panic!("{heading}: {page}"));
    let cell = &page[at..];
    let start = cell.find("<td").expect("a cell");
    let value = &cell[start..];
    let open = value.find('>').expect("cell opens") + 1;
    let close = value.find("</td>").expect("cell closes");
    value[open..close].trim().parse().expect("a number")
}

/// An uncertain letter (SMS.ru timed out after the request went out: it may
/// have been delivered) and a config one: "Replay all shown" replays the
/// config one and keeps the uncertain one in the DLQ, saying so; ticking
/// "include uncertain" replays it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_replay_from_the_console_keeps_uncertain_letters_unless_asked() {
    let fake = MockServer::start().await;
    // Longer than the provider timeout below (2 s): uncertain.
    Mock::given(method("POST"))
        .respond_with(sms_ok().set_delay(Duration::from_secs(3)))
        .mount(&fake)
        .await;
    let mut o = Options::meta(&fake);
    o.channels = r#"["sms"]"#;
    o.providers = format!(
        "\n[tenants.providers.smsru]\nbase_url = \"{}\"\napi_id = \"test-api-id-0001\"\ntimeout_ms = 2000\n",
        fake.uri()
    );
    o.extra.push_str(&format!(
        "\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"
    ));
    let h = Harness::start("console-uncertain", &o).await;
    let base = format!("http://{}", h.running().admin_addr.expect("admin API"));
    let dlq = h.topology.dead_letter_queue();
    let until_letters = |n: u32| {
        let (h, dlq) = (&h, dlq.clone());
        async move {
            for _ in 0..150 {
                if h.queue_len(&dlq).await == n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("never {n} dead letters");
        }
    };
    let unsure = event(
        EventKind::OrderCompleted,
        "org:console-unsure",
        "+79161234567",
    );
    h.publish(&unsure).await;
    until_letters(1).await;
    // Now SMS.ru refuses the request outright: a config letter.
    fake.reset().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_string("bad request"))
        .mount(&fake)
        .await;
    let refused = event(
        EventKind::OrderCompleted,
        "org:console-refused",
        "+79161234567",
    );
    h.publish(&refused).await;
    until_letters(2).await;
    fake.reset().await;
    Mock::given(method("POST"))
        .respond_with(sms_ok())
        .mount(&fake)
        .await;

    let b = Browser::sign_in(&base).await;
    let csrf = b.csrf().await;
    let (_, list) = b.get("/console/dead-letters?tenant=acme").await;
    assert!(
        list.contains("1 uncertain"),
        "the uncertain one is marked: {list}"
    );

    // "Replay all shown": the uncertain one stays.
    let (s, _, job) = b
        .post(
            "/console/dead-letters/action",
            &[
                ("csrf", &csrf),
                ("action", "replay-filter"),
                ("tenant", "acme"),
            ],
        )
        .await;
    assert_eq!(s, 303);
    let page = job_done(&b, &job.expect("the job's page")).await;
    assert_eq!(reported(&page, "Replayed"), 1, "{page}");
    assert_eq!(reported(&page, "Uncertain, kept in the DLQ"), 1, "{page}");
    until_letters(1).await;
    let sent = common::requests(&fake, 1, Duration::from_secs(10)).await;
    assert_eq!(sent.len(), 1, "the config letter went out");
    let (_, left) = b.get("/console/dead-letters").await;
    assert!(
        left.contains(&unsure.id.to_string()),
        "the uncertain one stays"
    );
    assert!(!left.contains(&refused.id.to_string()));

    // Asked for: the uncertain one too.
    let (s, _, job) = b
        .post(
            "/console/dead-letters/action",
            &[
                ("csrf", &csrf),
                ("action", "replay-filter"),
                ("tenant", "acme"),
                ("include_uncertain", "yes"),
            ],
        )
        .await;
    assert_eq!(s, 303);
    let page = job_done(&b, &job.expect("the job's page")).await;
    assert_eq!(reported(&page, "Replayed"), 1, "{page}");
    until_letters(0).await;
    let sent = common::requests(&fake, 2, Duration::from_secs(10)).await;
    assert_eq!(sent.len(), 2, "and now the uncertain one");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fake.received_requests().await.unwrap_or_default().len(), 2);
    h.finish().await;
}
