//! Storage copy: moving local-pool disks with a running VM (the QMP sequence is drawn in
//! [`ferry_qmp::MirrorArgs`]' module, `ferry_qmp::block`).
//!
//! Destination: creates empty targets (done by the host), exports them over NBD on the
//! migration address, holds the vCPUs after the stream (`-S`) and, once the stream
//! completed, drops the exports and starts the guest.
//!
//! Source: an NBD client node per disk and a mirror into it, copying in the background
//! and switched to write-blocking by [`ferry_migration::disk_sync`]'s rule (once in sync,
//! or when the guest out-writes the link). Once every mirror is in sync with writes
//! blocking (each guest write lands on both sides before it completes) the memory
//! migration starts with `pause-before-switchover`; in that pause
//! (vCPUs stopped) the mirrors are completed without pivoting, so the destination's disks
//! hold every write, and only then does the switch-over continue. Any failure before that
//! point cancels the migration: the guest keeps running on its own, unchanged disk.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_api::DiskCopyProgress;
use ferry_migration::disk_sync::CopyWatch;
use ferry_qmp::{BlockJobInfo, MigrationStatus, MirrorArgs, QmpClient, QmpEvent};
use tokio::sync::broadcast;

use crate::error::AgentError;
use crate::qemu_tls::PeerTls;
use crate::runtime::{qmp_err, QemuVm};

/// The guest's format node of data disk `i` (fixed by the command line).
pub fn disk_node(i: usize) -> String {
    format!("disk{i}")
}

/// A fresh export name: random per migration, so nothing about the VM or its disks can be
/// guessed from it (and a name from an earlier migration never reaches this one's export).
pub(crate) fn random_export_name() -> String {
    format!("ferry-{}", uuid::Uuid::new_v4().simple())
}

/// The source's NBD client node for disk `i`, and the id of the mirror job writing to it.
pub(crate) fn copy_node(i: usize) -> String {
    format!("copy-disk{i}")
}

/// How long completing the mirrors at switch-over may take (the guest is paused).
const FINISH_TIMEOUT: Duration = Duration::from_secs(120);
/// How long an aborted mirror gets to wind down.
const ABORT_TIMEOUT: Duration = Duration::from_secs(10);

/// A port on `address` nothing listens on right now (QEMU's NBD server cannot report the
/// port it picked, so the agent picks one; a lost race is retried).
pub(crate) fn free_port(address: IpAddr) -> Result<u16, AgentError> {
    std::net::TcpListener::bind((address, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| AgentError::internal(format!("no free port on {address}: {e}")))
}

pub(crate) fn progress_of(disk: &str, job: &BlockJobInfo) -> DiskCopyProgress {
    DiskCopyProgress {
        disk: disk.to_string(),
        total_bytes: job.len,
        copied_bytes: job.offset,
        ready: job.ready,
        writes_blocking: job.actively_synced,
        status: ferry_api::BlockJobStatus::parse(&job.status),
        error: job.error.clone(),
    }
}

impl QemuVm {
    pub(crate) fn disk_label(&self, i: usize) -> String {
        self.record()
            .spec
            .disks
            .get(i)
            .map(|d| format!("{}/{}", d.pool, d.image))
            .unwrap_or_else(|| format!("disk{i}"))
    }

    /// Destination: serve `disks` over NBD on `address` (the migration network), writable,
    /// on `fixed_port` if the host has fixed ports (NAT/relay forwarding), else any free
    /// port; over QEMU's TLS admitting only the peer when `tls` is given. Returns the port
    /// and each disk's export name (random, in `disks` order).
    pub async fn export_disks(
        &self,
        address: IpAddr,
        fixed_port: Option<u16>,
        disks: &[usize],
        tls: Option<PeerTls<'_>>,
    ) -> Result<(u16, Vec<String>), AgentError> {
        let host = address.to_string();
        let tls = match tls {
            Some(t) => Some(t.nbd_server(&self.qmp, &self.dir).await?),
            None => None,
        };
        let start = |port| self.qmp.nbd_server_start_with(&host, port, tls.as_ref());
        let port = match fixed_port {
            Some(port) => {
                start(port)
                    .await
                    .map_err(|e| qmp_err("nbd-server-start", e))?;
                port
            }
            None => {
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    let port = free_port(address)?;
                    match start(port).await {
                        Ok(()) => break port,
                        Err(e) if attempt >= 5 => return Err(qmp_err("nbd-server-start", e)),
                        Err(_) => continue,
                    }
                }
            }
        };
        let names = self.add_exports(disks).await?;
        Ok((port, names))
    }

    async fn add_exports(&self, disks: &[usize]) -> Result<Vec<String>, AgentError> {
        let mut names = Vec::new();
        for &i in disks {
            let name = random_export_name();
            self.qmp
                .block_export_add_nbd(
                    &format!("export-{}", disk_node(i)),
                    &disk_node(i),
                    &name,
                    true,
                )
                .await
                .map_err(|e| qmp_err("block-export-add", e))?;
            names.push(name);
        }
        Ok(names)
    }

    /// Destination: once the stream completed, drop the exports (they hold write access
    /// the guest's devices do not share) and start the vCPUs. Driven by QEMU's MIGRATION
    /// events so the guest waits only microseconds longer than without disks.
    pub fn release_after_stream(self: &Arc<Self>) {
        let vm = self.clone();
        let mut events = self.qmp.events();
        tokio::spawn(async move {
            loop {
                match vm.qmp.query_migrate().await.map(|i| i.status) {
                    Ok(Some(MigrationStatus::Completed)) => break,
                    Ok(Some(s)) if s.is_finished() => return,
                    Err(_) => return, // QEMU is gone
                    _ => {}
                }
                next_event(&mut events).await;
            }
            if let Err(e) = vm.qmp.nbd_server_stop().await {
                tracing::warn!(vm = %vm.name, "nbd-server-stop: {e}");
            }
            let _ = vm.update_record(|r| r.exports_disks = false);
            match vm.qmp.cont().await {
                Ok(()) => tracing::info!(vm = %vm.name, "disk exports closed; guest started"),
                Err(e) => {
                    tracing::error!(vm = %vm.name, "cannot start the guest after the stream: {e}")
                }
            }
        });
    }

    /// Source: mirror `disks` into the destination's NBD server at `host`:`port`, each to
    /// its export in `names`, over QEMU's TLS to the peer only when `tls` is given.
    /// `speed`: bytes/s per disk, 0 = unlimited. On any failure nothing stays behind.
    pub async fn start_copies(
        &self,
        host: &str,
        port: u16,
        disks: &[usize],
        names: &[String],
        speed: u64,
        tls: Option<PeerTls<'_>>,
    ) -> Result<(), AgentError> {
        if names.len() != disks.len() {
            return Err(AgentError::bad_request(format!(
                "{} disks to copy but {} export names",
                disks.len(),
                names.len()
            )));
        }
        let tls = match tls {
            Some(t) => Some(t.nbd_client(&self.qmp, &self.dir).await?),
            None => None,
        };
        *self.copy_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        *self.disk_progress.lock().unwrap_or_else(|p| p.into_inner()) = disks
            .iter()
            .map(|&i| DiskCopyProgress {
                disk: self.disk_label(i),
                status: ferry_api::BlockJobStatus::Starting,
                ..Default::default()
            })
            .collect();
        // Recorded first, so an abort (or a restarted agent) knows what to undo.
        self.update_record(|r| r.copying_disks = disks.to_vec())?;
        for (&i, name) in disks.iter().zip(names) {
            let label = self.disk_label(i);
            if let Err(e) = self
                .qmp
                .blockdev_add_nbd_with(&copy_node(i), host, port, name, tls.as_ref())
                .await
            {
                self.abort_copies().await;
                return Err(AgentError::upstream(format!(
                    "cannot reach the destination's disk export {host}:{port} for {label}: {e}"
                )));
            }
            let args = MirrorArgs::full(
                &copy_node(i),
                &disk_node(i),
                &copy_node(i),
                (speed > 0).then_some(speed),
            )
            .background();
            if let Err(e) = self.qmp.blockdev_mirror(&args).await {
                self.abort_copies().await;
                return Err(AgentError::internal(format!(
                    "cannot start copying {label}: {e}"
                )));
            }
        }
        self.watch_copies(disks);
        Ok(())
    }

    /// Switches each mirror from background copying to write-blocking when
    /// [`CopyWatch`] says so. Ends when every disk switched or the copy is over.
    pub(crate) fn watch_copies(&self, disks: &[usize]) {
        let qmp = self.qmp.clone();
        let name = self.name.clone();
        let mut pending: Vec<(usize, String, CopyWatch)> = disks
            .iter()
            .map(|&i| (i, self.disk_label(i), CopyWatch::default()))
            .collect();
        let started = std::time::Instant::now();
        tokio::spawn(async move {
            while !pending.is_empty() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let Ok(jobs) = qmp.query_block_jobs().await else {
                    return; // QEMU is gone
                };
                let now = started.elapsed().as_millis() as u64;
                let mut still = Vec::new();
                for (i, label, mut watch) in pending {
                    let Some(job) = jobs.iter().find(|j| j.device == copy_node(i)) else {
                        continue; // aborted or finished
                    };
                    if job.is_concluded() {
                        continue;
                    }
                    match watch.observe(job.ready, job.outstanding(), now) {
                        Some(why) => match qmp.block_job_block_writes(&copy_node(i)).await {
                            Ok(()) => tracing::info!(vm = %name, disk = %label, "{}", why.reason()),
                            Err(e) => {
                                tracing::warn!(vm = %name, disk = %label, "block-job-change: {e}");
                                still.push((i, label, watch));
                            }
                        },
                        None => still.push((i, label, watch)),
                    }
                }
                pending = still;
            }
        });
    }

    /// Source: each disk's copy as QEMU's jobs report it (the last known state once a job
    /// is gone, e.g. after the switch-over).
    pub async fn disk_copy_progress(&self) -> Vec<DiskCopyProgress> {
        let copying = self.record().copying_disks;
        if !copying.is_empty() {
            if let Ok(jobs) = self.qmp.query_block_jobs().await {
                let mut snapshot = self.disk_progress.lock().unwrap_or_else(|p| p.into_inner());
                for (slot, &i) in copying.iter().enumerate() {
                    if let Some(job) = jobs.iter().find(|j| j.device == copy_node(i)) {
                        let p = progress_of(&self.disk_label(i), job);
                        match snapshot.get_mut(slot) {
                            Some(s) => *s = p,
                            None => snapshot.push(p),
                        }
                    }
                }
            }
        }
        self.disk_progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Source: refuses to start the memory migration before every disk is in sync.
    pub async fn check_disks_in_sync(&self) -> Result<(), AgentError> {
        let disks = self.disk_copy_progress().await;
        if ferry_api::disks_in_sync(&disks) {
            return Ok(());
        }
        let behind: Vec<String> = disks
            .iter()
            .filter(|d| !d.ready || d.error.is_some())
            .map(|d| {
                let why = d.error.clone().unwrap_or_else(|| d.status.to_string());
                format!("{} ({why})", d.disk)
            })
            .collect();
        Err(AgentError::refused(format!(
            "disks not in sync yet: {}",
            behind.join(", ")
        )))
    }

    /// Source: at `pre-switchover` (vCPUs stopped) complete every mirror and continue the
    /// switch-over; if a mirror cannot complete, cancel the migration (QEMU resumes the
    /// guest here) and keep the reason for the migration status.
    pub fn finish_copies_at_switch_over(&self, mut events: broadcast::Receiver<QmpEvent>) {
        let qmp = self.qmp.clone();
        let name = self.name.clone();
        let copying = self.record().copying_disks;
        let labels: Vec<String> = copying.iter().map(|&i| self.disk_label(i)).collect();
        let error_slot = self.copy_error.clone();
        let progress = self.disk_progress.clone();
        tokio::spawn(async move {
            loop {
                match qmp.query_migrate().await.map(|i| i.status) {
                    Ok(Some(MigrationStatus::PreSwitchover)) => break,
                    Ok(Some(s)) if s.is_finished() => return,
                    Err(_) => return,
                    _ => {}
                }
                next_event(&mut events).await;
            }
            let started = std::time::Instant::now();
            let outcome = complete_mirrors(&qmp, &copying, &labels, &progress).await;
            let outcome = match outcome {
                Ok(()) => qmp
                    .migrate_continue(MigrationStatus::PreSwitchover)
                    .await
                    .map_err(|e| format!("migrate-continue after the disk copy: {e}")),
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) => tracing::info!(
                    vm = %name,
                    ms = started.elapsed().as_millis() as u64,
                    "disk copies completed in the switch-over pause"
                ),
                Err(reason) => {
                    tracing::error!(vm = %name, "disk copy could not complete: {reason}");
                    *error_slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
                    let _ = qmp.migrate_cancel().await;
                }
            }
        });
    }

    /// Source: stop copying (a rollback). The guest's own disks are untouched; the mirror
    /// jobs and NBD client nodes go away. Idempotent.
    pub async fn abort_copies(&self) {
        let copying = self.record().copying_disks;
        if copying.is_empty() {
            return;
        }
        for &i in &copying {
            let _ = self.qmp.block_job_cancel(&copy_node(i), true).await;
        }
        let deadline = tokio::time::Instant::now() + ABORT_TIMEOUT;
        while tokio::time::Instant::now() < deadline {
            let Ok(jobs) = self.qmp.query_block_jobs().await else {
                break;
            };
            let running = jobs
                .iter()
                .any(|j| copying.iter().any(|&i| j.device == copy_node(i)) && !j.is_concluded());
            if !running {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Keep the last progress (with the error, if a job failed) for the status.
        let _ = self.disk_copy_progress().await;
        for &i in &copying {
            let _ = self.qmp.job_dismiss(&copy_node(i)).await;
            if let Err(e) = self.qmp.blockdev_del(&copy_node(i)).await {
                tracing::debug!(vm = %self.name, "blockdev-del {}: {e}", copy_node(i));
            }
        }
        let _ = self.update_record(|r| r.copying_disks.clear());
        tracing::info!(vm = %self.name, "disk copies aborted; the guest keeps its own disks");
    }
}

/// Completes ready mirrors without pivoting, waits for them, and removes jobs and nodes.
async fn complete_mirrors(
    qmp: &QmpClient,
    copying: &[usize],
    labels: &[String],
    progress: &Arc<Mutex<Vec<DiskCopyProgress>>>,
) -> Result<(), String> {
    for (slot, &i) in copying.iter().enumerate() {
        qmp.block_job_cancel(&copy_node(i), false)
            .await
            .map_err(|e| format!("cannot complete the copy of {}: {e}", labels[slot]))?;
    }
    let deadline = tokio::time::Instant::now() + FINISH_TIMEOUT;
    let finished = loop {
        let jobs = qmp
            .query_block_jobs()
            .await
            .map_err(|e| format!("query-block-jobs: {e}"))?;
        let mine: Vec<&BlockJobInfo> = jobs
            .iter()
            .filter(|j| copying.iter().any(|&i| j.device == copy_node(i)))
            .collect();
        if mine.iter().all(|j| j.is_concluded()) {
            break mine.into_iter().cloned().collect::<Vec<_>>();
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "the disk copies did not complete within {}s of the switch-over pause",
                FINISH_TIMEOUT.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let mut failure = None;
    {
        let mut snapshot = progress.lock().unwrap_or_else(|p| p.into_inner());
        for (slot, &i) in copying.iter().enumerate() {
            if let Some(job) = finished.iter().find(|j| j.device == copy_node(i)) {
                if let Some(s) = snapshot.get_mut(slot) {
                    *s = progress_of(&labels[slot], job);
                }
                if let Some(e) = &job.error {
                    failure.get_or_insert(format!("copying {} failed: {e}", labels[slot]));
                }
            }
        }
    }
    for &i in copying {
        let _ = qmp.job_dismiss(&copy_node(i)).await;
        let _ = qmp.blockdev_del(&copy_node(i)).await;
    }
    match failure {
        Some(f) => Err(f),
        None => Ok(()),
    }
}

/// Waits for the next QMP event, or 100 ms (events can be missed when the receiver lags;
/// the caller re-reads the state either way).
async fn next_event(events: &mut broadcast::Receiver<QmpEvent>) {
    let tick = tokio::time::sleep(Duration::from_millis(100));
    tokio::pin!(tick);
    tokio::select! {
        r = events.recv() => {
            if matches!(r, Err(broadcast::error::RecvError::Closed)) {
                (&mut tick).await;
            }
        }
        _ = &mut tick => {}
    }
}
