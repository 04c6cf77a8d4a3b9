//! Several ingests behind a load balancer share one spool volume: each
//! keeps its own spool in `<spool.dir>/<instance id>`, locked (`flock`) for
//! as long as it runs. When an ingest is gone for good (scaled down, its
//! container recreated under a new id, its host lost with the volume moved),
//! its spool would strand the webhooks it acked. So every ingest looks, every
//! `spool.adopt_interval_secs`, for spools whose lock is free and that hold
//! records, and drains them to the broker, holding their lock meanwhile: two
//! siblings never drain the same spool, and an owner that comes back waits
//! for the lock (or finds its spool drained).
//!
//! Why a lock in the spool directory and not a lease in Redis: the kernel
//! releases a dead process's `flock` at once and never while it lives, so
//! there is no lease to tune and no clock to trust; ingest needs no Redis.
//! The price: the siblings must see one file system with working `flock`
//! (a local volume shared by the containers of one host, or a file system
//! whose locks are coherent across hosts, not NFS without lock support).
//! A spool in `<spool.dir>` itself (the layout before instance ids) is
//! adopted the same way.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::durable::drain_stranded;
use crate::metrics::Metrics;
use crate::publish::Broker;
use crate::spool::Spool;

pub struct Adopter {
    pub root: PathBuf,
    pub own: PathBuf,
    pub interval: Duration,
    pub max_bytes: u64,
    pub segment_bytes: u64,
    pub publish_timeout: Duration,
}

impl Adopter {
    pub async fn run(self, broker: Broker, metrics: Metrics) {
        loop {
            tokio::time::sleep(self.interval).await;
            for dir in self.candidates() {
                self.adopt(&dir, &broker, &metrics).await;
            }
        }
    }

    /// The other spools under the root, and the root itself.
    fn candidates(&self) -> Vec<PathBuf> {
        let mut dirs = vec![self.root.clone()];
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            dirs.extend(
                entries
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path())
                    .filter(|p| *p != self.own),
            );
        }
        dirs
    }

    async fn adopt(&self, dir: &Path, broker: &Broker, metrics: &Metrics) {
        let opened = Spool::open_stranded(dir, self.max_bytes, self.segment_bytes);
        let (spool, drain) = match opened {
            Ok(Some(opened)) => opened,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "spool: a stranded spool could not be opened");
                return;
            }
        };
        let records = spool.pending_records();
        if records == 0 {
            return;
        }
        tracing::warn!(
            dir = %dir.display(),
            records,
            "spool: its ingest is gone; draining its spool"
        );
        metrics.spool_adoptions.inc();
        drain_stranded(drain, broker.clone(), self.publish_timeout).await;
        tracing::info!(dir = %dir.display(), records, "spool: stranded spool drained");
        // The lock goes with the spool.
        drop(spool);
    }
}
