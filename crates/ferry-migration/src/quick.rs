//! Quick migration: the guest is paused, QEMU saves its whole state to a file on a storage
//! pool both hosts share, a QEMU on the destination loads that file and the guest resumes
//! there. Downtime is the save plus the restore; nothing crosses the migration network.
//!
//! ```text
//!  Pending ─▶ Preparing ─▶ Saving ─▶ Saved ─▶ Restoring ─▶ Resuming ─▶ Completed
//!   (dest QEMU  (source paused,   (file holds   (dest loads   (dest told
//!    -incoming)  QEMU saves)       the VM)       the file)     to resume)
//!                                    ▲             │ load failed, the file
//!                                    └─────────────┘ still holds the VM
//!     any step before Resuming ──▶ RollingBack ──▶ Failed | Cancelled
//!       (destination removed first, then the source resumed, then the file deleted)
//! ```
//!
//! The rules that keep the VM whole:
//!
//! - Until the destination is told to resume (`Resuming`, saved before the call) its guest
//!   never ran: it is started with `-S`, and the saved state is a paused guest, so even a
//!   completed load leaves it paused. Up to there every failure can roll back: the paused
//!   source holds the whole VM (QEMU reports the save `completed`, `postmigrate`).
//! - A rollback removes the destination first, then resumes the source, and only then
//!   deletes the state file: if the source died meanwhile, the file still holds the VM.
//! - While the source is gone, the file is the VM: it is restored (again), never deleted,
//!   unless the source was resumed after the save (the file is stale then) or the save
//!   never started. A load that completes proves the file whole (QEMU refuses a truncated
//!   stream), so a file the server never saw completed is still tried once.
//! - After the destination was told to resume, nothing rolls back: its guest may have run
//!   and written to its disks, so the paused source's memory may be older than they are.
//!
//! Pure: the orchestrator gathers each side's [`SideFacts`] and what it saved
//! ([`QuickSaved`]), asks [`decide`], and carries the verdict out.

use serde::{Deserialize, Serialize};

use crate::phase::Phase;
use crate::recovery::{SideFacts, Teardown};

/// Where a quick migration is (saved with the record; the coarse [`Phase`] follows).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuickStep {
    /// Accepted, nothing touched.
    #[default]
    Pending,
    /// The destination starts a QEMU waiting for the state (`-incoming defer -S`).
    Preparing,
    /// The source was told to pause its guest and save its state to the file.
    Saving,
    /// The source reported the save completed: the file holds the whole VM (and the paused
    /// source still does).
    Saved,
    /// The destination was told to load the file.
    Restoring,
    /// The destination loaded the file and was told to resume the guest.
    Resuming,
    /// The guest runs on the destination; the VM's record moved there.
    Completed,
    /// A failure or a cancel before `Resuming`: the destination is removed, the source
    /// resumed, the file deleted.
    RollingBack,
    Failed,
    Cancelled,
    /// The facts do not prove a safe step: an operator settles it.
    NeedsAttention,
}

impl QuickStep {
    pub const ALL: [QuickStep; 11] = [
        QuickStep::Pending,
        QuickStep::Preparing,
        QuickStep::Saving,
        QuickStep::Saved,
        QuickStep::Restoring,
        QuickStep::Resuming,
        QuickStep::Completed,
        QuickStep::RollingBack,
        QuickStep::Failed,
        QuickStep::Cancelled,
        QuickStep::NeedsAttention,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            QuickStep::Pending => "pending",
            QuickStep::Preparing => "preparing",
            QuickStep::Saving => "saving",
            QuickStep::Saved => "saved",
            QuickStep::Restoring => "restoring",
            QuickStep::Resuming => "resuming",
            QuickStep::Completed => "completed",
            QuickStep::RollingBack => "rolling_back",
            QuickStep::Failed => "failed",
            QuickStep::Cancelled => "cancelled",
            QuickStep::NeedsAttention => "needs_attention",
        }
    }

    /// The migration's phase in this step (what the queue, the API and the CLI see).
    pub fn phase(self) -> Phase {
        match self {
            QuickStep::Pending => Phase::Pending,
            QuickStep::Preparing => Phase::Preparing,
            QuickStep::Saving | QuickStep::Saved | QuickStep::Restoring => Phase::Transferring,
            QuickStep::Resuming => Phase::SwitchingOver,
            QuickStep::Completed => Phase::Completed,
            QuickStep::RollingBack => Phase::RollingBack,
            QuickStep::Failed => Phase::Failed,
            QuickStep::Cancelled => Phase::Cancelled,
            QuickStep::NeedsAttention => Phase::NeedsAttention,
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            QuickStep::Completed | QuickStep::Failed | QuickStep::Cancelled
        )
    }
}

impl std::fmt::Display for QuickStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the orchestrator observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuickEvent {
    Start,
    /// The destination QEMU waits for the state; the source is about to be told to save.
    DestinationReady,
    /// The source QEMU reports the save completed.
    SaveCompleted,
    /// The destination is about to be told to load the file.
    RestoreStarted,
    /// The file is to be restored (again) on a fresh destination: the source is gone and
    /// the file may hold the VM ([`decide`] said [`QuickVerdict::Restore`]).
    RestoreFromFile,
    /// The destination loaded the file; it is about to be told to resume.
    RestoreCompleted,
    /// The destination's guest is seen running.
    DestinationRunning,
    Failure,
    CancelRequested,
    RolledBack {
        cancelled: bool,
    },
    /// The VM's only whole copy is gone.
    Lost,
    Unresolved,
    ResolvedKeepSource,
    ResolvedKeepDestination,
}

/// A transition the machine does not allow (a bug in the orchestrator, caught before it
/// could act on it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a quick migration in step '{from}' cannot take event {event:?}")]
pub struct QuickRefusal {
    pub from: QuickStep,
    pub event: QuickEvent,
}

impl QuickStep {
    /// The transition function; anything not listed is refused.
    pub fn next(self, event: QuickEvent) -> Result<QuickStep, QuickRefusal> {
        use QuickEvent as E;
        use QuickStep as S;
        let next = match (self, event) {
            (S::Pending, E::Start) => S::Preparing,
            (S::Preparing, E::DestinationReady) => S::Saving,
            (S::Saving, E::SaveCompleted) => S::Saved,
            (S::Saved, E::RestoreStarted) => S::Restoring,
            // The source is gone and the file may hold the VM: (re)start the restore.
            (S::Saving | S::Restoring | S::RollingBack, E::RestoreFromFile) => S::Saved,
            (S::Restoring, E::RestoreCompleted) => S::Resuming,
            // A restore found the destination already loaded (after a restart).
            (S::Saved, E::RestoreCompleted) => S::Resuming,
            (S::Resuming, E::DestinationRunning) => S::Completed,
            // Until the destination is told to resume, every failure or cancel rolls back.
            (
                S::Pending | S::Preparing | S::Saving | S::Saved | S::Restoring | S::RollingBack,
                E::Failure | E::CancelRequested,
            ) => S::RollingBack,
            (S::RollingBack, E::RolledBack { cancelled: false }) => S::Failed,
            (S::RollingBack, E::RolledBack { cancelled: true }) => S::Cancelled,
            (S::Preparing | S::Saving | S::Saved | S::Restoring | S::RollingBack, E::Lost) => {
                S::Failed
            }
            (
                S::Pending
                | S::Preparing
                | S::Saving
                | S::Saved
                | S::Restoring
                | S::Resuming
                | S::RollingBack
                | S::NeedsAttention,
                E::Unresolved,
            ) => S::NeedsAttention,
            (S::NeedsAttention, E::ResolvedKeepSource) => S::Failed,
            (S::NeedsAttention, E::ResolvedKeepDestination) => S::Completed,
            (from, event) => return Err(QuickRefusal { from, event }),
        };
        Ok(next)
    }
}

/// What the record says was asked, each saved before the call it allows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct QuickSaved {
    /// The source was told to pause and save (from then on the file may hold the VM).
    pub save_requested: bool,
    /// The source reported the save completed.
    pub save_completed: bool,
    /// The destination was told to load the file (it may hold the disks active).
    pub restore_requested: bool,
    /// The destination was told to resume its guest.
    pub resume_requested: bool,
    /// The source was told to resume (a rollback): from then on the file is stale.
    pub revive_requested: bool,
    /// Restores started from the file.
    pub restore_attempts: u32,
}

impl QuickSaved {
    /// The file may hold the whole VM: a save was asked for and the source never resumed.
    pub fn file_may_hold_vm(&self) -> bool {
        self.save_requested && !self.revive_requested
    }
}

/// How many times the file is restored on a fresh destination before an operator is asked.
pub const MAX_RESTORE_ATTEMPTS: u32 = 3;

/// How a rollback brings the source's guest back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Revive {
    /// It was never paused (the save was not asked for): leave it alone.
    Nothing,
    /// Cancel the save if it runs, then resume the guest (QEMU did not complete it).
    Cancel,
    /// The save completed and the guest waits paused: resume it (`reclaim`).
    Reclaim,
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuickVerdict {
    /// A fact is missing: ask again (then [`QuickVerdict::NeedsAttention`]).
    Retry {
        reason: String,
    },
    NeedsAttention {
        reason: String,
    },
    /// The destination runs the guest: commit (the record moves there).
    Commit,
    /// The destination loaded the whole VM and waits paused: resume it, then commit.
    Resume,
    /// The source is gone and the file may hold the VM: load it on the destination
    /// (preparing a fresh one if needed).
    Restore,
    /// The source holds the VM and the destination never ran it: remove the destination,
    /// revive the source, then delete the file.
    RollBack {
        destination: Teardown,
        revive: Revive,
    },
    /// Nothing holds the VM any more.
    Lost {
        reason: String,
    },
}

/// A source whose QEMU answered with a status this build knows.
fn alive(s: SideFacts) -> bool {
    matches!(s, SideFacts::Qemu { .. }) && !s.is_unknown()
}

/// The rules, as a total function of what was saved and what each side reports now.
pub fn decide(saved: QuickSaved, s: SideFacts, d: SideFacts) -> QuickVerdict {
    let attention = |reason: String| QuickVerdict::NeedsAttention { reason };
    let retry = |reason: String| QuickVerdict::Retry { reason };
    if s.is_postcopy() || d.is_postcopy() {
        return attention(format!(
            "a quick migration never uses post-copy, yet source reports {s} and destination {d}"
        ));
    }
    if d.running() {
        if s.running() {
            return attention(format!(
                "the guest runs on both hosts (source: {s}; destination: {d})"
            ));
        }
        if !saved.resume_requested {
            return attention(format!(
                "the destination runs the guest ({d}) though it was never told to resume"
            ));
        }
        return QuickVerdict::Commit;
    }
    if saved.resume_requested {
        return if d.destination_holds() && !s.running() {
            QuickVerdict::Resume
        } else if d.is_unknown() {
            retry(format!(
                "the destination was told to resume and cannot be checked ({d})"
            ))
        } else {
            attention(format!(
                "the destination was told to resume and now reports {d} (source: {s}); its \
                 guest may have run and written to its disks, so the source's saved memory \
                 may be older than they are"
            ))
        };
    }
    // From here on the destination's guest never ran.
    if alive(s) {
        let destination = if d.is_unknown() {
            if saved.restore_requested {
                // It may have loaded the file and hold the disks active: resuming the
                // source next to it could write the same disks from two QEMUs.
                return retry(format!(
                    "the destination was told to load the state and cannot be checked ({d})"
                ));
            }
            Teardown::Later
        } else {
            Teardown::Remove
        };
        let revive = if s.running() || (!saved.save_requested && !saved.revive_requested) {
            // Its guest runs (never paused, or already resumed): nothing to bring back.
            Revive::Nothing
        } else if s.source_completed() {
            Revive::Reclaim
        } else {
            Revive::Cancel
        };
        return QuickVerdict::RollBack {
            destination,
            revive,
        };
    }
    if !s.is_gone() {
        return retry(format!("the source cannot be checked ({s})"));
    }
    // The source is gone: the file is all that may be left.
    if d.destination_holds() {
        // It loaded the file: proof the file was whole.
        return if saved.file_may_hold_vm() {
            QuickVerdict::Resume
        } else {
            attention(format!(
                "the destination reports a completed load ({d}) of a state this migration \
                 never saved or already gave up"
            ))
        };
    }
    if !saved.save_requested {
        return QuickVerdict::Lost {
            reason: format!("the source's QEMU is gone ({s}) and its state was never saved"),
        };
    }
    if saved.revive_requested {
        return QuickVerdict::Lost {
            reason: format!(
                "the source's QEMU was resumed after the save and is gone now ({s}); the state \
                 file is older than the guest's disks"
            ),
        };
    }
    if d.is_unknown() {
        return retry(format!(
            "the source is gone and the destination cannot be checked ({d})"
        ));
    }
    if !saved.save_completed && saved.restore_attempts >= 1 {
        return QuickVerdict::Lost {
            reason: format!(
                "the source's QEMU is gone ({s}) before its save was seen completed, and the \
                 state file did not load"
            ),
        };
    }
    if saved.restore_attempts >= MAX_RESTORE_ATTEMPTS {
        return attention(format!(
            "the source's QEMU is gone ({s}); the state file holds the VM but restoring it \
             failed {} times; it is kept",
            saved.restore_attempts
        ));
    }
    QuickVerdict::Restore
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::MigrationStatus;
    use proptest::prelude::*;

    #[test]
    fn the_happy_path_reaches_completed_through_every_phase() {
        let mut s = QuickStep::Pending;
        let mut phases = vec![s.phase()];
        for e in [
            QuickEvent::Start,
            QuickEvent::DestinationReady,
            QuickEvent::SaveCompleted,
            QuickEvent::RestoreStarted,
            QuickEvent::RestoreCompleted,
            QuickEvent::DestinationRunning,
        ] {
            s = s.next(e).unwrap();
            phases.push(s.phase());
        }
        assert_eq!(s, QuickStep::Completed);
        phases.dedup();
        assert_eq!(
            phases,
            [
                Phase::Pending,
                Phase::Preparing,
                Phase::Transferring,
                Phase::SwitchingOver,
                Phase::Completed
            ]
        );
    }

    #[test]
    fn nothing_rolls_back_once_the_destination_was_told_to_resume() {
        for e in [
            QuickEvent::Failure,
            QuickEvent::CancelRequested,
            QuickEvent::Lost,
        ] {
            assert!(QuickStep::Resuming.next(e).is_err(), "{e:?}");
        }
        assert_eq!(
            QuickStep::Resuming.next(QuickEvent::Unresolved).unwrap(),
            QuickStep::NeedsAttention
        );
    }

    #[test]
    fn a_failed_load_with_the_source_gone_restores_again() {
        let s = QuickStep::Restoring
            .next(QuickEvent::RestoreFromFile)
            .unwrap();
        assert_eq!(s, QuickStep::Saved);
        assert_eq!(
            s.next(QuickEvent::RestoreStarted).unwrap(),
            QuickStep::Restoring
        );
    }

    #[test]
    fn steps_and_phases_agree() {
        for s in QuickStep::ALL {
            assert_eq!(s.is_terminal(), s.phase().is_terminal(), "{s}");
            assert_eq!(s.phase().as_str(), {
                // Saving, saved and restoring are all `transferring` to the queue and CLI.
                match s {
                    QuickStep::Saving | QuickStep::Saved | QuickStep::Restoring => "transferring",
                    QuickStep::Resuming => "switching_over",
                    other => other.as_str(),
                }
            });
        }
    }

    const HEALTHY_SOURCE_PAUSED: SideFacts = SideFacts::Qemu {
        migration: MigrationStatus::Completed,
        running: false,
    };
    const DEST_LOADED: SideFacts = SideFacts::Qemu {
        migration: MigrationStatus::Completed,
        running: false,
    };
    const DEST_WAITING: SideFacts = SideFacts::Qemu {
        migration: MigrationStatus::None,
        running: false,
    };

    fn saved_after_save() -> QuickSaved {
        QuickSaved {
            save_requested: true,
            save_completed: true,
            ..Default::default()
        }
    }

    #[test]
    fn a_failed_restore_brings_the_vm_back_on_the_source() {
        let mut saved = saved_after_save();
        saved.restore_requested = true;
        saved.restore_attempts = 1;
        for d in [
            SideFacts::Exited,
            SideFacts::Absent,
            SideFacts::qemu(MigrationStatus::Failed, false),
            DEST_LOADED,
        ] {
            assert_eq!(
                decide(saved, HEALTHY_SOURCE_PAUSED, d),
                QuickVerdict::RollBack {
                    destination: Teardown::Remove,
                    revive: Revive::Reclaim
                },
                "{d}"
            );
        }
        // A save that failed: the guest is resumed by cancelling.
        let failed = QuickSaved {
            save_requested: true,
            ..Default::default()
        };
        assert_eq!(
            decide(
                failed,
                SideFacts::qemu(MigrationStatus::Failed, false),
                DEST_WAITING
            ),
            QuickVerdict::RollBack {
                destination: Teardown::Remove,
                revive: Revive::Cancel
            }
        );
    }

    #[test]
    fn with_the_source_gone_the_file_is_the_vm() {
        let saved = saved_after_save();
        assert_eq!(
            decide(saved, SideFacts::Exited, DEST_WAITING),
            QuickVerdict::Restore
        );
        assert_eq!(
            decide(saved, SideFacts::Absent, DEST_LOADED),
            QuickVerdict::Resume
        );
        let worn = QuickSaved {
            restore_attempts: MAX_RESTORE_ATTEMPTS,
            ..saved
        };
        assert!(matches!(
            decide(worn, SideFacts::Exited, SideFacts::Absent),
            QuickVerdict::NeedsAttention { .. }
        ));
        // Never saved, or resumed after the save: nothing whole is left.
        assert!(matches!(
            decide(QuickSaved::default(), SideFacts::Exited, DEST_WAITING),
            QuickVerdict::Lost { .. }
        ));
        let revived = QuickSaved {
            revive_requested: true,
            ..saved
        };
        assert!(matches!(
            decide(revived, SideFacts::Exited, DEST_WAITING),
            QuickVerdict::Lost { .. }
        ));
    }

    fn any_status() -> impl Strategy<Value = MigrationStatus> {
        proptest::sample::select(
            MigrationStatus::ALL
                .iter()
                .copied()
                .chain([MigrationStatus::Unknown])
                .collect::<Vec<_>>(),
        )
    }

    fn any_facts() -> impl Strategy<Value = SideFacts> {
        prop_oneof![
            Just(SideFacts::Unreachable),
            Just(SideFacts::Absent),
            Just(SideFacts::Exited),
            Just(SideFacts::Unresponsive),
            (any_status(), any::<bool>()).prop_map(|(m, r)| SideFacts::qemu(m, r)),
        ]
    }

    fn any_saved() -> impl Strategy<Value = QuickSaved> {
        (any::<[bool; 5]>(), 0..=MAX_RESTORE_ATTEMPTS + 1).prop_map(|(b, attempts)| QuickSaved {
            save_requested: b[0],
            save_completed: b[0] && b[1],
            restore_requested: b[0] && b[2],
            resume_requested: b[0] && b[1] && b[2] && b[3],
            revive_requested: b[0] && b[4],
            restore_attempts: if b[0] { attempts } else { 0 },
        })
    }

    fn any_event() -> impl Strategy<Value = QuickEvent> {
        prop_oneof![
            Just(QuickEvent::Start),
            Just(QuickEvent::DestinationReady),
            Just(QuickEvent::SaveCompleted),
            Just(QuickEvent::RestoreStarted),
            Just(QuickEvent::RestoreFromFile),
            Just(QuickEvent::RestoreCompleted),
            Just(QuickEvent::DestinationRunning),
            Just(QuickEvent::Failure),
            Just(QuickEvent::CancelRequested),
            any::<bool>().prop_map(|cancelled| QuickEvent::RolledBack { cancelled }),
            Just(QuickEvent::Lost),
            Just(QuickEvent::Unresolved),
            Just(QuickEvent::ResolvedKeepSource),
            Just(QuickEvent::ResolvedKeepDestination),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// No sequence of events breaks the machine's rules: terminal steps stay, the VM
        /// reaches the destination only after it was told to resume (or an operator kept
        /// it), nothing rolls back after the resume, and cancelling ends only a rollback.
        #[test]
        fn no_event_sequence_breaks_the_machine(events in proptest::collection::vec(any_event(), 0..40)) {
            let mut s = QuickStep::Pending;
            for e in events {
                match s.next(e) {
                    Ok(n) => {
                        prop_assert!(!s.is_terminal(), "terminal {s} moved to {n}");
                        if n == QuickStep::Completed {
                            prop_assert!(
                                s == QuickStep::Resuming
                                    || (s == QuickStep::NeedsAttention
                                        && e == QuickEvent::ResolvedKeepDestination)
                            );
                        }
                        if s == QuickStep::Resuming {
                            prop_assert!(matches!(n, QuickStep::Completed | QuickStep::NeedsAttention));
                        }
                        if n == QuickStep::Cancelled {
                            prop_assert_eq!(s, QuickStep::RollingBack);
                        }
                        if n == QuickStep::Resuming {
                            prop_assert!(matches!(s, QuickStep::Restoring | QuickStep::Saved));
                        }
                        if s == QuickStep::NeedsAttention {
                            prop_assert!(matches!(e, QuickEvent::Unresolved | QuickEvent::ResolvedKeepSource | QuickEvent::ResolvedKeepDestination));
                        }
                        s = n;
                    }
                    Err(err) => prop_assert_eq!(err.from, s),
                }
            }
        }

        /// Whatever the sides report: the source is resumed only when it answers, holds the
        /// VM and the destination never ran it; the destination is removed only then; the
        /// file is given up only when it cannot hold the VM; a commit needs the
        /// destination running alone.
        #[test]
        fn no_verdict_loses_or_doubles_the_vm(saved in any_saved(), s in any_facts(), d in any_facts()) {
            match decide(saved, s, d) {
                QuickVerdict::RollBack { destination, revive } => {
                    prop_assert!(alive(s), "rollback with source {}", s);
                    prop_assert!(!saved.resume_requested && !d.running());
                    if destination == Teardown::Later {
                        prop_assert!(d.is_unknown() && !saved.restore_requested);
                    }
                    if revive == Revive::Reclaim {
                        prop_assert!(s.source_completed());
                    }
                }
                QuickVerdict::Restore => {
                    prop_assert!(s.is_gone());
                    prop_assert!(saved.file_may_hold_vm() && !saved.resume_requested);
                    prop_assert!(!d.running() && !d.is_unknown());
                }
                QuickVerdict::Resume => {
                    prop_assert!(d.destination_holds() && !d.running() && !s.running());
                    prop_assert!(saved.resume_requested || (s.is_gone() && saved.file_may_hold_vm()));
                }
                QuickVerdict::Commit => {
                    prop_assert!(d.running() && !s.running() && saved.resume_requested);
                }
                QuickVerdict::Lost { .. } => {
                    prop_assert!(s.is_gone() && !d.running() && !d.destination_holds());
                    prop_assert!(!saved.resume_requested);
                    // A file seen whole and never made stale is never given up.
                    prop_assert!(!(saved.save_completed && saved.file_may_hold_vm()));
                }
                QuickVerdict::Retry { .. } | QuickVerdict::NeedsAttention { .. } => {}
            }
        }
    }
}
