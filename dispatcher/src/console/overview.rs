//! The overview: what came in and went out over the last hour (the whole
//! fleet's, from [`crate::stats`]), the queues as the broker counts them
//! now, paused provider accounts, and balances (the fleet's last read,
//! [`crate::balance`]).

use std::collections::BTreeMap;

use actix_web::{HttpResponse, web};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use maud::{Markup, html};
use prometheus::core::Collector;

use super::{ConsoleError, Session, age, csrf, html_page, layout, when};
use crate::admin::AdminState;
use crate::stats::Window;
use shared::topology::DELAY_RUNGS;

/// The queues and how many messages each holds now (`None`: not declared
/// yet); the delay ladder's rungs summed.
async fn queue_depths(
    state: &AdminState,
) -> Result<Vec<(String, &'static str, Option<u32>)>, String> {
    let t = &state.topology;
    let conn = state
        .endpoints
        .connect("vestnik-console", std::time::Duration::from_secs(5))
        .await?;
    let mut out = Vec::new();
    let named = [
        (t.dispatch_queue(), "waiting to be sent"),
        (
            t.second_attempt_queue(),
            "second attempts waiting (9 min 30 s)",
        ),
        (
            t.lease_wait_queue(),
            "waiting for another dispatcher's lease",
        ),
        (t.status_queue(), "provider statuses to apply"),
        (t.dead_letter_queue(), "dead letters"),
    ];
    let mut ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    let depth = async |ch: &mut lapin::Channel, name: &str| -> Option<u32> {
        match ch
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
        {
            Ok(q) => Some(q.message_count()),
            Err(_) => {
                // The broker closed the channel (no such queue): a new one.
                if let Ok(c) = conn.create_channel().await {
                    *ch = c;
                }
                None
            }
        }
    };
    for (name, what) in named {
        let d = depth(&mut ch, &name).await;
        out.push((name, what, d));
    }
    let mut delayed = None;
    for rung in 0..DELAY_RUNGS {
        if let Some(n) = depth(&mut ch, &t.delay_queue(rung)).await {
            delayed = Some(delayed.unwrap_or(0) + n);
        }
    }
    out.push((
        format!("{} (all rungs)", t.delay_queue(0).replace(".1s", ".*")),
        "delayed, or outside send hours",
        delayed,
    ));
    // The hold queues of paused (and draining) accounts, one per pause.
    if let Ok(holds) = state.store.holds().await {
        let mut held = 0;
        for h in &holds.holds {
            let queue = t.hold_queue(&crate::hold::queue_key(&h.id));
            held += depth(&mut ch, &queue).await.unwrap_or(0);
        }
        out.push((
            format!("{} ({} accounts)", t.hold_queue("*"), holds.holds.len()),
            "held for a paused account, sent in order when it heals",
            Some(held),
        ));
    }
    let _ = conn.close(200, "read".into()).await;
    Ok(out)
}

/// A gauge's series: labels and value.
pub fn series(g: &prometheus::GaugeVec) -> Vec<(BTreeMap<String, String>, f64)> {
    g.collect()
        .iter()
        .flat_map(|f| f.get_metric().iter())
        .map(|m| {
            let labels = m
                .get_label()
                .iter()
                .map(|l| (l.name().to_string(), l.value().to_string()))
                .collect();
            (labels, m.get_gauge().get_value())
        })
        .collect()
}

/// A small line chart of per-minute counts, oldest left.
fn spark(values: &[i64]) -> Markup {
    let max = values.iter().copied().max().unwrap_or(0).max(1) as f64;
    let (w, h) = (240.0, 40.0);
    let step = if values.len() > 1 {
        w / (values.len() - 1) as f64
    } else {
        w
    };
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            format!(
                "{:.1},{:.1}",
                i as f64 * step,
                h - (*v as f64 / max) * (h - 2.0) - 1.0
            )
        })
        .collect();
    html! {
        svg.spark width="240" height="40" viewBox="0 0 240 40" role="img" aria-label="per minute, last hour" {
            polyline fill="none" stroke="#3b6fd4" stroke-width="1.5" points=(points.join(" ")) {}
        }
    }
}

fn counts(title: &str, id: &str, rows: &BTreeMap<String, i64>) -> Markup {
    let max = rows.values().copied().max().unwrap_or(0).max(1);
    html! {
        table id=(id) {
            thead { tr { th { (title) } th.num { "Last hour" } th {} } }
            tbody {
                @if rows.is_empty() { tr { td colspan="3" { "none" } } }
                @for (k, v) in rows {
                    tr { td { (k) } td.num { (v) } td { span.bar style=(format!("width:{}px", v * 160 / max)) {} } }
                }
            }
        }
    }
}

pub async fn page(
    session: Session,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, ConsoleError> {
    let hour: Window = crate::stats::window(&state.store, 60).await?;
    let pauses = state.store.pauses().await?;
    let queues = queue_depths(&state).await;
    let per_minute = |step: &str| -> Vec<i64> {
        hour.per_minute
            .iter()
            .map(|m| m.get(step).copied().unwrap_or(0))
            .collect()
    };
    let received = per_minute("received");
    let attempts = per_minute("attempt");
    let last5 = |v: &[i64]| v.iter().rev().take(5).sum::<i64>() as f64 / 5.0;
    let outcomes = hour.by(&["attempt", "*", "*", "*"], 3);
    let sent = outcomes.get("sent").copied().unwrap_or(0);
    let dead = hour.by(&["dead_lettered", "*", "*"], 2);
    let m = &state.worker.metrics;
    let balances = series(&m.balance);
    let daily = series(&m.balance_daily_left);
    let below = series(&m.balance_alert_below);
    let find = |s: &[(BTreeMap<String, String>, f64)], l: &BTreeMap<String, String>| {
        s.iter().find(|(x, _)| x == l).map(|(_, v)| *v)
    };
    let content = html! {
        div.cards {
            div.card #received-rate { b { (format!("{:.1}", last5(&received))) } "events received / min (last 5 min)" }
            div.card { b { (received.iter().sum::<i64>()) } "events received (last hour)" }
            div.card #sent-count { b { (sent) } "messages sent (last hour)" }
            div.card { b { (format!("{:.1}", last5(&attempts))) } "provider calls / min (last 5 min)" }
            div.card { b.bad[dead.values().sum::<i64>() > 0] { (dead.values().sum::<i64>()) } "dead-lettered (last hour)" }
            div.card { b.bad[!pauses.is_empty()] { (pauses.len()) } "paused accounts" }
        }
        p { "Events received per minute " (spark(&received)) " provider calls per minute " (spark(&attempts)) }
        p { small { "Counts are the whole fleet's, as the dispatchers journaled them (off when " code { "dispatcher.journal_ttl_secs" } " is 0)." } }
        h2 { "Queues now" }
        @match &queues {
            Err(e) => p.error { "The broker did not answer: " (e) },
            Ok(q) => table #queues {
                thead { tr { th { "Queue" } th { "Holds" } th.num { "Messages" } } }
                tbody {
                    @for (name, what, depth) in q {
                        tr { td { code { (name) } } td { (what) }
                             td.num { @match depth { Some(d) => (d), None => "—" } } }
                    }
                }
            },
        }
        h2 { "Deliveries by outcome" }
        (counts("Outcome", "outcomes", &outcomes))
        (counts("Received from source", "sources", &hour.by(&["received", "*", "*"], 2)))
        (counts("Dead-letter reason", "dead-reasons", &dead))
        h2 { "Channel health" }
        @if pauses.is_empty() {
            p #health { span.badge.healthy { "all provider accounts healthy" } }
        } @else {
            table #pauses {
                thead { tr { th { "Tenant" } th { "Provider" } th { "Account" } th { "Why" } th { "Paused for" } th { "Next probe" } th {} } }
                tbody {
                    @for p in &pauses {
                        tr {
                            td { (p.tenant) } td { (p.provider) } td { code { (p.account) } }
                            td { @if p.draining { span.badge { "releasing held messages" } } @else { span.badge.paused { @if p.manual { "paused by an admin" } @else { (p.reason) } } } }
                            td { (age((chrono::Utc::now() - p.since).num_seconds())) }
                            td { @if p.draining { "healthy" } @else if p.manual { "not probed" } @else if p.notice { "not probed: the provider's next notice resumes it" } @else { (when(p.next_probe)) " (" (p.probes) " failed)" } }
                            td {
                                form.inline method="post" action="/console/pauses" {
                                    (csrf(&session))
                                    input type="hidden" name="id" value=(p.id);
                                    input type="hidden" name="back" value="/console";
                                    button type="submit" name="action" value="resume" { "Resume" }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Balances" }
        @if balances.is_empty() {
            p { "No account reports a balance (SMS.ru and Exolve do; read every " code { "dispatcher.balance_poll_secs" } ")." }
        } @else {
            table #balances {
                thead { tr { th { "Tenant" } th { "Branch" } th { "Provider" } th.num { "Balance" } th.num { "Left today" } th.num { "Alert below" } } }
                tbody {
                    @for (l, v) in &balances {
                        @let low = find(&below, l).is_some_and(|b| *v < b);
                        tr {
                            td { (l.get("tenant").map(String::as_str).unwrap_or("")) }
                            td { (l.get("location").map(String::as_str).unwrap_or("")) }
                            td { (l.get("provider").map(String::as_str).unwrap_or("")) }
                            td.num.bad[low] { (format!("{v:.2}")) }
                            td.num { @if let Some(d) = find(&daily, l) { (d) } }
                            td.num { @if let Some(b) = find(&below, l) { (b) } }
                        }
                    }
                }
            }
        }
    };
    Ok(html_page(layout("Overview", &session, "/console", content)))
}
