//! Quick migration, the agent's side: the source pauses its guest and QEMU saves the whole
//! VM to a file on a shared pool (`migrate file:` with `mapped-ram`: every RAM page at a
//! fixed offset, so the file is at most the guest's RAM plus its device state, and several
//! channels can write and read it); the destination's QEMU, started with `-incoming defer`
//! and its vCPUs held, loads it and resumes only when the server says so.
//!
//! The state file is never named by the network: a request names a pool, which must be one
//! of this host's *shared* pools, and the migration's id; the agent builds
//! `<pool dir>/ferry-quick-<id>.vmstate` itself, creates it exclusively (no file or link of
//! that name may exist) before QEMU writes it, and loads only a regular file (not a link).
//! QEMU gets a `file:` URI the agent made from that path.

use std::io::ErrorKind;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use ferry_api::{
    validate_name, AgentMigrationStatus, MigrationStatus, QuickDiscardResponse,
    QuickIncomingRequest, QuickStateFile, QuickTransferRequest, VmRuntime,
};
use ferry_qmp::{MigrationParameters, MultifdCompression};

use crate::cancel::typed;
use crate::error::AgentError;
use crate::host::Agent;
use crate::persist::Role;
use crate::runtime::{qmp_err, Migratable, Pausable, QemuVm};

/// The file a quick migration's state goes to, inside its pool's directory.
pub fn state_file_name(migration: uuid::Uuid) -> String {
    format!("ferry-quick-{migration}.vmstate")
}

impl QemuVm {
    /// Capabilities and parameters of a quick save or restore, the same on both sides.
    async fn set_up_quick(&self, streams: u8) -> Result<(), AgentError> {
        let multifd = streams > 1;
        // First what `mapped-ram` cannot live with: QEMU checks the parameters in force
        // when the capability is set. A file is written as fast as it goes, and has no
        // TLS (an earlier migration of this QEMU may have set both).
        let clear = MigrationParameters {
            max_bandwidth: Some(0),
            tls_creds: Some(String::new()),
            tls_hostname: Some(String::new()),
            tls_authz: Some(String::new()),
            multifd_compression: Some(MultifdCompression::None),
            ..Default::default()
        };
        self.qmp
            .migrate_set_parameters(&clear)
            .await
            .map_err(|e| qmp_err("migrate-set-parameters", e))?;
        self.qmp
            .migrate_set_capabilities(&[
                ("events", true),
                ("xbzrle", false),
                ("postcopy-ram", false),
                ("return-path", false),
                ("auto-converge", false),
                ("pause-before-switchover", false),
                ("multifd", multifd),
                ("mapped-ram", true),
            ])
            .await
            .map_err(|e| qmp_err("migrate-set-capabilities", e))?;
        if !multifd {
            return Ok(());
        }
        let params = MigrationParameters {
            multifd_channels: Some(streams as u64),
            ..Default::default()
        };
        self.qmp
            .migrate_set_parameters(&params)
            .await
            .map_err(|e| qmp_err("migrate-set-parameters", e))
    }

    /// `mapped-ram` off again: it works with `file:` only, and a later live migration of
    /// this QEMU must not inherit it. QEMU before 9 has no such capability: nothing to do.
    pub(crate) async fn reset_quick_caps(&self) {
        let _ = self
            .qmp
            .migrate_set_capabilities(&[("mapped-ram", false)])
            .await;
    }

    async fn quick_migration_status(&self) -> Result<MigrationStatus, AgentError> {
        let info = self
            .qmp
            .query_migrate()
            .await
            .map_err(|e| qmp_err("query-migrate", e))?;
        Ok(typed(info.status.as_ref()))
    }
}

fn file_uri(path: &std::path::Path) -> String {
    format!("file:{}", path.display())
}

impl Agent {
    /// The state file's path: in a shared pool of this host, named by Ferry.
    pub fn state_file(&self, f: &QuickStateFile) -> Result<PathBuf, AgentError> {
        validate_name("pool name", &f.pool)?;
        let pool = self.pool(&f.pool)?;
        if !pool.shared {
            return Err(AgentError::bad_request(format!(
                "pool {} on host {} is not shared; a quick migration's state goes to a pool \
                 both hosts share",
                f.pool, self.config.name
            )));
        }
        let path = pool.dir.join(state_file_name(f.migration));
        match path.to_str() {
            // QEMU's file: URI takes options after a comma.
            Some(p) if !p.contains(',') => Ok(path),
            _ => Err(AgentError::bad_request(format!(
                "pool {}'s directory {} cannot hold a state file (it must be UTF-8 without \
                 commas)",
                f.pool,
                pool.dir.display()
            ))),
        }
    }

    /// Destination: a QEMU for the VM, waiting (vCPUs held) for the state file.
    pub async fn quick_incoming(
        &self,
        req: &QuickIncomingRequest,
    ) -> Result<VmRuntime, AgentError> {
        req.spec.validate()?;
        QuickTransferRequest {
            file: req.file.clone(),
            streams: req.streams,
        }
        .validate()?;
        self.state_file(&req.file)?;
        let vm = self
            .launch_inner(&req.spec, Role::Incoming, Vec::new(), true)
            .await?;
        if let Err(e) = vm.set_up_quick(req.streams).await {
            let _ = self.remove(&vm.name).await;
            return Err(e);
        }
        tracing::info!(vm = %vm.name, migration = %req.file.migration, "waiting for a quick migration's state");
        Ok(vm.runtime().await)
    }

    /// Source: pause the guest and save it to the state file. On any failure before QEMU
    /// took the save, the guest runs again and the file is gone.
    pub async fn quick_save(
        &self,
        name: &str,
        req: &QuickTransferRequest,
    ) -> Result<AgentMigrationStatus, AgentError> {
        req.validate()?;
        let path = self.state_file(&req.file)?;
        let vm = self.find(name).await?;
        let _op = vm.op_lock.lock().await;
        let rec = vm.record();
        if !vm.is_running_process() || rec.role != Role::Normal || !rec.copying_disks.is_empty() {
            return Err(AgentError::refused(format!(
                "VM '{name}' is not running normally on host {} (it is {:?})",
                self.config.name, rec.role
            )));
        }
        // Exclusively: no file or link of that name may be there (QEMU, maybe root, writes
        // where the path points).
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path);
        match created {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                return Err(AgentError::refused(format!(
                    "state file {} already exists; refusing to overwrite it",
                    path.display()
                )))
            }
            Err(e) => {
                return Err(AgentError::storage(format!(
                    "cannot create state file {}: {e}",
                    path.display()
                )))
            }
        }
        let undo = |why: AgentError| {
            let _ = std::fs::remove_file(&path);
            why
        };
        if let Some((uid, gid)) = self.config.qemu_owner().map_err(AgentError::Internal)? {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(|e| {
                undo(AgentError::storage(format!(
                    "cannot hand {} to QEMU's user: {e}",
                    path.display()
                )))
            })?;
        }
        vm.set_up_quick(req.streams).await.map_err(undo)?;
        vm.pause().await.map_err(undo)?;
        let saved = async {
            vm.set_role(Role::Outgoing)?;
            vm.qmp
                .migrate(&file_uri(&path), false)
                .await
                .map_err(|e| qmp_err("migrate", e))
        }
        .await;
        if let Err(e) = saved {
            let _ = vm.set_role(Role::Normal);
            let _ = vm.resume().await;
            return Err(undo(e));
        }
        tracing::info!(vm = %name, file = %path.display(), streams = req.streams, "guest paused; saving its state");
        vm.migration_status().await
    }

    /// Destination: load the state file into the waiting QEMU.
    pub async fn quick_restore(
        &self,
        name: &str,
        req: &QuickTransferRequest,
    ) -> Result<AgentMigrationStatus, AgentError> {
        req.validate()?;
        let path = self.state_file(&req.file)?;
        let vm = self.find(name).await?;
        let _op = vm.op_lock.lock().await;
        if vm.role() != Role::Incoming {
            return Err(AgentError::refused(format!(
                "VM '{name}' on host {} is not waiting for a migration",
                self.config.name
            )));
        }
        let status = vm.quick_migration_status().await?;
        if status != MigrationStatus::None {
            return Err(AgentError::refused(format!(
                "VM '{name}' on host {}: its QEMU already loads or loaded a state ({status})",
                self.config.name
            )));
        }
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_file() => {}
            Ok(_) => {
                return Err(AgentError::refused(format!(
                    "{} is not a regular file; refusing to load it",
                    path.display()
                )))
            }
            Err(e) => {
                return Err(AgentError::not_found(format!(
                    "state file {} on host {}: {e}",
                    path.display(),
                    self.config.name
                )))
            }
        }
        vm.qmp
            .migrate_incoming(&file_uri(&path))
            .await
            .map_err(|e| qmp_err("migrate-incoming", e))?;
        tracing::info!(vm = %name, file = %path.display(), "loading a quick migration's state");
        vm.migration_status().await
    }

    /// Destination: the state loaded completely; start the guest. Refused unless QEMU
    /// reports the load completed (a partial state must never run).
    pub async fn quick_resume(&self, name: &str) -> Result<VmRuntime, AgentError> {
        let vm = self.find(name).await?;
        let _op = vm.op_lock.lock().await;
        let status = vm.quick_migration_status().await?;
        if status != MigrationStatus::Completed {
            return Err(AgentError::refused(format!(
                "VM '{name}' on host {}: the state load is '{status}', not completed; \
                 refusing to start it",
                self.config.name
            )));
        }
        let run = vm
            .qmp
            .query_status()
            .await
            .map_err(|e| qmp_err("query-status", e))?;
        if !run.running {
            if vm.role() != Role::Incoming {
                return Err(AgentError::refused(format!(
                    "VM '{name}' on host {} is paused but did not arrive by a migration here",
                    self.config.name
                )));
            }
            vm.resume().await?;
        }
        vm.reset_quick_caps().await;
        vm.set_role(Role::Normal)?;
        tracing::info!(vm = %name, "quick migration restored; guest runs here");
        Ok(vm.runtime().await)
    }

    /// Either side: delete a quick migration's state file (a link of that name too, never
    /// what it points to). Idempotent.
    pub fn quick_discard(&self, file: &QuickStateFile) -> Result<QuickDiscardResponse, AgentError> {
        let path = self.state_file(file)?;
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_dir() => Err(AgentError::refused(format!(
                "{} is a directory; refusing to delete it",
                path.display()
            ))),
            Ok(_) => {
                std::fs::remove_file(&path).map_err(|e| {
                    AgentError::storage(format!("cannot delete {}: {e}", path.display()))
                })?;
                tracing::info!(file = %path.display(), "quick migration state file deleted");
                Ok(QuickDiscardResponse { deleted: true })
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                Ok(QuickDiscardResponse { deleted: false })
            }
            Err(e) => Err(AgentError::storage(format!(
                "cannot look at {}: {e}",
                path.display()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_file_is_named_by_the_migration() {
        let id = uuid::Uuid::parse_str("0b9d8e0c-3f5e-4f43-9a55-2a0f1d2c3b4a").unwrap();
        assert_eq!(
            state_file_name(id),
            "ferry-quick-0b9d8e0c-3f5e-4f43-9a55-2a0f1d2c3b4a.vmstate"
        );
    }
}
