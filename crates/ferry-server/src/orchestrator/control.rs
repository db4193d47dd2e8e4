//! Runs the convergence controller ([`ferry_migration::convergence`]) after each pass and
//! carries out its decision on the source; every decision is an event with its numbers.
//! The controller's history (its step among it) is saved before a step is carried out,
//! so a restarted server knows post-copy was asked for even if QEMU had not switched yet.

use ferry_api::*;
use ferry_migration::convergence::{decide, Action, Policy, Sample};

use super::{Run, Step};

impl Run {
    pub(super) fn policy(&self) -> Policy {
        self.m.options.convergence_policy(self.m.run.ram_mib)
    }

    /// One controller round on `p` (the progress after a pass): records the prediction in
    /// `p` and acts. `Ok(Err(reason))`: the migration must stop (the controller aborted,
    /// or the source refused a step); recovery decides what that allows.
    pub(super) async fn control(&mut self, p: &mut MigrationProgress) -> Step<Result<(), String>> {
        let sample = Sample {
            pass: p.passes,
            elapsed_ms: p.elapsed_ms,
            remaining_bytes: p.remaining_bytes,
            bandwidth_bytes_per_s: p.bandwidth_bytes_per_s,
            dirty_rate_bytes_per_s: p.dirty_rate_bytes_per_s,
            throttle_pct: p.throttle_pct,
        };
        let policy = self.policy();
        let before = self.m.run.controller;
        let (d, history) = decide(&policy, &before, &sample);
        p.predicted_downtime_ms = d.predicted_downtime_ms;
        let data = serde_json::json!({
            "decision": d, "sample": sample, "policy": policy, "history": history,
        });
        // A new switch-over target travels with the step (or alone).
        // A new switch-over target travels with the step (or alone). QEMU keeps judging it
        // by its own rate estimate: in the short last passes that under-reads the link, so
        // QEMU waits for less than the target allows (tried: handing it the controller's
        // rate as `avail-switchover-bandwidth` made a 50 MiB/s guest switch at the first
        // pass under the target, 176 ms against 129 ms).
        let target = (history.target_ms != before.target_ms).then_some(history.target_ms);
        let request = match &d.action {
            Action::Continue => target.map(|ms| TuneRequest {
                downtime_limit_ms: Some(ms),
                ..Default::default()
            }),
            Action::RaiseThrottle { to_pct } => Some(TuneRequest {
                throttle_pct: Some(*to_pct),
                downtime_limit_ms: target,
                ..Default::default()
            }),
            Action::StartPostcopy => Some(TuneRequest {
                start_postcopy: true,
                downtime_limit_ms: target,
                ..Default::default()
            }),
            Action::Abort { reason } => {
                self.m.run.controller = history;
                self.event(
                    EventKind::MigrationController,
                    Outcome::Error,
                    format!("pass {}: aborting: {reason}", p.passes),
                    data,
                );
                return Ok(Err(format!("the convergence controller aborted: {reason}")));
            }
        };
        self.m.run.controller = history;
        if history.step != before.step || history.target_ms != before.target_ms {
            // Saved before QEMU is asked, so recovery knows the step was requested.
            self.save_run().await?;
        }
        self.event(
            EventKind::MigrationController,
            Outcome::Info,
            format!("pass {}: {}", p.passes, d.reason),
            data,
        );
        if let Some(req) = request {
            let source = self.m.source.clone();
            if let Err(e) = self.agents().tune(&source, &self.m.vm, &req).await {
                return Ok(Err(format!(
                    "the source could not carry out the controller's step ({}): {e}",
                    history.step
                )));
            }
        }
        Ok(Ok(()))
    }
}
