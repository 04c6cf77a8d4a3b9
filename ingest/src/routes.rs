//! HTTP handlers: thin. Authentication, body limits and content types here;
//! parsing in `sources`, normalisation in `accept`, durability in `durable`.

use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use bytes::BytesMut;
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::json;
use shared::SourceId;
use utoipa_actix_web::service_config::ServiceConfig;

use crate::accept::{self, Context};
use crate::app::AppState;
use crate::auth;
use crate::callbacks::{self, CallbackError, Provider};
use crate::openapi::Document;
use crate::params;
use crate::problem::Problem;
use crate::sources::{Body, ContentKind, Item};

/// Every route, each registered through utoipa so it is in /openapi.json.
/// Order matters: `/api/callback/meta` before `/api/callback/{provider}`.
pub fn configure(cfg: &mut ServiceConfig) {
    public(cfg);
    cfg.service(metrics);
}

/// The public port's routes when `/metrics` is served on its own listener.
pub fn public(cfg: &mut ServiceConfig) {
    // One operation per source in the document (`crate::openapi`), one
    // route here: the source is the path's last segment.
    cfg.route("/api/webhook/{source}", web::post().to(webhook))
        .route("/api/webhook/{source}", web::get().to(check))
        .service(meta_verify)
        .service(meta_callback)
        .service(dialog360_callback)
        .service(wazzup_callback)
        .service(healthz)
        .service(readyz);
}

/// The internal metrics listener (`ingest.metrics_listen`).
pub fn metrics_only(cfg: &mut actix_web::web::ServiceConfig) {
    cfg.service(metrics);
}

/// No route for this request: 405 with `Allow` when the document gives the
/// path other methods, else 404.
pub async fn not_found(
    req: HttpRequest,
    doc: web::Data<Document>,
) -> Result<HttpResponse, Problem> {
    match shared::allow::allowed_methods(&doc.value, req.path()) {
        Some(methods) => Err(Problem::MethodNotAllowed(methods.join(", "))),
        None => Err(Problem::NotFound),
    }
}

/// A webhook's answer: 202 when events were queued, 200 when nothing is to
/// be sent.
#[derive(Serialize, utoipa::ToSchema)]
pub struct WebhookAnswer {
    /// `queued` (202) or `ignored` (200).
    status: &'static str,
    /// The events made durable, in the order of the items they came from.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    events: Vec<Queued>,
    /// Items of the body that are not notified, and why.
    ignored: Vec<Ignored>,
    /// Why the whole body was ignored (`empty batch`).
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Queued {
    /// The event's id, to find it in the delivery journal.
    id: String,
    /// `order_completed`, `booking_created`, ...
    kind: &'static str,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Ignored {
    /// The item's position in the body (0 for a single event).
    index: usize,
    reason: String,
}

/// Seed 000's answer to opening a webhook URL.
#[derive(Serialize, utoipa::ToSchema)]
#[allow(non_snake_case)]
pub struct CheckAnswer {
    /// `Success`, `Wrong parameters` or `Error`.
    Status: &'static str,
    ErrorMessage: Option<String>,
    WarningMessage: Option<String>,
}

/// A source's webhook. The body is the source's own format; the answer
/// comes once every accepted item is durable (broker-confirmed or spooled).
/// Described per source by `crate::openapi`.
async fn webhook(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let started = Instant::now();
    let source_label = SourceId::from_path(&path)
        .map(SourceId::as_str)
        .unwrap_or("unknown");
    let result = handle_webhook(&req, &path, payload, &state).await;
    let outcome = match &result {
        Ok((_, outcome)) => *outcome,
        Err(p) => p.code(),
    };
    state
        .metrics
        .requests
        .with_label_values(&[source_label, outcome])
        .inc();
    match result {
        Ok((resp, outcome)) => {
            if outcome == "queued" {
                state
                    .metrics
                    .ack_seconds
                    .with_label_values(&[source_label])
                    .observe(started.elapsed().as_secs_f64());
            }
            Ok(resp)
        }
        Err(p) => {
            if p.is_server_error() {
                tracing::warn!(source = source_label, error = %p, "webhook not accepted");
            } else {
                tracing::info!(source = source_label, error = p.code(), "webhook refused");
            }
            Err(p)
        }
    }
}

async fn handle_webhook(
    req: &HttpRequest,
    path: &str,
    payload: web::Payload,
    state: &AppState,
) -> Result<(HttpResponse, &'static str), Problem> {
    let source_id =
        SourceId::from_path(path).ok_or_else(|| Problem::UnknownSource(truncate(path, 40)))?;
    let url = params::parse(req.query_string());
    let key = auth::presented_key(req, url.key.as_deref()).ok_or(Problem::Unauthorized)?;
    let tenant = state
        .tenants
        .load()
        .authenticate(key)
        .ok_or(Problem::Unauthorized)?;
    if !url.errors.is_empty() {
        return Err(Problem::WrongParameters(url.errors.join("; ")));
    }
    let source = state
        .sources
        .get(source_id)
        .ok_or_else(|| Problem::UnknownSource(path.to_string()))?;
    let content = content_kind(req, source.accepts())?;
    let bytes = read_body(req, payload, state.max_body).await?;
    let body = match content {
        ContentKind::Json => Body::Json(&bytes),
        ContentKind::Form => Body::Form(&bytes),
    };
    let items = source
        .parse(body, &tenant)
        .map_err(|e| Problem::BadRequest(e.to_string()))?;
    if items.is_empty() {
        return Ok((
            HttpResponse::Ok().json(WebhookAnswer {
                status: "ignored",
                events: Vec::new(),
                ignored: Vec::new(),
                reason: Some("empty batch"),
            }),
            "ignored",
        ));
    }

    let route = url.route.as_ref().map(|r| state.sealed_route(r));
    let ctx = Context {
        tenant: &tenant,
        source: source_id,
        received_at: chrono::Utc::now(),
        format: url.format.as_ref().or(state.booking_defaults(source_id)),
        route: route.as_ref(),
    };
    let mut events = Vec::new();
    let mut ignored = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        match item {
            Item::Accept(draft) => match accept::to_event(draft, &ctx) {
                Ok(e) => events.push(e),
                Err(reason) => ignored.push(Ignored { index, reason }),
            },
            Item::Ignore(reason) => ignored.push(Ignored { index, reason }),
        }
    }
    if events.is_empty() {
        tracing::debug!(source = %source_id, tenant = %tenant.id, ignored = ignored.len(), "webhook ignored");
        return Ok((
            HttpResponse::Ok().json(WebhookAnswer {
                status: "ignored",
                events: Vec::new(),
                ignored,
                reason: None,
            }),
            "ignored",
        ));
    }

    let outcomes =
        futures_util::future::join_all(events.iter().map(|e| state.durable.store(e))).await;
    if let Some(Err(e)) = outcomes.iter().find(|o| o.is_err()) {
        return Err(Problem::Unavailable(e.to_string()));
    }
    for e in &events {
        tracing::debug!(event_id = %e.id, tenant = %e.tenant, source = %e.source, kind = %e.kind,
            recipient = ?e.recipient, "event queued");
    }
    let queued: Vec<Queued> = events
        .iter()
        .map(|e| Queued {
            id: e.id.to_string(),
            kind: e.kind.as_str(),
        })
        .collect();
    Ok((
        HttpResponse::Accepted().json(WebhookAnswer {
            status: "queued",
            events: queued,
            ignored,
            reason: None,
        }),
        "queued",
    ))
}

/// Meta's subscription handshake: the challenge, verbatim, as text/plain.
#[utoipa::path(
    tag = "callbacks",
    params(
        ("hub.mode" = String, Query, description = "`subscribe`"),
        ("hub.verify_token" = String, Query, description = "callbacks.meta_verify_token"),
        ("hub.challenge" = String, Query, description = "Echoed back"),
    ),
    responses(
        (status = 200, description = "The challenge", content_type = "text/plain"),
        (status = 403, description = "Wrong verify token"),
    )
)]
#[get("/api/callback/meta")]
async fn meta_verify(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, CallbackError> {
    let result = callbacks::meta::verify_subscription(&state.callbacks, req.query_string()).map(
        |challenge| {
            let resp = HttpResponse::Ok()
                .content_type("text/plain; charset=utf-8")
                .insert_header(("X-Content-Type-Options", "nosniff"))
                .body(challenge);
            (resp, "verified")
        },
    );
    callbacks::finish(&state.metrics, Provider::Meta, result)
}

/// Meta WhatsApp Cloud API delivery statuses, signed with
/// `X-Hub-Signature-256` (the app secret).
#[utoipa::path(
    tag = "callbacks",
    request_body(content = serde_json::Value, description = "Meta's webhook envelope: `entry[].changes[].value` with `statuses[]` and `messages[]` (schema: `crate::callbacks::meta::schema`)"),
    responses(
        (status = 200, description = "Statuses and stop words recorded (or nothing to record)", body = callbacks::CallbackAnswer),
        (status = 400, description = "Malformed body", body = crate::problem::Body),
        (status = 401, description = "Missing or wrong signature", body = crate::problem::Body),
        (status = 413, description = "Body over ingest.max_body_bytes", body = crate::problem::Body),
        (status = 503, description = "Not configured here, or not durable yet (Meta retries)", body = crate::problem::Body),
    )
)]
#[post("/api/callback/meta")]
async fn meta_callback(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, CallbackError> {
    let result = async {
        let cb = &state.callbacks;
        callbacks::meta::ensure_configured(cb)?;
        let body = read_body(&req, payload, state.max_body).await?;
        callbacks::meta::authenticate(cb, &req, &body)?;
        let parsed = callbacks::meta::parse(&body, Provider::Meta, chrono::Utc::now())
            .map_err(CallbackError::Malformed)?;
        callbacks::accept(&state, Provider::Meta, parsed).await
    }
    .await;
    callbacks::finish(&state.metrics, Provider::Meta, result)
}

/// 360dialog's webhook (the Cloud API's envelope, or on-premise statuses
/// at the top level); the key is in the configured header or the URL,
/// checked before the body is read.
#[utoipa::path(
    tag = "callbacks",
    request_body(content = serde_json::Value, description = "360dialog's webhook: the Cloud API's envelope (schema: `crate::callbacks::meta::schema`)"),
    responses(
        (status = 200, description = "Statuses and stop words recorded (or nothing to record)", body = callbacks::CallbackAnswer),
        (status = 400, description = "Malformed body", body = crate::problem::Body),
        (status = 401, description = "Missing or wrong key", body = crate::problem::Body),
        (status = 413, description = "Body over ingest.max_body_bytes", body = crate::problem::Body),
        (status = 503, description = "Not configured here, or not durable yet (360dialog retries)", body = crate::problem::Body),
    )
)]
#[post("/api/callback/dialog360")]
async fn dialog360_callback(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, CallbackError> {
    status_callback(req, payload, state, Provider::Dialog360).await
}

/// Wazzup's webhook (statuses, inbound messages, the test ping); the crmKey
/// is in the URL or `Authorization: Bearer`, checked before the body is
/// read.
#[utoipa::path(
    tag = "callbacks",
    request_body(content = serde_json::Value, description = "Wazzup's webhook: `statuses`, `messages`, `test` (schema: `crate::callbacks::wazzup::schema`)"),
    responses(
        (status = 200, description = "Statuses and stop words recorded (or nothing to record)", body = callbacks::CallbackAnswer),
        (status = 400, description = "Malformed body", body = crate::problem::Body),
        (status = 401, description = "Missing or wrong key", body = crate::problem::Body),
        (status = 413, description = "Body over ingest.max_body_bytes", body = crate::problem::Body),
        (status = 503, description = "Not configured here, or not durable yet (Wazzup retries)", body = crate::problem::Body),
    )
)]
#[post("/api/callback/wazzup")]
async fn wazzup_callback(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, CallbackError> {
    status_callback(req, payload, state, Provider::Wazzup).await
}

async fn status_callback(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    provider: Provider,
) -> Result<HttpResponse, CallbackError> {
    let result = async {
        let cb = &state.callbacks;
        match provider {
            Provider::Wazzup => callbacks::wazzup::authenticate(cb, &req)?,
            _ => callbacks::dialog360::authenticate(cb, &req)?,
        }
        let body = read_body(&req, payload, state.max_body).await?;
        let now = chrono::Utc::now();
        let parsed = match provider {
            Provider::Wazzup => callbacks::wazzup::parse(&body, now),
            _ => callbacks::meta::parse(&body, provider, now),
        }
        .map_err(CallbackError::Malformed)?;
        callbacks::accept(&state, provider, parsed).await
    }
    .await;
    callbacks::finish(&state.metrics, provider, result)
}

fn content_kind(req: &HttpRequest, accepted: &[ContentKind]) -> Result<ContentKind, Problem> {
    let expected = || {
        accepted
            .iter()
            .map(|c| c.mime())
            .collect::<Vec<_>>()
            .join(" or ")
    };
    let raw = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mut parts = raw.split(';');
    let essence = parts.next().unwrap_or("").trim();
    let charset_ok = parts
        .filter_map(|p| p.trim().strip_prefix("charset="))
        .all(|c| matches!(c.trim_matches('"'), "utf-8" | "utf8"));
    let kind = if essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
    {
        Some(ContentKind::Json)
    } else if essence == "application/x-www-form-urlencoded" {
        Some(ContentKind::Form)
    } else {
        None
    };
    match kind {
        Some(k) if accepted.contains(&k) && charset_ok => Ok(k),
        _ => Err(Problem::UnsupportedMediaType {
            got: truncate(&raw, 80),
            expected: format!("{} (UTF-8)", expected()),
        }),
    }
}

async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<bytes::Bytes, Problem> {
    let declared = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(size) = declared.filter(|&s| s > limit) {
        return Err(Problem::TooLarge { size, limit });
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(4096).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| Problem::BadRequest(format!("body could not be read: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(Problem::TooLarge {
                size: buf.len() + chunk.len(),
                limit,
            });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Seed 000's parameter check, for every source: open the webhook URL in a
/// browser and read `Status`, `ErrorMessage`, `WarningMessage`. Described
/// per source by `crate::openapi`.
async fn check(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let answer =
        |status: StatusCode, verdict: &'static str, errors: Vec<String>, warnings: Vec<String>| {
            HttpResponse::build(status).json(CheckAnswer {
                Status: verdict,
                ErrorMessage: (!errors.is_empty()).then(|| errors.join("; ")),
                WarningMessage: (!warnings.is_empty()).then(|| warnings.join("; ")),
            })
        };
    let Some(source) = SourceId::from_path(&path) else {
        return answer(
            StatusCode::NOT_FOUND,
            "Error",
            vec![Problem::UnknownSource(truncate(&path, 40)).to_string()],
            vec![],
        );
    };
    let url = params::parse(req.query_string());
    let tenant = auth::presented_key(&req, url.key.as_deref())
        .and_then(|k| state.tenants.load().authenticate(k));
    if tenant.is_none() {
        return answer(
            StatusCode::UNAUTHORIZED,
            "Error",
            vec![Problem::Unauthorized.to_string()],
            url.warnings,
        );
    }
    let mut warnings = url.warnings;
    if source == SourceId::Booking && url.route.is_none() && url.errors.is_empty() {
        warnings.push(
            "no key_api/channel_id/chat_type: messages go through the tenant's configured provider"
                .into(),
        );
    }
    if !url.errors.is_empty() {
        return answer(
            StatusCode::BAD_REQUEST,
            "Wrong parameters",
            url.errors,
            warnings,
        );
    }
    answer(StatusCode::OK, "Success", vec![], warnings)
}

/// Liveness: the process answers.
#[utoipa::path(tag = "operations", responses((status = 200, description = "`{status: \"ok\"}`")))]
#[get("/healthz")]
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Readiness: the broker is up, or the spool still has room.
#[utoipa::path(tag = "operations", responses(
    (status = 200, description = "Ready: `{ready, broker, spool}`"),
    (status = 503, description = "Broker down and the spool nearly full"),
))]
#[get("/readyz")]
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let broker_up = state.durable.broker.is_up();
    let spool = &state.durable.spool;
    let spool_has_room = spool.pending_bytes() < spool.max_bytes() / 10 * 9;
    let ready = broker_up || spool_has_room;
    let body = json!({
        "ready": ready,
        "broker": if broker_up { "up" } else { "down" },
        "spool": {
            "records": spool.pending_records(),
            "bytes": spool.pending_bytes(),
            "max_bytes": spool.max_bytes(),
        },
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(tag = "operations", responses((status = 200, description = "Metrics", content_type = "text/plain")))]
#[get("/metrics")]
async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let m = &state.metrics;
    m.spool_records
        .set(state.durable.spool.pending_records() as i64);
    m.spool_bytes
        .set(state.durable.spool.pending_bytes() as i64);
    let broker = &state.durable.broker;
    m.broker_up.set(i64::from(broker.is_up()));
    m.broker_blocked.set(i64::from(broker.is_blocked()));
    m.broker_circuit_open
        .set(i64::from(broker.is_circuit_open()));
    // The broker counts; the counter catches up (both only grow).
    m.broker_stuck.inc_by(
        broker
            .stuck_connections()
            .saturating_sub(m.broker_stuck.get()),
    );
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(m.render())
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}
