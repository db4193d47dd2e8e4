//! Runs one migration across two agents as a persisted state machine
//! (see [`ferry_migration::phase`] for the diagram).
//!
//! Ordering rules that keep a VM on exactly one host:
//! - the VM record moves to the destination only once the destination's QEMU is seen
//!   running (`SwitchingOver` → `Completed`, one SQLite transaction);
//! - the source QEMU is shut down only after that, and its agent refuses unless QEMU itself
//!   reports the stream completed;
//! - a rollback first removes the destination QEMU, then resumes the source, so two copies
//!   never run at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use ferry_api::client::AgentClient;
use ferry_api::*;
use tracing::Instrument;

use crate::core::Server;
use crate::storage_plan::PlannedCopy;
use crate::store::NewEvent;

mod control;
mod disks;
mod postcopy;

/// Rollback after the source completed: destination must be confirmed gone first.
const SWITCH_WAIT: Duration = Duration::from_secs(30);
/// How long an agent may fail to answer in a row before the migration is abandoned.
pub(crate) const AGENT_SILENCE_LIMIT: Duration = Duration::from_secs(15);

pub fn spawn(server: Arc<Server>, m: Migration) {
    let span = tracing::info_span!("migration", id = %m.id, vm = %m.vm);
    tokio::spawn(Run::new(server, m).drive().instrument(span));
}

/// After a server restart: finish or roll back what was in flight.
pub fn resume_unfinished(server: Arc<Server>) {
    let unfinished = match server.store.unfinished_migrations() {
        Ok(m) => m,
        Err(e) => {
            tracing::error!("cannot read unfinished migrations: {e}");
            return;
        }
    };
    for m in unfinished {
        let span = tracing::info_span!("migration", id = %m.id, vm = %m.vm);
        let server = server.clone();
        tokio::spawn(
            async move {
                tracing::warn!(phase = %m.phase, "resuming a migration the server was running when it stopped");
                Run::new(server, m).recover().await
            }
            .instrument(span),
        );
    }
}

struct Run {
    server: Arc<Server>,
    m: Migration,
    started: Instant,
    /// Whether the source was told to send or copy (so a rollback must cancel it).
    outgoing_started: bool,
    /// Local-pool disks copied to the destination before memory.
    copies: Vec<PlannedCopy>,
    /// The convergence controller's current step.
    step: ControllerStep,
    /// Guest RAM, for the completion deadline and the XBZRLE cache.
    ram_mib: u64,
}

/// How the stream left pre-copy.
enum Sent {
    /// QEMU completed it: the source is paused, the destination about to run.
    Completed,
    /// The controller switched it to post-copy: the destination runs the guest.
    Postcopy,
}

/// Why a step failed, and whether the operator asked for it.
struct Abort {
    reason: String,
    cancelled: bool,
}

impl Abort {
    fn fail(reason: impl Into<String>) -> Abort {
        Abort {
            reason: reason.into(),
            cancelled: false,
        }
    }
}

impl Run {
    fn new(server: Arc<Server>, m: Migration) -> Run {
        Run {
            server,
            m,
            started: Instant::now(),
            outgoing_started: false,
            copies: Vec::new(),
            step: ControllerStep::Precopy,
            ram_mib: 0,
        }
    }

    fn agent(&self, host: &str) -> Result<AgentClient, Abort> {
        // A disconnected host still gets a try: heartbeats may lag while the host is busy.
        let h = self.server.host(host).map_err(|e| Abort::fail(e.message))?;
        AgentClient::new(&h.url).map_err(|e| Abort::fail(e.to_string()))
    }

    fn event(&self, kind: &str, outcome: Outcome, message: String, data: serde_json::Value) {
        self.server
            .event(self.new_event(kind, outcome, message, data));
    }

    fn new_event(
        &self,
        kind: &str,
        outcome: Outcome,
        message: String,
        data: serde_json::Value,
    ) -> NewEvent {
        NewEvent {
            actor: "server".into(),
            kind: kind.into(),
            vm: Some(self.m.vm.clone()),
            host: None,
            migration: Some(self.m.id),
            outcome: Some(outcome),
            message,
            data,
        }
    }

    /// Moves to the next phase (refusing transitions the state machine forbids), persists
    /// it and logs it.
    fn advance(&mut self, ev: PhaseEvent, message: String, data: serde_json::Value) {
        match self.m.phase.next(ev) {
            Ok(next) => {
                let from = self.m.phase;
                self.m.phase = next;
                self.m.updated_at = Utc::now();
                if next.is_terminal() {
                    self.m.finished_at = Some(self.m.updated_at);
                }
                tracing::info!(%from, to = %next, "{message}");
                let outcome = match next {
                    Phase::Failed => Outcome::Error,
                    Phase::Completed | Phase::Cancelled => Outcome::Ok,
                    _ => Outcome::Info,
                };
                // The phase and its log entry land in one transaction.
                let ev = self.new_event("migration.phase", outcome, message, data);
                if let Err(e) = self.server.store.save_migration_logged(&self.m, Some(&ev)) {
                    // Where the VM is matters more than its log line: keep the phase.
                    tracing::error!("cannot log the phase change, saving it alone: {e}");
                    self.persist();
                }
            }
            Err(e) => tracing::error!("state machine refused a transition: {e}"),
        }
    }

    /// The switch is committed: `Completed`, with the report in the event.
    fn complete(&mut self, ev: PhaseEvent, r: &MigrationReport) {
        let message = format!(
            "VM {} runs on {}: {}",
            self.m.vm,
            self.m.destination,
            r.summary()
        );
        self.advance(ev, message, serde_json::to_value(r).unwrap_or_default());
    }

    fn persist(&self) {
        if let Err(e) = self.server.store.save_migration(&self.m) {
            tracing::error!("cannot persist migration: {e}");
        }
    }

    async fn drive(mut self) {
        let outcome = self.transfer().await;
        match outcome {
            Ok(Sent::Completed) => self.switch_over().await,
            Ok(Sent::Postcopy) => self.post_copy(true).await,
            Err(abort) => self.roll_back(abort).await,
        }
        self.server
            .cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.m.id);
    }

    /// Preparing and Transferring: until the source reports the stream completed (or
    /// switched to post-copy).
    async fn transfer(&mut self) -> Result<Sent, Abort> {
        let vm = self
            .server
            .find_vm(&self.m.vm)
            .map_err(|e| Abort::fail(e.message))?;
        let source = self.agent(&self.m.source)?;
        let source_host = self
            .server
            .host(&self.m.source)
            .map_err(|e| Abort::fail(e.message))?;
        let dest = self.agent(&self.m.destination)?;
        let dest_host = self
            .server
            .host(&self.m.destination)
            .map_err(|e| Abort::fail(e.message))?;
        self.copies = self
            .server
            .storage_plan(&vm, &dest_host)
            .await
            .map_err(|e| Abort::fail(e.message))?;
        self.ram_mib = vm.spec.memory_mib;
        if !self.copies.is_empty()
            && self.m.options.postcopy.unwrap_or_default() != PostcopyPolicy::Never
        {
            // Post-copy would start the guest on the destination before its disks finish.
            return Err(Abort::fail(
                "post-copy cannot be combined with copying local disks; migrate with postcopy \
                 never, or move the disks to shared storage first",
            ));
        }
        let stream = StreamSettings::from_options(&self.m.options, vm.spec.memory_mib << 20);
        self.advance(
            PhaseEvent::Start,
            format!(
                "preparing {} to receive VM {}",
                self.m.destination, self.m.vm
            ),
            serde_json::json!({"source": self.m.source, "destination": self.m.destination}),
        );
        let incoming = dest
            .prepare_incoming(&IncomingRequest {
                spec: vm.spec.clone(),
                copy_disks: self.copies.iter().map(|c| c.target()).collect(),
                stream: stream.clone(),
            })
            .await
            .map_err(|e| {
                Abort::fail(format!(
                    "destination {} could not prepare: {e}",
                    self.m.destination
                ))
            })?;
        self.check_cancel()?;
        let uri = format!("tcp:{}", incoming.advertised);
        self.m.stream_uri = Some(uri.clone());
        self.m.addresses = Some(MigrationAddresses {
            source: source_host.migration_address.clone(),
            destination_listen: incoming.listen.clone(),
            destination_advertised: incoming.advertised.clone(),
        });
        match (&incoming.disk_export, self.copies.is_empty()) {
            (_, true) => self.advance(
                PhaseEvent::DestinationReady,
                format!(
                    "destination listens on {} (migration network); source {} sends to {}",
                    incoming.listen, source_host.migration_address, incoming.advertised
                ),
                serde_json::to_value(&self.m.addresses).unwrap_or_default(),
            ),
            (Some(export), false) => {
                let labels: Vec<String> = self.copies.iter().map(|c| c.label()).collect();
                self.advance(
                    PhaseEvent::DestinationReadyWithDisks,
                    format!(
                        "destination listens on {} and exports {} at {}; copying the disks first",
                        incoming.listen,
                        labels.join(", "),
                        export
                    ),
                    serde_json::json!({"addresses": self.m.addresses, "disk_export": export, "disks": labels}),
                );
                let export = export.clone();
                self.copy_disks(&source, &dest, &export).await?;
            }
            (None, false) => {
                return Err(Abort::fail(format!(
                    "destination {} did not export the disks to copy",
                    self.m.destination
                )))
            }
        }
        let opts = &self.m.options;
        let req = OutgoingRequest {
            uri,
            max_bandwidth_bytes: opts.max_bandwidth_mib.map(|m| m << 20).unwrap_or(0),
            // QEMU's limit counts only the RAM left to send; see `switchover_target_ms`.
            downtime_limit_ms: ferry_migration::convergence::switchover_target_ms(
                opts.downtime_limit_ms.unwrap_or(DEFAULT_DOWNTIME_LIMIT_MS),
            ),
            stream,
        };
        self.outgoing_started = true;
        source.start_outgoing(&self.m.vm, &req).await.map_err(|e| {
            Abort::fail(format!(
                "source {} could not start sending: {e}",
                self.m.source
            ))
        })?;
        self.follow(&source).await
    }

    /// Polls the source until QEMU reports completed or post-copy (Ok) or failed (Err).
    async fn follow(&mut self, source: &AgentClient) -> Result<Sent, Abort> {
        let poll = self.server.config.poll_interval;
        let progress_timeout = Duration::from_secs(
            self.m
                .options
                .progress_timeout_s
                .unwrap_or(DEFAULT_PROGRESS_TIMEOUT_S),
        );
        let mut last_ok = Instant::now();
        let mut last_progress = (0u64, Instant::now());
        loop {
            if self.step != ControllerStep::Postcopy {
                // Once post-copy was asked for, only finishing is safe.
                self.check_cancel()?;
            }
            let status = match source.migration_status(&self.m.vm).await {
                Ok(s) => {
                    last_ok = Instant::now();
                    s
                }
                Err(e) if last_ok.elapsed() > AGENT_SILENCE_LIMIT => {
                    return Err(Abort::fail(format!(
                        "source {} stopped answering: {e}",
                        self.m.source
                    )));
                }
                Err(_) => {
                    tokio::time::sleep(poll).await;
                    continue;
                }
            };
            let mut p = status.progress.clone();
            let new_pass = p.started_new_pass(self.m.progress.as_ref());
            if new_pass && p.passes >= 2 && !status.is_completed() {
                // The first pass's dirty rate is not measured yet: decide from the second.
                self.control(source, &mut p).await?;
            }
            p.controller_step = self.step;
            if p.predicted_downtime_ms.is_none() {
                p.predicted_downtime_ms = self
                    .m
                    .progress
                    .as_ref()
                    .and_then(|o| o.predicted_downtime_ms);
            }
            if new_pass {
                self.event(
                    "migration.pass",
                    Outcome::Info,
                    format!(
                        "pass {}: {} MiB sent, {} MiB remaining, dirty rate {} MiB/s, {} MiB/s",
                        p.passes,
                        p.transferred_bytes >> 20,
                        p.remaining_bytes >> 20,
                        p.dirty_rate_bytes_per_s >> 20,
                        p.bandwidth_bytes_per_s >> 20
                    ),
                    serde_json::to_value(&p).unwrap_or_default(),
                );
            }
            if p.transferred_bytes > last_progress.0 {
                last_progress = (p.transferred_bytes, Instant::now());
            }
            self.m.progress = Some(p.clone());
            self.m.updated_at = Utc::now();
            self.persist();
            if status.is_completed() {
                let downtime = status.downtime_ms.unwrap_or(0);
                let report = MigrationReport::from_final(
                    &p,
                    downtime,
                    self.started.elapsed().as_millis() as u64,
                );
                self.m.report = Some(report);
                return Ok(Sent::Completed);
            }
            if status.is_postcopy() {
                return Ok(Sent::Postcopy);
            }
            if status.is_failed() {
                return Err(Abort::fail(format!(
                    "QEMU reports the migration {}: {}",
                    p.qemu_status,
                    status.error.unwrap_or_else(|| "no reason given".into())
                )));
            }
            if last_progress.1.elapsed() > progress_timeout {
                return Err(Abort::fail(format!(
                    "no progress for {}s (progress timeout)",
                    progress_timeout.as_secs()
                )));
            }
            tokio::time::sleep(poll).await;
        }
    }

    fn check_cancel(&self) -> Result<(), Abort> {
        if self.server.cancel_requested(self.m.id) {
            Err(Abort {
                reason: "cancelled by the operator".into(),
                cancelled: true,
            })
        } else {
            Ok(())
        }
    }

    /// The source completed: the destination must be seen running before anything else.
    async fn switch_over(&mut self) {
        self.advance(
            PhaseEvent::SourceCompleted,
            "source finished sending; waiting for the destination to run".into(),
            serde_json::to_value(&self.m.report).unwrap_or_default(),
        );
        let dest = match self.agent(&self.m.destination) {
            Ok(d) => d,
            Err(a) => return self.roll_back_after_switch(a.reason).await,
        };
        let deadline = Instant::now() + SWITCH_WAIT;
        let running = loop {
            match dest.vm(&self.m.vm).await {
                Ok(rt) if rt.state == VmState::Running => break Ok(()),
                Ok(rt) if matches!(rt.state, VmState::Crashed | VmState::Stopped) => {
                    break Err(format!(
                        "destination QEMU exited: {}",
                        rt.exit_reason.unwrap_or_default()
                    ))
                }
                Ok(rt) if Instant::now() > deadline => {
                    break Err(format!(
                        "destination did not start running (it is {})",
                        rt.state
                    ))
                }
                Err(e) if Instant::now() > deadline => {
                    break Err(format!("destination does not answer: {e}"))
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        if let Err(reason) = running {
            return self.roll_back_after_switch(reason).await;
        }
        // QEMU announced the MACs when it resumed; once more now, so switches that missed
        // the first rounds learn the new port.
        if !vm_nics_empty(&self.server, &self.m.vm) {
            if let Err(e) = dest.announce(&self.m.vm).await {
                tracing::warn!("announce after switch-over failed: {e}");
            }
        }
        // The destination runs: the switch is committed. From here the source only goes away.
        if let Some(r) = self.m.report.as_mut() {
            r.total_time_ms = self.started.elapsed().as_millis() as u64;
        }
        let r = self.m.report.clone().unwrap_or_default();
        self.complete(PhaseEvent::DestinationRunning, &r);
        if self.retire_source().await {
            self.retire_source_disks().await;
        }
    }

    /// Shuts the source QEMU down (paused in `postmigrate` since the switch). A failure
    /// here leaves a paused, harmless QEMU behind: logged, retried, never rolled back.
    /// Returns whether the source is gone.
    async fn retire_source(&self) -> bool {
        let Ok(source) = self.agent(&self.m.source) else {
            return false;
        };
        for attempt in 1..=5 {
            match source.hand_over(&self.m.vm).await {
                Ok(_) => {
                    self.event(
                        "migration.source_retired",
                        Outcome::Ok,
                        format!("source QEMU on {} shut down", self.m.source),
                        serde_json::Value::Null,
                    );
                    return true;
                }
                Err(e) if attempt == 5 => {
                    self.event(
                        "migration.source_retired",
                        Outcome::Error,
                        format!(
                            "source QEMU on {} was not shut down: {e}; it stays paused",
                            self.m.source
                        ),
                        serde_json::Value::Null,
                    );
                }
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
        false
    }

    /// Before the source completed: remove the destination, then resume the source.
    async fn roll_back(&mut self, abort: Abort) {
        let Abort { reason, cancelled } = abort;
        self.m.error = Some(reason.clone());
        let ev = if cancelled {
            PhaseEvent::CancelRequested
        } else {
            PhaseEvent::Failure
        };
        self.advance(
            ev,
            format!("rolling back: {reason}"),
            serde_json::Value::Null,
        );
        let mut notes = Vec::new();
        let dest_removed = match self.agent(&self.m.destination) {
            Ok(dest) => dest.remove(&self.m.vm).await.map_err(|e| e.to_string()),
            Err(a) => Err(a.reason),
        };
        if self.outgoing_started {
            match self.agent(&self.m.source) {
                Ok(source) => {
                    if let Err(e) = source.cancel_outgoing(&self.m.vm).await {
                        notes.push(format!("source could not be resumed: {e}"));
                    }
                }
                Err(a) => notes.push(a.reason),
            }
        }
        if let Err(e) = dest_removed {
            // The source runs again; partial copy targets on the destination are worth
            // waiting for (an agent that restarts can still remove them).
            let outcome = if self.copies.is_empty() {
                Err(e)
            } else {
                self.retry_destination_cleanup().await
            };
            if let Err(e) = outcome {
                let targets: Vec<String> = self.copies.iter().map(|c| c.label()).collect();
                notes.push(if targets.is_empty() {
                    format!("destination clean-up failed: {e}")
                } else {
                    format!(
                        "destination clean-up failed: {e}; the partial copies {} may remain on {}",
                        targets.join(", "),
                        self.m.destination
                    )
                });
            }
        }
        self.finish_rollback(cancelled, &reason, notes).await;
    }

    /// After the source completed but the destination did not run: the destination must be
    /// confirmed gone before the source may resume, or the VM could run twice.
    async fn roll_back_after_switch(&mut self, reason: String) {
        self.m.error = Some(reason.clone());
        self.advance(
            PhaseEvent::Failure,
            format!("rolling back after switch-over: {reason}"),
            serde_json::Value::Null,
        );
        let dest_gone = match self.agent(&self.m.destination) {
            Ok(dest) => dest.remove(&self.m.vm).await.is_ok(),
            Err(_) => false,
        };
        let mut notes = Vec::new();
        if dest_gone {
            match self.agent(&self.m.source) {
                Ok(source) => {
                    if let Err(e) = source.cancel_outgoing(&self.m.vm).await {
                        notes.push(format!("source could not be resumed: {e}"));
                    }
                }
                Err(a) => notes.push(a.reason),
            }
        } else {
            notes.push(format!(
                "the destination {} could not be confirmed stopped, so the VM stays paused on {} \
                 (never two copies); check {} and resume it on {}",
                self.m.destination, self.m.source, self.m.destination, self.m.source
            ));
        }
        self.finish_rollback(false, &reason, notes).await;
    }

    async fn finish_rollback(&mut self, cancelled: bool, reason: &str, notes: Vec<String>) {
        // Whatever happened, say where the VM is now.
        let source_state = match self.agent(&self.m.source) {
            Ok(s) => s.vm(&self.m.vm).await.map(|rt| rt.state).ok(),
            Err(_) => None,
        };
        if let Some(state) = source_state {
            let _ = self.server.store.set_vm_state(&self.m.vm, state);
        }
        let mut error = reason.to_string();
        for n in &notes {
            error.push_str("; ");
            error.push_str(n);
        }
        self.m.error = Some(error.clone());
        let where_now = match source_state {
            Some(s) => format!("VM {} is {} on {}", self.m.vm, s, self.m.source),
            None => format!("VM {} state on {} unknown", self.m.vm, self.m.source),
        };
        self.advance(
            PhaseEvent::RolledBack { cancelled },
            format!(
                "{}: {error}; {where_now}",
                if cancelled { "cancelled" } else { "failed" }
            ),
            serde_json::json!({"source_state": source_state}),
        );
    }

    /// A migration found unfinished at server start.
    async fn recover(mut self) {
        if self.m.phase == Phase::Pending {
            // Nothing was touched yet.
            return self
                .roll_back(Abort::fail(
                    "the server restarted before the migration began",
                ))
                .await;
        }
        let completed = match self.agent(&self.m.source) {
            Ok(s) => s
                .migration_status(&self.m.vm)
                .await
                .map(|st| st.is_completed())
                .unwrap_or(false),
            Err(_) => false,
        };
        match self.m.phase {
            Phase::RollingBack => {
                self.outgoing_started = true;
                self.roll_back(Abort::fail(
                    self.m
                        .error
                        .clone()
                        .unwrap_or_else(|| "server restarted".into()),
                ))
                .await
            }
            // Never rolled back: follow it to the end.
            Phase::PostCopy => self.post_copy(false).await,
            Phase::Preparing | Phase::Transferring | Phase::SwitchingOver if completed => {
                // The stream finished while the server was away: run the switch-over check
                // (re-entered from Transferring so the state machine sees SourceCompleted).
                self.m.phase = Phase::Transferring;
                self.switch_over().await
            }
            _ => {
                self.outgoing_started = true;
                self.roll_back(Abort::fail("the server restarted during the migration"))
                    .await
            }
        }
    }
}

fn vm_nics_empty(server: &Server, vm: &str) -> bool {
    server
        .find_vm(vm)
        .map(|v| v.spec.nics.is_empty())
        .unwrap_or(true)
}
