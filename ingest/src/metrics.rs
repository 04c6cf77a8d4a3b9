//! Prometheus metrics of the ingest. Labels are sources, kinds, outcomes and
//! error classes only: never a tenant key, phone or e-mail.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub ack_seconds: HistogramVec,
    pub events: IntCounterVec,
    pub publish_failures: IntCounterVec,
    pub spool_records: IntGauge,
    pub spool_bytes: IntGauge,
    pub broker_up: IntGauge,
    /// Spools of gone ingests this one drained.
    pub spool_adoptions: prometheus::IntCounter,
    /// 1 while the broker blocks publishers (a resource alarm).
    pub broker_blocked: IntGauge,
    /// 1 while webhooks go straight to the spool (a confirm timed out).
    pub broker_circuit_open: IntGauge,
    /// Broker connections given up because they confirmed nothing for
    /// `publish::STUCK_AFTER` (a hung or cut-off node).
    pub broker_stuck: prometheus::IntCounter,
    /// Provider callback requests by provider and outcome.
    pub callbacks: IntCounterVec,
    /// What callback bodies carried, by provider and item (`status`,
    /// `inbound_message`, `error`, `ignored_status`).
    pub callback_items: IntCounterVec,
    /// Live configuration reloads (shared::reload).
    pub reload: shared::reload::ReloadMetrics,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "vestnik_ingest_requests_total",
                "Webhook requests by source and outcome",
            ),
            &["source", "outcome"],
        )
        .expect("static metric definition");
        let ack_seconds = HistogramVec::new(
            HistogramOpts::new(
                "vestnik_ingest_ack_seconds",
                "Time from request to answer for webhooks that queued events",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 5.0,
            ]),
            &["source"],
        )
        .expect("static metric definition");
        let events = IntCounterVec::new(
            Opts::new(
                "vestnik_ingest_events_total",
                "Events made durable, by where they went",
            ),
            &["source", "kind", "durable_in"],
        )
        .expect("static metric definition");
        let publish_failures = IntCounterVec::new(
            Opts::new(
                "vestnik_ingest_publish_failures_total",
                "Publishes the broker did not confirm, by reason",
            ),
            &["reason"],
        )
        .expect("static metric definition");
        let spool_records = IntGauge::new(
            "vestnik_ingest_spool_records",
            "Events waiting in the spool",
        )
        .expect("static metric definition");
        let spool_bytes = IntGauge::new("vestnik_ingest_spool_bytes", "Bytes waiting in the spool")
            .expect("static metric definition");
        let broker_up = IntGauge::new(
            "vestnik_ingest_broker_up",
            "1 when the broker connection is up",
        )
        .expect("static metric definition");
        let spool_adoptions = prometheus::IntCounter::new(
            "vestnik_ingest_spool_adoptions_total",
            "Spools of ingests that are gone (lock free, records left) this ingest drained",
        )
        .expect("static metric definition");
        let broker_blocked = IntGauge::new(
            "vestnik_ingest_broker_blocked",
            "1 while the broker blocks publishers (connection.blocked: a memory or disk alarm)",
        )
        .expect("static metric definition");
        let broker_circuit_open = IntGauge::new(
            "vestnik_ingest_broker_circuit_open",
            "1 while webhooks are spooled without trying the broker (a confirm timed out; the drain probes)",
        )
        .expect("static metric definition");
        let broker_stuck = prometheus::IntCounter::new(
            "vestnik_ingest_broker_stuck_connections_total",
            "Broker connections given up because they confirmed nothing for 10 s while not blocked (a hung or cut-off node); the next node is tried",
        )
        .expect("static metric definition");
        let callbacks = IntCounterVec::new(
            Opts::new(
                "vestnik_ingest_callbacks_total",
                "Provider delivery-status callbacks by provider and outcome",
            ),
            &["provider", "outcome"],
        )
        .expect("static metric definition");
        let callback_items = IntCounterVec::new(
            Opts::new(
                "vestnik_ingest_callback_items_total",
                "Items in provider callbacks by provider and item kind",
            ),
            &["provider", "item"],
        )
        .expect("static metric definition");
        let reload = shared::reload::ReloadMetrics::new("ingest");
        for c in reload.collectors().into_iter().chain([
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(ack_seconds.clone()),
            Box::new(events.clone()),
            Box::new(publish_failures.clone()),
            Box::new(spool_records.clone()),
            Box::new(spool_bytes.clone()),
            Box::new(broker_up.clone()),
            Box::new(broker_blocked.clone()),
            Box::new(spool_adoptions.clone()),
            Box::new(broker_circuit_open.clone()),
            Box::new(broker_stuck.clone()),
            Box::new(callbacks.clone()),
            Box::new(callback_items.clone()),
        ]) {
            registry.register(c).expect("metric registered once");
        }
        // Series exist from the start, so increase() sees the first refusal
        // (503: not durable) of a source, not only the second.
        for source in shared::SourceId::ALL {
            requests.with_label_values(&[source.as_str(), "unavailable"]);
        }
        Metrics {
            registry,
            requests,
            ack_seconds,
            events,
            publish_failures,
            spool_records,
            spool_bytes,
            broker_up,
            broker_blocked,
            broker_circuit_open,
            broker_stuck,
            spool_adoptions,
            callbacks,
            callback_items,
            reload,
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
