//! TODO: iiko webhooks.

use shared::{SourceId, Tenant};

use super::{Body, ContentKind, Item, ParseError, Source};

pub struct Iiko;

impl Source for Iiko {
    fn id(&self) -> SourceId {
        SourceId::Iiko
    }

    fn accepts(&self) -> &'static [ContentKind] {
        &[ContentKind::Json]
    }

    fn parse(&self, _body: Body<'_>, _tenant: &Tenant) -> Result<Vec<Item>, ParseError> {
        Err(ParseError::Malformed("not implemented yet".into()))
    }
}
