//! Console sessions: signing in with the admin token sets a `Secure`,
//! `HttpOnly`, `SameSite=Strict` cookie holding a random session id. The
//! session lives in Redis (`<prefix>:console:session:<sha256 of the id>`,
//! for [`SESSION_TTL`]), so every dispatcher of the fleet knows it and a
//! sign-out ends it everywhere; Redis never holds the id itself. Each session
//! has its own CSRF token, which every state-changing form carries and
//! [`Session::check`] compares in constant time.

use std::time::Duration;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::{FromRequest, HttpRequest, web};
use deadpool_redis::redis::AsyncCommands;
use futures_util::future::LocalBoxFuture;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::ConsoleError;
use crate::admin::AdminState;
use crate::delivery_state::{Store, StoreError};

pub const COOKIE: &str = "vestnik_console";
/// A session ends this long after sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    #[serde(skip)]
    key: String,
    pub csrf: String,
    pub since: chrono::DateTime<chrono::Utc>,
}

/// 32 random bytes, hex.
fn random_token() -> Result<String, StoreError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b)
        .map_err(|e| StoreError::Unavailable(format!("no randomness for a session: {e}")))?;
    Ok(hex::encode(b))
}

fn key(store: &Store, id: &str) -> String {
    format!(
        "{}:console:session:{}",
        store.prefix(),
        hex::encode(Sha256::digest(id.as_bytes()))
    )
}

impl Session {
    /// A new session: its cookie, and the session.
    pub async fn start(store: &Store) -> Result<(Cookie<'static>, Session), StoreError> {
        let id = random_token()?;
        let session = Session {
            key: key(store, &id),
            csrf: random_token()?,
            since: chrono::Utc::now(),
        };
        let value = serde_json::to_string(&session).unwrap_or_default();
        let k = session.key.clone();
        store
            .run(|mut c| async move { c.set_ex::<_, _, ()>(k, value, SESSION_TTL.as_secs()).await })
            .await?;
        Ok((cookie(id, SESSION_TTL), session))
    }

    pub async fn end(&self, store: &Store) -> Result<(), StoreError> {
        let k = self.key.clone();
        store
            .run(|mut c| async move { c.del::<_, ()>(k).await })
            .await
    }

    /// A state-changing form must carry this session's CSRF token.
    pub fn check(&self, form: &super::Form) -> Result<(), ConsoleError> {
        let presented = form.get("csrf").unwrap_or_default();
        if bool::from(presented.as_bytes().ct_eq(self.csrf.as_bytes())) {
            Ok(())
        } else {
            Err(ConsoleError::Csrf)
        }
    }
}

fn cookie(value: String, ttl: Duration) -> Cookie<'static> {
    Cookie::build(COOKIE, value)
        .path("/console")
        .secure(true)
        .http_only(true)
        .same_site(SameSite::Strict)
        .max_age(actix_web::cookie::time::Duration::seconds(
            ttl.as_secs() as i64
        ))
        .finish()
}

/// The cookie that ends the session in the browser.
pub fn removal() -> Cookie<'static> {
    let mut c = cookie(String::new(), Duration::ZERO);
    c.make_removal();
    c
}

/// A signed-in request: the extractor sends anyone else to the sign-in page.
impl FromRequest for Session {
    type Error = ConsoleError;
    type Future = LocalBoxFuture<'static, Result<Session, ConsoleError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let id = req.cookie(COOKIE).map(|c| c.value().to_string());
        let state = req.app_data::<web::Data<AdminState>>().cloned();
        Box::pin(async move {
            let (Some(id), Some(state)) = (id.filter(|i| i.len() == 64), state) else {
                return Err(ConsoleError::SignIn);
            };
            let k = key(&state.store, &id);
            let k2 = k.clone();
            let found: Option<String> = state
                .store
                .run(|mut c| async move { c.get(k2).await })
                .await
                .map_err(|e| ConsoleError::Unavailable(e.to_string()))?;
            let mut session: Session = found
                .and_then(|v| serde_json::from_str(&v).ok())
                .ok_or(ConsoleError::SignIn)?;
            session.key = k;
            Ok(session)
        })
    }
}
