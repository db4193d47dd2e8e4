//! The storage-copy half of a migration: local-pool disks are mirrored to the destination
//! while the guest runs (`CopyingDisks`), before memory moves. The agents do the QEMU work
//! (see `ferry_agent::disk_copy`); this side watches both ends and hands what it sees to
//! the pure [`copy_next`].

use std::time::{Duration, Instant};

use ferry_api::*;
use ferry_migration::follow::{copy_next, Answer, CopyNext, CopyObservation};
use ferry_migration::watch::{Role, Watch};

use super::agents::side_facts;
use super::{HoldPoint, Next, Run, Step, Why};

/// How often the copy's progress goes into the event log.
const PROGRESS_EVENT_EVERY: Duration = Duration::from_secs(2);

fn mib(b: u64) -> u64 {
    b >> 20
}

impl Run {
    /// Starts the copy on the source (its start saved first: from here the destination may
    /// hold data and a rollback must cancel the copy).
    pub(super) async fn start_copy(&mut self, export: &str, names: Vec<String>) -> Step<Next> {
        let req = DiskCopyRequest {
            export: export.to_string(),
            export_names: names,
            peer_host: Some(self.m.destination.clone()),
            disks: self.m.run.copies.iter().map(|c| c.index).collect(),
            max_bandwidth_bytes: self
                .m
                .options
                .max_bandwidth_mib
                .map(|m| m << 20)
                .unwrap_or(0),
        };
        self.m.run.outgoing_started = true;
        self.save_run().await?;
        let source = self.m.source.clone();
        if let Err(e) = self
            .agents()
            .start_disk_copy(&source, &self.m.vm, &req)
            .await
        {
            return Ok(Next::Settle(Why::Failure(format!(
                "source {source} could not start copying disks to {export}: {e}"
            ))));
        }
        self.hold(HoldPoint::CopyingDisks).await;
        Ok(Next::FollowCopy)
    }

    /// Follows the copy until every disk is in sync (then memory moves), or fails.
    pub(super) async fn follow_copy(&mut self) -> Step<Next> {
        let poll = self.o.config.poll_interval;
        let within = self.o.config.call_timeout;
        let progress_limit = self
            .m
            .options
            .progress_timeout_s
            .unwrap_or(DEFAULT_PROGRESS_TIMEOUT_S)
            * 1000;
        let clock = Instant::now();
        let now = |c: Instant| c.elapsed().as_millis() as u64;
        let mut watch = Watch::new(
            0,
            self.o.config.silence_limit.as_millis() as u64,
            progress_limit,
        );
        let mut last_event = Instant::now();
        loop {
            let agents = self.o.agents.clone();
            let ((s, status), (d, _)) = tokio::join!(
                side_facts(agents.as_ref(), &self.m.source, &self.m.vm, within),
                side_facts(agents.as_ref(), &self.m.destination, &self.m.vm, within)
            );
            let disks = status
                .as_ref()
                .map(|st| st.progress.disks.clone())
                .unwrap_or_default();
            if status.is_some() {
                watch.answered(Role::Source, now(clock));
                let (copied, _, _) = disk_totals(&disks);
                // Copied bytes grow for ever once a mirror is ready (guest writes keep
                // flowing); only the way to "ready" counts as progress, so a copy that is
                // ready but never switched to write-blocking times out instead of waiting
                // for ever.
                if !disks.iter().all(|d| d.ready) {
                    watch.counter(copied, now(clock));
                }
            }
            if !d.is_unknown() {
                watch.answered(Role::Destination, now(clock));
            }
            let obs = CopyObservation {
                source: status.as_ref().map(|st| Answer {
                    facts: s,
                    error: st.error.clone(),
                }),
                destination: (!d.is_unknown()).then_some(d),
                disks: disks.clone(),
                cancel_requested: self.cancel_requested(),
                timeout: watch.check(now(clock)),
            };
            let (copied, total, outstanding) = disk_totals(&disks);
            let rate = (copied as f64 / clock.elapsed().as_secs_f64().max(0.001)) as u64;
            if status.is_some() {
                self.m.progress = Some(MigrationProgress {
                    elapsed_ms: now(clock),
                    bandwidth_bytes_per_s: rate,
                    disks: disks.clone(),
                    ..Default::default()
                });
                self.save_progress()?;
            }
            match copy_next(&obs) {
                CopyNext::Wait => {}
                CopyNext::InSync => {
                    self.m.run.parts.disks_ms = self.lap();
                    self.advance(
                        PhaseEvent::DisksInSync,
                        format!(
                            "{} disk(s) in sync with {} after {:.1}s: {} MiB copied; guest writes now reach both hosts",
                            disks.len(),
                            self.m.destination,
                            clock.elapsed().as_secs_f64(),
                            mib(copied)
                        ),
                        serde_json::to_value(&disks).unwrap_or_default(),
                    )
                    .await?;
                    return Ok(Next::StartStream);
                }
                CopyNext::Fail(reason) => {
                    let hosts = format!(
                        "source {}, destination {}",
                        self.m.source, self.m.destination
                    );
                    return Ok(Next::Settle(Why::Failure(format!("{reason} ({hosts})"))));
                }
                CopyNext::Cancel => return Ok(Next::Settle(Why::Cancel)),
            }
            if last_event.elapsed() >= PROGRESS_EVENT_EVERY && status.is_some() {
                last_event = Instant::now();
                self.event(
                    EventKind::MigrationDisks,
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
            tokio::time::sleep(poll).await;
        }
    }

    /// After a rollback or an operator keeping the source, once the destination's QEMU is
    /// gone: the partial (or complete but now stale) copies this migration created in the
    /// destination's pools go too. The pre-check refused a destination that already had an
    /// image of that name, so these are the migration's own. Returns what could not be
    /// deleted.
    pub(super) async fn delete_destination_copies(&self) -> Vec<String> {
        let mut failed = Vec::new();
        for c in &self.m.run.copies {
            match self
                .agents()
                .delete_disk(&self.m.destination, &c.pool, &c.image)
                .await
            {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => failed.push(format!("{} on {}: {e}", c.label(), self.m.destination)),
            }
        }
        failed
    }

    /// After the destination runs (`Completed` is saved): the source's copies of moved
    /// disks go, unless the operator asked to keep them. Saved as done either way once
    /// settled; a failure is reported, never retried against the destination's copy.
    pub(super) async fn retire_source_disks(&mut self) -> Step<()> {
        if self.m.run.source_disks_done {
            return Ok(());
        }
        if self.m.run.copies.is_empty() {
            self.m.run.source_disks_done = true;
            return self.save_run().await;
        }
        let labels: Vec<String> = self.m.run.copies.iter().map(|c| c.label()).collect();
        if self.m.options.keep_source {
            self.m.run.source_disks_done = true;
            self.save_run().await?;
            self.event(
                EventKind::MigrationSourceDisks,
                Outcome::Info,
                format!(
                    "kept the source copies of {} on {} (--keep-source)",
                    labels.join(", "),
                    self.m.source
                ),
                serde_json::json!({ "kept": labels }),
            );
            return Ok(());
        }
        let mut failed = Vec::new();
        for c in self.m.run.copies.clone() {
            if let Err(e) = self
                .agents()
                .delete_disk(&self.m.source, &c.pool, &c.image)
                .await
            {
                if !e.is_not_found() {
                    failed.push(format!("{}: {e}", c.label()));
                }
            }
        }
        self.m.run.source_disks_done = failed.is_empty();
        self.save_run().await?;
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
            EventKind::MigrationSourceDisks,
            outcome,
            message,
            serde_json::json!({ "disks": labels, "failed": failed }),
        );
        Ok(())
    }
}
