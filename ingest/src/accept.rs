//! The common step after a source parsed a body: each [`Draft`] becomes a
//! normalised [`Event`] (phone normalised, id, dedup key, URL options) or an
//! ignore reason. Done once here so no source repeats it.

use chrono::{DateTime, Utc};
use shared::event::{FormatOptions, Recipient, Route, SCHEMA_VERSION};
use shared::phone;
use shared::{Event, SourceId, Tenant};
use uuid::Uuid;

use crate::sources::Draft;

pub struct Context<'a> {
    pub tenant: &'a Tenant,
    pub source: SourceId,
    pub received_at: DateTime<Utc>,
    pub format: Option<&'a FormatOptions>,
    pub route: Option<&'a Route>,
}

/// Who to message: a valid phone, else an e-mail, else a later look-up.
/// With none of those the event is ignored with the phone's reason. A phone
/// found in the payload makes the look-up unnecessary.
pub fn to_event(draft: Draft, ctx: &Context<'_>) -> Result<Event, String> {
    let phone = phone::first_valid(draft.phones.iter().map(String::as_str));
    let email = draft.email.filter(|e| looks_like_email(e));
    let phone = match phone {
        Ok(p) => Some(p),
        Err(_) if email.is_some() || draft.lookup.is_some() => None,
        Err(e) => return Err(e.reason().to_string()),
    };
    Ok(Event {
        schema: SCHEMA_VERSION,
        id: Uuid::now_v7(),
        tenant: ctx.tenant.id.clone(),
        source: ctx.source,
        kind: draft.kind,
        occurred_at: draft.occurred_at.unwrap_or(ctx.received_at),
        received_at: ctx.received_at,
        // The kind is part of it, so another kind for the same order (a
        // cancellation) would be its own message; the status is not.
        dedup_key: format!(
            "{}:{}:{}:{}",
            ctx.tenant.id, ctx.source, draft.identity, draft.kind
        ),
        source_ref: draft.reference,
        location: draft.location,
        lookup: if phone.is_some() { None } else { draft.lookup },
        recipient: Recipient {
            phone,
            email,
            name: draft.name.filter(|n| !n.trim().is_empty()),
        },
        params: draft.params,
        format: ctx.format.cloned(),
        route: ctx.route.cloned(),
    })
}

fn looks_like_email(e: &str) -> bool {
    let e = e.trim();
    matches!(e.split_once('@'), Some((l, d)) if !l.is_empty() && d.contains('.') && !e.contains(char::is_whitespace))
}
