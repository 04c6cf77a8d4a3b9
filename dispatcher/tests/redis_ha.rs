//! The dispatcher on a highly available Redis: a primary, its replica and
//! three Sentinels (`deploy/redis-ha.sh`, started here when it is not up).
//! A failover while events flow loses and duplicates nothing, and the marks
//! that must outlive one wait for the replica.
//!
//! The Sentinel group is shared by the tests of this file, which take turns
//! (one lock). Keys are under each test's own prefix.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::{Harness, Options, event, meta_ok};
use deadpool_redis::redis;
use dispatcher::delivery_state::{Sent, SentMessage, Store};
use dispatcher::redis_conn::{Backend, Conn};
use shared::EventKind;
use shared::config::{RedisMode, RedisSettings};
use shared::tenant::Channel;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer};

static TURNS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SENTINELS: [&str; 3] = [
    "redis://127.0.0.1:7211",
    "redis://127.0.0.1:7212",
    "redis://127.0.0.1:7213",
];
const MASTER: &str = "vestnik";

/// Starts the Sentinel group unless it runs (idempotent, see the script).
fn redis_ha_up() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/redis-ha.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .arg("start")
        .output()
        .expect("deploy/redis-ha.sh runs");
    assert!(
        out.status.success(),
        "deploy/redis-ha.sh start failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sentinel_settings(prefix: &str) -> RedisSettings {
    RedisSettings {
        mode: RedisMode::Sentinel,
        sentinels: SENTINELS.iter().map(|s| s.to_string()).collect(),
        master_name: MASTER.into(),
        prefix: prefix.into(),
        ..RedisSettings::default()
    }
}

async fn plain(port: u16) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis node up")
}

/// The primary's port, as the first Sentinel names it.
async fn primary_port() -> u16 {
    let mut s = plain(7211).await;
    let (_, port): (String, u16) = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(MASTER)
        .query_async(&mut s)
        .await
        .expect("sentinel answers");
    port
}

/// Waits until the group is settled: the primary the Sentinels name says
/// it is one and has its replica connected and in sync.
async fn settled() -> u16 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let port = primary_port().await;
        let mut c = plain(port).await;
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut c)
            .await
            .unwrap_or_default();
        // The replica connected and in sync (not still loading a copy).
        if info.contains("role:master")
            && info.contains("connected_slaves:1")
            && info.contains("state=online")
        {
            return port;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the Sentinel group did not settle: {info}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How many `WAIT` commands a Redis server has run (`INFO commandstats`).
async fn waits(c: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(c)
        .await
        .expect("info commandstats");
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_wait:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

async fn delete_prefix(conn: &mut Conn, prefix: &str) {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(conn)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<i64, _> = redis::cmd("DEL").arg(keys).query_async(conn).await;
    }
}

/// Requests the fake received, per recipient.
async fn sends_per_recipient(fake: &MockServer) -> BTreeMap<String, usize> {
    let mut per: BTreeMap<String, usize> = BTreeMap::new();
    for r in fake.received_requests().await.unwrap_or_default() {
        let body: serde_json::Value = r.body_json().unwrap_or_default();
        let to = body["to"].as_str().unwrap_or_default().to_string();
        *per.entry(to).or_default() += 1;
    }
    per
}

/// A failover in the middle of a flow of events: the dispatcher finds the
/// new primary through the Sentinels and goes on; every event is sent
/// exactly once, and its done mark is on the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_mid_flow_loses_and_duplicates_nothing() {
    let _turn = TURNS.lock().await;
    redis_ha_up();
    let before = settled().await;
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(meta_ok("wamid.ha"))
        .mount(&fake)
        .await;
    let mut h = Harness::prepare("sentinel-failover", &Options::meta(&fake)).await;
    h.settings.redis = sentinel_settings(&h.prefix);
    let h = h.with_dispatcher().await;

    const N: usize = 300;
    let events: Vec<_> = (0..N)
        .map(|i| {
            event(
                EventKind::OrderCompleted,
                &format!("org:ha-{i}"),
                &format!("+7916{:07}", 1_000_000 + i),
            )
        })
        .collect();
    for e in &events[..N / 2] {
        h.publish(e).await;
    }
    // The failover starts while the first half is being sent.
    let mut s = plain(7211).await;
    let _: () = redis::cmd("SENTINEL")
        .arg("FAILOVER")
        .arg(MASTER)
        .query_async(&mut s)
        .await
        .expect("failover accepted");
    for e in &events[N / 2..] {
        h.publish(e).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let per = loop {
        let per = sends_per_recipient(&fake).await;
        if per.len() >= N || tokio::time::Instant::now() > deadline {
            break per;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let after = settled().await;
    assert_ne!(before, after, "the Sentinels promoted the replica");
    // Settled: nothing more arrives late.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let per = if per.len() >= N {
        sends_per_recipient(&fake).await
    } else {
        per
    };
    let missing = N - per.len();
    let duplicated: Vec<_> = per.iter().filter(|(_, n)| **n > 1).collect();
    assert_eq!(missing, 0, "events never sent");
    assert!(duplicated.is_empty(), "sent twice: {duplicated:?}");

    let backend = Backend::new(&h.settings.redis).expect("backend");
    let mut conn = backend.connect().await.expect("the new primary");
    let mut marks = 0;
    for e in &events {
        let key = common::mark(&h.prefix, "done", &e.dedup_key, "whatsapp");
        let v: Option<String> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut conn)
            .await
            .expect("GET");
        marks += usize::from(v.is_some());
    }
    assert_eq!(marks, N, "a done mark per event on the new primary");
    assert_eq!(
        h.queue_len(&h.topology.dispatch_queue()).await,
        0,
        "all acked"
    );
    delete_prefix(&mut conn, &h.prefix).await;
    h.finish().await;
}

fn sent(id: &str) -> (Sent, SentMessage) {
    (
        Sent {
            provider: "meta".into(),
            message_id: id.into(),
            event_id: "e".into(),
            at: chrono::Utc::now(),
        },
        SentMessage {
            dedup_key: "d".into(),
            channel: Channel::Whatsapp,
            attempt: 1,
            failed_channels: vec![],
            event: "{}".into(),
        },
    )
}

/// A done mark waits for the replica (`WAIT 1`): with the replica stopped,
/// the wait runs out, is retried for a while (a failover would be under
/// way), then accepted and counted, and the mark still stands on the
/// primary; with no replica connected at all, marks do not wait (no `WAIT`
/// reaches the primary) and are counted; with the replica back, marks wait
/// and are confirmed again and nothing is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_done_mark_waits_for_the_replica_and_counts_when_it_cannot() {
    let _turn = TURNS.lock().await;
    redis_ha_up();
    let primary = settled().await;
    let replica = if primary == 7201 { 7202 } else { 7201 };
    let prefix = common::unique("wait");
    let settings = sentinel_settings(&prefix);
    assert_eq!(settings.replicas_to_wait_for(), 1, "on by default");
    let store = Store::new(
        &settings,
        Duration::from_secs(120),
        Duration::from_secs(600),
    )
    .expect("store");
    let wa = Channel::Whatsapp;

    let (s, m) = sent("m-1");
    store
        .claim("healthy", wa, &[], "t1", 1)
        .await
        .expect("claim");
    store
        .mark_sent("healthy", wa, "t1", &s, &m)
        .await
        .expect("marked");
    assert_eq!(store.wait_shortfalls().get(), 0, "the replica confirmed");
    // Confirmed means the replica has it already.
    let mut r = plain(replica).await;
    let on_replica: Option<String> = redis::cmd("GET")
        .arg(common::mark(&prefix, "done", "healthy", "whatsapp"))
        .query_async(&mut r)
        .await
        .expect("replica answers");
    assert!(on_replica.is_some(), "the done mark reached the replica");

    // A replica that stops answering (SIGSTOP): the wait runs out.
    let pid_file = format!(
        "{}/{replica}/redis.pid",
        std::env::var("VESTNIK_REDIS_HA_DIR").unwrap_or_else(|_| "/tmp/vestnik-redis-ha".into())
    );
    let pid = std::fs::read_to_string(&pid_file)
        .expect("replica pid file")
        .trim()
        .to_string();
    let signal = |sig: &str| {
        std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(&pid)
            .status()
            .expect("kill runs")
    };
    let (s2, m2) = sent("m-2");
    store
        .claim("stalled", wa, &[], "t2", 1)
        .await
        .expect("claim");
    assert!(signal("STOP").success());
    let marked = store.mark_sent("stalled", wa, "t2", &s2, &m2).await;
    marked.expect("marked on the primary although the replica did not confirm");
    assert_eq!(store.wait_shortfalls().get(), 1, "the shortfall is counted");
    let phase = store.phase("stalled", wa).await.expect("phase");
    assert_eq!(phase, dispatcher::delivery_state::Phase::Sent);

    // The primary drops the stopped replica (as a failover leaves the
    // promoted one alone): with no replica connected, marks do not wait
    // for one at all, and every one is still counted as a shortfall.
    let mut p = plain(primary).await;
    let dropped: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .query_async(&mut p)
        .await
        .expect("client kill");
    assert_eq!(dropped, 1, "the replica's link dropped");
    let waits_before = waits(&mut p).await;
    for i in 0..3 {
        let id = format!("alone-{i}");
        let (s, m) = sent(&format!("m-alone-{i}"));
        store.claim(&id, wa, &[], "t4", 1).await.expect("claim");
        store
            .mark_sent(&id, wa, "t4", &s, &m)
            .await
            .expect("marked on a primary without replicas");
    }
    let waits_alone = waits(&mut p).await;
    assert!(signal("CONT").success());
    assert_eq!(
        waits_alone, waits_before,
        "no WAIT sent to a primary without replicas"
    );
    assert_eq!(store.wait_shortfalls().get(), 4, "each counted");

    // The replica back in sync: marks are confirmed again, nothing counted.
    let primary = settled().await;
    let (s3, m3) = sent("m-3");
    store.claim("back", wa, &[], "t3", 1).await.expect("claim");
    let mut p = plain(primary).await;
    let waits_before = waits(&mut p).await;
    store
        .mark_sent("back", wa, "t3", &s3, &m3)
        .await
        .expect("marked");
    assert_eq!(store.wait_shortfalls().get(), 4, "no new shortfall");
    assert!(
        waits(&mut p).await > waits_before,
        "with the replica back, marks wait for it again"
    );

    let backend = Backend::new(&settings).expect("backend");
    let mut conn = backend.connect().await.expect("primary");
    delete_prefix(&mut conn, &prefix).await;
}
