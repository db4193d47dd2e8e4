//! A cold migration's run (the machine is [`ferry_migration::cold`]): each local-pool disk
//! of the stopped VM is copied into an empty target the destination made, both hosts
//! checksum their copy, and only when every copy matches does the record move
//! (`Completed`, the VM still stopped); `clean_up` then deletes the source's disks and
//! tells both agents the migration is over. Anything before that rolls back: the
//! destination deletes the targets it made (the source was only read).
//!
//! A server restart in the middle rolls the copy back too (the VM stays stopped on the
//! source; run the move again).

use std::time::{Duration, Instant};

use chrono::Utc;
use ferry_api::*;
use ferry_migration::cold::{verify, ColdEvent};

use super::{HoldPoint, Next, Run, Step, Why};

const COLD_POLL: Duration = Duration::from_millis(250);
/// A copy target's export closes (and flushes) once the copy ended: at most this long.
const EXPORT_CLOSE_WAIT: Duration = Duration::from_secs(60);

/// How a wait for an agent's job ended.
enum Job {
    Done(ColdJob),
    Failed(String),
    Cancel,
}

impl Run {
    fn cold_run(&self) -> ColdRun {
        self.m.run.cold.as_deref().cloned().unwrap_or_default()
    }

    fn cold_mut(&mut self) -> &mut ColdRun {
        let n = self.m.run.copies.len();
        let c = self.m.run.cold.get_or_insert_with(Default::default);
        c.copied.resize(n, false);
        c.verified.resize(n, false);
        c
    }

    async fn cold_advance(
        &mut self,
        ev: ColdEvent,
        message: String,
        data: serde_json::Value,
        vm_state: Option<VmState>,
    ) -> Step<()> {
        let from = self.cold_run().step;
        let next = from.next(ev)?;
        let mut m = self.m.clone();
        m.run.cold.get_or_insert_with(Default::default).step = next;
        m.phase = next.phase();
        m.updated_at = Utc::now();
        if next.is_terminal() {
            m.finished_at = Some(m.updated_at);
        }
        let outcome = match m.phase {
            Phase::Failed => Outcome::Error,
            Phase::Completed | Phase::Cancelled => Outcome::Ok,
            _ => Outcome::Info,
        };
        let mut data = data;
        if let serde_json::Value::Object(o) = &mut data {
            o.insert("cold_step".into(), next.as_str().into());
        }
        let event = self.new_event(EventKind::MigrationPhase, outcome, message.clone(), data);
        self.save_durably(&m, Some(&event), vm_state).await?;
        tracing::info!(%from, to = %next, "{message}");
        self.m = m;
        Ok(())
    }

    pub(super) async fn drive_cold(&mut self, next: Next) -> Step<()> {
        let why = match next {
            Next::Begin => match self.cold_copy().await? {
                Some(why) => why,
                None => {
                    self.clean_up().await?;
                    return Ok(());
                }
            },
            Next::Settle(why) => why,
            Next::CleanUp => {
                self.clean_up().await?;
                return Ok(());
            }
            Next::Done => return Ok(()),
            other => Why::Failure(format!("a cold migration has no step {other:?}")),
        };
        if self.cold_run().step == ColdStep::Completed {
            // The move is durable: only its clean-up can be left.
            self.clean_up().await?;
            return Ok(());
        }
        self.cold_roll_back(&why).await
    }

    /// Copies and verifies every disk, then commits. `Some(why)`: it must roll back.
    async fn cold_copy(&mut self) -> Step<Option<Why>> {
        let labels: Vec<String> = self.m.run.copies.iter().map(|c| c.label()).collect();
        self.cold_mut();
        self.cold_advance(
            ColdEvent::Start,
            format!(
                "cold migration: copying {} local disk(s) of stopped VM {} from {} to {}{}",
                labels.len(),
                self.m.vm,
                self.m.source,
                self.m.destination,
                if labels.is_empty() {
                    String::new()
                } else {
                    format!(": {}", labels.join(", "))
                }
            ),
            serde_json::json!({"disks": labels}),
            None,
        )
        .await?;
        for k in 0..self.m.run.copies.len() {
            if self.cold_run().copied.get(k).copied().unwrap_or(false) {
                continue;
            }
            if let Some(why) = self.copy_one(k).await? {
                return Ok(Some(why));
            }
            if k == 0 {
                self.hold(HoldPoint::CopyingDisks).await;
            }
        }
        self.cold_advance(
            ColdEvent::DisksCopied,
            format!(
                "every disk of VM {} copied; verifying the copies",
                self.m.vm
            ),
            serde_json::json!({}),
            None,
        )
        .await?;
        for k in 0..self.m.run.copies.len() {
            if let Some(why) = self.verify_one(k).await? {
                return Ok(Some(why));
            }
        }
        let bytes: u64 = self.m.run.copies.iter().map(|c| c.actual_size).sum();
        let report = MigrationReport {
            total_time_ms: self.started.elapsed().as_millis() as u64,
            disk_bytes_copied: bytes,
            disks_verified: Some(self.m.run.copies.len() as u32),
            ..Default::default()
        };
        self.m.report = Some(report.clone());
        // No QEMU on the source to retire: the VM is stopped.
        self.m.run.source_retired = true;
        self.cold_advance(
            ColdEvent::Verified,
            format!(
                "VM {} (stopped) now belongs to {}; {}",
                self.m.vm,
                self.m.destination,
                report.summary()
            ),
            serde_json::to_value(&report).unwrap_or_default(),
            Some(VmState::Stopped),
        )
        .await?;
        Ok(None)
    }

    /// One disk: an empty target exported on the destination, the source writing into it,
    /// until the source's copy job ends and the export closed.
    async fn copy_one(&mut self, k: usize) -> Step<Option<Why>> {
        let c = self.m.run.copies[k].clone();
        let (source, dest, id) = (self.m.source.clone(), self.m.destination.clone(), self.m.id);
        let started = Instant::now();
        let receive = ColdReceiveRequest {
            pool: c.pool.clone(),
            image: c.image.clone(),
            virtual_size: c.virtual_size,
            peer_host: Some(source.clone()),
        };
        let export = match self.agents().cold_receive(&dest, id, &receive).await {
            Ok(r) => r,
            Err(e) => {
                return Ok(Some(Why::Failure(format!(
                    "destination {dest} could not make a target for {}: {e}",
                    c.label()
                ))))
            }
        };
        let send = ColdSendRequest {
            pool: c.pool.clone(),
            image: c.image.clone(),
            export: export.export.clone(),
            export_name: export.export_name,
            max_bandwidth_bytes: self.m.options.max_bandwidth_mib.map_or(0, |m| m << 20),
            peer_host: Some(dest.clone()),
        };
        if let Err(e) = self.agents().cold_send(&source, id, &send).await {
            return Ok(Some(Why::Failure(format!(
                "source {source} could not copy {}: {e}",
                c.label()
            ))));
        }
        match self
            .wait_job(&source, ColdJobKind::Send, &c.pool, &c.image, None)
            .await?
        {
            Job::Done(_) => {}
            Job::Failed(reason) => {
                return Ok(Some(Why::Failure(format!(
                    "copying {}: {reason}",
                    c.label()
                ))))
            }
            Job::Cancel => return Ok(Some(Why::Cancel)),
        }
        // The export flushes and closes once the source disconnected.
        match self
            .wait_job(
                &dest,
                ColdJobKind::Receive,
                &c.pool,
                &c.image,
                Some(EXPORT_CLOSE_WAIT),
            )
            .await?
        {
            Job::Done(_) => {}
            Job::Failed(reason) => {
                return Ok(Some(Why::Failure(format!(
                    "the target of {} on {dest}: {reason}",
                    c.label()
                ))))
            }
            Job::Cancel => return Ok(Some(Why::Cancel)),
        }
        self.cold_mut().copied[k] = true;
        self.save_run().await?;
        let secs = started.elapsed().as_secs_f64();
        self.event(
            EventKind::MigrationDisks,
            Outcome::Ok,
            format!(
                "copied {} ({} MiB of data) to {dest} at {} in {secs:.1} s",
                c.label(),
                c.actual_size >> 20,
                export.export
            ),
            serde_json::json!({"disk": c.label(), "bytes": c.actual_size, "seconds": secs}),
        );
        Ok(None)
    }

    /// Both hosts checksum their copy of disk `k`; they must match.
    async fn verify_one(&mut self, k: usize) -> Step<Option<Why>> {
        let c = self.m.run.copies[k].clone();
        let req = ColdDiskRequest {
            pool: c.pool.clone(),
            image: c.image.clone(),
        };
        let (source, dest, id) = (self.m.source.clone(), self.m.destination.clone(), self.m.id);
        let (a, b) = tokio::join!(
            self.agents().cold_checksum(&source, id, &req),
            self.agents().cold_checksum(&dest, id, &req)
        );
        for (host, r) in [(&source, a), (&dest, b)] {
            if let Err(e) = r {
                return Ok(Some(Why::Failure(format!(
                    "{host} could not checksum {}: {e}",
                    c.label()
                ))));
            }
        }
        let mut sums = Vec::new();
        for host in [&source, &dest] {
            match self
                .wait_job(host, ColdJobKind::Checksum, &c.pool, &c.image, None)
                .await?
            {
                Job::Done(j) => sums.push(j.sum),
                Job::Failed(reason) => {
                    return Ok(Some(Why::Failure(format!(
                        "checksumming {} on {host}: {reason}",
                        c.label()
                    ))))
                }
                Job::Cancel => return Ok(Some(Why::Cancel)),
            }
        }
        let (Some(Some(s)), Some(Some(d))) = (sums.first(), sums.get(1)) else {
            return Ok(Some(Why::Failure(format!(
                "a checksum of {} came back empty",
                c.label()
            ))));
        };
        if let Err(reason) = verify(&c.label(), s, d) {
            return Ok(Some(Why::Failure(format!(
                "the copy on {dest} does not match: {reason}"
            ))));
        }
        self.cold_mut().verified[k] = true;
        self.save_run().await?;
        self.event(
            EventKind::MigrationDisks,
            Outcome::Ok,
            format!(
                "{} on {dest} matches the source: {} bytes, checksum {}",
                c.label(),
                d.virtual_size,
                &d.digest[..d.digest.len().min(16)]
            ),
            serde_json::json!({"disk": c.label(), "virtual_size": d.virtual_size, "digest": d.digest}),
        );
        Ok(None)
    }

    /// Polls `host` until its latest job of `kind` on `pool/image` ends. The copy's
    /// progress is kept in the migration's record. `limit`: give up after this long.
    async fn wait_job(
        &mut self,
        host: &str,
        kind: ColdJobKind,
        pool: &str,
        image: &str,
        limit: Option<Duration>,
    ) -> Step<Job> {
        let started = Instant::now();
        let mut last_answer = Instant::now();
        let label = format!("{pool}/{image}");
        loop {
            if self.cancel_requested() {
                return Ok(Job::Cancel);
            }
            match self.agents().cold_status(host, self.m.id).await {
                Ok(status) => {
                    last_answer = Instant::now();
                    let Some(job) = status.job(kind, pool, image).cloned() else {
                        return Ok(Job::Failed(format!(
                            "{host} has no {kind:?} job for {label} (its agent restarted?)"
                        )));
                    };
                    if kind == ColdJobKind::Send {
                        let total = self
                            .m
                            .run
                            .copies
                            .iter()
                            .find(|c| c.pool == pool && c.image == image)
                            .map_or(0, |c| c.actual_size);
                        let mut p = self.m.progress.clone().unwrap_or_default();
                        p.disks.retain(|d| d.disk != label);
                        p.disks.push(DiskCopyProgress {
                            disk: label.clone(),
                            total_bytes: total,
                            copied_bytes: (total as f64 * job.progress_pct / 100.0) as u64,
                            status: BlockJobStatus::Running,
                            ..Default::default()
                        });
                        self.m.progress = Some(p);
                        self.save_progress()?;
                    }
                    match job.state {
                        ColdJobState::Done => return Ok(Job::Done(job)),
                        ColdJobState::Failed => {
                            return Ok(Job::Failed(
                                job.error.unwrap_or_else(|| "no reason given".into()),
                            ))
                        }
                        ColdJobState::Running => {}
                    }
                }
                Err(e) if last_answer.elapsed() > self.o.config.silence_limit => {
                    return Ok(Job::Failed(format!(
                        "{host} did not answer for {} s: {e}",
                        self.o.config.silence_limit.as_secs()
                    )))
                }
                Err(_) => {}
            }
            if limit.is_some_and(|l| started.elapsed() > l) {
                return Ok(Job::Failed(format!(
                    "{label}'s {kind:?} job on {host} did not end within {} s",
                    limit.unwrap_or_default().as_secs()
                )));
            }
            tokio::time::sleep(COLD_POLL).await;
        }
    }

    /// Before the record moved: both agents stop what they run for the migration and the
    /// destination deletes the targets it made. The VM stays stopped on the source.
    async fn cold_roll_back(&mut self, why: &Why) -> Step<()> {
        let cancelled = matches!(why, Why::Cancel);
        if self.cold_run().step != ColdStep::RollingBack {
            self.m.error = Some(why.describe());
            let ev = if cancelled {
                ColdEvent::CancelRequested
            } else {
                ColdEvent::Failure
            };
            self.cold_advance(
                ev,
                format!("rolling back: {}", why.describe()),
                serde_json::json!({}),
                None,
            )
            .await?;
        }
        let mut notes = Vec::new();
        let deadline = Instant::now() + self.o.config.cleanup_wait;
        for host in [self.m.destination.clone(), self.m.source.clone()] {
            loop {
                match self.agents().cold_discard(&host, self.m.id).await {
                    Ok(c) => {
                        if !c.deleted.is_empty() {
                            self.event(
                                EventKind::MigrationDestinationCleanup,
                                Outcome::Ok,
                                format!("{host} deleted the copies {}", c.deleted.join(", ")),
                                serde_json::json!({"deleted": c.deleted}),
                            );
                        }
                        break;
                    }
                    Err(e) if e.is_not_found() => break,
                    Err(e) if e.is_unreachable() && Instant::now() < deadline => {
                        tokio::time::sleep(self.o.config.retry_every).await;
                    }
                    Err(e) => {
                        notes.push(format!("{host} could not clean up: {e}"));
                        break;
                    }
                }
            }
        }
        let mut error = self.m.error.clone().unwrap_or_else(|| why.describe());
        for n in &notes {
            error.push_str("; ");
            error.push_str(n);
        }
        self.m.error = Some(error.clone());
        self.cold_advance(
            ColdEvent::RolledBack { cancelled },
            format!(
                "{}: {error}; VM {} stays stopped on {} with its disks",
                if cancelled { "cancelled" } else { "failed" },
                self.m.vm,
                self.m.source
            ),
            serde_json::json!({"notes": notes}),
            None,
        )
        .await
    }

    /// After `Completed`: both agents drop what they kept for the migration (the
    /// destination's targets are the VM's disks now).
    pub(super) async fn finish_cold(&mut self) -> Step<()> {
        let c = self.cold_run();
        for (host, done) in [
            (self.m.destination.clone(), c.destination_finished),
            (self.m.source.clone(), c.source_finished),
        ] {
            if done {
                continue;
            }
            match self.agents().cold_finish(&host, self.m.id).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    tracing::warn!("{host} did not finish cold migration {}: {e}", self.m.id);
                    continue;
                }
            }
            let is_dest = host == self.m.destination;
            let me = self.cold_mut();
            if is_dest {
                me.destination_finished = true;
            } else {
                me.source_finished = true;
            }
        }
        self.save_run().await
    }
}
