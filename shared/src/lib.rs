//! What both Vestnik services agree on: the normalised event, configuration,
//! tenants and their keys, the RabbitMQ topology and its nodes, phone handling and PII masking.

pub mod allow;
pub mod amqp;
pub mod config;
pub mod event;
pub mod mask;
pub mod phone;
pub mod reload;
pub mod seal;
pub mod status;
pub mod telemetry;
pub mod tenant;
pub mod topology;

pub use event::{Event, EventKind, SourceId};
pub use tenant::{Tenant, Tenants};
