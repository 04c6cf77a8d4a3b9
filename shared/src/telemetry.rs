//! Logging set-up shared by both services: JSON lines (or pretty for a
//! terminal), filter from `RUST_LOG` or the config.

use tracing_subscriber::EnvFilter;

use crate::config::LogSettings;

pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    let result = if settings.format == "pretty" {
        builder.try_init()
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    };
    if let Err(e) = result {
        eprintln!("logging was already initialised: {e}");
    }
}
