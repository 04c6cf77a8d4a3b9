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
