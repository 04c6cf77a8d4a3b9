//! The admin console in a real browser: the real `ingest` and `dispatcher`
//! binaries on the real RabbitMQ and Redis, Debian's Chromium driven by
//! playwright-core (`tests/console/console.mjs`; deploy/test.sh installs
//! both). Two webhooks' messages are dead-lettered by a provider refusing
//! them; the admin signs in (a wrong token refused first), filters the
//! letters, finds one, is refused a replay without the CSRF token, replays
//! it from the page, purges the other after the confirmation page, pauses
//! and resumes the provider account, and the provider receives exactly one
//! message.
//!
//! `CONSOLE_SHOTS=docs/console cargo test -p e2e --test console_browser` refreshes
//! the screenshots docs/ADMIN.md shows.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

const TOKEN: &str = "console-admin-token-0000001";

fn browser_ready(dir: &Path) {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: the console's browser test needs Debian's chromium \
         (deploy/test.sh installs it: apt-get install chromium)"
    );
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "{}/node_modules is missing: run `npm ci` there (deploy/test.sh does)",
        dir.display()
    );
}

async fn admin_get(base: &str, path: &str) -> serde_json::Value {
    reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("admin API answers")
        .json()
        .await
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_replays_a_dead_letter_from_the_browser_once() {
    let script_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("console");
    browser_ready(&script_dir);
    let fake = MockServer::start().await;
    // The provider refuses the token for now: the message is dead-lettered (config).
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_json(serde_json::json!({
            "error": {"message": "Invalid parameter", "type": "OAuthException", "code": 100}
        })))
        .mount(&fake)
        .await;
    let admin_port = free_port();
    let stack = Stack::start_with(
        "console",
        &fake,
        &format!("\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken = \"{TOKEN}\"\n"),
    )
    .await;
    let admin = format!("http://127.0.0.1:{admin_port}");
    // Two orders, one after the other, both refused: the first is replayed
    // from the console, the second purged.
    let mut ids: Vec<String> = Vec::new();
    for (order, phone) in [
        ("rk-console", "+79160000012"),
        ("rk-console-2", "+79160000013"),
    ] {
        let (status, _) = stack
            .post(
                "rkeeper",
                "application/json",
                &format!(
                    r#"{{"order":{{"id":"{order}","status":"Выполнен","client":{{"phone":"{phone}"}}}}}}"#
                ),
            )
            .await;
        assert_eq!(status, 202);
        for _ in 0..150 {
            let listed = admin_get(&admin, "/admin/dlq").await;
            let new = listed["dead_letters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|l| l["id"].as_str())
                .find(|id| !ids.iter().any(|known| known == id))
                .map(str::to_string);
            if let Some(id) = new {
                ids.push(id);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(ids.len(), 2, "both refused messages are dead-lettered");
    let (dead_id, other_id) = (ids[0].clone(), ids[1].clone());

    // The token is fixed; the admin replays from the console.
    fake.reset().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"messages": [{"id": "wamid.console"}]})),
        )
        .mount(&fake)
        .await;
    let shots = std::env::var("CONSOLE_SHOTS")
        .map(|d| Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(d))
        .unwrap_or_else(|_| stack._dir.path().join("shots"));
    let script = script_dir.join("console.mjs");
    let (url, id, other) = (admin.clone(), dead_id.clone(), other_id.clone());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(script)
            .env("CONSOLE_URL", url)
            .env("CONSOLE_TOKEN", TOKEN)
            .env("DEAD_LETTER_ID", id)
            .env("OTHER_LETTER_ID", other)
            .env("SHOTS", shots)
            .output()
    })
    .await
    .expect("joined")
    .expect("node runs (Node.js is on the machine)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the browser run failed:\n{said}\n{}",
        stack.logs()
    );
    for step in [
        "a wrong token is refused",
        "the cookie is Secure, HttpOnly, SameSite=Strict",
        "a replay without the CSRF token is refused",
        "the replay replayed one letter",
        "a filter by reason leaves out what does not match",
        "the purge asks first",
        "the other letter is purged",
        "the account is paused from the tenants page",
        "and resumed",
    ] {
        assert!(said.contains(&format!("ok: {step}")), "{step}: {said}");
    }

    // Exactly one message reached the provider, to the customer's phone.
    let got = wait_requests(&fake, 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = fake.received_requests().await.unwrap_or(got);
    let bodies = meta_bodies(&got);
    assert_eq!(bodies.len(), 1, "one send after the replay: {bodies:?}");
    assert_eq!(bodies[0]["to"], "+79160000012");
    let listed = admin_get(&admin, "/admin/dlq").await;
    assert_eq!(listed["count"], 0, "the DLQ is empty: {listed}");
    stack.stop().await;
}
