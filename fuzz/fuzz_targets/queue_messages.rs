#![no_main]
//! What the dispatcher decodes off its queues (events, status updates),
//! and what it then reads of them.

use libfuzzer_sys::fuzz_target;
use shared::Event;
use shared::status::StatusUpdate;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = Event::from_json(data) {
        if let Some(p) = &e.recipient.phone {
            let _ = (p.e164(), p.digits(), p.to_string());
        }
        let _ = format!("{e:?}");
        assert!(Event::from_json(&e.to_json()).is_ok(), "event round-trips");
    }
    if let Ok(s) = StatusUpdate::from_json(data) {
        let _ = format!("{s:?}");
        assert_eq!(StatusUpdate::from_json(&s.to_json()).ok(), Some(s));
    }
});
