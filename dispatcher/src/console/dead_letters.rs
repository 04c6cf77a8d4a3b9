//! Dead letters: filter by tenant, source, reason and age; inspect one with
//! its journal; replay the selected, the filtered or all (in the
//! background, with progress); purge after a confirmation page. `uncertain`
//! letters (the provider may have delivered them) are marked and left out
//! of every replay unless the admin ticks "include uncertain".

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use maud::{Markup, html};

use super::{ConsoleError, Form, Session, age, csrf, html_page, layout, redirect};
use crate::admin::AdminState;
use crate::dlq::{self, Entry, Filter};

const REASONS: &[&str] = &[
    "poison",
    "recipient",
    "config",
    "uncertain",
    "second_attempt_failed",
    "lookup_failed",
    "expired_while_paused",
    "internal",
];

/// The filter a page or form names: tenant, source, reason, older than
/// (minutes), and the selected ids.
fn filter_of(form: &Form) -> Result<Filter, ConsoleError> {
    let older_than = match form.get("older_than_mins") {
        None => None,
        Some(m) => Some(Duration::from_secs(
            m.trim()
                .parse::<u64>()
                .ok()
                .filter(|m| *m <= 5_256_000)
                .ok_or_else(|| {
                    ConsoleError::BadRequest("older than: whole minutes (at most ten years)".into())
                })?
                * 60,
        )),
    };
    Ok(Filter {
        id: None,
        ids: form.all("id"),
        tenant: form.get("tenant").map(str::to_string),
        source: form.get("source").map(str::to_string),
        reason: form.get("reason").map(str::to_string),
        older_than,
        include_uncertain: form.flag("include_uncertain"),
    })
}

fn filter_is_empty(f: &Filter) -> bool {
    f.ids.is_empty()
        && f.tenant.is_none()
        && f.source.is_none()
        && f.reason.is_none()
        && f.older_than.is_none()
}

/// The filter's fields as hidden inputs (a form that acts on what is shown).
fn hidden_filter(f: &Filter) -> Markup {
    html! {
        @if let Some(t) = &f.tenant { input type="hidden" name="tenant" value=(t); }
        @if let Some(s) = &f.source { input type="hidden" name="source" value=(s); }
        @if let Some(r) = &f.reason { input type="hidden" name="reason" value=(r); }
        @if let Some(o) = f.older_than { input type="hidden" name="older_than_mins" value=(o.as_secs() / 60); }
    }
}

fn describe(f: &Filter) -> String {
    let mut parts = Vec::new();
    if !f.ids.is_empty() {
        parts.push(format!("{} selected", f.ids.len()));
    }
    for (name, v) in [
        ("tenant", &f.tenant),
        ("source", &f.source),
        ("reason", &f.reason),
    ] {
        if let Some(v) = v {
            parts.push(format!("{name} {v}"));
        }
    }
    if let Some(o) = f.older_than {
        parts.push(format!("older than {} min", o.as_secs() / 60));
    }
    if parts.is_empty() {
        "all".into()
    } else {
        parts.join(", ")
    }
}

async fn entries(state: &AdminState, filter: &Filter) -> Result<Vec<Entry>, ConsoleError> {
    let _turn = state.dlq_turn.lock().await;
    let dlq = state.dlq().await?;
    let listed = dlq.list(filter).await;
    dlq.close().await;
    listed.map_err(|e| ConsoleError::Unavailable(e.to_string()))
}

pub async fn list(
    session: Session,
    req: HttpRequest,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, ConsoleError> {
    let filter = filter_of(&Form::parse(req.query_string().as_bytes()))?;
    let letters = entries(&state, &filter).await?;
    let tenants: Vec<String> = {
        let t = state.worker.tenancy.load();
        let mut v: Vec<String> = t.tenants.keys().cloned().collect();
        v.sort();
        v
    };
    let select = |name: &str, values: &[String], current: &Option<String>| {
        html! {
            select name=(name) id=(name) {
                option value="" { "any" }
                @for v in values {
                    option value=(v) selected[current.as_deref() == Some(v.as_str())] { (v) }
                }
            }
        }
    };
    let sources: Vec<String> = shared::SourceId::ALL
        .iter()
        .map(|s| s.as_str().to_string())
        .collect();
    let reasons: Vec<String> = REASONS.iter().map(|s| s.to_string()).collect();
    let uncertain = letters.iter().filter(|e| e.reason == "uncertain").count();
    let content = html! {
        form method="get" action="/console/dead-letters" {
            fieldset {
                legend { "Filter" }
                label { "Tenant " (select("tenant", &tenants, &filter.tenant)) }
                label { "Source " (select("source", &sources, &filter.source)) }
                label { "Reason " (select("reason", &reasons, &filter.reason)) }
                label { "Older than (min) "
                    input type="number" min="0" name="older_than_mins" size="6"
                        value=[filter.older_than.map(|o| o.as_secs() / 60)];
                }
                button type="submit" { "Filter" }
            }
        }
        p #count { (letters.len()) " dead letter" @if letters.len() != 1 { "s" } " (" (describe(&Filter { ids: vec![], ..filter.clone() })) ")"
            @if uncertain > 0 { ", " span.badge.uncertain { (uncertain) " uncertain" } } }
        form method="post" action="/console/dead-letters/action" {
            (csrf(&session))
            (hidden_filter(&filter))
            table #dead-letters {
                thead { tr {
                    th { "" } th { "Event" } th { "Tenant" } th { "Source" } th { "Kind" }
                    th { "Recipient" } th { "Reason" } th { "Error" } th.num { "Attempts" } th { "Age" }
                } }
                tbody {
                    @for e in &letters {
                        tr data-id=(e.id) {
                            td { input type="checkbox" name="id" value=(e.id) aria-label="select"; }
                            td { a href=(format!("/console/dead-letters/{}", e.id)) { code { (e.id) } } }
                            td { (e.tenant) } td { (e.source) } td { (e.kind) } td { (e.recipient) }
                            td { @if e.reason == "uncertain" { span.badge.uncertain title="the provider may have delivered it" { "uncertain" } } @else { (e.reason) } }
                            td { (e.error) }
                            td.num { (e.attempts) }
                            td { @if let Some(a) = e.age_secs { (age(a)) } }
                        }
                    }
                }
            }
            fieldset {
                legend { "Act on them" }
                label { input type="checkbox" name="include_uncertain"; " include uncertain letters (check with the provider first: they may have arrived)" }
                br;
                button type="submit" name="action" value="replay-selected" { "Replay selected" }
                " "
                button type="submit" name="action" value="replay-filter" { "Replay all shown" }
                " "
                button.danger type="submit" name="action" value="purge-selected" { "Purge selected…" }
                " "
                button.danger type="submit" name="action" value="purge-filter" { "Purge all shown…" }
            }
        }
    };
    Ok(html_page(layout(
        "Dead letters",
        &session,
        "/console/dead-letters",
        content,
    )))
}

pub async fn show(
    session: Session,
    id: web::Path<String>,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, ConsoleError> {
    let shown = {
        let _turn = state.dlq_turn.lock().await;
        let dlq = state.dlq().await?;
        let shown = dlq.show(&id).await;
        dlq.close().await;
        shown.map_err(|e| ConsoleError::Unavailable(e.to_string()))?
    };
    let Some((entry, event)) = shown else {
        return Err(ConsoleError::NotFound(format!(
            "no dead letter with id {id} (replayed or purged?)"
        )));
    };
    let history = state.journal.history(&id).await.unwrap_or_default();
    let event = serde_json::to_string_pretty(&dlq::mask_event(event)).unwrap_or_default();
    let uncertain = entry.reason == "uncertain";
    let content = html! {
        table #failure {
            tr { th { "Event" } td { code { (entry.id) } " " a href=(format!("/console/events?q={}", entry.id)) { "journal" } } }
            tr { th { "Tenant" } td { (entry.tenant) } }
            tr { th { "Source, kind" } td { (entry.source) ", " (entry.kind) } }
            tr { th { "Recipient" } td { (entry.recipient) } }
            tr { th { "Reason" } td { @if uncertain { span.badge.uncertain { "uncertain" } } @else { (entry.reason) } } }
            tr { th { "Error" } td { (entry.error) } }
            tr { th { "Channel, provider" } td { (entry.channel.as_deref().unwrap_or("-")) ", " (entry.provider.as_deref().unwrap_or("-")) } }
            tr { th { "Attempts" } td { (entry.attempts) } }
            tr { th { "First failure" } td { (entry.first_failure_at.as_deref().unwrap_or("-")) } }
            tr { th { "Dead-lettered" } td { (entry.failed_at.as_deref().unwrap_or("-")) } }
        }
        form method="post" action="/console/dead-letters/action" {
            (csrf(&session))
            input type="hidden" name="id" value=(entry.id);
            @if uncertain {
                p.notice { "The provider may have delivered this message. Replay only after checking it did not arrive." }
                label { input type="checkbox" name="include_uncertain"; " I checked: it did not arrive" }
            }
            button type="submit" name="action" value="replay-selected" { "Replay" }
            " "
            button.danger type="submit" name="action" value="purge-selected" { "Purge…" }
        }
        h2 { "Journal" }
        (super::events::timeline(&history))
        h2 { "Event (personal data masked)" }
        pre #event { (event) }
    };
    Ok(html_page(layout(
        "Dead letter",
        &session,
        "/console/dead-letters",
        content,
    )))
}

pub async fn action(
    session: Session,
    body: web::Bytes,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, ConsoleError> {
    let form = Form::parse(&body);
    session.check(&form)?;
    let mut filter = filter_of(&form)?;
    let action = form.get("action").unwrap_or_default();
    let selected = action.ends_with("-selected");
    if selected && filter.ids.is_empty() {
        return Err(ConsoleError::BadRequest(
            "nothing selected: tick the letters to act on".into(),
        ));
    }
    if !selected {
        filter.ids.clear();
    }
    match action {
        "replay-selected" | "replay-filter" => {
            let what = format!("Replay: {}", describe(&filter))
                + if filter.include_uncertain {
                    ", uncertain included"
                } else {
                    ""
                };
            let job = super::jobs::start_replay(state, filter, what).await?;
            Ok(redirect(&format!("/console/jobs/{job}")))
        }
        "purge-selected" | "purge-filter" => {
            if !form.flag("confirm") {
                return confirm_purge(&session, &state, &filter).await;
            }
            if !selected && filter_is_empty(&filter) && !form.flag("all") {
                return Err(ConsoleError::BadRequest(
                    "purging every dead letter needs the confirmation page".into(),
                ));
            }
            let purged = {
                let _turn = state.dlq_turn.lock().await;
                let dlq = state.dlq().await?;
                let purged = dlq.purge(&filter).await;
                dlq.close().await;
                purged.map_err(|e| ConsoleError::Unavailable(e.to_string()))?
            };
            tracing::warn!(purged, what = %describe(&filter), "dlq purge from the console");
            let content = html! {
                p #purged { "Purged " (purged) " dead letter" @if purged != 1 { "s" } "." }
                p { a href="/console/dead-letters" { "Back to the dead letters" } }
            };
            Ok(html_page(layout(
                "Purged",
                &session,
                "/console/dead-letters",
                content,
            )))
        }
        other => Err(ConsoleError::BadRequest(format!(
            "unknown action {other:?}: replay-selected, replay-filter, purge-selected, purge-filter"
        ))),
    }
}

/// "Purge N dead letters for good?", with the same form and `confirm`.
async fn confirm_purge(
    session: &Session,
    state: &AdminState,
    filter: &Filter,
) -> Result<HttpResponse, ConsoleError> {
    let n = entries(state, filter).await?.len();
    let action = if filter.ids.is_empty() {
        "purge-filter"
    } else {
        "purge-selected"
    };
    let content = html! {
        p.notice #confirm-text { "Purge " (n) " dead letter" @if n != 1 { "s" } " (" (describe(filter)) ") for good? They cannot be replayed afterwards." }
        form method="post" action="/console/dead-letters/action" {
            (csrf(session))
            (hidden_filter(filter))
            @for id in &filter.ids { input type="hidden" name="id" value=(id); }
            input type="hidden" name="confirm" value="yes";
            @if filter_is_empty(filter) { input type="hidden" name="all" value="yes"; }
            button.danger type="submit" name="action" value=(action) { "Purge for good" }
            " "
            a href="/console/dead-letters" { "Cancel" }
        }
    };
    Ok(html_page(layout(
        "Purge dead letters?",
        session,
        "/console/dead-letters",
        content,
    )))
}
