//! Property tests over every parser of outside data in ingest: the five
//! sources (JSON and AmoCRM's bracketed form encoding), the providers'
//! callback bodies and the webhook URL's parameters. Inputs are arbitrary
//! bytes and structure-aware mutations of the real samples in
//! shared/fixtures; every parser must answer Ok or Err, never panic, and
//! whatever it accepts must become an event the dispatcher can read back.
//!
//! This is the fuzz smoke of every `cargo test` (cargo-fuzz needs nightly
//! flags, see docs/RELIABILITY.md "Fuzzing"): default case counts are small;
//! `PROPTEST_CASES=20000 cargo test -p ingest --test fuzz_parsers` runs long.

use chrono::Utc;
use ingest::accept::{self, Context};
use ingest::callbacks::{self, Provider};
use ingest::params;
use ingest::sources::{Body, Item, ParseError, Registry};
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{Map, Value};
use shared::tenant::SourceSettings;
use shared::{Event, SourceId, Tenant};

/// A phone and an e-mail planted in inputs: no error message may echo them.
const CANARY_PHONE: &str = "+79161234567";
const CANARY_EMAIL: &str = "canary.leak@example.com";

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

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

fn json_fixture(name: &str) -> Value {
    serde_json::from_slice(&fixture(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

fn tenant() -> Tenant {
    let mut sources = SourceSettings::default();
    sources.amocrm.won_status_ids = vec![142, 47873533];
    sources.amocrm.phone_field_ids = vec![1119321];
    Tenant {
        id: "t".into(),
        sources,
    }
}

const ALL_SOURCES: [SourceId; 5] = [
    SourceId::Iiko,
    SourceId::Rkeeper,
    SourceId::Yclients,
    SourceId::Amocrm,
    SourceId::Booking,
];

/// Samples per source: the real fixtures plus the documented shapes that
/// have no fixture (booking's own format, iiko's seed-001 single object,
/// AmoCRM as JSON).
fn samples(source: SourceId) -> Vec<Value> {
    match source {
        SourceId::Iiko => vec![
            json_fixture("iiko_delivery_update_cooking_nonfinal_synthetic_spec.json"),
            json_fixture("iiko_delivery_update_creation_error_null_order_synthetic_spec.json"),
            json_fixture("iiko_stoplist_update_ignored_synthetic_spec.json"),
            serde_json::json!([{
                "eventType": "DeliveryOrderUpdate", "eventTime": "2024-01-15 14:30:00.000",
                "organizationId": "org", "correlationId": "c",
                "eventInfo": {"id": "order-uuid", "creationStatus": "Success",
                  "order": {"number": 142, "status": "Delivered", "sum": 1530.5,
                    "phone": "+79161234567", "completeBefore": "2024-01-15 15:00:00.000",
                    "customer": {"phone": "89161234567", "name": "Иван"}}}
            }]),
        ],
        SourceId::Rkeeper => vec![json_fixture(
            "rkeeper_ws_event_order_status_changed_docs.json",
        )],
        SourceId::Yclients => vec![json_fixture(
            "yclients_record_update_real_capture_php_comment.json",
        )],
        SourceId::Amocrm => vec![serde_json::json!({
            "leads": {"status": [{"id": 12345, "status_id": 142, "old_status_id": 1,
              "pipeline_id": 5, "price": "1500", "name": "Сделка",
              "main_contact": {"id": 7, "name": "Иван", "phone": "+79161234567"},
              "custom_fields": [{"id": 1119321, "name": "Телефон", "code": "PHONE",
                "values": [{"value": "+79161234567", "enum": "WORK"}]}]}]},
            "contacts": {"update": [{"id": 7, "name": "Иван", "type": "contact",
              "custom_fields_values": [{"field_code": "EMAIL", "values": [{"value": "ivan@example.com"}]}]}]},
            "account": {"id": 29013640, "subdomain": "acme"}
        })],
        SourceId::Booking => vec![serde_json::json!({
            "event": "UpdateCaseTime", "event_id": "evt-42",
            "occurred_at": "2026-11-20T09:15:00+03:00",
            "case": {"id": "c-1001", "number": "1001", "type": "booking", "name": "Стрижка",
              "start": "2026-12-01T10:00:00+03:00", "end": "2026-12-01T11:00:00+03:00",
              "previous_start": "2026-11-30T12:00:00+03:00", "address": "ул. Ленина, 1",
              "resources": [{"name": "Мастер Анна"}], "service": {"name": "Салон"}},
            "client": {"name": "Иван", "phone": "+79161234567", "email": "ivan@example.com"},
            "payment": {"amount": "1500.00", "currency": "RUB", "id": "p-1"}
        })],
    }
}

fn callback_samples(provider: Provider) -> Vec<Value> {
    match provider {
        Provider::Wazzup => vec![
            json_fixture("wazzup_webhook_status_delivered_docs.json"),
            json_fixture("wazzup_webhook_inbound_sticker_docs.json"),
            json_fixture("wazzup_webhook_test_ping_docs.json"),
        ],
        _ => vec![
            json_fixture("meta_wa_status_delivered_pywa_fixture.json"),
            json_fixture("meta_wa_status_failed_pywa_fixture.json"),
            json_fixture("meta_wa_status_read_pywa_fixture.json"),
            json_fixture("meta_wa_inbound_text_message_pywa_fixture.json"),
            json_fixture("meta_wa_errors_webhook_syntax_docs.json"),
        ],
    }
}

// ---------------------------------------------------------------------------
// Generators

/// Leaf values that break parsers: types they do not expect, extreme
/// numbers, text that is almost a date, a status, a phone, or an attack.
fn hostile_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(vec![
            "",
            " ",
            CANARY_PHONE,
            CANARY_EMAIL,
            "8 (916) 123-45-67, +7 495 123-45-67",
            "٣٣٣٣٣٣٣٣٣٣",
            "2026-11-24T16:00:00+03:00",
            "2024-01-15 14:30:00.000",
            "2026-02-30T25:61:61Z",
            "+262143-12-31T23:59:59Z",
            "-262144-01-01T00:00:00Z",
            "9999999999999999999999999999",
            "-9223372036854775809",
            "1e309",
            "NaN",
            "Delivered",
            "Closed",
            "Выполнен",
            "DeliveryOrderUpdate",
            "CheckIn",
            "record",
            "delete",
            "sent",
            "delivered",
            "failed",
            "read",
            "Robert'); DROP TABLE events;--",
            "<script>alert(1)</script>",
            "\u{0}\u{feff}\u{202e}",
        ])
        .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ]
}

fn hostile_value() -> impl Strategy<Value = Value> {
    hostile_leaf().prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(("[a-zA-Z_]{0,12}", inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    Replace(usize, Value),
    Remove(usize),
    /// Wrap the value in `depth` arrays (deep nesting).
    Nest(usize, usize),
    /// Repeat an array's first element `n` times (long batches).
    Repeat(usize, usize),
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    let one = prop_oneof![
        6 => (any::<usize>(), hostile_value()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        2 => any::<usize>().prop_map(Mutation::Remove),
        1 => (any::<usize>(), 1usize..200).prop_map(|(i, d)| Mutation::Nest(i, d)),
        1 => (any::<usize>(), 0usize..300).prop_map(|(i, n)| Mutation::Repeat(i, n)),
    ];
    prop::collection::vec(one, 1..6)
}

/// Every path of a JSON value as a JSON pointer, the root included.
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
            Mutation::Repeat(i, n) => {
                if let Some(Value::Array(a)) = v.pointer_mut(&pick(*i))
                    && let Some(first) = a.first().cloned()
                {
                    a.extend(std::iter::repeat_n(first, *n));
                }
            }
        }
    }
    v
}

/// A JSON body from a mutated sample, sometimes truncated or with one byte
/// changed (bad UTF-8, broken syntax).
fn json_body(samples: Vec<Value>) -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(samples),
        mutations(),
        prop_oneof![
            4 => Just(None),
            1 => any::<prop::sample::Index>().prop_map(|i| Some((i, None))),
            1 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Some((i, Some(b)))),
        ],
    )
        .prop_map(|(base, ms, damage)| {
            let mut bytes = serde_json::to_vec(&mutate(&base, &ms)).unwrap_or_default();
            match damage {
                Some((i, None)) if !bytes.is_empty() => bytes.truncate(i.index(bytes.len())),
                Some((i, Some(b))) if !bytes.is_empty() => {
                    let at = i.index(bytes.len());
                    bytes[at] = b;
                }
                _ => {}
            }
            bytes
        })
}

/// One key segment of an AmoCRM form key.
fn amo_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "leads",
            "contacts",
            "account",
            "status",
            "add",
            "update",
            "delete",
            "note",
            "id",
            "status_id",
            "old_status_id",
            "name",
            "price",
            "main_contact",
            "phone",
            "email",
            "type",
            "custom_fields",
            "custom_fields_values",
            "values",
            "value",
            "code",
            "subdomain",
            "last_modified",
            "field_code",
        ])
        .prop_map(str::to_string),
        // Indices, including ones no Vec could hold.
        prop::sample::select(vec![
            "0",
            "1",
            "00",
            "-1",
            "",
            "99999999999",
            "18446744073709551616",
            "999999999999999999999999999999999999999",
        ])
        .prop_map(str::to_string),
        any::<u32>().prop_map(|n| n.to_string()),
        "[a-z]{1,6}",
    ]
}

fn amo_value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "142",
            "47873533",
            "12345",
            "%2B79161234567",
            "+79161234567",
            "canary.leak%40example.com",
            "PHONE",
            "contact",
            "acme",
            "%D0%98%D0%B2%D0%B0%D0%BD",
            "%FF%FE",
            "%C0%AF",
            "%",
            "%4",
            "%zz",
            "%00",
            "1456824464",
            "99999999999999999999",
            "Robert%27%29%3B+DROP+TABLE+leads%3B--",
            "%3Cscript%3Ealert(1)%3C%2Fscript%3E",
        ])
        .prop_map(str::to_string),
        "[ -~]{0,12}",
        any::<String>(),
    ]
}

/// A form body of bracketed keys: `leads[status][0][id]=142&...`, brackets
/// raw, `%5B`-encoded or `%5b`-encoded, nested 0 to 14 levels.
fn amo_form() -> impl Strategy<Value = Vec<u8>> {
    let bracket = prop::sample::select(vec![("[", "]"), ("%5B", "%5D"), ("%5b", "%5d")]);
    let pair = (
        amo_segment(),
        prop::collection::vec(amo_segment(), 0..14),
        bracket,
        amo_value(),
        any::<bool>(),
    )
        .prop_map(|(root, rest, (open, close), value, has_value)| {
            let mut key = root;
            for s in rest {
                key.push_str(open);
                key.push_str(&s);
                key.push_str(close);
            }
            if has_value {
                format!("{key}={value}")
            } else {
                key
            }
        });
    (
        prop::collection::vec(pair, 0..24),
        prop::sample::select(vec!["&", "&&", ";"]),
    )
        .prop_map(|(pairs, sep)| pairs.join(sep).into_bytes())
}

/// A mutated real AmoCRM form capture: pairs dropped, duplicated, keys
/// re-indexed with huge numbers, values replaced.
fn amo_form_from_fixture() -> impl Strategy<Value = Vec<u8>> {
    let captures: Vec<String> = [
        "amocrm_form_leads_status_minimal_v4_logged_drvorobjev.txt",
        "amocrm_form_leads_add_zapier_capture.txt",
        "amocrm_form_leads_update_zapier_capture.txt",
        "amocrm_form_leads_status_nonfinal_zapier_capture.txt",
        "amocrm_form_contacts_add_no_phone_zapier_capture.txt",
    ]
    .iter()
    .map(|f| String::from_utf8_lossy(&fixture(f)).trim().to_string())
    .collect();
    (
        prop::sample::select(captures),
        prop::collection::vec((any::<usize>(), 0u8..4, amo_value(), amo_segment()), 0..6),
    )
        .prop_map(|(capture, edits)| {
            let mut pairs: Vec<String> = capture.split('&').map(str::to_string).collect();
            for (i, op, value, seg) in edits {
                if pairs.is_empty() {
                    break;
                }
                let at = i % pairs.len();
                match op {
                    0 => {
                        pairs.remove(at);
                    }
                    1 => {
                        let dup = pairs[at].clone();
                        pairs.push(dup);
                    }
                    2 => {
                        let key = pairs[at].split('=').next().unwrap_or("").to_string();
                        pairs[at] = format!("{key}={value}");
                    }
                    _ => {
                        // Replace the first index (`%5B0%5D`) by another segment.
                        pairs[at] = pairs[at].replacen("%5B0%5D", &format!("%5B{seg}%5D"), 1);
                    }
                }
            }
            pairs.join("&").into_bytes()
        })
}

// ---------------------------------------------------------------------------
// Checks

/// Parses with the source; Ok must give events the dispatcher reads back,
/// Err must not echo the planted phone or e-mail.
fn check_source(source: SourceId, body: Body<'_>) -> Result<(), TestCaseError> {
    let registry = Registry::new();
    let Some(parser) = registry.get(source) else {
        return Err(TestCaseError::fail(format!("{source} not registered")));
    };
    let tenant = tenant();
    match parser.parse(body, &tenant) {
        Ok(items) => {
            let ctx = Context {
                tenant: &tenant,
                source,
                received_at: Utc::now(),
                format: None,
                route: None,
            };
            for item in items {
                let Item::Accept(draft) = item else { continue };
                prop_assert!(!draft.identity.is_empty(), "{source}: empty identity");
                if let Ok(event) = accept::to_event(draft, &ctx) {
                    let key_prefix = format!("t:{source}:");
                    prop_assert!(event.dedup_key.starts_with(&key_prefix));
                    let back = Event::from_json(&event.to_json());
                    prop_assert!(
                        back.as_ref().is_ok_and(|b| b == &event),
                        "{source}: accepted event does not round-trip: {back:?}"
                    );
                }
            }
        }
        Err(ParseError::Malformed(msg)) => {
            prop_assert!(!msg.is_empty(), "{source}: empty error message");
            prop_assert!(
                !msg.contains("9161234567") && !msg.contains("canary.leak"),
                "{source}: error message echoes customer data: {msg}"
            );
        }
    }
    Ok(())
}

fn check_callback(provider: Provider, body: &[u8]) -> Result<(), TestCaseError> {
    let now = Utc::now();
    let parsed = match provider {
        Provider::Wazzup => callbacks::wazzup::parse(body, now),
        _ => callbacks::meta::parse(body, provider, now),
    };
    match parsed {
        Ok(p) => {
            for u in &p.updates {
                prop_assert_eq!(u.provider.as_str(), provider.as_str());
                let id = u.message_id.as_str();
                prop_assert!(!id.trim().is_empty() && id.chars().count() <= 256);
                for text in [&u.error, &u.error_code].into_iter().flatten() {
                    prop_assert!(!text.contains("9161234567"), "unmasked: {text}");
                }
                let back = shared::status::StatusUpdate::from_json(&u.to_json()).ok();
                prop_assert_eq!(back.as_ref(), Some(u));
            }
        }
        Err(msg) => {
            prop_assert!(!msg.is_empty());
            prop_assert!(
                !msg.contains("9161234567") && !msg.contains("canary.leak"),
                "callback error echoes customer data: {msg}"
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Properties

proptest! {
    #![proptest_config(cases(300))]

    #[test]
    fn every_source_survives_arbitrary_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..1024),
        source in prop::sample::select(ALL_SOURCES.to_vec()),
    ) {
        check_source(source, Body::Json(&bytes))?;
        check_source(source, Body::Form(&bytes))?;
    }

    #[test]
    fn iiko_survives_mutated_samples(body in json_body(samples(SourceId::Iiko))) {
        check_source(SourceId::Iiko, Body::Json(&body))?;
    }

    #[test]
    fn rkeeper_survives_mutated_samples(body in json_body(samples(SourceId::Rkeeper))) {
        check_source(SourceId::Rkeeper, Body::Json(&body))?;
    }

    #[test]
    fn yclients_survives_mutated_samples(body in json_body(samples(SourceId::Yclients))) {
        check_source(SourceId::Yclients, Body::Json(&body))?;
    }

    #[test]
    fn booking_survives_mutated_samples(body in json_body(samples(SourceId::Booking))) {
        check_source(SourceId::Booking, Body::Json(&body))?;
    }

    #[test]
    fn amocrm_json_survives_mutated_samples(body in json_body(samples(SourceId::Amocrm))) {
        check_source(SourceId::Amocrm, Body::Json(&body))?;
    }

    #[test]
    fn amocrm_form_decoder_survives_random_bracket_keys(body in amo_form()) {
        check_source(SourceId::Amocrm, Body::Form(&body))?;
    }

    #[test]
    fn amocrm_form_decoder_survives_mutated_captures(body in amo_form_from_fixture()) {
        check_source(SourceId::Amocrm, Body::Form(&body))?;
    }

    #[test]
    fn callbacks_survive_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        for p in [Provider::Meta, Provider::Dialog360, Provider::Wazzup] {
            check_callback(p, &bytes)?;
        }
    }

    #[test]
    fn meta_and_360dialog_callbacks_survive_mutated_samples(
        body in json_body(callback_samples(Provider::Meta)),
    ) {
        check_callback(Provider::Meta, &body)?;
        check_callback(Provider::Dialog360, &body)?;
    }

    #[test]
    fn wazzup_callbacks_survive_mutated_samples(body in json_body(callback_samples(Provider::Wazzup))) {
        check_callback(Provider::Wazzup, &body)?;
    }

    #[test]
    fn url_parameters_never_panic(
        pairs in prop::collection::vec((
            prop_oneof![
                prop::sample::select(vec![
                    "key", "date_locales", "time_zone", "message", "resource_name",
                    "time_zone_name", "hide_address", "hide_contact_info", "hide_nothing",
                    "key_api", "channel_id", "chat_type",
                ]).prop_map(str::to_string),
                "[a-z_%+=&]{0,10}",
            ],
            prop_oneof![
                prop::sample::select(vec![
                    "", "true", "false", "ru-RU", "en-US", "Europe/Moscow", "Mars/Base",
                    "whatsapp", "%FF", "%", "%2", "+", "1", "yes",
                ]).prop_map(str::to_string),
                any::<String>(),
            ],
        ), 0..8),
    ) {
        let query = pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let p = params::parse(&query);
        if p.errors.is_empty()
            && let Some(shared::event::Route::Wazzup { api_key, channel_id, chat_type }) = &p.route
        {
            prop_assert!(!api_key.is_empty() && !channel_id.is_empty() && !chat_type.is_empty());
        }
    }
}

// ---------------------------------------------------------------------------
// Fixed hostile cases (and regressions of what the fuzzers found)

#[test]
fn deep_nesting_is_never_accepted_nor_a_stack_overflow() {
    let deep_array = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_object = format!("{}1{}", r#"{"a":"#.repeat(100_000), "}".repeat(100_000));
    for body in [&deep_array, &deep_object] {
        for source in ALL_SOURCES {
            // Refused, or (iiko: serde reads `[]` as an event with every
            // field defaulted, and skips unknown keys without recursing)
            // understood as nothing to send; never accepted, never a crash.
            let r = Registry::new()
                .get(source)
                .map(|s| s.parse(Body::Json(body.as_bytes()), &tenant()));
            match r {
                Some(Err(_)) => {}
                Some(Ok(items)) => assert!(
                    items.iter().all(|i| matches!(i, Item::Ignore(_))),
                    "{source}: {items:?}"
                ),
                None => panic!("{source} not registered"),
            }
        }
        for p in [Provider::Meta, Provider::Wazzup] {
            let r = match p {
                Provider::Wazzup => callbacks::wazzup::parse(body.as_bytes(), Utc::now()),
                _ => callbacks::meta::parse(body.as_bytes(), p, Utc::now()),
            };
            assert!(r.is_err(), "{p:?}");
        }
    }
    let deep_form = format!("leads{}=1", "[a]".repeat(100_000));
    let r = Registry::new()
        .get(SourceId::Amocrm)
        .map(|s| s.parse(Body::Form(deep_form.as_bytes()), &tenant()));
    assert!(matches!(r, Some(Err(_))), "{r:?}");
}

#[test]
fn huge_bracket_indices_allocate_nothing_and_keep_their_order() {
    let body = "leads%5Bstatus%5D%5B99999999999999999999999%5D%5Bid%5D=2\
        &leads%5Bstatus%5D%5B99999999999999999999999%5D%5Bstatus_id%5D=142\
        &leads%5Bstatus%5D%5B18446744073709551616%5D%5Bid%5D=1\
        &leads%5Bstatus%5D%5B18446744073709551616%5D%5Bstatus_id%5D=142\
        &leads%5Bstatus%5D%5B18446744073709551616%5D%5Bmain_contact%5D%5Bphone%5D=%2B79161234567\
        &leads%5Bstatus%5D%5B99999999999999999999999%5D%5Bmain_contact%5D%5Bphone%5D=%2B79161234568";
    let items = Registry::new()
        .get(SourceId::Amocrm)
        .map(|s| s.parse(Body::Form(body.as_bytes()), &tenant()));
    let Some(Ok(items)) = items else {
        panic!("{items:?}")
    };
    let refs: Vec<_> = items
        .iter()
        .map(|i| match i {
            Item::Accept(d) => d.reference.clone(),
            Item::Ignore(r) => Some(format!("ignored: {r}")),
        })
        .collect();
    assert_eq!(refs, [Some("1".to_string()), Some("2".to_string())]);
}

#[test]
fn hundred_thousand_element_batch_is_parsed_without_blowing_up() {
    let one = r#"{"eventType":"StopListUpdate","organizationId":"o","eventInfo":{}}"#;
    let body = format!("[{}]", vec![one; 100_000].join(","));
    let r = Registry::new()
        .get(SourceId::Iiko)
        .map(|s| s.parse(Body::Json(body.as_bytes()), &tenant()));
    match r {
        Some(Ok(items)) => assert!(items.iter().all(|i| matches!(i, Item::Ignore(_)))),
        Some(Err(e)) => assert!(!e.to_string().is_empty()),
        None => panic!("iiko not registered"),
    }
}
