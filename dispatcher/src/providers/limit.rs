//! Client-side rate limits: a provider is wrapped in [`Limited`], which waits
//! for a permit before each send, so we stay under the provider's limits
//! instead of collecting 429s. The buckets (GCRA) live in Redis and are
//! shared by every dispatcher of the fleet ([`crate::shared_limit`]); waiting
//! is a plain sleep with no lock held, and never across the send itself.
//!
//! # Configuration
//!
//! An optional `rate_limit` key in a provider's section:
//!
//! ```toml
//! [tenants.providers.meta]
//! rate_limit = { per_second = 80, burst = 80, max_wait_ms = 30000,
//!                per_recipient_every_secs = 6, per_recipient_burst = 45 }
//! # or: rate_limit = false      (no client-side limit, e.g. against a fake)
//! ```
//!
//! - `per_second` (> 0, fractions allowed) and `burst` (≥ 1): a token bucket
//!   for the whole provider account. Any window of `w` seconds holds at most
//!   `burst + per_second × w` sends. Given `per_second` without `burst`, the
//!   burst is one second's worth (`ceil(per_second)`); given neither, both
//!   take the provider's defaults below.
//! - `per_recipient_every_secs` (≥ 0; 0 = off) and `per_recipient_burst`
//!   (≥ 1): a second bucket per recipient (phone in E.164 or lower-cased
//!   e-mail): one send per `every` with `burst` in reserve. For WhatsApp
//!   (Meta's pair rate limit, error 131056); any provider may set it.
//! - `max_wait_ms`: the longest a send waits for permits. A send that would
//!   wait longer is not made and is answered `Throttled`: the worker gives
//!   its claim back and parks the delivery in the broker's lease-wait queue,
//!   so no attempt is spent and a flood cannot pile up behind the limiter
//!   past the lease. Keep it well below `dispatcher.lease_ttl_secs`.
//!
//! # Defaults
//!
//! | provider  | per_second | burst | per recipient      | why |
//! |-----------|-----------:|------:|--------------------|-----|
//! | meta      | 80         | 80    | every 6 s, burst 45 | 80 msg/s per number; pair limit ≈1 per 6 s, bursts up to 45 (providers.md B1, Meta's throughput docs) |
//! | dialog360 | 80         | 80    | every 6 s, burst 45 | the same Cloud API number behind 360dialog (B2) |
//! | wazzup    | 80         | 100   | off                | ≤ 500 requests per 5 s (B3): 100 + 80 × 5 = 500 |
//! | resend    | 2          | 1     | off                | 2 req/s, the lowest of the documented values (B6) |
//! | smsru     | 20         | 20    | off                | no documented limit; a guard against runaway loops |
//! | exolve    | 20         | 20    | off                | no documented limit; a guard against runaway loops |
//!
//! `max_wait_ms` defaults to 30 000. The per-recipient bucket mirrors Meta's
//! documented numbers: a burst of 45 to one user is accepted, a steady 1 per
//! 6 s after it. It never delays ordinary sequences ("cooking", "on the
//! way") or the worker's quick retries, and stops a loop that hammers one
//! customer. Meta counts a burst as debt (after 20 quick messages, ~2 min of
//! silence), which a token bucket does not model: a send inside that debt
//! still gets 131056, which `meta::classify` answers Transient with a wait
//! of at least 6 s. A smaller `per_recipient_burst` avoids the debt at the
//! price of delaying quick sequences.
//!
//! Limits are per provider account (the provider and its configuration
//! section) for the whole fleet: N dispatchers together send no faster than
//! the configured rate, so nothing is divided by the replica count. A
//! provider's own request to wait (HTTP 429 with `Retry-After`, or any
//! answer that sets a retry delay) pauses that account for every dispatcher
//! until it has passed.
//!
//! A send that has to wait lifts the worker's `sending` mark for the wait
//! and sets it again before writing ([`Hold`](super::Hold)); one with a
//! permit at hand touches nothing.

use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde::Deserialize;
use shared::tenant::Channel;

use super::{Address, Hold, Message, Outcome, Provider};
use crate::shared_limit::{Bucket, SharedLimits};

/// A resolved rate limit (config merged with the provider's defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
    pub per_recipient: Option<PerRecipient>,
    pub max_wait: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PerRecipient {
    pub every: Duration,
    pub burst: u32,
}

const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(30);

/// Meta's pair rate limit (providers.md B1), see the module docs.
const WHATSAPP_PAIR: PerRecipient = PerRecipient {
    every: Duration::from_secs(6),
    burst: 45,
};

impl RateLimit {
    /// The documented default of a provider (module docs), `None` for
    /// providers without one.
    pub fn default_for(provider: &str) -> Option<RateLimit> {
        let (per_second, burst, per_recipient) = match provider {
            "meta" | "dialog360" => (80.0, 80, Some(WHATSAPP_PAIR)),
            "wazzup" => (80.0, 100, None),
            "resend" => (2.0, 1, None),
            "smsru" | "exolve" => (20.0, 20, None),
            // Exolve publishes no WhatsApp limits: its SMS budget, and
            // WhatsApp's own pair rule (the Business Platform's, whoever sells it).
            "exolve_whatsapp" => (20.0, 20, Some(WHATSAPP_PAIR)),
            _ => return None,
        };
        Some(RateLimit {
            per_second,
            burst,
            per_recipient,
            max_wait: DEFAULT_MAX_WAIT,
        })
    }

    /// Reads a provider's `rate_limit` value (absent, `false`, `true` or a
    /// table, see the module docs). `Ok(None)`: no limit.
    pub fn from_config(
        provider: &str,
        v: Option<&serde_json::Value>,
    ) -> Result<Option<RateLimit>, String> {
        let default = RateLimit::default_for(provider);
        let c: Config = match v {
            None | Some(serde_json::Value::Bool(true)) => return Ok(default),
            Some(serde_json::Value::Bool(false)) => return Ok(None),
            Some(v @ serde_json::Value::Object(_)) => {
                serde_json::from_value(v.clone()).map_err(|e| format!("rate_limit: {e}"))?
            }
            Some(_) => return Err("rate_limit: expected a table or false".into()),
        };
        let (per_second, burst) = match (c.per_second, c.burst, &default) {
            (Some(r), Some(b), _) => (r, b),
            (Some(r), None, _) => (r, r.ceil().clamp(1.0, u32::MAX as f64) as u32),
            (None, b, Some(d)) => (d.per_second, b.unwrap_or(d.burst)),
            (None, _, None) => return Err("rate_limit: per_second is required".into()),
        };
        if !per_second.is_finite() || per_second <= 0.0 || per_second > 1_000_000.0 {
            return Err("rate_limit: per_second must be above 0 and at most 1000000".into());
        }
        if burst == 0 {
            return Err("rate_limit: burst must be at least 1".into());
        }
        let default_pair = default.as_ref().and_then(|d| d.per_recipient.clone());
        let every = match c.per_recipient_every_secs {
            Some(s) if !s.is_finite() || !(0.0..=86_400.0).contains(&s) => {
                return Err("rate_limit: per_recipient_every_secs must be 0..=86400".into());
            }
            Some(s) => Duration::from_secs_f64(s),
            None => default_pair
                .as_ref()
                .map(|p| p.every)
                .unwrap_or(Duration::ZERO),
        };
        let pair_burst = c
            .per_recipient_burst
            .or(default_pair.as_ref().map(|p| p.burst))
            .unwrap_or(1);
        if pair_burst == 0 {
            return Err("rate_limit: per_recipient_burst must be at least 1".into());
        }
        let per_recipient = (!every.is_zero()).then_some(PerRecipient {
            every,
            burst: pair_burst,
        });
        let max_wait = c
            .max_wait_ms
            .map(Duration::from_millis)
            .or(default.map(|d| d.max_wait))
            .unwrap_or(DEFAULT_MAX_WAIT);
        Ok(Some(RateLimit {
            per_second,
            burst,
            per_recipient,
            max_wait,
        }))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    per_second: Option<f64>,
    burst: Option<u32>,
    per_recipient_every_secs: Option<f64>,
    per_recipient_burst: Option<u32>,
    max_wait_ms: Option<u64>,
}

/// Takes the `rate_limit` key out of a provider section (the provider's own
/// config struct rejects unknown keys) and resolves it.
pub(crate) fn split_section(
    provider: &str,
    section: &serde_json::Value,
) -> Result<(serde_json::Value, Option<RateLimit>), String> {
    let mut section = section.clone();
    let raw = section.as_object_mut().and_then(|o| o.remove("rate_limit"));
    let limit = RateLimit::from_config(provider, raw.as_ref())?;
    Ok((section, limit))
}

/// A provider behind its rate limits, shared by every dispatcher of the
/// fleet ([`SharedLimits`]): the recipient's bucket and the account's are
/// taken together, so a throttled recipient does not use up account
/// capacity.
pub struct Limited<P> {
    inner: P,
    limits: SharedLimits,
    account: String,
    bucket: Bucket,
    per_recipient: Option<Bucket>,
    max_wait: Duration,
}

impl<P: Provider> Limited<P> {
    /// `account` names the provider account in the shared buckets
    /// ([`crate::shared_limit::account`]).
    pub fn new(inner: P, limit: &RateLimit, limits: SharedLimits, account: String) -> Limited<P> {
        Limited {
            inner,
            limits,
            account,
            bucket: Bucket::per_second(limit.per_second, limit.burst),
            per_recipient: limit
                .per_recipient
                .as_ref()
                .map(|p| Bucket::every(p.every, p.burst)),
            max_wait: limit.max_wait,
        }
    }

    async fn send_limited(&self, m: &Message) -> Outcome {
        let mut held = Held {
            hold: m.hold.as_deref(),
            lifted: false,
        };
        let recipient = self.per_recipient.map(|b| (recipient_key(&m.to), b));
        let deadline = tokio::time::Instant::now() + self.max_wait;
        loop {
            let taken = self
                .limits
                .take(
                    &self.account,
                    self.bucket,
                    recipient.as_ref().map(|(r, b)| (r.as_str(), *b)),
                )
                .await;
            let wait = match taken {
                Ok(None) => break,
                Ok(Some(wait)) => wait,
                Err(e) => {
                    return Outcome::transient(format!(
                        "rate limit of {} not taken: {e}",
                        self.inner.name()
                    ));
                }
            };
            if tokio::time::Instant::now() + wait > deadline {
                return Outcome::Throttled {
                    reason: format!(
                        "rate limit of {} (shared by the fleet): next send in {} ms",
                        self.inner.name(),
                        wait.as_millis()
                    ),
                    wait,
                };
            }
            held.before_wait().await;
            // A zero wait can come from rounding; do not spin.
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
        if let Err(why) = held.resume().await {
            return Outcome::transient(format!("not sent: {why}"));
        }
        let outcome = self.inner.send(m).await;
        // The provider asked for a pause (429, Retry-After): the whole
        // fleet keeps it, not only this send.
        if let Outcome::Transient {
            retry_after: Some(wait),
            ..
        } = &outcome
            && let Err(e) = self.limits.pause(&self.account, *wait).await
        {
            tracing::warn!(error = %e, "the provider's pause could not be shared with the fleet");
        }
        outcome
    }
}

/// The worker's `sending` mark across this send's waits: lifted before the
/// first one, resumed after the last (see [`Hold`]).
struct Held<'a> {
    hold: Option<&'a dyn Hold>,
    lifted: bool,
}

impl Held<'_> {
    async fn before_wait(&mut self) {
        if !self.lifted {
            if let Some(h) = self.hold {
                h.lift().await;
            }
            self.lifted = true;
        }
    }

    async fn resume(&self) -> Result<(), String> {
        match self.hold {
            Some(h) if self.lifted => h.resume().await,
            _ => Ok(()),
        }
    }
}

impl<P: Provider> Provider for Limited<P> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn channel(&self) -> Channel {
        self.inner.channel()
    }

    fn send<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Outcome> {
        self.send_limited(message).boxed()
    }

    fn resend_window(&self) -> Option<Duration> {
        self.inner.resend_window()
    }

    fn echoes_delivery_key(&self) -> bool {
        self.inner.echoes_delivery_key()
    }

    fn balance(&self) -> Option<BoxFuture<'_, Result<super::Balance, String>>> {
        self.inner.balance()
    }

    fn balance_account(&self) -> Option<String> {
        self.inner.balance_account()
    }

    fn account(&self) -> String {
        self.inner.account()
    }

    fn probe(&self) -> Option<BoxFuture<'_, Result<(), String>>> {
        self.inner.probe()
    }

    fn answers_to(&self, account: &str) -> bool {
        self.inner.answers_to(account)
    }

    fn probe_sees_notices(&self) -> bool {
        self.inner.probe_sees_notices()
    }
}

fn recipient_key(to: &Address) -> String {
    match to {
        Address::Phone(p) => p.e164().to_string(),
        Address::Email(e) => e.trim().to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    /// Shared buckets in the test Redis, under a prefix of their own; the
    /// account is unique per test.
    fn shared() -> (SharedLimits, String) {
        let prefix = format!("test-limit-{}", uuid::Uuid::now_v7().simple());
        let settings = shared::config::RedisSettings {
            prefix,
            ..Default::default()
        };
        let store = crate::delivery_state::Store::new(
            &settings,
            Duration::from_secs(120),
            Duration::from_secs(60),
        )
        .expect("store");
        (
            SharedLimits::new(store),
            format!("counting:{}", uuid::Uuid::now_v7().simple()),
        )
    }

    fn limited(n: Arc<AtomicUsize>, l: &RateLimit) -> Limited<Counting> {
        let (limits, account) = shared();
        Limited::new(Counting(n), l, limits, account)
    }

    /// Counts sends; what is under test is the wrapper around it.
    struct Counting(Arc<AtomicUsize>);

    impl Provider for Counting {
        fn name(&self) -> &'static str {
            "counting"
        }
        fn channel(&self) -> Channel {
            Channel::Whatsapp
        }
        fn send<'a>(&'a self, _: &'a Message) -> BoxFuture<'a, Outcome> {
            self.0.fetch_add(1, Ordering::SeqCst);
            async {
                Outcome::Sent {
                    message_id: "x".into(),
                }
            }
            .boxed()
        }
    }

    fn message(phone: &str) -> Message {
        Message {
            channel: Channel::Whatsapp,
            to: Address::Phone(shared::phone::normalise(phone).unwrap()),
            body: super::super::Body::Text("hi".into()),
            idempotency_key: "k".into(),
            hold: None,
        }
    }

    fn limit(v: serde_json::Value) -> RateLimit {
        RateLimit::from_config("test", Some(&v)).unwrap().unwrap()
    }

    #[test]
    fn defaults_follow_the_documented_table() {
        let meta = RateLimit::from_config("meta", None).unwrap().unwrap();
        assert_eq!((meta.per_second, meta.burst), (80.0, 80));
        assert_eq!(
            meta.per_recipient,
            Some(PerRecipient {
                every: Duration::from_secs(6),
                burst: 45
            })
        );
        assert_eq!(
            RateLimit::default_for("dialog360").unwrap().per_recipient,
            meta.per_recipient
        );
        let wazzup = RateLimit::default_for("wazzup").unwrap();
        // 500 per 5 s at most.
        assert!(wazzup.burst as f64 + wazzup.per_second * 5.0 <= 500.0);
        assert_eq!(wazzup.per_recipient, None);
        let resend = RateLimit::default_for("resend").unwrap();
        assert_eq!((resend.per_second, resend.burst), (2.0, 1));
        assert!(RateLimit::default_for("smsru").is_some());
        assert!(RateLimit::default_for("exolve").is_some());
        assert_eq!(RateLimit::default_for("nobody"), None);
        assert_eq!(meta.max_wait, Duration::from_secs(30));
    }

    #[test]
    fn config_shapes() {
        assert_eq!(
            RateLimit::from_config("meta", Some(&json!(false))).unwrap(),
            None
        );
        assert_eq!(
            RateLimit::from_config("meta", Some(&json!(true))).unwrap(),
            RateLimit::default_for("meta")
        );
        // per_second alone: one second's worth of burst; the pair limit stays.
        let l = RateLimit::from_config("meta", Some(&json!({"per_second": 5})))
            .unwrap()
            .unwrap();
        assert_eq!((l.per_second, l.burst), (5.0, 5));
        assert!(l.per_recipient.is_some());
        let l = RateLimit::from_config("meta", Some(&json!({"per_recipient_every_secs": 0})))
            .unwrap()
            .unwrap();
        assert_eq!(l.per_recipient, None);
        assert_eq!(l.per_second, 80.0);
        let l = RateLimit::from_config("wazzup", Some(&json!({"burst": 7, "max_wait_ms": 100})))
            .unwrap()
            .unwrap();
        assert_eq!((l.per_second, l.burst), (80.0, 7));
        assert_eq!(l.max_wait, Duration::from_millis(100));
        assert_eq!(
            RateLimit::from_config("resend", Some(&json!({"per_second": 0.5})))
                .unwrap()
                .unwrap()
                .burst,
            1
        );
        for bad in [
            json!({"per_second": 0}),
            json!({"per_second": -1}),
            json!({"burst": 0}),
            json!({"per_recipient_every_secs": -1}),
            json!({"per_recipient_burst": 0}),
            json!({"per_sec": 5}),
            json!(5),
        ] {
            assert!(
                RateLimit::from_config("meta", Some(&bad)).is_err(),
                "{bad} accepted"
            );
        }
        assert!(
            RateLimit::from_config("nobody", Some(&json!({"burst": 2}))).is_err(),
            "no default to take per_second from"
        );
    }

    #[test]
    fn split_section_removes_only_rate_limit() {
        let (s, l) = split_section(
            "resend",
            &json!({"api_key": "re_x", "rate_limit": {"per_second": 3}}),
        )
        .unwrap();
        assert_eq!(s, json!({"api_key": "re_x"}));
        assert_eq!(l.unwrap().per_second, 3.0);
        let (s, l) = split_section("resend", &json!({"api_key": "re_x"})).unwrap();
        assert_eq!(s, json!({"api_key": "re_x"}));
        assert_eq!(l, RateLimit::default_for("resend"));
    }

    /// Two dispatchers (two wrappers) on one account share its buckets: 20
    /// sends at 20/s with a burst of 1 take ~1 s whoever sends them, and a
    /// pause one of them got from the provider holds the other.
    #[tokio::test]
    async fn two_dispatchers_share_an_account_and_its_pause() {
        let n = Arc::new(AtomicUsize::new(0));
        let (limits, account) = shared();
        let l = limit(json!({"per_second": 20, "burst": 1, "per_recipient_every_secs": 0}));
        let a = Limited::new(Counting(n.clone()), &l, limits.clone(), account.clone());
        let b = Limited::new(Counting(n.clone()), &l, limits.clone(), account.clone());
        let started = Instant::now();
        for i in 0..10 {
            let (mx, my) = (
                message(&format!("+791612345{i:02}")),
                message(&format!("+791612346{i:02}")),
            );
            let (x, y) = tokio::join!(a.send(&mx), b.send(&my));
            assert_eq!((x.class(), y.class()), ("sent", "sent"));
        }
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(900),
            "19 intervals of 50 ms: {took:?}"
        );
        assert_eq!(n.load(Ordering::SeqCst), 20);

        limits
            .pause(&account, Duration::from_millis(400))
            .await
            .expect("pause");
        let started = Instant::now();
        assert_eq!(b.send(&message("+79161234599")).await.class(), "sent");
        assert!(
            started.elapsed() >= Duration::from_millis(350),
            "the pause held the other wrapper: {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn account_limit_spaces_sends() {
        let n = Arc::new(AtomicUsize::new(0));
        let p = limited(n.clone(), &limit(json!({"per_second": 20, "burst": 2})));
        let started = Instant::now();
        for i in 0..6 {
            let o = p.send(&message(&format!("+7916123456{i}"))).await;
            assert_eq!(o.class(), "sent");
        }
        // 2 at once, then 4 × 50 ms.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(180), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        assert_eq!(n.load(Ordering::SeqCst), 6);
    }

    #[tokio::test]
    async fn per_recipient_limit_holds_one_number_not_the_others() {
        let n = Arc::new(AtomicUsize::new(0));
        let p = limited(
            n.clone(),
            &limit(
                json!({"per_second": 1000, "per_recipient_every_secs": 0.4, "per_recipient_burst": 1}),
            ),
        );
        let started = Instant::now();
        p.send(&message("+79161234567")).await;
        p.send(&message("+79161234568")).await;
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "another recipient does not wait"
        );
        p.send(&message("+79161234567")).await;
        assert!(
            started.elapsed() >= Duration::from_millis(350),
            "the same recipient waits ({:?})",
            started.elapsed()
        );
        assert_eq!(n.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_wait_past_max_wait_is_throttled_and_sends_nothing() {
        let n = Arc::new(AtomicUsize::new(0));
        let p = limited(
            n.clone(),
            &limit(
                json!({"per_second": 1000, "per_recipient_every_secs": 5, "per_recipient_burst": 1, "max_wait_ms": 200}),
            ),
        );
        assert_eq!(p.send(&message("+79161234567")).await.class(), "sent");
        let started = Instant::now();
        match p.send(&message("+79161234567")).await {
            Outcome::Throttled { wait: ra, reason } => {
                assert!(ra > Duration::from_secs(4), "{ra:?}");
                assert!(reason.contains("rate limit"), "{reason}");
                assert!(!reason.contains("9161234567"), "{reason}");
            }
            o => panic!("{o:?}"),
        }
        assert!(started.elapsed() < Duration::from_millis(150), "no waiting");
        assert_eq!(n.load(Ordering::SeqCst), 1, "the second was not sent");
        // The account budget was not used by the refused send.
        assert_eq!(p.send(&message("+79161234568")).await.class(), "sent");
    }

    #[tokio::test]
    async fn e_mail_recipients_are_keyed_case_insensitively() {
        let n = Arc::new(AtomicUsize::new(0));
        let p = limited(
            n.clone(),
            &limit(
                json!({"per_second": 1000, "per_recipient_every_secs": 5, "per_recipient_burst": 1, "max_wait_ms": 0}),
            ),
        );
        let mut m = message("+79161234567");
        m.to = Address::Email("Ivan@Mail.ru".into());
        assert_eq!(p.send(&m).await.class(), "sent");
        m.to = Address::Email("ivan@mail.ru".into());
        assert_eq!(p.send(&m).await.class(), "throttled");
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }
}
