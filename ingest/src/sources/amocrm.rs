//! TODO: amocrm webhooks.

use shared::{SourceId, Tenant};

use super::{Body, ContentKind, Item, ParseError, Source};

pub struct Amocrm;

impl Source for Amocrm {
    fn id(&self) -> SourceId {
        SourceId::Amocrm
    }

    fn accepts(&self) -> &'static [ContentKind] {
        &[ContentKind::Form, ContentKind::Json]
    }

    fn parse(&self, _body: Body<'_>, _tenant: &Tenant) -> Result<Vec<Item>, ParseError> {
        Err(ParseError::Malformed("not implemented yet".into()))
    }
}
