//! Events: find one by its event id, or a tenant's events by the source's
//! record id (order, record, lead, booking) or order number; each one's
//! journal as a timeline. The journal holds personal data masked already.

use actix_web::{HttpRequest, HttpResponse, web};
use maud::{Markup, html};

use super::{ConsoleError, Form, Session, html_page, layout, when};
use crate::admin::AdminState;
use crate::journal::{self, Record};

/// A journal as a table: when, what, the step's details.
pub fn timeline(history: &[Record]) -> Markup {
    html! {
        @if history.is_empty() {
            p { "No journal (unknown, not consumed yet, or older than " code { "dispatcher.journal_ttl_secs" } ")." }
        } @else {
            table.timeline {
                thead { tr { th { "At" } th { "Step" } th { "Details" } } }
                tbody {
                    @for r in history {
                        @let v = serde_json::to_value(&r.step).unwrap_or_default();
                        tr {
                            td { (when(r.at)) }
                            td { (v["step"].as_str().unwrap_or("")) }
                            td {
                                @if let Some(o) = v.as_object() {
                                    @for (k, x) in o.iter().filter(|(k, _)| k.as_str() != "step") {
                                        span.badge { (k) } " "
                                        (x.as_str().map(str::to_string).unwrap_or_else(|| x.to_string()))
                                        " "
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub async fn page(
    session: Session,
    req: HttpRequest,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, ConsoleError> {
    let form = Form::parse(req.query_string().as_bytes());
    let q = form.get("q").map(str::trim).unwrap_or_default().to_string();
    let tenant = form.get("tenant").map(str::to_string);
    let source = form.get("source").map(str::to_string);
    let mut tenants: Vec<String> = state
        .worker
        .tenancy
        .load()
        .tenants
        .keys()
        .cloned()
        .collect();
    tenants.sort();
    if q.len() > 200 {
        return Err(ConsoleError::BadRequest("the search is too long".into()));
    }
    let mut found: Vec<(String, Vec<Record>)> = Vec::new();
    let mut asked = None;
    if !q.is_empty() {
        if uuid::Uuid::parse_str(&q).is_ok() {
            let h = state.journal.history(&q).await?;
            if !h.is_empty() {
                found.push((q.clone(), h));
            }
            asked = Some(format!("event {q}"));
        }
        if found.is_empty() {
            let Some(t) = &tenant else {
                if asked.is_none() {
                    return Err(ConsoleError::BadRequest(
                        "a record id or order number is looked up in one tenant: choose it".into(),
                    ));
                }
                return Ok(render(
                    &session, &q, &tenant, &source, &tenants, asked, found,
                ));
            };
            for id in state.journal.find_in(t, source.as_deref(), &q).await? {
                let h = state.journal.history(&id).await?;
                found.push((id, h));
            }
            asked = Some(format!("{t}'s record {q}"));
        }
    }
    Ok(render(
        &session, &q, &tenant, &source, &tenants, asked, found,
    ))
}

fn render(
    session: &Session,
    q: &str,
    tenant: &Option<String>,
    source: &Option<String>,
    tenants: &[String],
    asked: Option<String>,
    found: Vec<(String, Vec<Record>)>,
) -> HttpResponse {
    let content = html! {
        form method="get" action="/console/events" {
            fieldset {
                label { "Event id, record id or order number "
                    input type="search" name="q" value=(q) size="40"; }
                label { "Tenant "
                    select name="tenant" {
                        option value="" { "any (event id)" }
                        @for t in tenants { option value=(t) selected[tenant.as_deref() == Some(t.as_str())] { (t) } }
                    }
                }
                label { "Source "
                    select name="source" {
                        option value="" { "any" }
                        @for s in shared::SourceId::ALL { option value=(s.as_str()) selected[source.as_deref() == Some(s.as_str())] { (s.as_str()) } }
                    }
                }
                button type="submit" { "Find" }
            }
        }
        @if let Some(a) = asked {
            @if found.is_empty() { p #none { "Nothing found for " (a) "." } }
            @for (id, history) in &found {
                section.event data-id=(id) {
                    h2 { "Event " code { (id) } ": " span.badge { (journal::status(history)) } }
                    (timeline(history))
                }
            }
        }
    };
    html_page(layout("Events", session, "/console/events", content))
}
