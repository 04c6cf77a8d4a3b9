//! Sealing of secrets that must travel with an event: seed 000's booking
//! webhooks carry the tenant's Wazzup `key_api` in their URL, and the event
//! is written to the ingest's spool, RabbitMQ, Redis (for callbacks) and the
//! DLQ. With `security.seal_key` set, the ingest seals the key
//! (XChaCha20-Poly1305, a random 24-byte nonce per value) and only the
//! dispatcher, holding the same key, opens it to send.
//!
//! A sealed value reads `sealed:v1:<base64 of nonce and ciphertext>`; a value
//! without that prefix is taken as clear text (written before the key was set).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

const PREFIX: &str = "sealed:v1:";
const NONCE: usize = 24;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("security.seal_key must be 32 bytes in base64 (e.g. `openssl rand -base64 32`)")]
    BadKey,
    #[error("a sealed value cannot be opened: no security.seal_key is configured")]
    NoKey,
    #[error("a sealed value cannot be opened with this key (another key, or damaged)")]
    Damaged,
}

#[derive(Clone)]
pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// From `security.seal_key`: 32 bytes, base64.
    pub fn from_base64(key: &str) -> Result<Sealer, SealError> {
        let bytes = STANDARD.decode(key.trim()).map_err(|_| SealError::BadKey)?;
        if bytes.len() != 32 {
            return Err(SealError::BadKey);
        }
        let cipher = XChaCha20Poly1305::new_from_slice(&bytes).map_err(|_| SealError::BadKey)?;
        Ok(Sealer { cipher })
    }

    pub fn seal(&self, plain: &str) -> String {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        // Encryption with a valid key and nonce does not fail.
        let sealed = self
            .cipher
            .encrypt(&nonce, plain.as_bytes())
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        format!("{PREFIX}{}", STANDARD.encode(out))
    }

    /// Opens a sealed value (a clear one comes back as it is).
    pub fn open(sealer: Option<&Sealer>, value: &str) -> Result<String, SealError> {
        let Some(encoded) = value.strip_prefix(PREFIX) else {
            return Ok(value.to_string());
        };
        let sealer = sealer.ok_or(SealError::NoKey)?;
        let bytes = STANDARD.decode(encoded).map_err(|_| SealError::Damaged)?;
        if bytes.len() <= NONCE {
            return Err(SealError::Damaged);
        }
        let (nonce, sealed) = bytes.split_at(NONCE);
        let plain = sealer
            .cipher
            .decrypt(XNonce::from_slice(nonce), sealed)
            .map_err(|_| SealError::Damaged)?;
        String::from_utf8(plain).map_err(|_| SealError::Damaged)
    }

    pub fn is_sealed(value: &str) -> bool {
        value.starts_with(PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // 32 bytes

    #[test]
    fn a_sealed_value_opens_only_with_its_key() {
        let s = Sealer::from_base64(KEY).unwrap();
        let sealed = s.seal("wazzup-api-key-0123456789");
        assert!(Sealer::is_sealed(&sealed));
        assert!(!sealed.contains("wazzup-api-key"), "{sealed}");
        assert_ne!(
            sealed,
            s.seal("wazzup-api-key-0123456789"),
            "a fresh nonce each time"
        );
        assert_eq!(
            Sealer::open(Some(&s), &sealed).unwrap(),
            "wazzup-api-key-0123456789"
        );
        let other = Sealer::from_base64("ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=").unwrap();
        assert_eq!(Sealer::open(Some(&other), &sealed), Err(SealError::Damaged));
        assert_eq!(Sealer::open(None, &sealed), Err(SealError::NoKey));
        let mut damaged = sealed.clone();
        damaged.pop();
        damaged.push('A');
        assert!(Sealer::open(Some(&s), &damaged).is_err());
        assert_eq!(Sealer::open(None, "clear-key").unwrap(), "clear-key");
    }

    #[test]
    fn a_key_must_be_32_bytes_of_base64() {
        assert_eq!(Sealer::from_base64("short").err(), Some(SealError::BadKey));
        assert_eq!(
            Sealer::from_base64("c2hvcnQ=").err(),
            Some(SealError::BadKey)
        );
        assert!(Sealer::from_base64(KEY).is_ok());
    }
}
