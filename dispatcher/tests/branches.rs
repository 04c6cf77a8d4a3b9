//! Branches that send otherwise (issue 11): a location's own channels, its
//! own SMS sender name and its own WhatsApp account, over the tenant's;
//! a branch without overrides and an event from no branch use the
//! tenant's. A branch's bad override stops start-up naming the branch.

mod common;

use std::time::Duration;

use common::{Harness, Options, event, meta_ok, requests};
use shared::EventKind;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn chain(fake: &MockServer) -> Options {
    let mut o = Options::meta(fake);
    o.channels = r#"["whatsapp", "sms"]"#;
    o.providers.push_str(&format!(
        r#"
[tenants.providers.smsru]
base_url = "{uri}"
api_id = "test-api-id-0001"
sender = "Acme"

[tenants.locations."org-north"]
name = "North"
channels = {{ default = ["sms"] }}
providers = {{ smsru = {{ sender = "AcmeNorth" }} }}

[tenants.locations."org-south"]
name = "South"
providers = {{ meta = {{ phone_number_id = "5550001" }} }}

[tenants.locations."org-plain"]
name = "Plain"
"#,
        uri = fake.uri()
    ));
    o
}

fn at(mut e: shared::Event, location: Option<&str>) -> shared::Event {
    e.location = location.map(String::from);
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_branch_sends_through_its_own_channels_sender_and_account() {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/sms/send"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "status": "OK", "status_code": 100,
            "sms": {"79161232001": {"status": "OK", "status_code": 100, "sms_id": "1-1"}}
        })))
        .mount(&fake)
        .await;
    Mock::given(method("POST"))
        .respond_with(meta_ok("wamid.branch"))
        .mount(&fake)
        .await;
    let h = Harness::start("branches", &chain(&fake)).await;
    let cases = [
        (Some("org-north"), "+79161232001"),
        (Some("org-south"), "+79161232002"),
        (Some("org-plain"), "+79161232003"),
        (None, "+79161232004"),
        (Some("org-unknown"), "+79161232005"),
    ];
    for (i, (location, phone)) in cases.iter().enumerate() {
        let e = event(
            EventKind::OrderCompleted,
            &format!("org:o-branch-{i}:Delivered"),
            phone,
        );
        h.publish(&at(e, *location)).await;
    }
    let got = requests(&fake, cases.len(), Duration::from_secs(10)).await;
    assert_eq!(got.len(), cases.len());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        fake.received_requests().await.unwrap_or_default().len(),
        cases.len(),
        "one message each"
    );
    // Where each customer's message went.
    let mut by_phone = std::collections::BTreeMap::new();
    for r in &got {
        if r.url.path() == "/sms/send" {
            let form: std::collections::HashMap<String, String> =
                serde_urlencoded::from_bytes(&r.body).expect("form");
            by_phone.insert(
                format!("+{}", form["to"]),
                format!("sms from {}", form["from"]),
            );
        } else {
            let b: serde_json::Value = r.body_json().expect("json");
            by_phone.insert(
                b["to"].as_str().unwrap_or_default().to_string(),
                format!("whatsapp {}", r.url.path()),
            );
        }
    }
    let tenant_meta = "whatsapp /v21.0/1234567890/messages";
    assert_eq!(
        by_phone,
        std::collections::BTreeMap::from([
            // Its own channels (SMS only) and sender name.
            ("+79161232001".to_string(), "sms from AcmeNorth".to_string()),
            // Its own WhatsApp number, the tenant's token.
            (
                "+79161232002".to_string(),
                "whatsapp /v21.0/5550001/messages".to_string()
            ),
            // A branch without overrides, no branch, an unknown branch: the tenant's.
            ("+79161232003".to_string(), tenant_meta.to_string()),
            ("+79161232004".to_string(), tenant_meta.to_string()),
            ("+79161232005".to_string(), tenant_meta.to_string()),
        ])
    );
    let south = got
        .iter()
        .find(|r| r.url.path() == "/v21.0/5550001/messages")
        .expect("south's request");
    assert_eq!(
        south
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer EAAtest-token-not-real"),
        "the tenant's token with the branch's number"
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_forcing_a_provider_it_lacks_stops_start_up_naming_it() {
    let fake = MockServer::start().await;
    let mut o = chain(&fake);
    o.providers.push_str(
        r#"
[tenants.locations."org-east"]
provider_for = { sms = "exolve" }
"#,
    );
    let settings = common::settings(&common::unique("branch-bad"), &o);
    let err = match dispatcher::app::build_worker(&settings, tokio::sync::watch::channel(false).1) {
        Ok(_) => panic!("a branch forcing a missing provider must not start"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("location \"org-east\"") && err.contains("exolve"),
        "{err}"
    );
}
