//! Every error answer, in one place and one JSON shape:
//! `{"error": "<code>", "message": "<what is wrong>"}`. Never an empty 500.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("unknown source {0:?}; known sources: iiko, rkeeper, yclients, amocrm, booking")]
    UnknownSource(String),
    #[error("missing or invalid key: pass it as ?key=, X-Api-Key, or Authorization: Bearer")]
    Unauthorized,
    #[error("body is {size} bytes, over the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("content type {got:?} is not accepted here; send {expected}")]
    UnsupportedMediaType { got: String, expected: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("wrong parameters: {0}")]
    WrongParameters(String),
    #[error("event could not be made durable ({0}); retry later")]
    Unavailable(String),
    #[error("no such route")]
    NotFound,
    /// The methods the path is served with (RFC 9110's `Allow`).
    #[error("method not allowed here; allowed: {0}")]
    MethodNotAllowed(String),
}

impl Problem {
    pub fn is_server_error(&self) -> bool {
        matches!(self, Problem::Unavailable(_))
    }

    pub fn code(&self) -> &'static str {
        match self {
            Problem::UnknownSource(_) => "unknown_source",
            Problem::Unauthorized => "unauthorized",
            Problem::TooLarge { .. } => "payload_too_large",
            Problem::UnsupportedMediaType { .. } => "unsupported_media_type",
            Problem::BadRequest(_) => "malformed_body",
            Problem::WrongParameters(_) => "wrong_parameters",
            Problem::Unavailable(_) => "unavailable",
            Problem::NotFound => "not_found",
            Problem::MethodNotAllowed(_) => "method_not_allowed",
        }
    }
}

/// Every refusal: a stable code and a sentence that says what to fix.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct Body<'a> {
    /// Stable machine-readable code, e.g. `unauthorized`, `payload_too_large`.
    pub error: &'a str,
    pub message: String,
}

impl ResponseError for Problem {
    fn status_code(&self) -> StatusCode {
        match self {
            Problem::UnknownSource(_) | Problem::NotFound => StatusCode::NOT_FOUND,
            Problem::Unauthorized => StatusCode::UNAUTHORIZED,
            Problem::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Problem::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Problem::BadRequest(_) | Problem::WrongParameters(_) => StatusCode::BAD_REQUEST,
            Problem::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Problem::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut r = HttpResponse::build(self.status_code());
        match self {
            Problem::Unavailable(_) => {
                r.insert_header(("Retry-After", "5"));
            }
            Problem::MethodNotAllowed(allow) => {
                r.insert_header(("Allow", allow.as_str()));
            }
            _ => {}
        }
        r.json(Body {
            error: self.code(),
            message: self.to_string(),
        })
    }
}
