//! The written rules of recovery: what to do with a migration whose run was interrupted (a
//! failure in the live run, an operator's cancel, a server restart), decided from the saved
//! record and from what each side's QEMU reports *now*, never from the saved phase alone.
//!
//! One rule above all: nothing is killed, resumed or deleted unless the facts prove the
//! other side holds the whole VM (and runs it, or can resume it). When the facts cannot be
//! had (an agent does not answer, a QEMU's monitor hangs) the caller asks again within a
//! bound and then stops with [`Verdict::NeedsAttention`]; when the facts contradict each
//! other, it stops at once.
//!
//! Words used below, for one side's [`SideFacts`]:
//!
//! - *source holds*: the source QEMU runs, is not in post-copy and did not complete: it has
//!   every page and the device state (its vCPUs run, or are stopped in the final pause).
//! - *destination holds*: the destination QEMU reports its incoming stream `completed`: it
//!   loaded everything (its vCPUs run, or are held by `-S` until its disk exports close).
//! - *destination partial*: the destination QEMU runs, its incoming stream did not complete,
//!   it is not in post-copy and its vCPUs never ran: it holds nothing that can run.
//! - *gone*: the agent answers that it has no QEMU for the VM, or that its QEMU exited.
//! - *unknown*: the agent did not answer, its QEMU's monitor did not, or QEMU reported a
//!   status this build does not know.
//!
//! | saved phase | source | destination | action |
//! |---|---|---|---|
//! | any | post-copy | any | follow post-copy (never roll back) |
//! | any | any | post-copy | follow post-copy |
//! | PostCopy | any not post-copy | any not post-copy | [`postcopy`](crate::postcopy) decides: finish, lost, or recover |
//! | any | completed | holds | switch over (see it run, then commit) |
//! | any | completed | gone | needs attention (the source holds the VM paused; only an operator may resume it) |
//! | any | completed | partial, unknown | retry, then needs attention |
//! | any | gone | holds | switch over (the destination has everything) |
//! | any | gone | partial, gone | lost (the only whole copy died) |
//! | any | gone | unknown | retry, then needs attention |
//! | any | holds, final pause (`device`) | any | retry (it completes or fails within moments) |
//! | any | holds | holds | needs attention (two whole copies) |
//! | Transferring, CopyingDisks (restart) | holds, iterating | partial | follow the stream on |
//! | any else | holds | partial | roll back: remove the destination, resume the source |
//! | any | holds | gone | roll back (nothing to remove) |
//! | any (stream never started) | holds or unknown | unknown | roll back; the destination's clean-up waits for its agent |
//! | any (stream never started) | unknown | partial, gone | roll back: remove the destination, leave the source alone |
//! | CopyingDisks | holds | unknown | roll back: stop the copy; the destination's clean-up waits for its agent (no memory was sent) |
//! | any (stream started) | holds | unknown | retry, then needs attention |
//! | any | unknown | any else | retry, then needs attention |
//! | any | contradictory (e.g. the destination runs but did not complete) | | needs attention |
//!
//! Pure: no clock, no I/O. The orchestrator gathers [`SideFacts`] from both agents, asks
//! [`decide`], and carries the verdict out; an operator's `ferry migration resolve` goes
//! through [`resolve`].

use serde::{Deserialize, Serialize};

use crate::phase::Phase;
use crate::status::MigrationStatus;

/// What one side's agent reports about the VM's QEMU right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum SideFacts {
    /// The agent did not answer within its bound: nothing is known.
    Unreachable,
    /// The agent answered: it runs no QEMU for this VM.
    Absent,
    /// The agent answered: the VM's QEMU exited (crashed, or was killed).
    Exited,
    /// The QEMU process lives but its monitor did not answer: alive, state unknown.
    Unresponsive,
    /// QEMU answered: its migration status, and whether the guest's vCPUs run.
    Qemu {
        migration: MigrationStatus,
        running: bool,
    },
}

impl SideFacts {
    pub fn qemu(migration: MigrationStatus, running: bool) -> SideFacts {
        SideFacts::Qemu { migration, running }
    }

    fn migration(self) -> Option<MigrationStatus> {
        match self {
            SideFacts::Qemu { migration, .. } => Some(migration),
            _ => None,
        }
    }

    /// The QEMU is gone, and its agent says so.
    pub fn is_gone(self) -> bool {
        matches!(self, SideFacts::Absent | SideFacts::Exited)
    }

    /// Nothing provable: no answer, a hung monitor, or a status this build does not know.
    pub fn is_unknown(self) -> bool {
        match self {
            SideFacts::Unreachable | SideFacts::Unresponsive => true,
            SideFacts::Qemu { migration, .. } => {
                matches!(migration, MigrationStatus::Unknown | MigrationStatus::Colo)
            }
            _ => false,
        }
    }

    pub fn is_postcopy(self) -> bool {
        self.migration().is_some_and(|m| m.is_postcopy())
    }

    /// As a source: QEMU has every page and the device state, not handed over.
    pub fn source_holds(self) -> bool {
        match self {
            // QEMU keeps reporting the last migration it took part in: a guest that runs
            // with `completed` arrived here by an earlier incoming migration (or was
            // reclaimed); it holds the VM and sent nothing of this one.
            SideFacts::Qemu {
                migration: MigrationStatus::Completed,
                running,
            } => running,
            _ => self.migration().is_some_and(|m| {
                m.is_iterating()
                    || m.is_switching()
                    || m.is_failed()
                    || m == MigrationStatus::Cancelling
            }),
        }
    }

    /// As a source: everything was sent; the guest waits paused (`postmigrate`).
    pub fn source_completed(self) -> bool {
        matches!(
            self,
            SideFacts::Qemu {
                migration: MigrationStatus::Completed,
                running: false,
            }
        )
    }

    /// As a destination: the incoming stream completed, so QEMU holds the whole VM.
    pub fn destination_holds(self) -> bool {
        self.migration() == Some(MigrationStatus::Completed)
    }

    /// As a destination: an incoming QEMU that never got the whole VM and never ran.
    pub fn destination_partial(self) -> bool {
        match self {
            SideFacts::Qemu { migration, running } => {
                !running
                    && matches!(
                        migration,
                        MigrationStatus::None
                            | MigrationStatus::Setup
                            | MigrationStatus::Active
                            | MigrationStatus::Failed
                            | MigrationStatus::Cancelled
                    )
            }
            _ => false,
        }
    }

    /// As a destination: QEMU runs the guest.
    pub fn running(self) -> bool {
        matches!(self, SideFacts::Qemu { running: true, .. })
    }
}

impl std::fmt::Display for SideFacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SideFacts::Unreachable => f.write_str("its agent does not answer"),
            SideFacts::Absent => f.write_str("no QEMU for the VM"),
            SideFacts::Exited => f.write_str("its QEMU exited"),
            SideFacts::Unresponsive => f.write_str("its QEMU runs but its monitor does not answer"),
            SideFacts::Qemu { migration, running } => write!(
                f,
                "QEMU migration {migration}, guest {}",
                if *running { "running" } else { "not running" }
            ),
        }
    }
}

/// What the saved record says, beyond the phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Saved {
    /// The source was told to send memory or to copy disks (saved before the call): from
    /// then on the destination may hold data.
    pub outgoing_started: bool,
}

/// Why recovery is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The server started and found the migration unfinished: a healthy stream is
    /// followed on.
    Restart,
    /// The live run failed, or the operator cancelled: a healthy stream is rolled back.
    Failure,
}

/// What to do with the destination in a rollback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Teardown {
    /// Its QEMU is partial (or exited): remove it and its partial disk copies.
    Remove,
    /// Its agent does not answer, but the stream never started so it holds nothing:
    /// remove it once the agent answers.
    Later,
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A fact is missing or a side is between states: ask again. After the caller's bound
    /// it becomes [`Verdict::NeedsAttention`] with this reason.
    Retry { reason: String },
    /// Stop: no safe step follows from these facts. An operator resolves it.
    NeedsAttention { reason: String },
    /// The source holds the whole VM and the destination does not: tear the destination
    /// down first, then make sure the source runs (`cancel_source`: the source was told to
    /// send or copy, so its stream must be cancelled and its guest resumed).
    RollBack {
        destination: Teardown,
        cancel_source: bool,
    },
    /// Both sides are healthy and the stream runs: follow it on (after a restart).
    Follow,
    /// The destination holds the whole VM: see it run, then commit the switch.
    SwitchOver,
    /// A QEMU reports post-copy: follow it to the end; nothing rolls back from here.
    FollowPostcopy,
    /// The VM's only whole copy is gone.
    Lost { reason: String },
}

/// The rules of the table above, as a total function.
pub fn decide(phase: Phase, saved: Saved, trigger: Trigger, s: SideFacts, d: SideFacts) -> Verdict {
    let retry = |reason: String| Verdict::Retry { reason };
    let attention = |reason: String| Verdict::NeedsAttention { reason };

    // Post-copy, from QEMU's own status or the saved phase: the guest's memory is split.
    if s.is_postcopy() || d.is_postcopy() || phase == Phase::PostCopy {
        return Verdict::FollowPostcopy;
    }

    if s.source_completed() {
        if d.destination_holds() {
            return Verdict::SwitchOver;
        }
        if d.is_gone() {
            return attention(format!(
                "the source completed the stream but the destination has {d}: the source holds \
                 the VM paused; only an operator may resume it there (`ferry migration resolve \
                 --keep source`), since the destination may have run the guest for a moment"
            ));
        }
        if d.destination_partial() || d.is_unknown() {
            return retry(format!(
                "the source completed the stream; waiting for the destination ({d})"
            ));
        }
        return attention(format!(
            "the source completed the stream but the destination reports {d}"
        ));
    }

    if s.is_gone() {
        if d.destination_holds() {
            return Verdict::SwitchOver;
        }
        if d.destination_partial() || d.is_gone() {
            return Verdict::Lost {
                reason: format!(
                    "the source has {s} before the destination held the whole VM \
                     (destination: {d})"
                ),
            };
        }
        if d.is_unknown() {
            return retry(format!(
                "the source has {s}; waiting to learn whether the destination received \
                 everything ({d})"
            ));
        }
        return attention(format!("the source has {s}; the destination reports {d}"));
    }

    if s.source_holds() {
        if s.migration() == Some(MigrationStatus::Device) {
            return retry(format!(
                "the source is in its final pause ({s}); it completes or fails within moments"
            ));
        }
        if d.destination_holds() {
            return attention(format!(
                "both sides hold a whole copy: the source did not complete ({s}) but the \
                 destination received everything ({d})"
            ));
        }
        if d.is_gone() {
            return Verdict::RollBack {
                destination: Teardown::Remove,
                cancel_source: saved.outgoing_started,
            };
        }
        if d.destination_partial() {
            let healthy = s.migration().is_some_and(|m| m.is_iterating())
                && !s.migration().is_some_and(|m| m.is_failed());
            let streaming = matches!(phase, Phase::Transferring | Phase::CopyingDisks);
            if trigger == Trigger::Restart && healthy && streaming && saved.outgoing_started {
                return Verdict::Follow;
            }
            return Verdict::RollBack {
                destination: Teardown::Remove,
                cancel_source: saved.outgoing_started,
            };
        }
        if d.is_unknown() {
            if !saved.outgoing_started {
                return Verdict::RollBack {
                    destination: Teardown::Later,
                    cancel_source: false,
                };
            }
            if phase == Phase::CopyingDisks {
                // Only disk blocks went over (memory moves after the phase changes, which
                // is saved first): whatever the destination holds cannot run. Stop the
                // copy; the destination's partial QEMU goes once its agent answers.
                return Verdict::RollBack {
                    destination: Teardown::Later,
                    cancel_source: true,
                };
            }
            return retry(format!(
                "the source holds the VM ({s}) but the destination cannot be checked ({d})"
            ));
        }
        return attention(format!(
            "the source holds the VM ({s}) but the destination reports {d}"
        ));
    }

    // The source is unknown.
    if !saved.outgoing_started {
        // Nothing was ever sent: the destination cannot hold anything, and the source was
        // never touched, so it is left as it is.
        if d.destination_partial() || d.is_gone() {
            return Verdict::RollBack {
                destination: Teardown::Remove,
                cancel_source: false,
            };
        }
        if d.is_unknown() {
            return Verdict::RollBack {
                destination: Teardown::Later,
                cancel_source: false,
            };
        }
    }
    retry(format!(
        "the source cannot be checked ({s}); the destination reports {d}"
    ))
}

/// Which side an operator keeps when resolving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Keep {
    Source,
    Destination,
}

impl std::fmt::Display for Keep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Keep::Source => "source",
            Keep::Destination => "destination",
        })
    }
}

/// How the source is brought back when the operator keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceRevival {
    /// It still holds the VM as a source: cancel its stream and resume it.
    Cancel,
    /// It completed the stream (paused, `postmigrate`): resume it explicitly. Only ever on
    /// an operator's word, with the destination proven stopped first.
    Reclaim,
}

/// An operator's resolution, checked against the facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Remove the destination if it is there, then revive the source.
    KeepSource {
        remove_destination: bool,
        revive: SourceRevival,
    },
    /// Commit the VM to the destination (start its vCPUs if held), then shut the source
    /// down if it is there.
    KeepDestination { stop_source: bool },
}

/// Whether keeping `keep` is safe with these facts, and how. `force` accepts that the
/// *other* side cannot be checked (the operator made sure it is down); it never accepts a
/// choice that would lose the VM.
pub fn resolve(keep: Keep, s: SideFacts, d: SideFacts, force: bool) -> Result<Resolution, String> {
    if s.is_postcopy() || d.is_postcopy() {
        return Err(format!(
            "the VM is in post-copy (source: {s}; destination: {d}): neither side alone holds \
             it, so Ferry follows the migration to its end instead"
        ));
    }
    match keep {
        Keep::Source => {
            let revive = if s.source_completed() {
                SourceRevival::Reclaim
            } else if s.source_holds() {
                SourceRevival::Cancel
            } else {
                return Err(format!(
                    "keeping the source would lose the VM: the source has {s}"
                ));
            };
            if d.is_unknown() && !force {
                return Err(format!(
                    "the destination cannot be checked ({d}), so it may run the guest too; make \
                     sure it does not and pass --force"
                ));
            }
            if d.destination_holds() && d.running() {
                return Err(format!(
                    "the destination runs the VM ({d}): its guest has run there since the \
                     switch, so the source's memory is out of date (and on shared disks, older \
                     than what the guest wrote); keep the destination"
                ));
            }
            if d.running() && !d.destination_holds() && !d.is_unknown() {
                return Err(format!(
                    "the destination runs something that is not this migration's result ({d})"
                ));
            }
            Ok(Resolution::KeepSource {
                remove_destination: !matches!(d, SideFacts::Absent),
                revive,
            })
        }
        Keep::Destination => {
            if !d.destination_holds() {
                return Err(format!(
                    "keeping the destination would lose the VM: it did not receive everything \
                     ({d})"
                ));
            }
            if s.is_unknown() && !force {
                return Err(format!(
                    "the source cannot be checked ({s}), so it may run the guest too; make sure \
                     it does not and pass --force"
                ));
            }
            Ok(Resolution::KeepDestination {
                stop_source: !matches!(s, SideFacts::Absent),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use MigrationStatus as M;

    fn q(m: MigrationStatus, running: bool) -> SideFacts {
        SideFacts::qemu(m, running)
    }

    const STARTED: Saved = Saved {
        outgoing_started: true,
    };
    const NOT_STARTED: Saved = Saved {
        outgoing_started: false,
    };

    #[test]
    fn an_unanswering_source_never_rolls_back_a_switch_over() {
        // The first bug of the issue: a silent source counted as "not completed".
        let v = decide(
            Phase::SwitchingOver,
            STARTED,
            Trigger::Restart,
            SideFacts::Unreachable,
            q(M::Completed, true),
        );
        assert!(matches!(v, Verdict::Retry { .. }), "{v:?}");
    }

    #[test]
    fn post_copy_is_recognised_from_qemu_not_the_saved_phase() {
        for phase in [
            Phase::Transferring,
            Phase::RollingBack,
            Phase::SwitchingOver,
        ] {
            for (s, d) in [
                (q(M::PostcopyActive, false), SideFacts::Unreachable),
                (SideFacts::Unreachable, q(M::PostcopyPaused, true)),
            ] {
                assert_eq!(
                    decide(phase, STARTED, Trigger::Restart, s, d),
                    Verdict::FollowPostcopy
                );
            }
        }
    }

    #[test]
    fn a_completed_source_with_a_running_destination_switches_over() {
        let v = decide(
            Phase::Transferring,
            STARTED,
            Trigger::Failure,
            q(M::Completed, false),
            q(M::Completed, true),
        );
        assert_eq!(v, Verdict::SwitchOver);
    }

    #[test]
    fn a_completed_source_is_never_resumed_automatically() {
        let v = decide(
            Phase::SwitchingOver,
            STARTED,
            Trigger::Failure,
            q(M::Completed, false),
            SideFacts::Exited,
        );
        assert!(matches!(v, Verdict::NeedsAttention { .. }), "{v:?}");
    }

    #[test]
    fn a_slow_destination_is_waited_for_not_killed() {
        for d in [SideFacts::Unresponsive, q(M::Active, false)] {
            let v = decide(
                Phase::SwitchingOver,
                STARTED,
                Trigger::Failure,
                q(M::Completed, false),
                d,
            );
            assert!(matches!(v, Verdict::Retry { .. }), "{d:?}: {v:?}");
        }
    }

    #[test]
    fn a_healthy_stream_is_followed_after_a_restart_and_rolled_back_after_a_failure() {
        let (s, d) = (q(M::Active, true), q(M::Active, false));
        assert_eq!(
            decide(Phase::Transferring, STARTED, Trigger::Restart, s, d),
            Verdict::Follow
        );
        assert_eq!(
            decide(Phase::Transferring, STARTED, Trigger::Failure, s, d),
            Verdict::RollBack {
                destination: Teardown::Remove,
                cancel_source: true
            }
        );
        // Preparing is never followed: the destination may be half set up.
        assert!(matches!(
            decide(
                Phase::Preparing,
                NOT_STARTED,
                Trigger::Restart,
                q(M::None, true),
                d
            ),
            Verdict::RollBack { .. }
        ));
    }

    #[test]
    fn the_source_dying_before_the_destination_has_everything_loses_the_vm() {
        let v = decide(
            Phase::Transferring,
            STARTED,
            Trigger::Failure,
            SideFacts::Exited,
            q(M::Active, false),
        );
        assert!(matches!(v, Verdict::Lost { .. }), "{v:?}");
        // ... but not when the destination received everything.
        assert_eq!(
            decide(
                Phase::Transferring,
                STARTED,
                Trigger::Failure,
                SideFacts::Exited,
                q(M::Completed, true)
            ),
            Verdict::SwitchOver
        );
    }

    #[test]
    fn a_destination_agent_away_before_the_stream_started_is_cleaned_up_later() {
        let v = decide(
            Phase::Preparing,
            NOT_STARTED,
            Trigger::Failure,
            q(M::None, true),
            SideFacts::Unreachable,
        );
        assert_eq!(
            v,
            Verdict::RollBack {
                destination: Teardown::Later,
                cancel_source: false
            }
        );
        // Once the stream started, it is not guessed at.
        let v = decide(
            Phase::Transferring,
            STARTED,
            Trigger::Failure,
            q(M::Active, true),
            SideFacts::Unreachable,
        );
        assert!(matches!(v, Verdict::Retry { .. }), "{v:?}");
    }

    /// A guest that came here by an earlier migration still reports `completed` while it
    /// runs: a server restart before this migration sent anything rolls back (the source
    /// holds the VM), it does not mistake it for a finished source.
    #[test]
    fn a_running_guest_that_arrived_by_migration_is_a_source_that_holds() {
        let arrived = q(M::Completed, true);
        assert!(arrived.source_holds() && !arrived.source_completed());
        let v = decide(
            Phase::Preparing,
            Saved::default(),
            Trigger::Restart,
            arrived,
            q(M::Setup, false),
        );
        assert!(
            matches!(
                v,
                Verdict::RollBack {
                    cancel_source: false,
                    ..
                }
            ),
            "{v:?}"
        );
    }

    #[test]
    fn resolutions_refuse_what_would_lose_the_vm() {
        assert!(resolve(Keep::Source, SideFacts::Exited, q(M::Active, false), false).is_err());
        // The destination's guest ran since the switch: the source's memory is stale.
        let stale = resolve(
            Keep::Source,
            q(M::Completed, false),
            q(M::Completed, true),
            true,
        );
        assert!(stale.is_err_and(|e| e.contains("out of date")));
        assert!(resolve(
            Keep::Destination,
            q(M::Completed, false),
            q(M::Active, false),
            false
        )
        .is_err());
        assert!(resolve(
            Keep::Source,
            q(M::PostcopyActive, false),
            q(M::PostcopyActive, true),
            true
        )
        .is_err());
        assert_eq!(
            resolve(
                Keep::Source,
                q(M::Completed, false),
                SideFacts::Exited,
                false
            ),
            Ok(Resolution::KeepSource {
                remove_destination: true,
                revive: SourceRevival::Reclaim
            })
        );
        assert_eq!(
            resolve(
                Keep::Destination,
                SideFacts::Exited,
                q(M::Completed, true),
                false
            ),
            Ok(Resolution::KeepDestination { stop_source: true })
        );
        // An unanswering other side needs the operator's explicit word.
        assert!(resolve(
            Keep::Destination,
            SideFacts::Unreachable,
            q(M::Completed, true),
            false
        )
        .is_err());
        assert!(resolve(
            Keep::Destination,
            SideFacts::Unreachable,
            q(M::Completed, true),
            true
        )
        .is_ok());
    }

    fn any_status() -> impl Strategy<Value = MigrationStatus> {
        prop::sample::select(
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

    fn any_phase() -> impl Strategy<Value = Phase> {
        prop::sample::select(vec![
            Phase::Pending,
            Phase::Preparing,
            Phase::CopyingDisks,
            Phase::Transferring,
            Phase::SwitchingOver,
            Phase::PostCopy,
            Phase::RollingBack,
        ])
    }

    proptest! {
        /// Whatever the facts: a rollback only when the source is proven to hold the VM or
        /// never sent a byte; the destination is removed only when proven not to hold the
        /// VM; a completed source is never resumed; post-copy is never rolled back; "lost"
        /// only when the source is proven gone and the destination proven not to hold it;
        /// a switch-over only when the destination holds everything.
        #[test]
        fn no_verdict_can_lose_or_duplicate_the_vm(
            phase in any_phase(),
            started in any::<bool>(),
            restart in any::<bool>(),
            s in any_facts(),
            d in any_facts(),
        ) {
            let saved = Saved { outgoing_started: started };
            let trigger = if restart { Trigger::Restart } else { Trigger::Failure };
            let v = decide(phase, saved, trigger, s, d);
            match &v {
                Verdict::RollBack { destination, cancel_source } => {
                    prop_assert!(!s.is_postcopy() && !d.is_postcopy() && phase != Phase::PostCopy);
                    prop_assert!(!s.source_completed(), "a completed source is never resumed");
                    prop_assert!(s.source_holds() || !started, "{s:?}");
                    prop_assert!(!d.destination_holds());
                    prop_assert!(!d.running() || d.is_unknown());
                    if *destination == Teardown::Remove {
                        prop_assert!(d.destination_partial() || d.is_gone(), "{d:?}");
                    } else {
                        // Later: only while nothing runnable can have reached it.
                        prop_assert!(d.is_unknown());
                        prop_assert!(!started || phase == Phase::CopyingDisks);
                    }
                    if *cancel_source {
                        prop_assert!(started && s.source_holds());
                    }
                }
                Verdict::SwitchOver => {
                    prop_assert!(d.destination_holds());
                    prop_assert!(s.source_completed() || s.is_gone());
                }
                Verdict::Lost { .. } => {
                    prop_assert!(s.is_gone());
                    prop_assert!(d.is_gone() || d.destination_partial());
                }
                Verdict::FollowPostcopy => {
                    prop_assert!(s.is_postcopy() || d.is_postcopy() || phase == Phase::PostCopy);
                }
                Verdict::Follow => {
                    prop_assert!(restart && started && s.source_holds() && d.destination_partial());
                }
                Verdict::Retry { .. } | Verdict::NeedsAttention { .. } => {}
            }
        }

        /// An operator's choice never loses the VM: the kept side holds it.
        #[test]
        fn resolutions_keep_a_whole_copy(keep_source in any::<bool>(), force in any::<bool>(), s in any_facts(), d in any_facts()) {
            let keep = if keep_source { Keep::Source } else { Keep::Destination };
            if let Ok(r) = resolve(keep, s, d, force) {
                prop_assert!(!s.is_postcopy() && !d.is_postcopy());
                match r {
                    Resolution::KeepSource { .. } => prop_assert!(s.source_holds() || s.source_completed()),
                    Resolution::KeepDestination { .. } => prop_assert!(d.destination_holds()),
                }
                if !force {
                    let other = if keep_source { d } else { s };
                    prop_assert!(!other.is_unknown());
                }
            }
        }
    }
}
