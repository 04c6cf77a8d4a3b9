//! Provider balances, polled: what each account that has a balance call
//! (SMS.ru `my/balance` and `my/limit`, Exolve `GetBalance`) has left, as
//! gauges per tenant, location and provider, so the `ProviderBalanceLow`
//! alert (deploy/prometheus/alerts.yml) fires before an empty account starts
//! refusing messages. Labels carry ids, never an account's key.
//!
//! Every dispatcher polls every `dispatcher.balance_poll_secs` (N
//! dispatchers make N cheap reads per interval; alert on the max over
//! instances). A poll that fails sets `…_balance_poll_ok` to 0 and keeps the
//! last balance read.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::providers::{Balance, Provider};
use crate::worker::Worker;

pub async fn run(worker: Arc<Worker>, every: Duration, mut shutdown: watch::Receiver<bool>) {
    // The first read one period after start: a fleet restarting at once
    // does not read every account at the same moment.
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = crate::consumer::stopped(&mut shutdown) => return,
        }
        poll(&worker).await;
    }
}

/// One account to read: tenant, location (empty: the tenant's own) and its
/// provider.
struct Account {
    tenant: String,
    location: String,
    provider: Arc<dyn Provider>,
}

/// Reads every account once and sets the gauges.
pub async fn poll(worker: &Worker) {
    let accounts = accounts(worker);
    let reads = futures_util::future::join_all(accounts.iter().map(|a| async move {
        let read = a.provider.balance()?;
        Some(read.await)
    }))
    .await;
    let m = &worker.metrics;
    for (a, read) in accounts.iter().zip(reads) {
        let Some(read) = read else { continue };
        let labels = [a.tenant.as_str(), a.location.as_str(), a.provider.name()];
        match read {
            Ok(Balance {
                amount,
                daily_left,
                alert_below,
            }) => {
                m.balance_poll_ok.with_label_values(&labels).set(1);
                m.balance.with_label_values(&labels).set(amount);
                if let Some(left) = daily_left {
                    m.balance_daily_left.with_label_values(&labels).set(left);
                }
                match alert_below {
                    Some(below) => m.balance_alert_below.with_label_values(&labels).set(below),
                    None => {
                        let _ = m.balance_alert_below.remove_label_values(&labels);
                    }
                }
            }
            Err(e) => {
                m.balance_poll_ok.with_label_values(&labels).set(0);
                tracing::warn!(tenant = %a.tenant, location = %a.location,
                    provider = a.provider.name(), error = %e, "balance not read");
            }
        }
    }
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
