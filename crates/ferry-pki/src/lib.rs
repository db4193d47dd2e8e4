//! Ferry's trust: the cluster CA, the identities its certificates name, join and API
//! tokens, and the TLS transport every daemon speaks.
//!
//! ```text
//!   ferry ca init ──> CA (server data dir) ──signs──> server.crt   (Identity::Server)
//!                                   │
//!   ferry host join-token NAME ──> token = id.secret.sha256(CA)
//!                                   │
//!   ferry agent --join TOKEN: fetch CA, check its hash, send token + CSR
//!                                   └──signs──> NAME.crt           (Identity::Host)
//! ```
//!
//! Pure parts (identities, tokens, issuing) are unit-tested here; the daemons keep what
//! they issued and revoked (see the server's store).

pub mod ca;
pub mod files;
pub mod identity;
pub mod serve;
pub mod tls;
pub mod token;

pub use ca::{cert_info_der, cert_info_pem, new_key_and_csr, CertAuthority, CertInfo};
pub use identity::Identity;
pub use serve::{serve, Peer, TlsSlot, Transport};
pub use tls::{client_config, server_config, ClientCerts, Material, ReloadableCert};
pub use token::{ApiToken, JoinToken};
/// The TLS stream types daemons use for their own raw streams (the bandwidth probe).
pub use tokio_rustls;

/// Why a PKI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    BadName(String),
    #[error("cryptography failed: {0}")]
    Crypto(String),
    #[error("{0}")]
    Io(String),
}

/// Fills `buf` from the operating system's random source.
pub(crate) fn random_bytes(buf: &mut [u8]) -> Result<(), PkiError> {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new()
        .fill(buf)
        .map_err(|_| PkiError::Crypto("the system random source failed".into()))
}
