//! Consumes the dispatch queue with manual acks: prefetch bounds what the
//! broker hands us, a semaphore bounds what we process at once. Reconnects
//! with backoff. On shutdown: stop consuming, let in-flight events finish
//! within the timeout, and leave the rest unacked so the broker hands them
//! to another dispatcher.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures_util::{FutureExt, StreamExt};
use lapin::Connection;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::worker::Worker;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Event,
    Status,
}

pub struct ConsumerSettings {
    pub endpoints: shared::amqp::Endpoints,
    pub prefetch: u16,
    pub concurrency: usize,
    pub shutdown_timeout: Duration,
}

pub async fn run(
    worker: Arc<Worker>,
    settings: ConsumerSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let tag = format!("vestnik-dispatcher-{}", uuid::Uuid::now_v7().simple());
    while !*shutdown.borrow() {
        let connect = || async {
            settings
                .endpoints
                .connect(&tag, Duration::from_secs(5))
                .await
        };
        let conn = tokio::select! {
            c = connect
                .retry(ExponentialBuilder::default().with_min_delay(Duration::from_millis(200)).with_max_delay(Duration::from_secs(5)).with_jitter().without_max_times())
                .notify(|e, d| tracing::warn!(error = %e, retry_in_ms = d.as_millis() as u64, "broker: connect failed")) => c,
            _ = stopped(&mut shutdown) => return,
        };
        let Ok(conn) = conn else { continue };
        let conn = Arc::new(conn);
        match session(&worker, &settings, &conn, &tag, &mut shutdown).await {
            Ok(()) => {
                let _ = conn.close(200, "shutting down".into()).await;
                return;
            }
            Err(e) => {
                worker.health.set_broker(false);
                worker.metrics.broker_up.set(0);
                tracing::warn!(error = %e, "broker: consuming stopped, reconnecting");
                let _ = conn.close(320, "reconnecting".into()).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Consumes until shutdown (Ok) or until the connection fails (Err).
async fn session(
    worker: &Arc<Worker>,
    settings: &ConsumerSettings,
    conn: &Arc<Connection>,
    tag: &str,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), String> {
    let setup = conn.create_channel().await.map_err(|e| e.to_string())?;
    worker
        .topology
        .declare(&setup)
        .await
        .map_err(|e| format!("declare topology: {e}"))?;
    let _ = setup.close(200, "topology declared".into()).await;

    let publisher = conn.create_channel().await.map_err(|e| e.to_string())?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let consuming = conn.create_channel().await.map_err(|e| e.to_string())?;
    consuming
        .basic_qos(settings.prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let events = consuming
        .basic_consume(
            worker.topology.dispatch_queue().as_str().into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let status_tag = format!("{tag}-statuses");
    let statuses = consuming
        .basic_consume(
            worker.topology.status_queue().as_str().into(),
            status_tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut consumer = futures_util::stream::select(
        events.map(|d| (Kind::Event, d)),
        statuses.map(|d| (Kind::Status, d)),
    );
    let dlq_watch = watch_dead_letters(worker, conn).await?;
    // The hold queues: drained in order when their account is healthy.
    let (stop_holds, holds_stopped) = watch::channel(false);
    let holds = tokio::spawn(crate::hold::run(
        worker.clone(),
        conn.clone(),
        publisher.clone(),
        holds_stopped,
    ));
    worker.health.set_broker(true);
    worker.metrics.broker_up.set(1);
    tracing::info!(queue = %worker.topology.dispatch_queue(), prefetch = settings.prefetch, concurrency = settings.concurrency, "consuming");

    let permits = Arc::new(Semaphore::new(settings.concurrency));
    let mut tasks = JoinSet::new();
    let result = loop {
        // Reap finished tasks so the set does not grow.
        while tasks.try_join_next().is_some() {}
        let next = tokio::select! {
            n = consumer.next() => n,
            _ = stopped(shutdown) => break Ok(()),
        };
        let (kind, delivery) = match next {
            Some((k, Ok(d))) => (k, d),
            Some((_, Err(e))) => break Err(e.to_string()),
            None => break Err("consumer cancelled by the broker".into()),
        };
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.map_err(|e| e.to_string())?,
            _ = stopped(shutdown) => {
                let _ = delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
                break Ok(());
            }
        };
        let (worker, publisher) = (worker.clone(), publisher.clone());
        tasks.spawn(async move {
            worker.metrics.in_flight.inc();
            let handled = AssertUnwindSafe(async {
                match kind {
                    Kind::Event => worker.handle(&delivery, &publisher).await,
                    Kind::Status => worker.handle_status(&delivery, &publisher).await,
                }
            })
            .catch_unwind()
            .await;
            // A bug must not leave the delivery unsettled until the broker's
            // consumer timeout closes the channel (and redelivers everything
            // in flight on it): it is dead-lettered, counted, and we go on.
            let settle = match handled {
                Ok(settle) => settle,
                Err(panic) => {
                    worker
                        .dead_letter_panic(
                            &delivery,
                            &publisher,
                            &shared::telemetry::panic_text(panic.as_ref()),
                        )
                        .await
                }
            };
            if let Err(e) = settle.apply(&delivery).await {
                // The broker will redeliver; idempotency makes that harmless.
                tracing::warn!(error = %e, ?settle, "could not settle a delivery");
            }
            worker.metrics.in_flight.dec();
            drop(permit);
        });
    };

    if result.is_ok() {
        // Graceful: no new deliveries.
        let _ = consuming
            .basic_cancel(tag.into(), BasicCancelOptions::default())
            .await;
    }
    // Finish what is in flight, also when the connection was lost: a send
    // cut off half-way could not tell whether it reached the provider (it
    // would go to the DLQ as uncertain), while one that finishes records
    // its outcome, so the broker's redelivery finds it done. Dropping the
    // task set would abort them.
    let in_flight = tasks.len();
    tracing::info!(in_flight, "finishing in-flight events");
    let _ = stop_holds.send(true);
    let drained = tokio::time::timeout(settings.shutdown_timeout, async {
        let draining_holds = async {
            if holds.await.is_err() {
                tracing::warn!("the hold queues' task failed");
            }
        };
        let in_flight = async { while tasks.join_next().await.is_some() {} };
        tokio::join!(draining_holds, in_flight);
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = tasks.len(),
            "shutdown timeout: unfinished events go back to the queue"
        );
        tasks.abort_all();
    }
    if result.is_ok() {
        let _ = consuming.close(200, "shutting down".into()).await;
        let _ = publisher.close(200, "shutting down".into()).await;
    }
    dlq_watch.abort();
    worker.health.set_broker(false);
    worker.metrics.broker_up.set(0);
    result
}

/// Keeps the DLQ-size gauge current (a passive declare every 15 s on its own
/// channel), so a growing dead-letter queue shows on the dashboards and alerts.
async fn watch_dead_letters(
    worker: &Arc<Worker>,
    conn: &Connection,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
    let queue = worker.topology.dead_letter_queue();
    let gauge = worker.metrics.dlq_messages.clone();
    Ok(tokio::spawn(async move {
        loop {
            let passive = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            match channel
                .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                .await
            {
                Ok(q) => gauge.set(i64::from(q.message_count())),
                Err(e) => {
                    tracing::debug!(error = %e, "dlq size not read");
                    return;
                }
            }
            tokio::time::sleep(Duration::from_secs(15)).await;
        }
    }))
}

/// Resolves once shutdown is requested (the watch guard is not held across awaits).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}
