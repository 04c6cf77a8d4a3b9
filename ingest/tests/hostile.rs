//! Hostile inputs over HTTP against a real ingest (production body limit,
//! 1 MiB) and the real RabbitMQ: each gets its documented status and error
//! code, nothing reaches the events or statuses queue, and the server still
//! answers afterwards. docs/RELIABILITY.md "Hostile input" is this table.

mod common;

use std::time::Duration;

use common::{Harness, KEY, fixture, queue_depth, status_depth, take_events};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: usize = 1 << 20;
const WAZZUP_KEY: &str = "wazzup-crm-key-000001";

/// A YCLIENTS "client arrived" record: queued when sent as is.
const YCLIENTS: &str = r#"{"company_id":358944,"resource":"record","resource_id":1,"status":"update",
 "data":{"id":1,"company_id":358944,"attendance":1,"visit_attendance":1,"deleted":false,
 "datetime":"2026-11-24T16:00:00+03:00","client":{"id":5,"name":"NAME","phone":"+79999856814"},
 "services":[{"title":"Стрижка","cost":1500}],"staff":{"name":"Анна"}}}"#;

/// One hostile request: what is sent and what must come back.
struct Case {
    what: &'static str,
    method: &'static str,
    path: String,
    content_type: Option<&'static str>,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: u16,
    /// The `error` code of the JSON answer; `None` for 2xx answers.
    code: Option<&'static str>,
}

fn case(what: &'static str, path: &str, ct: &'static str, body: impl Into<Vec<u8>>) -> Case {
    Case {
        what,
        method: "POST",
        path: path.to_string(),
        content_type: Some(ct),
        headers: Vec::new(),
        body: body.into(),
        status: 0,
        code: None,
    }
}

impl Case {
    fn expect(mut self, status: u16, code: Option<&'static str>) -> Case {
        self.status = status;
        self.code = code;
        self
    }

    fn method(mut self, m: &'static str) -> Case {
        self.method = m;
        self
    }

    fn header(mut self, k: &'static str, v: impl Into<String>) -> Case {
        self.headers.push((k, v.into()));
        self
    }

    fn no_content_type(mut self) -> Case {
        self.content_type = None;
        self
    }
}

fn webhook(source: &str) -> String {
    format!("/api/webhook/{source}?key={KEY}")
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The generated Meta test vector: (app secret, its valid header, body).
fn meta_vector() -> (String, String, Vec<u8>) {
    let v: serde_json::Value =
        serde_json::from_slice(&fixture("meta_wa_signature_test_vector_generated.json"))
            .expect("vector is JSON");
    let field = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    (
        field("app_secret"),
        field("expected_header"),
        fixture(&field("body_file")),
    )
}

fn cases() -> Vec<Case> {
    let json = "application/json";
    let form = "application/x-www-form-urlencoded";
    let yc = webhook("yclients");
    let amo = webhook("amocrm");
    let iiko = webhook("iiko");
    let (_, meta_header, meta_body) = meta_vector();
    let mut replayed = meta_body.clone();
    // Same signature, one byte of the body changed (a status flipped).
    if let Some(at) = replayed.iter().position(|b| *b == b'"') {
        replayed.insert(at + 1, b'x');
    }
    let deep_array = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
    let deep_object = format!("{}1{}", r#"{"a":"#.repeat(20_000), "}".repeat(20_000));
    let deep_form = format!("leads{}=1", "%5Ba%5D".repeat(5_000));
    let big_array = format!("[{}]", vec!["0"; 100_000].join(","));
    let big_batch = format!("[{}]", vec!["{}"; 100_000].join(","));
    let bad_utf8 = replace_bytes(YCLIENTS.as_bytes(), "Анна".as_bytes(), &[0xff, 0xfe, 0x41]);
    let overlong = replace_bytes(
        YCLIENTS.as_bytes(),
        "Анна".as_bytes(),
        &[0xc0, 0xaf, 0xe0, 0x80, 0xaf],
    );
    let nul = replace_bytes(YCLIENTS.as_bytes(), b"NAME", b"a\0b");

    vec![
        case("empty body (JSON source)", &yc, json, "").expect(400, Some("malformed_body")),
        case("empty body (AmoCRM form)", &amo, form, "").expect(400, Some("malformed_body")),
        case("JSON `null`", &yc, json, "null").expect(400, Some("malformed_body")),
        case("JSON `null` to iiko (array expected)", &iiko, json, "null")
            .expect(400, Some("malformed_body")),
        case("JSON array where an object is expected", &yc, json, format!("[{YCLIENTS}]"))
            .expect(400, Some("malformed_body")),
        case("JSON string where an object is expected", &yc, json, "\"{}\"")
            .expect(400, Some("malformed_body")),
        case("truncated JSON", &yc, json, &YCLIENTS[..YCLIENTS.len() / 2])
            .expect(400, Some("malformed_body")),
        case("trailing garbage after the JSON", &yc, json, format!("{YCLIENTS}}}"))
            .expect(400, Some("malformed_body")),
        case("UTF-8 BOM before the JSON", &iiko, json, format!("\u{feff}{YCLIENTS}"))
            .expect(400, Some("malformed_body")),
        case("number out of range (1e400)", &yc, json, YCLIENTS.replace("1500", "1e400"))
            .expect(400, Some("malformed_body")),
        case(
            "duplicate key",
            &yc,
            json,
            YCLIENTS.replace(r#""status":"update","#, r#""status":"update","status":"create","#),
        )
        .expect(400, Some("malformed_body")),
        case("10 MB body (Content-Length over the limit)", &yc, json, vec![b' '; 10 << 20])
            .expect(413, Some("payload_too_large")),
        case("nesting 30 000 arrays deep", &yc, json, deep_array.clone())
            .expect(400, Some("malformed_body")),
        case("nesting 30 000 arrays deep (iiko)", &iiko, json, deep_array)
            .expect(400, Some("malformed_body")),
        case("nesting 20 000 objects deep", &yc, json, deep_object.clone())
            .expect(400, Some("malformed_body")),
        // An unknown key's value is skipped without recursing: an event
        // with no eventType, not notified.
        case("nesting 20 000 objects deep (iiko)", &iiko, json, deep_object)
            .expect(200, None),
        case("form key nested 5 000 levels", &amo, form, deep_form)
            .expect(400, Some("malformed_body")),
        case("100 000-element array of numbers (iiko)", &iiko, json, big_array)
            .expect(400, Some("malformed_body")),
        case("100 000 empty events (iiko batch)", &iiko, json, big_batch).expect(200, None),
        case("bad UTF-8 in a JSON string", &yc, json, bad_utf8)
            .expect(400, Some("malformed_body")),
        case("overlong UTF-8 (C0 AF, E0 80 AF)", &yc, json, overlong)
            .expect(400, Some("malformed_body")),
        case("raw NUL byte in a JSON string", &yc, json, nul)
            .expect(400, Some("malformed_body")),
        case(
            "bad UTF-8 once decoded in a form (%FF)",
            &amo,
            form,
            "leads%5Bstatus%5D%5B0%5D%5Bname%5D=%FF%FE",
        )
        .expect(400, Some("malformed_body")),
        case(
            "overlong UTF-8 in a form (%C0%AF)",
            &amo,
            form,
            "account%5Bsubdomain%5D=%C0%AF",
        )
        .expect(400, Some("malformed_body")),
        case("broken percent escape in a form", &amo, form, "leads%5Bstatus%5D%5B0%5D%5Bid%5D=%G1")
            .expect(400, Some("malformed_body")),
        case(
            "huge bracket index, status not won",
            &amo,
            form,
            "leads%5Bstatus%5D%5B99999999999%5D%5Bid%5D=1&leads%5Bstatus%5D%5B99999999999%5D%5Bstatus_id%5D=1",
        )
        .expect(200, None),
        case(
            "index past u64 (18446744073709551616), status not won",
            &amo,
            form,
            "leads[status][18446744073709551616][id]=1&leads[status][18446744073709551616][status_id]=7",
        )
        .expect(200, None),
        case(
            "text where an indexed list is expected",
            &amo,
            form,
            "leads%5Bstatus%5D=%2B79161234567",
        )
        .expect(400, Some("malformed_body")),
        case("NUL in a form value (%00), status not won", &amo, form,
            "leads%5Bstatus%5D%5B0%5D%5Bid%5D=1%00&leads%5Bstatus%5D%5B0%5D%5Bstatus_id%5D=3")
            .expect(200, None),
        case("text/plain", &yc, "text/plain", YCLIENTS)
            .expect(415, Some("unsupported_media_type")),
        case("application/xml", &yc, "application/xml", "<record/>")
            .expect(415, Some("unsupported_media_type")),
        case("multipart/form-data", &amo, "multipart/form-data; boundary=x", "--x--")
            .expect(415, Some("unsupported_media_type")),
        case("JSON in windows-1251", &yc, "application/json; charset=windows-1251", YCLIENTS)
            .expect(415, Some("unsupported_media_type")),
        case("form to a JSON-only source", &iiko, form, "a=1")
            .expect(415, Some("unsupported_media_type")),
        case("no Content-Type", &yc, json, YCLIENTS)
            .no_content_type()
            .expect(415, Some("unsupported_media_type")),
        case("no key", "/api/webhook/yclients", json, YCLIENTS)
            .expect(401, Some("unauthorized")),
        case("wrong key", "/api/webhook/yclients?key=acme-webhook-key-0002", json, YCLIENTS)
            .expect(401, Some("unauthorized")),
        case("empty key", "/api/webhook/yclients?key=", json, YCLIENTS)
            .expect(401, Some("unauthorized")),
        case("key under another name (?api_key=)",
            &format!("/api/webhook/yclients?api_key={KEY}"), json, YCLIENTS)
            .expect(401, Some("unauthorized")),
        case("key with a NUL (%00) appended",
            &format!("/api/webhook/yclients?key={KEY}%00"), json, YCLIENTS)
            .expect(401, Some("unauthorized")),
        case("10 000-character key", &format!("/api/webhook/yclients?key={}", "k".repeat(10_000)), json, YCLIENTS)
            .expect(401, Some("unauthorized")),
        case("wrong key in X-Api-Key", "/api/webhook/yclients", json, YCLIENTS)
            .header("x-api-key", "' OR '1'='1")
            .expect(401, Some("unauthorized")),
        case("SQL in the source name", &format!("/api/webhook/iiko'%20OR%201=1--?key={KEY}"), json, "{}")
            .expect(404, Some("unknown_source")),
        case("HTML in the source name",
            &format!("/api/webhook/%3Cscript%3Ealert(1)%3C%2Fscript%3E?key={KEY}"), json, "{}")
            .expect(404, Some("unknown_source")),
        case("unknown source", &webhook("bitrix"), json, "{}")
            .expect(404, Some("unknown_source")),
        case("path traversal as a source", &webhook("..%2F..%2Fetc%2Fpasswd"), json, "{}")
            .expect(404, Some("unknown_source")),
        case("bad query encoding (%FF in a parameter)",
            &format!("/api/webhook/yclients?key={KEY}&message=%FF"), json, YCLIENTS)
            .expect(400, Some("wrong_parameters")),
        case("PUT on a webhook", &yc, json, YCLIENTS).method("PUT")
            .expect(405, Some("method_not_allowed")),
        case("DELETE on a webhook", &yc, json, "").method("DELETE")
            .expect(405, Some("method_not_allowed")),
        case("PATCH on a callback", "/api/callback/meta", json, "{}").method("PATCH")
            .expect(405, Some("method_not_allowed")),
        case("Meta callback without a signature", "/api/callback/meta", json, meta_body.clone())
            .expect(401, Some("unauthorized")),
        case("Meta callback, valid signature replayed on a modified body", "/api/callback/meta", json, replayed)
            .header("x-hub-signature-256", meta_header.clone())
            .expect(401, Some("unauthorized")),
        case("Meta callback, signature of another secret", "/api/callback/meta", json, meta_body.clone())
            .header("x-hub-signature-256", sign("not-the-app-secret", &meta_body))
            .expect(401, Some("unauthorized")),
        case("Meta callback, signature truncated", "/api/callback/meta", json, meta_body.clone())
            .header("x-hub-signature-256", meta_header[..meta_header.len() - 2].to_string())
            .expect(401, Some("unauthorized")),
        case("Meta callback, SHA-1 signature header form", "/api/callback/meta", json, meta_body)
            .header("x-hub-signature-256", meta_header.replace("sha256=", "sha1="))
            .expect(401, Some("unauthorized")),
        case("Wazzup callback, wrong key", "/api/callback/wazzup?key=wrong", json, r#"{"statuses":[]}"#)
            .expect(401, Some("unauthorized")),
        case("Wazzup callback, truncated JSON", &format!("/api/callback/wazzup?key={WAZZUP_KEY}"),
            json, r#"{"statuses":[{"messageId":"#)
            .expect(400, Some("malformed_body")),
        case("Wazzup callback, statuses not an array", &format!("/api/callback/wazzup?key={WAZZUP_KEY}"),
            json, r#"{"statuses":{"0":{}}}"#)
            .expect(400, Some("malformed_body")),
        case("unknown callback provider", "/api/callback/twilio", json, "{}")
            .expect(404, Some("not_found")),
    ]
}

fn replace_bytes(hay: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    match hay.windows(needle.len()).position(|w| w == needle) {
        Some(at) => [&hay[..at], with, &hay[at + needle.len()..]].concat(),
        None => hay.to_vec(),
    }
}

fn callbacks_toml() -> String {
    format!(
        "\n[callbacks]\nmeta_app_secrets = [\"{}\"]\nwazzup_keys = [\"{WAZZUP_KEY}\"]\n",
        meta_vector().0
    )
}

async fn start(test: &str) -> Harness {
    Harness::start_tweaked(test, &callbacks_toml(), |s| {
        s.ingest.max_body_bytes = LIMIT;
    })
    .await
}

async fn send(h: &Harness, c: &Case) -> (u16, serde_json::Value) {
    let method = reqwest::Method::from_bytes(c.method.as_bytes()).expect("method");
    let mut r = h.http.request(method, h.url(&c.path));
    if let Some(ct) = c.content_type {
        r = r.header("content-type", ct);
    }
    for (k, v) in &c.headers {
        r = r.header(*k, v);
    }
    let resp = r.body(c.body.clone()).send().await;
    let resp = resp.unwrap_or_else(|e| panic!("{}: {e}", c.what));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

async fn healthy(h: &Harness) -> bool {
    match h.http.get(h.url("/healthz")).send().await {
        Ok(r) => r.status().as_u16() == 200,
        Err(_) => false,
    }
}

/// Every case: its status and code, its message says something, nothing
/// queued, and the server is still healthy after each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_get_their_status_and_queue_nothing() {
    let h = start("hostile").await;
    let mut wrong = Vec::new();
    for c in cases() {
        let (status, body) = send(&h, &c).await;
        let code = body["error"].as_str();
        let says = body["message"].as_str().is_some_and(|m| m.len() > 5);
        if status != c.status || code != c.code || (c.code.is_some() && !says) {
            wrong.push(format!(
                "{}: got {status} {code:?}, expected {} {:?}: {}",
                c.what,
                c.status,
                c.code,
                body.to_string().chars().take(300).collect::<String>()
            ));
        }
        if status == 200 {
            assert_eq!(body["status"], "ignored", "{}: {body}", c.what);
        }
        assert!(healthy(&h).await, "not healthy after {}", c.what);
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        queue_depth(&h.topology).await,
        0,
        "nothing hostile was queued"
    );
    assert_eq!(status_depth(&h.topology).await, 0, "no status was queued");
    assert!(
        std::fs::read_dir(h.running().spool.dir())
            .map(|d| d
                .flatten()
                .all(|e| e.metadata().map(|m| m.len() == 0).unwrap_or(true)))
            .unwrap_or(true),
        "nothing spooled"
    );
    h.finish().await;
}

/// Writes a raw HTTP/1.1 request and reads the status line of the answer.
async fn raw_status(h: &Harness, head: &str, body: impl Iterator<Item = Vec<u8>>) -> Option<u16> {
    let addr = h.running().addr;
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(head.as_bytes()).await.ok()?;
    for chunk in body {
        // The server may answer and close before the body is all sent.
        if s.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split(' ').nth(1)?.parse().ok()
}

/// Bodies the client does not announce: a 10 MB chunked body and a
/// malformed request line. The limit holds without a Content-Length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unannounced_and_broken_requests_are_refused() {
    let h = start("hostile-raw").await;
    let head = format!(
        "POST /api/webhook/yclients?key={KEY} HTTP/1.1\r\nHost: x\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let chunk = {
        let data = vec![b' '; 64 * 1024];
        let mut c = format!("{:x}\r\n", data.len()).into_bytes();
        c.extend_from_slice(&data);
        c.extend_from_slice(b"\r\n");
        c
    };
    let chunks = std::iter::repeat_n(chunk, 160).chain(std::iter::once(b"0\r\n\r\n".to_vec()));
    assert_eq!(
        raw_status(&h, &head, chunks).await,
        Some(413),
        "10 MB chunked"
    );
    let garbage = "GARBAGE\0\r\n\r\n";
    let status = raw_status(&h, garbage, std::iter::empty()).await;
    assert!(
        matches!(status, None | Some(400)),
        "broken request line: {status:?}"
    );
    let bad_header = format!(
        "POST /api/webhook/yclients?key={KEY} HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n"
    );
    let status = raw_status(&h, &bad_header, std::iter::empty()).await;
    assert!(
        matches!(status, None | Some(400) | Some(413)),
        "absurd Content-Length: {status:?}"
    );
    assert!(healthy(&h).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(queue_depth(&h.topology).await, 0);
    h.finish().await;
}

/// SQL and HTML in a customer's name are data: the webhook is valid, so it
/// is queued, and the name arrives byte for byte (nothing interprets it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_and_html_in_names_are_carried_as_data() {
    let h = start("hostile-names").await;
    let names = [
        "Robert'); DROP TABLE events;--",
        "<script>alert(1)</script><img src=x onerror=alert(2)>",
        "{{ 7*7 }} ${jndi:ldap://x} %s%n",
    ];
    for (i, name) in names.iter().enumerate() {
        let quoted = serde_json::to_string(name).expect("a string");
        let body = YCLIENTS
            .replace("\"NAME\"", &quoted)
            .replace("\"resource_id\":1", &format!("\"resource_id\":{}", i + 10))
            .replace("\"id\":1,", &format!("\"id\":{},", i + 10));
        let (status, answer) = h.post_json("yclients", &body).await;
        assert_eq!(status, 202, "{name}: {answer}");
    }
    let events = take_events(&h.topology, names.len(), Duration::from_secs(10)).await;
    let mut got: Vec<_> = events
        .iter()
        .filter_map(|e| e.recipient.name.clone())
        .collect();
    got.sort();
    let mut want: Vec<_> = names.iter().map(|n| n.to_string()).collect();
    want.sort();
    assert_eq!(got, want);
    h.finish().await;
}
