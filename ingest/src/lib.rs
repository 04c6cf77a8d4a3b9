//! Vestnik ingest: authenticates webhooks, parses each source's real format,
//! filters to the events that matter and makes them durable in RabbitMQ
//! (or the local spool) before answering.

pub mod sources;
