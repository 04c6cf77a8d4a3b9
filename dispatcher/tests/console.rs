//! The admin console over plain HTTP (tests/tests/console_browser.rs drives it in
//! Chromium): sessions in Redis that any dispatcher honours and sign-out
//! ends, the CSRF token on every state-changing form, a purge that asks
//! first, pause and resume from the tenants page, and no phone in any page.

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
