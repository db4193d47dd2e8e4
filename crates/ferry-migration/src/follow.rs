//! What to do at each poll of a running stream or disk copy, from what was observed: pure
//! deciders the orchestrator's loops feed, so the loops only gather and carry out.
//!
//! ```text
//!  pre-copy (source polled)                     disk copy (both polled)
//!  source completed ─────────▶ Ended            a disk failed / stopped early ─▶ Fail
//!  source in post-copy ──────▶ Postcopy         a QEMU exited ─────────────────▶ Fail
//!  source QEMU gone ─────────▶ Fail             every disk in sync ────────────▶ InSync
//!  QEMU failed/cancelled ────▶ Fail             operator cancel ───────────────▶ Cancel
//!  operator cancel ──────────▶ Cancel           silence or no progress ────────▶ Fail
//!  silence or no progress ───▶ Fail             otherwise ─────────────────────▶ Wait
//!  a new pass (from pass 2) ─▶ Decide (controller)
//!  otherwise ────────────────▶ Wait
//! ```
//!
//! A `Fail` is not a rollback: the orchestrator hands it to [`crate::recovery`], which
//! decides from both sides' facts what a failure allows.

use crate::progress::{disks_in_sync, DiskCopyProgress};
use crate::recovery::SideFacts;
use crate::status::{BlockJobStatus, MigrationStatus};
use crate::watch::Timeout;

/// One side's answer this round.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub facts: SideFacts,
    /// QEMU's error text, when it reports one.
    pub error: Option<String>,
}

/// One poll of a pre-copy stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamObservation {
    /// None: the source did not answer this round.
    pub source: Option<Answer>,
    /// The answer shows a pass newer than the last one seen.
    pub new_pass: bool,
    /// The pass count QEMU reports.
    pub passes: u64,
    pub cancel_requested: bool,
    /// The controller already asked for post-copy: only finishing is safe.
    pub postcopy_requested: bool,
    pub timeout: Option<Timeout>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamNext {
    Wait,
    /// A pass ended: run the convergence controller.
    Decide,
    /// The source completed the stream: switch over.
    Ended,
    /// QEMU switched to post-copy.
    Postcopy,
    /// The stream cannot go on; recovery decides what that allows.
    Fail(String),
    Cancel,
}

/// How long to wait before the next look at a pre-copy stream: `normal` while much is left,
/// `fast` once what is left would cross the link within a second (the end is near, and the
/// server's lag behind QEMU's completion is part of every migration's time).
pub fn next_look_ms(remaining_bytes: u64, link_bytes_per_s: u64, normal: u64, fast: u64) -> u64 {
    if link_bytes_per_s > 0 && remaining_bytes <= link_bytes_per_s {
        fast.min(normal)
    } else {
        normal
    }
}

/// How far the stream's sockets' unsent bytes are bounded (see the agent's
/// `stream_socket`: at the pause, whatever waits in them is sent before the last pages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnsentBound {
    /// Not yet (the socket may not be connected).
    #[default]
    Open,
    /// Once bytes flow: 8 ms of the link, at least 256 KiB; measured here to cost no
    /// throughput on a quiet host, and it catches an idle guest whose stream ends before
    /// the server sees the end near.
    Streaming,
    /// Less than a second of data left: 2 ms of the link, at least 128 KiB.
    NearEnd,
}

/// The bound to set next, if any: `streaming` once QEMU has sent bytes, `near_end` once
/// what is left would cross the link within a second.
pub fn next_unsent_bound(
    now: UnsentBound,
    streaming: bool,
    near_end: bool,
    link_bytes_per_s: u64,
) -> Option<(UnsentBound, u32)> {
    let ms = |ms: u64, floor: u64| (link_bytes_per_s / 1000 * ms).clamp(floor, 64 << 20) as u32;
    match now {
        UnsentBound::NearEnd => None,
        _ if near_end => Some((UnsentBound::NearEnd, ms(2, 128 << 10))),
        UnsentBound::Open if streaming => Some((UnsentBound::Streaming, ms(8, 256 << 10))),
        _ => None,
    }
}

pub fn stream_next(o: &StreamObservation) -> StreamNext {
    if let Some(a) = &o.source {
        match a.facts {
            SideFacts::Qemu {
                migration: MigrationStatus::Completed,
                ..
            } => return StreamNext::Ended,
            f if f.is_postcopy() => return StreamNext::Postcopy,
            SideFacts::Exited | SideFacts::Absent => {
                return StreamNext::Fail(format!(
                    "the source's QEMU is gone ({}){}",
                    a.facts,
                    a.error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ))
            }
            SideFacts::Qemu { migration, .. } if migration.is_failed() => {
                return StreamNext::Fail(format!(
                    "QEMU reports the migration {migration}: {}",
                    a.error.as_deref().unwrap_or("no reason given")
                ))
            }
            _ => {}
        }
    }
    if o.cancel_requested && !o.postcopy_requested {
        return StreamNext::Cancel;
    }
    if let Some(t) = o.timeout {
        return StreamNext::Fail(t.to_string());
    }
    let active = matches!(
        o.source.as_ref().map(|a| a.facts),
        Some(SideFacts::Qemu {
            migration: MigrationStatus::Active,
            ..
        })
    );
    if active && o.new_pass && o.passes >= 2 {
        // The first pass's dirty rate is not measured yet: decide from the second.
        return StreamNext::Decide;
    }
    StreamNext::Wait
}

/// One poll of a disk copy (before memory moves).
#[derive(Debug, Clone, PartialEq)]
pub struct CopyObservation {
    /// None: no answer this round.
    pub source: Option<Answer>,
    pub destination: Option<SideFacts>,
    /// The source's per-disk progress (empty if it did not answer).
    pub disks: Vec<DiskCopyProgress>,
    pub cancel_requested: bool,
    pub timeout: Option<Timeout>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyNext {
    Wait,
    /// Every disk is in sync with guest writes blocking: memory may move.
    InSync,
    Fail(String),
    Cancel,
}

pub fn copy_next(o: &CopyObservation) -> CopyNext {
    if let Some(d) = o.disks.iter().find(|d| d.error.is_some()) {
        return CopyNext::Fail(format!(
            "copying disk {} failed: {}",
            d.disk,
            d.error.as_deref().unwrap_or_default()
        ));
    }
    if let Some(d) = o.disks.iter().find(|d| d.status.is_concluded() && !d.ready) {
        return CopyNext::Fail(format!(
            "copying disk {} stopped before it was in sync ({})",
            d.disk, d.status
        ));
    }
    if let Some(a) = &o.source {
        if a.facts.is_gone() {
            return CopyNext::Fail(format!(
                "the source's QEMU is gone during the disk copy ({})",
                a.facts
            ));
        }
    }
    if let Some(d) = o.destination {
        if d.is_gone() {
            return CopyNext::Fail(format!(
                "the destination's QEMU is gone during the disk copy ({d})"
            ));
        }
    }
    if o.cancel_requested {
        return CopyNext::Cancel;
    }
    if o.source.is_some() && disks_in_sync(&o.disks) {
        return CopyNext::InSync;
    }
    if let Some(t) = o.timeout {
        return CopyNext::Fail(format!("disk copy: {t}"));
    }
    if o.source.is_some()
        && o.disks.is_empty()
        && !matches!(o.source.as_ref().map(|a| a.facts), Some(f) if f.is_unknown())
    {
        return CopyNext::Fail(
            "the source reports no disk copy (its agent may have restarted and dropped it)".into(),
        );
    }
    CopyNext::Wait
}

/// A disk progress line that cannot be mistaken for a live job (the copy was asked for but
/// no job exists yet).
pub fn starting(disk: &str) -> DiskCopyProgress {
    DiskCopyProgress {
        disk: disk.to_string(),
        status: BlockJobStatus::Starting,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::Role;

    fn answer(m: MigrationStatus, running: bool) -> Option<Answer> {
        Some(Answer {
            facts: SideFacts::qemu(m, running),
            error: None,
        })
    }

    fn stream(source: Option<Answer>) -> StreamObservation {
        StreamObservation {
            source,
            new_pass: false,
            passes: 1,
            cancel_requested: false,
            postcopy_requested: false,
            timeout: None,
        }
    }

    #[test]
    fn a_completed_stream_ends_even_if_a_cancel_came_late() {
        let mut o = stream(answer(MigrationStatus::Completed, false));
        o.cancel_requested = true;
        assert_eq!(stream_next(&o), StreamNext::Ended);
    }

    #[test]
    fn the_controller_runs_at_new_passes_from_the_second() {
        let mut o = stream(answer(MigrationStatus::Active, true));
        o.new_pass = true;
        assert_eq!(stream_next(&o), StreamNext::Wait);
        o.passes = 2;
        assert_eq!(stream_next(&o), StreamNext::Decide);
    }

    #[test]
    fn post_copy_cannot_be_cancelled_and_silence_fails() {
        let mut o = stream(None);
        o.cancel_requested = true;
        o.postcopy_requested = true;
        assert_eq!(stream_next(&o), StreamNext::Wait);
        o.timeout = Some(Timeout::Silent {
            side: Role::Source,
            ms: 16_000,
        });
        assert!(matches!(stream_next(&o), StreamNext::Fail(r) if r.contains("source agent")));
    }

    #[test]
    fn qemu_failures_carry_qemus_reason() {
        let mut o = stream(answer(MigrationStatus::Failed, true));
        o.source.as_mut().unwrap().error = Some("Connection reset".into());
        assert!(
            matches!(stream_next(&o), StreamNext::Fail(r) if r.contains("failed: Connection reset"))
        );
    }

    fn disk(ready: bool, blocking: bool, status: BlockJobStatus) -> DiskCopyProgress {
        DiskCopyProgress {
            disk: "local/d".into(),
            total_bytes: 10,
            copied_bytes: 10,
            ready,
            writes_blocking: blocking,
            status,
            error: None,
        }
    }

    #[test]
    fn a_copy_is_in_sync_only_with_writes_blocking() {
        let mut o = CopyObservation {
            source: answer(MigrationStatus::None, true),
            destination: Some(SideFacts::qemu(MigrationStatus::Setup, false)),
            disks: vec![disk(true, false, BlockJobStatus::Ready)],
            cancel_requested: false,
            timeout: None,
        };
        assert_eq!(copy_next(&o), CopyNext::Wait);
        o.disks[0].writes_blocking = true;
        assert_eq!(copy_next(&o), CopyNext::InSync);
        o.destination = Some(SideFacts::Exited);
        assert!(matches!(copy_next(&o), CopyNext::Fail(_)));
    }

    #[test]
    fn a_copy_the_source_forgot_fails_instead_of_waiting_for_ever() {
        let o = CopyObservation {
            source: answer(MigrationStatus::None, true),
            destination: None,
            disks: vec![],
            cancel_requested: false,
            timeout: None,
        };
        assert!(matches!(copy_next(&o), CopyNext::Fail(r) if r.contains("no disk copy")));
        let mut failed = disk(false, false, BlockJobStatus::Concluded);
        failed.error = Some("No space left on device".into());
        let o = CopyObservation {
            disks: vec![failed],
            ..o
        };
        assert!(matches!(copy_next(&o), CopyNext::Fail(r) if r.contains("No space")));
    }

    #[test]
    fn the_stream_is_watched_closely_near_its_end() {
        const MIB: u64 = 1 << 20;
        assert_eq!(next_look_ms(800 * MIB, 110 * MIB, 250, 50), 250);
        assert_eq!(next_look_ms(100 * MIB, 110 * MIB, 250, 50), 50);
        assert_eq!(next_look_ms(0, 0, 250, 50), 250);
        assert_eq!(next_look_ms(1, 110 * MIB, 30, 50), 30);
        // 8 ms of a 1 Gbit/s link once bytes flow, 2 ms near the end; floors and a cap.
        use UnsentBound::*;
        const GBIT: u64 = 125_000_000;
        assert_eq!(next_unsent_bound(Open, false, false, GBIT), None);
        assert_eq!(
            next_unsent_bound(Open, true, false, GBIT),
            Some((Streaming, 1_000_000))
        );
        assert_eq!(next_unsent_bound(Streaming, true, false, GBIT), None);
        assert_eq!(
            next_unsent_bound(Streaming, true, true, GBIT),
            Some((NearEnd, 250_000))
        );
        assert_eq!(
            next_unsent_bound(Open, true, true, 0),
            Some((NearEnd, 128 << 10))
        );
        assert_eq!(next_unsent_bound(NearEnd, true, true, GBIT), None);
        assert_eq!(
            next_unsent_bound(Open, true, false, u64::MAX),
            Some((Streaming, 64 << 20))
        );
    }
}
