//! Account notices (issue 12): the provider's own webhooks about a sender
//! account, as the ingest forwards them on the status route. Meta's
//! `message_template_status_update` PAUSED holds the messages of that one
//! template (others still go) until APPROVED; Meta's `account_update`
//! DISABLE holds everything of that WhatsApp Business Account, unprobed,
//! until REINSTATE; Wazzup's `channelsUpdates` pause a channel until it is
//! `active` again. A notice older than the last one changes nothing; a
//! notice about an account no tenant has pauses nothing.

mod common;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::{Harness, Options, event, meta_ok};
use redis::AsyncCommands;
use shared::EventKind;
use shared::status::{AccountNotice, STATUS_SCHEMA_VERSION, StatusMessage, TemplateRef};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const MESSAGES: &str = "/v21.0/1234567890/messages";
const NUMBER: &str = "/v21.0/1234567890";
const WABA: &str = "104996122399160";
const CHANNEL: &str = "6f9d2a7e-0000-4000-8000-000000000001";

/// The review template for completed orders; booking confirmations go as
/// another template.
const TEMPLATES: &str = r#"
[tenants.templates.order_completed.whatsapp]
name = "review_request"
language = "ru"
params = ["{{ name }}"]

[tenants.templates.booking_created.whatsapp]
name = "booking_confirmed"
language = "ru"
params = ["{{ name }}"]
"#;

fn meta_options(fake: &MockServer) -> Options {
    let mut o = Options::meta(fake);
    o.channels = r#"["whatsapp"]"#;
    o.providers = o.providers.replace(
        "timeout_ms = 2000\n",
        &format!("timeout_ms = 2000\nwaba_id = \"{WABA}\"\n"),
    );
    o.providers.push_str(TEMPLATES);
    // A pure period: how soon a held message looks again.
    o.dispatcher_extra = "hold_recheck_secs = 1\n".into();
    o
}

async fn healthy_meta(fake: &MockServer) {
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

fn notice(
    provider: &str,
    account: &str,
    template: Option<(&str, &str)>,
    healthy: bool,
    event: &str,
    at: DateTime<Utc>,
) -> StatusMessage {
    StatusMessage::Notice(AccountNotice {
        schema: STATUS_SCHEMA_VERSION,
        provider: provider.into(),
        account: account.into(),
        template: template.map(|(name, language)| TemplateRef {
            name: name.into(),
            language: language.into(),
        }),
        healthy,
        event: event.into(),
        at,
        received_at: Utc::now(),
        notice: true,
    })
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

/// The pauses hash as the dispatchers keep it: field → reason.
async fn pauses(h: &Harness) -> Vec<(String, serde_json::Value)> {
    let mut c = common::redis_conn().await;
    let all: Vec<(String, String)> = c
        .hgetall(format!("{}:pauses", h.prefix))
        .await
        .expect("hgetall");
    let mut out: Vec<_> = all
        .into_iter()
        .filter(|(k, _)| !k.starts_with('~'))
        .map(|(k, v)| (k, serde_json::from_str(&v).expect("a pause is JSON")))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Template names of the sends, sorted.
fn templates(requests: &[Request]) -> Vec<String> {
    let mut t: Vec<String> = requests
        .iter()
        .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
        .map(|b| b["template"]["name"].as_str().unwrap_or("").to_string())
        .collect();
    t.sort();
    t
}

fn keys(requests: &[Request]) -> Vec<String> {
    let mut keys: Vec<String> = requests
        .iter()
        .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
        .filter_map(|b| b["biz_opaque_callback_data"].as_str().map(str::to_string))
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_meta_paused_holds_only_its_messages_until_approved_again() {
    let fake = MockServer::start().await;
    healthy_meta(&fake).await;
    let h = Harness::start("notice-tpl", &meta_options(&fake)).await;
    let paused_at = Utc::now();
    // About a WABA no tenant has: nothing to pause.
    common::publish_status_message(
        &h,
        &notice(
            "meta",
            "999999999999999",
            Some(("review_request", "ru")),
            false,
            "template PAUSED",
            paused_at,
        ),
    )
    .await;
    common::publish_status_message(
        &h,
        &notice(
            "meta",
            WABA,
            Some(("review_request", "ru")),
            false,
            "template PAUSED",
            paused_at,
        ),
    )
    .await;
    let id = "acme|meta|1234567890/template/review_request/ru";
    until(
        "the template is paused",
        Duration::from_secs(10),
        || async { pauses(&h).await.iter().any(|(k, _)| k == id) },
    )
    .await;
    let listed = pauses(&h).await;
    assert_eq!(listed.len(), 1, "only that template: {listed:?}");
    assert_eq!(listed[0].1["notice"], true, "{listed:?}");
    assert_eq!(listed[0].1["reason"], "meta notice: template PAUSED");

    for i in 0..3 {
        h.publish(&event(
            EventKind::OrderCompleted,
            &format!("org:o-notice-{i}:Delivered"),
            &format!("+7916000100{i}"),
        ))
        .await;
    }
    h.publish(&event(
        EventKind::BookingCreated,
        "yc:b-notice-1:created",
        "+79160001009",
    ))
    .await;
    until(
        "the other template goes",
        Duration::from_secs(10),
        || async { !received(&fake, "POST", MESSAGES).await.is_empty() },
    )
    .await;
    // Several hold periods: the paused template's messages stay held, and
    // nothing probes a pause a probe cannot see.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sent = received(&fake, "POST", MESSAGES).await;
    assert_eq!(templates(&sent), ["booking_confirmed"], "held");
    assert!(
        received(&fake, "GET", NUMBER).await.is_empty(),
        "not probed"
    );

    // An APPROVED older than the PAUSED (reordered on the way): stale.
    common::publish_status_message(
        &h,
        &notice(
            "meta",
            WABA,
            Some(("review_request", "ru")),
            true,
            "template APPROVED",
            paused_at - chrono::Duration::seconds(60),
        ),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(pauses(&h).await.len(), 1, "a stale notice resumes nothing");
    assert_eq!(received(&fake, "POST", MESSAGES).await.len(), 1);

    common::publish_status_message(
        &h,
        &notice(
            "meta",
            WABA,
            Some(("review_request", "ru")),
            true,
            "template APPROVED",
            Utc::now(),
        ),
    )
    .await;
    until(
        "the held messages are sent",
        Duration::from_secs(20),
        || async { received(&fake, "POST", MESSAGES).await.len() >= 4 },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let sent = received(&fake, "POST", MESSAGES).await;
    assert_eq!(
        templates(&sent),
        [
            "booking_confirmed",
            "review_request",
            "review_request",
            "review_request"
        ]
    );
    assert_eq!(keys(&sent).len(), 4, "each sent once");
    assert!(pauses(&h).await.is_empty());
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_banned_business_account_holds_everything_unprobed_until_reinstated() {
    let fake = MockServer::start().await;
    healthy_meta(&fake).await;
    let h = Harness::start("notice-ban", &meta_options(&fake)).await;
    common::publish_status_message(
        &h,
        &notice(
            "meta",
            WABA,
            None,
            false,
            "DISABLED_UPDATE DISABLE",
            Utc::now(),
        ),
    )
    .await;
    until("the account is paused", Duration::from_secs(10), || async {
        pauses(&h)
            .await
            .iter()
            .any(|(k, _)| k == "acme|meta|1234567890")
    })
    .await;
    for i in 0..3 {
        h.publish(&event(
            EventKind::OrderCompleted,
            &format!("org:o-ban-{i}:Delivered"),
            &format!("+7916000200{i}"),
        ))
        .await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(received(&fake, "POST", MESSAGES).await.is_empty(), "held");
    assert!(
        received(&fake, "GET", NUMBER).await.is_empty(),
        "a ban is not probed: the number reads fine while the account is banned"
    );
    common::publish_status_message(
        &h,
        &notice(
            "meta",
            WABA,
            None,
            true,
            "DISABLED_UPDATE REINSTATE",
            Utc::now(),
        ),
    )
    .await;
    until(
        "the held messages are sent",
        Duration::from_secs(20),
        || async { received(&fake, "POST", MESSAGES).await.len() >= 3 },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let sent = received(&fake, "POST", MESSAGES).await;
    assert_eq!((sent.len(), keys(&sent).len()), (3, 3), "each sent once");
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wazzup_channel_offline_is_held_and_probed_until_active() {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v3/message"))
        .respond_with(
            ResponseTemplate::new(201).set_body_json(serde_json::json!({"messageId": "wz-1"})),
        )
        .mount(&fake)
        .await;
    // The probe sees the channel offline until the notice says active.
    Mock::given(method("GET"))
        .and(path("/v3/channels"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!([
            {"channelId": CHANNEL, "transport": "whatsapp", "state": "phoneUnavailable"}
        ])))
        .mount(&fake)
        .await;
    let mut o = Options::meta(&fake);
    o.channels = r#"["whatsapp"]"#;
    o.providers = format!(
        r#"
[tenants.providers.wazzup]
base_url = "{}"
api_key = "wz-test-key"
channel_id = "{CHANNEL}"
timeout_ms = 1000
"#,
        fake.uri()
    );
    o.dispatcher_extra = "hold_recheck_secs = 1\n".into();
    let h = Harness::start("notice-wz", &o).await;
    common::publish_status_message(
        &h,
        &notice(
            "wazzup",
            CHANNEL,
            None,
            false,
            "channel state phoneUnavailable",
            Utc::now(),
        ),
    )
    .await;
    until("the channel is paused", Duration::from_secs(10), || async {
        !pauses(&h).await.is_empty()
    })
    .await;
    for i in 0..2 {
        h.publish(&event(
            EventKind::OrderCompleted,
            &format!("org:o-wz-{i}:Delivered"),
            &format!("+7916000300{i}"),
        ))
        .await;
    }
    until("the channel is probed", Duration::from_secs(10), || async {
        !received(&fake, "GET", "/v3/channels").await.is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        received(&fake, "POST", "/v3/message").await.is_empty(),
        "held"
    );
    common::publish_status_message(
        &h,
        &notice(
            "wazzup",
            CHANNEL,
            None,
            true,
            "channel state active",
            Utc::now(),
        ),
    )
    .await;
    until(
        "the held messages are sent",
        Duration::from_secs(20),
        || async { received(&fake, "POST", "/v3/message").await.len() >= 2 },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let sent = received(&fake, "POST", "/v3/message").await;
    let mut ids: Vec<String> = sent
        .iter()
        .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
        .filter_map(|b| b["crmMessageId"].as_str().map(str::to_string))
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!((sent.len(), ids.len()), (2, 2), "each sent once");
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admins_pause_outlives_the_providers_notices() {
    let fake = MockServer::start().await;
    healthy_meta(&fake).await;
    let h = Harness::start("notice-manual", &meta_options(&fake)).await;
    let mut c = common::redis_conn().await;
    let id = "acme|meta|1234567890";
    let by_hand = serde_json::json!({"reason": "admin", "since": Utc::now(),
        "next_probe": Utc::now(), "probes": 0, "manual": true});
    let _: () = c
        .hset(format!("{}:pauses", h.prefix), id, by_hand.to_string())
        .await
        .expect("hset");
    common::publish_status_message(
        &h,
        &notice(
            "meta",
            WABA,
            None,
            true,
            "DISABLED_UPDATE REINSTATE",
            Utc::now(),
        ),
    )
    .await;
    let mark = format!("~notice|{id}");
    until("the notice is taken", Duration::from_secs(10), || {
        let (mut c, key, mark) = (c.clone(), format!("{}:pauses", h.prefix), mark.clone());
        async move { c.hexists::<_, _, bool>(key, mark).await.unwrap_or(false) }
    })
    .await;
    let listed = pauses(&h).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].1["manual"], true, "{listed:?}");
    h.finish().await;
}
