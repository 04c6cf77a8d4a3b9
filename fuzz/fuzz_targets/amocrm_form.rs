#![no_main]
//! The AmoCRM form decoder (bracketed `leads[status][0][id]=...` keys,
//! percent-encoding, depth limit) and what the source makes of the result.

use ingest::sources::Body;
use libfuzzer_sys::fuzz_target;
use shared::SourceId;

fuzz_target!(|data: &[u8]| {
    vestnik_fuzz::source(SourceId::Amocrm, Body::Form(data));
});
