//! The HTTP contract of the webhook endpoint: every refusal has a fitting
//! status and a JSON body, and nothing refused reaches the queue.

mod common;

use std::time::Duration;

use common::{Harness, KEY, queue_depth};

const YCLIENTS_ARRIVED: &str = r#"{"company_id":358944,"resource":"record","resource_id":1,"status":"update",
 "data":{"id":1,"company_id":358944,"attendance":1,"visit_attendance":1,"deleted":false,
 "datetime":"2026-11-24T16:00:00+03:00","client":{"id":5,"name":"Олеся","phone":"+79999856814"},
 "services":[{"title":"Стрижка","cost":1500}],"staff":{"name":"Анна"}}}"#;

async fn raw(req: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let body = r.json().await.unwrap_or(serde_json::Value::Null);
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_have_fitting_statuses_and_queue_nothing() {
    let h = Harness::start("contract").await;
    let post = |path: &str| h.http.post(h.url(path));

    let (s, b) = raw(post("/api/webhook/iiko")
        .header("content-type", "application/json")
        .body("[]"))
    .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (401, Some("unauthorized")),
        "missing key"
    );
    let (s, _) = raw(post("/api/webhook/iiko?key=wrong-key-wrong-key")
        .header("content-type", "application/json")
        .body("[]"))
    .await;
    assert_eq!(s, 401, "wrong key");
    let (s, b) = raw(post(&format!("/api/webhook/bitrix?key={KEY}")).body("{}")).await;
    assert_eq!((s, b["error"].as_str()), (404, Some("unknown_source")));
    let (s, b) = raw(post(&format!("/api/webhook/yclients?key={KEY}"))
        .header("content-type", "text/plain")
        .body(YCLIENTS_ARRIVED))
    .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    let (s, _) = raw(post(&format!("/api/webhook/yclients?key={KEY}"))
        .header("content-type", "application/json; charset=windows-1251")
        .body(YCLIENTS_ARRIVED))
    .await;
    assert_eq!(s, 415, "only UTF-8");
    let (s, _) = raw(post(&format!("/api/webhook/iiko?key={KEY}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("a=1"))
    .await;
    assert_eq!(s, 415, "iiko sends JSON only");
    let (s, b) = raw(post(&format!("/api/webhook/yclients?key={KEY}"))
        .header("content-type", "application/json")
        .body(r#"{"company_id": 1, "resource": "#))
    .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("malformed_body")),
        "{b}"
    );
    assert!(
        b["message"].as_str().unwrap().len() > 10,
        "says what is wrong: {b}"
    );
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(70_000));
    let (s, b) = raw(post(&format!("/api/webhook/yclients?key={KEY}"))
        .header("content-type", "application/json")
        .body(big))
    .await;
    assert_eq!((s, b["error"].as_str()), (413, Some("payload_too_large")));
    let r = h
        .http
        .delete(h.url(&format!("/api/webhook/iiko?key={KEY}")))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 405);
    let allow = r.headers().get("allow").and_then(|v| v.to_str().ok());
    assert_eq!(
        allow,
        Some("GET, POST"),
        "RFC 9110: a 405 says what is allowed"
    );
    let (s, b) = raw(h.http.get(h.url("/nowhere"))).await;
    assert_eq!((s, b["error"].as_str()), (404, Some("not_found")));
    let (s, b) = raw(post(&format!(
        "/api/webhook/booking?key={KEY}&time_zone=Mars/Base"
    ))
    .header("content-type", "application/json")
    .body("{}"))
    .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("wrong_parameters")),
        "{b}"
    );

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        queue_depth(&h.topology).await,
        0,
        "nothing refused was queued"
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_is_accepted_in_every_documented_place() {
    let h = Harness::start("keys").await;
    let url = h.url("/api/webhook/yclients");
    let json = |r: reqwest::RequestBuilder| {
        r.header("content-type", "application/json")
            .body(YCLIENTS_ARRIVED)
    };
    for req in [
        json(h.http.post(format!("{url}?key={KEY}"))),
        json(h.http.post(&url).header("X-Api-Key", KEY)),
        json(
            h.http
                .post(&url)
                .header("Authorization", format!("Bearer {KEY}")),
        ),
        json(h.http.post(&url).header("Authorization", KEY)), // iiko's raw token
    ] {
        let (s, b) = raw(req).await;
        assert_eq!(s, 202, "{b}");
    }
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameter_check_answers_like_seed_000() {
    let h = Harness::start("check").await;
    let get = |q: &str| h.http.get(h.url(&format!("/api/webhook/booking?{q}")));

    let (s, b) = raw(get(&format!(
        "key={KEY}&key_api=f8f1955587ac6d7894cee95f92dcaca4&channel_id=3349fab8-b01b-4232-b9cb-a15ec3acc053\
         &chat_type=whatsapp&message=Hi&time_zone=Asia/Yekaterinburg&date_locales=en-US&hide_url=true"
    ))).await;
    assert_eq!((s, b["Status"].as_str()), (200, Some("Success")), "{b}");
    assert!(b["ErrorMessage"].is_null());

    let (s, b) = raw(get(&format!(
        "key={KEY}&chat_type=telegram&hide_everything=1&date_locales=de-DE"
    )))
    .await;
    assert_eq!(
        (s, b["Status"].as_str()),
        (400, Some("Wrong parameters")),
        "{b}"
    );
    let msg = b["ErrorMessage"].as_str().unwrap();
    assert!(
        msg.contains("hide_everything") && msg.contains("de-DE") && msg.contains("telegram"),
        "{msg}"
    );

    let (s, b) = raw(get("key=not-a-key")).await;
    assert_eq!((s, b["Status"].as_str()), (401, Some("Error")));

    let (s, b) = raw(get(&format!("key={KEY}&utm=1"))).await;
    assert_eq!(b["Status"], "Success");
    assert!(b["WarningMessage"].as_str().unwrap().contains("utm"), "{b}");
    assert_eq!(s, 200);

    let (s, b) = raw(h.http.get(h.url(&format!("/api/webhook/iiko?key={KEY}")))).await;
    assert_eq!(
        (s, b["Status"].as_str()),
        (200, Some("Success")),
        "every source has the check"
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_without_personal_data() {
    let h = Harness::start("metrics").await;
    let (s, _) = h.post_json("yclients", YCLIENTS_ARRIVED).await;
    assert_eq!(s, 202);
    let _ = raw(h
        .http
        .post(h.url("/api/webhook/yclients?key=bad-key-bad-key-bad"))
        .header("content-type", "application/json")
        .body("{}"))
    .await;

    assert_eq!(
        h.http.get(h.url("/healthz")).send().await.unwrap().status(),
        200
    );
    let ready = h.http.get(h.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(ready["broker"], "up");

    let text = h
        .http
        .get(h.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(r#"vestnik_ingest_requests_total{outcome="queued",source="yclients"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"outcome="unauthorized""#));
    assert!(text.contains("vestnik_ingest_ack_seconds_bucket"));
    assert!(text.contains("vestnik_ingest_spool_records 0"));
    for secret in [KEY, "bad-key-bad-key-bad", "79999856814", "9856814"] {
        assert!(!text.contains(secret), "{secret} leaked into metrics");
    }
    common::take_events(&h.topology, 1, Duration::from_secs(2)).await;
    h.finish().await;
}

/// The served OpenAPI document parses and names every route, and every route
/// it names is served (the default 404/405 answer means it is not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_lists_every_served_route() {
    let h = Harness::start("openapi").await;
    let r = h
        .http
        .get(h.url("/openapi.json"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 200);
    let doc: serde_json::Value = r.json().await.expect("the document is JSON");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let paths = doc["paths"].as_object().expect("paths");
    let mut operations = Vec::new();
    for (path, item) in paths {
        for method in ["get", "post", "put", "delete", "patch"] {
            if item.get(method).is_some() {
                operations.push(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    operations.sort();
    let mut expected = vec![
        "GET /api/callback/meta",
        "GET /healthz",
        "GET /metrics",
        "GET /openapi.json",
        "GET /readyz",
        "POST /api/callback/dialog360",
        "POST /api/callback/meta",
        "POST /api/callback/wazzup",
    ];
    let per_source: Vec<String> = ["amocrm", "booking", "iiko", "rkeeper", "yclients"]
        .iter()
        .flat_map(|s| {
            [
                format!("GET /api/webhook/{s}"),
                format!("POST /api/webhook/{s}"),
            ]
        })
        .collect();
    expected.extend(per_source.iter().map(String::as_str));
    expected.sort();
    assert_eq!(
        operations, expected,
        "a route was added or removed: the document follows the code"
    );
    for op in &operations {
        let (method, path) = op.split_once(' ').expect("method and path");
        let req = match method {
            "GET" => h.http.get(h.url(path)),
            _ => h.http.post(h.url(path)).body("{}"),
        };
        let (status, body) = raw(req).await;
        let default_answer = matches!(
            body["error"].as_str(),
            Some("not_found") | Some("method_not_allowed")
        );
        assert!(
            !default_answer,
            "{op} is documented but not served: {status} {body}"
        );
    }
    // Each source's operation: its own content types, a schema from its
    // parser's types, and a real body as the example that its parser takes.
    for source in ["amocrm", "booking", "iiko", "rkeeper", "yclients"] {
        let post = &doc["paths"][format!("/api/webhook/{source}")]["post"];
        let content = post["requestBody"]["content"].as_object().expect("content");
        let types: Vec<&str> = content.keys().map(String::as_str).collect();
        let want: &[&str] = if source == "amocrm" {
            &["application/json", "application/x-www-form-urlencoded"]
        } else {
            &["application/json"]
        };
        assert_eq!(types, want, "{source}'s content types");
        let (kind, media) = content
            .iter()
            .find(|(_, m)| m.get("example").is_some())
            .expect("an example");
        assert!(media["schema"].is_object(), "{source} has a body schema");
        let example = &media["example"];
        let body = if kind == "application/json" {
            example.to_string()
        } else {
            let pairs: Vec<(&str, &str)> = example
                .as_object()
                .expect("a form example is an object")
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or_default()))
                .collect();
            serde_urlencoded::to_string(pairs).expect("form")
        };
        let (s, b) = raw(h
            .http
            .post(h.url(&format!("/api/webhook/{source}?key={KEY}")))
            .header("content-type", kind.as_str())
            .body(body))
        .await;
        assert!(
            s == 200 || s == 202,
            "{source}'s example is refused: {s} {b}"
        );
        for status in ["200", "202", "400", "401", "413", "415", "503"] {
            assert!(
                post["responses"].get(status).is_some(),
                "{source}: {status} documented"
            );
        }
    }
    assert!(
        doc["paths"].get("/api/webhook/{source}").is_none(),
        "no generic operation: one per source"
    );
    let r = h
        .http
        .put(h.url("/api/callback/meta"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(
        r.headers().get("allow").and_then(|v| v.to_str().ok()),
        Some("GET, POST")
    );
    h.finish().await;
}

/// `ingest.metrics_listen` moves `/metrics` off the public webhook port to
/// an internal address (and out of the public OpenAPI document).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_live_on_an_internal_listener() {
    let h = common::Harness::start_tweaked("metrics-apart", "", |s| {
        s.ingest.metrics_listen = Some("127.0.0.1:0".into());
    })
    .await;
    let public = reqwest::get(h.url("/metrics")).await.unwrap();
    assert_eq!(public.status(), 404, "not on the public port");
    let doc = reqwest::get(h.url("/openapi.json"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!doc.contains("\"/metrics\""), "nor in its document");
    let (addr, _) = h.running().metrics.clone().expect("the metrics listener");
    let internal = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap();
    assert_eq!(internal.status(), 200);
    assert!(internal.text().await.unwrap().contains("vestnik_ingest"));
    h.finish().await;
}
