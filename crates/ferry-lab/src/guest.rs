//! Reading the test guest's verdict from its serial console (through the server's API).
//!
//! The guest's status line carries cumulative counters (tick, pages written, pages
//! verified, mismatches) that live in guest memory, so they travel with the VM: after a
//! migration the destination's console continues the same counters.

use std::time::{Duration, Instant};

use ferry_api::client::ServerClient;
use ferry_guest::status::{ConsoleSummary, StatusLine};
use serde::Serialize;

const CONSOLE_BYTES: u64 = 256 * 1024;

/// Reads a VM's console summary.
pub struct Observer<'a> {
    pub client: &'a ServerClient,
    pub vm: &'a str,
}

impl Observer<'_> {
    pub async fn summary(&self) -> Result<ConsoleSummary, String> {
        let tail = self
            .client
            .console(self.vm, CONSOLE_BYTES)
            .await
            .map_err(|e| e.to_string())?;
        Ok(ConsoleSummary::parse(&tail.text))
    }

    pub async fn last_status(&self) -> Result<Option<StatusLine>, String> {
        Ok(self.summary().await?.last)
    }

    /// Waits for a status line that satisfies `pred`.
    pub async fn wait_status(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&StatusLine) -> bool,
    ) -> Result<StatusLine, String> {
        let deadline = Instant::now() + timeout;
        let mut last_err = String::from("no status line yet");
        loop {
            match self.summary().await {
                Ok(s) => {
                    if let Some(st) = s.last {
                        if pred(&st) {
                            return Ok(st);
                        }
                        last_err = format!("last status: {st}");
                    }
                    if let Some(code) = s.exited {
                        return Err(format!("the guest workload exited with status {code}"));
                    }
                }
                Err(e) => last_err = e,
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "timed out after {}s waiting for the guest ({last_err})",
                    timeout.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Waits until the guest filled its memory and printed at least two status lines since.
pub async fn wait_ready(
    client: &ServerClient,
    vm: &str,
    timeout: Duration,
) -> Result<StatusLine, String> {
    let obs = Observer { client, vm };
    let deadline = Instant::now() + timeout;
    loop {
        let s = obs.summary().await.unwrap_or_default();
        if s.ready.is_some() && s.status_lines_after_ready >= 2 {
            if let Some(last) = s.last {
                return Ok(last);
            }
        }
        if let Some(code) = s.exited {
            return Err(format!("the guest workload exited with status {code}"));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the guest was not ready within {}s (boot line: {:?}, status lines: {})",
                timeout.as_secs(),
                s.boot_kernel,
                s.status_lines
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What the guest says after a migration.
#[derive(Debug, Clone, Serialize)]
pub struct GuestVerdict {
    /// The counter before the migration started.
    pub tick_before: u64,
    /// The counter after the migration, read twice on the new host.
    pub tick_after: u64,
    pub tick_later: u64,
    /// Pages the guest verified since the migration began.
    pub pages_verified_since: u64,
    /// Whether every page was verified at least once after the migration.
    pub full_sweep: bool,
    /// Total mismatches the guest has counted since it booted.
    pub mismatches: u64,
}

impl GuestVerdict {
    /// Zero mismatches, the counter kept advancing on the new host, and every page was
    /// re-verified there.
    pub fn ok(&self) -> bool {
        self.mismatches == 0
            && self.tick_after > self.tick_before
            && self.tick_later > self.tick_after
            && self.full_sweep
    }

    pub fn describe(&self) -> String {
        format!(
            "counter {} -> {} -> {}, {} pages re-verified{}, {} mismatches",
            self.tick_before,
            self.tick_after,
            self.tick_later,
            self.pages_verified_since,
            if self.full_sweep {
                " (full sweep)"
            } else {
                " (NOT a full sweep)"
            },
            self.mismatches
        )
    }
}

/// After a migration: waits until the guest has re-verified all its pages on the new host
/// and its counter advanced, then returns the verdict.
pub async fn verdict_after(
    client: &ServerClient,
    vm: &str,
    before: &StatusLine,
    timeout: Duration,
) -> Result<GuestVerdict, String> {
    let obs = Observer { client, vm };
    let pages = before.mem_mib * 256;
    let after = obs
        .wait_status(timeout, |s| {
            s.tick > before.tick && s.verified >= before.verified + pages
        })
        .await
        .ok();
    let after = match after {
        Some(a) => a,
        // No full sweep in time: report what there is, the verdict says it.
        None => obs
            .last_status()
            .await?
            .ok_or_else(|| "the guest prints nothing on the new host".to_string())?,
    };
    let later = obs
        .wait_status(Duration::from_secs(10), |s| s.tick > after.tick)
        .await
        .unwrap_or(after);
    Ok(GuestVerdict {
        tick_before: before.tick,
        tick_after: after.tick,
        tick_later: later.tick,
        pages_verified_since: later.verified.saturating_sub(before.verified),
        full_sweep: later.verified >= before.verified + pages,
        mismatches: later.mismatches,
    })
}
