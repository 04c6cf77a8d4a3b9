#![no_main]
//! Meta Cloud API status callbacks; 360dialog sends the same body.

use ingest::callbacks::Provider;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vestnik_fuzz::callback(Provider::Meta, data);
    vestnik_fuzz::callback(Provider::Dialog360, data);
});
