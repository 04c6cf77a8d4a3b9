//! A replay started from the console runs in the background; its progress
//! is kept in Redis (`<prefix>:console:job:<id>`, a day), so its page,
//! which refreshes itself every second until the job ends, may be served
//! by any dispatcher of the fleet.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix_web::{HttpResponse, web};
use deadpool_redis::redis::AsyncCommands;
use maud::html;
use serde::{Deserialize, Serialize};

use super::{ConsoleError, Session, html_page, layout_with};
use crate::admin::AdminState;
use crate::delivery_state::Store;
use crate::dlq::{Filter, Report};

const KEEP: Duration = Duration::from_secs(86_400);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// What was asked, in words ("replay 3 selected").
    pub what: String,
    pub state: State,
    pub done: u64,
    pub total: u64,
    pub report: Option<Report>,
    pub error: Option<String>,
    pub started: chrono::DateTime<chrono::Utc>,
    pub finished: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Waiting,
    Running,
    Done,
    Failed,
}

fn key(store: &Store, id: &str) -> String {
    format!("{}:console:job:{id}", store.prefix())
}

async fn save(store: &Store, id: &str, job: &Job) {
    let (k, v) = (
        key(store, id),
        serde_json::to_string(job).unwrap_or_default(),
    );
    let saved = store
        .run(|mut c| async move { c.set_ex::<_, _, ()>(k, v, KEEP.as_secs()).await })
        .await;
    if let Err(e) = saved {
        tracing::warn!(error = %e, job = id, "console: replay progress not saved");
    }
}

/// Starts a replay of `filter` in the background; its id.
pub async fn start_replay(
    state: web::Data<AdminState>,
    filter: Filter,
    what: String,
) -> Result<String, ConsoleError> {
    let id = uuid::Uuid::now_v7().to_string();
    let mut job = Job {
        what,
        state: State::Waiting,
        done: 0,
        total: 0,
        report: None,
        error: None,
        started: chrono::Utc::now(),
        finished: None,
    };
    save(&state.store, &id, &job).await;
    let job_id = id.clone();
    actix_web::rt::spawn(async move {
        let id = job_id;
        let _turn = state.dlq_turn.clone().lock_owned().await;
        job.state = State::Running;
        save(&state.store, &id, &job).await;
        let progress = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let result = match state.dlq().await {
            Err(e) => Err(e.to_string()),
            Ok(dlq) => {
                let result = {
                    let seen = progress.clone();
                    let replay = dlq.replay(&filter, &state.store, false, move |done, total| {
                        seen.0.store(done, Ordering::Relaxed);
                        seen.1.store(total, Ordering::Relaxed);
                    });
                    tokio::pin!(replay);
                    let mut tick = tokio::time::interval(Duration::from_millis(500));
                    loop {
                        tokio::select! {
                            r = &mut replay => break r,
                            _ = tick.tick() => {
                                job.done = progress.0.load(Ordering::Relaxed);
                                job.total = progress.1.load(Ordering::Relaxed);
                                save(&state.store, &id, &job).await;
                            }
                        }
                    }
                };
                dlq.close().await;
                result.map_err(|e| e.to_string())
            }
        };
        job.done = progress.0.load(Ordering::Relaxed);
        job.total = progress.1.load(Ordering::Relaxed);
        job.finished = Some(chrono::Utc::now());
        match result {
            Ok(report) => {
                tracing::info!(replayed = report.replayed, skipped = report.skipped,
                    uncertain_kept = report.uncertain_kept, failed = report.failed,
                    what = %job.what, "dlq replay from the console");
                job.state = State::Done;
                job.report = Some(report);
            }
            Err(e) => {
                tracing::warn!(error = %e, "console: replay failed");
                job.state = State::Failed;
                job.error = Some(e);
            }
        }
        save(&state.store, &id, &job).await;
    });
    Ok(id)
}

pub async fn page(
    session: Session,
    id: web::Path<String>,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, ConsoleError> {
    if uuid::Uuid::parse_str(&id).is_err() {
        return Err(ConsoleError::NotFound("no such job".into()));
    }
    let k = key(&state.store, &id);
    let found: Option<String> = state
        .store
        .run(|mut c| async move { c.get(k).await })
        .await?;
    let job: Job = found
        .and_then(|v| serde_json::from_str(&v).ok())
        .ok_or_else(|| ConsoleError::NotFound(format!("no job {id} (jobs are kept a day)")))?;
    let running = matches!(job.state, State::Waiting | State::Running);
    let head = html! { @if running { meta http-equiv="refresh" content="1"; } };
    let content = html! {
        p { (job.what) }
        p #job-state data-state=(serde_json::to_value(job.state).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()) {
            @match job.state {
                State::Waiting => "Waiting for another dead-letter operation to finish…",
                State::Running => "Running…",
                State::Done => "Done.",
                State::Failed => "Failed.",
            }
        }
        @if job.total > 0 {
            p { progress max=(job.total) value=(job.done) {} " " (job.done) " of " (job.total) }
        }
        @if let Some(r) = job.report {
            table #report {
                tr { th { "Replayed" } td.num #replayed { (r.replayed) } }
                tr { th { "Skipped (poison: nothing to replay)" } td.num { (r.skipped) } }
                tr { th { "Uncertain, kept in the DLQ" } td.num { (r.uncertain_kept) } }
                tr { th { "Failed (still in the DLQ; run again)" } td.num { (r.failed) } }
            }
        }
        @if let Some(e) = &job.error { p.error { (e) } }
        p { a href="/console/dead-letters" { "Back to the dead letters" } }
    };
    Ok(html_page(layout_with(
        "Replay",
        &session,
        "/console/dead-letters",
        head,
        content,
    )))
}
