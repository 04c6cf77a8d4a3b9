//! Where a webhook's key can be: `?key=`, `X-Api-Key`, `Authorization: Bearer <key>`,
//! or the raw `Authorization` value (iiko sends its authToken that way).

use actix_web::HttpRequest;

pub fn presented_key<'a>(req: &'a HttpRequest, query_key: Option<&'a str>) -> Option<&'a str> {
    if let Some(k) = query_key.filter(|k| !k.is_empty()) {
        return Some(k);
    }
    let headers = req.headers();
    if let Some(k) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(k.trim());
    }
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())?
        .trim();
    let token = match auth.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => auth,
    };
    (!token.is_empty()).then_some(token)
}
