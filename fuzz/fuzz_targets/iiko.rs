#![no_main]
//! The iiko source parser on any bytes, as JSON (what the route hands it).

use ingest::sources::Body;
use libfuzzer_sys::fuzz_target;
use shared::SourceId;

fuzz_target!(|data: &[u8]| {
    vestnik_fuzz::source(SourceId::Iiko, Body::Json(data));
});
