//! The post-copy half of a migration: the guest runs on the destination while the source
//! pushes the pages it still holds. There is no rollback from here, so this loop only ever
//! finishes the migration or, if a QEMU dies, reports the VM lost. A broken link is paused
//! on both sides and resumed once a probe gets through again; what to do at each poll is
//! the pure [`ferry_migration::postcopy::next`].

use std::time::{Duration, Instant};

use chrono::Utc;
use ferry_api::client::{AgentClient, ClientError};
use ferry_api::*;
use ferry_migration::postcopy::{next, resumed, Next, Observation, Side};

use super::{Run, SWITCH_WAIT};
use crate::precheck::probe_link;

/// The link probe before a reconnection: small, so it answers fast on a slow link.
const RECOVERY_PROBE_BYTES: u64 = 256 << 10;
const RECOVERY_PROBE_MS: u64 = 300;
/// Between reconnection attempts while the link stays down.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// Each agent call here gets this long: a destination QEMU whose guest waits for a page can
/// be slow to answer, and the loop must keep watching the other side meanwhile.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the post-copy progress goes into the event log.
const PROGRESS_EVENT_EVERY: Duration = Duration::from_secs(2);

/// The pause/recovery bookkeeping of one post-copy.
#[derive(Default)]
struct Outage {
    pauses: u32,
    paused_ms: u64,
    paused_since: Option<Instant>,
    recovering_since: Option<Instant>,
    /// The destination's recovery listener, `tcp:ADDR:PORT`, once it listens.
    listener: Option<String>,
    last_attempt: Option<Instant>,
    attempts: u32,
}

impl Run {
    /// Post-copy until the end. `just_started`: entered from the transfer (not from a
    /// server restart that found the migration in post-copy).
    pub(super) async fn post_copy(&mut self, just_started: bool) {
        let (source, dest) = match (self.agent(&self.m.source), self.agent(&self.m.destination)) {
            (Ok(s), Ok(d)) => (s, d),
            (Err(a), _) | (_, Err(a)) => {
                // Only a misconfigured server gets here (the hosts were known a moment ago).
                tracing::error!("post-copy cannot reach its hosts: {}", a.reason);
                return;
            }
        };
        self.step = ControllerStep::Postcopy;
        if just_started {
            let remaining = self
                .m
                .progress
                .as_ref()
                .map(|p| p.remaining_bytes >> 20)
                .unwrap_or(0);
            self.advance(
                PhaseEvent::PostcopyStarted,
                format!(
                    "post-copy: VM {} runs on {}; about {remaining} MiB still follow from {}",
                    self.m.vm, self.m.destination, self.m.source
                ),
                serde_json::to_value(&self.m.progress).unwrap_or_default(),
            );
        }
        match self.finish_postcopy(&source, &dest).await {
            Ok(outage) => self.complete_postcopy(&dest, outage).await,
            Err(reason) => self.lose(reason).await,
        }
    }

    /// Follows the page stream to completion, pausing and resuming it across link breaks.
    async fn finish_postcopy(
        &mut self,
        source: &AgentClient,
        dest: &AgentClient,
    ) -> Result<Outage, String> {
        let poll = self.server.config.poll_interval;
        let mut outage = Outage::default();
        let mut last_progress = (0u64, Instant::now());
        let mut last_event = Instant::now();
        loop {
            // Both at once: a side that is slow to answer must not delay seeing the other.
            let (src, dst) = tokio::join!(
                within(source.migration_status(&self.m.vm)),
                within(dest.migration_status(&self.m.vm))
            );
            let source_side = match &src {
                Ok(s) => Side::from_status(s.status()),
                Err(e) => exited_or_unknown(e),
            };
            let destination_side = match &dst {
                Ok(s) => Side::from_status(s.status()),
                Err(e) => exited_or_unknown(e),
            };
            if let Ok(s) = &src {
                if s.progress.transferred_bytes > last_progress.0 {
                    last_progress = (s.progress.transferred_bytes, Instant::now());
                }
                self.record_postcopy_progress(s, &mut last_event);
            }
            let obs = Observation {
                source: source_side,
                destination: destination_side,
                since_progress_ms: last_progress.1.elapsed().as_millis() as u64,
                recovering_ms: outage
                    .recovering_since
                    .map(|t| t.elapsed().as_millis() as u64),
            };
            if resumed(&obs) && outage.recovering_since.is_some() {
                self.resumed(&mut outage);
            }
            match next(&obs) {
                Next::Wait => {}
                Next::Finish => {
                    if let Ok(s) = src {
                        let mut report = MigrationReport::from_final(
                            &s.progress,
                            s.downtime_ms.unwrap_or(0),
                            self.started.elapsed().as_millis() as u64,
                        );
                        report.postcopy = true;
                        self.m.report = Some(report);
                    }
                    return Ok(outage);
                }
                Next::Lost { reason } => return Err(reason),
                Next::Pause { reason } => {
                    self.pause_both(source, dest, &reason, &mut outage).await;
                    // The clock restarts: a resumed stream gets the full stall limit.
                    last_progress.1 = Instant::now();
                }
                Next::Recover => {
                    if outage.paused_since.is_none() {
                        // QEMU noticed the break itself.
                        self.pause_both(source, dest, "QEMU saw the connection fail", &mut outage)
                            .await;
                    }
                    let due = outage
                        .last_attempt
                        .is_none_or(|t| t.elapsed() >= RETRY_EVERY);
                    if due {
                        outage.last_attempt = Some(Instant::now());
                        self.try_reconnect(source, dest, &mut outage).await;
                        last_progress.1 = Instant::now();
                    }
                }
            }
            tokio::time::sleep(poll).await;
        }
    }

    fn record_postcopy_progress(&mut self, s: &AgentMigrationStatus, last_event: &mut Instant) {
        let mut p = s.progress.clone();
        p.controller_step = ControllerStep::Postcopy;
        if last_event.elapsed() >= PROGRESS_EVENT_EVERY {
            *last_event = Instant::now();
            self.event(
                "migration.postcopy_progress",
                Outcome::Info,
                format!(
                    "post-copy ({}): {} MiB sent, {} MiB still on {}",
                    p.qemu_status,
                    p.transferred_bytes >> 20,
                    p.remaining_bytes >> 20,
                    self.m.source
                ),
                serde_json::to_value(&p).unwrap_or_default(),
            );
        }
        self.m.progress = Some(p);
        self.m.updated_at = Utc::now();
        self.persist();
    }

    /// Both sides drop the connection, so both can be reconnected.
    async fn pause_both(
        &mut self,
        source: &AgentClient,
        dest: &AgentClient,
        reason: &str,
        outage: &mut Outage,
    ) {
        let (s, d) = tokio::join!(
            within(source.pause_postcopy(&self.m.vm)),
            within(dest.pause_postcopy(&self.m.vm))
        );
        if outage.paused_since.is_none() {
            outage.paused_since = Some(Instant::now());
            outage.pauses += 1;
        }
        outage.recovering_since = None;
        outage.listener = None;
        let note = |r: Result<AgentMigrationStatus, ClientError>| match r {
            Ok(st) => st.progress.qemu_status.to_string(),
            Err(e) => format!("not paused ({e})"),
        };
        self.event(
            "migration.postcopy_paused",
            Outcome::Error,
            format!(
                "post-copy paused: {reason}; the guest keeps running on {} (pages it still needs \
                 wait); resuming as soon as the link carries traffic again",
                self.m.destination
            ),
            serde_json::json!({
                "reason": reason,
                "source": note(s),
                "destination": note(d),
                "pauses": outage.pauses,
            }),
        );
    }

    /// One reconnection attempt: probe the link; if it carries traffic, the destination
    /// listens again and the source reconnects. Failures are quiet (the link is still down)
    /// and retried by the caller.
    async fn try_reconnect(
        &mut self,
        source: &AgentClient,
        dest: &AgentClient,
        outage: &mut Outage,
    ) {
        outage.attempts += 1;
        if let Err(e) = probe_link(
            (&self.m.source, source),
            (&self.m.destination, dest),
            RECOVERY_PROBE_BYTES,
            RECOVERY_PROBE_MS,
        )
        .await
        {
            tracing::debug!(attempt = outage.attempts, "link still down: {e}");
            return;
        }
        // A side that did not notice the break (a silent link) is paused first.
        let _ = within(dest.pause_postcopy(&self.m.vm)).await;
        let _ = within(source.pause_postcopy(&self.m.vm)).await;
        let listener = match &outage.listener {
            Some(l) => l.clone(),
            None => match within(dest.recover_incoming(&self.m.vm)).await {
                Ok(r) => format!("tcp:{}", r.advertised),
                Err(e) => {
                    tracing::warn!("destination could not listen for the recovery: {e}");
                    return;
                }
            },
        };
        outage.listener = Some(listener.clone());
        let resume = ResumeRequest {
            uri: listener.clone(),
        };
        match within(source.resume_outgoing(&self.m.vm, &resume)).await {
            Ok(_) => {
                outage.recovering_since = Some(Instant::now());
                self.event(
                    "migration.postcopy_resuming",
                    Outcome::Info,
                    format!(
                        "the link is back: {} reconnects to {listener} (attempt {})",
                        self.m.source, outage.attempts
                    ),
                    serde_json::json!({"listener": listener, "attempt": outage.attempts}),
                );
            }
            Err(e) => tracing::warn!("source could not reconnect to {listener}: {e}"),
        }
    }

    /// Both sides report post-copy active again after a pause.
    fn resumed(&mut self, outage: &mut Outage) {
        let Some(since) = outage.paused_since.take() else {
            return;
        };
        let ms = since.elapsed().as_millis() as u64;
        outage.paused_ms += ms;
        outage.recovering_since = None;
        outage.listener = None;
        outage.attempts = 0;
        self.event(
            "migration.postcopy_resumed",
            Outcome::Ok,
            format!(
                "post-copy resumed after {:.1} s paused; pages flow from {} again",
                ms as f64 / 1000.0,
                self.m.source
            ),
            serde_json::json!({"paused_ms": ms, "pauses": outage.pauses}),
        );
    }

    /// The source sent its last page: the destination must still run; then the record
    /// moves and the source goes.
    async fn complete_postcopy(&mut self, dest: &AgentClient, outage: Outage) {
        let deadline = Instant::now() + SWITCH_WAIT;
        loop {
            match dest.vm(&self.m.vm).await {
                Ok(rt) if rt.state == VmState::Running => break,
                Ok(rt) if matches!(rt.state, VmState::Crashed | VmState::Stopped) => {
                    return self
                        .lose(format!(
                            "the destination QEMU exited as post-copy completed: {}",
                            rt.exit_reason.unwrap_or_default()
                        ))
                        .await
                }
                // A guest paused by its own hand on the destination is still there.
                _ if Instant::now() > deadline => break,
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let _ = dest.announce(&self.m.vm).await;
        let mut r = self.m.report.clone().unwrap_or_default();
        r.postcopy = true;
        r.postcopy_pauses = outage.pauses;
        r.postcopy_paused_ms = outage.paused_ms;
        r.total_time_ms = self.started.elapsed().as_millis() as u64;
        self.m.report = Some(r.clone());
        self.complete(PhaseEvent::PostcopyFinished, &r);
        self.retire_source().await;
    }

    /// A QEMU died during post-copy: the VM cannot be put back together. Nothing is
    /// removed (the surviving QEMU and its memory are kept for whoever investigates).
    async fn lose(&mut self, reason: String) {
        let error = format!(
            "{reason}; the VM cannot be recovered (its memory was split between {} and {}); \
             the surviving QEMU is left as it is",
            self.m.source, self.m.destination
        );
        self.m.error = Some(error.clone());
        let _ = self.server.store.set_vm_state(&self.m.vm, VmState::Crashed);
        self.advance(
            PhaseEvent::Lost,
            format!("failed in post-copy: {error}"),
            serde_json::Value::Null,
        );
    }
}

/// An agent call, given up after [`CALL_TIMEOUT`] (reported as an unreachable agent).
async fn within<T>(
    call: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| {
            Err(ClientError::Unreachable {
                url: "agent".into(),
                reason: format!("no answer within {} s", CALL_TIMEOUT.as_secs()),
            })
        })
}

/// An agent's answer that says the VM (so its QEMU) is not there any more.
fn is_gone(e: &ClientError) -> bool {
    matches!(e, ClientError::Api(a) if a.code == ErrorCode::NotFound)
}

fn exited_or_unknown(e: &ClientError) -> Side {
    if is_gone(e) || e.to_string().contains("QEMU is not running") {
        Side::Exited
    } else {
        Side::Unknown
    }
}
