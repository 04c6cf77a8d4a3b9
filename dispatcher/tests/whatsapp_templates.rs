//! Full WhatsApp templates (issue 11, seeds 003 and 004): a header (text,
//! image, document), body parameters, a URL button's dynamic suffix (the
//! branch's own review link) and a quick reply's payload, per language,
//! as Meta's Cloud API takes them; the same body through 360dialog;
//! Wazzup's WABA templates by `templateId` + `templateValues`; and a
//! template Meta says is missing or paused is a config error of that
//! template, dead-lettered at once, not retried.

mod common;

use std::time::Duration;

use common::{Harness, Options, event, header, meta_ok, requests};
use shared::EventKind;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// The chain's review template: the branch's photo in the header, the
/// customer's name and the branch's name in the body, the branch's review
/// link as the URL button's suffix and an opt-out quick reply; an English
/// variant with its own language code and a document header.
const TEMPLATE: &str = r#"
[tenants.vars]
brand = "Кофейня"
review_path = "r/tenant-default"

[tenants.locations."org-center"]
name = "Кофейня на Ленина"
vars = { review_path = "r/lenina-5", photo = "https://cdn.example/lenina.jpg" }

[tenants.templates.order_completed.whatsapp]
name = "review_request"
language = "ru"
params = ["{{ name }}", "{{ location_name }}"]
header = { type = "image", link = "{{ photo }}" }
buttons = [
  { type = "url", index = 0, suffix = "{{ review_path }}" },
  { type = "quick_reply", index = 1, payload = "optout:{{ order_number }}" },
]
wazzup_template_id = "2f1c0a52-7f4e-4b7a-9d59-000000000042"

[tenants.templates.order_completed.locales.en-US.whatsapp]
name = "review_request"
language = "en_US"
params = ["{{ name }}"]
header = { type = "document", link = "https://cdn.example/menu-en.pdf", filename = "Menu {{ order_number }}.pdf" }
"#;

fn meta_with_template(fake: &MockServer) -> Options {
    let mut o = Options::meta(fake);
    o.channels = r#"["whatsapp"]"#;
    o.providers.push_str(TEMPLATE);
    o
}

fn at_branch(mut e: shared::Event, location: &str) -> shared::Event {
    e.location = Some(location.into());
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_gets_header_body_and_buttons_exactly_as_the_cloud_api_takes_them() {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(meta_ok("wamid.tpl"))
        .mount(&fake)
        .await;
    let h = Harness::start("wa-tpl", &meta_with_template(&fake)).await;
    let e = at_branch(
        event(
            EventKind::OrderCompleted,
            "org:o-tpl-1:Delivered",
            "+79161231001",
        ),
        "org-center",
    );
    h.publish(&e).await;
    let mut en = event(
        EventKind::OrderCompleted,
        "org:o-tpl-2:Delivered",
        "+79161231002",
    );
    en.format = Some(shared::event::FormatOptions {
        date_locale: shared::event::DateLocale::EnUs,
        ..shared::event::FormatOptions::default()
    });
    h.publish(&en).await;
    let got = requests(&fake, 2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2);
    let bodies: Vec<serde_json::Value> = got
        .iter()
        .map(|r| r.body_json().expect("json body"))
        .collect();
    let to = |p: &str| {
        bodies
            .iter()
            .find(|b| b["to"] == p)
            .cloned()
            .expect("a request to the phone")
    };

    let mut ru = to("+79161231001");
    assert!(
        ru["biz_opaque_callback_data"]
            .as_str()
            .is_some_and(|k| k.ends_with("/whatsapp")),
        "{ru}"
    );
    ru.as_object_mut()
        .expect("object")
        .remove("biz_opaque_callback_data");
    assert_eq!(
        ru,
        serde_json::json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": "+79161231001",
            "type": "template",
            "template": {
                "name": "review_request",
                "language": {"code": "ru"},
                "components": [
                    {"type": "header", "parameters": [
                        {"type": "image", "image": {"link": "https://cdn.example/lenina.jpg"}}
                    ]},
                    {"type": "body", "parameters": [
                        {"type": "text", "text": "Иван"},
                        {"type": "text", "text": "Кофейня на Ленина"}
                    ]},
                    {"type": "button", "sub_type": "url", "index": "0", "parameters": [
                        {"type": "text", "text": "r/lenina-5"}
                    ]},
                    {"type": "button", "sub_type": "quick_reply", "index": "1", "parameters": [
                        {"type": "payload", "payload": "optout:142"}
                    ]}
                ]
            }
        })
    );

    // The English variant: its own language code and a document header.
    let en_body = to("+79161231002");
    assert_eq!(
        en_body["template"],
        serde_json::json!({
            "name": "review_request",
            "language": {"code": "en_US"},
            "components": [
                {"type": "header", "parameters": [
                    {"type": "document", "document": {
                        "link": "https://cdn.example/menu-en.pdf", "filename": "Menu 142.pdf"
                    }}
                ]},
                {"type": "body", "parameters": [{"type": "text", "text": "Иван"}]}
            ]
        })
    );
    h.finish().await;
}

/// 132001 "template name does not exist in the translation": the template
/// must be fixed; one request, dead-lettered as config with the template
/// named, no quick retry and no second attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_meta_does_not_know_is_a_config_error_of_that_template() {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(404).set_body_json(serde_json::json!({
            "error": {
                "message": "(#132001) Template name does not exist in the translation",
                "type": "OAuthException", "code": 132001,
                "error_data": {"messaging_product": "whatsapp",
                    "details": "template name (review_request) does not exist in ru"},
                "fbtrace_id": "AbCdEf"
            }
        })))
        .mount(&fake)
        .await;
    let h = Harness::start("wa-tpl-132001", &meta_with_template(&fake)).await;
    let e = at_branch(
        event(
            EventKind::OrderCompleted,
            "org:o-tpl-3:Delivered",
            "+79161231003",
        ),
        "org-center",
    );
    h.publish(&e).await;
    let dead = h.dead_letters(1, Duration::from_secs(15)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        header(&dead[0].1, "x-dlq-reason").as_deref(),
        Some("config")
    );
    let detail = header(&dead[0].1, "x-dlq-error").unwrap_or_default();
    assert!(
        detail.contains("template review_request (ru)") && detail.contains("132001"),
        "{detail}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        fake.received_requests().await.unwrap_or_default().len(),
        1,
        "not retried"
    );
    h.finish().await;
}

/// Wazzup sends the same template by its own id, the body parameters as
/// `templateValues`; 360dialog takes Meta's body as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wazzup_takes_the_template_by_its_id_and_360dialog_as_meta() {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v3/message"))
        .respond_with(ResponseTemplate::new(201).set_body_json(
            serde_json::json!({"messageId": "7c0d2f7e-0000-4000-8000-00000000f00d", "chatId": "79161231004"}),
        ))
        .mount(&fake)
        .await;
    Mock::given(method("POST"))
        .and(path("/messages"))
        .respond_with(meta_ok("wamid.360"))
        .mount(&fake)
        .await;
    // A template with body parameters only, as Wazzup takes them.
    let plain = TEMPLATE
        .replace(
            "header = { type = \"image\", link = \"{{ photo }}\" }\n",
            "",
        )
        .replace(
            "buttons = [\n  { type = \"url\", index = 0, suffix = \"{{ review_path }}\" },\n  { type = \"quick_reply\", index = 1, payload = \"optout:{{ order_number }}\" },\n]\n",
            "",
        );
    assert_ne!(plain, TEMPLATE, "the header and buttons are taken out");
    let mut o = Options::meta(&fake);
    o.channels = r#"["whatsapp"]"#;
    o.providers = format!(
        r#"
[tenants.providers.wazzup]
base_url = "{uri}"
api_key = "wz-test-key"
channel_id = "6f9d2a7e-0000-4000-8000-000000000001"
{plain}"#,
        uri = fake.uri()
    );
    let h = Harness::start("wa-tpl-wazzup", &o).await;
    let e = at_branch(
        event(
            EventKind::OrderCompleted,
            "org:o-tpl-4:Delivered",
            "+79161231004",
        ),
        "org-center",
    );
    h.publish(&e).await;
    let got = requests(&fake, 1, Duration::from_secs(10)).await;
    let body: serde_json::Value = got[0].body_json().expect("json");
    assert_eq!(body["templateId"], "2f1c0a52-7f4e-4b7a-9d59-000000000042");
    assert_eq!(
        body["templateValues"],
        serde_json::json!(["Иван", "Кофейня на Ленина"])
    );
    assert_eq!(body["chatId"], "79161231004");
    assert!(body.get("text").is_none(), "a template, not a text: {body}");
    h.finish().await;

    // 360dialog: the very body Meta gets, at its own address.
    fake.reset().await;
    Mock::given(method("POST"))
        .and(path("/messages"))
        .respond_with(meta_ok("wamid.360"))
        .mount(&fake)
        .await;
    let mut o = Options::meta(&fake);
    o.channels = r#"["whatsapp"]"#;
    o.providers = format!(
        "\n[tenants.providers.dialog360]\nbase_url = \"{}\"\napi_key = \"d360-test-key\"\n{TEMPLATE}",
        fake.uri()
    );
    let h = Harness::start("wa-tpl-360", &o).await;
    let e = at_branch(
        event(
            EventKind::OrderCompleted,
            "org:o-tpl-5:Delivered",
            "+79161231005",
        ),
        "org-center",
    );
    h.publish(&e).await;
    let got = requests(&fake, 1, Duration::from_secs(10)).await;
    let body: serde_json::Value = got[0].body_json().expect("json");
    let components = &body["template"]["components"];
    assert_eq!(components.as_array().map(Vec::len), Some(4), "{body}");
    assert_eq!(components[3]["sub_type"], "quick_reply");
    assert_eq!(components[2]["parameters"][0]["text"], "r/lenina-5");
    h.finish().await;
}
