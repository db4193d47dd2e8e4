//! The server's side of the cluster's trust: the CA and the server's own certificate in
//! `<data dir>/pki/`, made by `ferry ca init`, and issuing host certificates.
//!
//! ```text
//! <data dir>/pki/ca.crt       the CA certificate (what everyone trusts)
//! <data dir>/pki/ca.key       its key (0600; only the server reads it)
//! <data dir>/pki/server.crt   the server's certificate (Identity::Server)
//! <data dir>/pki/server.key   its key (0600)
//! ```

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

/// The CA and the server's certificate, loaded; both change when the CA rotates.
pub struct ServerPki {
    state: std::sync::RwLock<PkiState>,
    pub host_cert_validity: Duration,
    dir: PathBuf,
}

struct PkiState {
    /// The CA that signs now (the first certificate of `ca.crt`).
    ca: CertAuthority,
    /// The server's own certificate and key, and the bundle it trusts (`ca.crt`: one CA,
    /// or the new and the old one while a rotation overlaps).
    material: Material,
}

/// Where a CA rotation stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// One CA.
    Settled { ca: String },
    /// A new CA signs; the old one is still trusted until `ferry ca rotate --finish`.
    Overlapping { new: String, old: String },
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
        state: std::sync::RwLock::new(PkiState { ca, material }),
        host_cert_validity,
        dir,
    })
}

impl ServerPki {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, PkiState> {
        match self.state.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// The server's certificate, key and trusted CA bundle, as they are now.
    pub fn material(&self) -> Material {
        self.read().material.clone()
    }

    /// SHA-256 of the CA that signs now.
    pub fn signing_fingerprint(&self) -> Result<String, ferry_pki::PkiError> {
        self.read().ca.fingerprint()
    }

    /// Issues a certificate for `identity`; returns it and its facts.
    pub fn issue(
        &self,
        csr_pem: &str,
        identity: &Identity,
    ) -> Result<(String, ferry_pki::CertInfo), ferry_pki::PkiError> {
        self.read()
            .ca
            .issue(csr_pem, identity, self.host_cert_validity)
    }

    pub fn rotation(&self) -> Result<Rotation, ferry_pki::PkiError> {
        let bundle = ferry_pki::tls::certs_from_pem(&self.read().material.ca_pem)?;
        let fps: Vec<String> = bundle
            .iter()
            .map(|c| ferry_pki::ca::fingerprint_der(c))
            .collect();
        Ok(match fps.as_slice() {
            [new, old, ..] => Rotation::Overlapping {
                new: new.clone(),
                old: old.clone(),
            },
            [one] => Rotation::Settled { ca: one.clone() },
            [] => return Err(ferry_pki::PkiError::BadInput("no CA in the bundle".into())),
        })
    }

    /// Starts a rotation: a new CA signs from now on, and the bundle everyone trusts holds
    /// the new CA and the old one. The server keeps presenting its certificate from the old
    /// CA, so agents that have not fetched the new bundle yet still reach it.
    pub fn rotate_start(&self) -> Result<Rotation, PkiSetupError> {
        let mut st = match self.state.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let current = ferry_pki::tls::certs_from_pem(&st.material.ca_pem)?;
        if current.len() > 1 {
            return Err(PkiSetupError::Io(
                "a CA rotation is already under way: finish it first (`ferry ca rotate --finish`)"
                    .into(),
            ));
        }
        let label = format!(
            "Ferry cluster CA {}",
            Utc::now().format("%Y-%m-%d %H:%M:%S%.3f")
        );
        let new = CertAuthority::generate(&label)?;
        let bundle = format!("{}{}", new.cert_pem(), st.material.ca_pem);
        // The key first: a crash between the two writes leaves the old bundle with a key
        // that does not match its first certificate, which `load` refuses loudly rather
        // than signing with the wrong CA.
        write_secret(&self.dir.join("ca.key"), &new.key_pem())?;
        write_public(&self.dir.join("ca.crt"), &bundle)?;
        st.ca = new;
        st.material.ca_pem = bundle;
        drop(st);
        Ok(self.rotation()?)
    }

    /// Ends a rotation: the server takes a certificate from the new CA and the bundle is
    /// the new CA alone. The caller checks first that every host holds a new certificate.
    pub fn rotate_finish(&self) -> Result<Rotation, PkiSetupError> {
        let mut st = match self.state.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let current = ferry_pki::tls::certs_from_pem(&st.material.ca_pem)?;
        if current.len() < 2 {
            return Err(PkiSetupError::Io(
                "no CA rotation is under way (`ferry ca rotate` starts one)".into(),
            ));
        }
        let new_ca = st.ca.cert_pem().to_string();
        issue_server_cert(&st.ca, &self.dir)?;
        write_public(&self.dir.join("ca.crt"), &new_ca)?;
        st.material = Material::load(&self.dir, "server")?;
        drop(st);
        Ok(self.rotation()?)
    }
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
    Ok(ferry_pki::files::write_atomic(path, text, mode)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_makes_a_ca_a_server_certificate_and_an_admin_and_refuses_twice() {
        let dir = tempfile::tempdir().unwrap();
        let report = init(dir.path(), "admin").unwrap();
        let pki = load(dir.path(), DEFAULT_HOST_CERT_VALIDITY).unwrap();
        assert_eq!(pki.signing_fingerprint().unwrap(), report.ca_fingerprint);
        assert_eq!(pki.material().identity().unwrap(), Identity::Server);
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
    fn a_rotation_overlaps_then_settles_on_the_new_ca_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), "admin").unwrap();
        let pki = load(dir.path(), DEFAULT_HOST_CERT_VALIDITY).unwrap();
        let old = pki.signing_fingerprint().unwrap();
        let old_server_cert = pki.material().cert_pem;
        let r = pki.rotate_start().unwrap();
        let new = pki.signing_fingerprint().unwrap();
        assert_ne!(new, old);
        assert_eq!(
            r,
            Rotation::Overlapping {
                new: new.clone(),
                old: old.clone()
            }
        );
        assert!(pki.rotate_start().is_err(), "one rotation at a time");
        // The server keeps its old certificate during the overlap; hosts get the new CA's.
        assert_eq!(pki.material().cert_pem, old_server_cert);
        let (_k, csr) = ferry_pki::new_key_and_csr(&Identity::host("a").unwrap()).unwrap();
        let (cert, _) = pki.issue(&csr, &Identity::host("a").unwrap()).unwrap();
        let bundle = pki.material().ca_pem;
        assert!(
            ferry_pki::ca::issued_by(&cert, &bundle).unwrap(),
            "signed by the new CA"
        );
        // A restart in the middle keeps the overlap.
        drop(pki);
        let pki = load(dir.path(), DEFAULT_HOST_CERT_VALIDITY).unwrap();
        assert_eq!(
            pki.rotation().unwrap(),
            Rotation::Overlapping {
                new: new.clone(),
                old
            }
        );
        let r = pki.rotate_finish().unwrap();
        assert_eq!(r, Rotation::Settled { ca: new });
        let m = pki.material();
        assert!(ferry_pki::ca::issued_by(&m.cert_pem, &m.ca_pem).unwrap());
        assert!(pki.rotate_finish().is_err(), "nothing to finish");
    }

    #[test]
    fn a_server_without_a_ca_says_how_to_make_one() {
        let dir = tempfile::tempdir().unwrap();
        let e = load(dir.path(), DEFAULT_HOST_CERT_VALIDITY).unwrap_err();
        assert!(e.to_string().contains("ferry ca init"), "{e}");
    }
}
