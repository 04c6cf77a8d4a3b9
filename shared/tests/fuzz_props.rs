//! Property tests over outside data handled by `shared`: phone normalisation
//! (every webhook's phone field goes through it) and the decoders of what the
//! dispatcher reads off the queues (`Event`, `StatusUpdate`).
//!
//! This is the fuzz smoke of every `cargo test` (cargo-fuzz needs nightly
//! flags, see docs/RELIABILITY.md "Fuzzing"): default case counts are small;
//! `PROPTEST_CASES=100000 cargo test -p shared --test fuzz_props` runs long.

use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{Map, Value};
use shared::event::{FormatOptions, Params, Recipient, Route, SCHEMA_VERSION};
use shared::phone::{self, Phone, PhoneError};
use shared::status::StatusUpdate;
use shared::{Event, EventKind, SourceId};

/// `PROPTEST_CASES` when set, else `default`.
fn cases(default: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    Config {
        cases,
        ..Config::default()
    }
}

/// E.164: a plus, a non-zero first digit, 8 to 15 digits in all.
fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// Strings shaped like what people and POS systems type into a phone field:
/// digits with separators, prefixes, several numbers in one field, and
/// things that are almost a phone.
fn phone_like() -> impl Strategy<Value = String> {
    let prefix = prop_oneof![
        Just(""),
        Just("+"),
        Just("+7"),
        Just("8"),
        Just("7"),
        Just("00"),
        Just("+7 ("),
        Just("８"),
        Just("+-"),
    ];
    let sep = prop_oneof![
        Just(""),
        Just(" "),
        Just("-"),
        Just("("),
        Just(")"),
        Just("."),
        Just("\u{a0}"),
        Just("\u{2011}"),
        Just("\t"),
        Just("x"),
        Just("٣"),
    ];
    let group = "[0-9]{0,5}";
    let one = (prefix, prop::collection::vec((group, sep), 0..6)).prop_map(|(p, parts)| {
        let mut s = p.to_string();
        for (g, sep) in parts {
            s.push_str(&g);
            s.push_str(sep);
        }
        s
    });
    let list_sep = prop_oneof![
        Just(","),
        Just(";"),
        Just("/"),
        Just("\n"),
        Just("|"),
        Just(" , ")
    ];
    prop::collection::vec((one, list_sep), 1..4).prop_map(|parts| {
        parts
            .into_iter()
            .map(|(p, s)| format!("{p}{s}"))
            .collect::<String>()
    })
}

fn check_phone(raw: &str) -> Result<(), TestCaseError> {
    match phone::normalise(raw) {
        Ok(p) => {
            let e = p.e164().to_string();
            prop_assert!(is_e164(&e), "{raw:?} gave {e:?}, not E.164");
            prop_assert_eq!(p.digits(), &e[1..]);
            // Idempotent: the output normalises to itself, by both entries.
            prop_assert_eq!(phone::normalise(&e), Ok(p.clone()));
            prop_assert_eq!(Phone::parse_e164(&e), Ok(p.clone()));
            // Masked when printed.
            prop_assert!(!p.to_string().contains(&e[e.len() - 7..]));
        }
        Err(PhoneError::Empty) => prop_assert!(
            raw.split([',', ';', '/', '\n', '\r', '|'])
                .all(|c| c.trim().is_empty()),
            "{raw:?}: Empty although it has text"
        ),
        Err(_) => {}
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(500))]

    #[test]
    fn phone_normalise_never_panics_on_any_text(raw in any::<String>()) {
        check_phone(&raw)?;
    }

    #[test]
    fn phone_normalise_on_phone_like_input_gives_idempotent_e164(raw in phone_like()) {
        check_phone(&raw)?;
    }

    #[test]
    fn russian_mobiles_in_any_typed_form_normalise_to_the_same_number(
        rest in "9[0-9]{9}",
        prefix in prop_oneof![Just("+7"), Just("8"), Just("7"), Just(""), Just("007")],
        sep in prop_oneof![Just(""), Just(" "), Just("-"), Just("\u{a0}")],
    ) {
        let spaced: String = rest
            .chars()
            .enumerate()
            .flat_map(|(i, c)| {
                let s = if i == 3 || i == 6 || i == 8 { Some(sep) } else { None };
                s.into_iter().flat_map(str::chars).chain(std::iter::once(c))
            })
            .collect();
        let raw = format!("{prefix}{sep}{spaced}");
        // Not every 9xx range is allocated: when the metadata knows it as a
        // mobile, every typed form must give the same +7 number.
        if let Ok(p) = phone::normalise(&format!("+7{rest}")) {
            prop_assert_eq!(phone::normalise(&raw), Ok(p), "{:?}", raw);
        }
        check_phone(&raw)?;
    }

    #[test]
    fn first_valid_never_panics_and_picks_a_candidate(
        raws in prop::collection::vec(prop_oneof![any::<String>(), phone_like()], 0..5)
    ) {
        match phone::first_valid(raws.iter().map(String::as_str)) {
            Ok(p) => prop_assert!(
                raws.iter().any(|r| phone::normalise(r).as_ref() == Ok(&p)),
                "{:?} is none of the candidates' numbers", p.e164()
            ),
            Err(PhoneError::Empty) => prop_assert!(
                raws.iter().all(|r| phone::normalise(r) == Err(PhoneError::Empty))
            ),
            Err(_) => {}
        }
    }

    #[test]
    fn parse_e164_never_panics(raw in prop_oneof![any::<String>(), "\\+[0-9]{0,20}"]) {
        if let Ok(p) = Phone::parse_e164(&raw) {
            prop_assert!(is_e164(p.e164()));
            prop_assert_eq!(p.digits(), &p.e164()[1..]);
        }
    }
}

// ---------------------------------------------------------------------------
// Queue messages: Event and StatusUpdate decoders

fn sample_event() -> Value {
    let at = Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).single();
    let event = Event {
        schema: SCHEMA_VERSION,
        id: uuid::Uuid::nil(),
        tenant: "acme".into(),
        source: SourceId::Amocrm,
        kind: EventKind::DealWon,
        occurred_at: at.unwrap_or_default(),
        received_at: at.unwrap_or_default(),
        dedup_key: "acme:amocrm:1:142".into(),
        source_ref: Some("1".into()),
        location: Some("acme".into()),
        recipient: Recipient {
            phone: phone::normalise("+79161234567").ok(),
            email: Some("ivan@example.com".into()),
            name: Some("Иван".into()),
        },
        params: Params {
            order_number: Some("142".into()),
            amount: Some("1500".into()),
            ..Params::default()
        },
        format: Some(FormatOptions::default()),
        route: Some(Route::Wazzup {
            api_key: "k".into(),
            channel_id: "c".into(),
            chat_type: "whatsapp".into(),
        }),
        lookup: None,
    };
    serde_json::from_slice(&event.to_json()).unwrap_or(Value::Null)
}

fn sample_status() -> Value {
    serde_json::json!({
        "schema": 1, "provider": "meta", "message_id": "wamid.HBgL", "state": "failed",
        "at": "2026-11-24T12:00:00Z", "received_at": "2026-11-24T12:00:01Z",
        "error_code": "131026", "error": "Message undeliverable"
    })
}

/// Leaf values that break parsers: types they do not expect, extreme
/// numbers, text that is almost a date, a phone, an id, or an attack.
fn hostile_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop_oneof![
            Just(""),
            Just(" "),
            Just("+"),
            Just("+79161234567"),
            Just("+7 495 123-45-67"),
            Just("٣٣٣٣٣٣٣٣٣٣"),
            Just("2026-11-24T16:00:00+03:00"),
            Just("2026-02-30T25:61:61Z"),
            Just("+262143-12-31T23:59:59Z"),
            Just("-262144-01-01T00:00:00Z"),
            Just("9999999999999999999999999999"),
            Just("1e309"),
            Just("NaN"),
            Just("Robert'); DROP TABLE events;--"),
            Just("<script>alert(1)</script>"),
            Just("\u{0}\u{feff}\u{202e}"),
            Just("sent"),
            Just("failed"),
            Just("wazzup"),
            Just("amocrm"),
        ]
        .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ]
}

fn hostile_value() -> impl Strategy<Value = Value> {
    hostile_leaf().prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(("[a-z_]{0,12}", inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    Replace(usize, Value),
    Remove(usize),
    /// Wrap the value in `depth` arrays.
    Nest(usize, usize),
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    let one = prop_oneof![
        3 => (any::<usize>(), hostile_value()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        1 => any::<usize>().prop_map(Mutation::Remove),
        1 => (any::<usize>(), 1usize..200).prop_map(|(i, d)| Mutation::Nest(i, d)),
    ];
    prop::collection::vec(one, 1..5)
}

/// Every path of a JSON value, as JSON pointers, the root included.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                pointers(c, p, out);
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                pointers(c, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

/// Applies the mutations to a copy of `base`.
fn mutate(base: &Value, ms: &[Mutation]) -> Value {
    let mut v = base.clone();
    for m in ms {
        let mut ps = Vec::new();
        pointers(&v, String::new(), &mut ps);
        let pick = |i: usize| ps[i % ps.len()].clone();
        match m {
            Mutation::Replace(i, new) => {
                if let Some(slot) = v.pointer_mut(&pick(*i)) {
                    *slot = new.clone();
                }
            }
            Mutation::Remove(i) => {
                let p = pick(*i);
                if let Some((parent, key)) = p.rsplit_once('/')
                    && let Some(Value::Object(m)) = v.pointer_mut(parent)
                {
                    m.remove(&key.replace("~1", "/").replace("~0", "~"));
                }
            }
            Mutation::Nest(i, depth) => {
                if let Some(slot) = v.pointer_mut(&pick(*i)) {
                    let mut inner = slot.take();
                    for _ in 0..*depth {
                        inner = Value::Array(vec![inner]);
                    }
                    *slot = inner;
                }
            }
        }
    }
    v
}

/// What a test does with a decoded event: everything a consumer reads.
fn use_event(e: &Event) -> Result<(), TestCaseError> {
    if let Some(p) = &e.recipient.phone {
        let _ = (p.e164(), p.digits(), p.to_string());
    }
    let _ = format!("{e:?}");
    let back = Event::from_json(&e.to_json());
    prop_assert!(back.is_ok(), "an event that decoded does not round-trip");
    Ok(())
}

fn use_status(s: &StatusUpdate) -> Result<(), TestCaseError> {
    let _ = (s.state.rank(), s.state.to_string(), format!("{s:?}"));
    let back = StatusUpdate::from_json(&s.to_json()).ok();
    prop_assert_eq!(back.as_ref(), Some(s));
    Ok(())
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn event_from_json_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(e) = Event::from_json(&bytes) {
            use_event(&e)?;
        }
    }

    #[test]
    fn event_from_json_on_mutated_events(ms in mutations(), cut in any::<prop::sample::Index>(), truncate in any::<bool>()) {
        let v = mutate(&sample_event(), &ms);
        let mut bytes = serde_json::to_vec(&v).unwrap_or_default();
        if truncate && !bytes.is_empty() {
            bytes.truncate(cut.index(bytes.len()));
        }
        if let Ok(e) = Event::from_json(&bytes) {
            use_event(&e)?;
        }
    }

    /// Regression (found writing the queue fuzz target): any string as the
    /// recipient's phone either is refused or reads back as E.164.
    #[test]
    fn event_phone_from_json_is_e164_or_refused(raw in prop_oneof![any::<String>(), "\\+?[0-9]{0,17}"]) {
        let mut v = sample_event();
        v["recipient"]["phone"] = Value::from(raw);
        if let Ok(e) = Event::from_json(&serde_json::to_vec(&v).unwrap_or_default()) {
            let p = e.recipient.phone.as_ref();
            prop_assert!(p.is_some_and(|p| is_e164(p.e164())));
            use_event(&e)?;
        }
    }

    #[test]
    fn status_from_json_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(s) = StatusUpdate::from_json(&bytes) {
            use_status(&s)?;
        }
    }

    #[test]
    fn status_from_json_on_mutated_statuses(ms in mutations()) {
        let bytes = serde_json::to_vec(&mutate(&sample_status(), &ms)).unwrap_or_default();
        if let Ok(s) = StatusUpdate::from_json(&bytes) {
            use_status(&s)?;
        }
    }
}

/// cargo-fuzz `queue_messages` crash (6.9 million inputs in): this event
/// decoded with `Phone("")` and `Phone::digits()` panicked. Now malformed.
#[test]
fn fuzz_crash_event_with_empty_phone_is_malformed() {
    let crash = br#"{"schema":1,"id":"019ab5d2-0000-7000-8000-000000000000","tenant":"acme","source":"amocrm","kind":"deal_won","occurred_at":"2026-11-24T12:00:00Z","received_at":"2026-11-24T12:00:00Z","dedup_key":"acme:ae","recipient":{"phone":""}}"#;
    assert!(Event::from_json(crash).is_err());
}

/// Deep nesting is refused by serde_json's recursion limit, not a stack overflow.
#[test]
fn deeply_nested_event_is_an_error_not_a_stack_overflow() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(Event::from_json(deep.as_bytes()).is_err());
    let deep = format!(r#"{{"schema":1,"params":{}}}"#, "{\"a\":".repeat(50_000));
    assert!(Event::from_json(deep.as_bytes()).is_err());
    assert!(StatusUpdate::from_json(deep.as_bytes()).is_err());
}
