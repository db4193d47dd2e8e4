//! The forward path of a migration: prepare the destination, start the stream, follow it
//! (the disk copy is in `disks.rs`). Every way out that is not success hands a reason to
//! `settle`; nothing here rolls back or kills anything.

use std::time::Instant;

use ferry_api::*;
use ferry_migration::convergence::switchover_target_ms;
use ferry_migration::follow::{
    next_look_ms, next_unsent_bound, stream_next, Answer, StreamNext, StreamObservation,
    UnsentBound,
};
use ferry_migration::watch::{Role, Watch};

use super::{HoldPoint, Next, Run, Step, Why};

/// How often the stream is looked at once its end is near (see `next_look_ms`).
const NEAR_END_POLL_MS: u64 = 50;

impl Run {
    fn ms(&self, since: Instant) -> u64 {
        since.elapsed().as_millis() as u64
    }

    /// `Pending`: the destination starts an identical QEMU waiting for the stream (and
    /// exports the copy targets of local disks).
    pub(super) async fn begin(&mut self) -> Step<Next> {
        let spec = self.spec()?;
        self.m.run.ram_mib = spec.memory_mib;
        let stream = StreamSettings::from_options(&self.m.options, spec.memory_mib << 20);
        self.advance(
            PhaseEvent::Start,
            format!(
                "preparing {} to receive VM {}",
                self.m.destination, self.m.vm
            ),
            serde_json::json!({"source": self.m.source, "destination": self.m.destination}),
        )
        .await?;
        let req = IncomingRequest {
            spec,
            copy_disks: self.m.run.copies.iter().map(|c| c.target()).collect(),
            stream,
            peer_host: Some(self.m.source.clone()),
        };
        let dest = self.m.destination.clone();
        let incoming = match self.agents().prepare_incoming(&dest, &req).await {
            Ok(r) => r,
            Err(e) => {
                return Ok(Next::Settle(Why::Failure(format!(
                    "destination {dest} could not prepare: {e}"
                ))))
            }
        };
        let source_address = self
            .o
            .store
            .host(&self.m.source)
            .ok()
            .flatten()
            .map(|h| h.migration_address)
            .unwrap_or_default();
        self.m.stream_uri = Some(format!("tcp:{}", incoming.advertised));
        self.m.addresses = Some(MigrationAddresses {
            source: source_address.clone(),
            destination_listen: incoming.listen.clone(),
            destination_advertised: incoming.advertised.clone(),
        });
        self.hold(HoldPoint::Preparing).await;
        if self.cancel_requested() {
            return Ok(Next::Settle(Why::Cancel));
        }
        self.m.run.parts.prepare_ms = self.lap();
        if self.m.run.copies.is_empty() {
            self.advance(
                PhaseEvent::DestinationReady,
                format!(
                    "destination listens on {} (migration network); source {} sends to {}",
                    incoming.listen, source_address, incoming.advertised
                ),
                serde_json::to_value(&self.m.addresses).unwrap_or_default(),
            )
            .await?;
            return Ok(Next::StartStream);
        }
        let Some(export) = incoming.disk_export.clone() else {
            return Ok(Next::Settle(Why::Failure(format!(
                "destination {dest} did not export the disks to copy"
            ))));
        };
        let labels: Vec<String> = self.m.run.copies.iter().map(|c| c.label()).collect();
        self.advance(
            PhaseEvent::DestinationReadyWithDisks,
            format!(
                "destination listens on {} and exports {} at {export}; copying the disks first",
                incoming.listen,
                labels.join(", ")
            ),
            serde_json::json!({"addresses": self.m.addresses, "disk_export": export, "disks": labels}),
        )
        .await?;
        self.start_copy(&export, incoming.disk_export_names).await
    }

    /// `Transferring`: the source starts sending (the stream's start is saved first, so
    /// recovery knows the destination may hold data from here).
    pub(super) async fn start_stream(&mut self) -> Step<Next> {
        let Some(uri) = self.m.stream_uri.clone() else {
            return Ok(Next::Settle(Why::Failure(
                "no stream address was recorded for the destination".into(),
            )));
        };
        let o = &self.m.options;
        let req = OutgoingRequest {
            uri,
            max_bandwidth_bytes: o.max_bandwidth_mib.map(|m| m << 20).unwrap_or(0),
            // QEMU's limit counts only the RAM left to send; the controller starts it at
            // the least target and raises it (see `ferry_migration::convergence`).
            downtime_limit_ms: self.m.run.controller.target_or(switchover_target_ms(
                o.downtime_limit_ms.unwrap_or(DEFAULT_DOWNTIME_LIMIT_MS),
            )),
            stream: StreamSettings::from_options(o, self.m.run.ram_mib << 20),
            peer_host: Some(self.m.destination.clone()),
        };
        self.m.run.outgoing_started = true;
        self.save_run().await?;
        let source = self.m.source.clone();
        if let Err(e) = self
            .agents()
            .start_outgoing(&source, &self.m.vm, &req)
            .await
        {
            return Ok(Next::Settle(Why::Failure(format!(
                "source {source} could not start sending: {e}"
            ))));
        }
        self.hold(HoldPoint::Transferring).await;
        Ok(Next::FollowStream)
    }

    /// Follows the pre-copy stream on the source until QEMU completes it, switches to
    /// post-copy, or something fails; runs the controller after every pass.
    pub(super) async fn follow_stream(&mut self) -> Step<Next> {
        let poll = self.o.config.poll_interval;
        let progress_limit = self
            .m
            .options
            .progress_timeout_s
            .unwrap_or(DEFAULT_PROGRESS_TIMEOUT_S)
            * 1000;
        let clock = Instant::now();
        let mut unsent = UnsentBound::Open;
        let mut watch = Watch::new(
            0,
            self.o.config.silence_limit.as_millis() as u64,
            progress_limit,
        );
        // How long the next look may wait for QEMU to report a change (the agent answers
        // at the change: the end of the stream is seen when it happens, not a look later).
        let mut wait_ms = 0u64;
        loop {
            let now = self.ms(clock);
            // Only the source is polled here.
            watch.answered(Role::Destination, now);
            let asked = Instant::now();
            let answer = tokio::time::timeout(
                self.o.config.call_timeout,
                self.agents()
                    .migration_status_after(&self.m.source, &self.m.vm, wait_ms),
            )
            .await;
            let seen = self.m.progress.as_ref();
            let changed = matches!(&answer, Ok(Ok(s)) if seen.is_none_or(|p| {
                p.qemu_status != s.progress.qemu_status || s.progress.started_new_pass(Some(p))
            }));
            let left = wait_ms.saturating_sub(self.ms(asked));
            if !changed && left > 0 {
                // Back early with nothing new (an agent without the long poll, or no
                // answer): wait out the rest and look again, so this loop never spins.
                tokio::time::sleep(std::time::Duration::from_millis(left)).await;
                wait_ms = 0;
                continue;
            }
            let status = match answer {
                Ok(Ok(s)) => {
                    let now = self.ms(clock);
                    watch.answered(Role::Source, now);
                    watch.counter(s.progress.transferred_bytes, now);
                    Some(s)
                }
                _ => None,
            };
            let new_pass = status
                .as_ref()
                .is_some_and(|s| s.progress.started_new_pass(self.m.progress.as_ref()));
            let obs = StreamObservation {
                source: status.as_ref().map(|s| Answer {
                    facts: s.facts(),
                    error: s.error.clone(),
                }),
                new_pass,
                passes: status.as_ref().map(|s| s.progress.passes).unwrap_or(0),
                cancel_requested: self.cancel_requested(),
                postcopy_requested: self.m.run.controller.step == ControllerStep::Postcopy,
                timeout: watch.check(self.ms(clock)),
            };
            let decision = stream_next(&obs);
            if let Some(s) = &status {
                let mut p = s.progress.clone();
                if decision == StreamNext::Decide {
                    if let Err(reason) = self.control(&mut p).await? {
                        return Ok(Next::Settle(Why::Failure(reason)));
                    }
                }
                self.record_progress(p, new_pass)?;
            }
            match decision {
                StreamNext::Wait | StreamNext::Decide => {}
                StreamNext::Ended => {
                    self.m.run.parts.stream_ms = self.lap();
                    tracing::debug!(
                        look_ms = self.ms(asked),
                        wait_ms,
                        "the source reports the stream ended"
                    );
                    if let Some(s) = &status {
                        let mut r = MigrationReport::from_final(
                            &s.progress,
                            s.downtime_ms.unwrap_or(0),
                            self.started.elapsed().as_millis() as u64,
                        );
                        r.switchover_target_ms = Some(
                            self.m
                                .run
                                .controller
                                .target_or(switchover_target_ms(self.policy().downtime_budget_ms)),
                        );
                        self.m.report = Some(r);
                    }
                    return Ok(Next::Settle(Why::StreamEnded));
                }
                StreamNext::Postcopy => {
                    self.m.run.parts.stream_ms = self.lap();
                    return Ok(Next::Postcopy { just_started: true });
                }
                StreamNext::Fail(reason) => return Ok(Next::Settle(Why::Failure(reason))),
                StreamNext::Cancel => return Ok(Next::Settle(Why::Cancel)),
            }
            let link = self.m.run.controller.link_bytes_per_s(&Default::default());
            let poll_ms = poll.as_millis() as u64;
            let look = match &self.m.progress {
                Some(p) => next_look_ms(p.remaining_bytes, link, poll_ms, NEAR_END_POLL_MS),
                None => poll_ms,
            };
            // The pause must not start behind a socket backlog (the least-pause policy's).
            let streaming = self
                .m
                .progress
                .as_ref()
                .is_some_and(|p| p.transferred_bytes > 0);
            let least = self.policy().switchover == SwitchoverPolicy::Least;
            if let Some((next, bytes)) =
                next_unsent_bound(unsent, streaming, look < poll_ms, link).filter(|_| least)
            {
                unsent = next;
                self.bound_unsent(bytes).await;
            }
            wait_ms = look;
        }
    }

    /// Asks the source to bound its stream sockets' unsent bytes; best effort (a failure
    /// costs the pause a backlog, never the migration).
    async fn bound_unsent(&self, bytes: u32) {
        let req = TuneRequest {
            unsent_limit_bytes: Some(bytes),
            ..Default::default()
        };
        if let Err(e) = self.agents().tune(&self.m.source, &self.m.vm, &req).await {
            tracing::warn!("the source could not bound its stream's unsent bytes: {e}");
        }
    }

    /// Keeps the latest figures (with the controller's step and prediction) and logs a
    /// pass event when a pass ended.
    fn record_progress(&mut self, mut p: MigrationProgress, new_pass: bool) -> Step<()> {
        p.controller_step = self.m.run.controller.step;
        if p.predicted_downtime_ms.is_none() {
            p.predicted_downtime_ms = self
                .m
                .progress
                .as_ref()
                .and_then(|o| o.predicted_downtime_ms);
        }
        if new_pass {
            self.event(
                EventKind::MigrationPass,
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
        self.m.progress = Some(p);
        self.save_progress()
    }
}
