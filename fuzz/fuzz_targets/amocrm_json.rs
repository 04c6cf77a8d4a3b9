#![no_main]
//! The AmoCRM source on JSON bodies (seed 001's customers post JSON).

use ingest::sources::Body;
use libfuzzer_sys::fuzz_target;
use shared::SourceId;

fuzz_target!(|data: &[u8]| {
    vestnik_fuzz::source(SourceId::Amocrm, Body::Json(data));
});
