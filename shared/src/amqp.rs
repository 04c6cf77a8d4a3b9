//! Reaching a RabbitMQ cluster. lapin connects to one URI, so the list of
//! nodes and the failover between them are here: [`Endpoints::connect`]
//! tries the nodes in turn, starting after the one it last reached (a
//! connection that was lost was most likely lost with its node), and every
//! caller already reconnects with backoff when a connection drops. A
//! publish whose confirm was outstanding on a lost connection is reported
//! as not confirmed by lapin: the ingest spools it, the dispatcher leaves
//! its delivery unacked, so the broker redelivers it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};

use crate::config::RabbitSettings;

/// The broker's nodes (`rabbitmq.urls`, or `rabbitmq.url` alone).
#[derive(Clone)]
pub struct Endpoints {
    urls: Arc<Vec<String>>,
    next: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.urls.iter().map(|u| crate::mask::url(u)))
            .finish()
    }
}

impl Endpoints {
    pub fn from_settings(s: &RabbitSettings) -> Endpoints {
        Endpoints::new(s.endpoints())
    }

    /// One node (tests, tools).
    pub fn one(url: &str) -> Endpoints {
        Endpoints::new(vec![url.to_string()])
    }

    fn new(urls: Vec<String>) -> Endpoints {
        Endpoints {
            urls: Arc::new(urls),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn len(&self) -> usize {
        self.urls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// Connects to the first node that answers, each tried once for at most
    /// `timeout`, starting after the node reached last time. The error names
    /// every node (credentials masked) and why it failed.
    pub async fn connect(&self, name: &str, timeout: Duration) -> Result<Connection, String> {
        let n = self.urls.len().max(1);
        let start = self.next.load(Ordering::Relaxed);
        let mut failures = Vec::with_capacity(n);
        for k in 0..self.urls.len() {
            let i = (start + k) % n;
            let url = &self.urls[i];
            let props = ConnectionProperties::default().with_connection_name(name.into());
            match tokio::time::timeout(timeout, Connection::connect(url, props)).await {
                Ok(Ok(conn)) => {
                    self.next.store((i + 1) % n, Ordering::Relaxed);
                    if self.urls.len() > 1 {
                        tracing::info!(node = %crate::mask::url(url), "broker: connected to a cluster node");
                    }
                    return Ok(conn);
                }
                Ok(Err(e)) => failures.push(format!("{}: {e}", crate::mask::url(url))),
                Err(_) => failures.push(format!("{}: connect timed out", crate::mask::url(url))),
            }
        }
        // The next round starts one node further on.
        self.next.store((start + 1) % n, Ordering::Relaxed);
        Err(failures.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_alone_is_a_one_node_list_and_urls_win() {
        let s = RabbitSettings::default();
        assert_eq!(Endpoints::from_settings(&s).len(), 1);
        let s = RabbitSettings {
            urls: vec![
                "amqp://a:5672".into(),
                "amqp://b:5672/%2f?heartbeat=5".into(),
            ],
            ..RabbitSettings::default()
        };
        // The default heartbeat is asked for, unless the URL sets its own.
        assert_eq!(
            s.endpoints(),
            vec![
                "amqp://a:5672?heartbeat=10",
                "amqp://b:5672/%2f?heartbeat=5"
            ]
        );
        let s = RabbitSettings {
            url: "amqp://a:5672/%2f?frame_max=8192".into(),
            heartbeat_secs: 0,
            ..RabbitSettings::default()
        };
        assert_eq!(s.endpoints(), vec!["amqp://a:5672/%2f?frame_max=8192"]);
        let s = RabbitSettings {
            heartbeat_secs: 20,
            ..s
        };
        assert_eq!(
            s.endpoints(),
            vec!["amqp://a:5672/%2f?frame_max=8192&heartbeat=20"]
        );
    }

    #[test]
    fn debug_masks_credentials() {
        let e = Endpoints::one("amqp://vestnik:s3cret@10.0.0.1:5672/%2f");
        let d = format!("{e:?}");
        assert!(!d.contains("s3cret"), "{d}");
        assert!(d.contains("10.0.0.1"), "{d}");
    }

    #[tokio::test]
    async fn a_dead_node_is_skipped_and_named_when_all_fail() {
        // Nothing listens on ports 9 and 1 of loopback: refused at once.
        let dead = Endpoints::new(vec![
            "amqp://guest:pw@127.0.0.1:9/%2f".into(),
            "amqp://guest:pw@127.0.0.1:1/%2f".into(),
        ]);
        let err = dead
            .connect("test", Duration::from_secs(2))
            .await
            .expect_err("nothing listens");
        assert!(
            err.contains("127.0.0.1:9") && err.contains("127.0.0.1:1"),
            "{err}"
        );
        assert!(!err.contains("pw@"), "{err}");
    }

    /// The shared RabbitMQ on loopback, behind a dead node in the list.
    #[tokio::test]
    async fn the_live_node_is_reached_past_a_dead_one() {
        let e = Endpoints::new(vec![
            "amqp://guest:guest@127.0.0.1:9/%2f".into(),
            "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
        ]);
        for _ in 0..2 {
            let conn = e
                .connect("vestnik-test", Duration::from_secs(5))
                .await
                .expect("RabbitMQ on 127.0.0.1:5672");
            assert!(conn.status().connected());
            let _ = conn.close(200, "done".into()).await;
        }
    }
}
