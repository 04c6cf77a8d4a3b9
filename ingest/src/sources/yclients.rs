//! TODO: yclients webhooks.

use shared::{SourceId, Tenant};

use super::{Body, ContentKind, Item, ParseError, Source};

pub struct Yclients;

impl Source for Yclients {
    fn id(&self) -> SourceId {
        SourceId::Yclients
    }

    fn accepts(&self) -> &'static [ContentKind] {
        &[ContentKind::Json]
    }

    fn parse(&self, _body: Body<'_>, _tenant: &Tenant) -> Result<Vec<Item>, ParseError> {
        Err(ParseError::Malformed("not implemented yet".into()))
    }
}
