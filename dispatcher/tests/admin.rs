//! The admin HTTP API on its own port: the token is required, dead letters
//! are listed with their reasons and replayed by filter with one send each,
//! the delivery journal tells an event's whole story, and the OpenAPI
//! document names every route both ports serve.

mod common;

use std::time::Duration;

use common::{Harness, Options, event, meta_ok, requests};
use shared::EventKind;
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

const TOKEN: &str = "admin-token-for-tests-0001";

fn with_admin(mut o: Options) -> Options {
    o.extra.push_str(&format!(
        "\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"
    ));
    o
}

struct Admin {
    http: reqwest::Client,
    base: String,
}

impl Admin {
    fn of(h: &Harness) -> Admin {
        let addr = h.running().admin_addr.expect("admin API started");
        Admin {
            http: reqwest::Client::new(),
            base: format!("http://{addr}"),
        }
    }

    async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("admin request");
        (r.status().as_u16(), r.json().await.unwrap_or_default())
    }

    async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .expect("admin request");
        (r.status().as_u16(), r.json().await.unwrap_or_default())
    }
}

async fn wait_for_dlq(h: &Harness, n: u32) {
    for _ in 0..150 {
        if h.queue_len(&h.topology.dead_letter_queue()).await >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_needs_the_token_and_replays_dead_letters_once() {
    let fake = MockServer::start().await;
    // The provider refuses the token for now: every event is dead-lettered (config).
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_json(serde_json::json!({
            "error": {"message": "Invalid parameter", "type": "OAuthException", "code": 100}
        })))
        .mount(&fake)
        .await;
    let mut o = with_admin(Options::meta(&fake));
    o.channels = r#"["whatsapp"]"#;
    let h = Harness::start("admin-dlq", &o).await;
    let admin = Admin::of(&h);

    // The token: missing, wrong, right.
    let url = format!("{}/admin/dlq", admin.base);
    let r = admin.http.get(&url).send().await.expect("request");
    assert_eq!(r.status().as_u16(), 401, "no token");
    assert_eq!(
        r.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer")
    );
    let r = admin
        .http
        .get(&url)
        .bearer_auth("admin-token-for-tests-0002")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 401, "wrong token");
    let body: serde_json::Value = r.json().await.unwrap_or_default();
    assert_eq!(body["error"], "unauthorized");
    let r = admin
        .http
        .post(format!("{}/admin/dlq/replay", admin.base))
        .json(&serde_json::json!({"all": true}))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 401, "replay without a token");

    let events: Vec<_> = (0..3)
        .map(|i| {
            event(
                EventKind::OrderCompleted,
                &format!("org:o-admin-{i}:Delivered"),
                "+79161234567",
            )
        })
        .collect();
    for e in &events {
        h.publish(e).await;
    }
    wait_for_dlq(&h, 3).await;

    let (s, listed) = admin.get("/admin/dlq?reason=config").await;
    assert_eq!(s, 200, "{listed}");
    assert_eq!(listed["count"], 3, "{listed}");
    for entry in listed["dead_letters"].as_array().expect("list") {
        assert_eq!(entry["reason"], "config");
        assert!(
            entry["error"]
                .as_str()
                .is_some_and(|e| e.contains("meta 100")),
            "{entry}"
        );
        assert!(
            !entry.to_string().contains("79161234567"),
            "recipient masked: {entry}"
        );
    }
    let id = events[0].id.to_string();
    // The journal is written just after the dead letter is confirmed.
    let mut shown = serde_json::Value::Null;
    for _ in 0..50 {
        let (s, b) = admin.get(&format!("/admin/dlq/{id}")).await;
        assert_eq!(s, 200, "{b}");
        shown = b;
        if shown["history"].as_array().is_some_and(|h| h.len() >= 3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(shown["event"]["id"], id.as_str());
    let steps: Vec<&str> = shown["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|r| r["step"].as_str())
        .collect();
    assert_eq!(steps, ["received", "attempt", "dead_lettered"], "{shown}");
    assert!(!shown.to_string().contains("79161234567"), "{shown}");
    let (s, _) = admin.get("/admin/dlq/no-such-id").await;
    assert_eq!(s, 404);

    // Refusals that protect the admin from a slip.
    let (s, b) = admin.post("/admin/dlq/replay", serde_json::json!({})).await;
    assert_eq!(s, 400, "a replay needs a filter or all: {b}");
    let (s, b) = admin
        .post("/admin/dlq/purge", serde_json::json!({"all": true}))
        .await;
    assert_eq!(s, 400, "a purge needs confirm: {b}");
    let (s, b) = admin
        .post("/admin/dlq/replay", serde_json::json!({"al": true}))
        .await;
    assert_eq!(s, 400, "unknown fields are refused: {b}");

    let (s, dry) = admin
        .post(
            "/admin/dlq/replay",
            serde_json::json!({"filter": {"reason": "config"}, "dry_run": true}),
        )
        .await;
    assert_eq!((s, dry["replayed"].as_u64()), (200, Some(3)), "{dry}");
    assert_eq!(h.queue_len(&h.topology.dead_letter_queue()).await, 3);

    // The provider recovers; one replay by filter sends each event once.
    fake.reset().await;
    Mock::given(method("POST"))
        .and(path_regex("/messages$"))
        .respond_with(meta_ok("wamid.replayed"))
        .mount(&fake)
        .await;
    let (s, report) = admin
        .post(
            "/admin/dlq/replay",
            serde_json::json!({"filter": {"reason": "config", "tenant": "acme"}}),
        )
        .await;
    assert_eq!(s, 200, "{report}");
    assert_eq!(
        (report["replayed"].as_u64(), report["failed"].as_u64()),
        (Some(3), Some(0)),
        "{report}"
    );
    let sent = requests(&fake, 3, Duration::from_secs(10)).await;
    assert_eq!(sent.len(), 3, "one send per replayed event");
    assert_eq!(h.queue_len(&h.topology.dead_letter_queue()).await, 0);

    // The same events dead-lettered again (say, a stale copy) and replayed:
    // idempotency sends nothing a second time.
    let conn = common::connect().await;
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(Default::default())
        .await
        .expect("confirms");
    for e in &events {
        ch.basic_publish(
            "".into(),
            h.topology.dead_letter_queue().as_str().into(),
            Default::default(),
            &e.to_json(),
            lapin::BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    }
    let _ = conn.close(200, "done".into()).await;
    let (s, again) = admin
        .post("/admin/dlq/replay", serde_json::json!({"all": true}))
        .await;
    assert_eq!((s, again["replayed"].as_u64()), (200, Some(3)), "{again}");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        fake.received_requests().await.unwrap_or_default().len(),
        3,
        "nothing sent twice"
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_tells_first_attempt_second_attempt_and_fallback() {
    let fake = MockServer::start().await;
    // WhatsApp is down throughout; SMS works.
    Mock::given(method("POST"))
        .and(path_regex("/messages$"))
        .respond_with(ResponseTemplate::new(500).set_body_string("internal"))
        .mount(&fake)
        .await;
    Mock::given(method("POST"))
        .and(path_regex("/sms/send$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "status": "OK", "status_code": 100,
            "sms": {"79161234567": {"status": "OK", "status_code": 100, "sms_id": "000000-20000142"}}
        })))
        .mount(&fake)
        .await;
    let mut o = with_admin(Options::meta(&fake));
    o.providers.push_str(&format!(
        "\n[tenants.providers.smsru]\nbase_url = \"{}\"\napi_id = \"test-api-id-0001\"\n",
        fake.uri()
    ));
    let h = Harness::start("journal", &o).await;
    let admin = Admin::of(&h);
    let mut e = event(
        EventKind::OrderCompleted,
        "org:o-journal:Delivered",
        "+79161234567",
    );
    e.source_ref = Some("5c0e8f4a-order-142".into());
    h.publish(&e).await;
    let id = e.id.to_string();

    let mut shown = serde_json::Value::Null;
    for _ in 0..150 {
        let (s, b) = admin.get(&format!("/admin/events/{id}")).await;
        if s == 200 && b["status"] == "sent" {
            shown = b;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(shown["status"], "sent", "{shown}");
    let steps: Vec<String> = shown["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|r| {
            let step = r["step"].as_str().unwrap_or("?");
            match step {
                "received" => format!("received#{}", r["attempt"]),
                "attempt" => format!(
                    "attempt#{}:{}:{}:{}",
                    r["attempt"],
                    r["channel"].as_str().unwrap_or("?"),
                    r["provider"].as_str().unwrap_or("?"),
                    r["outcome"].as_str().unwrap_or("?")
                ),
                "fallback" => format!("fallback:{}", r["from"].as_str().unwrap_or("?")),
                s => s.to_string(),
            }
        })
        .collect();
    assert_eq!(
        steps,
        [
            "received#1",
            "attempt#1:whatsapp:meta:transient",
            "second_attempt_scheduled",
            "received#2",
            "attempt#2:whatsapp:meta:transient",
            "fallback:whatsapp",
            "attempt#1:sms:smsru:sent",
        ],
        "{shown}"
    );
    let history = shown["history"].as_array().expect("history");
    let sms = history.last().expect("last step");
    assert_eq!(sms["message_id"], "000000-20000142");
    assert!(
        !shown.to_string().contains("79161234567"),
        "recipient masked: {shown}"
    );

    // Found by the source's record id and by the order number.
    for reference in ["5c0e8f4a-order-142", "142"] {
        let (s, found) = admin
            .get(&format!(
                "/admin/events?tenant=acme&source=iiko&ref={reference}"
            ))
            .await;
        assert_eq!(s, 200, "{found}");
        assert_eq!(found["events"][0]["id"], id.as_str(), "{found}");
        assert_eq!(found["events"][0]["status"], "sent");
    }
    let (s, found) = admin.get("/admin/events?tenant=acme&ref=142").await;
    assert_eq!(
        (s, found["events"][0]["id"].as_str()),
        (200, Some(id.as_str()))
    );
    let (s, _) = admin.get("/admin/events?tenant=acme&ref=999999").await;
    assert_eq!(s, 200);
    let (s, b) = admin
        .get("/admin/events/0190aaaa-0000-7000-8000-000000000000")
        .await;
    assert_eq!((s, b["error"].as_str()), (404, Some("not_found")));
    let (s, _) = admin.get("/admin/events?ref=142").await;
    assert_eq!(s, 400, "the tenant is required");
    h.finish().await;
}

/// Each port serves its own document: exactly the operations that port
/// serves; a path it does not serve is a 404 there, a method it does not
/// take a 405 with `Allow` (RFC 9110).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_port_documents_exactly_what_it_serves() {
    let fake = MockServer::start().await;
    let h = Harness::start("admin-openapi", &with_admin(Options::meta(&fake))).await;
    let probes = format!("http://{}", h.running().addr);
    let admin = Admin::of(&h);
    let http = reqwest::Client::new();
    let operations_of = |doc: &serde_json::Value| {
        let mut operations = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for m in ["get", "post", "put", "delete", "patch"] {
                if item.get(m).is_some() {
                    operations.push(format!("{} {path}", m.to_uppercase()));
                }
            }
        }
        operations.sort();
        operations
    };
    let expected_admin = [
        "DELETE /admin/opt-outs/{tenant}/{id}",
        "GET /admin/dlq",
        "GET /admin/dlq/{id}",
        "GET /admin/events",
        "GET /admin/events/{id}",
        "GET /admin/opt-outs/{tenant}",
        "GET /admin/pauses",
        "GET /openapi.json",
        "POST /admin/dlq/purge",
        "POST /admin/dlq/replay",
        "POST /admin/opt-outs/{tenant}",
        "POST /admin/opt-outs/{tenant}/check",
        "POST /admin/pauses/pause",
        "POST /admin/pauses/resume",
    ];
    let expected_probes = [
        "GET /healthz",
        "GET /metrics",
        "GET /openapi.json",
        "GET /readyz",
    ];
    for (base, expected) in [
        (&probes, &expected_probes[..]),
        (&admin.base, &expected_admin[..]),
    ] {
        let doc: serde_json::Value = http
            .get(format!("{base}/openapi.json"))
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("the document is JSON");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
        let operations = operations_of(&doc);
        assert_eq!(
            operations, expected,
            "{base}: the document follows the code"
        );
        // Every documented operation is served on its port (an unrouted
        // request gets the `not_found` / `method_not_allowed` answer).
        for op in &operations {
            let (m, p) = op.split_once(' ').expect("method and path");
            let url = format!(
                "{base}{}",
                p.replace("{id}", "0a").replace("{tenant}", "acme")
            );
            let req = match m {
                "GET" => http.get(url),
                "DELETE" => http.delete(url),
                _ => http.post(url).json(&serde_json::json!({})),
            };
            let r = req.send().await.expect("request");
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            let unrouted =
                body["error"] == "method_not_allowed" || body["message"] == "no such route";
            assert!(
                !unrouted,
                "{op} is documented but not served: {status} {body}"
            );
        }
    }
    for (url, what) in [
        (
            format!("{probes}/admin/dlq"),
            "the admin API is not on the probes port",
        ),
        (
            format!("{}/healthz", admin.base),
            "nor the probes on the admin port",
        ),
        (
            format!("{probes}/console"),
            "the console is only on the admin port",
        ),
    ] {
        let r = http.get(url).send().await.expect("request");
        assert_eq!(r.status().as_u16(), 404, "{what}");
    }
    // A method a path does not take: 405 and what it does take, also where
    // a template would match the path (`/admin/dlq/{id}` and `purge`).
    for (method, path, allow) in [
        (reqwest::Method::GET, "/admin/dlq/purge", "POST"),
        (
            reqwest::Method::DELETE,
            "/admin/opt-outs/acme/check",
            "POST",
        ),
        (reqwest::Method::PUT, "/admin/dlq/0a", "GET"),
        (reqwest::Method::POST, "/admin/dlq", "GET"),
        // The console's pages (HTML, outside the API document) say it too.
        (reqwest::Method::POST, "/console/dead-letters", "GET"),
        (reqwest::Method::GET, "/console/sign-out", "POST"),
        (reqwest::Method::DELETE, "/console/sign-in", "GET, POST"),
    ] {
        let r = http
            .request(method.clone(), format!("{}{path}", admin.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status().as_u16(), 405, "{method} {path}");
        assert_eq!(
            r.headers().get("allow").and_then(|v| v.to_str().ok()),
            Some(allow),
            "{method} {path}"
        );
    }
    let r = http
        .post(format!("{probes}/healthz"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(
        r.headers().get("allow").and_then(|v| v.to_str().ok()),
        Some("GET")
    );
    h.finish().await;
}
