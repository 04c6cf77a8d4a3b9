//! The OpenAPI 3 description of the dispatcher's HTTP surfaces: probes and
//! metrics on `dispatcher.listen`, the admin API on `admin.listen`. Collected
//! from the handlers' own annotations as the apps are built
//! (utoipa-actix-web), so a route cannot be served without being described.
//! Served at `/openapi.json` on both ports.

use actix_web::{App, HttpResponse, web};
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

pub fn base() -> utoipa::openapi::OpenApi {
    Base::openapi()
}

/// The whole document: both apps' routes as they register them.
pub fn document() -> utoipa::openapi::OpenApi {
    let (_, mut api) = App::new()
        .into_utoipa_app()
        .openapi(base())
        .configure(crate::probes::configure)
        .split_for_parts();
    let (_, admin) = App::new()
        .into_utoipa_app()
        .openapi(base())
        .configure(crate::admin::configure)
        .split_for_parts();
    api.merge(admin);
    api
}

/// Serves a document at `/openapi.json`.
pub fn service(api: &utoipa::openapi::OpenApi) -> actix_web::Resource {
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
