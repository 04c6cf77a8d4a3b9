//! The admin HTTP API on its own port (`admin.listen`, never the public
//! webhook port), every route behind `Authorization: Bearer <admin.token>`:
//! the dead-letter queue (list, show, replay, purge: the same operations and
//! the same safety as `dispatcher dlq`), the delivery journal and the
//! tenants' stop lists (opt-outs; phones only in request bodies, never in a
//! URL, and masked in every answer).
//!
//! DLQ operations take turns (one at a time per dispatcher): reading the
//! queue holds its letters unacked until the operation ends, so two at once
//! would each see only part of it.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError, delete, get, post, web};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::{IntoParams, ToSchema};
use utoipa_actix_web::service_config::ServiceConfig;

use crate::delivery_state::Store;
use crate::dlq::{self, Dlq, Entry, Filter, Report};
use crate::journal::{self, Journal};
use shared::topology::Topology;

pub struct AdminState {
    token_hash: [u8; 32],
    pub(crate) endpoints: shared::amqp::Endpoints,
    pub(crate) topology: Topology,
    pub(crate) store: Store,
    pub(crate) journal: Journal,
    /// The tenants in force (for what a pause may name, and the console).
    pub(crate) worker: std::sync::Arc<crate::worker::Worker>,
    pub(crate) dlq_turn: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl AdminState {
    pub fn new(
        token: &str,
        endpoints: shared::amqp::Endpoints,
        worker: std::sync::Arc<crate::worker::Worker>,
    ) -> AdminState {
        AdminState {
            token_hash: Sha256::digest(token.as_bytes()).into(),
            endpoints,
            topology: worker.topology.clone(),
            store: worker.store.clone(),
            journal: worker.journal.clone(),
            worker,
            dlq_turn: std::sync::Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Whether `token` is the admin token (compared in constant time).
    pub(crate) fn is_token(&self, token: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        bool::from(presented.ct_eq(&self.token_hash))
    }

    pub(crate) async fn dlq(&self) -> Result<Dlq, AdminError> {
        Dlq::connect(&self.endpoints, self.topology.clone())
            .await
            .map_err(|e| AdminError::Unavailable(e.to_string()))
    }
}

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(dlq_list)
        .service(dlq_replay)
        .service(dlq_purge)
        .service(dlq_show)
        .service(events_find)
        .service(event_show)
        .service(opt_outs_list)
        .service(opt_outs_add)
        .service(opt_outs_check)
        .service(opt_outs_remove)
        .service(pauses_list)
        .service(pauses_pause)
        .service(pauses_resume);
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("missing or wrong admin token: send Authorization: Bearer <admin.token>")]
    Unauthorized,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unavailable(String),
}

/// Every refusal of the admin API.
#[derive(Serialize, ToSchema)]
#[schema(as = AdminError)]
pub struct ErrorBody {
    pub error: &'static str,
    pub message: String,
}

impl ResponseError for AdminError {
    fn status_code(&self) -> StatusCode {
        match self {
            AdminError::Unauthorized => StatusCode::UNAUTHORIZED,
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let error = match self {
            AdminError::Unauthorized => "unauthorized",
            AdminError::BadRequest(_) => "bad_request",
            AdminError::NotFound(_) => "not_found",
            AdminError::Unavailable(_) => "unavailable",
        };
        let mut r = HttpResponse::build(self.status_code());
        if matches!(self, AdminError::Unauthorized) {
            r.insert_header(("WWW-Authenticate", "Bearer"));
        }
        r.json(ErrorBody {
            error,
            message: self.to_string(),
        })
    }
}

/// Proof that the request carried the admin token (an extractor: a handler
/// that takes it cannot run without it).
pub struct Authorized;

impl FromRequest for Authorized {
    type Error = AdminError;
    type Future = std::future::Ready<Result<Authorized, AdminError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let ok = req
            .app_data::<web::Data<AdminState>>()
            .zip(
                req.headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::trim),
            )
            .is_some_and(|(state, token)| state.is_token(token));
        std::future::ready(if ok {
            Ok(Authorized)
        } else {
            Err(AdminError::Unauthorized)
        })
    }
}

/// Which dead letters: every given field must match; none given = all.
#[derive(Debug, Clone, Default, Deserialize, IntoParams, ToSchema)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FilterQuery {
    /// Event id.
    pub id: Option<String>,
    pub tenant: Option<String>,
    /// iiko, rkeeper, yclients, amocrm, booking.
    pub source: Option<String>,
    /// poison, recipient, config, uncertain, second_attempt_failed, lookup_failed,
    /// expired_while_paused, internal.
    pub reason: Option<String>,
    /// Only letters dead-lettered at least this many seconds ago (at most
    /// ten years).
    #[serde(default, deserialize_with = "age")]
    #[param(maximum = 315_360_000)]
    #[schema(maximum = 315_360_000)]
    pub older_than_secs: Option<u64>,
}

/// Ten years, in seconds: a bound an age filter can have in the document.
const MAX_AGE_SECS: u64 = 315_360_000;

fn age<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Option::<u64>::deserialize(d)? {
        Some(s) if s > MAX_AGE_SECS => Err(serde::de::Error::custom(format!(
            "older_than_secs: at most {MAX_AGE_SECS} (ten years)"
        ))),
        v => Ok(v),
    }
}

impl FilterQuery {
    fn filter(&self) -> Filter {
        Filter {
            id: self.id.clone(),
            tenant: self.tenant.clone(),
            source: self.source.clone(),
            reason: self.reason.clone(),
            older_than: self.older_than_secs.map(Duration::from_secs),
            ids: Vec::new(),
            include_uncertain: false,
        }
    }

    fn is_empty(&self) -> bool {
        self.id.is_none()
            && self.tenant.is_none()
            && self.source.is_none()
            && self.reason.is_none()
            && self.older_than_secs.is_none()
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    #[serde(default)]
    pub filter: FilterQuery,
    /// Required when the filter is empty: replay every dead letter.
    #[serde(default)]
    pub all: bool,
    /// Count what would be replayed, change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Also replay `uncertain` letters (the provider may have delivered
    /// them); without it only a replay by id takes them.
    #[serde(default)]
    pub include_uncertain: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    #[serde(default)]
    pub filter: FilterQuery,
    /// Required when the filter is empty: purge every dead letter.
    #[serde(default)]
    pub all: bool,
    /// Must be true: purged letters are gone for good.
    #[serde(default)]
    pub confirm: bool,
}

#[derive(Serialize, ToSchema)]
pub struct DeadLetters {
    pub count: usize,
    pub dead_letters: Vec<Entry>,
}

#[derive(Serialize, ToSchema)]
pub struct Replayed {
    pub dry_run: bool,
    #[serde(flatten)]
    pub report: Report,
}

#[derive(Serialize, ToSchema)]
pub struct Purged {
    pub purged: u64,
}

fn needs_filter(filter: &FilterQuery, all: bool, what: &str) -> Result<(), AdminError> {
    if filter.is_empty() && !all {
        return Err(AdminError::BadRequest(format!(
            "{what} needs a filter (id, tenant, source, reason, older_than_secs) or \"all\": true"
        )));
    }
    Ok(())
}

/// Dead letters with their reasons (recipients masked).
#[utoipa::path(tag = "dead letters", params(FilterQuery), security(("admin_token" = [])),
    responses(
        (status = 200, body = DeadLetters),
        (status = 400, description = "A query parameter unknown or of the wrong type", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 503, description = "Broker unreachable", body = ErrorBody),
    ))]
#[get("/admin/dlq")]
async fn dlq_list(
    _: Authorized,
    q: web::Query<FilterQuery>,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, AdminError> {
    let _turn = state.dlq_turn.lock().await;
    let dlq = state.dlq().await?;
    let listed = dlq.list(&q.filter()).await;
    dlq.close().await;
    let entries = listed.map_err(|e| AdminError::Unavailable(e.to_string()))?;
    Ok(HttpResponse::Ok().json(DeadLetters {
        count: entries.len(),
        dead_letters: entries,
    }))
}

/// One dead letter: its failure and the full event (personal data masked).
#[utoipa::path(tag = "dead letters", security(("admin_token" = [])),
    params(("id" = String, Path, description = "Event id")),
    responses(
        (status = 200, description = "`{failure, event, history}`: the failure headers, the event, its journal"),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
#[get("/admin/dlq/{id}")]
async fn dlq_show(
    _: Authorized,
    id: web::Path<String>,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, AdminError> {
    let _turn = state.dlq_turn.lock().await;
    let dlq = state.dlq().await?;
    let shown = dlq.show(&id).await;
    dlq.close().await;
    match shown.map_err(|e| AdminError::Unavailable(e.to_string()))? {
        Some((entry, event)) => {
            let history = state.journal.history(&id).await.unwrap_or_default();
            Ok(HttpResponse::Ok().json(serde_json::json!({
                "failure": entry,
                "event": dlq::mask_event(event),
                "history": history,
            })))
        }
        None => Err(AdminError::NotFound(format!("no dead letter with id {id}"))),
    }
}

/// Sends dead letters through the pipeline again. Idempotent: a channel
/// that already sent is not sent again; each letter leaves the DLQ only once
/// its replacement is confirmed by the broker, so an interrupted replay can
/// simply be repeated.
#[utoipa::path(tag = "dead letters", security(("admin_token" = [])),
    request_body = ReplayRequest,
    responses(
        (status = 200, body = Replayed),
        (status = 400, description = "Neither a filter nor all", body = ErrorBody),
        (status = 401, body = ErrorBody),
    ))]
#[post("/admin/dlq/replay")]
async fn dlq_replay(
    _: Authorized,
    req: web::Json<ReplayRequest>,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, AdminError> {
    needs_filter(&req.filter, req.all, "replay")?;
    let _turn = state.dlq_turn.lock().await;
    let dlq = state.dlq().await?;
    let report = dlq
        .replay(
            &Filter {
                include_uncertain: req.include_uncertain,
                ..req.filter.filter()
            },
            &state.store,
            req.dry_run,
            |_, _| {},
        )
        .await;
    dlq.close().await;
    let report = report.map_err(|e| AdminError::Unavailable(e.to_string()))?;
    tracing::info!(
        replayed = report.replayed,
        skipped = report.skipped,
        failed = report.failed,
        dry_run = req.dry_run,
        "dlq replay through the admin API"
    );
    Ok(HttpResponse::Ok().json(Replayed {
        dry_run: req.dry_run,
        report,
    }))
}

/// Deletes dead letters for good.
#[utoipa::path(tag = "dead letters", security(("admin_token" = [])),
    request_body = PurgeRequest,
    responses(
        (status = 200, body = Purged),
        (status = 400, description = "No filter and not all, or confirm missing", body = ErrorBody),
        (status = 401, body = ErrorBody),
    ))]
#[post("/admin/dlq/purge")]
async fn dlq_purge(
    _: Authorized,
    req: web::Json<PurgeRequest>,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, AdminError> {
    needs_filter(&req.filter, req.all, "purge")?;
    if !req.confirm {
        return Err(AdminError::BadRequest(
            "purge deletes dead letters for good: send \"confirm\": true".into(),
        ));
    }
    let _turn = state.dlq_turn.lock().await;
    let dlq = state.dlq().await?;
    let purged = dlq.purge(&req.filter.filter()).await;
    dlq.close().await;
    let purged = purged.map_err(|e| AdminError::Unavailable(e.to_string()))?;
    tracing::warn!(purged, "dlq purge through the admin API");
    Ok(HttpResponse::Ok().json(Purged { purged }))
}

/// An event's history: received, each attempt (provider, outcome, message
/// id), second attempt, callbacks, fallback, dead letter.
#[utoipa::path(tag = "journal", security(("admin_token" = [])),
    params(("id" = String, Path, description = "Event id (the webhook answer's `events[].id`)")),
    responses(
        (status = 200, description = "`{id, status, history: [{at, step, ...}]}`"),
        (status = 401, body = ErrorBody),
        (status = 404, description = "Unknown, or older than dispatcher.journal_ttl_secs", body = ErrorBody),
    ))]
#[get("/admin/events/{id}")]
async fn event_show(
    _: Authorized,
    id: web::Path<String>,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, AdminError> {
    let history = state
        .journal
        .history(&id)
        .await
        .map_err(|e| AdminError::Unavailable(e.to_string()))?;
    if history.is_empty() {
        return Err(AdminError::NotFound(format!(
            "no journal for event {id} (unknown, not consumed yet, or expired)"
        )));
    }
    Ok(HttpResponse::Ok().json(journal::view(&id, &history)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FindQuery {
    pub tenant: String,
    /// iiko, rkeeper, yclients, amocrm, booking; all when absent.
    pub source: Option<String>,
    /// The source's record id (order id, record id, lead id, booking id) or the order number.
    #[serde(rename = "ref")]
    #[param(rename = "ref")]
    pub reference: String,
}

/// The events of one source record, with each one's status and history.
#[utoipa::path(tag = "journal", security(("admin_token" = [])), params(FindQuery),
    responses(
        (status = 200, description = "`{events: [{id, status, history}]}`, oldest first"),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
    ))]
#[get("/admin/events")]
async fn events_find(
    _: Authorized,
    q: web::Query<FindQuery>,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, AdminError> {
    let ids = state
        .journal
        .find_in(&q.tenant, q.source.as_deref(), &q.reference)
        .await
        .map_err(|e| AdminError::Unavailable(e.to_string()))?;
    let mut events = Vec::with_capacity(ids.len());
    for id in ids {
        let history = state
            .journal
            .history(&id)
            .await
            .map_err(|e| AdminError::Unavailable(e.to_string()))?;
        events.push(journal::view(&id, &history));
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({ "events": events })))
}

/// A phone in a request body (never in a URL, where access logs keep it).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PhoneRequest {
    /// Any common form (`+7 916 123-45-67`, `89161234567`).
    #[schema(example = "+7 916 123-45-67")]
    pub phone: String,
}

#[derive(Serialize, ToSchema)]
pub struct OptOuts {
    pub tenant: String,
    pub count: usize,
    pub opted_out: Vec<crate::opt_out::OptedOut>,
}

#[derive(Serialize, ToSchema)]
pub struct OptOutAnswer {
    /// The entry's id (a digest of the phone): what `DELETE` takes.
    pub id: String,
    /// The phone, masked.
    pub phone: String,
    /// On the stop list now (`check`), or put on it by this call (`add`:
    /// false when it was already).
    pub opted_out: bool,
}

fn tenant_id(tenant: &str) -> Result<&str, AdminError> {
    let ok = !tenant.is_empty()
        && tenant.len() <= 64
        && tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(tenant)
    } else {
        Err(AdminError::BadRequest(
            "tenant: letters, digits, '-' or '_'".into(),
        ))
    }
}

fn phone_of(req: &PhoneRequest) -> Result<shared::phone::Phone, AdminError> {
    shared::phone::normalise(&req.phone)
        .map_err(|e| AdminError::BadRequest(format!("phone: {} (not a phone number)", e.reason())))
}

fn unavailable(e: crate::delivery_state::StoreError) -> AdminError {
    AdminError::Unavailable(e.to_string())
}

/// The tenant's stop list, newest first (phones masked).
#[utoipa::path(tag = "opt-outs", security(("admin_token" = [])),
    params(("tenant" = String, Path, description = "Tenant id", pattern = r"^[A-Za-z0-9_-]{1,64}$")),
    responses(
        (status = 200, body = OptOuts),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 503, description = "Redis unreachable", body = ErrorBody),
    ))]
#[get("/admin/opt-outs/{tenant}")]
async fn opt_outs_list(
    _: Authorized,
    tenant: web::Path<String>,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, AdminError> {
    let tenant = tenant_id(&tenant)?;
    let list = state.store.opted_out(tenant).await.map_err(unavailable)?;
    Ok(HttpResponse::Ok().json(OptOuts {
        tenant: tenant.to_string(),
        count: list.len(),
        opted_out: list,
    }))
}

/// Puts a phone on the tenant's stop list: nothing more is sent to it on
/// any channel.
#[utoipa::path(tag = "opt-outs", security(("admin_token" = [])),
    params(("tenant" = String, Path, description = "Tenant id", pattern = r"^[A-Za-z0-9_-]{1,64}$")),
    request_body = PhoneRequest,
    responses(
        (status = 200, body = OptOutAnswer),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 503, description = "Redis unreachable", body = ErrorBody),
    ))]
#[post("/admin/opt-outs/{tenant}")]
async fn opt_outs_add(
    _: Authorized,
    tenant: web::Path<String>,
    body: web::Json<PhoneRequest>,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, AdminError> {
    let tenant = tenant_id(&tenant)?;
    let phone = phone_of(&body)?;
    let added = state
        .store
        .opt_out(tenant, &phone, "admin")
        .await
        .map_err(unavailable)?;
    tracing::info!(tenant, phone = %shared::mask::phone(phone.e164()), added, "admin: opted out");
    Ok(HttpResponse::Ok().json(OptOutAnswer {
        id: crate::opt_out::entry_id(tenant, &phone),
        phone: shared::mask::phone(phone.e164()),
        opted_out: added,
    }))
}

/// Whether a phone is on the tenant's stop list.
#[utoipa::path(tag = "opt-outs", security(("admin_token" = [])),
    params(("tenant" = String, Path, description = "Tenant id", pattern = r"^[A-Za-z0-9_-]{1,64}$")),
    request_body = PhoneRequest,
    responses(
        (status = 200, body = OptOutAnswer),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 503, description = "Redis unreachable", body = ErrorBody),
    ))]
#[post("/admin/opt-outs/{tenant}/check")]
async fn opt_outs_check(
    _: Authorized,
    tenant: web::Path<String>,
    body: web::Json<PhoneRequest>,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, AdminError> {
    let tenant = tenant_id(&tenant)?;
    let phone = phone_of(&body)?;
    let out = state
        .store
        .is_opted_out(tenant, &phone)
        .await
        .map_err(unavailable)?;
    Ok(HttpResponse::Ok().json(OptOutAnswer {
        id: crate::opt_out::entry_id(tenant, &phone),
        phone: shared::mask::phone(phone.e164()),
        opted_out: out,
    }))
}

/// Takes an entry off the tenant's stop list, by its id (from the list or
/// `check`): the phone may be written to again.
#[utoipa::path(tag = "opt-outs", security(("admin_token" = [])),
    params(
        ("tenant" = String, Path, description = "Tenant id", pattern = r"^[A-Za-z0-9_-]{1,64}$"),
        ("id" = String, Path, description = "The entry's id", pattern = r"^[0-9A-Fa-f]{1,64}$"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "Not on the list", body = ErrorBody),
        (status = 503, description = "Redis unreachable", body = ErrorBody),
    ))]
#[delete("/admin/opt-outs/{tenant}/{id}")]
async fn opt_outs_remove(
    _: Authorized,
    path: web::Path<(String, String)>,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, AdminError> {
    let (tenant, id) = path.into_inner();
    let tenant = tenant_id(&tenant)?;
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(AdminError::BadRequest(
            "id: the entry's id from the list or check (hex)".into(),
        ));
    }
    let removed = state.store.opt_in(tenant, &id).await.map_err(unavailable)?;
    if !removed {
        return Err(AdminError::NotFound(format!(
            "no entry {id} on {tenant}'s stop list"
        )));
    }
    tracing::info!(tenant, id = %id, "admin: opt-out removed");
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Serialize, ToSchema)]
pub struct Pauses {
    pub count: usize,
    /// Oldest first.
    pub paused: Vec<crate::pause::Paused>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResumeRequest {
    /// The pause's id from the list: `<tenant>|<provider>|<account>`.
    pub id: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PauseRequest {
    /// `<tenant>|<provider>|<account>`: a provider account the tenant has
    /// configured (the console's tenants page, or a pause's id, names it).
    pub id: String,
}

#[derive(Serialize, ToSchema)]
pub struct PausedByHand {
    pub id: String,
    pub paused: bool,
}

/// Whether `id` names a provider account the tenant has configured.
pub(crate) fn configured_account(state: &AdminState, id: &str) -> bool {
    crate::pause::names_configured_account(&state.worker, id)
}

/// Pauses a provider account by hand (fleet-wide): its messages fall back
/// or are held as after an account-level failure, and no probe resumes it;
/// only a resume does.
#[utoipa::path(tag = "channel health", security(("admin_token" = [])),
    request_body = PauseRequest,
    responses(
        (status = 200, body = PausedByHand),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "No such provider account for the tenant", body = ErrorBody),
        (status = 503, description = "Redis unreachable", body = ErrorBody),
    ))]
#[post("/admin/pauses/pause")]
async fn pauses_pause(
    _: Authorized,
    body: web::Json<PauseRequest>,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, AdminError> {
    if !configured_account(&state, &body.id) {
        return Err(AdminError::NotFound(format!(
            "{} names no provider account of a tenant (tenant|provider|account)",
            body.id
        )));
    }
    state
        .store
        .pause_by_hand(&body.id)
        .await
        .map_err(unavailable)?;
    tracing::warn!(id = %body.id, "admin: account paused by hand");
    Ok(HttpResponse::Ok().json(PausedByHand {
        id: body.id.clone(),
        paused: true,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct Resumed {
    pub id: String,
    pub resumed: bool,
}

/// Provider accounts paused after an account-level failure (fleet-wide):
/// nothing goes through them; their messages fall back or are held.
#[utoipa::path(tag = "channel health", security(("admin_token" = [])),
    responses(
        (status = 200, body = Pauses),
        (status = 401, body = ErrorBody),
        (status = 503, description = "Redis unreachable", body = ErrorBody),
    ))]
#[get("/admin/pauses")]
async fn pauses_list(
    _: Authorized,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, AdminError> {
    let paused = state.store.pauses().await.map_err(unavailable)?;
    Ok(HttpResponse::Ok().json(Pauses {
        count: paused.len(),
        paused,
    }))
}

/// Resumes a paused account now, without waiting for a probe: its held
/// messages go out first, in order, and new ones queue behind them until
/// they are out (the pause shows `draining` meanwhile). If the account is
/// still broken, its next message pauses it again.
#[utoipa::path(tag = "channel health", security(("admin_token" = [])),
    request_body = ResumeRequest,
    responses(
        (status = 200, body = Resumed),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "Not paused", body = ErrorBody),
        (status = 503, description = "Redis unreachable", body = ErrorBody),
    ))]
#[post("/admin/pauses/resume")]
async fn pauses_resume(
    _: Authorized,
    body: web::Json<ResumeRequest>,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, AdminError> {
    let resumed = state.store.resume(&body.id).await.map_err(unavailable)?;
    if !resumed {
        let draining = matches!(state.store.paused(&body.id).await, Ok(Some(p)) if p.draining);
        return Err(AdminError::NotFound(if draining {
            format!(
                "{} is not paused: it is healthy and releasing its held messages",
                body.id
            )
        } else {
            format!("{} is not paused", body.id)
        }));
    }
    tracing::info!(id = %body.id, "admin: account resumed");
    Ok(HttpResponse::Ok().json(Resumed {
        id: body.id.clone(),
        resumed,
    }))
}
