//! Live configuration: on SIGHUP, and when the configuration file's content
//! changes, a process reads its configuration again, validates all of it
//! (the service's own checks included, through `apply`), and only then
//! swaps in the new tenants. A file that does not load keeps the running
//! configuration, logs why and sets `vestnik_<service>_config_reload_failing`.
//!
//! What reloads: `[[tenants]]` (keys, sources, channels, templates, provider
//! accounts, look-ups). Every other section (listen addresses, RabbitMQ,
//! Redis, the spool, ...) is read at start only: a change to one is logged
//! as waiting for a restart, and the tenants in the same file still reload.

use std::path::{Path, PathBuf};
use std::time::Duration;

use prometheus::{IntCounterVec, IntGauge, Opts};
use sha2::{Digest, Sha256};

use crate::config::Settings;

/// What a service swaps in: validates `settings` completely and, when it
/// is good, makes its tenants the ones in force; else says why the file was
/// refused (nothing changed then).
pub type Apply = Box<dyn Fn(&Settings) -> Result<(), String> + Send + Sync>;

/// Reload counters of one service.
#[derive(Clone)]
pub struct ReloadMetrics {
    /// `result` = `applied` | `refused` | `unchanged`.
    pub reloads: IntCounterVec,
    /// 1 while the file on disk is not the configuration in force.
    pub failing: IntGauge,
    /// Counts applied reloads (0 = the configuration read at start).
    pub generation: IntGauge,
}

impl ReloadMetrics {
    /// `service` is `ingest` or `dispatcher`: the metric names' middle.
    pub fn new(service: &str) -> ReloadMetrics {
        let reloads = IntCounterVec::new(
            Opts::new(
                format!("vestnik_{service}_config_reloads_total"),
                "Configuration reloads, by result (applied, refused, unchanged)",
            ),
            &["result"],
        )
        .expect("static metric definition");
        let failing = IntGauge::new(
            format!("vestnik_{service}_config_reload_failing"),
            "1 while the configuration file does not load: the previous one stays in force",
        )
        .expect("static metric definition");
        let generation = IntGauge::new(
            format!("vestnik_{service}_config_generation"),
            "Applied configuration reloads since start (0: the one read at start)",
        )
        .expect("static metric definition");
        ReloadMetrics {
            reloads,
            failing,
            generation,
        }
    }

    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.reloads.clone()),
            Box::new(self.failing.clone()),
            Box::new(self.generation.clone()),
        ]
    }
}

/// Watches one process's configuration.
pub struct Reloader {
    /// The file given by `--config` / `VESTNIK_CONFIG`; `None`: only the
    /// environment, which does not change, so nothing to watch.
    path: Option<PathBuf>,
    poll: Option<Duration>,
    running: Settings,
    apply: Apply,
    metrics: ReloadMetrics,
    last_digest: Option<[u8; 32]>,
}

impl Reloader {
    /// `initial` is the configuration the process started with (its file is
    /// `initial.source`); `apply` is called with each newly loaded one.
    pub fn new(initial: &Settings, metrics: ReloadMetrics, apply: Apply) -> Reloader {
        let path = initial.source.clone();
        let poll = (initial.reload.poll_interval_ms > 0)
            .then(|| Duration::from_millis(initial.reload.poll_interval_ms));
        let last_digest = path.as_deref().and_then(digest);
        Reloader {
            path,
            poll,
            running: initial.clone(),
            apply,
            metrics,
            last_digest,
        }
    }

    /// Runs until the task is dropped: SIGHUP (binaries) and the file's
    /// content, checked every `reload.poll_interval_ms`. Polling, not
    /// inotify: a Kubernetes ConfigMap or an editor replaces the file
    /// (rename, symlink swap), which loses an inotify watch.
    pub async fn run(mut self, sighup: bool) {
        let Some(path) = self.path.clone() else {
            tracing::info!("configuration from the environment only: nothing to reload");
            return;
        };
        let mut hangup = if sighup { hangup_signal() } else { None };
        let mut tick = self.poll.map(|p| {
            let mut t = tokio::time::interval(p);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        tracing::info!(
            file = %path.display(),
            sighup = hangup.is_some(),
            poll_ms = ?self.poll.map(|p| p.as_millis()),
            "configuration reload: watching"
        );
        loop {
            let forced = tokio::select! {
                Some(()) = recv_opt(&mut hangup) => true,
                () = tick_opt(&mut tick) => false,
            };
            if forced {
                tracing::info!("SIGHUP: reloading the configuration");
                self.reload(&path, true);
            } else if digest(&path) != self.last_digest {
                tracing::info!(file = %path.display(), "configuration file changed: reloading");
                self.reload(&path, false);
            }
        }
    }

    /// Loads, validates and applies the file once. `forced`: a SIGHUP, which
    /// applies even a file whose content did not change (a tenant's
    /// provider may read a secret from the environment... it does not, but
    /// an operator's SIGHUP should never be a silent no-op).
    pub fn reload(&mut self, path: &Path, forced: bool) -> bool {
        let now = digest(path);
        if !forced && now.is_some() && now == self.last_digest {
            self.metrics.reloads.with_label_values(&["unchanged"]).inc();
            return true;
        }
        let loaded = load(path);
        let result = loaded.and_then(|s| (self.apply)(&s).map(|()| s));
        match result {
            Ok(settings) => {
                let summary = tenant_changes(&self.running.tenants, &settings.tenants);
                let waiting = self.running.restart_needed(&settings);
                if !waiting.is_empty() {
                    tracing::warn!(
                        sections = ?waiting,
                        "configuration changed outside [[tenants]]: those sections take effect at the next restart"
                    );
                }
                // The sections that did not reload stay as they run.
                self.running.tenants = settings.tenants;
                self.last_digest = now;
                self.metrics.reloads.with_label_values(&["applied"]).inc();
                self.metrics.failing.set(0);
                self.metrics.generation.inc();
                tracing::info!(%summary, generation = self.metrics.generation.get(), "configuration reloaded");
                true
            }
            Err(reason) => {
                // Remember the bad content: it is reported once, not every
                // poll; a SIGHUP tries it again.
                self.last_digest = now;
                self.metrics.reloads.with_label_values(&["refused"]).inc();
                self.metrics.failing.set(1);
                tracing::error!(%reason, "configuration not reloaded: the previous one stays in force");
                false
            }
        }
    }
}

/// The file, read as at start (its error masks the values it quotes).
fn load(path: &Path) -> Result<Settings, String> {
    Settings::load(Some(path)).map_err(|e| e.to_string())
}

/// How the tenants changed, for the reload's log line.
pub fn tenant_changes(
    old: &[crate::tenant::TenantConfig],
    new: &[crate::tenant::TenantConfig],
) -> String {
    let fingerprint = crate::tenant::TenantConfig::fingerprint;
    let old_by_id: std::collections::HashMap<&str, [u8; 32]> = old
        .iter()
        .map(|t| (t.id.as_str(), fingerprint(t)))
        .collect();
    let new_ids: std::collections::HashSet<&str> = new.iter().map(|t| t.id.as_str()).collect();
    let (mut added, mut changed) = (0, 0);
    for t in new {
        match old_by_id.get(t.id.as_str()) {
            None => added += 1,
            Some(f) if *f != fingerprint(t) => changed += 1,
            Some(_) => {}
        }
    }
    let removed = old_by_id.keys().filter(|id| !new_ids.contains(*id)).count();
    format!(
        "{} tenants: {added} added, {changed} changed, {removed} removed",
        new.len()
    )
}

fn digest(path: &Path) -> Option<[u8; 32]> {
    std::fs::read(path).ok().map(|b| Sha256::digest(&b).into())
}

#[cfg(unix)]
fn hangup_signal() -> Option<tokio::signal::unix::Signal> {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP: the file is still watched");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangup_signal() -> Option<()> {
    None
}

#[cfg(unix)]
async fn recv_opt(s: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match s {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn recv_opt(_: &mut Option<()>) -> Option<()> {
    std::future::pending().await
}

async fn tick_opt(t: &mut Option<tokio::time::Interval>) {
    match t {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    const ONE: &str = r#"
[[tenants]]
id = "acme"
keys = ["acme-key-0123456789abcdef"]
"#;

    fn reloader(dir: &Path, text: &str) -> (Reloader, PathBuf, Arc<Mutex<Vec<usize>>>) {
        let path = dir.join("vestnik.toml");
        std::fs::write(&path, text).unwrap();
        let initial = Settings::load(Some(&path)).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let apply: Apply = Box::new(move |s: &Settings| {
            if s.tenants.iter().any(|t| t.id == "refused-by-the-service") {
                return Err("the service's own check".into());
            }
            log.lock().unwrap().push(s.tenants.len());
            Ok(())
        });
        (
            Reloader::new(&initial, ReloadMetrics::new("test"), apply),
            path,
            seen,
        )
    }

    #[test]
    fn a_good_file_applies_a_bad_one_keeps_the_old_and_is_reported() {
        let dir = tempfile_dir();
        let (mut r, path, seen) = reloader(dir.path(), ONE);
        let two = format!(
            "{ONE}\n[[tenants]]\nid = \"bistro\"\nkeys = [\"bistro-key-0123456789abcdef\"]\n"
        );
        std::fs::write(&path, &two).unwrap();
        assert!(r.reload(&path, false));
        assert_eq!(*seen.lock().unwrap(), vec![2]);
        assert_eq!(r.metrics.generation.get(), 1);
        assert_eq!(r.running.tenants.len(), 2);

        std::fs::write(&path, "[[tenants]]\nid = \"broken\"\nkeys = 7\n").unwrap();
        assert!(!r.reload(&path, false));
        assert_eq!(r.metrics.failing.get(), 1);
        assert_eq!(r.metrics.generation.get(), 1);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![2],
            "a bad file is never applied"
        );
        assert_eq!(r.running.tenants.len(), 2);

        let refused = format!(
            "{ONE}\n[[tenants]]\nid = \"refused-by-the-service\"\nkeys = [\"other-key-0123456789abcdef\"]\n"
        );
        std::fs::write(&path, &refused).unwrap();
        assert!(!r.reload(&path, false), "the service's validation refuses");
        assert_eq!(r.metrics.failing.get(), 1);

        std::fs::write(&path, ONE).unwrap();
        assert!(r.reload(&path, false));
        assert_eq!(r.metrics.failing.get(), 0);
        assert_eq!(r.metrics.generation.get(), 2);
        assert_eq!(*seen.lock().unwrap(), vec![2, 1]);
    }

    #[test]
    fn an_unchanged_file_is_not_applied_unless_forced() {
        let dir = tempfile_dir();
        let (mut r, path, seen) = reloader(dir.path(), ONE);
        assert!(r.reload(&path, false));
        assert!(seen.lock().unwrap().is_empty());
        assert!(r.reload(&path, true));
        assert_eq!(*seen.lock().unwrap(), vec![1]);
    }

    #[test]
    fn tenant_changes_are_counted_by_id() {
        let t = |id: &str, key: &str| {
            Settings::from_toml(&format!("[[tenants]]\nid = \"{id}\"\nkeys = [\"{key}\"]\n"))
                .unwrap()
                .tenants
                .remove(0)
        };
        let old = vec![
            t("a", "a-key-0123456789abcdef"),
            t("b", "b-key-0123456789abcdef"),
        ];
        let new = vec![
            t("a", "a-key-0123456789abcdef"),
            t("b", "b-key-fedcba9876543210"),
            t("c", "c-key-0123456789abcdef"),
        ];
        assert_eq!(
            tenant_changes(&old, &new),
            "3 tenants: 1 added, 1 changed, 0 removed"
        );
        assert_eq!(
            tenant_changes(&new, &old[..1]),
            "1 tenants: 0 added, 0 changed, 2 removed"
        );
    }

    #[test]
    fn a_refused_file_is_reported_without_the_values_it_quotes() {
        let dir = tempfile_dir();
        let path = dir.path().join("vestnik.toml");
        std::fs::write(
            &path,
            "[[tenants]]\nid = \"acme\"\nkeys = \"acme-key-0123456789abcdef\"\n",
        )
        .unwrap();
        let reason = match load(&path) {
            Ok(_) => panic!("a string where a list belongs loads"),
            Err(reason) => reason,
        };
        assert!(!reason.contains("acme-key-0123456789abcdef"), "{reason}");
    }

    struct TempDir(PathBuf);
    impl TempDir {
        fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn tempfile_dir() -> TempDir {
        let p = std::env::temp_dir().join(format!("vestnik-reload-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}
