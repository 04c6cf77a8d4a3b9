//! Deletes the exchange and queues of one prefix (deploy/bench cleans up
//! with it). `drop_topology AMQP_URL PREFIX [SECOND_ATTEMPT_DELAY_SECS]`
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use shared::topology::Topology;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args.next().ok_or("AMQP_URL missing")?;
    let prefix = args.next().ok_or("PREFIX missing")?;
    let delay: u64 = args.next().and_then(|d| d.parse().ok()).unwrap_or(570);
    let conn = Connection::connect(&url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    Topology::new(&prefix, Duration::from_secs(delay), 20)
        .delete(&ch)
        .await?;
    conn.close(200, "done".into()).await?;
    Ok(())
}
