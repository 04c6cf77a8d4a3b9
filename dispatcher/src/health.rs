//! Readiness: broker connected and Redis reachable. A dispatcher that
//! cannot check idempotency is not ready (it holds its events, sends nothing).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Clone, Default)]
pub struct Health {
    broker: Arc<AtomicBool>,
    redis: Arc<AtomicBool>,
}

impl Health {
    pub fn new() -> Health {
        Health {
            broker: Arc::new(AtomicBool::new(false)),
            redis: Arc::new(AtomicBool::new(true)),
        }
    }

    pub fn set_broker(&self, up: bool) {
        self.broker.store(up, Ordering::Relaxed);
    }

    /// Returns true when this call changed the state (for logging once).
    pub fn set_redis(&self, up: bool) -> bool {
        self.redis.swap(up, Ordering::Relaxed) != up
    }

    pub fn broker_up(&self) -> bool {
        self.broker.load(Ordering::Relaxed)
    }

    pub fn redis_up(&self) -> bool {
        self.redis.load(Ordering::Relaxed)
    }

    pub fn ready(&self) -> bool {
        self.broker_up() && self.redis_up()
    }
}
