//! Prometheus metrics of the dispatcher. Labels: provider, channel, outcome
//! class, failure class. Never a tenant key, phone or e-mail.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub deliveries: IntCounterVec,
    pub attempt_seconds: HistogramVec,
    pub quick_retries: IntCounterVec,
    pub second_attempts: IntCounter,
    pub dead_lettered: IntCounterVec,
    pub duplicates: IntCounter,
    /// Events from a location missing in their tenant's `locations` table.
    pub unknown_locations: IntCounter,
    /// Events not sent on purpose, by reason (`frequency_cap`, ...).
    pub skipped: IntCounterVec,
    /// Events put in the delay ladder (once each, at their first hop).
    pub scheduled: IntCounter,
    pub lease_waits: IntCounter,
    pub panics: IntCounter,
    pub fallbacks: IntCounterVec,
    pub statuses: IntCounterVec,
    pub redis_errors: IntCounter,
    pub journal_errors: IntCounter,
    pub dlq_messages: IntGauge,
    pub in_flight: IntGauge,
    pub redis_up: IntGauge,
    pub broker_up: IntGauge,
    /// Live configuration reloads (shared::reload).
    pub reload: shared::reload::ReloadMetrics,
    /// Provider balances (`crate::balance`), by tenant, location (empty for
    /// the tenant's own accounts) and provider.
    pub balance: GaugeVec,
    pub balance_daily_left: GaugeVec,
    pub balance_alert_below: GaugeVec,
    pub balance_poll_ok: IntGaugeVec,
    /// Channel health (`crate::pause`): accounts paused and resumed, by
    /// provider and `paused` / `resumed`.
    pub pauses: IntCounterVec,
    /// Messages that met a paused account, by provider and what became of
    /// them: `fallback`, `held`, `released` (sent on from the hold
    /// queue), `expired`.
    pub paused_messages: IntCounterVec,
    /// Accounts paused now (read from Redis by the prober every second).
    pub paused_accounts: IntGauge,
    /// Messages in the hold queues, as this dispatcher last saw them.
    pub held_messages: IntGauge,
}

const BALANCE_LABELS: &[&str] = &["tenant", "location", "provider"];

fn gauge_vec(name: &str, help: &str) -> GaugeVec {
    GaugeVec::new(Opts::new(name, help), BALANCE_LABELS).expect("static metric definition")
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition")
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::new(),
            reload: shared::reload::ReloadMetrics::new("dispatcher"),
            deliveries: counter_vec(
                "vestnik_dispatcher_deliveries_total",
                "Send attempts by provider, channel and outcome class",
                &["provider", "channel", "outcome"],
            ),
            attempt_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "vestnik_dispatcher_attempt_seconds",
                    "One attempt incl. quick retries",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ]),
                &["provider"],
            )
            .expect("static metric definition"),
            quick_retries: counter_vec(
                "vestnik_dispatcher_quick_retries_total",
                "Quick retries inside an attempt after transient errors",
                &["provider"],
            ),
            second_attempts: IntCounter::new(
                "vestnik_dispatcher_second_attempts_total",
                "Second attempts scheduled (the 9m30s wait queue)",
            )
            .expect("static metric definition"),
            dead_lettered: counter_vec(
                "vestnik_dispatcher_dead_lettered_total",
                "Events dead-lettered, by failure class",
                &["class"],
            ),
            scheduled: IntCounter::new(
                "vestnik_dispatcher_scheduled_total",
                "Events held for a delay or the send hours (counted once, at their first hop)",
            )
            .expect("static metric definition"),
            skipped: counter_vec(
                "vestnik_dispatcher_skipped_total",
                "Events not sent on purpose (journaled as skipped), by reason",
                &["reason"],
            ),
            unknown_locations: IntCounter::new(
                "vestnik_dispatcher_unknown_locations_total",
                "Events from a location that is not in their tenant's locations table (sent with the tenant's defaults; the log names tenant and location)",
            )
            .expect("static metric definition"),
            duplicates: IntCounter::new(
                "vestnik_dispatcher_duplicates_total",
                "Deliveries skipped because the message was already sent",
            )
            .expect("static metric definition"),
            lease_waits: IntCounter::new(
                "vestnik_dispatcher_lease_waits_total",
                "Deliveries sent to the lease-wait queue because another dispatcher held their lease",
            )
            .expect("static metric definition"),
            panics: IntCounter::new(
                "vestnik_dispatcher_panics_total",
                "Worker tasks that panicked; their event was dead-lettered as internal",
            )
            .expect("static metric definition"),
            fallbacks: counter_vec(
                "vestnik_dispatcher_fallbacks_total",
                "Moves to the next channel, by the channel that failed",
                &["from_channel"],
            ),
            statuses: counter_vec(
                "vestnik_dispatcher_statuses_total",
                "Provider delivery statuses (callbacks) by state and what they caused",
                &["state", "outcome"],
            ),
            redis_errors: IntCounter::new(
                "vestnik_dispatcher_redis_errors_total",
                "Failed Redis operations",
            )
            .expect("static metric definition"),
            journal_errors: IntCounter::new(
                "vestnik_dispatcher_journal_errors_total",
                "Delivery-journal writes that failed (the delivery itself is not affected)",
            )
            .expect("static metric definition"),
            dlq_messages: IntGauge::new(
                "vestnik_dispatcher_dlq_messages",
                "Dead letters waiting in the DLQ (read from the broker every 15 s)",
            )
            .expect("static metric definition"),
            in_flight: IntGauge::new("vestnik_dispatcher_in_flight", "Events being processed")
                .expect("static metric definition"),
            redis_up: IntGauge::new("vestnik_dispatcher_redis_up", "1 when Redis answers")
                .expect("static metric definition"),
            broker_up: IntGauge::new(
                "vestnik_dispatcher_broker_up",
                "1 when consuming from the broker",
            )
            .expect("static metric definition"),
            balance: gauge_vec(
                "vestnik_dispatcher_provider_balance",
                "A provider account's balance, as its last successful poll read it",
            ),
            balance_daily_left: gauge_vec(
                "vestnik_dispatcher_provider_daily_left",
                "Messages a provider account may still send today (SMS.ru's daily limit)",
            ),
            balance_alert_below: gauge_vec(
                "vestnik_dispatcher_provider_balance_alert_below",
                "The balance_alert_below of a provider account's config",
            ),
            pauses: counter_vec(
                "vestnik_dispatcher_account_pauses_total",
                "Provider accounts this dispatcher paused (an account-level failure) or resumed (a healthy probe)",
                &["provider", "what"],
            ),
            paused_messages: counter_vec(
                "vestnik_dispatcher_paused_messages_total",
                "Messages that met a paused account: fallback (to the next channel), held, released (from the hold queue), expired (to the DLQ)",
                &["provider", "what"],
            ),
            held_messages: IntGauge::new(
                "vestnik_dispatcher_held_messages",
                "Messages waiting in the hold queues of paused or draining accounts (as last read by this dispatcher)",
            )
            .expect("static metric"),
            paused_accounts: IntGauge::new(
                "vestnik_dispatcher_paused_accounts",
                "Provider accounts paused now, fleet-wide (Redis)",
            )
            .expect("static metric definition"),
            balance_poll_ok: IntGaugeVec::new(
                Opts::new(
                    "vestnik_dispatcher_provider_balance_poll_ok",
                    "1 when the last balance poll of a provider account answered",
                ),
                BALANCE_LABELS,
            )
            .expect("static metric definition"),
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.deliveries.clone()),
            Box::new(m.attempt_seconds.clone()),
            Box::new(m.quick_retries.clone()),
            Box::new(m.second_attempts.clone()),
            Box::new(m.dead_lettered.clone()),
            Box::new(m.duplicates.clone()),
            Box::new(m.unknown_locations.clone()),
            Box::new(m.skipped.clone()),
            Box::new(m.scheduled.clone()),
            Box::new(m.lease_waits.clone()),
            Box::new(m.panics.clone()),
            Box::new(m.fallbacks.clone()),
            Box::new(m.statuses.clone()),
            Box::new(m.redis_errors.clone()),
            Box::new(m.journal_errors.clone()),
            Box::new(m.dlq_messages.clone()),
            Box::new(m.in_flight.clone()),
            Box::new(m.redis_up.clone()),
            Box::new(m.broker_up.clone()),
            Box::new(m.balance.clone()),
            Box::new(m.balance_daily_left.clone()),
            Box::new(m.balance_alert_below.clone()),
            Box::new(m.balance_poll_ok.clone()),
            Box::new(m.pauses.clone()),
            Box::new(m.paused_messages.clone()),
            Box::new(m.paused_accounts.clone()),
            Box::new(m.held_messages.clone()),
        ];
        for c in collectors.into_iter().chain(m.reload.collectors()) {
            m.registry.register(c).expect("metric registered once");
        }
        // Series exist from the start, so rate() and increase() see the
        // first dead letter of a class, not only the second.
        for class in [
            "poison",
            "recipient",
            "config",
            "uncertain",
            "second_attempt_failed",
            "lookup_failed",
            "internal",
            "expired_while_paused",
        ] {
            m.dead_lettered.with_label_values(&[class]);
        }
        m
    }

    /// Adds a collector kept elsewhere (the store's wait shortfalls).
    pub fn register(&self, c: Box<dyn prometheus::core::Collector>) -> Result<(), String> {
        self.registry.register(c).map_err(|e| e.to_string())
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
