//! The RabbitMQ topology both services declare on start-up (idempotently),
//! so they always agree on it.
//!
//! ```text
//!  ingest ──publish "dispatch"──▶ {p}.events (direct) ──▶ {p}.dispatch (quorum) ──▶ dispatcher
//!                                      │   ▲                  │ delivery limit exceeded
//!                                      │   │ TTL expired      ▼ (poison) dead-lettered "dead"
//!  dispatcher ──"second-attempt.<delay>s"──▶ {p}.second-attempt.<delay>s (quorum, x-message-ttl)
//!  dispatcher ──"lease-wait.<d>s"──▶ {p}.lease-wait.<d>s (quorum, x-message-ttl) ──▶ back to dispatch
//!  dispatcher ──"dead"────────────▶ {p}.dlq (quorum) ◀── admins list / replay
//!  ingest ──"status"──────────────▶ {p}.statuses (quorum) ──▶ dispatcher (provider callbacks)
//!  dispatcher ──"hold.<key>"──────▶ {p}.hold.<key> (quorum, one per paused account) ──▶ drained in order
//! ```
//!
//! The wait queue's name carries its delay: changing the configured delay
//! declares a new queue instead of failing on mismatched arguments, and the
//! messages already waiting in the old one still come back on time.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, ExchangeKind};

pub const ROUTE_DISPATCH: &str = "dispatch";
/// Prefix of the second-attempt route; the delay completes it
/// ([`Topology::second_attempt_route`]).
pub const ROUTE_SECOND_ATTEMPT: &str = "second-attempt";
/// Prefix of the lease-wait route ([`Topology::lease_wait_route`]).
pub const ROUTE_LEASE_WAIT: &str = "lease-wait";
pub const ROUTE_DEAD: &str = "dead";
pub const ROUTE_STATUS: &str = "status";
/// Routes of the delay ladder: `delay.<seconds>s`.
pub const ROUTE_DELAY: &str = "delay";
/// Routes of the hold queues: `hold.<key>`.
pub const ROUTE_HOLD: &str = "hold";
/// `x-delivery-limit` of a hold queue: high enough never to drop a held
/// message that went back to the head (an account paused again mid-drain).
const HOLD_DELIVERY_LIMIT: i64 = 1_000_000;
/// Rungs of the delay ladder: 1 s, 2 s, 4 s, ... 2^21 s (24 days). A wait
/// of any length takes the longest rung that does not overshoot it, again
/// and again: at most one hop per set bit of its seconds (22), never early.
pub const DELAY_RUNGS: u32 = 22;

#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
    second_attempt_delay: Duration,
    delivery_limit: u32,
    lease_wait: Duration,
    quorum_group_size: Option<u32>,
}

/// Default of `rabbitmq.lease_wait_secs`.
pub const DEFAULT_LEASE_WAIT_SECS: u64 = 5;

impl Topology {
    pub fn new(prefix: &str, second_attempt_delay: Duration, delivery_limit: u32) -> Self {
        Topology {
            prefix: prefix.to_string(),
            second_attempt_delay,
            delivery_limit,
            lease_wait: Duration::from_secs(DEFAULT_LEASE_WAIT_SECS),
            quorum_group_size: None,
        }
    }

    /// How long a delivery whose lease another dispatcher holds waits in
    /// the broker before it is tried again (at least a second).
    pub fn with_lease_wait(mut self, wait: Duration) -> Self {
        self.lease_wait = wait.max(Duration::from_secs(1));
        self
    }

    pub fn from_settings(s: &crate::config::RabbitSettings) -> Self {
        Self::new(
            &s.prefix,
            Duration::from_secs(s.second_attempt_delay_secs),
            s.delivery_limit,
        )
        .with_lease_wait(Duration::from_secs(s.lease_wait_secs))
        .with_quorum_group_size(s.quorum_initial_group_size)
    }

    /// `x-quorum-initial-group-size` of every queue (None: RabbitMQ's
    /// default, every node of the cluster).
    pub fn with_quorum_group_size(mut self, size: Option<u32>) -> Self {
        self.quorum_group_size = size;
        self
    }

    fn quorum_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        insert_str(&mut args, "x-queue-type", "quorum");
        if let Some(n) = self.quorum_group_size {
            insert(
                &mut args,
                "x-quorum-initial-group-size",
                AMQPValue::LongUInt(n),
            );
        }
        args
    }

    pub fn exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    pub fn dispatch_queue(&self) -> String {
        format!("{}.dispatch", self.prefix)
    }

    pub fn second_attempt_queue(&self) -> String {
        format!(
            "{}.second-attempt.{}s",
            self.prefix,
            self.second_attempt_delay.as_secs()
        )
    }

    /// `second-attempt.<delay>s`: the delay is in the route as in the queue's
    /// name, so after a change of delay the old wait queue (still draining
    /// through its own TTL) no longer receives new second attempts.
    pub fn second_attempt_route(&self) -> String {
        format!(
            "{ROUTE_SECOND_ATTEMPT}.{}s",
            self.second_attempt_delay.as_secs()
        )
    }

    /// Where a delivery waits while another dispatcher holds its lease;
    /// expired messages go back to the dispatch queue. The delay is in the
    /// name for the same reason as the second-attempt queue's.
    pub fn lease_wait_queue(&self) -> String {
        format!("{}.lease-wait.{}s", self.prefix, self.lease_wait.as_secs())
    }

    pub fn lease_wait_route(&self) -> String {
        format!("{ROUTE_LEASE_WAIT}.{}s", self.lease_wait.as_secs())
    }

    pub fn lease_wait(&self) -> Duration {
        self.lease_wait
    }

    /// Seconds of a rung of the delay ladder.
    pub fn rung_secs(rung: u32) -> u64 {
        1u64 << rung.min(DELAY_RUNGS - 1)
    }

    /// The rung for a wait of `remaining`: the longest not longer than it;
    /// the 1 s rung for anything shorter (so never early, late by less
    /// than a second).
    pub fn delay_rung(remaining: Duration) -> u32 {
        let s = remaining.as_secs();
        if s < 2 {
            0
        } else {
            (63 - s.leading_zeros()).min(DELAY_RUNGS - 1)
        }
    }

    /// One rung of the delay ladder: a quorum queue whose messages all live
    /// `2^rung` seconds (RabbitMQ expires messages only at a queue's head,
    /// so one fixed TTL per queue keeps expiry on time), then go back to the
    /// dispatch queue. Declared on first use.
    pub fn delay_queue(&self, rung: u32) -> String {
        format!("{}.delay.{}s", self.prefix, Self::rung_secs(rung))
    }

    pub fn delay_route(rung: u32) -> String {
        format!("{ROUTE_DELAY}.{}s", Self::rung_secs(rung))
    }

    pub async fn declare_delay_rung(&self, channel: &Channel, rung: u32) -> lapin::Result<()> {
        let ttl = Duration::from_secs(Self::rung_secs(rung));
        self.queue(
            channel,
            &self.delay_queue(rung),
            self.wait_args(ttl),
            &Self::delay_route(rung),
        )
        .await
    }

    /// The hold queue of one paused provider account (`key`: a digest of
    /// its pause id): its held messages, in the order they were held,
    /// drained by one dispatcher at a time when the account is healthy.
    /// Declared on first use, deleted a minute after it was drained.
    pub fn hold_queue(&self, key: &str) -> String {
        format!("{}.hold.{key}", self.prefix)
    }

    pub fn hold_route(key: &str) -> String {
        format!("{ROUTE_HOLD}.{key}")
    }

    pub async fn declare_hold_queue(&self, channel: &Channel, key: &str) -> lapin::Result<()> {
        let mut args = self.quorum_args();
        // Held messages go back to the head while the account is still
        // paused or busy; RabbitMQ 4's default limit (20) would drop them.
        insert(
            &mut args,
            "x-delivery-limit",
            AMQPValue::LongLongInt(HOLD_DELIVERY_LIMIT),
        );
        self.queue(channel, &self.hold_queue(key), args, &Self::hold_route(key))
            .await
    }

    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dlq", self.prefix)
    }

    /// Provider delivery statuses (callbacks), normalised by ingest.
    pub fn status_queue(&self) -> String {
        format!("{}.statuses", self.prefix)
    }

    pub fn second_attempt_delay(&self) -> Duration {
        self.second_attempt_delay
    }

    /// Declares exchange, queues and bindings. Safe to call from every
    /// process at every start.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable_exchange = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                self.exchange().into(),
                ExchangeKind::Direct,
                durable_exchange,
                FieldTable::default(),
            )
            .await?;

        let mut dispatch = self.quorum_args();
        insert(
            &mut dispatch,
            "x-delivery-limit",
            AMQPValue::LongLongInt(self.delivery_limit.into()),
        );
        insert_str(&mut dispatch, "x-dead-letter-exchange", &self.exchange());
        insert_str(&mut dispatch, "x-dead-letter-routing-key", ROUTE_DEAD);
        self.queue(channel, &self.dispatch_queue(), dispatch, ROUTE_DISPATCH)
            .await?;

        self.queue(
            channel,
            &self.second_attempt_queue(),
            self.wait_args(self.second_attempt_delay),
            &self.second_attempt_route(),
        )
        .await?;
        self.queue(
            channel,
            &self.lease_wait_queue(),
            self.wait_args(self.lease_wait),
            &self.lease_wait_route(),
        )
        .await?;

        self.queue(
            channel,
            &self.dead_letter_queue(),
            self.quorum_args(),
            ROUTE_DEAD,
        )
        .await?;
        self.queue(
            channel,
            &self.status_queue(),
            self.quorum_args(),
            ROUTE_STATUS,
        )
        .await?;
        Ok(())
    }

    /// A wait queue: its messages expire after `delay` back into dispatch.
    fn wait_args(&self, delay: Duration) -> FieldTable {
        let mut wait = self.quorum_args();
        let ttl_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        insert(&mut wait, "x-message-ttl", AMQPValue::LongLongInt(ttl_ms));
        insert_str(&mut wait, "x-dead-letter-exchange", &self.exchange());
        insert_str(&mut wait, "x-dead-letter-routing-key", ROUTE_DISPATCH);
        // At-least-once dead-lettering: an expired message is not dropped if
        // the dispatch queue cannot take it at that moment.
        insert_str(&mut wait, "x-dead-letter-strategy", "at-least-once");
        insert_str(&mut wait, "x-overflow", "reject-publish");
        wait
    }

    async fn queue(
        &self,
        channel: &Channel,
        name: &str,
        args: FieldTable,
        route: &str,
    ) -> lapin::Result<()> {
        channel
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                args,
            )
            .await?;
        channel
            .queue_bind(
                name.into(),
                self.exchange().into(),
                route.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }

    /// Removes everything [`declare`](Self::declare) created; for tests and
    /// for retiring a prefix.
    pub async fn delete(&self, channel: &Channel) -> lapin::Result<()> {
        let ladder = (0..DELAY_RUNGS).map(|r| self.delay_queue(r));
        for q in [
            self.dispatch_queue(),
            self.second_attempt_queue(),
            self.lease_wait_queue(),
            self.dead_letter_queue(),
            self.status_queue(),
        ]
        .into_iter()
        .chain(ladder)
        {
            channel
                .queue_delete(
                    q.as_str().into(),
                    lapin::options::QueueDeleteOptions::default(),
                )
                .await?;
        }
        channel
            .exchange_delete(
                self.exchange().into(),
                lapin::options::ExchangeDeleteOptions::default(),
            )
            .await
    }
}

fn insert(args: &mut FieldTable, key: &str, value: AMQPValue) {
    args.insert(ShortString::from(key), value);
}

fn insert_str(args: &mut FieldTable, key: &str, value: &str) {
    insert(args, key, AMQPValue::LongString(LongString::from(value)));
}

/// Persistent, with the event's identity in the properties and the routing
/// facts in headers, so tools can filter without parsing bodies. No personal
/// data goes into properties or headers.
pub fn event_properties(event: &crate::Event) -> BasicProperties {
    let mut headers = FieldTable::default();
    let mut put = |k: &str, v: &str| {
        headers.insert(
            ShortString::from(k),
            AMQPValue::LongString(LongString::from(v)),
        );
    };
    put("x-tenant", &event.tenant);
    put("x-source", event.source.as_str());
    put("x-kind", event.kind.as_str());
    headers.insert("x-schema".into(), AMQPValue::ShortUInt(event.schema));
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(event.id.to_string().into())
        .with_timestamp(u64::try_from(event.received_at.timestamp()).unwrap_or_default())
        .with_type(event.kind.as_str().into())
        .with_app_id("vestnik-ingest".into())
        .with_headers(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hop by hop down the ladder, as the dispatcher does: never early,
    /// less than a second late, one hop per set bit (plus the last second).
    #[test]
    fn the_ladder_reaches_any_delay_in_few_hops_and_never_early() {
        for wait_ms in [
            1u64,
            999,
            1_000,
            1_500,
            2_000,
            3_700,
            60_000,
            3_600_000,
            2_592_000_500,
            40 * 86_400_000,
        ] {
            let mut left = wait_ms as i64;
            let mut hops = 0;
            while left > 0 {
                let rung = Topology::delay_rung(Duration::from_millis(left as u64));
                left -= (Topology::rung_secs(rung) * 1000) as i64;
                hops += 1;
                assert!(hops <= 64, "{wait_ms}: no end");
            }
            assert!(left > -1000, "{wait_ms} ms: late by {} ms", -left);
            let bound =
                (wait_ms / 1000).count_ones() + 2 + ((wait_ms / 1000) >> DELAY_RUNGS) as u32;
            assert!(hops <= bound, "{wait_ms} ms: {hops} hops");
        }
        assert_eq!(Topology::rung_secs(0), 1);
        assert_eq!(Topology::rung_secs(DELAY_RUNGS + 5), 1 << (DELAY_RUNGS - 1));
        assert_eq!(Topology::delay_route(3), "delay.8s");
    }
}
