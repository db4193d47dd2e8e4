//! Progress of a running migration and the report of a finished one.

use serde::{Deserialize, Serialize};

use crate::status::{BlockJobStatus, MigrationStatus};

/// A snapshot of a running migration, as the source QEMU reports it (`query-migrate`),
/// normalised to bytes and milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MigrationProgress {
    /// QEMU's own migration status: setup, active, device, completed, failed, ...
    pub qemu_status: MigrationStatus,
    /// Milliseconds since the source started sending.
    pub elapsed_ms: u64,
    /// Guest RAM size in bytes.
    pub ram_total_bytes: u64,
    /// Bytes put on the wire so far (RAM pages and headers).
    pub transferred_bytes: u64,
    /// RAM still to send in this pass.
    pub remaining_bytes: u64,
    /// How fast the guest dirties memory, bytes per second (QEMU measures it per pass).
    pub dirty_rate_bytes_per_s: u64,
    /// Achieved throughput, bytes per second.
    pub bandwidth_bytes_per_s: u64,
    /// Completed dirty-bitmap syncs: pass 1 is the bulk copy, each later pass re-sends
    /// pages the guest dirtied meanwhile.
    pub passes: u64,
    /// QEMU's prediction of the pause if it switched over now, in ms.
    pub expected_downtime_ms: Option<u64>,
    /// Local-pool disks being mirrored to the destination (empty otherwise).
    #[serde(default)]
    pub disks: Vec<DiskCopyProgress>,
    /// The guest's vCPU throttle right now, percent (auto-converge).
    #[serde(default)]
    pub throttle_pct: u8,
    /// The convergence controller's step and its latest prediction of the pause.
    #[serde(default)]
    pub controller_step: crate::convergence::Step,
    #[serde(default)]
    pub predicted_downtime_ms: Option<u64>,
}

/// One disk's mirror to the destination, from QEMU's block job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiskCopyProgress {
    /// `pool/image`.
    pub disk: String,
    /// Bytes the mirror has to copy; grows when the guest rewrites blocks already sent.
    pub total_bytes: u64,
    /// Bytes copied so far.
    pub copied_bytes: u64,
    /// QEMU's mirror is `ready`: source and target held the same data when last checked.
    pub ready: bool,
    /// Guest writes reach the destination before they complete (write-blocking mode, and
    /// QEMU reports the mirror actively synced). Memory migrates only once every disk is.
    #[serde(default)]
    pub writes_blocking: bool,
    /// QEMU's job status (running, ready, concluded, ...).
    pub status: BlockJobStatus,
    /// Why the copy failed, if it did.
    #[serde(default)]
    pub error: Option<String>,
}

impl DiskCopyProgress {
    /// Dirty bytes still to copy.
    pub fn outstanding_bytes(&self) -> u64 {
        self.total_bytes.saturating_sub(self.copied_bytes)
    }
}

/// Totals over all disks: (copied, total, outstanding).
pub fn disk_totals(disks: &[DiskCopyProgress]) -> (u64, u64, u64) {
    disks.iter().fold((0, 0, 0), |(c, t, o), d| {
        (
            c + d.copied_bytes,
            t + d.total_bytes,
            o + d.outstanding_bytes(),
        )
    })
}

/// Every disk is in sync and stays so (and there is at least one).
pub fn disks_in_sync(disks: &[DiskCopyProgress]) -> bool {
    !disks.is_empty()
        && disks
            .iter()
            .all(|d| d.ready && d.writes_blocking && d.error.is_none())
}

impl MigrationProgress {
    /// Fraction of the work done, 0.0..=1.0, for progress bars. During later passes the
    /// remaining bytes are small, so the bar sits near the end while the passes count up.
    pub fn fraction_done(&self) -> f64 {
        if self.ram_total_bytes == 0 {
            return 0.0;
        }
        let remaining = self.remaining_bytes.min(self.ram_total_bytes) as f64;
        (1.0 - remaining / self.ram_total_bytes as f64).clamp(0.0, 1.0)
    }

    /// Whether `self` is a newer pass than `earlier` (a pass boundary worth an event).
    pub fn started_new_pass(&self, earlier: Option<&MigrationProgress>) -> bool {
        match earlier {
            None => self.passes > 0,
            Some(e) => self.passes > e.passes,
        }
    }
}

/// The figures of a finished migration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MigrationReport {
    /// From the operator's request to the destination running, ms (includes preparing
    /// the destination and the checks).
    pub total_time_ms: u64,
    /// QEMU's own time from start of sending to completion, ms.
    pub transfer_time_ms: u64,
    /// The guest's pause at switch-over as QEMU measured it, ms.
    pub downtime_ms: u64,
    /// Bytes sent over the migration stream.
    pub bytes_sent: u64,
    /// Guest RAM size.
    pub ram_total_bytes: u64,
    /// Passes over memory (dirty-bitmap syncs).
    pub passes: u64,
    /// Average throughput of the stream, bytes per second.
    pub average_bandwidth_bytes_per_s: u64,
    /// Disk bytes mirrored to the destination (local-pool disks), 0 without.
    #[serde(default)]
    pub disk_bytes_copied: u64,
    /// Whether the migration finished in post-copy, how often the link broke during it,
    /// and how long the page stream stood paused in all (ms).
    #[serde(default)]
    pub postcopy: bool,
    #[serde(default)]
    pub postcopy_pauses: u32,
    #[serde(default)]
    pub postcopy_paused_ms: u64,
    /// Quick migration: how long QEMU took to save the paused guest to the state file,
    /// and how long the destination took to load it and resume (ms; the downtime is the
    /// whole pause, measured from the pause to the guest running on the destination).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub save_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_ms: Option<u64>,
    /// Cold migration: local disks copied and verified (size and checksum) before the move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks_verified: Option<u32>,
    /// The switch-over target QEMU had when it paused the guest, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switchover_target_ms: Option<u64>,
    /// The pause in pieces, from QEMU's checkpoints on both sides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<crate::pause::PauseParts>,
    /// Where the migration's time went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<TimeParts>,
    /// What the VM's network saw of the switch-over, measured on the two hosts' taps
    /// (no guest agent). None when the VM has no NIC or no guest frame was seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkReport>,
}

/// Where a live migration's time went, ms by the server's clock. Their sum is the
/// operator's wait from the request to the VM running on the destination.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TimeParts {
    /// The pre-migration checks (with the link probe, unless a fresh one was reused).
    pub checks_ms: u64,
    /// The destination starting its QEMU and listening.
    pub prepare_ms: u64,
    /// Local disks copied before the memory stream.
    pub disks_ms: u64,
    /// The memory stream, until the server saw the source complete it (or switch to
    /// post-copy).
    pub stream_ms: u64,
    /// Post-copy: from the switch to it until the last page arrived, outages included
    /// (0: the migration stayed pre-copy).
    pub postcopy_ms: u64,
    /// From there to the destination seen running (the record moves after).
    pub switch_ms: u64,
}

impl TimeParts {
    pub fn total_ms(&self) -> u64 {
        self.checks_ms
            + self.prepare_ms
            + self.disks_ms
            + self.stream_ms
            + self.postcopy_ms
            + self.switch_ms
    }

    /// `checks 210 + prepare 480 + stream 3010 + switch 90 ms` (disks only when copied).
    pub fn summary(&self) -> String {
        let mut s = format!("checks {} + prepare {}", self.checks_ms, self.prepare_ms);
        if self.disks_ms > 0 {
            s.push_str(&format!(" + disks {}", self.disks_ms));
        }
        s.push_str(&format!(" + stream {}", self.stream_ms));
        if self.postcopy_ms > 0 {
            s.push_str(&format!(" + post-copy {}", self.postcopy_ms));
        }
        s.push_str(&format!(" + switch {} ms", self.switch_ms));
        s
    }
}

/// The switch-over as the network saw it. Times are wall clock (Unix ms) on each host; the
/// gap compares two hosts' clocks, so it is only as good as their sync (one machine in the
/// lab; NTP-synced hosts are typically within a millisecond).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkReport {
    /// The first IP frame the guest sent on the destination's tap minus the last it sent
    /// on the source's tap, ms: the silence a client of the guest noticed (ARP and RARP,
    /// which QEMU and the guest send by themselves at resume, do not count).
    pub client_gap_ms: Option<u64>,
    /// The last IP frame the guest sent on the source, Unix ms.
    pub source_last_frame_unix_ms: Option<u64>,
    /// The first IP frame the guest sent on the destination, Unix ms.
    pub destination_first_frame_unix_ms: Option<u64>,
    /// Whether frames queued for the paused source were forwarded (the migration option).
    pub forwarding: bool,
    /// Frames for the guest drained from the source's tap queue after the stream completed
    /// and sent to the destination.
    pub frames_forwarded: u64,
    /// Of those, frames the destination delivered to the guest's tap.
    pub frames_injected: u64,
    /// How long the source drained its tap queue, ms.
    pub drain_ms: u64,
    /// Why forwarding or a measurement did not happen, when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl NetworkReport {
    /// One line: the client's gap and what was forwarded.
    pub fn summary(&self) -> String {
        let gap = self
            .client_gap_ms
            .map(|g| format!("{g} ms"))
            .unwrap_or_else(|| "not measured".into());
        let fwd = if self.forwarding {
            format!(
                "{} frame(s) forwarded, {} delivered",
                self.frames_forwarded, self.frames_injected
            )
        } else {
            "frame forwarding off".into()
        };
        format!("client gap {gap}, {fwd}")
    }
}

impl MigrationReport {
    /// One line for events and logs: time, pause, bytes, passes (and post-copy, if used).
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{:.1}s total, {} ms downtime, {} MiB sent in {} passes",
            self.total_time_ms as f64 / 1000.0,
            self.downtime_ms,
            self.bytes_sent >> 20,
            self.passes
        );
        if let (Some(save), Some(restore)) = (self.save_ms, self.restore_ms) {
            s.push_str(&format!(" (save {save} ms + restore {restore} ms)"));
        }
        if let Some(n) = self.disks_verified {
            s.push_str(&format!(", {n} disk(s) copied and verified"));
        }
        if let Some(n) = &self.network {
            s.push_str(&format!(", {}", n.summary()));
        }
        if self.postcopy {
            s.push_str(&format!(
                " and post-copy ({} pause(s), {:.1} s paused)",
                self.postcopy_pauses,
                self.postcopy_paused_ms as f64 / 1000.0
            ));
        }
        s
    }

    /// Builds the report from the source's final progress and the orchestrator's clock.
    pub fn from_final(progress: &MigrationProgress, downtime_ms: u64, total_time_ms: u64) -> Self {
        let secs = progress.elapsed_ms as f64 / 1000.0;
        let avg = if secs > 0.0 {
            (progress.transferred_bytes as f64 / secs) as u64
        } else {
            0
        };
        MigrationReport {
            total_time_ms,
            transfer_time_ms: progress.elapsed_ms,
            downtime_ms,
            bytes_sent: progress.transferred_bytes,
            ram_total_bytes: progress.ram_total_bytes,
            passes: progress.passes,
            average_bandwidth_bytes_per_s: avg,
            disk_bytes_copied: disk_totals(&progress.disks).0,
            postcopy: false,
            postcopy_pauses: 0,
            postcopy_paused_ms: 0,
            save_ms: None,
            restore_ms: None,
            disks_verified: None,
            switchover_target_ms: None,
            pause: None,
            parts: None,
            network: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fraction_done_is_bounded() {
        let mut p = MigrationProgress {
            ram_total_bytes: 100,
            remaining_bytes: 25,
            ..Default::default()
        };
        assert!((p.fraction_done() - 0.75).abs() < 1e-9);
        p.remaining_bytes = 500; // QEMU can briefly report more than total during setup
        assert_eq!(p.fraction_done(), 0.0);
        p.ram_total_bytes = 0;
        assert_eq!(p.fraction_done(), 0.0);
    }

    #[test]
    fn new_pass_is_detected_once() {
        let a = MigrationProgress {
            passes: 1,
            ..Default::default()
        };
        let b = MigrationProgress {
            passes: 2,
            ..Default::default()
        };
        assert!(a.started_new_pass(None));
        assert!(b.started_new_pass(Some(&a)));
        assert!(!b.started_new_pass(Some(&b)));
    }

    #[test]
    fn disk_totals_and_sync() {
        let mut d = vec![
            DiskCopyProgress {
                disk: "local/a".into(),
                total_bytes: 100,
                copied_bytes: 60,
                ..Default::default()
            },
            DiskCopyProgress {
                disk: "local/b".into(),
                total_bytes: 50,
                copied_bytes: 50,
                ready: true,
                writes_blocking: true,
                ..Default::default()
            },
        ];
        assert_eq!(disk_totals(&d), (110, 150, 40));
        assert!(!disks_in_sync(&d));
        d[0].ready = true;
        assert!(
            !disks_in_sync(&d),
            "ready but still copying in the background"
        );
        d[0].writes_blocking = true;
        assert!(disks_in_sync(&d));
        d[1].error = Some("No space left on device".into());
        assert!(!disks_in_sync(&d));
        assert!(!disks_in_sync(&[]));
    }

    #[test]
    fn report_average_bandwidth() {
        let p = MigrationProgress {
            elapsed_ms: 2000,
            transferred_bytes: 200 << 20,
            ram_total_bytes: 256 << 20,
            passes: 3,
            ..Default::default()
        };
        let r = MigrationReport::from_final(&p, 40, 2500);
        assert_eq!(r.average_bandwidth_bytes_per_s, 100 << 20);
        assert_eq!(r.passes, 3);
        assert_eq!(r.downtime_ms, 40);
    }

    #[test]
    fn time_parts_add_up_and_name_post_copy_only_when_it_ran() {
        let mut t = TimeParts {
            checks_ms: 4,
            prepare_ms: 70,
            stream_ms: 3000,
            switch_ms: 8,
            ..Default::default()
        };
        assert_eq!(t.total_ms(), 3082);
        assert_eq!(
            t.summary(),
            "checks 4 + prepare 70 + stream 3000 + switch 8 ms"
        );
        t.postcopy_ms = 1200;
        assert_eq!(t.total_ms(), 4282);
        assert_eq!(
            t.summary(),
            "checks 4 + prepare 70 + stream 3000 + post-copy 1200 + switch 8 ms"
        );
        // A record saved before post-copy had its part reads as 0.
        let old: TimeParts = serde_json::from_str(
            r#"{"checks_ms":1,"prepare_ms":2,"disks_ms":0,"stream_ms":3,"switch_ms":4}"#,
        )
        .unwrap();
        assert_eq!(old.postcopy_ms, 0);
    }
}
