//! The post-copy half of a migration: the guest runs on the destination while the source
//! pushes the pages it still holds. There is no rollback from here, so this loop only ever
//! finishes the migration or, if a QEMU dies, reports the VM lost. A broken link is paused
//! on both sides and resumed once a probe gets through again; what to do at each poll is
//! the pure [`ferry_migration::postcopy::next`].

use std::time::{Duration, Instant};

use chrono::Utc;
use ferry_api::*;
use ferry_migration::postcopy::{self, resumed, Observation, Side};
use ferry_migration::watch::Watch;

use super::agents::side_facts;
use super::{AgentError, HoldPoint, Next, Run, Step};

/// The link probe before a reconnection: small, so it answers fast on a slow link.
const RECOVERY_PROBE_BYTES: u64 = 256 << 10;
const RECOVERY_PROBE_MS: u64 = 300;
/// How often the post-copy progress goes into the event log.
const PROGRESS_EVENT_EVERY: Duration = Duration::from_secs(2);

/// The pause/recovery bookkeeping of one post-copy.
#[derive(Default)]
struct Outage {
    paused_since: Option<Instant>,
    recovering_since: Option<Instant>,
    /// The destination's recovery listener, `tcp:ADDR:PORT`, once it listens.
    listener: Option<String>,
    last_attempt: Option<Instant>,
    attempts: u32,
}

impl Run {
    /// Post-copy until the end. `just_started`: entered from the stream (not from a server
    /// restart or a recovery that found QEMU in post-copy already saved).
    pub(super) async fn post_copy(&mut self, just_started: bool) -> Step<Next> {
        self.m.run.controller.step = ControllerStep::Postcopy;
        if self.m.phase != Phase::PostCopy {
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
            )
            .await?;
        }
        if just_started {
            self.hold(HoldPoint::PostCopy).await;
        }
        let poll = self.o.config.poll_interval;
        let within = self.o.config.call_timeout;
        let clock = Instant::now();
        let now = |c: Instant| c.elapsed().as_millis() as u64;
        let mut watch = Watch::new(0, 0, postcopy::STALL_MS);
        let mut outage = Outage::default();
        let mut last_event = Instant::now();
        loop {
            // Both at once: a side that is slow to answer must not delay seeing the other.
            let agents = self.o.agents.clone();
            let ((s, src), (d, _)) = tokio::join!(
                side_facts(agents.as_ref(), &self.m.source, &self.m.vm, within),
                side_facts(agents.as_ref(), &self.m.destination, &self.m.vm, within)
            );
            if let Some(st) = &src {
                watch.counter(st.progress.transferred_bytes, now(clock));
                self.record_postcopy_progress(st, &mut last_event)?;
            }
            let obs = Observation {
                source: Side::from_facts(s),
                destination: Side::from_facts(d),
                since_progress_ms: watch.since_progress_ms(now(clock)),
                recovering_ms: outage
                    .recovering_since
                    .map(|t| t.elapsed().as_millis() as u64),
            };
            if resumed(&obs) && outage.recovering_since.is_some() {
                self.resumed(&mut outage).await?;
            }
            match postcopy::next(&obs) {
                postcopy::Next::Wait => {}
                postcopy::Next::Finish => {
                    self.m.run.parts.postcopy_ms = self.lap();
                    if let Some(st) = &src {
                        let mut report = MigrationReport::from_final(
                            &st.progress,
                            st.downtime_ms.unwrap_or(0),
                            self.started.elapsed().as_millis() as u64,
                        );
                        report.postcopy = true;
                        self.m.report = Some(report);
                    }
                    return self.finish_postcopy().await;
                }
                postcopy::Next::Lost { reason } => return self.lose(reason, s, d).await,
                postcopy::Next::Pause { reason } => {
                    self.pause_both(&reason, &mut outage).await?;
                    // The clock restarts: a resumed stream gets the full stall limit.
                    watch.restart_progress(now(clock));
                }
                postcopy::Next::Recover => {
                    if outage.paused_since.is_none() {
                        // QEMU noticed the break itself.
                        self.pause_both("QEMU saw the connection fail", &mut outage)
                            .await?;
                    }
                    let due = outage
                        .last_attempt
                        .is_none_or(|t| t.elapsed() >= self.o.config.retry_every);
                    if due {
                        outage.last_attempt = Some(Instant::now());
                        self.try_reconnect(&mut outage).await;
                        watch.restart_progress(now(clock));
                    }
                }
            }
            tokio::time::sleep(poll).await;
        }
    }

    fn record_postcopy_progress(
        &mut self,
        s: &AgentMigrationStatus,
        last_event: &mut Instant,
    ) -> Step<()> {
        let mut p = s.progress.clone();
        p.controller_step = ControllerStep::Postcopy;
        if last_event.elapsed() >= PROGRESS_EVENT_EVERY {
            *last_event = Instant::now();
            self.event(
                EventKind::MigrationPostcopyProgress,
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
        self.save_progress()
    }

    /// Both sides drop the connection, so both can be reconnected.
    async fn pause_both(&mut self, reason: &str, outage: &mut Outage) -> Step<()> {
        let within = self.o.config.call_timeout;
        let (s, d) = tokio::join!(
            bounded(
                within,
                self.agents().pause_postcopy(&self.m.source, &self.m.vm)
            ),
            bounded(
                within,
                self.agents()
                    .pause_postcopy(&self.m.destination, &self.m.vm)
            )
        );
        if outage.paused_since.is_none() {
            outage.paused_since = Some(Instant::now());
            self.m.run.postcopy_pauses += 1;
            self.save_run().await?;
        }
        outage.recovering_since = None;
        outage.listener = None;
        let note = |r: Result<AgentMigrationStatus, AgentError>| match r {
            Ok(st) => st.progress.qemu_status.to_string(),
            Err(e) => format!("not paused ({e})"),
        };
        self.event(
            EventKind::MigrationPostcopyPaused,
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
                "pauses": self.m.run.postcopy_pauses,
            }),
        );
        Ok(())
    }

    /// One reconnection attempt: probe the link; if it carries traffic, the destination
    /// listens again and the source reconnects. Failures are quiet (the link is still down)
    /// and retried by the caller.
    async fn try_reconnect(&mut self, outage: &mut Outage) {
        let within = self.o.config.call_timeout;
        outage.attempts += 1;
        let (source, dest, vm) = (
            self.m.source.clone(),
            self.m.destination.clone(),
            self.m.vm.clone(),
        );
        if let Err(e) = bounded(
            within,
            self.agents()
                .probe_link(&source, &dest, RECOVERY_PROBE_BYTES, RECOVERY_PROBE_MS),
        )
        .await
        {
            tracing::debug!(attempt = outage.attempts, "link still down: {e}");
            return;
        }
        // A side that did not notice the break (a silent link) is paused first.
        let _ = bounded(within, self.agents().pause_postcopy(&dest, &vm)).await;
        let _ = bounded(within, self.agents().pause_postcopy(&source, &vm)).await;
        let listener = match &outage.listener {
            Some(l) => l.clone(),
            None => match bounded(
                within,
                self.agents().recover_incoming(
                    &dest,
                    &vm,
                    &RecoverRequest {
                        peer_host: Some(source.clone()),
                    },
                ),
            )
            .await
            {
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
            peer_host: Some(dest.clone()),
        };
        match bounded(within, self.agents().resume_outgoing(&source, &vm, &resume)).await {
            Ok(_) => {
                outage.recovering_since = Some(Instant::now());
                self.event(
                    EventKind::MigrationPostcopyResuming,
                    Outcome::Info,
                    format!(
                        "the link is back: {source} reconnects to {listener} (attempt {})",
                        outage.attempts
                    ),
                    serde_json::json!({"listener": listener, "attempt": outage.attempts}),
                );
            }
            Err(e) => tracing::warn!("source could not reconnect to {listener}: {e}"),
        }
    }

    /// Both sides report post-copy active again after a pause.
    async fn resumed(&mut self, outage: &mut Outage) -> Step<()> {
        let Some(since) = outage.paused_since.take() else {
            return Ok(());
        };
        let ms = since.elapsed().as_millis() as u64;
        self.m.run.postcopy_paused_ms += ms;
        self.save_run().await?;
        outage.recovering_since = None;
        outage.listener = None;
        outage.attempts = 0;
        self.event(
            EventKind::MigrationPostcopyResumed,
            Outcome::Ok,
            format!(
                "post-copy resumed after {:.1} s paused; pages flow from {} again",
                ms as f64 / 1000.0,
                self.m.source
            ),
            serde_json::json!({"paused_ms": ms, "pauses": self.m.run.postcopy_pauses}),
        );
        Ok(())
    }

    /// The source sent its last page: the destination must run the whole VM; then the
    /// record moves and the source goes. A destination not seen running within the
    /// recovery bound (but not gone) waits for an operator.
    async fn finish_postcopy(&mut self) -> Step<Next> {
        let deadline = Instant::now() + self.o.config.recovery_bound;
        loop {
            let (s, d) = self.facts().await;
            if d.destination_holds() && d.running() {
                return self.commit().await;
            }
            if d.is_gone() {
                let reason = format!("the destination's QEMU is gone as post-copy completed ({d})");
                return self.lose(reason, s, d).await;
            }
            if Instant::now() > deadline {
                let reason = format!(
                    "post-copy completed but the destination was not seen running the VM ({d})"
                );
                return self.needs_attention(reason, s, d).await;
            }
            tokio::time::sleep(self.o.config.poll_interval).await;
        }
    }
}

/// An agent call, given up after `within` (reported as an unreachable agent).
async fn bounded<T>(
    within: Duration,
    call: impl std::future::Future<Output = Result<T, AgentError>>,
) -> Result<T, AgentError> {
    tokio::time::timeout(within, call)
        .await
        .unwrap_or_else(|_| {
            Err(AgentError::Unreachable {
                host: "agent".into(),
                reason: format!("no answer within {} s", within.as_secs()),
            })
        })
}
