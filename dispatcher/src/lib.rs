//! Vestnik dispatcher: consumes normalised events and turns each into exactly
//! one message per channel, with quick retries, the one second attempt
//! 9 min 30 s after a first failure, and a dead-letter queue for the rest.

pub mod admin;
pub mod app;
pub mod balance;
pub mod console;
pub mod consumer;
pub mod delivery_state;
pub mod dlq;
pub mod frequency_cap;
pub mod health;
pub mod hold;
pub mod journal;
pub mod lookup;
pub mod metrics;
pub mod openapi;
pub mod opt_out;
pub mod outbox;
pub mod pause;
pub mod probes;
pub mod providers;
pub mod redis_conn;
pub mod schedule;
pub mod shared_limit;
pub mod stats;
pub mod templates;
pub mod worker;
