//! The host's TLS material for QEMU's own TLS (the migration stream, the NBD disk
//! export), read once at agent start from `<tls dir>/`:
//!
//! - `ca.crt`: the cluster CA, PEM (two certificates during a CA rotation);
//! - `host.crt`: this host's certificate, subject exactly `CN=<host>.host.ferry`, SAN DNS
//!   `<host>.host.ferry`, signed by one of the CAs;
//! - `host.key`: its private key, PKCS#8 PEM, ECDSA P-256.
//!
//! Every check names the file it failed on, so an operator knows which one to fix. The
//! files are issued by the cluster CA (`ferry-pki`); this module only reads and checks.

use std::path::{Path, PathBuf};

use ring::signature::KeyPair;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

pub const CA_FILE: &str = "ca.crt";
pub const CERT_FILE: &str = "host.crt";
pub const KEY_FILE: &str = "host.key";

/// The DNS name (and the CN) of a host's certificate.
pub fn host_dns_name(host: &str) -> String {
    format!("{host}.host.ferry")
}

/// The distinguished name of a host's certificate as gnutls prints it
/// (`gnutls_x509_crt_get_dn`), which is what QEMU's `tls-authz` compares.
pub fn host_dn(host: &str) -> String {
    format!("CN={}", host_dns_name(host))
}

#[derive(Debug, thiserror::Error)]
pub enum TlsMaterialError {
    #[error("TLS file {}: cannot read it: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TLS file {}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
}

/// This host's checked TLS material, as the PEM text read from disk (QEMU gets exactly
/// these bytes).
#[derive(Clone)]
pub struct HostTls {
    pub host: String,
    pub dir: PathBuf,
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// The (uid, gid) QEMU runs as when it is not root (`--qemu-user`): the per-use
    /// credentials directory is handed to it, since QEMU reads it after dropping to it.
    pub qemu_owner: Option<(u32, u32)>,
}

impl std::fmt::Debug for HostTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("HostTls")
            .field("host", &self.host)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn read(dir: &Path, name: &str) -> Result<(PathBuf, Vec<u8>), TlsMaterialError> {
    let path = dir.join(name);
    match std::fs::read(&path) {
        Ok(bytes) => Ok((path, bytes)),
        Err(source) => Err(TlsMaterialError::Read { path, source }),
    }
}

fn invalid(path: &Path, reason: impl Into<String>) -> TlsMaterialError {
    TlsMaterialError::Invalid {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The PEM blocks of a file, each with its label; a file with none is invalid.
fn pem_blocks(path: &Path, bytes: &[u8]) -> Result<Vec<Pem>, TlsMaterialError> {
    let mut blocks = Vec::new();
    for block in Pem::iter_from_buffer(bytes) {
        blocks.push(block.map_err(|e| invalid(path, format!("not valid PEM: {e}")))?);
    }
    if blocks.is_empty() {
        return Err(invalid(path, "holds no PEM block"));
    }
    Ok(blocks)
}

fn certificates(path: &Path, blocks: &[Pem]) -> Result<Vec<Vec<u8>>, TlsMaterialError> {
    let mut ders = Vec::new();
    for b in blocks {
        if b.label != "CERTIFICATE" {
            return Err(invalid(
                path,
                format!("holds a '{}' block; only certificates belong here", b.label),
            ));
        }
        ders.push(b.contents.clone());
    }
    Ok(ders)
}

fn parse<'a>(path: &Path, der: &'a [u8]) -> Result<X509Certificate<'a>, TlsMaterialError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c)
        .map_err(|e| invalid(path, format!("not an X.509 certificate: {e}")))
}

impl HostTls {
    /// Reads and checks the three files for host `host`.
    pub fn load(dir: &Path, host: &str) -> Result<HostTls, TlsMaterialError> {
        let (ca_path, ca_pem) = read(dir, CA_FILE)?;
        let (cert_path, cert_pem) = read(dir, CERT_FILE)?;
        let (key_path, key_pem) = read(dir, KEY_FILE)?;

        let ca_ders = certificates(&ca_path, &pem_blocks(&ca_path, &ca_pem)?)?;
        let mut cas = Vec::new();
        for der in &ca_ders {
            let ca = parse(&ca_path, der)?;
            if !ca.is_ca() {
                return Err(invalid(
                    &ca_path,
                    format!("'{}' is not a CA certificate", ca.subject()),
                ));
            }
            cas.push(ca);
        }

        let cert_ders = certificates(&cert_path, &pem_blocks(&cert_path, &cert_pem)?)?;
        let [cert_der] = cert_ders.as_slice() else {
            return Err(invalid(
                &cert_path,
                format!(
                    "holds {} certificates; it must hold exactly this host's",
                    cert_ders.len()
                ),
            ));
        };
        let cert = parse(&cert_path, cert_der)?;
        check_host_cert(&cert_path, &cert, host, &cas)?;

        let key_blocks = pem_blocks(&key_path, &key_pem)?;
        let [key] = key_blocks.as_slice() else {
            return Err(invalid(&key_path, "must hold exactly one private key"));
        };
        if key.label != "PRIVATE KEY" {
            return Err(invalid(
                &key_path,
                format!(
                    "holds a '{}' block; expected a PKCS#8 'PRIVATE KEY'",
                    key.label
                ),
            ));
        }
        let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &key.contents,
            &ring::rand::SystemRandom::new(),
        )
        .map_err(|e| invalid(&key_path, format!("not a PKCS#8 ECDSA P-256 key: {e}")))?;
        if pair.public_key().as_ref() != cert.public_key().subject_public_key.data.as_ref() {
            return Err(invalid(
                &key_path,
                format!("is not the key of {}", cert_path.display()),
            ));
        }
        Ok(HostTls {
            qemu_owner: None,
            host: host.to_string(),
            dir: dir.to_path_buf(),
            ca_pem,
            cert_pem,
            key_pem,
        })
    }
}

fn check_host_cert(
    path: &Path,
    cert: &X509Certificate<'_>,
    host: &str,
    cas: &[X509Certificate<'_>],
) -> Result<(), TlsMaterialError> {
    let subject = cert.subject().to_string();
    if subject != host_dn(host) {
        return Err(invalid(
            path,
            format!(
                "subject is '{subject}'; this host's certificate must be '{}'",
                host_dn(host)
            ),
        ));
    }
    let dns = host_dns_name(host);
    let names_host = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .is_some_and(|san| {
            san.value
                .general_names
                .iter()
                .any(|n| matches!(n, GeneralName::DNSName(d) if *d == dns))
        });
    if !names_host {
        return Err(invalid(
            path,
            format!("has no subject alternative name DNS:{dns}"),
        ));
    }
    // QEMU's own sanity check (crypto/tlscredsx509.c) refuses a certificate whose key
    // usage extension is critical and lacks digital signature or key encipherment, even
    // for an ECDSA key: better said here, at start, than at the first migration.
    if let Some(ku) = cert.key_usage().ok().flatten() {
        if ku.critical && !(ku.value.digital_signature() && ku.value.key_encipherment()) {
            return Err(invalid(
                path,
                "its critical key usage must allow digital signature and key encipherment \
                 (QEMU refuses it otherwise)",
            ));
        }
    }
    let eku = cert.extended_key_usage().ok().flatten();
    if !eku.is_some_and(|e| e.value.server_auth && e.value.client_auth) {
        return Err(invalid(
            path,
            "must allow both TLS server and client authentication (extended key usage)",
        ));
    }
    if !cert.validity().is_valid() {
        return Err(invalid(
            path,
            format!(
                "is not valid now (valid from {} to {})",
                cert.validity().not_before,
                cert.validity().not_after
            ),
        ));
    }
    let signed = cas
        .iter()
        .any(|ca| cert.verify_signature(Some(ca.public_key())).is_ok());
    if !signed {
        return Err(invalid(path, format!("is not signed by a CA in {CA_FILE}")));
    }
    Ok(())
}

#[cfg(test)]
#[path = "../tests/support/pki.rs"]
mod test_pki;

#[cfg(test)]
mod tests {
    use super::test_pki::{write_dir, TestCa};
    use super::*;

    fn load_err(dir: &Path, host: &str) -> String {
        HostTls::load(dir, host).unwrap_err().to_string()
    }

    #[test]
    fn material_as_the_cluster_ca_issues_it_loads() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = TestCa::new("Ferry test CA");
        let dir = ca.host_dir(tmp.path(), "a");
        let tls = HostTls::load(&dir, "a").unwrap();
        assert_eq!(tls.host, "a");
        assert_eq!(tls.ca_pem, ca.ca_pem().as_bytes());
        assert!(
            !format!("{tls:?}").contains("PRIVATE"),
            "Debug never shows the key"
        );
        assert_eq!(host_dn("a"), "CN=a.host.ferry");
    }

    #[test]
    fn a_missing_file_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = TestCa::new("CA").host_dir(tmp.path(), "a");
        std::fs::remove_file(dir.join(KEY_FILE)).unwrap();
        let e = load_err(&dir, "a");
        assert!(e.contains("host.key") && e.contains("cannot read"), "{e}");
    }

    #[test]
    fn another_hosts_certificate_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = TestCa::new("CA").host_dir(tmp.path(), "b");
        let e = load_err(&dir, "a");
        assert!(e.contains("host.crt"), "{e}");
        assert!(
            e.contains("CN=b.host.ferry") && e.contains("CN=a.host.ferry"),
            "{e}"
        );
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = TestCa::new("CA");
        let mut cert = ca.host("a");
        cert.key_pem = ca.host("a").key_pem;
        let dir = write_dir(tmp.path(), "a", &ca.ca_pem(), &cert);
        let e = load_err(&dir, "a");
        assert!(
            e.contains("host.key") && e.contains("is not the key of"),
            "{e}"
        );
    }

    #[test]
    fn a_certificate_of_another_ca_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (ours, theirs) = (TestCa::new("ours"), TestCa::new("theirs"));
        let dir = write_dir(tmp.path(), "a", &ours.ca_pem(), &theirs.host("a"));
        let e = load_err(&dir, "a");
        assert!(
            e.contains("host.crt") && e.contains("not signed by a CA"),
            "{e}"
        );
    }

    #[test]
    fn during_a_rotation_either_ca_may_have_signed() {
        let tmp = tempfile::tempdir().unwrap();
        let (old, new) = (TestCa::new("old"), TestCa::new("new"));
        let both = format!("{}{}", old.ca_pem(), new.ca_pem());
        let dir = write_dir(tmp.path(), "a", &both, &new.host("a"));
        assert!(HostTls::load(&dir, "a").is_ok());
    }

    #[test]
    fn garbage_and_wrong_blocks_are_refused_with_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = TestCa::new("CA");
        let dir = ca.host_dir(tmp.path(), "a");
        std::fs::write(dir.join(CA_FILE), "not a certificate").unwrap();
        let e = load_err(&dir, "a");
        assert!(e.contains("ca.crt"), "{e}");
        // A key where the certificate belongs.
        let cert = ca.host("a");
        let swapped = write_dir(
            &tmp.path().join("x"),
            "a",
            &ca.ca_pem(),
            &test_pki::HostCert {
                cert_pem: cert.key_pem.clone(),
                key_pem: cert.key_pem.clone(),
            },
        );
        let e = load_err(&swapped, "a");
        assert!(e.contains("host.crt") && e.contains("PRIVATE KEY"), "{e}");
    }

    #[test]
    fn a_critical_key_usage_qemu_would_refuse_is_refused_at_start() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = TestCa::new("CA");
        let cert = ca.issue("a", |p| {
            p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        });
        let dir = write_dir(tmp.path(), "a", &ca.ca_pem(), &cert);
        let e = load_err(&dir, "a");
        assert!(
            e.contains("host.crt") && e.contains("key encipherment"),
            "{e}"
        );
    }

    #[test]
    fn a_certificate_for_servers_only_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = TestCa::new("CA");
        let cert = ca.issue("a", |p| {
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        });
        let dir = write_dir(tmp.path(), "a", &ca.ca_pem(), &cert);
        let e = load_err(&dir, "a");
        assert!(e.contains("client authentication"), "{e}");
    }
}
