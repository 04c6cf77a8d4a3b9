//! TODO: rkeeper webhooks.

use shared::{SourceId, Tenant};

use super::{Body, ContentKind, Item, ParseError, Source};

pub struct Rkeeper;

impl Source for Rkeeper {
    fn id(&self) -> SourceId {
        SourceId::Rkeeper
    }

    fn accepts(&self) -> &'static [ContentKind] {
        &[ContentKind::Json]
    }

    fn parse(&self, _body: Body<'_>, _tenant: &Tenant) -> Result<Vec<Item>, ParseError> {
        Err(ParseError::Malformed("not implemented yet".into()))
    }
}
