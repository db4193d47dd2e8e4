//! The storage-copy half of a migration: local-pool disks are mirrored to the destination
//! while the guest runs (`CopyingDisks`), before memory moves. The agents do the QEMU
//! work (see `ferry_agent::disk_copy`); this side watches both ends and decides.

use std::time::{Duration, Instant};

use chrono::Utc;
use ferry_api::client::AgentClient;
use ferry_api::*;

use super::{Abort, Run, AGENT_SILENCE_LIMIT};

/// How often the copy's progress goes into the event log.
const PROGRESS_EVENT_EVERY: Duration = Duration::from_secs(2);
/// After a rollback, how long the destination gets to come back so its partial copy
/// targets can be removed.
pub(super) const DEST_CLEANUP_WAIT: Duration = Duration::from_secs(60);

fn mib(b: u64) -> u64 {
    b >> 20
}

impl Run {
    /// Starts the copy on the source and follows it until every disk is in sync. Fails
    /// when a copy fails, the destination's QEMU exits or its agent stops answering, or
    /// nothing moves for the progress timeout.
    pub(super) async fn copy_disks(
        &mut self,
        source: &AgentClient,
        dest: &AgentClient,
        export: &str,
    ) -> Result<(), Abort> {
        let req = DiskCopyRequest {
            export: export.to_string(),
            disks: self.copies.iter().map(|c| c.index).collect(),
            max_bandwidth_bytes: self
                .m
                .options
                .max_bandwidth_mib
                .map(|m| m << 20)
                .unwrap_or(0),
        };
        self.outgoing_started = true;
        source
            .start_disk_copy(&self.m.vm, &req)
            .await
            .map_err(|e| {
                Abort::fail(format!(
                    "source {} could not start copying disks to {export}: {e}",
                    self.m.source
                ))
            })?;
        let poll = self.server.config.poll_interval;
        let progress_timeout = Duration::from_secs(
            self.m
                .options
                .progress_timeout_s
                .unwrap_or(DEFAULT_PROGRESS_TIMEOUT_S),
        );
        let started = Instant::now();
        let (mut source_ok, mut dest_ok) = (Instant::now(), Instant::now());
        let mut last_progress = (0u64, Instant::now());
        let mut last_event = Instant::now();
        loop {
            self.check_cancel()?;
            let disks = match source.migration_status(&self.m.vm).await {
                Ok(s) => {
                    source_ok = Instant::now();
                    s.progress.disks
                }
                Err(e) if source_ok.elapsed() > AGENT_SILENCE_LIMIT => {
                    return Err(Abort::fail(format!(
                        "source {} stopped answering during the disk copy: {e}",
                        self.m.source
                    )))
                }
                Err(_) => {
                    tokio::time::sleep(poll).await;
                    continue;
                }
            };
            if let Some(d) = disks.iter().find(|d| d.error.is_some()) {
                return Err(Abort::fail(format!(
                    "copying disk {} to {} failed: {}",
                    d.disk,
                    self.m.destination,
                    d.error.clone().unwrap_or_default()
                )));
            }
            if let Some(d) = disks.iter().find(|d| d.status.is_concluded() && !d.ready) {
                return Err(Abort::fail(format!(
                    "copying disk {} stopped before it was in sync ({})",
                    d.disk, d.status
                )));
            }
            match dest.vm(&self.m.vm).await {
                Ok(rt) if matches!(rt.state, VmState::Crashed | VmState::Stopped) => {
                    return Err(Abort::fail(format!(
                        "destination QEMU on {} exited during the disk copy: {}",
                        self.m.destination,
                        rt.exit_reason.unwrap_or_else(|| "no reason given".into())
                    )))
                }
                Ok(_) => dest_ok = Instant::now(),
                Err(e) if dest_ok.elapsed() > AGENT_SILENCE_LIMIT => {
                    return Err(Abort::fail(format!(
                        "destination {} stopped answering during the disk copy: {e}",
                        self.m.destination
                    )))
                }
                Err(_) => {}
            }
            let (copied, total, outstanding) = disk_totals(&disks);
            if copied > last_progress.0 {
                last_progress = (copied, Instant::now());
            }
            let rate = (copied as f64 / started.elapsed().as_secs_f64().max(0.001)) as u64;
            self.m.progress = Some(MigrationProgress {
                qemu_status: MigrationStatus::None,
                elapsed_ms: started.elapsed().as_millis() as u64,
                bandwidth_bytes_per_s: rate,
                disks: disks.clone(),
                ..Default::default()
            });
            self.m.updated_at = Utc::now();
            self.persist();
            if disks_in_sync(&disks) {
                self.advance(
                    PhaseEvent::DisksInSync,
                    format!(
                        "{} disk(s) in sync with {} after {:.1}s: {} MiB copied; guest writes now reach both hosts",
                        disks.len(),
                        self.m.destination,
                        started.elapsed().as_secs_f64(),
                        mib(copied)
                    ),
                    serde_json::to_value(&disks).unwrap_or_default(),
                );
                return Ok(());
            }
            if last_event.elapsed() >= PROGRESS_EVENT_EVERY {
                last_event = Instant::now();
                self.event(
                    "migration.disks",
                    Outcome::Info,
                    format!(
                        "copying disks: {} / {} MiB, {} MiB outstanding, {} MiB/s",
                        mib(copied),
                        mib(total),
                        mib(outstanding),
                        mib(rate)
                    ),
                    serde_json::json!({
                        "copied_bytes": copied, "total_bytes": total,
                        "outstanding_bytes": outstanding, "bytes_per_s": rate, "disks": disks,
                    }),
                );
            }
            if last_progress.1.elapsed() > progress_timeout {
                return Err(Abort::fail(format!(
                    "the disk copy made no progress for {}s (progress timeout)",
                    progress_timeout.as_secs()
                )));
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// After a rollback whose first destination clean-up failed: retry for a while (an
    /// agent that restarts adopts its QEMU and can then remove it and its partial copy
    /// targets). Returns the last error if it never succeeded.
    pub(super) async fn retry_destination_cleanup(&self) -> Result<(), String> {
        let deadline = Instant::now() + DEST_CLEANUP_WAIT;
        loop {
            let outcome = match self.agent(&self.m.destination) {
                Ok(dest) => dest.remove(&self.m.vm).await.map_err(|e| e.to_string()),
                Err(a) => Err(a.reason),
            };
            match outcome {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    }

    /// After the destination runs: the source's copies of moved disks go, unless the
    /// operator asked to keep them.
    pub(super) async fn retire_source_disks(&self) {
        if self.copies.is_empty() {
            return;
        }
        let labels: Vec<String> = self.copies.iter().map(|c| c.label()).collect();
        if self.m.options.keep_source {
            self.event(
                "migration.source_disks",
                Outcome::Info,
                format!(
                    "kept the source copies of {} on {} (--keep-source)",
                    labels.join(", "),
                    self.m.source
                ),
                serde_json::json!({ "kept": labels }),
            );
            return;
        }
        let Ok(source) = self.agent(&self.m.source) else {
            return;
        };
        let mut failed = Vec::new();
        for c in &self.copies {
            if let Err(e) = source.delete_disk(&c.pool, &c.image).await {
                failed.push(format!("{}: {e}", c.label()));
            }
        }
        let (outcome, message) = if failed.is_empty() {
            (
                Outcome::Ok,
                format!(
                    "deleted the source copies of {} on {}",
                    labels.join(", "),
                    self.m.source
                ),
            )
        } else {
            (
                Outcome::Error,
                format!(
                    "could not delete source copies on {}: {}",
                    self.m.source,
                    failed.join("; ")
                ),
            )
        };
        self.event(
            "migration.source_disks",
            outcome,
            message,
            serde_json::json!({ "disks": labels, "failed": failed }),
        );
    }
}
