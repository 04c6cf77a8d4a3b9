//! The OpenAPI 3 description of the dispatcher's HTTP surfaces: probes and
//! metrics on `dispatcher.listen`, the admin API on `admin.listen`. Collected
//! from the handlers' own annotations as the apps are built
//! (utoipa-actix-web), so a route cannot be served without being described.
//! Each port serves its own document at `/openapi.json`: what that port
//! serves, nothing else.

use actix_web::{App, HttpRequest, HttpResponse, web};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_actix_web::AppExt;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Vestnik dispatcher",
        description = "Probes and metrics on `dispatcher.listen` (default :9090); the admin API \
            (`/admin/...`: dead-letter queue and delivery journal) on `admin.listen` \
            (default 127.0.0.1:9091), with `Authorization: Bearer <admin.token>`.",
    ),
    paths(openapi_json),
    modifiers(&AdminToken),
    tags(
        (name = "dead letters", description = "Inspect, replay and purge the dead-letter queue"),
        (name = "journal", description = "What happened to each event"),
        (name = "channel health", description = "Provider accounts paused after an account-level failure"),
        (name = "operations", description = "Health, readiness, metrics"),
    )
)]
struct Base;

struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3 document", content_type = "application/json")))]
#[allow(dead_code)]
fn openapi_json() {}

/// One listener's document, as served at its `/openapi.json`; a request
/// no route takes is answered from it (405 with `Allow`, or 404).
pub struct Document {
    pub value: serde_json::Value,
    body: String,
}

impl Document {
    fn of(configure: fn(&mut utoipa_actix_web::service_config::ServiceConfig)) -> Document {
        let (_, api) = App::new()
            .into_utoipa_app()
            .openapi(Base::openapi())
            .configure(configure)
            .split_for_parts();
        let value = serde_json::to_value(api).unwrap_or_default();
        let body = value.to_string();
        Document { value, body }
    }

    /// `dispatcher.listen`: probes and metrics.
    pub fn probes() -> Document {
        let mut doc = Document::of(crate::probes::configure);
        // No admin route here: no token, no tags of theirs.
        if let Some(o) = doc.value.as_object_mut() {
            o.remove("security");
            if let Some(c) = o.get_mut("components").and_then(|c| c.as_object_mut()) {
                c.remove("securitySchemes");
            }
            if let Some(tags) = o.get_mut("tags").and_then(|t| t.as_array_mut()) {
                tags.retain(|t| t["name"] == "operations");
            }
        }
        doc.body = doc.value.to_string();
        doc
    }

    /// `admin.listen`: the admin API.
    pub fn admin() -> Document {
        let mut doc = Document::of(crate::admin::configure);
        require_filter_or_all(&mut doc.value);
        doc.body = doc.value.to_string();
        doc
    }
}

/// A replay or purge names what it takes (a filter that is not empty) or
/// says `all`; a purge also says `confirm` (as `needs_filter` checks).
fn require_filter_or_all(doc: &mut serde_json::Value) {
    use serde_json::json;
    let filter: Vec<serde_json::Value> = ["id", "tenant", "source", "reason", "older_than_secs"]
        .iter()
        .map(|k| json!({"required": [k], "properties": {*k: {"not": {"type": "null"}}}}))
        .collect();
    let named = json!({"anyOf": [
        {"required": ["all"], "properties": {"all": {"const": true}}},
        {"required": ["filter"], "properties": {"filter": {"anyOf": filter}}},
    ]});
    let confirmed = json!({"required": ["confirm"], "properties": {"confirm": {"const": true}}});
    let schemas = &mut doc["components"]["schemas"];
    if let Some(replay) = schemas
        .get_mut("ReplayRequest")
        .and_then(|s| s.as_object_mut())
    {
        replay.insert("allOf".into(), json!([named]));
    }
    if let Some(purge) = schemas
        .get_mut("PurgeRequest")
        .and_then(|s| s.as_object_mut())
    {
        purge.insert("allOf".into(), json!([named, confirmed]));
    }
}

/// Serves the listener's document at `/openapi.json`.
pub fn service() -> actix_web::Resource {
    web::resource("/openapi.json").route(web::get().to(|doc: web::Data<Document>| async move {
        HttpResponse::Ok()
            .content_type("application/json")
            .body(doc.body.clone())
    }))
}

/// For each documented path a template also matches (`/admin/dlq/purge`
/// under `/admin/dlq/{id}`), a resource that takes the methods the path
/// does not have and answers them with [`fallback`] (405), registered
/// before the routes so the template's operation does not take them.
pub fn shadowed(doc: &Document) -> Vec<actix_web::Resource> {
    shared::allow::shadowed(&doc.value)
        .into_iter()
        .map(|(path, methods)| {
            web::resource(path)
                .guard(actix_web::guard::fn_guard(move |ctx| {
                    !methods.iter().any(|m| m == ctx.head().method.as_str())
                }))
                .to(fallback)
        })
        .collect()
}

/// No route for this request: 405 with the methods the document gives the
/// path (RFC 9110's `Allow`), else 404; the admin API's error shape.
pub async fn fallback(req: HttpRequest, doc: web::Data<Document>) -> HttpResponse {
    match shared::allow::allowed_methods(&doc.value, req.path()) {
        Some(methods) => {
            let allow = methods.join(", ");
            HttpResponse::MethodNotAllowed()
                .insert_header(("Allow", allow.as_str()))
                .json(serde_json::json!({
                    "error": "method_not_allowed",
                    "message": format!("method not allowed here; allowed: {allow}"),
                }))
        }
        None => HttpResponse::NotFound()
            .json(serde_json::json!({"error": "not_found", "message": "no such route"})),
    }
}
