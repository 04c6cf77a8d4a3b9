//! 360dialog webhooks (providers.md A6): the body is Meta's Cloud API body
//! (or on-premise's top-level `statuses`), parsed by [`super::meta::parse`].
//! 360dialog signs nothing, so the webhook is registered with a custom
//! header carrying a secret (`callbacks.dialog360_header`, default
//! `X-Vestnik-Secret`), which it sends back with every call; `?key=<secret>`
//! in the URL is accepted too, for set-ups that cannot add headers. Both are
//! checked against `callbacks.dialog360_secrets`, dedicated callback secrets
//! (not tenant webhook keys: a callback key can only report statuses).

use actix_web::HttpRequest;

use super::{CallbackError, Callbacks, Provider, Secrets, query_param};

pub fn authenticate(cb: &Callbacks, req: &HttpRequest) -> Result<(), CallbackError> {
    if cb.dialog360.is_empty() {
        return Err(CallbackError::NotConfigured(Provider::Dialog360));
    }
    let header = req
        .headers()
        .get(&cb.dialog360_header)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let key = query_param(req, "key");
    if presented_ok(&cb.dialog360, header, key.as_deref()) {
        Ok(())
    } else {
        Err(CallbackError::Unauthorized(Provider::Dialog360))
    }
}

/// Either credential may be the one that matches; every one presented is checked.
fn presented_ok(secrets: &Secrets, header: Option<&str>, key: Option<&str>) -> bool {
    secrets.matches_any(header.into_iter().chain(key).filter(|s| !s.is_empty()))
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;
    use shared::config::CallbackSettings;

    use super::*;

    fn cb() -> Callbacks {
        Callbacks::new(&CallbackSettings {
            dialog360_header: "X-My-Secret".into(),
            dialog360_secrets: vec!["dialog360-secret-0001".into()],
            ..CallbackSettings::default()
        })
        .unwrap()
    }

    #[test]
    fn the_configured_header_or_the_url_key_authenticates() {
        let cb = cb();
        let ok = |req: HttpRequest| authenticate(&cb, &req).is_ok();
        assert!(ok(TestRequest::default()
            .insert_header(("x-my-secret", "dialog360-secret-0001"))
            .to_http_request()));
        assert!(ok(TestRequest::with_uri(
            "/api/callback/dialog360?key=dialog360-secret-0001"
        )
        .to_http_request()));
        assert!(!ok(TestRequest::default()
            .insert_header(("x-my-secret", "dialog360-secret-0002"))
            .to_http_request()));
        // The default header name is not the configured one.
        assert!(!ok(TestRequest::default()
            .insert_header(("x-vestnik-secret", "dialog360-secret-0001"))
            .to_http_request()));
        assert!(!ok(TestRequest::default().to_http_request()));
    }

    #[test]
    fn unconfigured_endpoint_says_so() {
        let cb = Callbacks::new(&CallbackSettings::default()).unwrap();
        let req = TestRequest::default()
            .insert_header(("x-vestnik-secret", ""))
            .to_http_request();
        assert!(matches!(
            authenticate(&cb, &req),
            Err(CallbackError::NotConfigured(Provider::Dialog360))
        ));
    }
}
