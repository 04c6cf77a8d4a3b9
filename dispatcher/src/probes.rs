//! Health, readiness and metrics on `dispatcher.listen` (not public).

use std::sync::Arc;

use actix_web::{HttpResponse, get, web};
use utoipa_actix_web::service_config::ServiceConfig;

use crate::worker::Worker;

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(healthz).service(readyz).service(metrics);
}

/// Liveness: the process answers.
#[utoipa::path(tag = "operations", responses((status = 200, description = "`{status: \"ok\"}`")))]
#[get("/healthz")]
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// Readiness: consuming from the broker and Redis answering. A dispatcher
/// that cannot check idempotency holds its events and sends nothing.
#[utoipa::path(tag = "operations", responses(
    (status = 200, description = "`{ready: true, broker: \"up\", redis: \"up\"}`"),
    (status = 503, description = "Broker or Redis down"),
))]
#[get("/readyz")]
async fn readyz(worker: web::Data<Arc<Worker>>) -> HttpResponse {
    let h = &worker.health;
    let body = serde_json::json!({
        "ready": h.ready(),
        "broker": if h.broker_up() { "up" } else { "down" },
        "redis": if h.redis_up() { "up" } else { "down" },
    });
    if h.ready() {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(tag = "operations", responses((status = 200, description = "Metrics", content_type = "text/plain")))]
#[get("/metrics")]
async fn metrics(worker: web::Data<Arc<Worker>>) -> HttpResponse {
    worker
        .metrics
        .redis_up
        .set(i64::from(worker.health.redis_up()));
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(worker.metrics.render())
}
