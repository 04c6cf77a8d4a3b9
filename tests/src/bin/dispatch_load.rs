//! Publishes bench events straight to the dispatch queue, as ingest would:
//! `dispatch_load AMQP_URL PREFIX COUNT RATE [DELAY_SECS [CUSTOMERS]]` (RATE
//! 0 = as fast as confirms allow; CUSTOMERS, default 1: how many phones the
//! events go to, round robin). Declares the topology first (with the dispatcher's
//! second-attempt delay), so the queue can be filled before a dispatcher runs. Each event has its own dedup key and carries its publish time in
//! `order_number`, which the bench template renders as the message text.
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Connection, ConnectionProperties};
use shared::event::{Event, EventKind, Params, Recipient, SCHEMA_VERSION};
use shared::topology::{ROUTE_DISPATCH, event_properties};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args.next().ok_or("AMQP_URL")?;
    let prefix = args.next().ok_or("PREFIX")?;
    let count: u64 = args.next().ok_or("COUNT")?.parse()?;
    let rate: u64 = args.next().ok_or("RATE")?.parse()?;
    let delay: u64 = args.next().map(|d| d.parse()).transpose()?.unwrap_or(570);
    let customers: u64 = args
        .next()
        .map(|d| d.parse())
        .transpose()?
        .unwrap_or(1)
        .max(1);
    let topology = shared::topology::Topology::new(&prefix, Duration::from_secs(delay), 20);
    let exchange = topology.exchange();
    let conn = Connection::connect(&url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    topology.declare(&ch).await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let run = uuid::Uuid::now_v7().simple().to_string();
    let start = Instant::now();
    let mut pending = Vec::new();
    for i in 0..count {
        if let Some(offset) = (i * 1_000_000_000).checked_div(rate) {
            let due = start + Duration::from_nanos(offset);
            let now = Instant::now();
            if due > now {
                tokio::time::sleep(due - now).await;
            }
        }
        let sent_us = SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros();
        let phone =
            shared::phone::normalise(&format!("+7916{:07}", 1_234_567 + i % customers)).ok();
        let event = Event {
            schema: SCHEMA_VERSION,
            id: uuid::Uuid::now_v7(),
            tenant: "bench".into(),
            source: shared::SourceId::Iiko,
            kind: EventKind::OrderCompleted,
            occurred_at: chrono::Utc::now(),
            received_at: chrono::Utc::now(),
            dedup_key: format!("bench:iiko:{run}:{i}:Delivered"),
            source_ref: None,
            location: None,
            recipient: Recipient {
                phone,
                email: None,
                name: Some("Иван".into()),
            },
            params: Params {
                order_number: Some(sent_us.to_string()),
                ..Params::default()
            },
            format: None,
            route: None,
            lookup: None,
        };
        let confirm = ch
            .basic_publish(
                exchange.as_str().into(),
                ROUTE_DISPATCH.into(),
                BasicPublishOptions::default(),
                &event.to_json(),
                event_properties(&event),
            )
            .await?;
        pending.push(confirm);
        if pending.len() >= 512 {
            for c in pending.drain(..) {
                c.await?;
            }
        }
    }
    for c in pending.drain(..) {
        c.await?;
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!("published {count} events in {secs:.2}s");
    conn.close(200, "done".into()).await?;
    Ok(())
}
