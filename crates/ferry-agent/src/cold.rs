//! Cold migration, the agent's side: copying a stopped VM's local-pool disks.
//!
//! ```text
//!  destination                                   source
//!  receive: create an empty target (exact size),
//!           qemu-nbd exports it on the migration
//!           address (one client, random name,    send: qemu-img convert reads the image
//!           TLS admitting only the source)  ◀──────── and writes it into the export
//!           qemu-nbd exits when the copy ends
//!  checksum: the target, from the file          checksum: the image, from the file
//!  finish: the target is the VM's now           finish / discard: nothing to delete
//!  discard: delete the targets it created
//! ```
//!
//! The destination records the targets it creates (`<state>/cold/<migration>.json`, written
//! before the image is made), so a discard, also after an agent restart, deletes exactly
//! those and never an image that existed before. Helper processes die with the agent
//! ([`crate::tools`]); the server asks each step, polls `GET /v1/cold/{migration}`, and
//! never sends a host path: pools and images are resolved here.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_api::{
    validate_name, ColdCleanup, ColdDiskRequest, ColdJob, ColdJobKind, ColdJobState,
    ColdReceiveRequest, ColdReceiveResponse, ColdSendRequest, ColdStatus,
};
use ferry_qmp::TlsEndpoint;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::AgentError;
use crate::host::Agent;
use crate::qemu_tls::{peer_tls, CredsDir};
use crate::tools;

/// One job of a cold migration on this host.
struct Slot {
    job: Mutex<ColdJob>,
    killer: Mutex<Option<tools::Killer>>,
    stop: AtomicBool,
    /// TLS material of a helper, kept while it runs.
    creds: Mutex<Option<CredsDir>>,
}

impl Slot {
    fn new(kind: ColdJobKind, pool: &str, image: &str) -> Arc<Slot> {
        Arc::new(Slot {
            job: Mutex::new(ColdJob {
                pool: pool.to_string(),
                image: image.to_string(),
                kind,
                state: ColdJobState::Running,
                progress_pct: 0.0,
                error: None,
                sum: None,
            }),
            killer: Mutex::new(None),
            stop: AtomicBool::new(false),
            creds: Mutex::new(None),
        })
    }

    fn update(&self, f: impl FnOnce(&mut ColdJob)) {
        f(&mut self.job.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn snapshot(&self) -> ColdJob {
        self.job.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn running(&self) -> bool {
        self.snapshot().state == ColdJobState::Running
    }

    /// Stops the job: its process is killed, a checksum stops at the next block.
    fn stop(&self) -> bool {
        self.stop.store(true, Ordering::SeqCst);
        let killer = self
            .killer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match killer {
            Some(k) if self.running() => {
                // The helper may have ended and been reaped a moment ago: the pidfd makes
                // that harmless.
                k.kill();
                true
            }
            _ => self.running(),
        }
    }

    /// Watches `tool` to its end and records how it ended.
    fn watch(self: &Arc<Self>, tool: tools::Tool) {
        *self.killer.lock().unwrap_or_else(|p| p.into_inner()) = Some(tool.killer());
        let slot = self.clone();
        tokio::spawn(async move {
            let progress = slot.clone();
            let end = tool
                .wait(move |out| {
                    if let Some(p) = tools::progress_pct(out) {
                        progress.update(|j| j.progress_pct = p);
                    }
                })
                .await;
            slot.update(|j| {
                if end.success {
                    j.state = ColdJobState::Done;
                    j.progress_pct = 100.0;
                } else {
                    j.state = ColdJobState::Failed;
                    j.error = Some(end.reason.clone());
                }
            });
            *slot.creds.lock().unwrap_or_else(|p| p.into_inner()) = None;
        });
    }
}

/// The cold migrations this agent takes part in, by migration id.
#[derive(Default)]
pub struct ColdJobs {
    map: Mutex<HashMap<Uuid, Vec<Arc<Slot>>>>,
}

impl ColdJobs {
    fn slots(&self, id: Uuid) -> Vec<Arc<Slot>> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
            .unwrap_or_default()
    }

    fn add(&self, id: Uuid, slot: Arc<Slot>) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id)
            .or_default()
            .push(slot);
    }

    fn take(&self, id: Uuid) -> Vec<Arc<Slot>> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
            .unwrap_or_default()
    }
}

/// What the destination made for a migration: kept on disk before anything is made.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct ColdRecord {
    /// `(pool, image)` of each target this agent created.
    created: Vec<(String, String)>,
}

/// Export names come from the destination (`ferry-<hex>`); anything else is refused before
/// it reaches an option string.
fn check_export_name(name: &str) -> Result<(), AgentError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(AgentError::bad_request(format!(
            "export name '{name}' is not one Ferry makes"
        )))
    }
}

/// A value inside a QEMU option string: commas doubled.
fn opt(v: &str) -> String {
    v.replace(',', ",,")
}

/// How long a copy target's export waits to be listening.
const LISTEN_WAIT: Duration = Duration::from_secs(10);
/// How long a discard waits for the jobs it stopped to end.
const STOP_WAIT: Duration = Duration::from_secs(10);

impl Agent {
    fn cold_dir(&self, id: Uuid) -> PathBuf {
        self.config.state_dir.join("cold").join(id.to_string())
    }

    fn cold_record_path(&self, id: Uuid) -> PathBuf {
        self.config
            .state_dir
            .join("cold")
            .join(format!("{id}.json"))
    }

    fn cold_record(&self, id: Uuid) -> Option<ColdRecord> {
        let text = std::fs::read_to_string(self.cold_record_path(id)).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn save_cold_record(&self, id: Uuid, rec: &ColdRecord) -> Result<(), AgentError> {
        let path = self.cold_record_path(id);
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(path.parent().unwrap_or(&self.config.state_dir))?;
            let tmp = path.with_extension("json.tmp");
            std::fs::write(&tmp, serde_json::to_vec(rec).unwrap_or_default())?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| AgentError::Persist(format!("cannot write {}: {e}", path.display())))
    }

    /// A scratch directory for one migration's TLS material (removed with the migration).
    fn cold_scratch(&self, id: Uuid) -> Result<PathBuf, AgentError> {
        let dir = self.cold_dir(id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| AgentError::internal(format!("cannot create {}: {e}", dir.display())))?;
        Ok(dir)
    }

    /// A local pool's image this host may read or write for a cold copy: not attached to a
    /// VM whose QEMU runs here.
    async fn cold_image(&self, pool: &str, image: &str) -> Result<PathBuf, AgentError> {
        validate_name("pool name", pool)?;
        validate_name("disk name", image)?;
        let p = self.pool(pool)?;
        if p.shared {
            return Err(AgentError::bad_request(format!(
                "pool {pool} is shared: its disks stay where they are, nothing is copied"
            )));
        }
        let path = p.image_path(image)?;
        if let Some(vm) = self.disk_user(pool, image).await {
            return Err(AgentError::refused(format!(
                "disk {pool}/{image} is attached to VM {vm}, which runs on host {}",
                self.config.name
            )));
        }
        Ok(path)
    }

    /// Destination: an empty target of the source's size, exported for the source to
    /// write, over TLS admitting only the source when this host has TLS material.
    pub async fn cold_receive(
        &self,
        id: Uuid,
        req: &ColdReceiveRequest,
    ) -> Result<ColdReceiveResponse, AgentError> {
        validate_name("pool name", &req.pool)?;
        validate_name("disk name", &req.image)?;
        let local = self.host_tls()?;
        let tls = peer_tls(local.as_ref(), req.peer_host.as_deref(), "cold copy")?;
        let pool = self.pool(&req.pool)?.clone();
        let key = (req.pool.clone(), req.image.clone());
        let mut rec = self.cold_record(id).unwrap_or_default();
        if rec.created.contains(&key) {
            return Err(AgentError::refused(format!(
                "disk {}/{} was already made for migration {id}",
                req.pool, req.image
            )));
        }
        // Recorded before it is made: a crash in between leaves a record of an image that
        // may not exist, never an image nobody knows was ours.
        rec.created.push(key.clone());
        self.save_cold_record(id, &rec)?;
        let forget = |rec: &mut ColdRecord| {
            rec.created.retain(|k| k != &key);
            let _ = self.save_cold_record(id, rec);
        };
        let path = match pool.create_copy_target(&req.image, req.virtual_size) {
            Ok(p) => p,
            Err(e) => {
                forget(&mut rec);
                return Err(e.prefixed(&format!("host {}", self.config.name)));
            }
        };
        let slot = Slot::new(ColdJobKind::Receive, &req.pool, &req.image);
        let name = crate::disk_copy::random_export_name();
        let served = match tls {
            Some(t) => {
                let creds = self
                    .cold_scratch(id)
                    .and_then(|dir| CredsDir::write(&dir, t.local, TlsEndpoint::Server));
                match creds {
                    // Dropped (removed) once qemu-nbd listens: it read the files at its start.
                    Ok(creds) => {
                        self.serve_target(&path, &name, Some((&creds, t.peer_dn())))
                            .await
                    }
                    // Nothing served: the target and its record entry go below.
                    Err(e) => Err(e),
                }
            }
            None => self.serve_target(&path, &name, None).await,
        };
        let (tool, port) = match served {
            Ok(v) => v,
            Err(e) => {
                let _ = pool.remove_image(&req.image);
                forget(&mut rec);
                return Err(e);
            }
        };
        slot.watch(tool);
        self.cold.add(id, slot);
        let export = std::net::SocketAddr::new(self.config.advertised_migration_address(), port);
        tracing::info!(migration = %id, pool = %req.pool, disk = %req.image, %export, "cold copy target exported");
        Ok(ColdReceiveResponse {
            export: export.to_string(),
            export_name: name,
        })
    }

    /// `qemu-nbd` serving `path` on the migration address to one client; returns once it
    /// listens (a lost race for the port is retried).
    async fn serve_target(
        &self,
        path: &std::path::Path,
        name: &str,
        tls: Option<(&CredsDir, String)>,
    ) -> Result<(tools::Tool, u16), AgentError> {
        let address = self.config.migration_address;
        let fixed = (self.config.migration_port != 0)
            .then(|| self.config.migration_port.checked_add(1))
            .flatten();
        let mut last = String::new();
        for _ in 0..5 {
            let port = match fixed {
                Some(p) => p,
                None => crate::disk_copy::free_port(address)?,
            };
            let mut args: Vec<OsString> = Vec::new();
            if let Some((creds, dn)) = &tls {
                args.push("--object".into());
                args.push(
                    format!(
                        "tls-creds-x509,id=ferry-nbd-tls,dir={},endpoint=server,verify-peer=on",
                        opt(creds.as_str()?)
                    )
                    .into(),
                );
                args.push("--object".into());
                args.push(format!("authz-simple,id=ferry-nbd-authz,identity={}", opt(dn)).into());
                args.push("--tls-creds=ferry-nbd-tls".into());
                args.push("--tls-authz=ferry-nbd-authz".into());
            }
            for a in [
                "--format=qcow2".to_string(),
                format!("--bind={address}"),
                format!("--port={port}"),
                format!("--export-name={name}"),
                "--shared=1".to_string(),
                "--cache=none".to_string(),
            ] {
                args.push(a.into());
            }
            args.push(path.as_os_str().to_owned());
            let mut tool = tools::spawn("qemu-nbd", &args)?;
            match tools::wait_listening(&mut tool, port, LISTEN_WAIT).await {
                Ok(()) => return Ok((tool, port)),
                Err(why) => {
                    tool.killer().kill();
                    let end = tool.wait(|_| {}).await;
                    last = format!("qemu-nbd on {address}:{port}: {why}; {}", end.reason);
                    if fixed.is_some() {
                        break;
                    }
                }
            }
        }
        Err(AgentError::process(format!(
            "cannot export the copy target: {last}"
        )))
    }

    /// Source: copy a local-pool image into the destination's export.
    pub async fn cold_send(
        &self,
        id: Uuid,
        req: &ColdSendRequest,
    ) -> Result<ColdStatus, AgentError> {
        let path = self.cold_image(&req.pool, &req.image).await?;
        if !path.is_file() {
            return Err(AgentError::not_found(format!(
                "no disk '{}' in pool {} on host {}",
                req.image, req.pool, self.config.name
            )));
        }
        let export = crate::targets::disk_export(&req.export)?;
        check_export_name(&req.export_name)?;
        let local = self.host_tls()?;
        let tls = peer_tls(local.as_ref(), req.peer_host.as_deref(), "cold copy")?;
        if let Some(busy) = self.cold.slots(id).iter().find(|s| {
            s.running() && s.snapshot().image == req.image && s.snapshot().pool == req.pool
        }) {
            return Err(AgentError::refused(format!(
                "disk {}/{} is busy with a {:?} job of this migration",
                req.pool,
                req.image,
                busy.snapshot().kind
            )));
        }
        let slot = Slot::new(ColdJobKind::Send, &req.pool, &req.image);
        let mut target = format!(
            "driver=raw,file.driver=nbd,file.server.type=inet,file.server.host={},file.server.port={},file.export={}",
            export.ip(),
            export.port(),
            req.export_name
        );
        let mut args: Vec<OsString> = vec!["convert".into()];
        if let Some(t) = tls {
            let creds = CredsDir::write(&self.cold_scratch(id)?, t.local, TlsEndpoint::Client)?;
            args.push("--object".into());
            args.push(
                format!(
                    "tls-creds-x509,id=ferry-nbd-tls,dir={},endpoint=client",
                    opt(creds.as_str()?)
                )
                .into(),
            );
            target.push_str(&format!(
                ",file.tls-creds=ferry-nbd-tls,file.tls-hostname={}",
                opt(&t.peer_hostname())
            ));
            // Kept while qemu-img runs (it reads the files when it connects).
            *slot.creds.lock().unwrap_or_else(|p| p.into_inner()) = Some(creds);
        }
        for a in ["-p", "-n", "--target-is-zero", "-f", "qcow2"] {
            args.push(a.into());
        }
        if req.max_bandwidth_bytes > 0 {
            args.push("-r".into());
            args.push(req.max_bandwidth_bytes.to_string().into());
        }
        args.push(path.as_os_str().to_owned());
        args.push("--target-image-opts".into());
        args.push(target.into());
        let tool = tools::spawn("qemu-img", &args)?;
        slot.watch(tool);
        self.cold.add(id, slot);
        tracing::info!(migration = %id, pool = %req.pool, disk = %req.image, export = %export, "cold copy started");
        self.cold_status(id).await
    }

    /// Either side: checksum an image (the destination's once its export closed).
    pub async fn cold_checksum(
        &self,
        id: Uuid,
        req: &ColdDiskRequest,
    ) -> Result<ColdStatus, AgentError> {
        let path = self.cold_image(&req.pool, &req.image).await?;
        if let Some(s) = self.cold.slots(id).iter().find(|s| {
            let j = s.snapshot();
            s.running() && j.pool == req.pool && j.image == req.image
        }) {
            return Err(AgentError::refused(format!(
                "disk {}/{} is still busy with a {:?} job; checksum it once that ended",
                req.pool,
                req.image,
                s.snapshot().kind
            )));
        }
        let slot = Slot::new(ColdJobKind::Checksum, &req.pool, &req.image);
        self.cold.add(id, slot.clone());
        tokio::spawn(async move {
            let worker = slot.clone();
            let outcome =
                tokio::task::spawn_blocking(move || crate::disk_sum::checksum(&path, &worker.stop))
                    .await;
            slot.update(|j| match outcome {
                Ok(Ok(sum)) => {
                    j.state = ColdJobState::Done;
                    j.progress_pct = 100.0;
                    j.sum = Some(sum);
                }
                Ok(Err(e)) => {
                    j.state = ColdJobState::Failed;
                    j.error = Some(e.to_string());
                }
                Err(e) => {
                    j.state = ColdJobState::Failed;
                    j.error = Some(format!("the checksum task failed: {e}"));
                }
            });
        });
        self.cold_status(id).await
    }

    pub async fn cold_status(&self, id: Uuid) -> Result<ColdStatus, AgentError> {
        let slots = self.cold.slots(id);
        let rec = self.cold_record(id);
        if slots.is_empty() && rec.is_none() {
            return Err(AgentError::not_found(format!(
                "host {} knows nothing of cold migration {id}",
                self.config.name
            )));
        }
        Ok(ColdStatus {
            jobs: slots.iter().map(|s| s.snapshot()).collect(),
            created: rec
                .unwrap_or_default()
                .created
                .iter()
                .map(|(p, i)| format!("{p}/{i}"))
                .collect(),
        })
    }

    /// Stops every job of the migration and waits (bounded) for them to end.
    async fn stop_cold_jobs(&self, id: Uuid) -> u32 {
        let slots = self.cold.take(id);
        let mut stopped = 0;
        for s in &slots {
            if s.stop() {
                stopped += 1;
            }
        }
        let deadline = tokio::time::Instant::now() + STOP_WAIT;
        while slots.iter().any(|s| s.running()) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stopped
    }

    /// Rollback: stop everything of the migration and delete the targets it created here.
    /// Idempotent.
    pub async fn cold_discard(&self, id: Uuid) -> Result<ColdCleanup, AgentError> {
        let stopped = self.stop_cold_jobs(id).await;
        let mut rec = self.cold_record(id).unwrap_or_default();
        let mut deleted = Vec::new();
        let mut failed = Vec::new();
        for (pool, image) in rec.created.clone() {
            if let Some(vm) = self.disk_user(&pool, &image).await {
                failed.push(format!("{pool}/{image} is attached to VM {vm} here; kept"));
                continue;
            }
            match self.pool(&pool).and_then(|p| p.remove_image(&image)) {
                Ok(()) => {
                    deleted.push(format!("{pool}/{image}"));
                    rec.created.retain(|k| k != &(pool.clone(), image.clone()));
                }
                Err(e) => failed.push(format!("{pool}/{image}: {e}")),
            }
        }
        if !failed.is_empty() {
            self.save_cold_record(id, &rec)?;
            return Err(AgentError::storage(format!(
                "could not delete every copy target of migration {id}: {}",
                failed.join("; ")
            )));
        }
        self.forget_cold(id);
        tracing::info!(migration = %id, ?deleted, stopped, "cold migration discarded");
        Ok(ColdCleanup { deleted, stopped })
    }

    /// The migration is over: its targets are the VM's disks now. Stops what still runs
    /// and forgets the migration. Idempotent.
    pub async fn cold_finish(&self, id: Uuid) -> Result<ColdCleanup, AgentError> {
        let stopped = self.stop_cold_jobs(id).await;
        self.forget_cold(id);
        tracing::info!(migration = %id, stopped, "cold migration finished");
        Ok(ColdCleanup {
            deleted: Vec::new(),
            stopped,
        })
    }

    fn forget_cold(&self, id: Uuid) {
        let _ = std::fs::remove_file(self.cold_record_path(id));
        let _ = std::fs::remove_dir_all(self.cold_dir(id));
    }

    /// At start: TLS scratch directories of cold copies a previous agent ran (their helpers
    /// died with it). The records of created targets stay for the server's discard.
    pub(crate) fn clean_cold_scratch(&self) {
        let Ok(entries) = std::fs::read_dir(self.config.state_dir.join("cold")) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_names_are_only_what_ferry_makes() {
        check_export_name("ferry-0123abcd").unwrap();
        check_export_name(&crate::disk_copy::random_export_name()).unwrap();
        for bad in ["", "a,b", "x/y", "name with space", &"a".repeat(65)] {
            assert!(check_export_name(bad).is_err(), "{bad}");
        }
        assert_eq!(opt("a,b"), "a,,b");
    }
}
