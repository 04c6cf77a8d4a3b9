#![no_main]
//! Phone normalisation: never a panic; when Ok, E.164 and idempotent.
//! NUL bytes split the input into `first_valid` candidates.

use libfuzzer_sys::fuzz_target;
use shared::phone::{self, Phone};

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = phone::normalise(raw) {
        let e = p.e164();
        let digits = &e[1..];
        assert!(e.starts_with('+') && (8..=15).contains(&digits.len()));
        assert!(digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0'));
        assert_eq!(p.digits(), digits);
        assert_eq!(phone::normalise(e).as_ref(), Ok(&p));
        assert_eq!(Phone::parse_e164(e).as_ref(), Ok(&p));
    }
    let _ = Phone::parse_e164(raw).map(|p| p.digits().len());
    let _ = phone::first_valid(raw.split('\0'));
});
