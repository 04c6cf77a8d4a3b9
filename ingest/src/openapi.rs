//! The OpenAPI 3 description of the ingest service, collected from the
//! handlers' own annotations as the app is built (utoipa-actix-web), so a
//! route cannot be served without being described. Served at `/openapi.json`.

use actix_web::{HttpResponse, web};
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Vestnik ingest",
        description = "Webhooks from POS/CRM systems and delivery-status callbacks from messaging providers. \
            A 2xx answer means every accepted item is durable (broker-confirmed or spooled to disk).",
    ),
    paths(openapi_json),
    tags(
        (name = "webhooks", description = "One URL per source: /api/webhook/{source}?key=<tenant key>"),
        (name = "callbacks", description = "Delivery statuses from providers"),
        (name = "operations", description = "Health, readiness, metrics"),
    )
)]
struct Base;

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3 document", content_type = "application/json")))]
#[allow(dead_code)]
fn openapi_json() {}

/// Title, tags and the paths that are not handlers; the app adds the rest
/// as it registers them.
pub fn base() -> utoipa::openapi::OpenApi {
    Base::openapi()
}

/// Serves a document at `/openapi.json`.
pub fn service(api: utoipa::openapi::OpenApi) -> actix_web::Resource {
    let body = api.to_json().unwrap_or_default();
    web::resource("/openapi.json").route(web::get().to(move || {
        let body = body.clone();
        async move {
            HttpResponse::Ok()
                .content_type("application/json")
                .body(body)
        }
    }))
}
