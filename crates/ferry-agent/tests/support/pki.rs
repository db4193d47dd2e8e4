//! A throw-away cluster CA for tests (rcgen, ring): host certificates shaped as the
//! cluster CA issues them (subject `CN=<host>.host.ferry`, SAN DNS `<host>.host.ferry`,
//! EKU serverAuth + clientAuth, ECDSA P-256, PKCS#8 key), written as an agent's TLS
//! directory (`ca.crt`, `host.crt`, `host.key`).

#![allow(dead_code)] // each test binary uses a different part

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

pub struct TestCa {
    key: KeyPair,
    cert: Certificate,
}

/// A host certificate and its key, PEM.
pub struct HostCert {
    pub cert_pem: String,
    pub key_pem: String,
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name = dn(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("CA certificate");
        TestCa { key, cert }
    }

    pub fn ca_pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for `host` as the cluster CA issues it.
    pub fn host(&self, host: &str) -> HostCert {
        self.issue(host, |_| {})
    }

    /// A certificate for `host`, with `change` applied to the parameters first.
    pub fn issue(&self, host: &str, change: impl FnOnce(&mut CertificateParams)) -> HostCert {
        let name = format!("{host}.host.ferry");
        let key = KeyPair::generate().expect("host key");
        let mut params = CertificateParams::new(vec![name.clone()]).expect("host params");
        params.distinguished_name = dn(&name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        // rcgen marks key usage critical; QEMU then wants key encipherment too.
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        change(&mut params);
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("host certificate");
        HostCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// `<parent>/<host>-tls/` with `ca.crt`, `host.crt`, `host.key` for `host`.
    pub fn host_dir(&self, parent: &Path, host: &str) -> PathBuf {
        write_dir(parent, host, &self.ca_pem(), &self.host(host))
    }
}

/// An agent's TLS directory from the given parts.
pub fn write_dir(parent: &Path, host: &str, ca_pem: &str, cert: &HostCert) -> PathBuf {
    let dir = parent.join(format!("{host}-tls"));
    std::fs::create_dir_all(&dir).expect("tls dir");
    std::fs::write(dir.join("ca.crt"), ca_pem).expect("ca.crt");
    std::fs::write(dir.join("host.crt"), &cert.cert_pem).expect("host.crt");
    std::fs::write(dir.join("host.key"), &cert.key_pem).expect("host.key");
    dir
}
