use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use dispatcher::dlq::{Dlq, Entry, Filter};
use dispatcher::journal;
use shared::config::Settings;
use shared::topology::Topology;

/// Vestnik dispatcher: turns events into messages. With no command it runs
/// the workers; `dlq` is the admins' dead-letter queue tool.
#[derive(Parser)]
#[command(name = "dispatcher", version)]
struct Cli {
    /// Config file (else $VESTNIK_CONFIG); VESTNIK_* variables override it.
    /// Every key: deploy/vestnik.example.toml.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Build every provider and compile every template, then exit.
    #[arg(long)]
    check_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the workers (the default).
    Run,
    /// Inspect, replay or purge the dead-letter queue.
    Dlq {
        #[command(subcommand)]
        op: DlqOp,
    },
    /// The delivery journal: what happened to an event.
    Events {
        #[command(subcommand)]
        op: EventsOp,
    },
    /// A tenant's stop list: who gets nothing on any channel.
    OptOut {
        #[command(subcommand)]
        op: OptOutOp,
    },
    /// Paused provider accounts (channel health), fleet-wide.
    Pauses {
        #[command(subcommand)]
        op: PausesOp,
    },
}

#[derive(Subcommand)]
enum PausesOp {
    /// Every paused account, oldest first (id, reason, since, probes, by whom).
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Pause a configured account by hand: its messages fall back or are
    /// held; no probe or provider notice resumes it, only `resume`.
    Pause {
        /// `<tenant>|<provider>|<account>`, as `list` and `GET /admin/pauses` show it.
        id: String,
    },
    /// Resume a paused account now (if it is still broken, its next
    /// message pauses it again).
    Resume {
        /// `<tenant>|<provider>|<account>`.
        id: String,
    },
}

#[derive(Subcommand)]
enum OptOutOp {
    /// The stop list, newest first (id, masked phone, who, when).
    List {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        json: bool,
    },
    /// Put a phone on the stop list.
    Add {
        phone: String,
        #[arg(long)]
        tenant: String,
    },
    /// Take a phone (or an entry id from the list) off the stop list.
    Remove {
        /// The phone, or the entry's id as the list shows it.
        phone_or_id: String,
        #[arg(long)]
        tenant: String,
    },
    /// Whether a phone is on the stop list (exit code 0 yes, 1 no).
    Check {
        phone: String,
        #[arg(long)]
        tenant: String,
    },
}

#[derive(Subcommand)]
enum EventsOp {
    /// One event's history: received, attempts, second attempt, callbacks,
    /// fallback, dead letter.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// The events of a source record, by its id (order, record, lead,
    /// booking) or the order number.
    Find {
        /// The source's record id or the order number.
        reference: String,
        #[arg(long)]
        tenant: String,
        /// iiko, rkeeper, yclients, amocrm, booking (all when absent).
        #[arg(long)]
        source: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DlqOp {
    /// List dead letters (id, tenant, source, kind, masked recipient, reason, attempts, age).
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// One dead letter: its failure and the full event.
    Show { id: String },
    /// Send dead letters through the pipeline again (idempotent: what was
    /// sent is not sent twice). Needs a filter or --all.
    Replay {
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long)]
        all: bool,
        /// Show what would be replayed, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also replay `uncertain` letters (the provider may have delivered
        /// them); without it a bulk replay leaves them, a replay by --id does not.
        #[arg(long)]
        include_uncertain: bool,
    },
    /// Delete dead letters for good. Needs a filter or --all.
    Purge {
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long)]
        all: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Args, Clone, Default)]
struct FilterArgs {
    /// Event id.
    #[arg(long)]
    id: Option<String>,
    #[arg(long)]
    tenant: Option<String>,
    /// iiko, rkeeper, yclients, amocrm, booking.
    #[arg(long)]
    source: Option<String>,
    /// poison, recipient, config, uncertain, second_attempt_failed, lookup_failed, internal.
    #[arg(long)]
    reason: Option<String>,
    /// Only letters dead-lettered at least this many seconds ago.
    #[arg(long, value_name = "SECS")]
    older_than: Option<u64>,
}

impl FilterArgs {
    fn filter(&self) -> Filter {
        Filter {
            id: self.id.clone(),
            tenant: self.tenant.clone(),
            source: self.source.clone(),
            reason: self.reason.clone(),
            older_than: self.older_than.map(std::time::Duration::from_secs),
            ids: Vec::new(),
            include_uncertain: false,
        }
    }

    fn is_empty(&self) -> bool {
        self.id.is_none()
            && self.tenant.is_none()
            && self.source.is_none()
            && self.reason.is_none()
            && self.older_than.is_none()
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if cli.check_config {
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let checked =
            runtime.block_on(async { dispatcher::app::build_worker(&settings, rx).map(|_| ()) });
        return match checked {
            Ok(()) => {
                println!(
                    "configuration is valid ({} tenants, templates compiled, providers checked)",
                    settings.tenants.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        };
    }
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => runtime.block_on(run(settings)),
        Command::Dlq { op } => runtime.block_on(dlq(settings, op)),
        Command::Events { op } => runtime.block_on(events(settings, op)),
        Command::OptOut { op } => runtime.block_on(opt_out(settings, op)),
        Command::Pauses { op } => runtime.block_on(pauses(settings, op)),
    }
}

async fn pauses(settings: Settings, op: PausesOp) -> ExitCode {
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let worker = match dispatcher::app::build_worker(&settings, rx) {
        Ok(w) => w,
        Err(e) => return fail(e),
    };
    let store = &worker.store;
    let result: Result<ExitCode, String> = async {
        match op {
            PausesOp::List { json } => {
                let list = store.pauses().await.map_err(|e| e.to_string())?;
                for p in &list {
                    if json {
                        println!("{}", serde_json::to_string(p).unwrap_or_default());
                    } else {
                        let by = if p.draining {
                            "healthy: releasing its held messages in order".to_string()
                        } else if p.manual {
                            "admin".to_string()
                        } else if p.notice {
                            "provider notice".to_string()
                        } else {
                            format!("probe {} at {}", p.probes + 1, p.next_probe.to_rfc3339())
                        };
                        println!(
                            "{}  since {}  {}  ({by})",
                            p.id,
                            p.since.to_rfc3339(),
                            p.reason
                        );
                    }
                }
                if !json {
                    eprintln!("{} paused", list.len());
                }
                Ok(ExitCode::SUCCESS)
            }
            PausesOp::Pause { id } => {
                if !dispatcher::pause::names_configured_account(&worker, &id) {
                    eprintln!(
                        "{id:?} names no configured account (<tenant>|<provider>|<account>; \
                         `pauses list` or GET /admin/pauses show the ids)"
                    );
                    return Ok(ExitCode::from(1));
                }
                store.pause_by_hand(&id).await.map_err(|e| e.to_string())?;
                println!("{id} paused by hand: only `pauses resume` resumes it");
                Ok(ExitCode::SUCCESS)
            }
            PausesOp::Resume { id } => {
                if store.resume(&id).await.map_err(|e| e.to_string())? {
                    println!("{id} resumed");
                    Ok(ExitCode::SUCCESS)
                } else {
                    eprintln!("{id} is not paused");
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
    .await;
    result.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

async fn opt_out(settings: Settings, op: OptOutOp) -> ExitCode {
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let store = match dispatcher::app::build_worker(&settings, rx) {
        Ok(w) => w.store,
        Err(e) => return fail(e),
    };
    let phone = |raw: &str| {
        shared::phone::normalise(raw).map_err(|e| format!("{raw:?}: {} (not a phone)", e.reason()))
    };
    let result: Result<ExitCode, String> = async {
        match op {
            OptOutOp::List { tenant, json } => {
                let list = store.opted_out(&tenant).await.map_err(|e| e.to_string())?;
                for o in &list {
                    if json {
                        println!("{}", serde_json::to_string(o).unwrap_or_default());
                    } else {
                        println!(
                            "{}  {:<16}  {:<22}  {}",
                            o.id,
                            o.phone,
                            o.source,
                            o.at.to_rfc3339()
                        );
                    }
                }
                if !json {
                    eprintln!("{} on {tenant}'s stop list", list.len());
                }
                Ok(ExitCode::SUCCESS)
            }
            OptOutOp::Add { phone: raw, tenant } => {
                let p = phone(&raw)?;
                let added = store
                    .opt_out(&tenant, &p, "admin")
                    .await
                    .map_err(|e| e.to_string())?;
                let masked = shared::mask::phone(p.e164());
                if added {
                    println!(
                        "{masked} opted out of {tenant} (id {})",
                        dispatcher::opt_out::entry_id(&tenant, &p)
                    );
                } else {
                    println!("{masked} was already on {tenant}'s stop list");
                }
                Ok(ExitCode::SUCCESS)
            }
            OptOutOp::Remove {
                phone_or_id,
                tenant,
            } => {
                let id = match phone(&phone_or_id) {
                    Ok(p) => dispatcher::opt_out::entry_id(&tenant, &p),
                    Err(_) if phone_or_id.chars().all(|c| c.is_ascii_hexdigit()) => phone_or_id,
                    Err(e) => return Err(e),
                };
                if store
                    .opt_in(&tenant, &id)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    println!("{id} removed from {tenant}'s stop list");
                    Ok(ExitCode::SUCCESS)
                } else {
                    eprintln!("{id} is not on {tenant}'s stop list");
                    Ok(ExitCode::from(1))
                }
            }
            OptOutOp::Check { phone: raw, tenant } => {
                let p = phone(&raw)?;
                let out = store
                    .is_opted_out(&tenant, &p)
                    .await
                    .map_err(|e| e.to_string())?;
                let masked = shared::mask::phone(p.e164());
                if out {
                    println!("{masked} is opted out of {tenant}");
                    Ok(ExitCode::SUCCESS)
                } else {
                    println!("{masked} is not on {tenant}'s stop list");
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
    .await;
    result.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

async fn run(settings: Settings) -> ExitCode {
    shared::telemetry::init(&settings.log);
    let running = match dispatcher::app::start(settings).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "dispatcher cannot start");
            return ExitCode::FAILURE;
        }
    };
    wait_for_signal().await;
    tracing::info!("signal received: stopping");
    running.stop().await;
    tracing::info!("dispatcher stopped");
    ExitCode::SUCCESS
}

async fn dlq(settings: Settings, op: DlqOp) -> ExitCode {
    let topology = Topology::from_settings(&settings.rabbitmq);
    let dlq = match Dlq::connect(
        &shared::amqp::Endpoints::from_settings(&settings.rabbitmq),
        topology,
    )
    .await
    {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match op {
        DlqOp::List { filter, json } => match dlq.list(&filter.filter()).await {
            Ok(entries) => {
                print_entries(&entries, json);
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        DlqOp::Show { id } => match dlq.show(&id).await {
            Ok(Some((entry, event))) => {
                // The journal tells how it got here (empty when it expired or is off).
                let (_tx, rx) = tokio::sync::watch::channel(false);
                let history = match dispatcher::app::build_worker(&settings, rx) {
                    Ok(w) => w.journal.history(&id).await.unwrap_or_default(),
                    Err(_) => Vec::new(),
                };
                let out = serde_json::json!({
                    "failure": entry,
                    "event": dispatcher::dlq::mask_event(event),
                    "history": history,
                });
                println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
                ExitCode::SUCCESS
            }
            Ok(None) => {
                eprintln!("no dead letter with id {id}");
                ExitCode::from(1)
            }
            Err(e) => fail(e),
        },
        DlqOp::Replay {
            filter,
            all,
            dry_run,
            include_uncertain,
        } => {
            if filter.is_empty() && !all {
                eprintln!(
                    "replay needs a filter (--id, --tenant, --source, --reason, --older-than) or --all"
                );
                return ExitCode::from(2);
            }
            let (_tx, rx) = tokio::sync::watch::channel(false);
            let store = match dispatcher::app::build_worker(&settings, rx) {
                Ok(w) => w.store,
                Err(e) => return fail(e),
            };
            let bar = indicatif::ProgressBar::new(0);
            let report = dlq
                .replay(
                    &Filter {
                        include_uncertain,
                        ..filter.filter()
                    },
                    &store,
                    dry_run,
                    |done, total| {
                        bar.set_length(total);
                        bar.set_position(done);
                    },
                )
                .await;
            bar.finish_and_clear();
            match report {
                Ok(r) => {
                    let verb = if dry_run { "would replay" } else { "replayed" };
                    println!(
                        "{verb} {}, skipped {} (poison), failed {}",
                        r.replayed, r.skipped, r.failed
                    );
                    if r.uncertain_kept > 0 {
                        println!(
                            "kept {} uncertain (the provider may have delivered them): replay by --id, or with --include-uncertain",
                            r.uncertain_kept
                        );
                    }
                    if r.failed > 0 {
                        ExitCode::from(1)
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(e) => fail(e),
            }
        }
        DlqOp::Purge { filter, all, yes } => {
            if filter.is_empty() && !all {
                eprintln!(
                    "purge needs a filter (--id, --tenant, --source, --reason, --older-than) or --all"
                );
                return ExitCode::from(2);
            }
            let matching = match dlq.list(&filter.filter()).await {
                Ok(m) => m.len(),
                Err(e) => return fail(e),
            };
            if !yes && !confirm(&format!("delete {matching} dead letters for good?")) {
                println!("nothing deleted");
                return ExitCode::SUCCESS;
            }
            match dlq.purge(&filter.filter()).await {
                Ok(n) => {
                    println!("purged {n}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
    };
    dlq.close().await;
    code
}

async fn events(settings: Settings, op: EventsOp) -> ExitCode {
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let journal = match dispatcher::app::build_worker(&settings, rx) {
        Ok(w) => w.journal,
        Err(e) => return fail(e),
    };
    let (ids, json) = match op {
        EventsOp::Show { id, json } => (vec![id], json),
        EventsOp::Find {
            reference,
            tenant,
            source,
            json,
        } => {
            let ids = match journal
                .find_in(&tenant, source.as_deref(), &reference)
                .await
            {
                Ok(ids) => ids,
                Err(e) => return fail(e),
            };
            if ids.is_empty() {
                eprintln!("no events recorded for {reference} (tenant {tenant})");
                return ExitCode::from(1);
            }
            (ids, json)
        }
    };
    for id in ids {
        let history = match journal.history(&id).await {
            Ok(h) => h,
            Err(e) => return fail(e),
        };
        if history.is_empty() {
            eprintln!("no journal for event {id} (unknown, not consumed yet, or expired)");
            return ExitCode::from(1);
        }
        if json {
            println!("{}", journal::view(&id, &history));
        } else {
            print_history(&id, &history);
        }
    }
    ExitCode::SUCCESS
}

fn print_history(id: &str, history: &[journal::Record]) {
    println!("event {id}: {}", journal::status(history));
    for r in history {
        let mut step = serde_json::to_value(&r.step).unwrap_or_default();
        let name = step
            .get("step")
            .and_then(|s| s.as_str())
            .unwrap_or("?")
            .to_string();
        if let Some(o) = step.as_object_mut() {
            o.remove("step");
        }
        let details = step
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| match v {
                        serde_json::Value::String(s) => format!("{k}={s}"),
                        v => format!("{k}={v}"),
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        println!(
            "  {}  {:<25} {details}",
            r.at.format("%Y-%m-%d %H:%M:%S%.3f"),
            name
        );
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("{e}");
    ExitCode::FAILURE
}

fn print_entries(entries: &[Entry], json: bool) {
    if json {
        for e in entries {
            println!("{}", serde_json::to_string(e).unwrap_or_default());
        }
        return;
    }
    println!(
        "{:<36}  {:<10}  {:<8}  {:<21}  {:<14}  {:<22}  {:>3}  {:>8}",
        "ID", "TENANT", "SOURCE", "KIND", "RECIPIENT", "REASON", "ATT", "AGE"
    );
    for e in entries {
        let age = e.age_secs.map(human_age).unwrap_or_else(|| "-".into());
        println!(
            "{:<36}  {:<10}  {:<8}  {:<21}  {:<14}  {:<22}  {:>3}  {:>8}",
            e.id, e.tenant, e.source, e.kind, e.recipient, e.reason, e.attempts, age
        );
    }
    println!("{} dead letters", entries.len());
}

fn human_age(s: i64) -> String {
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn confirm(question: &str) -> bool {
    print!("{question} [y/N] ");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer).is_ok() && matches!(answer.trim(), "y" | "Y" | "yes")
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
