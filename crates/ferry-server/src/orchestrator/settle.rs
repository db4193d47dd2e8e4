//! Settling a migration by the written rules ([`ferry_migration::recovery`]): after a
//! failure, a cancel, the end of the stream or a server restart, both sides' facts are
//! gathered and the pure `decide` says what they allow. Also the steps that follow from a
//! verdict: roll back, switch over and commit, clean up after the switch, report the VM
//! lost, stop for an operator — and the operator's own resolution.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use ferry_api::*;
use ferry_migration::recovery::{
    decide, resolve, Resolution, Saved, SideFacts, SourceRevival, Teardown, Verdict,
};

use super::agents::side_facts;
use super::{HoldPoint, Next, Orchestrator, Run, Step, Why};

fn facts_json(s: SideFacts, d: SideFacts) -> serde_json::Value {
    serde_json::json!({"source": s, "destination": d})
}

impl Run {
    /// Both sides' facts, asked at once, each bounded.
    pub(super) async fn facts(&self) -> (SideFacts, SideFacts) {
        let within = self.o.config.call_timeout;
        let agents = self.o.agents.clone();
        let ((s, _), (d, _)) = tokio::join!(
            side_facts(agents.as_ref(), &self.m.source, &self.m.vm, within),
            side_facts(agents.as_ref(), &self.m.destination, &self.m.vm, within)
        );
        (s, d)
    }

    /// Gathers the facts and carries out what [`decide`] allows; a missing fact is asked
    /// again for `recovery_bound`, then the migration waits for an operator.
    pub(super) async fn settle(&mut self, why: Why) -> Step<Next> {
        let started = Instant::now();
        let mut last: Option<String> = None;
        loop {
            let mut wait = self.o.config.retry_every;
            let (s, d) = self.facts().await;
            let saved = Saved {
                outgoing_started: self.m.run.outgoing_started,
            };
            let verdict = decide(self.m.phase, saved, why.trigger(), s, d);
            let said = format!("{verdict:?}");
            if last.as_deref() != Some(said.as_str()) {
                self.event(
                    EventKind::MigrationRecovery,
                    Outcome::Info,
                    format!(
                        "settling ({}): source {s}; destination {d} -> {}",
                        why.describe(),
                        describe(&verdict)
                    ),
                    facts_json(s, d),
                );
                last = Some(said);
            }
            let overdue = started.elapsed() > self.o.config.recovery_bound;
            match verdict {
                Verdict::Retry { reason } if overdue => {
                    let reason = format!(
                        "{reason}; still so after {:.1} s",
                        self.o.config.recovery_bound.as_secs_f64()
                    );
                    return self.needs_attention(reason, s, d).await;
                }
                Verdict::Retry { .. } => {}
                Verdict::NeedsAttention { reason } => {
                    return self.needs_attention(reason, s, d).await
                }
                Verdict::RollBack {
                    destination,
                    cancel_source,
                } => return self.roll_back(&why, destination, cancel_source).await,
                Verdict::Follow => {
                    return Ok(match self.m.phase {
                        Phase::Transferring => Next::FollowStream,
                        Phase::CopyingDisks => Next::FollowCopy,
                        _ => Next::Settle(Why::Failure(format!(
                            "nothing to follow in phase {}",
                            self.m.phase
                        ))),
                    })
                }
                Verdict::SwitchOver => {
                    let phase = self.m.phase;
                    if let Some(next) = self.switch_over(s, d).await? {
                        return Ok(next);
                    }
                    // The destination resumes by itself within milliseconds of the
                    // stream's end: look again at once after saving `SwitchingOver`, then
                    // at the polling pace, not recovery's (part of every migration's time).
                    wait = if phase != self.m.phase {
                        Duration::ZERO
                    } else {
                        self.o.config.poll_interval.min(wait)
                    };
                    if overdue {
                        let reason = format!(
                            "the destination holds the VM ({d}) but was not seen running within \
                             {:.1} s",
                            self.o.config.recovery_bound.as_secs_f64()
                        );
                        return self.needs_attention(reason, s, d).await;
                    }
                }
                Verdict::FollowPostcopy => {
                    return Ok(Next::Postcopy {
                        just_started: self.m.phase != Phase::PostCopy,
                    })
                }
                Verdict::Lost { reason } => return self.lose(reason, s, d).await,
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// The source holds the VM and the destination provably does not: the destination goes
    /// first (so two copies never run), then the source is made to run.
    async fn roll_back(
        &mut self,
        why: &Why,
        teardown: Teardown,
        cancel_source: bool,
    ) -> Step<Next> {
        let cancelled = matches!(why, Why::Cancel);
        if self.m.phase != Phase::RollingBack {
            let reason = why.describe();
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
            )
            .await?;
        }
        let mut notes = Vec::new();
        let dest = self.m.destination.clone();
        // (removal settled, the destination's QEMU is provably gone)
        let (removed, gone) = match teardown {
            Teardown::Remove => match self.agents().remove(&dest, &self.m.vm).await {
                Ok(()) => (true, true),
                Err(e) if e.is_not_found() => (true, true),
                Err(e) if e.is_unreachable() => (false, false),
                Err(e) => {
                    notes.push(format!("destination clean-up failed: {e}"));
                    (true, false)
                }
            },
            Teardown::Later => (false, false),
        };
        let (removed, gone) = if removed {
            (removed, gone)
        } else {
            let back = self.remove_destination_when_back().await?;
            (back, back)
        };
        if gone {
            // Only once its QEMU is gone: never pull an image from under a running QEMU.
            for f in self.delete_destination_copies().await {
                notes.push(format!("a partial copy was left: {f}"));
            }
        }
        if !removed {
            let targets: Vec<String> = self.m.run.copies.iter().map(|c| c.label()).collect();
            notes.push(format!(
                "{dest}'s agent did not answer, so its partial incoming QEMU{} may remain there \
                 (it holds nothing of the VM that can run)",
                if targets.is_empty() {
                    String::new()
                } else {
                    format!(" and the partial copies {}", targets.join(", "))
                }
            ));
        }
        if cancel_source {
            let source = self.m.source.clone();
            match self.agents().cancel_outgoing(&source, &self.m.vm).await {
                Ok(()) => {}
                Err(e) if e.is_unreachable() || matches!(e, super::AgentError::Refused { .. }) => {
                    // The source moved on, or cannot be asked: decide again from the facts.
                    tracing::warn!("the source did not resume: {e}; settling again");
                    return Ok(Next::Settle(why.clone()));
                }
                Err(e) => notes.push(format!("source could not be resumed: {e}")),
            }
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
        let where_now = match state {
            Some(st) => format!("VM {} is {st} on {}", self.m.vm, self.m.source),
            None => format!("VM {} on {}: {s}", self.m.vm, self.m.source),
        };
        self.advance_with(
            PhaseEvent::RolledBack { cancelled },
            format!(
                "{}: {error}; {where_now}",
                if cancelled { "cancelled" } else { "failed" }
            ),
            serde_json::json!({"source": s, "notes": notes}),
            state,
        )
        .await?;
        Ok(Next::Done)
    }

    /// A rollback whose destination did not answer: try to remove it until its agent is
    /// back (an agent that restarts adopts its QEMU and can then remove it and its partial
    /// copy targets), within the clean-up bound. The VM stays claimed meanwhile, so no new
    /// migration can start towards that destination and be removed by mistake.
    pub(super) async fn remove_destination_when_back(&mut self) -> Step<bool> {
        self.m.run.destination_cleanup_pending = true;
        self.save_run().await?;
        let deadline = Instant::now() + self.o.config.cleanup_wait;
        let dest = self.m.destination.clone();
        loop {
            match self.agents().remove(&dest, &self.m.vm).await {
                Ok(()) => break,
                Err(e) if e.is_not_found() => break,
                Err(e) if Instant::now() > deadline => {
                    self.event(
                        EventKind::MigrationDestinationCleanup,
                        Outcome::Error,
                        format!("could not clean up {dest}: {e}"),
                        serde_json::Value::Null,
                    );
                    return Ok(false);
                }
                Err(_) => tokio::time::sleep(self.o.config.retry_every).await,
            }
        }
        self.m.run.destination_cleanup_pending = false;
        self.save_run().await?;
        self.event(
            EventKind::MigrationDestinationCleanup,
            Outcome::Ok,
            format!("{dest} removed its partial incoming VM"),
            serde_json::Value::Null,
        );
        Ok(true)
    }

    /// The destination holds the whole VM: save `SwitchingOver`, see it run, commit.
    /// `None`: not yet (ask again).
    async fn switch_over(&mut self, s: SideFacts, d: SideFacts) -> Step<Option<Next>> {
        if self.m.phase != Phase::SwitchingOver {
            if self.m.phase.next(PhaseEvent::SourceCompleted).is_err() {
                let reason = format!(
                    "the destination holds the VM ({d}) but the record says {}; the two do not \
                     fit",
                    self.m.phase
                );
                return self.needs_attention(reason, s, d).await.map(Some);
            }
            let message = if s.source_completed() {
                "source finished sending; waiting for the destination to run".to_string()
            } else {
                format!(
                    "the destination received everything ({d}) while the source has {s}; \
                     waiting for it to run"
                )
            };
            let report = serde_json::to_value(&self.m.report).unwrap_or_default();
            self.advance(PhaseEvent::SourceCompleted, message, report)
                .await?;
            self.hold(HoldPoint::SwitchingOver).await;
            return Ok(None); // look again: the world may have moved while held
        }
        if !(d.destination_holds() && d.running()) {
            return Ok(None);
        }
        self.commit().await.map(Some)
    }

    /// The destination runs the whole VM: `Completed` (the VM record moves in the same
    /// transaction). Only then is the source retired.
    pub(super) async fn commit(&mut self) -> Step<Next> {
        let has_nics = self
            .o
            .store
            .vm(&self.m.vm)
            .ok()
            .flatten()
            .is_some_and(|v| !v.spec.nics.is_empty());
        if has_nics {
            // QEMU announced the MACs when it resumed; once more now, for switches that
            // missed the first rounds.
            if let Err(e) = self
                .agents()
                .announce(&self.m.destination, &self.m.vm)
                .await
            {
                tracing::warn!("announce after switch-over failed: {e}");
            }
        }
        let mut r = self.m.report.clone().unwrap_or_default();
        r.total_time_ms = self.started.elapsed().as_millis() as u64;
        self.m.run.parts.switch_ms = self.lap();
        r.parts = Some(self.m.run.parts);
        if self.m.phase != Phase::PostCopy {
            r.pause = self.pause_parts().await;
        }
        r.postcopy_pauses = self.m.run.postcopy_pauses;
        r.postcopy_paused_ms = self.m.run.postcopy_paused_ms;
        if has_nics {
            r.network = self.network_report().await;
        }
        self.m.report = Some(r.clone());
        let ev = if self.m.phase == Phase::PostCopy {
            PhaseEvent::PostcopyFinished
        } else {
            PhaseEvent::DestinationRunning
        };
        self.advance(
            ev,
            format!(
                "VM {} runs on {}: {}",
                self.m.vm,
                self.m.destination,
                r.summary()
            ),
            serde_json::to_value(&r).unwrap_or_default(),
        )
        .await?;
        Ok(Next::CleanUp)
    }

    /// The pause in pieces from both QEMUs' checkpoints (None when neither side can say;
    /// a report without it loses nothing).
    async fn pause_parts(&self) -> Option<PauseParts> {
        let within = self.o.config.call_timeout;
        let ask = |host: String| async move {
            tokio::time::timeout(within, self.agents().pause_checkpoints(&host, &self.m.vm))
                .await
                .ok()
                .and_then(|r| r.ok())
                .unwrap_or_default()
        };
        let (s, d) = tokio::join!(ask(self.m.source.clone()), ask(self.m.destination.clone()));
        PauseParts::from_checkpoints(&s, &d)
    }

    /// What the two hosts' taps saw of the switch-over: the source first (its answer waits
    /// for the drain to end, at most `DRAIN_MAX` after completion: the destination's
    /// delivered count is final after it), then the destination (its first guest frame).
    /// Outside `total_time_ms`; a side that cannot say leaves its part empty.
    async fn network_report(&self) -> Option<NetworkReport> {
        let ask = |host: String, wait_ms: u64| async move {
            match self.agents().frame_report(&host, &self.m.vm, wait_ms).await {
                Ok(r) => Some(r),
                Err(e) => {
                    if !e.is_not_found() {
                        tracing::warn!(%host, "no frame report: {e}");
                    }
                    None
                }
            }
        };
        let source = ask(self.m.source.clone(), 4_000).await;
        // A guest that sent nothing to anyone on the source has no client waiting for its
        // first frame on the destination: do not hold the commit for it.
        let talking = source
            .as_ref()
            .is_some_and(|s| s.last_guest_frame_unix_ms.is_some());
        let wait = if talking { 1_500 } else { 0 };
        let destination = ask(self.m.destination.clone(), wait).await;
        ferry_api::frames::network_report(source.as_ref(), destination.as_ref())
    }

    /// After `Completed`: the source QEMU (paused in `postmigrate`) is shut down once the
    /// destination is proven to run the whole VM, then the source's disk copies go.
    pub(super) async fn clean_up(&mut self) -> Step<Next> {
        let deadline = Instant::now() + self.o.config.cleanup_wait;
        let source = self.m.source.clone();
        while !self.m.run.source_retired {
            let (s, d) = self.facts().await;
            let proven = d.destination_holds() && d.running();
            let outcome = if !proven {
                Err(format!(
                    "the destination is not proven to run the VM ({d}); the source stays as it is"
                ))
            } else if s.is_gone() {
                Ok(format!("source QEMU on {source} is already gone"))
            } else if s.source_completed() {
                match self.agents().hand_over(&source, &self.m.vm).await {
                    Ok(()) => Ok(format!("source QEMU on {source} shut down")),
                    Err(e) => Err(format!("{e}")),
                }
            } else if s.is_unknown() {
                Err(format!("the source cannot be checked ({s})"))
            } else {
                // Not the completed copy Ferry left behind: never touched.
                self.event(
                    EventKind::MigrationSourceRetired,
                    Outcome::Error,
                    format!(
                        "the source on {source} reports {s}, not the completed QEMU of this \
                         migration; it is left alone: check it"
                    ),
                    facts_json(s, d),
                );
                break;
            };
            match outcome {
                Ok(message) => {
                    self.m.run.source_retired = true;
                    self.save_run().await?;
                    self.event(
                        EventKind::MigrationSourceRetired,
                        Outcome::Ok,
                        message,
                        serde_json::Value::Null,
                    );
                }
                Err(reason) if Instant::now() > deadline => {
                    self.event(
                        EventKind::MigrationSourceRetired,
                        Outcome::Error,
                        format!(
                            "source QEMU on {source} was not shut down: {reason}; it stays paused"
                        ),
                        facts_json(s, d),
                    );
                    break;
                }
                Err(_) => tokio::time::sleep(self.o.config.retry_every).await,
            }
        }
        if let Some(c) = self.m.run.cold.clone() {
            if !ferry_migration::cold::may_delete_source_disks(c.step, &c.verified)
                && !self.m.run.source_disks_done
            {
                self.m.run.source_disks_done = true;
                self.save_run().await?;
                self.event(
                    EventKind::MigrationSourceDisks,
                    Outcome::Error,
                    format!("the source's disks on {source} are kept: not every copy was verified"),
                    serde_json::json!({"verified": c.verified}),
                );
            }
        }
        if self.m.run.source_retired {
            self.retire_source_disks().await?;
        }
        if self.m.run.quick.is_some() && self.m.run.source_retired {
            // The VM runs on the destination and the source is gone: the file is stale.
            self.discard_state_file().await;
        }
        if self.m.run.cold.is_some() {
            self.finish_cold().await?;
        }
        Ok(Next::Done)
    }

    /// The VM's only whole copy is gone: the migration fails and the VM is reported
    /// crashed. A destination that never held the VM is removed; in post-copy so is the
    /// survivor, which holds only part of the memory: left alone, a destination survivor's
    /// guest would run on (and write to shared disks) until it faults on a page that will
    /// never come, next to the VM the operator boots again from the same disks.
    pub(super) async fn lose(&mut self, reason: String, s: SideFacts, d: SideFacts) -> Step<Next> {
        let postcopy = self.m.phase == Phase::PostCopy || s.is_postcopy() || d.is_postcopy();
        let error = if postcopy {
            format!(
                "{reason}; the VM cannot be recovered (its memory was split between {} and {}); \
                 the surviving QEMU, which holds only part of it, is stopped, and the disks are \
                 untouched, so `ferry vm start {}` boots it again",
                self.m.source, self.m.destination, self.m.vm
            )
        } else {
            format!(
                "{reason}; the VM is lost (its only whole copy is gone) and reported crashed on \
                 {}; its disks are untouched, so `ferry vm start {}` boots it again",
                self.m.source, self.m.vm
            )
        };
        self.m.error = Some(error.clone());
        self.advance_with(
            PhaseEvent::Lost,
            format!("failed: {error}"),
            facts_json(s, d),
            Some(VmState::Crashed),
        )
        .await?;
        let mut doomed = Vec::new();
        if postcopy || d.destination_partial() || d.is_gone() {
            doomed.push(self.m.destination.clone());
        }
        if postcopy {
            doomed.push(self.m.source.clone());
        }
        for host in doomed {
            match self.agents().remove(&host, &self.m.vm).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => self.event(
                    EventKind::MigrationDestinationCleanup,
                    Outcome::Error,
                    format!(
                        "could not stop what is left of VM {} on {host}: {e}",
                        self.m.vm
                    ),
                    serde_json::Value::Null,
                ),
            }
        }
        Ok(Next::Done)
    }

    /// Stop and say so: the facts do not prove a safe step. Nothing is touched.
    pub(super) async fn needs_attention(
        &mut self,
        reason: String,
        s: SideFacts,
        d: SideFacts,
    ) -> Step<Next> {
        self.m.attention = Some(Attention {
            reason: reason.clone(),
            since: Utc::now(),
            source: s,
            destination: d,
        });
        self.m.error = Some(reason.clone());
        self.advance(
            PhaseEvent::Unresolved,
            format!(
                "needs attention: {reason} (source {}: {s}; destination {}: {d}); nothing was \
                 touched; settle it with `ferry migration resolve {} --keep source|destination`",
                self.m.source, self.m.destination, self.m.id
            ),
            facts_json(s, d),
        )
        .await?;
        Ok(Next::Done)
    }
}

impl Why {
    pub(super) fn describe(&self) -> String {
        match self {
            Why::StreamEnded => "the source completed the stream".into(),
            Why::Failure(r) => r.clone(),
            Why::Cancel => "cancelled by the operator".into(),
            Why::Restart => "the server restarted during the migration".into(),
        }
    }
}

fn describe(v: &Verdict) -> String {
    match v {
        Verdict::Retry { reason } => format!("wait and look again ({reason})"),
        Verdict::NeedsAttention { reason } => format!("needs attention ({reason})"),
        Verdict::RollBack {
            destination,
            cancel_source,
        } => format!(
            "roll back (destination: {}, source: {})",
            match destination {
                Teardown::Remove => "remove",
                Teardown::Later => "remove once its agent answers",
            },
            if *cancel_source {
                "cancel its stream and resume it"
            } else {
                "untouched"
            }
        ),
        Verdict::Follow => "follow the stream on".into(),
        Verdict::SwitchOver => "switch over".into(),
        Verdict::FollowPostcopy => "follow post-copy to its end".into(),
        Verdict::Lost { reason } => format!("lost ({reason})"),
    }
}

impl Orchestrator {
    /// An operator settles a migration that needs attention by keeping one side. The
    /// facts are gathered again and the choice checked ([`resolve`]): a choice that would
    /// lose the VM is refused, as is one whose other side cannot be checked unless forced.
    pub async fn resolve(
        self: &Arc<Self>,
        id: uuid::Uuid,
        req: &ResolveRequest,
        actor: &str,
    ) -> Result<Migration, ApiError> {
        let m = self
            .store
            .migration(id)?
            .ok_or_else(|| ApiError::not_found(format!("no migration with id {id}")))?;
        if m.phase != Phase::NeedsAttention {
            return Err(ApiError::conflict(format!(
                "migration {id} is {}, not needs_attention: there is nothing to resolve",
                m.phase
            )));
        }
        if !super::lock(&self.running).insert(id) {
            return Err(ApiError::conflict(format!(
                "migration {id} is being settled right now"
            )));
        }
        let mut run = Run::new(self.clone(), m);
        let outcome = run.resolve(req, actor).await;
        super::lock(&self.running).remove(&id);
        outcome?;
        if run.m.phase == Phase::Completed && run.m.run.cleanup_pending() {
            // Retiring the source may wait for its agent: in the background, as after any
            // switch-over.
            self.spawn(run.m.clone(), Next::CleanUp);
        }
        Ok(run.m)
    }
}

impl Run {
    async fn resolve(&mut self, req: &ResolveRequest, actor: &str) -> Result<(), ApiError> {
        let (s, d) = self.facts().await;
        let plan = resolve(req.keep, s, d, req.force).map_err(|reason| {
            ApiError::conflict(format!("cannot keep the {}: {reason}", req.keep))
                .with_details(facts_json(s, d))
        })?;
        let (source, dest, vm) = (
            self.m.source.clone(),
            self.m.destination.clone(),
            self.m.vm.clone(),
        );
        let upstream = |what: &str, e: super::AgentError| {
            ApiError::upstream(format!("{what}: {e}")).with_details(facts_json(s, d))
        };
        let by = format!("resolved by {actor}: kept the {}", req.keep);
        match plan {
            Resolution::KeepSource {
                remove_destination,
                revive,
            } => {
                if remove_destination {
                    match self.agents().remove(&dest, &vm).await {
                        Ok(()) => {}
                        Err(e) if e.is_not_found() => {}
                        Err(e) if req.force && e.is_unreachable() => {}
                        Err(e) => return Err(upstream(&format!("removing the VM on {dest}"), e)),
                    }
                }
                let revived = match revive {
                    SourceRevival::Cancel => self.agents().cancel_outgoing(&source, &vm).await,
                    SourceRevival::Reclaim => self.agents().reclaim(&source, &vm).await,
                };
                revived.map_err(|e| upstream(&format!("resuming the VM on {source}"), e))?;
                for f in self.delete_destination_copies().await {
                    self.event(
                        EventKind::MigrationDestinationCleanup,
                        Outcome::Error,
                        format!("a copy made for this migration was left: {f}"),
                        serde_json::Value::Null,
                    );
                }
                self.advance_with(
                    PhaseEvent::ResolvedKeepSource,
                    format!(
                        "{by}: VM {vm} runs on {source}; the destination {dest} was cleaned up"
                    ),
                    facts_json(s, d),
                    Some(VmState::Running),
                )
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?;
            }
            Resolution::KeepDestination { stop_source } => {
                let mut d = d;
                if self.m.options.mode == MigrationMode::Quick
                    && !d.running()
                    && d.destination_holds()
                {
                    // A quick destination that loaded the state waits paused for its resume.
                    self.agents()
                        .quick_resume(&dest, &vm)
                        .await
                        .map_err(|e| upstream(&format!("resuming the VM on {dest}"), e))?;
                    d = self.facts().await.1;
                }
                if !d.running() {
                    return Err(ApiError::conflict(format!(
                        "the destination {dest} holds the VM but its guest does not run ({d}); \
                         start it there first"
                    ))
                    .with_details(facts_json(s, d)));
                }
                self.advance(
                    PhaseEvent::ResolvedKeepDestination,
                    format!("{by}: VM {vm} runs on {dest}"),
                    facts_json(s, d),
                )
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?;
                // Durable: the destination is the VM's home now. The source goes.
                if stop_source && !s.source_completed() && !s.is_gone() && !s.is_unknown() {
                    // A runnable copy on the source, which the operator chose to drop.
                    if let Err(e) = self.agents().remove(&source, &vm).await {
                        self.event(
                            EventKind::MigrationSourceRetired,
                            Outcome::Error,
                            format!("could not stop the source copy on {source}: {e}"),
                            facts_json(s, d),
                        );
                    } else {
                        self.m.run.source_retired = true;
                        self.save_run()
                            .await
                            .map_err(|e| ApiError::internal(e.to_string()))?;
                    }
                }
            }
        }
        let kept_destination = self.m.phase == Phase::Completed;
        if let Some(q) = self.m.run.quick.as_mut() {
            q.step = if kept_destination {
                QuickStep::Completed
            } else {
                // The source runs again: the state file is stale from now on.
                q.saved.revive_requested = true;
                QuickStep::Failed
            };
            self.save_run()
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?;
            if !kept_destination {
                self.discard_state_file().await;
            }
        }
        Ok(())
    }
}
