//! QEMU's own TLS for one migration: the memory stream (every channel: the main one,
//! each multifd channel, the post-copy return path and a post-copy recovery) and the NBD
//! disk export.
//!
//! ```text
//!  destination (server)                          source (client)
//!  tls-creds-x509 endpoint=server, verify-peer   tls-creds-x509 endpoint=client
//!  authz-simple identity=CN=<src>.host.ferry     tls-hostname=<dst>.host.ferry
//!  migrate-set-parameters tls-creds, tls-authz   migrate-set-parameters tls-creds,
//!  nbd-server-start tls-creds, tls-authz           tls-hostname; blockdev-add nbd
//!                                                  tls-creds, tls-hostname
//! ```
//!
//! Both ends prove themselves with their host certificates from the cluster CA: the
//! destination admits only a client whose certificate's DN is the expected source's, the
//! source talks only to a server whose certificate names the expected destination. QEMU
//! reads the PEM files once, when the credentials object is created, so the per-use
//! directory (mode 0700, files 0600, under the VM's directory) is removed right after.
//! There is no fallback: with TLS material, a QEMU that refuses TLS fails the step with
//! its own reason.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ferry_qmp::{
    MigrationParameters, NbdClientTls, NbdServerTls, QmpClient, TlsCredsX509, TlsEndpoint,
};

use crate::error::AgentError;
use crate::runtime::qmp_err;
use crate::tls_material::{host_dn, host_dns_name, HostTls};

/// Object ids in QEMU. One migration per VM at a time: each use replaces what an earlier
/// migration of the same QEMU left.
pub const MIGRATION_CREDS: &str = "ferry-migration-tls";
pub const MIGRATION_AUTHZ: &str = "ferry-migration-authz";
pub const NBD_CREDS: &str = "ferry-nbd-tls";
pub const NBD_AUTHZ: &str = "ferry-nbd-authz";

/// TLS for one migration: this host's material and the host at the other end.
#[derive(Debug, Clone, Copy)]
pub struct PeerTls<'a> {
    pub local: &'a HostTls,
    pub peer: &'a str,
}

/// A credentials directory as QEMU reads it; removed when dropped (also on failure).
pub(crate) struct CredsDir {
    path: PathBuf,
}

impl CredsDir {
    pub(crate) fn write(
        parent: &Path,
        tls: &HostTls,
        endpoint: TlsEndpoint,
    ) -> Result<CredsDir, AgentError> {
        let path = parent.join(format!("tls-{}", uuid::Uuid::new_v4().simple()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| AgentError::internal(format!("cannot create {}: {e}", path.display())))?;
        let dir = CredsDir { path };
        let side = match endpoint {
            TlsEndpoint::Server => "server",
            TlsEndpoint::Client => "client",
        };
        let names = [
            "ca-cert.pem".to_string(),
            format!("{side}-cert.pem"),
            format!("{side}-key.pem"),
        ];
        dir.file(&names[0], &tls.ca_pem)?;
        dir.file(&names[1], &tls.cert_pem)?;
        dir.file(&names[2], &tls.key_pem)?;
        if let Some((uid, gid)) = tls.qemu_owner {
            // QEMU reads these after dropping to its user: give them to it (and to nobody
            // else: the modes stay 0700/0600).
            for p in std::iter::once(dir.path.clone()).chain(names.iter().map(|n| dir.path.join(n)))
            {
                std::os::unix::fs::chown(&p, Some(uid), Some(gid)).map_err(|e| {
                    AgentError::internal(format!("cannot hand {} to QEMU's user: {e}", p.display()))
                })?;
            }
        }
        Ok(dir)
    }

    fn file(&self, name: &str, bytes: &[u8]) -> Result<(), AgentError> {
        let path = self.path.join(name);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(bytes))
            .map_err(|e| AgentError::internal(format!("cannot write {}: {e}", path.display())))
    }

    pub(crate) fn as_str(&self) -> Result<&str, AgentError> {
        self.path
            .to_str()
            .ok_or_else(|| AgentError::internal(format!("{} is not UTF-8", self.path.display())))
    }
}

impl Drop for CredsDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!("cannot remove {}: {e}", self.path.display());
        }
    }
}

/// A QEMU error during TLS set-up: QEMU's reason, said as a refusal to go on without TLS.
fn tls_err(command: &str, e: ferry_qmp::QmpError) -> AgentError {
    match qmp_err(command, e) {
        AgentError::Qmp { command, reason } => AgentError::Qmp {
            command,
            reason: format!(
                "{reason}; QEMU's TLS cannot be set up, and Ferry does not fall back to plain TCP"
            ),
        },
        gone => gone,
    }
}

impl PeerTls<'_> {
    /// The DN QEMU's `tls-authz` must admit: the peer's certificate.
    pub fn peer_dn(&self) -> String {
        host_dn(self.peer)
    }

    /// The name the peer's certificate must carry when this side is the client.
    pub fn peer_hostname(&self) -> String {
        host_dns_name(self.peer)
    }

    async fn add_creds(
        &self,
        qmp: &QmpClient,
        scratch: &Path,
        id: &str,
        endpoint: TlsEndpoint,
    ) -> Result<(), AgentError> {
        // One an earlier migration of this QEMU left (absent is fine).
        let _ = qmp.object_del(id).await;
        let dir = CredsDir::write(scratch, self.local, endpoint)?;
        qmp.object_add_tls_creds_x509(&TlsCredsX509 {
            id: id.to_string(),
            dir: dir.as_str()?.to_string(),
            endpoint,
            verify_peer: true,
        })
        .await
        .map_err(|e| tls_err("object-add tls-creds-x509", e))
        // `dir` is dropped here: QEMU holds what it read.
    }

    async fn add_authz(&self, qmp: &QmpClient, id: &str) -> Result<(), AgentError> {
        let _ = qmp.object_del(id).await;
        qmp.object_add_authz_simple(id, &self.peer_dn())
            .await
            .map_err(|e| tls_err("object-add authz-simple", e))
    }

    /// Destination, before `migrate-incoming`: admit only the peer's certificate.
    pub async fn secure_incoming(&self, qmp: &QmpClient, scratch: &Path) -> Result<(), AgentError> {
        self.add_creds(qmp, scratch, MIGRATION_CREDS, TlsEndpoint::Server)
            .await?;
        self.add_authz(qmp, MIGRATION_AUTHZ).await?;
        qmp.migrate_set_parameters(&MigrationParameters {
            tls_creds: Some(MIGRATION_CREDS.into()),
            tls_authz: Some(MIGRATION_AUTHZ.into()),
            tls_hostname: Some(String::new()),
            ..Default::default()
        })
        .await
        .map_err(|e| tls_err("migrate-set-parameters (TLS)", e))
    }

    /// Source, before `migrate`: talk only to the peer.
    pub async fn secure_outgoing(&self, qmp: &QmpClient, scratch: &Path) -> Result<(), AgentError> {
        self.add_creds(qmp, scratch, MIGRATION_CREDS, TlsEndpoint::Client)
            .await?;
        qmp.migrate_set_parameters(&MigrationParameters {
            tls_creds: Some(MIGRATION_CREDS.into()),
            tls_hostname: Some(self.peer_hostname()),
            tls_authz: Some(String::new()),
            ..Default::default()
        })
        .await
        .map_err(|e| tls_err("migrate-set-parameters (TLS)", e))
    }

    /// Destination of a disk copy: what `nbd-server-start` needs to admit only the peer.
    pub async fn nbd_server(
        &self,
        qmp: &QmpClient,
        scratch: &Path,
    ) -> Result<NbdServerTls, AgentError> {
        self.add_creds(qmp, scratch, NBD_CREDS, TlsEndpoint::Server)
            .await?;
        self.add_authz(qmp, NBD_AUTHZ).await?;
        Ok(NbdServerTls {
            creds: NBD_CREDS.into(),
            authz: Some(NBD_AUTHZ.into()),
        })
    }

    /// Source of a disk copy: what the NBD client nodes need to reach only the peer.
    pub async fn nbd_client(
        &self,
        qmp: &QmpClient,
        scratch: &Path,
    ) -> Result<NbdClientTls, AgentError> {
        self.add_creds(qmp, scratch, NBD_CREDS, TlsEndpoint::Client)
            .await?;
        Ok(NbdClientTls {
            creds: NBD_CREDS.into(),
            hostname: self.peer_hostname(),
        })
    }
}

/// The TLS of a request that names `peer`: None on an agent without TLS material (plain
/// TCP, development mode); an agent with it refuses a request that names no peer. A named
/// peer must be a valid host name either way.
pub fn peer_tls<'a>(
    local: Option<&'a HostTls>,
    peer: Option<&'a str>,
    what: &str,
) -> Result<Option<PeerTls<'a>>, AgentError> {
    if let Some(p) = peer {
        ferry_api::validate_name("peer host", p)?;
    }
    match (local, peer) {
        (None, _) => Ok(None),
        (Some(local), Some(peer)) => Ok(Some(PeerTls { local, peer })),
        (Some(_), None) => Err(AgentError::bad_request(format!(
            "{what}: this host runs migrations over QEMU's TLS and must be told the peer \
             host (peer_host)"
        ))),
    }
}

/// Post-copy recovery and resume re-open the stream with the TLS parameters the migration
/// started with (QEMU keeps them): check the request names the same peer, from the VM's
/// record (no QMP: a stuck destination's in-band monitor may not answer).
pub fn check_same_peer(
    recorded: Option<&str>,
    tls: Option<PeerTls<'_>>,
    vm: &str,
) -> Result<(), AgentError> {
    match (tls, recorded) {
        (None, _) => Ok(()),
        (Some(t), Some(r)) if r == t.peer => Ok(()),
        (Some(t), Some(r)) => Err(AgentError::refused(format!(
            "VM '{vm}' migrates over TLS with host '{r}', not '{}'",
            t.peer
        ))),
        (Some(_), None) => Err(AgentError::refused(format!(
            "VM '{vm}' started its migration without TLS; it is not recovered over plain TCP \
             on a host that has TLS material"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn material() -> HostTls {
        HostTls {
            qemu_owner: None,
            host: "a".into(),
            dir: "/nowhere".into(),
            ca_pem: b"CA".to_vec(),
            cert_pem: b"CERT".to_vec(),
            key_pem: b"KEY".to_vec(),
        }
    }

    #[test]
    fn creds_dir_is_private_holds_the_right_names_and_goes_away() {
        use std::os::unix::fs::PermissionsExt;
        let parent = tempfile::tempdir().unwrap();
        let tls = material();
        let path = {
            let dir = CredsDir::write(parent.path(), &tls, TlsEndpoint::Server).unwrap();
            let mode = std::fs::metadata(&dir.path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
            let key = dir.path.join("server-key.pem");
            assert_eq!(std::fs::read(&key).unwrap(), b"KEY");
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            assert_eq!(std::fs::read(dir.path.join("ca-cert.pem")).unwrap(), b"CA");
            assert_eq!(
                std::fs::read(dir.path.join("server-cert.pem")).unwrap(),
                b"CERT"
            );
            assert!(!dir.path.join("client-cert.pem").exists());
            dir.path.clone()
        };
        assert!(!path.exists(), "removed on drop");
    }

    #[test]
    fn with_tls_material_every_request_must_name_a_valid_peer() {
        let local = material();
        assert!(peer_tls(None, None, "x").unwrap().is_none(), "plain TCP");
        assert!(peer_tls(None, Some("b"), "x").unwrap().is_none());
        let t = peer_tls(Some(&local), Some("b"), "x").unwrap().unwrap();
        assert_eq!(t.peer_dn(), "CN=b.host.ferry");
        assert_eq!(t.peer_hostname(), "b.host.ferry");
        let e = peer_tls(Some(&local), None, "incoming").unwrap_err();
        assert!(matches!(e, AgentError::BadRequest(_)), "{e}");
        assert!(e.to_string().contains("peer_host"), "{e}");
        for bad in ["", "b,c", "../b", "b host"] {
            assert!(peer_tls(Some(&local), Some(bad), "x").is_err(), "{bad:?}");
            assert!(peer_tls(None, Some(bad), "x").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn recovery_must_name_the_peer_the_migration_started_with() {
        let local = material();
        let tls = |peer| {
            Some(PeerTls {
                local: &local,
                peer,
            })
        };
        assert!(check_same_peer(Some("b"), tls("b"), "vm").is_ok());
        let e = check_same_peer(Some("b"), tls("c"), "vm").unwrap_err();
        assert!(e.to_string().contains("with host 'b', not 'c'"), "{e}");
        let e = check_same_peer(None, tls("b"), "vm").unwrap_err();
        assert!(e.to_string().contains("without TLS"), "{e}");
        assert!(check_same_peer(None, None, "vm").is_ok());
    }
}
