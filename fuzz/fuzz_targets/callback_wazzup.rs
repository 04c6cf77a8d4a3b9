#![no_main]
//! Wazzup24 status callbacks.

use ingest::callbacks::Provider;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vestnik_fuzz::callback(Provider::Wazzup, data);
});
