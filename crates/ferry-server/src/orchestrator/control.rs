//! Runs the convergence controller ([`ferry_migration::convergence`]) after each pass and
//! carries out its decision on the source; every decision is an event with its numbers.

use ferry_api::client::AgentClient;
use ferry_api::*;
use ferry_migration::convergence::{decide, Action, Policy, Sample};

use super::{Abort, Run};

impl Run {
    fn policy(&self) -> Policy {
        let o = &self.m.options;
        let ram_gib = self.ram_mib.div_ceil(1024).max(1);
        Policy {
            downtime_budget_ms: o.downtime_limit_ms.unwrap_or(DEFAULT_DOWNTIME_LIMIT_MS),
            max_throttle_pct: o.max_throttle_pct.unwrap_or(0),
            postcopy: o.postcopy.unwrap_or_default(),
            completion_deadline_ms: o
                .completion_timeout_s_per_gib
                .map(|s| s * 1000 * ram_gib)
                .unwrap_or(0),
        }
    }

    /// One controller round on `p` (the progress after a pass): records the prediction in
    /// `p`, acts, and fails the migration when the controller aborts.
    pub(super) async fn control(
        &mut self,
        source: &AgentClient,
        p: &mut MigrationProgress,
    ) -> Result<(), Abort> {
        let sample = Sample {
            pass: p.passes,
            elapsed_ms: p.elapsed_ms,
            remaining_bytes: p.remaining_bytes,
            bandwidth_bytes_per_s: p.bandwidth_bytes_per_s,
            dirty_rate_bytes_per_s: p.dirty_rate_bytes_per_s,
            throttle_pct: p.throttle_pct,
        };
        let policy = self.policy();
        let (d, history) = decide(&policy, &self.m.run.controller, &sample);
        self.m.run.controller = history;
        p.predicted_downtime_ms = d.predicted_downtime_ms;
        let data = serde_json::json!({
            "decision": d, "sample": sample, "policy": policy, "step": self.step,
        });
        let (outcome, message, result) = match &d.action {
            Action::Continue => (Outcome::Info, d.reason.clone(), Ok(())),
            &Action::RaiseThrottle { to_pct } => {
                let req = TuneRequest {
                    throttle_pct: Some(to_pct),
                    ..Default::default()
                };
                source.tune(&self.m.vm, &req).await.map_err(|e| {
                    Abort::fail(format!("the source could not throttle the guest: {e}"))
                })?;
                self.step = ControllerStep::Throttled(to_pct);
                (Outcome::Info, d.reason.clone(), Ok(()))
            }
            Action::StartPostcopy => {
                let req = TuneRequest {
                    start_postcopy: true,
                    ..Default::default()
                };
                source.tune(&self.m.vm, &req).await.map_err(|e| {
                    Abort::fail(format!("the source could not switch to post-copy: {e}"))
                })?;
                self.step = ControllerStep::Postcopy;
                (Outcome::Info, d.reason.clone(), Ok(()))
            }
            Action::Abort { reason } => (
                Outcome::Error,
                format!("aborting: {reason}"),
                Err(Abort::fail(format!(
                    "the convergence controller aborted: {reason}"
                ))),
            ),
        };
        self.event(
            "migration.controller",
            outcome,
            format!("pass {}: {message}", p.passes),
            data,
        );
        result
    }
}
