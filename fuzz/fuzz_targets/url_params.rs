#![no_main]
//! The webhook URL's query string (key, formatting options, Wazzup routing).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(query) = std::str::from_utf8(data) {
        let _ = ingest::params::parse(query);
    }
});
