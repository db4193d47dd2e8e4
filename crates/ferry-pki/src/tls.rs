//! rustls configurations for Ferry's daemons and clients.
//!
//! Servers present their certificate and verify client certificates against the cluster
//! CA (required on agents; optional on the server, where operators use API tokens).
//! Clients verify the server's chain against the CA and then that it is the identity they
//! meant to reach, whatever address they dialled: [`ExpectIdentity`] checks the
//! certificate against the identity's DNS name instead of the name in the URL, so an
//! agent reached by IP address is still checked to be the host it should be.
//!
//! Certificates renew while the daemons run: [`ReloadableCert`] lets a server swap its
//! certificate for new connections without touching open ones.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::{Identity, PkiError};

/// The one crypto provider Ferry uses (ring), whatever else is linked in.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM text, in order.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::BadInput(format!("bad PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(PkiError::BadInput("no certificate in the PEM text".into()));
    }
    Ok(certs)
}

pub fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| PkiError::BadInput(format!("bad PEM private key: {e}")))
}

/// The CA certificates a party trusts (one, or two while a CA rotation overlaps).
pub fn roots_from_pem(pem: &str) -> Result<Arc<RootCertStore>, PkiError> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(pem)? {
        roots
            .add(cert)
            .map_err(|e| PkiError::BadInput(format!("bad CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// A party's TLS material: whom it trusts and who it is.
#[derive(Debug, Clone)]
pub struct Material {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Material {
    /// Reads `ca.crt`, `<name>.crt` and `<name>.key` from `dir` and checks they fit: the
    /// key is the certificate's and the certificate names an identity.
    pub fn load(dir: &Path, name: &str) -> Result<Material, PkiError> {
        let read = |file: String| {
            let path = dir.join(&file);
            std::fs::read_to_string(&path)
                .map_err(|e| PkiError::Io(format!("cannot read {}: {e}", path.display())))
        };
        let m = Material {
            ca_pem: read("ca.crt".into())?,
            cert_pem: read(format!("{name}.crt"))?,
            key_pem: read(format!("{name}.key"))?,
        };
        m.check()?;
        Ok(m)
    }

    /// The identity the certificate names.
    pub fn identity(&self) -> Result<Identity, PkiError> {
        crate::ca::cert_info_pem(&self.cert_pem)?
            .identity
            .ok_or_else(|| PkiError::BadInput("the certificate names no Ferry identity".into()))
    }

    fn check(&self) -> Result<(), PkiError> {
        roots_from_pem(&self.ca_pem)?;
        if !crate::ca::key_matches_cert(&self.cert_pem, &self.key_pem)? {
            return Err(PkiError::BadInput(
                "the private key does not belong to the certificate".into(),
            ));
        }
        self.identity()?;
        Ok(())
    }

    fn certified_key(&self) -> Result<Arc<CertifiedKey>, PkiError> {
        let chain = certs_from_pem(&self.cert_pem)?;
        let key = key_from_pem(&self.key_pem)?;
        let signing = provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| PkiError::BadInput(format!("unusable private key: {e}")))?;
        Ok(Arc::new(CertifiedKey::new(chain, signing)))
    }
}

/// A server certificate that can be replaced while the server runs.
#[derive(Debug)]
pub struct ReloadableCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadableCert {
    pub fn new(m: &Material) -> Result<Arc<ReloadableCert>, PkiError> {
        Ok(Arc::new(ReloadableCert {
            current: RwLock::new(m.certified_key()?),
        }))
    }

    /// New connections get `m`'s certificate; open ones keep theirs.
    pub fn replace(&self, m: &Material) -> Result<(), PkiError> {
        let key = m.certified_key()?;
        match self.current.write() {
            Ok(mut g) => *g = key,
            Err(poisoned) => *poisoned.into_inner() = key,
        }
        Ok(())
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        })
    }
}

/// Whether a TLS server asks its clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCerts {
    /// Agents: only certificate holders (the server, peers) may talk to them.
    Required,
    /// The server: agents present certificates, operators tokens.
    Optional,
}

/// A TLS server configuration with `cert` as its certificate, trusting `ca_pem`.
pub fn server_config(
    ca_pem: &str,
    cert: Arc<ReloadableCert>,
    clients: ClientCerts,
) -> Result<Arc<ServerConfig>, PkiError> {
    let roots = roots_from_pem(ca_pem)?;
    let builder = WebPkiClientVerifier::builder_with_provider(roots, provider());
    let verifier = match clients {
        ClientCerts::Required => builder.build(),
        ClientCerts::Optional => builder.allow_unauthenticated().build(),
    }
    .map_err(|e| PkiError::Crypto(format!("client verifier: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Crypto(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A TLS client configuration that trusts `ca_pem`, expects `expect` at the other end,
/// and presents `me` if given.
pub fn client_config(
    ca_pem: &str,
    me: Option<&Material>,
    expect: &Identity,
) -> Result<ClientConfig, PkiError> {
    let roots = roots_from_pem(ca_pem)?;
    let inner = WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| PkiError::Crypto(format!("server verifier: {e}")))?;
    let expected = ServerName::try_from(expect.dns_name())
        .map_err(|e| PkiError::BadName(format!("{expect}: {e}")))?;
    let verifier = Arc::new(ExpectIdentity { inner, expected });
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Crypto(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match me {
        Some(m) => builder
            .with_client_auth_cert(certs_from_pem(&m.cert_pem)?, key_from_pem(&m.key_pem)?)
            .map_err(|e| PkiError::BadInput(format!("client certificate: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The full WebPKI check (chain to the CA, validity, usage), against the identity the
/// client expects rather than the name or address it dialled.
#[derive(Debug)]
struct ExpectIdentity {
    inner: Arc<WebPkiServerVerifier>,
    expected: ServerName<'static>,
}

impl ServerCertVerifier for ExpectIdentity {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(
            end_entity,
            intermediates,
            &self.expected,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A client configuration that trusts nothing it has not pinned: used once, by a joining
/// agent, to fetch the CA certificate whose SHA-256 its join token carries. Whatever it
/// fetches is checked against that hash before it is used for anything.
pub fn pinned_bootstrap_config() -> Result<ClientConfig, PkiError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Crypto(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider())))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Accepts any server certificate; only for [`pinned_bootstrap_config`], whose single
/// answer is verified by hash.
#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
