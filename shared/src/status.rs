//! Delivery statuses reported by providers' callbacks (Meta, 360dialog,
//! Wazzup), normalised by ingest and published to `<prefix>.statuses` for
//! the dispatcher, which records them and schedules the second attempt when
//! a first attempt is reported failed (seed 003).

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub const STATUS_SCHEMA_VERSION: u16 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    Sent,
    Delivered,
    Read,
    Failed,
}

impl DeliveryState {
    /// Order in which states may follow each other: a lower rank never
    /// replaces a higher one (a late `delivered` does not undo `read`).
    /// `failed` only counts while nothing was delivered.
    pub fn rank(self) -> u8 {
        match self {
            DeliveryState::Sent => 1,
            DeliveryState::Failed => 2,
            DeliveryState::Delivered => 3,
            DeliveryState::Read => 4,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Sent => "sent",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Read => "read",
            DeliveryState::Failed => "failed",
        }
    }
}

impl fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusUpdate {
    pub schema: u16,
    /// `meta`, `dialog360`, `wazzup`: the provider that sent the message.
    pub provider: String,
    /// The provider's message id (Meta/360dialog `wamid…`, Wazzup `messageId`).
    pub message_id: String,
    pub state: DeliveryState,
    /// When the provider says it happened.
    pub at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    /// Provider error code and text for `failed` (masked: may echo numbers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The delivery key the dispatcher put in the request and the provider
    /// echoed (Meta's `biz_opaque_callback_data`: `<dedup key>/<channel>`),
    /// which settles a send whose answer was lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_key: Option<String>,
}

impl StatusUpdate {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// A customer asked to hear nothing more: an inbound message that said only
/// a stop word (`callbacks.stop_words`), written to one of our numbers. It
/// travels on the status route; the dispatcher finds the tenants whose
/// provider account `account` is and adds the sender to their stop lists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptOut {
    pub schema: u16,
    /// `meta`, `dialog360`, `wazzup`: whose webhook carried it.
    pub provider: String,
    /// The business number written to: Meta/360dialog `phone_number_id`,
    /// Wazzup `channelId`.
    pub account: String,
    /// The sender's phone, E.164; sealed (`security.seal_key`) when the
    /// ingest has a key.
    pub sender: String,
    /// When the provider says it was written.
    pub at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    /// Marks this message as an opt-out on the status route.
    pub opt_out: bool,
}

/// What the status route carries.
#[derive(Debug, Clone, PartialEq)]
pub enum StatusMessage {
    Update(StatusUpdate),
    OptOut(OptOut),
}

impl StatusMessage {
    pub fn to_json(&self) -> Vec<u8> {
        match self {
            StatusMessage::Update(u) => u.to_json(),
            StatusMessage::OptOut(o) => serde_json::to_vec(o).unwrap_or_default(),
        }
    }

    /// A status update, or else an opt-out (`"opt_out": true`).
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        match StatusUpdate::from_json(bytes) {
            Ok(u) => Ok(StatusMessage::Update(u)),
            Err(e) => match serde_json::from_slice::<OptOut>(bytes) {
                Ok(o) if o.opt_out => Ok(StatusMessage::OptOut(o)),
                _ => Err(e),
            },
        }
    }

    pub fn provider(&self) -> &str {
        match self {
            StatusMessage::Update(u) => &u.provider,
            StatusMessage::OptOut(o) => &o.provider,
        }
    }

    /// `sent`, `delivered`, `read`, `failed`, or `opt_out`.
    pub fn label(&self) -> &'static str {
        match self {
            StatusMessage::Update(u) => u.state.as_str(),
            StatusMessage::OptOut(_) => "opt_out",
        }
    }

    pub fn schema(&self) -> u16 {
        match self {
            StatusMessage::Update(u) => u.schema,
            StatusMessage::OptOut(o) => o.schema,
        }
    }

    pub fn received_at(&self) -> DateTime<Utc> {
        match self {
            StatusMessage::Update(u) => u.received_at,
            StatusMessage::OptOut(o) => o.received_at,
        }
    }
}

/// A message or stop word as compared: lower case, without the spaces and
/// punctuation around it ("  СТОП! " reads "стоп").
pub fn stop_word_form(text: &str) -> String {
    text.trim_matches(|c: char| !c.is_alphanumeric())
        .to_lowercase()
}

/// True when `text` says only one of `words` (compared in [`stop_word_form`]).
pub fn is_stop_word<S: AsRef<str>>(text: &str, words: &[S]) -> bool {
    let said = stop_word_form(text);
    !said.is_empty() && words.iter().any(|w| stop_word_form(w.as_ref()) == said)
}

#[cfg(test)]
mod stop_word_tests {
    use super::*;

    #[test]
    fn only_a_message_that_is_a_stop_word_counts() {
        let words = ["STOP", "СТОП", "отписаться"];
        assert!(is_stop_word("стоп", &words));
        assert!(is_stop_word("  СТОП!!! ", &words));
        assert!(is_stop_word("Stop.", &words));
        assert!(is_stop_word("Отписаться", &words));
        assert!(!is_stop_word("не стоп", &words));
        assert!(!is_stop_word("stop sending me this", &words));
        assert!(!is_stop_word("!!!", &words));
        assert!(!is_stop_word("спасибо", &words));
    }

    #[test]
    fn an_opt_out_and_an_update_read_back_as_themselves() {
        let now = Utc::now();
        let o = StatusMessage::OptOut(OptOut {
            schema: STATUS_SCHEMA_VERSION,
            provider: "meta".into(),
            account: "1122334455667".into(),
            sender: "+79161234567".into(),
            at: now,
            received_at: now,
            opt_out: true,
        });
        assert_eq!(StatusMessage::from_json(&o.to_json()).unwrap(), o);
        let u = StatusMessage::Update(StatusUpdate {
            schema: STATUS_SCHEMA_VERSION,
            provider: "meta".into(),
            message_id: "wamid.1".into(),
            state: DeliveryState::Read,
            at: now,
            received_at: now,
            error_code: None,
            error: None,
            delivery_key: None,
        });
        assert_eq!(StatusMessage::from_json(&u.to_json()).unwrap(), u);
        assert!(StatusMessage::from_json(b"{}").is_err());
    }
}
