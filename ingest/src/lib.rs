//! Vestnik ingest: authenticates webhooks, parses each source's real format,
//! filters to the events that matter and makes them durable in RabbitMQ
//! (or the local spool) before answering. Also takes providers' delivery-
//! status callbacks (`callbacks`) and publishes them to the statuses queue.

pub mod accept;
pub mod adopt;
pub mod app;
pub mod auth;
pub mod callbacks;
pub mod durable;
pub mod metrics;
pub mod openapi;
pub mod params;
pub mod problem;
pub mod publish;
pub mod routes;
pub mod sources;
pub mod spool;
