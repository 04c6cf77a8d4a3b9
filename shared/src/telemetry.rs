//! Logging set-up shared by both services: JSON lines (or pretty for a
//! terminal), filter from `RUST_LOG` or the config, and panics logged
//! through it, masked.

use std::any::Any;

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
    log_panics();
}

/// Replaces the default panic hook, which prints the panic message to
/// stderr as it is: a message built from the input (an index, a value) can
/// carry a phone or an e-mail. A panic becomes one error line in the log,
/// masked, with where it happened. Whoever caught it (the dispatcher's
/// consumer) still decides what happens to the work.
pub fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(panic = %crate::mask::text(&panic_text(info.payload())), at = %at, "panicked");
    }));
}

/// The text of a panic's payload (`panic!` with a literal or a format), as
/// it is: mask it before it goes anywhere.
pub fn panic_text(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic with a non-text payload".into())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::ErrorKind::Other)?
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_panic_is_one_masked_log_line() {
        let out = Buffer::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || writer.clone())
            .finish();
        log_panics();
        let caught = tracing::subscriber::with_default(subscriber, || {
            std::panic::catch_unwind(|| panic!("no route for +79161234567 <ivan@mail.ru>"))
        });
        let _ = std::panic::take_hook();
        assert!(caught.is_err());
        let logged = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(logged.contains("\"level\":\"ERROR\""), "{logged}");
        assert!(logged.contains("no route for"), "{logged}");
        assert!(logged.contains("telemetry.rs:"), "{logged}");
        assert!(!logged.contains("9161234567"), "{logged}");
        assert!(!logged.contains("ivan@mail.ru"), "{logged}");
    }

    #[test]
    fn panic_text_reads_literals_and_formats() {
        assert_eq!(panic_text(&"boom"), "boom");
        assert_eq!(panic_text(&String::from("boom 2")), "boom 2");
        assert_eq!(panic_text(&42u8), "panic with a non-text payload");
    }
}
