//! The host's identity: its certificate from the cluster CA, got once with a join token and
//! renewed before it expires.
//!
//! Joining trusts nothing it has not checked: the agent fetches the CA certificate over a
//! TLS connection it cannot verify yet, and uses it only if its SHA-256 is the one the
//! join token carries. It then sends the token and a fresh key's certificate request over
//! a connection verified against that CA, and keeps:
//!
//! ```text
//! <tls dir>/ca.crt     the CA(s) to trust (renewals may bring a rotated CA)
//! <tls dir>/host.crt   this host's certificate
//! <tls dir>/host.key   its key (0600; generated here, never sent)
//! ```

use std::path::Path;
use std::sync::{Arc, RwLock};

use ferry_api::client::{Credentials, ServerClient, TlsCredentials};
use ferry_api::{IssuedCertificate, JoinRequest, RenewRequest};
use ferry_pki::{new_key_and_csr, Identity, JoinToken, Material, ReloadableCert, TlsSlot};

use crate::AgentConfig;

/// The host's certificate and key, current and swappable.
#[derive(Debug)]
pub struct HostIdentity {
    pub identity: Identity,
    material: RwLock<Material>,
    /// What the agent's TLS server presents; replaced on renewal.
    pub server_cert: Arc<ReloadableCert>,
    /// The agent's TLS server settings (whom it trusts); replaced when the CA bundle
    /// changes (a CA rotation).
    pub server_tls: Arc<TlsSlot>,
    dir: std::path::PathBuf,
}

impl HostIdentity {
    pub fn material(&self) -> Material {
        match self.material.read() {
            Ok(m) => m.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Credentials for calling the server.
    pub fn credentials(&self) -> Credentials {
        Credentials::daemon(self.material())
    }

    /// Seconds until the certificate expires, and its whole lifetime.
    pub fn lifetime(&self) -> Result<(i64, i64), String> {
        let info =
            ferry_pki::cert_info_pem(&self.material().cert_pem).map_err(|e| e.to_string())?;
        let now = chrono::Utc::now().timestamp();
        Ok((info.not_after - now, info.not_after - info.not_before))
    }

    /// Whether two thirds of the certificate's life are gone, or the cluster's signing CA
    /// (the first in the bundle) is not the one that issued it (a CA rotation).
    pub fn due_for_renewal(&self) -> bool {
        let m = self.material();
        if !ferry_pki::ca::issued_by(&m.cert_pem, &m.ca_pem).unwrap_or(false) {
            return true;
        }
        match self.lifetime() {
            Ok((left, total)) => left * 3 < total,
            Err(_) => true,
        }
    }

    /// Fetches the CA bundle over the verified connection to the server and, if it
    /// changed (a CA rotation started or finished), trusts it from now on. Returns whether
    /// it changed.
    pub async fn refresh_bundle(&self, server_url: &str) -> Result<bool, String> {
        let client =
            ServerClient::connect(server_url, &self.credentials()).map_err(|e| e.to_string())?;
        let bundle = client.ca_bundle().await.map_err(|e| e.to_string())?;
        let mut m = self.material();
        if bundle.ca_pem == m.ca_pem {
            return Ok(false);
        }
        ferry_pki::tls::roots_from_pem(&bundle.ca_pem).map_err(|e| e.to_string())?;
        m.ca_pem = bundle.ca_pem;
        self.apply(m)?;
        Ok(true)
    }

    /// Stores `m` and uses it for new connections both ways.
    fn apply(&self, m: Material) -> Result<(), String> {
        store(&self.dir, &m)?;
        self.server_cert.replace(&m).map_err(|e| e.to_string())?;
        let config = ferry_pki::server_config(
            &m.ca_pem,
            self.server_cert.clone(),
            ferry_pki::ClientCerts::Required,
        )
        .map_err(|e| e.to_string())?;
        self.server_tls.replace(config);
        match self.material.write() {
            Ok(mut g) => *g = m,
            Err(p) => *p.into_inner() = m,
        }
        Ok(())
    }

    /// Renews the certificate with a new key; the new one serves new connections at once.
    pub async fn renew(&self, server_url: &str) -> Result<i64, String> {
        let client =
            ServerClient::connect(server_url, &self.credentials()).map_err(|e| e.to_string())?;
        let (key_pem, csr_pem) = new_key_and_csr(&self.identity).map_err(|e| e.to_string())?;
        let host = match &self.identity {
            Identity::Host(h) => h.clone(),
            Identity::Server => return Err("a host identity names a host".into()),
        };
        let issued = client
            .renew_certificate(&host, &RenewRequest { csr_pem })
            .await
            .map_err(|e| format!("renewal refused: {e}"))?;
        let m = accept(&issued, &key_pem, &self.identity)?;
        self.apply(m)?;
        Ok(issued.not_after)
    }
}

/// Loads the host's certificate, or joins with the token to get one.
pub async fn establish(config: &AgentConfig) -> Result<Option<Arc<HostIdentity>>, String> {
    let Some(dir) = &config.tls_dir else {
        return Ok(None);
    };
    let identity = Identity::host(&config.name).map_err(|e| e.to_string())?;
    let material = if dir.join("host.crt").exists() {
        if config.join_token.is_some() {
            tracing::warn!(
                "{} already holds a certificate; --join is ignored",
                dir.display()
            );
        }
        Material::load(dir, "host").map_err(|e| format!("{}: {e}", dir.display()))?
    } else {
        let Some(token) = &config.join_token else {
            return Err(format!(
                "this agent has no certificate in {}: join the cluster with --join TOKEN \
                 (an admin makes one with `ferry host join-token {}` on the server), or run \
                 with --insecure for development only",
                dir.display(),
                config.name
            ));
        };
        let Some(server) = &config.server_url else {
            return Err("--join needs the server's URL (--server)".into());
        };
        let m = join(server, token, &identity).await?;
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        store(dir, &m)?;
        tracing::info!(host = %config.name, "joined the cluster; certificate stored in {}", dir.display());
        m
    };
    let found = material.identity().map_err(|e| e.to_string())?;
    if found != identity {
        return Err(format!(
            "the certificate in {} is for {found}, but this agent is --name {}",
            dir.display(),
            config.name
        ));
    }
    let server_cert = ReloadableCert::new(&material).map_err(|e| e.to_string())?;
    let config = ferry_pki::server_config(
        &material.ca_pem,
        server_cert.clone(),
        ferry_pki::ClientCerts::Required,
    )
    .map_err(|e| e.to_string())?;
    Ok(Some(Arc::new(HostIdentity {
        identity,
        server_cert,
        server_tls: TlsSlot::new(config),
        material: RwLock::new(material),
        dir: dir.clone(),
    })))
}

async fn join(server: &str, token_text: &str, identity: &Identity) -> Result<Material, String> {
    let token = JoinToken::parse(token_text).map_err(|e| e.to_string())?;
    let bootstrap = ServerClient::bootstrap(server).map_err(|e| e.to_string())?;
    let bundle = bootstrap
        .ca_bundle()
        .await
        .map_err(|e| format!("cannot fetch the cluster CA from {server}: {e}"))?;
    // Only the CA the token pins is trusted, even if the answer lists others: this
    // connection was not verified, so everything else in it could be anyone's.
    let pinned = ferry_pki::tls::certs_from_pem(&bundle.ca_pem)
        .map_err(|e| format!("the server's CA bundle: {e}"))?
        .into_iter()
        .find(|c| ferry_pki::ca::fingerprint_der(c) == token.ca_fingerprint)
        .ok_or_else(|| {
            format!(
                "the server at {server} does not hold the CA this join token was made for: \
                 wrong server, or someone in between"
            )
        })?;
    let ca_pem = pem_of(&pinned);
    let creds = Credentials {
        tls: Some(TlsCredentials {
            ca_pem: ca_pem.clone(),
            me: None,
        }),
        token: None,
    };
    let client = ServerClient::connect(server, &creds).map_err(|e| e.to_string())?;
    let (key_pem, csr_pem) = new_key_and_csr(identity).map_err(|e| e.to_string())?;
    let issued = client
        .join(&JoinRequest {
            token: token.to_string(),
            csr_pem,
        })
        .await
        .map_err(|e| format!("the server refused to let this host join: {e}"))?;
    let mut m = accept(&issued, &key_pem, identity)?;
    // Keep trusting only the pinned CA until a renewal brings a bundle over a verified
    // connection.
    m.ca_pem = ca_pem;
    Ok(m)
}

/// Checks what the server issued: our key, our name.
fn accept(
    issued: &IssuedCertificate,
    key_pem: &str,
    identity: &Identity,
) -> Result<Material, String> {
    let m = Material {
        ca_pem: issued.ca_pem.clone(),
        cert_pem: issued.cert_pem.clone(),
        key_pem: key_pem.to_string(),
    };
    let named = m.identity().map_err(|e| e.to_string())?;
    if &named != identity {
        return Err(format!(
            "the server issued a certificate for {named}, but this agent is {identity} (the \
             join token was made for another host name)"
        ));
    }
    if !ferry_pki::ca::key_matches_cert(&m.cert_pem, key_pem).map_err(|e| e.to_string())? {
        return Err("the issued certificate is not for this agent's key".into());
    }
    Ok(m)
}

fn pem_of(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Writes the three files, the key first and 0600, each replaced atomically.
fn store(dir: &Path, m: &Material) -> Result<(), String> {
    write(&dir.join("host.key"), &m.key_pem, 0o600)?;
    write(&dir.join("host.crt"), &m.cert_pem, 0o644)?;
    write(&dir.join("ca.crt"), &m.ca_pem, 0o644)
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    ferry_pki::files::write_atomic(path, text, mode).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_der_certificate_becomes_pem_that_parses_back() {
        let ca = ferry_pki::CertAuthority::generate("t").unwrap();
        let der = ferry_pki::tls::certs_from_pem(ca.cert_pem()).unwrap();
        let again = pem_of(&der[0]);
        assert_eq!(ferry_pki::tls::certs_from_pem(&again).unwrap(), der);
    }
}
