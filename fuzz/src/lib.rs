//! What every fuzz target checks beyond "no panic": the same properties as
//! the proptest smoke (ingest/tests/fuzz_parsers.rs, shared/tests/fuzz_props.rs).

use chrono::Utc;
use ingest::accept::{self, Context};
use ingest::callbacks::{self, Provider};
use ingest::sources::{Body, Item, ParseError, Registry};
use shared::tenant::SourceSettings;
use shared::{Event, SourceId, Tenant};

fn tenant() -> Tenant {
    let mut sources = SourceSettings::default();
    sources.amocrm.won_status_ids = vec![142, 47873533];
    sources.amocrm.phone_field_ids = vec![1119321];
    Tenant {
        id: "t".into(),
        sources,
    }
}

/// Parses `body` with `source`. Accepted items must become events that
/// read back equal; errors must say something and never echo a phone.
pub fn source(source: SourceId, body: Body<'_>) {
    let registry = Registry::new();
    let parser = registry.get(source).expect("every source is registered");
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
                assert!(!draft.identity.is_empty(), "empty identity");
                if let Ok(event) = accept::to_event(draft, &ctx) {
                    let back = Event::from_json(&event.to_json()).expect("event round-trips");
                    assert_eq!(back, event);
                    if let Some(p) = &event.recipient.phone {
                        let _ = (p.digits(), p.to_string());
                    }
                }
            }
        }
        Err(ParseError::Malformed(msg)) => {
            assert!(!msg.is_empty(), "empty error message");
        }
    }
}

/// Parses a provider callback body; updates must be well-formed and
/// round-trip through the statuses queue's encoding.
pub fn callback(provider: Provider, body: &[u8]) {
    let now = Utc::now();
    let parsed = match provider {
        Provider::Wazzup => callbacks::wazzup::parse(body, now),
        _ => callbacks::meta::parse(body, provider, now),
    };
    match parsed {
        Ok(p) => {
            for u in &p.updates {
                assert_eq!(u.provider, provider.as_str());
                assert!(!u.message_id.trim().is_empty());
                assert!(u.message_id.chars().count() <= 256);
                let back = shared::status::StatusUpdate::from_json(&u.to_json())
                    .expect("status round-trips");
                assert_eq!(&back, u);
            }
        }
        Err(msg) => assert!(!msg.is_empty()),
    }
}
