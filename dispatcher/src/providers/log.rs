//! The log provider (seed 001's dev mode): with no credentials configured
//! for a channel, the message is written to the log, masked, instead of sent,
//! so the pipeline runs out of the box.

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use shared::tenant::Channel;

use super::{Body, Message, Outcome, Provider};

pub struct LogOnly {
    pub channel: Channel,
}

impl Provider for LogOnly {
    fn name(&self) -> &'static str {
        "log"
    }

    fn channel(&self) -> Channel {
        self.channel
    }

    fn send<'a>(&'a self, m: &'a Message) -> BoxFuture<'a, Outcome> {
        async move {
            let preview = match &m.body {
                Body::Text(t) => shared::mask::text(t),
                Body::Template {
                    name,
                    language,
                    params,
                    ..
                } => {
                    format!(
                        "template {name} [{language}] with {} parameters",
                        params.len()
                    )
                }
                Body::Email { subject, .. } => format!("e-mail {:?}", shared::mask::text(subject)),
            };
            let id = format!("log-{}", uuid::Uuid::now_v7());
            tracing::info!(
                provider = "log",
                channel = %m.channel,
                to = ?m.to,
                message_id = %id,
                text = %preview,
                "message not sent: no provider configured for this channel (dev mode)"
            );
            Outcome::Sent { message_id: id }
        }
        .boxed()
    }
}
