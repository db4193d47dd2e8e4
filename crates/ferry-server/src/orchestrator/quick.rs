//! A quick migration's run (the machine and its rules are
//! [`ferry_migration::quick`]): prepare the destination, pause and save the source to the
//! state file on the shared pool, load it on the destination, resume the guest there,
//! commit, then retire the source and delete the file (`clean_up`). Every way out that is
//! not success goes to `quick_settle`, which asks [`decide`] what the facts allow.
//!
//! Each step's flag (save, restore, resume, revive asked for) is saved before the call it
//! allows, with the step, so a restarted server knows what the hosts may have done.

use std::time::{Duration, Instant};

use chrono::Utc;
use ferry_api::*;
use ferry_migration::quick::{decide, QuickEvent, QuickVerdict, Revive};
use ferry_migration::recovery::Teardown;
use ferry_migration::watch::{Role, Watch};

use super::agents::side_facts;
use super::{HoldPoint, Next, Run, Step, Why};

/// Channels a quick save and restore use unless the migration says (`--streams`).
pub const DEFAULT_QUICK_STREAMS: u8 = 2;
/// How often a save or a load is looked at (the downtime is measured at this grain).
const QUICK_POLL: Duration = Duration::from_millis(50);

/// Where a quick run goes next.
#[derive(Debug)]
enum Q {
    Begin,
    Save,
    Restore,
    Resume,
    Settle(Why),
    CleanUp,
    Done,
}

/// How a wait for one side ended.
enum Waited {
    Completed(AgentMigrationStatus),
    Failed(String),
    Cancel,
}

impl Run {
    pub(super) fn quick_run(&self) -> QuickRun {
        self.m.run.quick.as_deref().cloned().unwrap_or_default()
    }

    fn quick_mut(&mut self) -> &mut QuickRun {
        self.m.run.quick.get_or_insert_with(Default::default)
    }

    pub(super) fn state_file(&self) -> QuickStateFile {
        QuickStateFile {
            pool: self.quick_run().pool,
            migration: self.m.id,
        }
    }

    fn quick_streams(&self) -> u8 {
        self.m
            .options
            .streams
            .unwrap_or(DEFAULT_QUICK_STREAMS)
            .clamp(1, MAX_QUICK_STREAMS)
    }

    fn transfer(&self) -> QuickTransferRequest {
        QuickTransferRequest {
            file: self.state_file(),
            streams: self.quick_streams(),
        }
    }

    /// Moves the quick machine on; the phase follows the step, saved with its event (and
    /// the run's flags as they are now) before the step it allows.
    async fn quick_advance(
        &mut self,
        ev: QuickEvent,
        message: String,
        data: serde_json::Value,
        vm_state: Option<VmState>,
    ) -> Step<()> {
        let from = self.quick_run().step;
        let next = from.next(ev)?;
        let mut m = self.m.clone();
        m.run.quick.get_or_insert_with(Default::default).step = next;
        m.phase = next.phase();
        m.updated_at = Utc::now();
        if next.is_terminal() {
            m.finished_at = Some(m.updated_at);
        }
        let outcome = match m.phase {
            Phase::Failed | Phase::NeedsAttention => Outcome::Error,
            Phase::Completed | Phase::Cancelled => Outcome::Ok,
            _ => Outcome::Info,
        };
        let mut data = data;
        if let serde_json::Value::Object(o) = &mut data {
            o.insert("quick_step".into(), next.as_str().into());
        }
        let event = self.new_event(EventKind::MigrationPhase, outcome, message.clone(), data);
        self.save_durably(&m, Some(&event), vm_state).await?;
        tracing::info!(%from, to = %next, "{message}");
        self.m = m;
        Ok(())
    }

    pub(super) async fn drive_quick(&mut self, next: Next) -> Step<()> {
        let mut next = match next {
            Next::Begin => Q::Begin,
            Next::Settle(why) => Q::Settle(why),
            Next::CleanUp => Q::CleanUp,
            Next::Done => Q::Done,
            other => Q::Settle(Why::Failure(format!(
                "a quick migration has no step {other:?}"
            ))),
        };
        loop {
            next = match next {
                Q::Begin => self.quick_begin().await?,
                Q::Save => self.quick_save().await?,
                Q::Restore => self.quick_restore().await?,
                Q::Resume => self.quick_resume().await?,
                Q::Settle(why) => self.quick_settle(why).await?,
                Q::CleanUp => {
                    self.clean_up().await?;
                    Q::Done
                }
                Q::Done => return Ok(()),
            };
        }
    }

    /// `Pending`: the destination starts a QEMU waiting for the state.
    async fn quick_begin(&mut self) -> Step<Q> {
        let spec = self.spec()?;
        self.m.run.ram_mib = spec.memory_mib;
        let file = self.state_file();
        self.quick_advance(
            QuickEvent::Start,
            format!(
                "quick migration: preparing {} to load VM {} from pool {}",
                self.m.destination, self.m.vm, file.pool
            ),
            serde_json::json!({"pool": file.pool, "streams": self.quick_streams()}),
            None,
        )
        .await?;
        let req = QuickIncomingRequest {
            spec,
            file,
            streams: self.quick_streams(),
        };
        let dest = self.m.destination.clone();
        if let Err(e) = self.agents().quick_incoming(&dest, &req).await {
            return Ok(Q::Settle(Why::Failure(format!(
                "destination {dest} could not prepare: {e}"
            ))));
        }
        self.hold(HoldPoint::Preparing).await;
        if self.cancel_requested() {
            return Ok(Q::Settle(Why::Cancel));
        }
        Ok(Q::Save)
    }

    /// The source pauses its guest and saves it (the request is saved first: from then on
    /// the file may hold the VM).
    async fn quick_save(&mut self) -> Step<Q> {
        let q = self.quick_mut();
        q.saved.save_requested = true;
        q.paused_at = Some(Utc::now());
        let pool = q.pool.clone();
        self.quick_advance(
            QuickEvent::DestinationReady,
            format!(
                "destination {} waits; pausing VM {} on {} and saving its state to pool {pool}",
                self.m.destination, self.m.vm, self.m.source
            ),
            serde_json::json!({"pool": pool}),
            None,
        )
        .await?;
        let source = self.m.source.clone();
        let req = self.transfer();
        if let Err(e) = self.agents().quick_save(&source, &self.m.vm, &req).await {
            return Ok(Q::Settle(Why::Failure(format!(
                "source {source} could not save the VM: {e}"
            ))));
        }
        self.hold(HoldPoint::Transferring).await;
        let limit = self.progress_limit_ms();
        let status = match self.wait_side(&source, "the save", limit).await? {
            Waited::Completed(s) => s,
            Waited::Failed(reason) => return Ok(Q::Settle(Why::Failure(reason))),
            Waited::Cancel => return Ok(Q::Settle(Why::Cancel)),
        };
        let measured = self.since_pause_ms();
        let save_ms = if status.progress.elapsed_ms > 0 {
            status.progress.elapsed_ms
        } else {
            measured
        };
        let mut report = MigrationReport::from_final(&status.progress, 0, 0);
        report.save_ms = Some(save_ms);
        self.m.report = Some(report);
        let q = self.quick_mut();
        q.saved.save_completed = true;
        q.save_ms = Some(save_ms);
        let bytes = status.progress.transferred_bytes;
        self.quick_advance(
            QuickEvent::SaveCompleted,
            format!(
                "VM {}'s state saved to pool {pool} in {save_ms} ms ({} MiB)",
                self.m.vm,
                bytes >> 20
            ),
            serde_json::json!({"save_ms": save_ms, "bytes": bytes}),
            None,
        )
        .await?;
        self.event(
            EventKind::MigrationStateFile,
            Outcome::Ok,
            format!(
                "state file of migration {} saved in pool {pool} ({} MiB)",
                self.m.id,
                bytes >> 20
            ),
            serde_json::json!({"pool": pool, "bytes": bytes}),
        );
        self.hold(HoldPoint::QuickSaved).await;
        Ok(Q::Restore)
    }

    /// `Saved`: the destination loads the file (a fresh destination is prepared first if
    /// the one that waited is gone or spent).
    async fn quick_restore(&mut self) -> Step<Q> {
        if self.cancel_requested() && !self.source_gone().await {
            return Ok(Q::Settle(Why::Cancel));
        }
        let dest = self.m.destination.clone();
        let (d, _) = side_facts(self.agents(), &dest, &self.m.vm, self.o.config.call_timeout).await;
        let waiting = d == SideFacts::qemu(MigrationStatus::None, false);
        if !waiting && !self.source_gone().await {
            // The paused source holds the VM: rolling back beats a second destination.
            return Ok(Q::Settle(Why::Failure(format!(
                "the destination {dest} is not waiting for the state any more ({d})"
            ))));
        }
        if !waiting {
            // The source is gone, so the file is the VM: a fresh destination loads it.
            match self.agents().remove(&dest, &self.m.vm).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    return Ok(Q::Settle(Why::Failure(format!(
                        "the destination {dest} could not be made ready again: {e}"
                    ))))
                }
            }
            let req = QuickIncomingRequest {
                spec: self.spec()?,
                file: self.state_file(),
                streams: self.quick_streams(),
            };
            if let Err(e) = self.agents().quick_incoming(&dest, &req).await {
                return Ok(Q::Settle(Why::Failure(format!(
                    "destination {dest} could not prepare: {e}"
                ))));
            }
        }
        let q = self.quick_mut();
        q.saved.restore_requested = true;
        q.saved.restore_attempts += 1;
        let attempt = q.saved.restore_attempts;
        self.quick_advance(
            QuickEvent::RestoreStarted,
            format!(
                "destination {dest} loads VM {}'s state (attempt {attempt})",
                self.m.vm
            ),
            serde_json::json!({"attempt": attempt}),
            None,
        )
        .await?;
        let started = Instant::now();
        let req = self.transfer();
        if let Err(e) = self.agents().quick_restore(&dest, &self.m.vm, &req).await {
            return Ok(Q::Settle(Why::Failure(format!(
                "destination {dest} could not load the state: {e}"
            ))));
        }
        // A load has no byte counter to watch: it gets the progress timeout plus time for
        // the guest's RAM at 20 MiB/s.
        let limit = self.progress_limit_ms() + self.m.run.ram_mib * 50;
        match self.wait_side(&dest, "loading the state", limit).await? {
            Waited::Completed(_) => {}
            Waited::Failed(reason) => return Ok(Q::Settle(Why::Failure(reason))),
            // Loading cannot be cancelled half-way; the rollback removes it.
            Waited::Cancel => return Ok(Q::Settle(Why::Cancel)),
        }
        self.quick_mut().restore_ms = Some(started.elapsed().as_millis() as u64);
        if self.cancel_requested() {
            // Loaded, not resumed: the paused source still holds the VM.
            return Ok(Q::Settle(Why::Cancel));
        }
        Ok(Q::Resume)
    }

    /// The destination holds the whole VM: tell it to resume (saved first: from then on
    /// nothing rolls back), see it run, commit.
    async fn quick_resume(&mut self) -> Step<Q> {
        let step = self.quick_run().step;
        if step != QuickStep::Resuming {
            if matches!(step, QuickStep::Saving | QuickStep::RollingBack) {
                self.quick_advance(
                    QuickEvent::RestoreFromFile,
                    "the source is gone; the destination loaded the state file".into(),
                    serde_json::json!({}),
                    None,
                )
                .await?;
            }
            self.quick_mut().saved.resume_requested = true;
            let loaded = self.quick_run().restore_ms;
            self.quick_advance(
                QuickEvent::RestoreCompleted,
                format!(
                    "destination {} loaded the state{}; resuming the guest there",
                    self.m.destination,
                    loaded.map(|ms| format!(" in {ms} ms")).unwrap_or_default()
                ),
                serde_json::json!({"load_ms": loaded}),
                None,
            )
            .await?;
        }
        let dest = self.m.destination.clone();
        if let Err(e) = self.agents().quick_resume(&dest, &self.m.vm).await {
            return Ok(Q::Settle(Why::Failure(format!(
                "destination {dest} could not resume the guest: {e}"
            ))));
        }
        let downtime = self.since_pause_ms();
        let deadline = Instant::now() + self.o.config.recovery_bound;
        loop {
            let (s, d) = self.facts().await;
            if d.running() && !s.running() {
                return self.quick_commit(downtime).await;
            }
            if Instant::now() > deadline {
                return Ok(Q::Settle(Why::Failure(format!(
                    "the destination was told to resume but is not seen running ({d})"
                ))));
            }
            tokio::time::sleep(QUICK_POLL).await;
        }
    }

    /// The guest runs on the destination: `Completed`, the record moves there.
    async fn quick_commit(&mut self, downtime_ms: u64) -> Step<Q> {
        let has_nics = self
            .o
            .store
            .vm(&self.m.vm)
            .ok()
            .flatten()
            .is_some_and(|v| !v.spec.nics.is_empty());
        if has_nics {
            if let Err(e) = self
                .agents()
                .announce(&self.m.destination, &self.m.vm)
                .await
            {
                tracing::warn!("announce after the restore failed: {e}");
            }
        }
        let q = self.quick_run();
        let mut r = self.m.report.clone().unwrap_or_default();
        r.total_time_ms = self.started.elapsed().as_millis() as u64;
        r.downtime_ms = downtime_ms;
        r.save_ms = q.save_ms;
        r.restore_ms = q
            .save_ms
            .map(|save| downtime_ms.saturating_sub(save))
            .or(q.restore_ms);
        r.transfer_time_ms = q.save_ms.unwrap_or(0);
        if r.ram_total_bytes == 0 {
            r.ram_total_bytes = self.m.run.ram_mib << 20;
        }
        self.m.report = Some(r.clone());
        self.quick_advance(
            QuickEvent::DestinationRunning,
            format!(
                "VM {} runs on {}: {}",
                self.m.vm,
                self.m.destination,
                r.summary()
            ),
            serde_json::to_value(&r).unwrap_or_default(),
            None,
        )
        .await?;
        Ok(Q::CleanUp)
    }

    /// Polls one side until its migration (the save, or the load) completes, fails, goes
    /// silent for the silence limit, or makes no progress for `limit_ms`.
    async fn wait_side(&mut self, host: &str, what: &str, limit_ms: u64) -> Step<Waited> {
        let clock = Instant::now();
        let ms = |c: &Instant| c.elapsed().as_millis() as u64;
        let mut watch = Watch::new(0, self.o.config.silence_limit.as_millis() as u64, limit_ms);
        let mut last_saved = Instant::now();
        loop {
            watch.answered(Role::Destination, ms(&clock));
            let answer = tokio::time::timeout(
                self.o.config.call_timeout,
                self.agents().migration_status(host, &self.m.vm),
            )
            .await;
            if let Ok(Ok(s)) = answer {
                watch.answered(Role::Source, ms(&clock));
                watch.counter(
                    s.progress.transferred_bytes.max(s.progress.elapsed_ms),
                    ms(&clock),
                );
                if s.is_completed() {
                    return Ok(Waited::Completed(s));
                }
                if s.is_failed() {
                    return Ok(Waited::Failed(format!(
                        "{what} failed on {host}: {}",
                        s.error.as_deref().unwrap_or("QEMU gave no reason")
                    )));
                }
                if matches!(s.vm_state, VmState::Crashed | VmState::Stopped) {
                    return Ok(Waited::Failed(format!(
                        "{what}: the QEMU on {host} exited ({})",
                        s.error.as_deref().unwrap_or("no reason")
                    )));
                }
                if last_saved.elapsed() > Duration::from_secs(1) {
                    self.m.progress = Some(s.progress.clone());
                    self.save_progress()?;
                    last_saved = Instant::now();
                }
            }
            if let Some(t) = watch.check(ms(&clock)) {
                return Ok(Waited::Failed(format!("{what} on {host}: {t}")));
            }
            if self.cancel_requested() && !self.quick_run().saved.save_completed {
                return Ok(Waited::Cancel);
            }
            tokio::time::sleep(QUICK_POLL).await;
        }
    }

    fn progress_limit_ms(&self) -> u64 {
        self.m
            .options
            .progress_timeout_s
            .unwrap_or(DEFAULT_PROGRESS_TIMEOUT_S)
            * 1000
    }

    /// Milliseconds since the source was told to pause.
    fn since_pause_ms(&self) -> u64 {
        self.quick_run()
            .paused_at
            .map(|t| (Utc::now() - t).num_milliseconds().max(0) as u64)
            .unwrap_or(0)
    }

    async fn source_gone(&self) -> bool {
        let (s, _) = side_facts(
            self.agents(),
            &self.m.source,
            &self.m.vm,
            self.o.config.call_timeout,
        )
        .await;
        s.is_gone()
    }

    /// Gathers both sides' facts and does what [`decide`] allows; missing facts are asked
    /// again for the recovery bound, then an operator is asked.
    async fn quick_settle(&mut self, why: Why) -> Step<Q> {
        let started = Instant::now();
        let mut last: Option<String> = None;
        loop {
            let (s, d) = self.facts().await;
            let saved = self.quick_run().saved;
            let verdict = decide(saved, s, d);
            let said = format!("{verdict:?}");
            if last.as_deref() != Some(said.as_str()) {
                self.event(
                    EventKind::MigrationRecovery,
                    Outcome::Info,
                    format!(
                        "settling the quick migration ({}): source {s}; destination {d} -> {said}",
                        why.describe()
                    ),
                    serde_json::json!({"source": s, "destination": d, "saved": saved}),
                );
                last = Some(said);
            }
            let overdue = started.elapsed() > self.o.config.recovery_bound;
            match verdict {
                QuickVerdict::Retry { reason } if overdue => {
                    let reason = format!(
                        "{reason}; still so after {:.1} s",
                        self.o.config.recovery_bound.as_secs_f64()
                    );
                    return self.quick_attention(reason, s, d).await;
                }
                QuickVerdict::Retry { .. } => {}
                QuickVerdict::NeedsAttention { reason } => {
                    return self.quick_attention(reason, s, d).await
                }
                QuickVerdict::Commit => return self.quick_commit(self.since_pause_ms()).await,
                QuickVerdict::Resume => return Ok(Q::Resume),
                QuickVerdict::Restore => {
                    if self.quick_run().step != QuickStep::Saved {
                        self.quick_advance(
                            QuickEvent::RestoreFromFile,
                            format!(
                                "the source is gone ({s}); restoring VM {} from its state file",
                                self.m.vm
                            ),
                            serde_json::json!({"source": s, "destination": d}),
                            None,
                        )
                        .await?;
                    }
                    return Ok(Q::Restore);
                }
                QuickVerdict::RollBack {
                    destination,
                    revive,
                } => return self.quick_roll_back(&why, destination, revive).await,
                QuickVerdict::Lost { reason } => return self.quick_lose(reason, s, d).await,
            }
            tokio::time::sleep(self.o.config.retry_every).await;
        }
    }

    /// The source holds the VM and the destination never ran it: the destination goes
    /// first, then the source runs again, and only then the state file is deleted.
    async fn quick_roll_back(&mut self, why: &Why, teardown: Teardown, revive: Revive) -> Step<Q> {
        let cancelled = matches!(why, Why::Cancel);
        if self.quick_run().step != QuickStep::RollingBack {
            let reason = why.describe();
            self.m.error = Some(reason.clone());
            let ev = if cancelled {
                QuickEvent::CancelRequested
            } else {
                QuickEvent::Failure
            };
            self.quick_advance(
                ev,
                format!("rolling back: {reason}"),
                serde_json::json!({}),
                None,
            )
            .await?;
        }
        let mut notes = Vec::new();
        let dest = self.m.destination.clone();
        let removed = match teardown {
            Teardown::Remove => match self.agents().remove(&dest, &self.m.vm).await {
                Ok(()) => true,
                Err(e) if e.is_not_found() => true,
                Err(e) if e.is_unreachable() => self.remove_destination_when_back().await?,
                Err(e) => {
                    notes.push(format!("destination clean-up failed: {e}"));
                    false
                }
            },
            Teardown::Later => self.remove_destination_when_back().await?,
        };
        if !removed && self.quick_run().saved.restore_requested {
            // It may hold the disks active: the source is not resumed next to it.
            let (s, d) = self.facts().await;
            return self
                .quick_attention(
                    format!(
                        "the destination {dest} loaded (or was loading) the state and could \
                         not be removed; the source stays paused"
                    ),
                    s,
                    d,
                )
                .await;
        }
        if !removed {
            notes.push(format!(
                "{dest}'s waiting QEMU may remain there (it never held the VM)"
            ));
        }
        if revive != Revive::Nothing {
            // Saved first: from here on the file is older than the guest.
            self.quick_mut().saved.revive_requested = true;
            self.save_run().await?;
            let source = self.m.source.clone();
            let revived = match revive {
                Revive::Reclaim => self.agents().reclaim(&source, &self.m.vm).await,
                _ => self.agents().cancel_outgoing(&source, &self.m.vm).await,
            };
            match revived {
                Ok(()) => {}
                Err(e) if e.is_unreachable() || matches!(e, super::AgentError::Refused { .. }) => {
                    tracing::warn!("the source did not resume: {e}; settling again");
                    return Ok(Q::Settle(why.clone()));
                }
                Err(e) => notes.push(format!("source could not be resumed: {e}")),
            }
        }
        if let Some(n) = self.discard_state_file().await {
            notes.push(n);
        }
        let (s, _) = self.facts().await;
        let state = match s {
            SideFacts::Qemu { running: true, .. } => Some(VmState::Running),
            SideFacts::Qemu { .. } => Some(VmState::Paused),
            _ => None,
        };
        let mut error = self.m.error.clone().unwrap_or_else(|| why.describe());
        for n in &notes {
            error.push_str("; ");
            error.push_str(n);
        }
        self.m.error = Some(error.clone());
        self.quick_advance(
            QuickEvent::RolledBack { cancelled },
            format!(
                "{}: {error}; VM {} on {}: {s}",
                if cancelled { "cancelled" } else { "failed" },
                self.m.vm,
                self.m.source
            ),
            serde_json::json!({"source": s, "notes": notes}),
            state,
        )
        .await?;
        Ok(Q::Done)
    }

    /// Deletes the state file (from the source's view of the pool, else the
    /// destination's). Returns a note when it could not.
    pub(super) async fn discard_state_file(&mut self) -> Option<String> {
        let file = self.state_file();
        if file.pool.is_empty() || self.quick_run().file_deleted {
            return None;
        }
        let mut last = String::new();
        for host in [self.m.source.clone(), self.m.destination.clone()] {
            match self.agents().quick_discard(&host, &file).await {
                Ok(deleted) => {
                    self.quick_mut().file_deleted = true;
                    if let Err(e) = self.save_run().await {
                        tracing::warn!("cannot save the state file's deletion: {e}");
                    }
                    if deleted {
                        self.event(
                            EventKind::MigrationStateFile,
                            Outcome::Ok,
                            format!(
                                "state file of migration {} deleted from pool {} (by {host})",
                                self.m.id, file.pool
                            ),
                            serde_json::json!({"pool": file.pool, "host": host}),
                        );
                    }
                    return None;
                }
                Err(e) => last = format!("{e}"),
            }
        }
        let note = format!(
            "the state file ferry-quick-{}.vmstate in pool {} was not deleted: {last}",
            self.m.id, file.pool
        );
        self.event(
            EventKind::MigrationStateFile,
            Outcome::Error,
            note.clone(),
            serde_json::json!({"pool": file.pool}),
        );
        Some(note)
    }

    /// Nothing holds the whole VM any more: failed, the VM reported crashed; what is left
    /// on the destination and the stale or partial file go.
    async fn quick_lose(&mut self, reason: String, s: SideFacts, d: SideFacts) -> Step<Q> {
        let error = format!(
            "{reason}; the VM is lost and reported crashed on {}; its disks are untouched, so \
             `ferry vm start {}` boots it again",
            self.m.source, self.m.vm
        );
        self.m.error = Some(error.clone());
        self.quick_advance(
            QuickEvent::Lost,
            format!("failed: {error}"),
            serde_json::json!({"source": s, "destination": d}),
            Some(VmState::Crashed),
        )
        .await?;
        match self.agents().remove(&self.m.destination, &self.m.vm).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => tracing::warn!("could not remove the destination's QEMU: {e}"),
        }
        self.discard_state_file().await;
        Ok(Q::Done)
    }

    /// Stop and ask an operator; nothing is touched (the state file is kept).
    async fn quick_attention(&mut self, reason: String, s: SideFacts, d: SideFacts) -> Step<Q> {
        self.m.attention = Some(Attention {
            reason: reason.clone(),
            since: Utc::now(),
            source: s,
            destination: d,
        });
        self.m.error = Some(reason.clone());
        self.quick_advance(
            QuickEvent::Unresolved,
            format!(
                "needs attention: {reason} (source {}: {s}; destination {}: {d}); nothing was \
                 touched and the state file ferry-quick-{}.vmstate is kept; settle it with \
                 `ferry migration resolve {} --keep source|destination`",
                self.m.source, self.m.destination, self.m.id, self.m.id
            ),
            serde_json::json!({"source": s, "destination": d}),
            None,
        )
        .await?;
        Ok(Q::Done)
    }
}
