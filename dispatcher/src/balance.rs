//! Provider balances, polled: what each account that has a balance call
//! (SMS.ru `my/balance` and `my/limit`, Exolve `GetBalance`) has left, as
//! gauges per tenant, location and provider, so the `ProviderBalanceLow`
//! alert (deploy/prometheus/alerts.yml) fires before an empty account starts
//! refusing messages. Labels carry ids, never an account's key.
//!
//! Once per `dispatcher.balance_poll_secs` for the whole fleet, not per
//! dispatcher: whichever dispatcher first takes the period's claim in Redis
//! (`<prefix>:balances:poll`, `SET NX PX`) reads every account and writes
//! what it read to `<prefix>:balances`; every dispatcher exports that, so
//! any instance's gauges tell the fleet's last read. A read that fails sets
//! `…_balance_poll_ok` to 0 and keeps the last balance read.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::providers::{Balance, Provider};
use crate::worker::Worker;

/// One account's last read, as kept in Redis.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Read {
    /// Whether the last read answered.
    ok: bool,
    /// The last balance read (kept when a later read fails).
    #[serde(default)]
    amount: Option<f64>,
    #[serde(default)]
    daily_left: Option<f64>,
    #[serde(default)]
    alert_below: Option<f64>,
}

fn claim_key(prefix: &str) -> String {
    format!("{prefix}:balances:poll")
}

fn reads_key(prefix: &str) -> String {
    format!("{prefix}:balances")
}

/// `tenant|location|provider`: the field of one account's read.
fn field(a: &Account) -> String {
    format!("{}|{}|{}", a.tenant, a.location, a.provider.name())
}

pub async fn run(worker: Arc<Worker>, every: Duration, mut shutdown: watch::Receiver<bool>) {
    // Looked at a few times a period, so every dispatcher exports a read
    // soon after it was made; the first read one look after start, so a
    // fleet restarting at once does not read every account at that moment.
    let look = (every / 5).clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(look) => {}
            _ = crate::consumer::stopped(&mut shutdown) => return,
        }
        match claim(&worker, every).await {
            Ok(true) => poll(&worker).await,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "balances: redis unreachable"),
        }
        if let Err(e) = export(&worker).await {
            tracing::warn!(error = %e, "balances not read from redis");
        }
    }
}

/// Takes this period's poll for the fleet: true when this dispatcher reads.
async fn claim(
    worker: &Worker,
    every: Duration,
) -> Result<bool, crate::delivery_state::StoreError> {
    let key = claim_key(worker.store.prefix());
    let ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX);
    let taken: Option<String> = worker
        .store
        .run(|mut c| async move {
            redis::cmd("SET")
                .arg(key)
                .arg(std::process::id())
                .arg("NX")
                .arg("PX")
                .arg(ms)
                .query_async(&mut c)
                .await
        })
        .await?;
    Ok(taken.is_some())
}

/// One account to read: tenant, location (empty: the tenant's own) and its
/// provider.
struct Account {
    tenant: String,
    location: String,
    provider: Arc<dyn Provider>,
}

/// Reads every account once and writes what it read to Redis, for the
/// fleet.
async fn poll(worker: &Worker) {
    let accounts = accounts(worker);
    let reads = futures_util::future::join_all(accounts.iter().map(|a| async move {
        let read = a.provider.balance()?;
        Some(read.await)
    }))
    .await;
    let mut last = stored(worker).await.unwrap_or_default();
    let mut now: Vec<(String, String)> = Vec::new();
    for (a, read) in accounts.iter().zip(reads) {
        let Some(read) = read else { continue };
        let f = field(a);
        let r = match read {
            Ok(Balance {
                amount,
                daily_left,
                alert_below,
            }) => Read {
                ok: true,
                amount: Some(amount),
                daily_left,
                alert_below,
            },
            Err(e) => {
                tracing::warn!(tenant = %a.tenant, location = %a.location,
                    provider = a.provider.name(), error = %e, "balance not read");
                Read {
                    ok: false,
                    ..last.remove(&f).unwrap_or_default()
                }
            }
        };
        if let Ok(json) = serde_json::to_string(&r) {
            now.push((f, json));
        }
    }
    let key = reads_key(worker.store.prefix());
    // The whole set at once: an account no longer configured goes.
    let written = worker
        .store
        .run(|mut c| async move {
            let mut pipe = redis::pipe();
            pipe.atomic().del(&key).ignore();
            if !now.is_empty() {
                pipe.hset_multiple(&key, &now).ignore();
            }
            pipe.query_async::<()>(&mut c).await
        })
        .await;
    if let Err(e) = written {
        tracing::warn!(error = %e, "balances read but not stored");
    }
}

/// The fleet's last reads, by field.
async fn stored(
    worker: &Worker,
) -> Result<HashMap<String, Read>, crate::delivery_state::StoreError> {
    let key = reads_key(worker.store.prefix());
    let all: HashMap<String, String> = worker
        .store
        .run(|mut c| async move { redis::AsyncCommands::hgetall(&mut c, key).await })
        .await?;
    Ok(all
        .into_iter()
        .filter_map(|(f, v)| Some((f, serde_json::from_str(&v).ok()?)))
        .collect())
}

/// Sets this dispatcher's gauges from the fleet's last reads.
async fn export(worker: &Worker) -> Result<(), crate::delivery_state::StoreError> {
    let reads = stored(worker).await?;
    let m = &worker.metrics;
    for a in accounts(worker) {
        let Some(r) = reads.get(&field(&a)) else {
            continue;
        };
        let labels = [a.tenant.as_str(), a.location.as_str(), a.provider.name()];
        m.balance_poll_ok
            .with_label_values(&labels)
            .set(i64::from(r.ok));
        if let Some(amount) = r.amount {
            m.balance.with_label_values(&labels).set(amount);
        }
        match r.daily_left {
            Some(left) => m.balance_daily_left.with_label_values(&labels).set(left),
            None => {
                let _ = m.balance_daily_left.remove_label_values(&labels);
            }
        }
        match r.alert_below {
            Some(below) => m.balance_alert_below.with_label_values(&labels).set(below),
            None => {
                let _ = m.balance_alert_below.remove_label_values(&labels);
            }
        }
    }
    Ok(())
}

/// The tenants' accounts and their branches' own, each provider once.
fn accounts(worker: &Worker) -> Vec<Account> {
    let tenancy = worker.tenancy.load();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut tenants: Vec<_> = tenancy.tenants.iter().collect();
    tenants.sort_by(|a, b| a.0.cmp(b.0));
    for (id, t) in tenants {
        let mut branches: Vec<_> = t.branches.iter().collect();
        branches.sort_by(|a, b| a.0.cmp(b.0));
        let routings = std::iter::once(("", &t.routing))
            .chain(branches.into_iter().map(|(l, r)| (l.as_str(), r)));
        for (location, routing) in routings {
            for provider in routing.providers.values().flatten() {
                // A branch without an account of its own shares the tenant's.
                let Some(account) = provider.balance_account() else {
                    continue;
                };
                if !seen.insert((provider.name(), account)) {
                    continue;
                }
                out.push(Account {
                    tenant: id.clone(),
                    location: location.to_string(),
                    provider: provider.clone(),
                });
            }
        }
    }
    out
}
