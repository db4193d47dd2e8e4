//! The server's side of the cluster's trust: the CA and the server's own certificate in
//! `<data dir>/pki/`, made by `ferry ca init`, and issuing host certificates.
//!
//! ```text
//! <data dir>/pki/ca.crt       the CA certificate (what everyone trusts)
//! <data dir>/pki/ca.key       its key (0600; only the server reads it)
//! <data dir>/pki/server.crt   the server's certificate (Identity::Server)
//! <data dir>/pki/server.key   its key (0600)
//! ```

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use ferry_api::Role;
use ferry_pki::{new_key_and_csr, ApiToken, CertAuthority, Identity, Material};

use crate::store::Store;

/// How long a host certificate lives; agents renew at two thirds.
pub const DEFAULT_HOST_CERT_VALIDITY: Duration = Duration::from_secs(30 * 86_400);
/// The server's own certificate; renewed at start when a third is left.
const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(365 * 86_400);

#[derive(Debug, thiserror::Error)]
pub enum PkiSetupError {
    #[error(
        "{dir} has no cluster CA: run `ferry ca init --data-dir {data}` once before starting \
         the server (or start it with --insecure for development only)"
    )]
    Missing { dir: String, data: String },
    #[error("{0} already has a cluster CA; refusing to replace it (every host would have to join again)")]
    Exists(String),
    #[error("{0}")]
    Pki(#[from] ferry_pki::PkiError),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
}

/// The CA and the server's certificate, loaded.
pub struct ServerPki {
    pub ca: CertAuthority,
    pub material: Material,
    pub host_cert_validity: Duration,
}

impl std::fmt::Debug for ServerPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerPki").finish_non_exhaustive()
    }
}

pub fn pki_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("pki")
}

/// What `ferry ca init` made.
#[derive(Debug)]
pub struct InitReport {
    pub ca_fingerprint: String,
    pub ca_path: PathBuf,
    pub admin: String,
    /// The first admin's API token (shown once).
    pub admin_token: String,
}

/// `ferry ca init`: a new CA, the server's certificate, and the first admin user.
/// Refuses if a CA exists. The server must not be running (the store is opened here).
pub fn init(data_dir: &Path, admin: &str) -> Result<InitReport, PkiSetupError> {
    let dir = pki_dir(data_dir);
    if dir.join("ca.crt").exists() || dir.join("ca.key").exists() {
        return Err(PkiSetupError::Exists(dir.display().to_string()));
    }
    ferry_api::validate_name("user name", admin).map_err(|e| PkiSetupError::Io(e.message))?;
    std::fs::create_dir_all(&dir)
        .map_err(|e| PkiSetupError::Io(format!("cannot create {}: {e}", dir.display())))?;
    let label = format!(
        "Ferry cluster CA {}",
        Utc::now().format("%Y-%m-%d %H:%M:%S")
    );
    let ca = CertAuthority::generate(&label)?;
    write_secret(&dir.join("ca.key"), &ca.key_pem())?;
    write_public(&dir.join("ca.crt"), ca.cert_pem())?;
    issue_server_cert(&ca, &dir)?;

    let store = Store::open(&data_dir.join("ferry.db"))?;
    let token = ApiToken::generate()?;
    if !store.add_user(
        admin,
        Role::Admin,
        &token.id,
        &token.secret_hash(),
        Utc::now(),
    )? {
        // A user of that name exists (a database kept from an earlier CA): give it a token.
        store.add_api_token(admin, &token.id, &token.secret_hash(), Utc::now())?;
    }
    Ok(InitReport {
        ca_fingerprint: ca.fingerprint()?,
        ca_path: dir.join("ca.crt"),
        admin: admin.to_string(),
        admin_token: token.to_string(),
    })
}

/// Loads the CA and the server's certificate, renewing the latter if a third of its life
/// or less is left.
pub fn load(data_dir: &Path, host_cert_validity: Duration) -> Result<ServerPki, PkiSetupError> {
    let dir = pki_dir(data_dir);
    if !dir.join("ca.crt").exists() {
        return Err(PkiSetupError::Missing {
            dir: dir.display().to_string(),
            data: data_dir.display().to_string(),
        });
    }
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .map_err(|e| PkiSetupError::Io(format!("cannot read {}: {e}", dir.join(f).display())))
    };
    let ca = CertAuthority::load(&read("ca.crt")?, &read("ca.key")?)?;
    let mut material = Material::load(&dir, "server")?;
    let info = ferry_pki::cert_info_pem(&material.cert_pem)?;
    let left = info.not_after - Utc::now().timestamp();
    if left < (SERVER_CERT_VALIDITY.as_secs() / 3) as i64 {
        tracing::info!("renewing the server's certificate ({left} s left)");
        issue_server_cert(&ca, &dir)?;
        material = Material::load(&dir, "server")?;
    }
    if material.identity()? != Identity::Server {
        return Err(PkiSetupError::Io(format!(
            "{} is not a server certificate",
            dir.join("server.crt").display()
        )));
    }
    Ok(ServerPki {
        ca,
        material,
        host_cert_validity,
    })
}

fn issue_server_cert(ca: &CertAuthority, dir: &Path) -> Result<(), PkiSetupError> {
    let (key, csr) = new_key_and_csr(&Identity::Server)?;
    let (cert, _) = ca.issue(&csr, &Identity::Server, SERVER_CERT_VALIDITY)?;
    write_secret(&dir.join("server.key"), &key)?;
    write_public(&dir.join("server.crt"), &cert)?;
    Ok(())
}

/// Writes a private key: created 0600 (never world-readable, not even for a moment),
/// then renamed into place.
pub fn write_secret(path: &Path, text: &str) -> Result<(), PkiSetupError> {
    write_file(path, text, 0o600)
}

pub fn write_public(path: &Path, text: &str) -> Result<(), PkiSetupError> {
    write_file(path, text, 0o644)
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), PkiSetupError> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| PkiSetupError::Io(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_makes_a_ca_a_server_certificate_and_an_admin_and_refuses_twice() {
        let dir = tempfile::tempdir().unwrap();
        let report = init(dir.path(), "admin").unwrap();
        let pki = load(dir.path(), DEFAULT_HOST_CERT_VALIDITY).unwrap();
        assert_eq!(pki.ca.fingerprint().unwrap(), report.ca_fingerprint);
        assert_eq!(pki.material.identity().unwrap(), Identity::Server);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(pki_dir(dir.path()).join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the CA key is readable by others");
        let store = Store::open(&dir.path().join("ferry.db")).unwrap();
        let token = ApiToken::parse(&report.admin_token).unwrap();
        assert_eq!(
            store
                .user_for_token(&token.id, &token.secret_hash())
                .unwrap(),
            Some(("admin".into(), Role::Admin))
        );
        drop(store);
        assert!(matches!(
            init(dir.path(), "admin"),
            Err(PkiSetupError::Exists(_))
        ));
    }

    #[test]
    fn a_server_without_a_ca_says_how_to_make_one() {
        let dir = tempfile::tempdir().unwrap();
        let e = load(dir.path(), DEFAULT_HOST_CERT_VALIDITY).unwrap_err();
        assert!(e.to_string().contains("ferry ca init"), "{e}");
    }
}
