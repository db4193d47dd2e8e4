//! Secrets handed to people: join tokens (a host's first contact) and API tokens
//! (operators).
//!
//! Both are `<kind>.<id>.<secret>`: the id finds the record, the secret proves it. The
//! server keeps only the secret's SHA-256 and compares in constant time. A join token also
//! carries the CA's fingerprint, so a joining agent, which trusts nothing yet, can check
//! that the server it reached is the cluster's (as kubeadm's discovery hash does).

use sha2::{Digest, Sha256};

use crate::ca::hex;
use crate::{random_bytes, PkiError};

const JOIN_PREFIX: &str = "ferry-join1";
const API_PREFIX: &str = "ferry-api1";

/// A join token: `ferry-join1.<id>.<secret>.<ca sha256>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// 16 hex digits.
    pub id: String,
    /// 64 hex digits.
    pub secret: String,
    /// The CA certificate's SHA-256, 64 hex digits.
    pub ca_fingerprint: String,
}

/// An operator's API token: `ferry-api1.<id>.<secret>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub id: String,
    pub secret: String,
}

impl JoinToken {
    pub fn generate(ca_fingerprint: &str) -> Result<JoinToken, PkiError> {
        if !is_hex(ca_fingerprint, 64) {
            return Err(PkiError::BadInput(
                "a CA fingerprint is 64 hex digits".into(),
            ));
        }
        Ok(JoinToken {
            id: random_hex(8)?,
            secret: random_hex(32)?,
            ca_fingerprint: ca_fingerprint.to_string(),
        })
    }

    pub fn parse(text: &str) -> Result<JoinToken, PkiError> {
        let parts: Vec<&str> = text.trim().split('.').collect();
        match parts.as_slice() {
            [JOIN_PREFIX, id, secret, ca]
                if is_hex(id, 16) && is_hex(secret, 64) && is_hex(ca, 64) =>
            {
                Ok(JoinToken {
                    id: id.to_string(),
                    secret: secret.to_string(),
                    ca_fingerprint: ca.to_string(),
                })
            }
            _ => Err(PkiError::BadInput(format!(
                "not a join token (expected {JOIN_PREFIX}.<16 hex>.<64 hex>.<64 hex>, as \
                 `ferry host join-token` prints)"
            ))),
        }
    }

    pub fn secret_hash(&self) -> String {
        hash_secret(&self.secret)
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{JOIN_PREFIX}.{}.{}.{}",
            self.id, self.secret, self.ca_fingerprint
        )
    }
}

impl ApiToken {
    pub fn generate() -> Result<ApiToken, PkiError> {
        Ok(ApiToken {
            id: random_hex(8)?,
            secret: random_hex(32)?,
        })
    }

    pub fn parse(text: &str) -> Result<ApiToken, PkiError> {
        let parts: Vec<&str> = text.trim().split('.').collect();
        match parts.as_slice() {
            [API_PREFIX, id, secret] if is_hex(id, 16) && is_hex(secret, 64) => Ok(ApiToken {
                id: id.to_string(),
                secret: secret.to_string(),
            }),
            _ => Err(PkiError::BadInput(format!(
                "not an API token (expected {API_PREFIX}.<16 hex>.<64 hex>, as `ferry user \
                 token` prints)"
            ))),
        }
    }

    pub fn secret_hash(&self) -> String {
        hash_secret(&self.secret)
    }
}

impl std::fmt::Display for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{API_PREFIX}.{}.{}", self.id, self.secret)
    }
}

/// SHA-256 of a secret, hex: what the server stores.
pub fn hash_secret(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// Compares two hex digests without an early exit, so timing tells nothing about how much
/// of a guess was right.
pub fn digests_equal(a: &str, b: &str) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.bytes()
        .zip(b.bytes())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

pub fn random_hex(bytes: usize) -> Result<String, PkiError> {
    let mut buf = vec![0u8; bytes];
    random_bytes(&mut buf)?;
    Ok(hex(&buf))
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tokens_round_trip() {
        let j = JoinToken::generate(&"ab".repeat(32)).unwrap();
        assert_eq!(JoinToken::parse(&j.to_string()).unwrap(), j);
        let a = ApiToken::generate().unwrap();
        assert_eq!(ApiToken::parse(&a.to_string()).unwrap(), a);
        assert_ne!(ApiToken::generate().unwrap(), a, "two tokens alike");
    }

    #[test]
    fn one_kind_is_not_the_other() {
        let j = JoinToken::generate(&"00".repeat(32)).unwrap();
        assert!(ApiToken::parse(&j.to_string()).is_err());
        let a = ApiToken::generate().unwrap();
        assert!(JoinToken::parse(&a.to_string()).is_err());
    }

    #[test]
    fn digests_compare() {
        assert!(digests_equal(&hash_secret("x"), &hash_secret("x")));
        assert!(!digests_equal(&hash_secret("x"), &hash_secret("y")));
        assert!(!digests_equal("ab", "abc"));
    }

    proptest! {
        #[test]
        fn parsing_never_panics_and_accepts_only_the_format(s in ".{0,200}") {
            if let Ok(t) = ApiToken::parse(&s) {
                prop_assert_eq!(t.to_string(), s.trim());
            }
            if let Ok(t) = JoinToken::parse(&s) {
                prop_assert_eq!(t.to_string(), s.trim());
            }
        }
    }
}
