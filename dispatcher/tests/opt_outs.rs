//! Opt-outs (issue 11): a recipient on the tenant's stop list gets nothing
//! on any channel, journaled `skipped: opted out`. The list is filled by an
//! admin (API), by SMS.ru's code 209 and by a customer's stop word (the
//! ingest's opt-out on the status route), and emptied by an admin; phones
//! are masked in every answer and never at rest in clear.

mod common;

use std::time::Duration;

use common::{Harness, Options, event, meta_ok, requests};
use shared::EventKind;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const TOKEN: &str = "admin-token-for-tests-0002";

/// WhatsApp through Meta, then SMS through SMS.ru, both on one fake.
fn both_channels(fake: &MockServer) -> Options {
    let mut o = Options::meta(fake);
    o.channels = r#"["whatsapp", "sms"]"#;
    o.providers.push_str(&format!(
        "\n[tenants.providers.smsru]\nbase_url = \"{}\"\napi_id = \"test-api-id-0001\"\n",
        fake.uri()
    ));
    o.extra.push_str(&format!(
        "\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"
    ));
    o
}

fn smsru_answer(phone_digits: &str, code: i64) -> ResponseTemplate {
    let item = if code == 100 {
        serde_json::json!({"status": "OK", "status_code": 100, "sms_id": "000000-1"})
    } else {
        serde_json::json!({"status": "ERROR", "status_code": code, "status_text": "Номер в стоп-листе"})
    };
    ResponseTemplate::new(200).set_body_json(serde_json::json!({
        "status": "OK", "status_code": 100, "sms": {phone_digits: item}, "balance": 10.0
    }))
}

async fn admin(
    h: &Harness,
    verb: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let addr = h.running().admin_addr.expect("admin API started");
    let mut r = reqwest::Client::new()
        .request(verb, format!("http://{addr}{path}"))
        .bearer_auth(TOKEN);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.expect("admin request");
    (r.status().as_u16(), r.json().await.unwrap_or_default())
}

async fn history(h: &Harness, e: &shared::Event) -> serde_json::Value {
    // The journal is written as the event settles: wait for its end.
    for _ in 0..100 {
        let history = h
            .running()
            .worker
            .journal
            .history(&e.id.to_string())
            .await
            .expect("journal");
        let view = dispatcher::journal::view(&e.id.to_string(), &history);
        if view["status"] != "in_progress" && view["status"] != "unknown" {
            return view;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("event {} was not settled", e.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_opt_out_stops_every_channel_until_it_is_removed() {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(meta_ok("wamid.opt"))
        .mount(&fake)
        .await;
    let h = Harness::start("optout-admin", &both_channels(&fake)).await;
    let phone = "+79161230101";

    // Bad input is refused with a reason; a phone is never in a URL.
    let (status, body) = admin(
        &h,
        reqwest::Method::POST,
        "/admin/opt-outs/acme",
        Some(serde_json::json!({"phone": "not a phone"})),
    )
    .await;
    assert_eq!(status, 400, "{body}");

    let (status, added) = admin(
        &h,
        reqwest::Method::POST,
        "/admin/opt-outs/acme",
        Some(serde_json::json!({"phone": "8 (916) 123-01-01"})),
    )
    .await;
    assert_eq!(status, 200, "{added}");
    assert_eq!(added["opted_out"], true);
    let id = added["id"].as_str().expect("id").to_string();
    assert!(!added.to_string().contains("1230101"), "masked: {added}");

    // Nothing at rest in clear: the list's key and fields hide the phone.
    let mut c = common::redis_conn().await;
    let stored: Vec<(String, String)> = deadpool_redis::redis::cmd("HGETALL")
        .arg(dispatcher::opt_out::list_key(&h.prefix, "acme"))
        .query_async(&mut c)
        .await
        .expect("hgetall");
    assert_eq!(stored.len(), 1);
    assert!(
        !format!("{stored:?}").contains("1230101"),
        "clear phone at rest: {stored:?}"
    );

    let e = event(EventKind::OrderCompleted, "org:o-opt-1:Delivered", phone);
    h.publish(&e).await;
    let view = history(&h, &e).await;
    assert_eq!(view["status"], "skipped", "{view}");
    assert!(
        view.to_string().contains(r#""reason":"opted out""#),
        "{view}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        fake.received_requests()
            .await
            .unwrap_or_default()
            .is_empty(),
        "nothing sent on any channel"
    );
    assert_eq!(
        h.queue_len(&h.topology.dead_letter_queue()).await,
        0,
        "not a dead letter"
    );

    let (status, check) = admin(
        &h,
        reqwest::Method::POST,
        "/admin/opt-outs/acme/check",
        Some(serde_json::json!({"phone": phone})),
    )
    .await;
    assert_eq!((status, check["opted_out"].clone()), (200, true.into()));
    let (status, list) = admin(&h, reqwest::Method::GET, "/admin/opt-outs/acme", None).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["count"], 1);
    assert_eq!(list["opted_out"][0]["id"], id.as_str());
    assert_eq!(list["opted_out"][0]["source"], "admin");
    assert!(!list.to_string().contains("1230101"), "masked: {list}");

    // Removed: the next order is sent.
    let (status, _) = admin(
        &h,
        reqwest::Method::DELETE,
        &format!("/admin/opt-outs/acme/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = admin(
        &h,
        reqwest::Method::DELETE,
        &format!("/admin/opt-outs/acme/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 404, "removed once");
    let again = event(EventKind::OrderCompleted, "org:o-opt-2:Delivered", phone);
    h.publish(&again).await;
    assert_eq!(requests(&fake, 1, Duration::from_secs(10)).await.len(), 1);
    h.finish().await;
}

/// SMS.ru's 209 ("the number is in your stop list"): the number goes on the
/// tenant's stop list, no other channel is tried, and the customer's next
/// event sends nothing at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smsru_209_puts_the_number_on_the_stop_list() {
    let fake = MockServer::start().await;
    let digits = "79161230202";
    Mock::given(method("POST"))
        .and(path("/sms/send"))
        .respond_with(smsru_answer(digits, 209))
        .mount(&fake)
        .await;
    Mock::given(method("POST"))
        .respond_with(meta_ok("wamid.209"))
        .mount(&fake)
        .await;
    let mut o = both_channels(&fake);
    o.channels = r#"["sms", "whatsapp"]"#;
    let h = Harness::start("optout-209", &o).await;

    let e = event(
        EventKind::OrderCompleted,
        "org:o-209-1:Delivered",
        "+79161230202",
    );
    h.publish(&e).await;
    let view = history(&h, &e).await;
    assert_eq!(view["status"], "skipped", "{view}");
    assert!(view.to_string().contains("smsru 209"), "{view}");
    let got = fake.received_requests().await.unwrap_or_default();
    assert_eq!(got.len(), 1, "SMS tried once, WhatsApp not at all");
    assert_eq!(got[0].url.path(), "/sms/send");

    let phone = shared::phone::normalise("+79161230202").expect("phone");
    assert!(
        h.running()
            .worker
            .store
            .is_opted_out("acme", &phone)
            .await
            .expect("redis"),
        "on the tenant's stop list"
    );
    let next = event(
        EventKind::OrderCompleted,
        "org:o-209-2:Delivered",
        "+79161230202",
    );
    h.publish(&next).await;
    let view = history(&h, &next).await;
    assert_eq!(view["status"], "skipped", "{view}");
    assert_eq!(
        fake.received_requests().await.unwrap_or_default().len(),
        1,
        "nothing more sent"
    );
    let (_, list) = admin(&h, reqwest::Method::GET, "/admin/opt-outs/acme", None).await;
    assert_eq!(list["opted_out"][0]["source"], "smsru stop list", "{list}");
    h.finish().await;
}

/// A customer's stop word arrives as an opt-out on the status route: the
/// sender goes on the stop list of the tenant whose Meta number was
/// written to, and of no other; a stop word to an unknown number changes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_word_opts_out_of_the_tenant_whose_number_it_reached() {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(meta_ok("wamid.stop"))
        .mount(&fake)
        .await;
    let h = Harness::start("optout-inbound", &both_channels(&fake)).await;
    let publish = |account: &str, sender: &str| shared::status::OptOut {
        schema: shared::status::STATUS_SCHEMA_VERSION,
        provider: "meta".into(),
        account: account.into(),
        sender: sender.into(),
        at: chrono::Utc::now(),
        received_at: chrono::Utc::now(),
        opt_out: true,
    };
    let elsewhere = publish("999999", "+79161230304");
    let ours = publish("1234567890", "+79161230303");
    for o in [elsewhere, ours] {
        common::publish_status_message(&h, &shared::status::StatusMessage::OptOut(o)).await;
    }
    let store = &h.running().worker.store;
    let opted = |p: &'static str| async move {
        let phone = shared::phone::normalise(p).expect("phone");
        store.is_opted_out("acme", &phone).await.expect("redis")
    };
    for _ in 0..100 {
        if opted("+79161230303").await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(opted("+79161230303").await, "the sender is opted out");
    assert!(!opted("+79161230304").await, "another business's customer");
    let e = event(
        EventKind::OrderCompleted,
        "org:o-stop-1:Delivered",
        "+79161230303",
    );
    h.publish(&e).await;
    let view = history(&h, &e).await;
    assert_eq!(view["status"], "skipped", "{view}");
    assert!(
        fake.received_requests()
            .await
            .unwrap_or_default()
            .is_empty()
    );
    h.finish().await;
}
