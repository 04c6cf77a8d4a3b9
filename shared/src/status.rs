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

/// A provider says one of our sender accounts (or one template of it)
/// broke or recovered: Meta's `account_update` and
/// `message_template_status_update`, Wazzup's `channelsUpdates`. It travels
/// on the status route; the dispatcher pauses or resumes that account for
/// every tenant that sends through it (providers.md B7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountNotice {
    pub schema: u16,
    /// `meta`, `wazzup`: whose webhook carried it.
    pub provider: String,
    /// The account the provider names: Meta's WhatsApp Business Account id
    /// (`entry[].id`), Wazzup's `channelId`.
    pub account: String,
    /// The template it concerns, when it is one template's status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateRef>,
    /// True: the account (or template) can send again; false: it cannot.
    pub healthy: bool,
    /// What the provider said, in its words (`DISABLED_UPDATE DISABLE`,
    /// `channel state phoneUnavailable`, `template PAUSED`).
    pub event: String,
    /// When the provider says it happened.
    pub at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    /// Marks this message as an account notice on the status route.
    pub notice: bool,
}

/// A WhatsApp template, as Meta names it in a status notice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateRef {
    pub name: String,
    pub language: String,
}

/// What the status route carries.
#[derive(Debug, Clone, PartialEq)]
pub enum StatusMessage {
    Update(StatusUpdate),
    OptOut(OptOut),
    Notice(AccountNotice),
}

impl StatusMessage {
    pub fn to_json(&self) -> Vec<u8> {
        match self {
            StatusMessage::Update(u) => u.to_json(),
            StatusMessage::OptOut(o) => serde_json::to_vec(o).unwrap_or_default(),
            StatusMessage::Notice(n) => serde_json::to_vec(n).unwrap_or_default(),
        }
    }

    /// A status update, else an opt-out (`"opt_out": true`), else an
    /// account notice (`"notice": true`).
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        match StatusUpdate::from_json(bytes) {
            Ok(u) => Ok(StatusMessage::Update(u)),
            Err(e) => {
                if let Ok(o) = serde_json::from_slice::<OptOut>(bytes)
                    && o.opt_out
                {
                    return Ok(StatusMessage::OptOut(o));
                }
                match serde_json::from_slice::<AccountNotice>(bytes) {
                    Ok(n) if n.notice => Ok(StatusMessage::Notice(n)),
                    _ => Err(e),
                }
            }
        }
    }

    pub fn provider(&self) -> &str {
        match self {
            StatusMessage::Update(u) => &u.provider,
            StatusMessage::OptOut(o) => &o.provider,
            StatusMessage::Notice(n) => &n.provider,
        }
    }

    /// `sent`, `delivered`, `read`, `failed`, `opt_out` or `account_notice`.
    pub fn label(&self) -> &'static str {
        match self {
            StatusMessage::Update(u) => u.state.as_str(),
            StatusMessage::OptOut(_) => "opt_out",
            StatusMessage::Notice(_) => "account_notice",
        }
    }

    pub fn schema(&self) -> u16 {
        match self {
            StatusMessage::Update(u) => u.schema,
            StatusMessage::OptOut(o) => o.schema,
            StatusMessage::Notice(n) => n.schema,
        }
    }

    pub fn received_at(&self) -> DateTime<Utc> {
        match self {
            StatusMessage::Update(u) => u.received_at,
            StatusMessage::OptOut(o) => o.received_at,
            StatusMessage::Notice(n) => n.received_at,
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
        let n = StatusMessage::Notice(AccountNotice {
            schema: STATUS_SCHEMA_VERSION,
            provider: "meta".into(),
            account: "104996122399160".into(),
            template: Some(TemplateRef {
                name: "review_request".into(),
                language: "ru".into(),
            }),
            healthy: false,
            event: "template PAUSED".into(),
            at: now,
            received_at: now,
            notice: true,
        });
        assert_eq!(StatusMessage::from_json(&n.to_json()).unwrap(), n);
        assert_eq!(n.label(), "account_notice");
        assert!(StatusMessage::from_json(b"{}").is_err());
    }
}
