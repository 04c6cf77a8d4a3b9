//! Tenants: each one's channels in order, the provider accounts behind them
//! (the tenant's and its branches'; an account is an id or a digest of its
//! credentials, never a key), whether each is healthy or paused (with
//! pause and resume buttons), its sources (what each source's webhooks must
//! say to count, and how many came in the last hour), and what the last
//! hour brought: provider calls by outcome, dead letters by reason.

use std::collections::BTreeMap;

use actix_web::{HttpResponse, web};
use maud::html;

use super::{ConsoleError, Form, Session, csrf, html_page, layout, redirect};
use crate::admin::AdminState;
use crate::pause::pause_id;

/// One provider account of a tenant, as the page lists it.
struct Account {
    channel: &'static str,
    provider: &'static str,
    account: String,
    /// Empty for the tenant's own; else the branch (location) ids.
    branches: Vec<String>,
}

pub async fn page(
    session: Session,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, ConsoleError> {
    let hour = crate::stats::window(&state.store, 60).await?;
    let pauses: BTreeMap<String, crate::pause::Paused> = state
        .store
        .pauses()
        .await?
        .into_iter()
        .map(|p| (p.id.clone(), p))
        .collect();
    let tenancy = state.worker.tenancy.load_full();
    let mut ids: Vec<&String> = tenancy.tenants.keys().collect();
    ids.sort();
    let content = html! {
        p { (ids.len()) " tenant" @if ids.len() != 1 { "s" } ". Secrets are never shown; an account is the provider's id for it or a digest of its key." }
        @for id in ids {
            @let t = &tenancy.tenants[id];
            @let accounts = {
                let mut list: Vec<Account> = Vec::new();
                let routings = std::iter::once((None, &t.routing))
                    .chain(t.branches.iter().map(|(b, r)| (Some(b.clone()), r)));
                for (branch, routing) in routings {
                    for (channel, providers) in &routing.providers {
                        for p in providers {
                            let account = p.account();
                            match list.iter_mut().find(|a| a.provider == p.name() && a.account == account) {
                                Some(a) => a.branches.extend(branch.clone()),
                                None => list.push(Account {
                                    channel: channel.as_str(),
                                    provider: p.name(),
                                    account,
                                    branches: branch.clone().into_iter().collect(),
                                }),
                            }
                        }
                    }
                }
                list
            };
            section.tenant data-tenant=(id) {
                h2 { "Tenant " code { (id) } }
                p {
                    "Channels: " (t.routing.policy.default.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(" → "))
                    @for (kind, list) in &t.routing.policy.by_kind {
                        "; " (kind.as_str()) ": " (list.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(" → "))
                    }
                    @if !t.branches.is_empty() { "; " (t.branches.len()) " branch" @if t.branches.len() != 1 { "es" } " with their own routing" }
                    "; held messages expire after " (super::age(t.hold_max.as_secs() as i64)) "."
                }
                table.accounts {
                    thead { tr { th { "Channel" } th { "Provider" } th { "Account" } th { "Branches" } th { "Health" } th.num { "Sent (1 h)" } th.num { "Failed (1 h)" } th {} } }
                    tbody {
                        @for a in &accounts {
                            @let pid = pause_id(id, a.provider, &a.account);
                            @let paused = pauses.get(&pid);
                            @let calls = hour.by(&["attempt", id.as_str(), a.provider, "*"], 3);
                            @let sent = calls.get("sent").copied().unwrap_or(0);
                            @let failed = calls.iter().filter(|(o, _)| o.as_str() != "sent").map(|(_, n)| n).sum::<i64>();
                            tr data-account=(pid) {
                                td { (a.channel) } td { (a.provider) } td { code { (a.account) } }
                                td { @if a.branches.is_empty() { "tenant" } @else { (a.branches.join(", ")) } }
                                td {
                                    @match paused {
                                        Some(p) if p.draining => span.badge { "releasing held messages" },
                                        Some(p) => span.badge.paused { "paused: " @if p.manual { "by an admin" } @else { (p.reason) } },
                                        None => span.badge.healthy { "healthy" },
                                    }
                                }
                                td.num { (sent) } td.num.bad[failed > 0] { (failed) }
                                td {
                                    form.inline method="post" action="/console/pauses" {
                                        (csrf(&session))
                                        input type="hidden" name="id" value=(pid);
                                        @if paused.is_some() {
                                            button type="submit" name="action" value="resume" { "Resume" }
                                        } @else {
                                            button.danger type="submit" name="action" value="pause" { "Pause" }
                                        }
                                    }
                                }
                            }
                        }
                        @if accounts.is_empty() { tr { td colspan="8" { "No provider configured." } } }
                    }
                }
                @let sources = hour.by(&["received", id.as_str(), "*"], 2);
                table.sources {
                    thead { tr { th { "Source" } th { "Webhook" } th { "Counts when" } th.num { "Received (1 h)" } } }
                    tbody {
                        @for s in shared::SourceId::ALL {
                            tr data-source=(s.as_str()) {
                                td { (s.as_str()) }
                                td { code { "POST /api/webhook/" (s.as_str()) } }
                                td { (source_rule(&t.sources, s)) }
                                td.num { (sources.get(s.as_str()).copied().unwrap_or(0)) }
                            }
                        }
                    }
                }
                @let dead = hour.by(&["dead_lettered", id.as_str(), "*"], 2);
                p {
                    "Last hour: received "
                    @if sources.is_empty() { "nothing" }
                    @for (s, n) in &sources { (n) " from " (s) " " }
                    "; dead-lettered "
                    @if dead.is_empty() { "none" }
                    @for (r, n) in &dead { span.bad { (n) " " (r) } " " }
                    @if !dead.is_empty() { " (" a href=(format!("/console/dead-letters?tenant={id}")) { "see them" } ")" }
                }
            }
        }
    };
    Ok(html_page(layout(
        "Tenants",
        &session,
        "/console/tenants",
        content,
    )))
}

/// What a source's webhook must say to make an event, as configured.
fn source_rule(s: &shared::tenant::SourceSettings, source: shared::SourceId) -> String {
    fn joined<T: ToString>(v: &[T]) -> String {
        v.iter().map(T::to_string).collect::<Vec<_>>().join(", ")
    }
    match source {
        shared::SourceId::Iiko => format!("order status {}", joined(&s.iiko.final_statuses)),
        shared::SourceId::Rkeeper => format!("order status {}", joined(&s.rkeeper.final_statuses)),
        shared::SourceId::Yclients => format!(
            "record attendance {} (the visit ended)",
            joined(&s.yclients.attendance)
        ),
        shared::SourceId::Amocrm => {
            let mut rule = format!("lead status {}", joined(&s.amocrm.won_status_ids));
            if !s.amocrm.phone_field_ids.is_empty() {
                rule.push_str(&format!(
                    "; phone from fields {}",
                    joined(&s.amocrm.phone_field_ids)
                ));
            }
            rule
        }
        shared::SourceId::Booking => {
            "check-in, cancel, complete, time or place changed, payment received".to_string()
        }
    }
}

/// Pause or resume a provider account (the overview's and this page's
/// buttons); back to the page the button was on.
pub async fn pause_action(
    session: Session,
    body: web::Bytes,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, ConsoleError> {
    let form = Form::parse(&body);
    session.check(&form)?;
    let id = form.get("id").unwrap_or_default();
    match form.get("action") {
        Some("pause") => {
            if !crate::admin::configured_account(&state, id) {
                return Err(ConsoleError::NotFound(format!(
                    "{id} names no provider account of a tenant"
                )));
            }
            state.store.pause_by_hand(id).await?;
            tracing::warn!(id, "console: account paused by hand");
        }
        Some("resume") => {
            let resumed = state.store.resume(id).await?;
            tracing::info!(id, resumed, "console: account resumed");
        }
        _ => return Err(ConsoleError::BadRequest("action: pause or resume".into())),
    }
    let back = match form.get("back") {
        Some("/console") => "/console",
        _ => "/console/tenants",
    };
    Ok(redirect(back))
}
