//! Wiring: settings → tenants, providers, templates, Redis, broker → workers.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpServer, web};
use shared::config::Settings;
use shared::tenant::Channel;
use shared::topology::Topology;
use tokio::sync::watch;
use utoipa_actix_web::AppExt;

use crate::admin::{AdminError, AdminState};
use crate::consumer::{self, ConsumerSettings};
use crate::delivery_state::Store;
use crate::health::Health;
use crate::journal::Journal;
use crate::lookup::Lookups;
use crate::metrics::Metrics;
use crate::providers::limit::{Limited, RateLimit};
use crate::providers::wazzup::Wazzup;
use crate::providers::{self, Provider, log::LogOnly};
use crate::shared_limit::SharedLimits;
use crate::templates::Templates;
use crate::worker::{RouteProvider, Routing, Tenancy, TenantRuntime, Worker};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

pub struct Running {
    pub addr: SocketAddr,
    /// The admin API, when admin.token is set.
    pub admin_addr: Option<SocketAddr>,
    pub worker: Arc<Worker>,
    shutdown: watch::Sender<bool>,
    consumer: tokio::task::JoinHandle<()>,
    reload: tokio::task::JoinHandle<()>,
    server: actix_web::dev::ServerHandle,
    admin: Option<actix_web::dev::ServerHandle>,
}

impl Running {
    /// Graceful stop: stop consuming, finish in-flight events (up to the
    /// configured timeout), close the connection.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        self.reload.abort();
        let _ = self.consumer.await;
        self.server.stop(true).await;
        if let Some(admin) = self.admin {
            admin.stop(true).await;
        }
    }
}

/// Builds the worker from settings: every provider section and template is
/// checked here, so configuration errors stop the start, not a send.
pub fn build_worker(
    settings: &Settings,
    shutdown: watch::Receiver<bool>,
) -> Result<Worker, StartError> {
    let d = &settings.dispatcher;
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(64)
        .build()
        .map_err(|e| StartError::Config(format!("http client: {e}")))?;
    let store = Store::new(
        &settings.redis,
        Duration::from_secs(d.lease_ttl_secs),
        Duration::from_secs(d.done_ttl_secs),
    )
    .map_err(StartError::Config)?;
    let limits = SharedLimits::new(store.clone());
    let tenancy = build_tenancy(settings, &http, &limits)?;
    let log_providers: BTreeMap<Channel, Arc<dyn Provider>> =
        [Channel::Whatsapp, Channel::Sms, Channel::Email]
            .into_iter()
            .map(|c| (c, Arc::new(LogOnly { channel: c }) as Arc<dyn Provider>))
            .collect();
    let metrics = Metrics::new();
    metrics
        .register(Box::new(store.wait_shortfalls().clone()))
        .map_err(StartError::Config)?;
    Ok(Worker {
        topology: Topology::from_settings(&settings.rabbitmq),
        journal: Journal::new(store.clone(), Duration::from_secs(d.journal_ttl_secs)),
        store,
        tenancy: arc_swap::ArcSwap::from_pointee(tenancy),
        log_providers,
        route_provider: route_provider(
            http.clone(),
            d.wazzup_base_url.clone(),
            settings.security.sealer(),
            limits.clone(),
        ),
        http,
        limits,
        retry: d.retry.clone(),
        metrics,
        health: Health::new(),
        shutdown,
        sealer: settings.security.sealer(),
        declared_rungs: std::sync::atomic::AtomicU32::new(0),
        declared_holds: std::sync::Mutex::default(),
        hold_recheck: Duration::from_secs(settings.dispatcher.hold_recheck_secs.max(1)),
        hold_drain_window: settings.dispatcher.hold_drain_window.max(1),
    })
}

/// Every tenant's providers, look-ups and templates, checked: at start and
/// for each live reload (a tenant that does not build refuses the whole
/// file, and the tenants in force stay).
pub fn build_tenancy(
    settings: &Settings,
    http: &reqwest::Client,
    limits: &SharedLimits,
) -> Result<Tenancy, StartError> {
    let mut tenants = HashMap::new();
    for t in &settings.tenants {
        let routing = build_routing(
            settings,
            http,
            limits,
            &t.id,
            &t.providers,
            &t.channels,
            &t.provider_for,
        )?;
        let mut branches = HashMap::new();
        for (id, l) in t.locations.iter().filter(|(_, l)| l.overrides_sending()) {
            let mut provider_for = t.provider_for.clone();
            provider_for.extend(l.provider_for.iter().map(|(c, p)| (*c, p.clone())));
            let branch = build_routing(
                settings,
                http,
                limits,
                &format!("{}, location {id:?}", t.id),
                &shared::tenant::merged_providers(&t.providers, &l.providers),
                l.channels.as_ref().unwrap_or(&t.channels),
                &provider_for,
            )?;
            branches.insert(id.clone(), branch);
        }
        // A branch with its own WhatsApp account: its customers' stop words
        // opt them out of the tenant too.
        let mut accounts = inbound_accounts(&t.providers);
        for l in t.locations.values().filter(|l| !l.providers.is_empty()) {
            accounts.extend(inbound_accounts(&shared::tenant::merged_providers(
                &t.providers,
                &l.providers,
            )));
        }
        accounts.sort();
        accounts.dedup();
        let lookups = Lookups::from_config(&t.lookup, http)
            .map_err(|e| StartError::Config(format!("tenant {}: {e}", t.id)))?;
        tenants.insert(
            t.id.clone(),
            TenantRuntime {
                routing,
                branches,
                lookups,
                caps: t.frequency_caps.clone(),
                delays: t.delays.clone(),
                send_hours: t.send_hours.clone(),
                inbound_accounts: accounts,
                hold_max: Duration::from_secs(t.hold_max_secs.unwrap_or(24 * 3600)),
                sources: t.sources.clone(),
            },
        );
    }
    let templates = Templates::new(
        settings
            .tenants
            .iter()
            .map(|t| (t.id.as_str(), &t.templates, &t.vars)),
    )
    .map_err(|e| StartError::Config(e.to_string()))?
    .with_places(
        settings
            .tenants
            .iter()
            .map(|t| (t.id.as_str(), crate::templates::Places::of(t))),
    );
    Ok(Tenancy { tenants, templates })
}

/// The providers of a tenant or of one of its branches, built and checked
/// against its channels (`who` names it in errors).
fn build_routing(
    settings: &Settings,
    http: &reqwest::Client,
    limits: &SharedLimits,
    who: &str,
    sections: &BTreeMap<String, serde_json::Value>,
    policy: &shared::tenant::ChannelPolicy,
    provider_for: &BTreeMap<Channel, String>,
) -> Result<Routing, StartError> {
    let d = &settings.dispatcher;
    let lease = Duration::from_secs(d.lease_ttl_secs);
    let built = providers::build(sections, http, limits)
        .map_err(|e| StartError::Config(format!("tenant {who}: {e}")))?;
    for (name, section) in sections {
        let budget = providers::attempt_budget(name, section, &d.retry)
            .map_err(|e| StartError::Config(format!("tenant {who}: {e}")))?;
        if budget > lease {
            return Err(StartError::Config(format!(
                "tenant {}: one attempt through {name} can take {} s without renewing its lease \
                 (its timeout and quick retries), longer than dispatcher.lease_ttl_secs = {} s: another \
                 dispatcher could claim a send still in flight. Raise the lease or lower \
                 timeout_ms / dispatcher.retry",
                who,
                budget.as_secs_f64().ceil(),
                d.lease_ttl_secs
            )));
        }
    }
    let mut by_channel: BTreeMap<Channel, Vec<Arc<dyn Provider>>> = BTreeMap::new();
    for p in built {
        by_channel
            .entry(p.channel())
            .or_default()
            .push(Arc::from(p));
    }
    for list in by_channel.values_mut() {
        list.sort_by_key(|p| providers::auto_rank(p.name()));
    }
    for (channel, name) in provider_for {
        if !by_channel
            .get(channel)
            .is_some_and(|l| l.iter().any(|p| p.name() == name))
        {
            return Err(StartError::Config(format!(
                "tenant {}: provider_for.{channel} = {name:?}, but no such {channel} provider is configured",
                who
            )));
        }
    }
    if settings.production {
        for channel in policy
            .default
            .iter()
            .chain(policy.by_kind.values().flatten())
        {
            if !by_channel.contains_key(channel) {
                return Err(StartError::Config(format!(
                    "tenant {}: channel {channel} has no provider configured; in production \
                     (production = true) its messages would not be sent. Configure one, or \
                     remove the channel from [tenants.channels]",
                    who
                )));
            }
        }
    }
    Ok(Routing {
        policy: policy.clone(),
        providers: by_channel,
        provider_for: provider_for.clone(),
    })
}

/// The accounts customers write to, whose inbound stop words opt them out
/// of this tenant: Meta's and 360dialog's `phone_number_id`, Wazzup's
/// `channel_id` (the ids the providers' webhooks name).
fn inbound_accounts(
    providers: &std::collections::BTreeMap<String, serde_json::Value>,
) -> Vec<(String, String)> {
    [
        ("meta", "phone_number_id"),
        ("dialog360", "phone_number_id"),
        ("wazzup", "channel_id"),
    ]
    .into_iter()
    .filter_map(|(provider, field)| {
        let id = providers.get(provider)?.get(field)?.as_str()?.trim();
        (!id.is_empty()).then(|| (provider.to_string(), id.to_string()))
    })
    .collect()
}

/// Providers built from routing that came with a webhook (seed 000's
/// Wazzup parameters in the booking URL): one per account, kept, so its rate
/// limit holds across events; at most [`ROUTE_ACCOUNTS`] of them, each
/// forgotten after [`ROUTE_ACCOUNT_IDLE`] unused (the keys with them).
fn route_provider(
    http: reqwest::Client,
    base_url: String,
    sealer: Option<shared::seal::Sealer>,
    limits: SharedLimits,
) -> RouteProvider {
    let accounts: moka::sync::Cache<(String, String, String), Arc<dyn Provider>> =
        moka::sync::Cache::builder()
            .max_capacity(ROUTE_ACCOUNTS)
            .time_to_idle(ROUTE_ACCOUNT_IDLE)
            .build();
    Box::new(move |route| {
        let shared::event::Route::Wazzup {
            api_key,
            channel_id,
            chat_type,
        } = route;
        // Sealed by the ingest when a seal key is set; one that cannot be
        // opened (no key here, another key) routes nowhere.
        let api_key = match shared::seal::Sealer::open(sealer.as_ref(), api_key) {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(error = %e, "the webhook's Wazzup key cannot be opened: not used");
                return None;
            }
        };
        let key = (api_key.clone(), channel_id.clone(), chat_type.clone());
        Some(accounts.get_with(key, || {
            let wazzup =
                Wazzup::for_route(&base_url, &api_key, channel_id, chat_type, http.clone());
            // The account: its key and channel, hashed (never stored).
            let account = format!(
                "wazzup:{}",
                crate::shared_limit::digest(&format!("{api_key}\n{channel_id}"))
            );
            match RateLimit::default_for("wazzup") {
                Some(limit) => Arc::new(Limited::new(wazzup, &limit, limits.clone(), account)),
                None => Arc::new(wazzup),
            }
        }))
    })
}

/// At most this many webhook-routed accounts are kept (each with its rate
/// limiter); the least used go first.
const ROUTE_ACCOUNTS: u64 = 10_000;
/// An account not used for this long is forgotten (its key with it).
const ROUTE_ACCOUNT_IDLE: Duration = Duration::from_secs(3600);

/// How often an idle dispatcher checks that Redis answers.
const REDIS_CHECK: Duration = Duration::from_secs(5);

/// Readiness tells the truth without traffic: Redis is PINGed on a timer
/// (a dispatcher with nothing to do would otherwise report the last state
/// an event saw, however old). Logged once per change.
async fn watch_redis(worker: Arc<Worker>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(REDIS_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = consumer::stopped(&mut shutdown) => return,
        }
        match worker.store.ping().await {
            Ok(()) => {
                if worker.health.set_redis(true) {
                    tracing::info!("redis answers again");
                }
            }
            Err(e) => {
                worker.metrics.redis_errors.inc();
                if worker.health.set_redis(false) {
                    tracing::error!(error = %e, "redis unreachable: not ready, nothing is sent until it is back");
                }
            }
        }
    }
}

pub async fn start(settings: Settings) -> Result<Running, StartError> {
    start_with(settings, |_| {}).await
}

/// [`start`], with the built worker handed to `adapt` first (embedding, and
/// tests that put a provider of their own in place of a configured one).
pub async fn start_with(
    settings: Settings,
    adapt: impl FnOnce(&mut Worker),
) -> Result<Running, StartError> {
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut worker = build_worker(&settings, shutdown_rx.clone())?;
    adapt(&mut worker);
    let worker = Arc::new(worker);
    if let Err(e) = worker.store.ping().await {
        worker.health.set_redis(false);
        tracing::error!(error = %e, "redis unreachable at start: events are held until it answers");
    }
    tokio::spawn(watch_redis(worker.clone(), shutdown_rx.clone()));
    tokio::spawn(crate::pause::run(worker.clone(), shutdown_rx.clone()));
    if settings.dispatcher.balance_poll_secs > 0 {
        let every = Duration::from_secs(settings.dispatcher.balance_poll_secs);
        tokio::spawn(crate::balance::run(
            worker.clone(),
            every,
            shutdown_rx.clone(),
        ));
    }
    let reload = tokio::spawn(reloader(&settings, &worker).run(true));
    let d = &settings.dispatcher;
    let consumer = tokio::spawn(consumer::run(
        worker.clone(),
        ConsumerSettings {
            endpoints: shared::amqp::Endpoints::from_settings(&settings.rabbitmq),
            prefetch: d.prefetch,
            concurrency: d.concurrency,
            shutdown_timeout: Duration::from_secs(d.shutdown_timeout_secs),
        },
        shutdown_rx,
    ));
    let state = web::Data::new(worker.clone());
    let document = web::Data::new(crate::openapi::Document::probes());
    let server = HttpServer::new(move || {
        App::new()
            .into_utoipa_app()
            .app_data(state.clone())
            .app_data(document.clone())
            .configure(crate::probes::configure)
            .into_app()
            .service(crate::openapi::service())
            .default_service(web::to(crate::openapi::fallback))
    })
    .workers(1)
    .disable_signals()
    .bind(&d.listen)
    .map_err(|source| StartError::Bind {
        addr: d.listen.clone(),
        source,
    })?;
    let addr = bound_addr(&server.addrs(), &d.listen)?;
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    tracing::info!(%addr, "dispatcher health and metrics listening");
    let admin = start_admin(&settings, &worker)?;
    Ok(Running {
        addr,
        admin_addr: admin.as_ref().map(|(a, _)| *a),
        worker,
        shutdown: shutdown_tx,
        consumer,
        reload,
        server: handle,
        admin: admin.map(|(_, h)| h),
    })
}

/// Reloads `[[tenants]]` live: a new file is built whole (providers,
/// templates, look-ups, the same checks as at start) before it replaces the
/// tenants in force; an event being handled keeps the tenants it began with.
fn reloader(settings: &Settings, worker: &Arc<Worker>) -> shared::reload::Reloader {
    let metrics = worker.metrics.reload.clone();
    let worker = Arc::downgrade(worker);
    let apply: shared::reload::Apply = Box::new(move |new: &Settings| {
        let Some(worker) = worker.upgrade() else {
            return Err("the dispatcher is stopping".into());
        };
        let tenancy =
            build_tenancy(new, &worker.http, &worker.limits).map_err(|e| e.to_string())?;
        worker.tenancy.store(Arc::new(tenancy));
        Ok(())
    });
    shared::reload::Reloader::new(settings, metrics, apply)
}

/// The admin API on its own port; not started without a token.
fn start_admin(
    settings: &Settings,
    worker: &Arc<Worker>,
) -> Result<Option<(SocketAddr, actix_web::dev::ServerHandle)>, StartError> {
    let admin = &settings.admin;
    if admin.token.is_empty() {
        tracing::warn!("admin API not started: admin.token is empty");
        return Ok(None);
    }
    let state = web::Data::new(AdminState::new(
        &admin.token,
        shared::amqp::Endpoints::from_settings(&settings.rabbitmq),
        worker.clone(),
    ));
    let document = web::Data::new(crate::openapi::Document::admin());
    let server =
        HttpServer::new(move || {
            App::new()
                .into_utoipa_app()
                .app_data(state.clone())
                .app_data(document.clone())
                .app_data(web::JsonConfig::default().error_handler(|e, _| {
                    AdminError::BadRequest(format!("request body: {e}")).into()
                }))
                .app_data(
                    web::QueryConfig::default()
                        .error_handler(|e, _| AdminError::BadRequest(format!("query: {e}")).into()),
                )
                .map(|app| {
                    crate::openapi::shadowed(&document)
                        .into_iter()
                        .fold(app, |app, r| app.service(r))
                })
                .configure(crate::admin::configure)
                .into_app()
                .service(crate::console::scope())
                .service(crate::openapi::service())
                .default_service(web::to(crate::openapi::fallback))
        })
        .workers(1)
        .disable_signals()
        .bind(&admin.listen)
        .map_err(|source| StartError::Bind {
            addr: admin.listen.clone(),
            source,
        })?;
    let addr = bound_addr(&server.addrs(), &admin.listen)?;
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    tracing::info!(%addr, "admin API listening");
    Ok(Some((addr, handle)))
}

fn bound_addr(addrs: &[SocketAddr], listen: &str) -> Result<SocketAddr, StartError> {
    addrs.first().copied().ok_or_else(|| StartError::Bind {
        addr: listen.to_string(),
        source: std::io::Error::other("no address bound"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Buckets in a Redis these tests never reach (nothing is sent).
    fn limits() -> SharedLimits {
        let store = Store::new(
            &shared::config::RedisSettings::default(),
            Duration::from_secs(120),
            Duration::from_secs(60),
        )
        .expect("store");
        SharedLimits::new(store)
    }

    #[test]
    fn a_routed_account_is_built_once_and_kept() {
        let routes = route_provider(
            reqwest::Client::new(),
            "http://127.0.0.1:9".into(),
            None,
            limits(),
        );
        let route = |key: &str| shared::event::Route::Wazzup {
            api_key: key.into(),
            channel_id: "c".into(),
            chat_type: "whatsapp".into(),
        };
        let a = routes(&route("key-a")).unwrap();
        let again = routes(&route("key-a")).unwrap();
        let b = routes(&route("key-b")).unwrap();
        assert!(
            Arc::ptr_eq(&a, &again),
            "one provider (and rate limit) per account"
        );
        assert!(!Arc::ptr_eq(&a, &b));
    }

    #[test]
    fn a_sealed_route_key_is_opened_with_the_seal_key_only() {
        let key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
        let sealer = shared::seal::Sealer::from_base64(key).unwrap();
        let routes = route_provider(
            reqwest::Client::new(),
            "http://127.0.0.1:9".into(),
            Some(sealer.clone()),
            limits(),
        );
        let route = |api_key: String| shared::event::Route::Wazzup {
            api_key,
            channel_id: "c".into(),
            chat_type: "whatsapp".into(),
        };
        let sealed = routes(&route(sealer.seal("key-a"))).expect("opened");
        let clear = routes(&route("key-a".into())).unwrap();
        assert!(Arc::ptr_eq(&sealed, &clear), "the same account once opened");
        let unkeyed = route_provider(
            reqwest::Client::new(),
            "http://127.0.0.1:9".into(),
            None,
            limits(),
        );
        assert!(
            unkeyed(&route(sealer.seal("key-a"))).is_none(),
            "no key: not used"
        );
    }
}
