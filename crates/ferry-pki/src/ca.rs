//! The cluster CA: made once by `ferry ca init`, kept in the server's data directory, and
//! used to sign every daemon's certificate.
//!
//! A certificate request says nothing that is trusted: the CA takes only its public key
//! and writes the identity, usages and lifetime itself. Keys are ECDSA P-256.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SerialNumber,
    PKCS_ECDSA_P256_SHA256,
};
use sha2::{Digest, Sha256};

use crate::{random_bytes, Identity, PkiError};

/// How long a CA lives.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
/// Issued certificates start this much in the past (at most a tenth of their life, so
/// short-lived ones still renew at two thirds of it), so a peer whose clock is a little
/// behind does not reject a certificate issued a moment ago.
const BACKDATE: Duration = Duration::from_secs(300);

fn backdate(valid_for: Duration) -> Duration {
    BACKDATE.min(valid_for / 10)
}

/// What an issued (or any) certificate says, read back from its DER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub identity: Option<Identity>,
    /// Hex, as the certificate has it.
    pub serial: String,
    /// SHA-256 of the DER, hex: how the server remembers which certificate it issued.
    pub fingerprint: String,
    /// Seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
    pub is_ca: bool,
}

/// A CA that can sign: its certificate and private key.
pub struct CertAuthority {
    params: CertificateParams,
    key: KeyPair,
    cert_pem: String,
}

impl std::fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAuthority")
            .field("fingerprint", &fingerprint_pem(&self.cert_pem).ok())
            .finish_non_exhaustive()
    }
}

impl CertAuthority {
    /// A new CA. `label` goes into its subject (e.g. "ferry cluster CA 2026-12-02").
    pub fn generate(label: &str) -> Result<CertAuthority, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rc)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, label);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = to_time(now - BACKDATE)?;
        params.not_after = to_time(now + CA_VALIDITY)?;
        params.serial_number = Some(SerialNumber::from_slice(&serial()?));
        let cert = params.clone().self_signed(&key).map_err(rc)?;
        Ok(CertAuthority {
            cert_pem: cert.pem(),
            params,
            key,
        })
    }

    /// The CA kept on disk: its certificate and key, as PEM.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<CertAuthority, PkiError> {
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| PkiError::BadInput(format!("the CA key cannot be read: {e}")))?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem)
            .map_err(|e| PkiError::BadInput(format!("the CA certificate cannot be read: {e}")))?;
        // The key must be the one the certificate was made for, or every certificate it
        // signs would fail to verify.
        let info = cert_info_pem(cert_pem)?;
        if !info.is_ca {
            return Err(PkiError::BadInput(
                "the CA certificate is not a CA certificate".into(),
            ));
        }
        if !cert_has_key(cert_pem, &key)? {
            return Err(PkiError::BadInput(
                "the CA key does not belong to the CA certificate".into(),
            ));
        }
        Ok(CertAuthority {
            params,
            key,
            cert_pem: first_pem_block(cert_pem),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// SHA-256 of the CA certificate: what join tokens pin.
    pub fn fingerprint(&self) -> Result<String, PkiError> {
        fingerprint_pem(&self.cert_pem)
    }

    /// Signs a certificate for `identity` with the public key of `csr_pem`; nothing else
    /// from the request is used.
    pub fn issue(
        &self,
        csr_pem: &str,
        identity: &Identity,
        valid_for: Duration,
    ) -> Result<(String, CertInfo), PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            PkiError::BadInput(format!("the certificate request cannot be read: {e}"))
        })?;
        let mut params = leaf_params(identity)?;
        let now = SystemTime::now();
        params.not_before = to_time(now - backdate(valid_for))?;
        params.not_after = to_time(now + valid_for)?;
        params.serial_number = Some(SerialNumber::from_slice(&serial()?));
        params.use_authority_key_identifier_extension = true;
        let issuer = self.params.clone().self_signed(&self.key).map_err(rc)?;
        let cert = params
            .signed_by(&csr.public_key, &issuer, &self.key)
            .map_err(rc)?;
        let pem = cert.pem();
        let info = cert_info_der(cert.der())?;
        Ok((pem, info))
    }
}

/// A fresh key and a certificate request for `identity`: what an agent sends when it
/// joins or renews. Returns (key PEM, request PEM).
pub fn new_key_and_csr(identity: &Identity) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rc)?;
    // A request carries only the name and the key; usages are the CA's to decide.
    let dns = identity.dns_name();
    let mut params = CertificateParams::new(vec![dns.clone()]).map_err(rc)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, dns);
    params.distinguished_name = dn;
    let csr = params
        .serialize_request(&key)
        .map_err(rc)?
        .pem()
        .map_err(rc)?;
    Ok((key.serialize_pem(), csr))
}

fn leaf_params(identity: &Identity) -> Result<CertificateParams, PkiError> {
    let dns = identity.dns_name();
    let mut params = CertificateParams::new(vec![dns.clone()]).map_err(rc)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, dns);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    // Both: a host is a TLS server (its API, incoming streams, exports) and a client
    // (heartbeats, outgoing streams); the server calls agents as a client too.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    Ok(params)
}

/// The first `CERTIFICATE` block of a PEM text (a trust bundle lists the signing CA
/// first), as written.
fn first_pem_block(pem: &str) -> String {
    const END: &str = "-----END CERTIFICATE-----";
    match (pem.find("-----BEGIN CERTIFICATE-----"), pem.find(END)) {
        (Some(b), Some(e)) if b < e => format!("{}\n", &pem[b..e + END.len()]),
        _ => pem.to_string(),
    }
}

/// SHA-256 of the first certificate in `pem`, hex.
pub fn fingerprint_pem(pem: &str) -> Result<String, PkiError> {
    let ders = crate::tls::certs_from_pem(pem)?;
    let first = ders
        .first()
        .ok_or_else(|| PkiError::BadInput("no certificate in the PEM text".into()))?;
    Ok(fingerprint_der(first))
}

pub fn fingerprint_der(der: &[u8]) -> String {
    hex(&Sha256::digest(der))
}

/// What the first certificate in `pem` says.
pub fn cert_info_pem(pem: &str) -> Result<CertInfo, PkiError> {
    let ders = crate::tls::certs_from_pem(pem)?;
    let first = ders
        .first()
        .ok_or_else(|| PkiError::BadInput("no certificate in the PEM text".into()))?;
    cert_info_der(first)
}

/// What a DER certificate says; the identity only if it names exactly one of ours.
pub fn cert_info_der(der: &[u8]) -> Result<CertInfo, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::BadInput(format!("not an X.509 certificate: {e}")))?;
    let mut identities = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = name {
                if let Some(id) = Identity::from_dns_name(d) {
                    identities.push(id);
                }
            }
        }
    }
    let identity = match identities.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    };
    Ok(CertInfo {
        identity,
        serial: hex(cert.raw_serial()),
        fingerprint: fingerprint_der(der),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        is_ca: cert.is_ca(),
    })
}

/// Whether the first certificate in `pem` carries `key`'s public key.
fn cert_has_key(pem: &str, key: &KeyPair) -> Result<bool, PkiError> {
    let ders = crate::tls::certs_from_pem(pem)?;
    let first = ders
        .first()
        .ok_or_else(|| PkiError::BadInput("no certificate in the PEM text".into()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(first)
        .map_err(|e| PkiError::BadInput(format!("not an X.509 certificate: {e}")))?;
    Ok(cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw())
}

/// Whether the first certificate in `cert_pem` was issued by the first certificate in
/// `ca_pem` (issuer name and signature both checked).
pub fn issued_by(cert_pem: &str, ca_pem: &str) -> Result<bool, PkiError> {
    let certs = crate::tls::certs_from_pem(cert_pem)?;
    let cas = crate::tls::certs_from_pem(ca_pem)?;
    let (Some(cert), Some(ca)) = (certs.first(), cas.first()) else {
        return Ok(false);
    };
    let (_, cert) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| PkiError::BadInput(format!("not an X.509 certificate: {e}")))?;
    let (_, ca) = x509_parser::parse_x509_certificate(ca)
        .map_err(|e| PkiError::BadInput(format!("not an X.509 certificate: {e}")))?;
    Ok(cert.issuer().as_raw() == ca.subject().as_raw()
        && cert.verify_signature(Some(ca.public_key())).is_ok())
}

/// Whether `key_pem` is the private key of the first certificate in `cert_pem`.
pub fn key_matches_cert(cert_pem: &str, key_pem: &str) -> Result<bool, PkiError> {
    let key = KeyPair::from_pem(key_pem)
        .map_err(|e| PkiError::BadInput(format!("the key cannot be read: {e}")))?;
    cert_has_key(cert_pem, &key)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn serial() -> Result<[u8; 16], PkiError> {
    let mut s = [0u8; 16];
    random_bytes(&mut s)?;
    // Positive and never zero-led (DER integers), as RFC 5280 asks.
    s[0] = (s[0] & 0x7f) | 0x40;
    Ok(s)
}

fn to_time(t: SystemTime) -> Result<time::OffsetDateTime, PkiError> {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| PkiError::BadInput("the clock is before 1970".into()))?
        .as_secs();
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .map_err(|e| PkiError::BadInput(format!("time out of range: {e}")))
}

fn rc(e: rcgen::Error) -> PkiError {
    PkiError::Crypto(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_carry_the_identity_the_ca_chose() {
        let ca = CertAuthority::generate("test CA").unwrap();
        // The request asks for the server; the CA issues for host b regardless.
        let (_key, csr) = new_key_and_csr(&Identity::Server).unwrap();
        let b = Identity::host("b").unwrap();
        let (pem, info) = ca.issue(&csr, &b, Duration::from_secs(3600)).unwrap();
        assert_eq!(info.identity, Some(b));
        assert!(!info.is_ca);
        assert_eq!(cert_info_pem(&pem).unwrap(), info);
        assert!(info.not_after - info.not_before >= 3600);
    }

    #[test]
    fn a_ca_reloads_from_pem_and_keeps_signing() {
        let ca = CertAuthority::generate("test CA").unwrap();
        let again = CertAuthority::load(ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(again.fingerprint().unwrap(), ca.fingerprint().unwrap());
        let (_k, csr) = new_key_and_csr(&Identity::Server).unwrap();
        again
            .issue(&csr, &Identity::Server, Duration::from_secs(60))
            .unwrap();
    }

    #[test]
    fn a_ca_loaded_from_a_bundle_is_the_first_certificate_only() {
        let new = CertAuthority::generate("new").unwrap();
        let old = CertAuthority::generate("old").unwrap();
        let bundle = format!("{}{}", new.cert_pem(), old.cert_pem());
        let loaded = CertAuthority::load(&bundle, &new.key_pem()).unwrap();
        assert_eq!(loaded.cert_pem(), new.cert_pem());
    }

    #[test]
    fn a_ca_with_someone_elses_key_is_refused() {
        let ca = CertAuthority::generate("one").unwrap();
        let other = CertAuthority::generate("two").unwrap();
        let err = CertAuthority::load(ca.cert_pem(), &other.key_pem()).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
    }

    #[test]
    fn a_key_is_matched_to_its_certificate() {
        let ca = CertAuthority::generate("ca").unwrap();
        let (key, csr) = new_key_and_csr(&Identity::Server).unwrap();
        let (pem, _) = ca
            .issue(&csr, &Identity::Server, Duration::from_secs(60))
            .unwrap();
        assert!(key_matches_cert(&pem, &key).unwrap());
        let (other, _) = new_key_and_csr(&Identity::Server).unwrap();
        assert!(!key_matches_cert(&pem, &other).unwrap());
    }

    #[test]
    fn the_issuer_is_recognised_by_name_and_signature() {
        let one = CertAuthority::generate("one 1").unwrap();
        let two = CertAuthority::generate("two 2").unwrap();
        let (_k, csr) = new_key_and_csr(&Identity::Server).unwrap();
        let (pem, _) = one
            .issue(&csr, &Identity::Server, Duration::from_secs(60))
            .unwrap();
        assert!(issued_by(&pem, one.cert_pem()).unwrap());
        assert!(!issued_by(&pem, two.cert_pem()).unwrap());
        // A CA reloaded from its files (the server after a restart) issues under the same name.
        let again = CertAuthority::load(one.cert_pem(), &one.key_pem()).unwrap();
        let (pem, _) = again
            .issue(&csr, &Identity::Server, Duration::from_secs(60))
            .unwrap();
        assert!(issued_by(&pem, one.cert_pem()).unwrap());
    }

    #[test]
    fn garbage_requests_are_refused() {
        let ca = CertAuthority::generate("ca").unwrap();
        assert!(ca
            .issue("not a csr", &Identity::Server, Duration::from_secs(1))
            .is_err());
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// A certificate request is whatever a joining host sent: garbage and
        /// PEM-looking garbage are refused, never a panic.
        #[test]
        fn arbitrary_requests_and_certificates_are_refused_cleanly(
            body in prop::collection::vec(any::<u8>(), 0..400),
            text in ".{0,300}",
        ) {
            let encode = |b: &[u8]| {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.encode(b)
            };
            let ca = ca();
            let pem_csr = format!(
                "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
                encode(&body)
            );
            let id = Identity::Server;
            let _ = ca.issue(&pem_csr, &id, Duration::from_secs(60));
            let _ = ca.issue(&text, &id, Duration::from_secs(60));
            let pem_cert = format!(
                "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                encode(&body)
            );
            let _ = cert_info_pem(&pem_cert);
            let _ = cert_info_der(&body);
            let _ = fingerprint_pem(&text);
        }
    }

    fn ca() -> &'static CertAuthority {
        static CA: std::sync::OnceLock<CertAuthority> = std::sync::OnceLock::new();
        CA.get_or_init(|| CertAuthority::generate("fuzz").unwrap())
    }
}
