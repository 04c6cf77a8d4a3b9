//! Where the worker publishes outcomes that are not "sent": the TTL wait
//! queue for the one second attempt, and the dead-letter queue. Always with
//! publisher confirms: a delivery is acked only after its outcome is durable.

use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation};
use shared::topology::{ROUTE_DEAD, ROUTE_DISPATCH, Topology};

pub const ATTEMPT: &str = "x-attempt";
pub const FIRST_FAILURE_AT: &str = "x-first-failure-at";
pub const REASON: &str = "x-dlq-reason";
pub const ERROR: &str = "x-dlq-error";
pub const ATTEMPTS: &str = "x-dlq-attempts";
pub const FAILED_AT: &str = "x-dlq-failed-at";
pub const CHANNEL: &str = "x-dlq-channel";
pub const PROVIDER: &str = "x-dlq-provider";
/// Channels that already failed for this event (comma-separated): the
/// worker routes to the next one (fallback).
pub const FAILED_CHANNELS: &str = "x-failed-channels";

#[derive(Debug, thiserror::Error)]
#[error("publish to {route} not confirmed: {why}")]
pub struct OutboxError {
    route: String,
    why: String,
}

/// Headers to add to (or replace in) the original message's headers.
pub type Headers = Vec<(&'static str, AMQPValue)>;

pub fn text(v: impl Into<String>) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v.into()))
}

pub fn int(v: i64) -> AMQPValue {
    AMQPValue::LongLongInt(v)
}

pub async fn second_attempt(
    channel: &Channel,
    topology: &Topology,
    body: &[u8],
    props: &BasicProperties,
    extra: Headers,
) -> Result<(), OutboxError> {
    let route = topology.second_attempt_route();
    publish(channel, topology, &route, body, props, extra).await
}

/// To the lease-wait queue: another dispatcher holds this delivery's lease;
/// it comes back to the dispatch queue after `rabbitmq.lease_wait_secs`.
pub async fn lease_wait(
    channel: &Channel,
    topology: &Topology,
    body: &[u8],
    props: &BasicProperties,
    extra: Headers,
) -> Result<(), OutboxError> {
    let route = topology.lease_wait_route();
    publish(channel, topology, &route, body, props, extra).await
}

/// Back to the dispatch queue at once (fallback to the next channel after
/// an asynchronous failure).
pub async fn redispatch(
    channel: &Channel,
    topology: &Topology,
    body: &[u8],
    props: &BasicProperties,
    extra: Headers,
) -> Result<(), OutboxError> {
    publish(channel, topology, ROUTE_DISPATCH, body, props, extra).await
}

pub async fn dead_letter(
    channel: &Channel,
    topology: &Topology,
    body: &[u8],
    props: &BasicProperties,
    extra: Headers,
) -> Result<(), OutboxError> {
    publish(channel, topology, ROUTE_DEAD, body, props, extra).await
}

pub async fn publish(
    channel: &Channel,
    topology: &Topology,
    route: &str,
    body: &[u8],
    props: &BasicProperties,
    extra: Headers,
) -> Result<(), OutboxError> {
    let err = |why: String| OutboxError {
        route: route.to_string(),
        why,
    };
    let mut headers = props.headers().clone().unwrap_or_default();
    for (k, v) in extra {
        headers.insert(ShortString::from(k), v);
    }
    let props = props.clone().with_headers(headers).with_delivery_mode(2);
    let publish = async {
        let confirm = channel
            .basic_publish(
                topology.exchange().into(),
                route.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                props,
            )
            .await
            .map_err(|e| err(e.to_string()))?;
        match confirm.await.map_err(|e| err(e.to_string()))? {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err(err("unroutable".into())),
            Confirmation::Nack(_) => Err(err("nacked".into())),
            Confirmation::NotRequested => Err(err("channel not in confirm mode".into())),
        }
    };
    tokio::time::timeout(Duration::from_secs(10), publish)
        .await
        .unwrap_or_else(|_| Err(err("timed out".into())))
}

/// Reads an integer header (RabbitMQ and clients use several int types).
pub fn header_int(headers: Option<&FieldTable>, key: &str) -> Option<i64> {
    match headers?.inner().get(key)? {
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongInt(v) => Some((*v).into()),
        AMQPValue::LongUInt(v) => Some((*v).into()),
        AMQPValue::ShortInt(v) => Some((*v).into()),
        AMQPValue::ShortUInt(v) => Some((*v).into()),
        AMQPValue::ShortShortInt(v) => Some((*v).into()),
        AMQPValue::ShortShortUInt(v) => Some((*v).into()),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok(),
        _ => None,
    }
}

pub fn header_str(headers: Option<&FieldTable>, key: &str) -> Option<String> {
    match headers?.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}
