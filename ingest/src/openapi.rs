//! The OpenAPI 3.1 description of what the public listener serves, built
//! once at start and served at `/openapi.json`. The handlers' own
//! annotations give the callbacks and probes (utoipa-actix-web, so such a
//! route cannot be served without being described); each source's webhook
//! gets its own operation from the source registry: its content types, the
//! schema of its parser's types and a real body as the example. A 405 names
//! the methods this document gives the path (`Allow`).

use actix_web::{App, HttpResponse, web};
use serde_json::{Map, Value, json};
use utoipa::OpenApi;
use utoipa_actix_web::AppExt;

use crate::sources::{Components, ContentKind, Registry, Source};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Vestnik ingest",
        description = "Webhooks from POS/CRM systems and delivery-status callbacks from messaging providers. \
            A 2xx answer means every accepted item is durable (broker-confirmed or spooled to disk).",
    ),
    paths(openapi_json),
    components(schemas(crate::problem::Body, crate::routes::WebhookAnswer, crate::routes::CheckAnswer,
        crate::callbacks::CallbackAnswer)),
    tags(
        (name = "webhooks", description = "One URL per source: /api/webhook/<source>, with the tenant's key"),
        (name = "callbacks", description = "Delivery statuses and inbound messages from providers"),
        (name = "operations", description = "Health, readiness, metrics"),
    )
)]
struct Base;

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3 document", content_type = "application/json")))]
#[allow(dead_code)]
fn openapi_json() {}

/// The public listener's document, as served.
pub struct Document {
    pub value: Value,
    body: String,
}

impl Document {
    /// `with_metrics`: `/metrics` is served here (no `ingest.metrics_listen`).
    /// `dialog360_header`: the header 360dialog's key comes in.
    pub fn new(sources: &Registry, with_metrics: bool, dialog360_header: &str) -> Document {
        let (_, api) = App::new()
            .into_utoipa_app()
            .openapi(Base::openapi())
            .configure(if with_metrics {
                crate::routes::configure
            } else {
                crate::routes::public
            })
            .split_for_parts();
        let mut value = serde_json::to_value(api).unwrap_or_default();
        add_webhooks(&mut value, sources);
        add_callback_bodies(&mut value);
        add_security(&mut value, dialog360_header);
        let body = value.to_string();
        Document { value, body }
    }
}

/// Serves the document at `/openapi.json`.
pub fn service() -> actix_web::Resource {
    web::resource("/openapi.json").route(web::get().to(|doc: web::Data<Document>| async move {
        HttpResponse::Ok()
            .content_type("application/json")
            .body(doc.body.clone())
    }))
}

fn object(v: &mut Value) -> &mut Map<String, Value> {
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    match v {
        Value::Object(m) => m,
        _ => unreachable!("made an object above"),
    }
}

fn error(description: &str) -> Value {
    json!({"description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

/// The tenant's key, in any of the three places it is read from.
fn tenant_key() -> Value {
    json!([{"tenant_key_query": []}, {"tenant_key_header": []}, {"tenant_bearer": []}])
}

/// `POST` (the webhook) and `GET` (seed 000's parameter check) per source.
fn add_webhooks(doc: &mut Value, sources: &Registry) {
    let mut components = Components::new();
    let mut paths = Map::new();
    for source in sources.all() {
        let id = source.id().as_str();
        let mut content = Map::new();
        for (i, kind) in source.accepts().iter().enumerate() {
            let (schema, example) = match kind {
                ContentKind::Json => (source.json_schema(&mut components), json_example(source, i)),
                ContentKind::Form => (
                    source
                        .form_schema()
                        .unwrap_or_else(|| json!({"type": "object"})),
                    form_example(source, i),
                ),
            };
            let mut media = json!({"schema": schema});
            if let Some(example) = example {
                object(&mut media).insert("example".into(), example);
            }
            content.insert(kind.mime().to_string(), media);
        }
        let post = json!({
            "tags": ["webhooks"],
            "operationId": format!("webhook_{id}"),
            "summary": format!("A {id} webhook"),
            "description": format!("The body is what {id} sends (docs/SOURCES.md). The answer comes once \
                every accepted event is durable (broker-confirmed or spooled). Booking URLs may carry \
                formatting and route parameters (`key_api`, `channel_id`, `chat_type`, ...) in the query."),
            "security": tenant_key(),
            "requestBody": {"required": true, "content": content},
            "responses": {
                "202": {"description": "Queued: the events made, and the items not notified",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/WebhookAnswer"}}}},
                "200": {"description": "Understood, nothing to send (not a final status, no usable recipient, empty batch)",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/WebhookAnswer"}}}},
                "400": error("Malformed body or wrong URL parameters"),
                "401": error("Missing or wrong key"),
                "413": error("Body over ingest.max_body_bytes"),
                "415": error("A content type this source does not send"),
                "503": {
                    "description": "Could not be made durable; retry",
                    "headers": {"Retry-After": {"description": "Seconds", "schema": {"type": "integer"}}},
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                },
            },
        });
        let check = json!({
            "tags": ["webhooks"],
            "operationId": format!("check_{id}"),
            "summary": format!("Check a {id} webhook URL (seed 000)"),
            "description": "Open the webhook URL in a browser: `Status`, `ErrorMessage` and \
                `WarningMessage` say whether the key and the query parameters are right.",
            "security": tenant_key(),
            "responses": {
                "200": {"description": "`Success`, perhaps with warnings",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CheckAnswer"}}}},
                "400": {"description": "`Wrong parameters`",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CheckAnswer"}}}},
                "401": {"description": "Missing or wrong key",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CheckAnswer"}}}},
            },
        });
        paths.insert(
            format!("/api/webhook/{id}"),
            json!({"get": check, "post": post}),
        );
    }
    object(&mut doc["paths"]).extend(paths);
    object(&mut doc["components"]["schemas"]).extend(components);
}

fn json_example(source: &dyn Source, index: usize) -> Option<Value> {
    (index == 0)
        .then(|| serde_json::from_str(source.example()).ok())
        .flatten()
}

/// A form example as the object OpenAPI describes a form body with.
fn form_example(source: &dyn Source, index: usize) -> Option<Value> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(source.example().trim()).ok()?;
    (index == 0).then(|| {
        Value::Object(
            pairs
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect(),
        )
    })
}

/// The callbacks' bodies: the schema of what their parsers read, and a real
/// body as the example.
fn add_callback_bodies(doc: &mut Value) {
    let meta = || {
        (
            crate::callbacks::meta::schema(),
            include_str!("../openapi-examples/meta_wa_status_delivered_pywa_fixture.json"),
        )
    };
    let bodies = [
        ("/api/callback/meta", meta()),
        ("/api/callback/dialog360", meta()),
        (
            "/api/callback/wazzup",
            (
                crate::callbacks::wazzup::schema(),
                include_str!("../openapi-examples/wazzup_webhook_status_delivered_docs.json"),
            ),
        ),
    ];
    for (path, (schema, example)) in bodies {
        let media = doc
            .get_mut("paths")
            .and_then(|p| p.get_mut(path))
            .and_then(|p| p.get_mut("post"))
            .and_then(|p| p.get_mut("requestBody"))
            .and_then(|p| p.get_mut("content"))
            .and_then(|p| p.get_mut("application/json"));
        if let Some(media) = media {
            let m = object(media);
            m.insert("schema".into(), schema);
            if let Ok(example) = serde_json::from_str::<Value>(example) {
                m.insert("example".into(), example);
            }
        }
    }
}

fn add_security(doc: &mut Value, dialog360_header: &str) {
    let schemes = json!({
        "tenant_key_query": {"type": "apiKey", "in": "query", "name": "key",
            "description": "The tenant's key (`tenants.keys`)"},
        "tenant_key_header": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
        "tenant_bearer": {"type": "http", "scheme": "bearer"},
        "meta_signature": {"type": "apiKey", "in": "header", "name": "X-Hub-Signature-256",
            "description": "`sha256=` and the HMAC-SHA256 of the body with the app secret (`callbacks.meta_app_secrets`)"},
        "dialog360_key_header": {"type": "apiKey", "in": "header", "name": dialog360_header,
            "description": "`callbacks.dialog360_secrets` (header `callbacks.dialog360_header`)"},
        "dialog360_key_query": {"type": "apiKey", "in": "query", "name": "key",
            "description": "`callbacks.dialog360_secrets`"},
        "wazzup_key_query": {"type": "apiKey", "in": "query", "name": "key",
            "description": "`callbacks.wazzup_keys`"},
        "wazzup_bearer": {"type": "http", "scheme": "bearer",
            "description": "`callbacks.wazzup_keys` (Wazzup's crmKey)"},
    });
    object(&mut doc["components"]["securitySchemes"]).extend(object_of(schemes));
    let requirements = [
        (
            "/api/callback/meta",
            "post",
            json!([{"meta_signature": []}]),
        ),
        (
            "/api/callback/dialog360",
            "post",
            json!([{"dialog360_key_header": []}, {"dialog360_key_query": []}]),
        ),
        (
            "/api/callback/wazzup",
            "post",
            json!([{"wazzup_key_query": []}, {"wazzup_bearer": []}]),
        ),
    ];
    for (path, method, security) in requirements {
        let op = doc
            .get_mut("paths")
            .and_then(|p| p.get_mut(path))
            .and_then(|p| p.get_mut(method));
        if let Some(op) = op {
            object(op).insert("security".into(), security);
        }
    }
}

fn object_of(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The examples are copies of `../shared/fixtures`, byte for byte (the
    /// booking one, Vestnik's own shape, of docs/SOURCES.md's).
    #[test]
    fn examples_are_the_fixtures() {
        let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let fixtures = here.join("../../shared/fixtures");
        let examples = here.join("openapi-examples");
        let mut compared = 0;
        for entry in std::fs::read_dir(&examples).expect("openapi-examples") {
            let path = entry.expect("entry").path();
            let name = path.file_name().expect("a name");
            let ours = std::fs::read(&path).expect("an example");
            match std::fs::read(fixtures.join(name)) {
                Ok(theirs) => {
                    assert_eq!(ours, theirs, "{} differs from the fixture", path.display());
                    compared += 1;
                }
                Err(_) => {
                    let docs = std::fs::read_to_string(here.join("../docs/SOURCES.md"))
                        .expect("docs/SOURCES.md");
                    let ours = String::from_utf8(ours).expect("UTF-8");
                    assert!(
                        docs.contains(ours.trim()),
                        "{} is in no fixture nor in docs",
                        path.display()
                    );
                }
            }
        }
        assert!(compared >= 6, "the fixtures were found ({compared})");
    }

    /// Every source's example is a body its parser takes, and the document
    /// carries it, in the source's first content type.
    #[test]
    fn every_source_has_a_schema_and_an_example_its_parser_takes() {
        let sources = Registry::new();
        let doc = Document::new(&sources, true, "X-Vestnik-Secret");
        let tenant = shared::Tenant {
            id: "t".into(),
            sources: Default::default(),
        };
        for source in sources.all() {
            let first = source.accepts()[0];
            let bytes = source.example().as_bytes();
            let body = match first {
                ContentKind::Json => crate::sources::Body::Json(bytes),
                ContentKind::Form => crate::sources::Body::Form(bytes),
            };
            let parsed = source.parse(body, &tenant);
            assert!(parsed.is_ok(), "{}: {parsed:?}", source.id().as_str());
            let path = format!("/api/webhook/{}", source.id().as_str());
            let media = &doc.value["paths"][&path]["post"]["requestBody"]["content"][first.mime()];
            assert!(
                media["example"].is_object() || media["example"].is_array(),
                "{path}"
            );
            let schema = &media["schema"];
            assert!(schema.is_object(), "{path}");
        }
        // The schemas the operations refer to are all there.
        let text = doc.value.to_string();
        for (i, _) in text.match_indices("#/components/schemas/") {
            let name: String = text[i + 21..].chars().take_while(|c| *c != '"').collect();
            assert!(
                doc.value["components"]["schemas"].get(&name).is_some(),
                "{name} is referred to and missing"
            );
        }
    }
}
