//! Wiring: settings → tenants, sources, broker, spool → HTTP server.

use std::net::SocketAddr;
use std::time::Duration;

use actix_web::{App, HttpServer, web};
use shared::config::Settings;
use shared::event::FormatOptions;
use shared::topology::Topology;
use shared::{SourceId, Tenants};

use crate::callbacks::Callbacks;
use crate::durable::{self, Durable};
use crate::metrics::Metrics;
use crate::publish::Broker;
use crate::sources::Registry;
use crate::spool::Spool;
use utoipa_actix_web::AppExt;

pub struct AppState {
    /// The tenants in force: swapped whole by a live reload, so a request
    /// sees one configuration from its first look to its last.
    pub tenants: arc_swap::ArcSwap<Tenants>,
    pub sources: Registry,
    pub callbacks: Callbacks,
    pub durable: Durable,
    pub metrics: Metrics,
    pub max_body: usize,
    default_format: FormatOptions,
    /// Seals credentials that come in webhook URLs (`security.seal_key`).
    sealer: Option<shared::seal::Sealer>,
}

impl AppState {
    /// Booking events always carry formatting options (seed 000 defaults when
    /// the URL gave none); other sources only when the URL gave some.
    pub fn booking_defaults(&self, source: SourceId) -> Option<&FormatOptions> {
        (source == SourceId::Booking).then_some(&self.default_format)
    }

    /// A value as it may be written (spool, RabbitMQ): sealed when a key is
    /// configured.
    pub fn seal(&self, value: &str) -> String {
        match &self.sealer {
            Some(s) => s.seal(value),
            None => value.to_string(),
        }
    }

    /// A route's credentials as they may be written (spool, RabbitMQ, and
    /// from there Redis and the DLQ): sealed when a key is configured.
    pub fn sealed_route(&self, route: &shared::event::Route) -> shared::event::Route {
        let Some(sealer) = &self.sealer else {
            return route.clone();
        };
        let shared::event::Route::Wazzup {
            api_key,
            channel_id,
            chat_type,
        } = route;
        shared::event::Route::Wazzup {
            api_key: sealer.seal(api_key),
            channel_id: channel_id.clone(),
            chat_type: chat_type.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("spool: {0}")]
    Spool(#[from] crate::spool::SpoolError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// A started ingest: its bound address and a handle to stop it.
pub struct Running {
    pub addr: SocketAddr,
    pub handle: actix_web::dev::ServerHandle,
    pub server: tokio::task::JoinHandle<std::io::Result<()>>,
    pub broker: Broker,
    pub spool: Spool,
    drain: tokio::task::JoinHandle<()>,
    adopt: tokio::task::JoinHandle<()>,
    reload: tokio::task::JoinHandle<()>,
    /// The internal `/metrics` listener, when `ingest.metrics_listen` is set.
    pub metrics: Option<(SocketAddr, actix_web::dev::ServerHandle)>,
}

impl Running {
    /// Graceful stop: no new connections, in-flight requests finish.
    pub async fn stop(self) {
        if let Some((_, h)) = &self.metrics {
            h.stop(true).await;
        }
        self.handle.stop(true).await;
        let _ = self.server.await;
        self.drain.abort();
        self.adopt.abort();
        self.reload.abort();
        self.broker.close().await;
    }

    /// Waits for the server to end (SIGTERM/SIGINT are handled by actix).
    pub async fn wait(self) -> std::io::Result<()> {
        let r = self
            .server
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        self.drain.abort();
        self.adopt.abort();
        self.reload.abort();
        r
    }
}

/// Starts everything on the current tokio runtime. The broker connects in
/// the background: ingest accepts webhooks (into the spool) even while the
/// broker is down.
pub async fn start(settings: Settings, handle_signals: bool) -> Result<Running, StartError> {
    let tenants = Tenants::new(settings.tenants.clone()).map_err(StartError::Config)?;
    if tenants.is_empty() {
        tracing::warn!("no tenants configured: every webhook will be refused with 401");
    }
    let callbacks = Callbacks::new(&settings.callbacks).map_err(StartError::Config)?;
    tracing::info!(
        configured = ?callbacks.configured(),
        "provider status callbacks"
    );
    let topology = Topology::from_settings(&settings.rabbitmq);
    let broker = Broker::start(
        shared::amqp::Endpoints::from_settings(&settings.rabbitmq),
        topology,
        settings.rabbitmq.publish_channels,
    );
    let own_spool = settings.spool.own_dir();
    let (spool, drain) = Spool::open(
        &own_spool,
        settings.spool.max_bytes,
        settings.spool.segment_bytes,
    )?;
    if spool.pending_records() > 0 {
        tracing::info!(
            records = spool.pending_records(),
            "spool: events left from an earlier run will be drained"
        );
    }
    let publish_timeout = Duration::from_millis(settings.ingest.publish_timeout_ms);
    let drain = tokio::spawn(durable::drain_spool(drain, broker.clone(), publish_timeout));
    let metrics = Metrics::new();
    let adopter = crate::adopt::Adopter {
        root: settings.spool.dir.clone(),
        own: own_spool,
        interval: Duration::from_secs(settings.spool.adopt_interval_secs),
        max_bytes: settings.spool.max_bytes,
        segment_bytes: settings.spool.segment_bytes,
        publish_timeout,
    };
    let adopt = tokio::spawn(adopter.run(broker.clone(), metrics.clone()));
    let state = web::Data::new(AppState {
        tenants: arc_swap::ArcSwap::from_pointee(tenants),
        sources: Registry::new(),
        callbacks,
        durable: Durable::new(
            broker.clone(),
            spool.clone(),
            metrics.clone(),
            publish_timeout,
        ),
        metrics,
        max_body: settings.ingest.max_body_bytes,
        default_format: FormatOptions::default(),
        sealer: settings.security.sealer(),
    });
    if settings.security.seal_key.is_none() {
        tracing::warn!(
            "security.seal_key is not set: provider keys that come in booking webhook URLs \
             (key_api) are written in clear to the spool and RabbitMQ"
        );
    }
    let reload = tokio::spawn(reloader(&settings, state.clone()).run(handle_signals));
    let separate_metrics = settings.ingest.metrics_listen.is_some();
    let metrics_server = match &settings.ingest.metrics_listen {
        Some(listen) => Some(start_metrics(listen, state.clone(), handle_signals)?),
        None => None,
    };
    let document = web::Data::new(crate::openapi::Document::new(
        &state.sources,
        !separate_metrics,
        &settings.callbacks.dialog360_header,
    ));
    let mut server = HttpServer::new(move || {
        App::new()
            .into_utoipa_app()
            .app_data(state.clone())
            .app_data(document.clone())
            .configure(if separate_metrics {
                crate::routes::public
            } else {
                crate::routes::configure
            })
            .into_app()
            .service(crate::openapi::service())
            .default_service(web::to(crate::routes::not_found))
    })
    .shutdown_timeout(10)
    .bind(&settings.ingest.listen)
    .map_err(|source| StartError::Bind {
        addr: settings.ingest.listen.clone(),
        source,
    })?;
    if settings.ingest.workers > 0 {
        server = server.workers(settings.ingest.workers);
    }
    if !handle_signals {
        server = server.disable_signals();
    }
    let addr = bound_addr(&server.addrs(), &settings.ingest.listen)?;
    let server = server.run();
    let handle = server.handle();
    let server = tokio::spawn(server);
    tracing::info!(%addr, "ingest listening");
    Ok(Running {
        addr,
        handle,
        server,
        broker,
        spool,
        drain,
        adopt,
        reload,
        metrics: metrics_server,
    })
}

/// Reloads `[[tenants]]` live: the new keys and sources are checked whole
/// (`Tenants::new`) before they replace the old ones; a request in flight
/// keeps the tenant it authenticated as.
fn reloader(settings: &Settings, state: web::Data<AppState>) -> shared::reload::Reloader {
    let metrics = state.metrics.reload.clone();
    let apply: shared::reload::Apply = Box::new(move |new: &Settings| {
        let tenants = Tenants::new(new.tenants.clone())?;
        if tenants.is_empty() {
            tracing::warn!("no tenants configured: every webhook will be refused with 401");
        }
        state.tenants.store(std::sync::Arc::new(tenants));
        Ok(())
    });
    shared::reload::Reloader::new(settings, metrics, apply)
}

/// The address a listener bound (port 0 → the one it got).
fn bound_addr(addrs: &[SocketAddr], listen: &str) -> Result<SocketAddr, StartError> {
    addrs.first().copied().ok_or_else(|| StartError::Bind {
        addr: listen.to_string(),
        source: std::io::Error::other("no address bound"),
    })
}

/// `/metrics` alone, on an internal address.
fn start_metrics(
    listen: &str,
    state: web::Data<AppState>,
    handle_signals: bool,
) -> Result<(SocketAddr, actix_web::dev::ServerHandle), StartError> {
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .configure(crate::routes::metrics_only)
    })
    .workers(1)
    .bind(listen)
    .map_err(|source| StartError::Bind {
        addr: listen.to_string(),
        source,
    })?;
    if !handle_signals {
        server = server.disable_signals();
    }
    let addr = bound_addr(&server.addrs(), listen)?;
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    tracing::info!(%addr, "ingest metrics listening");
    Ok((addr, handle))
}
