//! The broker ceiling for deploy/bench: persistent publishes with publisher
//! confirms to a quorum queue, `C` in flight, for `S` seconds, through lapin
//! as the ingest uses it. `amqp_ceiling AMQP_URL SECONDS CONCURRENCY BODY_BYTES`
//! Declares and deletes its own queue.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let seconds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(10);
    let concurrency: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(64);
    let body_bytes: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(700);
    let conn = Connection::connect(&url, ConnectionProperties::default()).await?;
    let queue = format!("bench-ceiling-{}", uuid::Uuid::now_v7().simple());
    let setup = conn.create_channel().await?;
    let mut qargs = FieldTable::default();
    qargs.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    setup
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            qargs,
        )
        .await?;
    let mut channels = Vec::new();
    for _ in 0..4 {
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        channels.push(ch);
    }
    let body = Arc::new(vec![b'x'; body_bytes]);
    let done = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let ch = channels[i % channels.len()].clone();
        let (body, done, queue) = (body.clone(), done.clone(), queue.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let confirm = ch
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await;
                if let Ok(c) = confirm
                    && matches!(c.await, Ok(lapin::Confirmation::Ack(None)))
                {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let wall = start.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    setup
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    println!(
        "{}",
        serde_json::json!({"confirmed": n, "seconds": wall, "confirmed_per_sec": (n as f64 / wall).round(), "concurrency": concurrency})
    );
    Ok(())
}
