//! Migration phases and the only transitions allowed between them.

use serde::{Deserialize, Serialize};

/// Where a migration is. Persisted by the server after every transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Accepted and checked, waiting in the migration queue for a slot within the limits
    /// (per host, per host pair, per cluster). Nothing is touched on either host; the VM is
    /// claimed and the destination's capacity reserved, so the wait cannot be overtaken.
    Queued,
    /// Accepted, nothing touched yet.
    Pending,
    /// The destination starts QEMU with the same devices, waiting for the incoming stream.
    Preparing,
    /// Local-pool disks only: the source mirrors each disk to the destination's export
    /// while the guest runs, until every disk is in sync (then guest writes go to both).
    CopyingDisks,
    /// The source sends RAM (pass after pass) and then device state (and, with disks,
    /// finishes the mirrors while paused before the switch).
    Transferring,
    /// The source finished sending; the destination must be seen running before the
    /// source is shut down.
    SwitchingOver,
    /// Post-copy: the guest runs on the destination and the pages still on the source
    /// follow (pushed in the background, or fetched when the guest touches them). Neither
    /// side alone holds the whole VM, so there is no rollback from here: a broken link
    /// pauses both sides and the migration is resumed when the link is back.
    PostCopy,
    /// The VM runs on the destination; the source QEMU is gone.
    Completed,
    /// Something failed (or the operator cancelled) before the destination ran: the source
    /// is being resumed and the destination torn down.
    RollingBack,
    /// Rolled back after a failure; the VM runs on the source.
    Failed,
    /// Rolled back on the operator's request; the VM runs on the source.
    Cancelled,
    /// Ferry could not prove which side holds the whole VM (a side did not answer within
    /// its bound, or the two sides report what no safe step follows from). Nothing is
    /// killed, resumed or deleted until an operator settles it (`ferry migration resolve
    /// ID --keep source|destination`); the VM stays claimed by the migration meanwhile.
    NeedsAttention,
}

impl Phase {
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Completed | Phase::Failed | Phase::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Queued => "queued",
            Phase::Pending => "pending",
            Phase::Preparing => "preparing",
            Phase::CopyingDisks => "copying_disks",
            Phase::Transferring => "transferring",
            Phase::SwitchingOver => "switching_over",
            Phase::PostCopy => "post_copy",
            Phase::Completed => "completed",
            Phase::RollingBack => "rolling_back",
            Phase::Failed => "failed",
            Phase::Cancelled => "cancelled",
            Phase::NeedsAttention => "needs_attention",
        }
    }

    pub fn parse(text: &str) -> Option<Phase> {
        ALL_PHASES.iter().copied().find(|p| p.as_str() == text)
    }
}

pub const ALL_PHASES: [Phase; 12] = [
    Phase::Queued,
    Phase::Pending,
    Phase::Preparing,
    Phase::CopyingDisks,
    Phase::Transferring,
    Phase::SwitchingOver,
    Phase::PostCopy,
    Phase::Completed,
    Phase::RollingBack,
    Phase::Failed,
    Phase::Cancelled,
    Phase::NeedsAttention,
];

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened, as observed by the orchestrator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseEvent {
    /// The queue gave a waiting migration its slot (and its checks passed again).
    Dequeued,
    /// A waiting migration leaves the queue without touching anything: the operator
    /// cancelled it (`cancelled`), or its checks failed when its turn came.
    Withdrawn { cancelled: bool },
    /// The orchestrator begins preparing the destination.
    Start,
    /// The destination QEMU listens for the incoming stream.
    DestinationReady,
    /// The destination listens and exports target disks the source must copy first.
    DestinationReadyWithDisks,
    /// Every disk mirror is in sync.
    DisksInSync,
    /// The source QEMU reports the stream completed (it is paused, `postmigrate`).
    SourceCompleted,
    /// The destination QEMU is seen running.
    DestinationRunning,
    /// Both QEMUs report post-copy active: the guest runs on the destination.
    PostcopyStarted,
    /// Post-copy finished: the source sent its last page and the destination runs.
    PostcopyFinished,
    /// The VM's only whole copy is gone (the source QEMU died before the destination held
    /// everything; in post-copy, either QEMU died): the migration failed without a
    /// rollback and the VM is reported crashed.
    Lost,
    /// The facts do not prove which side holds the whole VM: stop and ask the operator.
    Unresolved,
    /// The operator checked and keeps the VM on the source (the destination is proven not
    /// to run it).
    ResolvedKeepSource,
    /// The operator checked and keeps the VM on the destination (proven to hold it).
    ResolvedKeepDestination,
    /// Any failure (agent error, QEMU error, timeout, lost host).
    Failure,
    /// The operator asked to cancel.
    CancelRequested,
    /// Rollback finished: source running, destination torn down.
    RolledBack { cancelled: bool },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a migration in phase '{from}' cannot take event {event:?}")]
pub struct TransitionError {
    pub from: Phase,
    pub event: PhaseEvent,
}

impl Phase {
    /// The transition function. Anything not listed is refused, so a bug in the
    /// orchestrator shows up as an error instead of a VM on two hosts.
    pub fn next(self, event: PhaseEvent) -> Result<Phase, TransitionError> {
        use Phase::*;
        use PhaseEvent::*;
        let next = match (self, event) {
            (Queued, Dequeued) => Pending,
            // Nothing was touched while it waited: no rollback needed.
            (Queued, Withdrawn { cancelled: true }) => Cancelled,
            (Queued, Withdrawn { cancelled: false }) => Failed,
            (Pending, Start) => Preparing,
            (Preparing, DestinationReady) => Transferring,
            (Preparing, DestinationReadyWithDisks) => CopyingDisks,
            (CopyingDisks, DisksInSync) => Transferring,
            (Transferring, SourceCompleted) => SwitchingOver,
            // A rollback that finds the destination holding the whole VM (the stream
            // completed before anything was torn down) switches over instead: nothing is
            // removed until the destination is proven partial.
            (RollingBack, SourceCompleted) => SwitchingOver,
            (SwitchingOver, DestinationRunning) => Completed,
            // QEMU may switch to post-copy just before a failure is saved; post-copy then
            // wins (it cannot be rolled back).
            (Transferring | RollingBack, PostcopyStarted) => PostCopy,
            (PostCopy, PostcopyFinished) => Completed,
            // The only whole copy died: no rollback can bring it back.
            (
                Preparing | CopyingDisks | Transferring | SwitchingOver | PostCopy | RollingBack
                | NeedsAttention,
                Lost,
            ) => Failed,
            // Not provable either way: stop, and let an operator decide.
            (
                Pending | Preparing | CopyingDisks | Transferring | SwitchingOver | PostCopy
                | RollingBack,
                Unresolved,
            ) => NeedsAttention,
            (NeedsAttention, Unresolved) => NeedsAttention,
            (NeedsAttention, ResolvedKeepSource) => Failed,
            (NeedsAttention, ResolvedKeepDestination) => Completed,
            // Until the destination runs, every failure or cancel rolls back.
            (
                Pending | Preparing | CopyingDisks | Transferring | SwitchingOver,
                Failure | CancelRequested,
            ) => RollingBack,
            (RollingBack, RolledBack { cancelled: false }) => Failed,
            (RollingBack, RolledBack { cancelled: true }) => Cancelled,
            // A second failure while rolling back keeps rolling back.
            (RollingBack, Failure | CancelRequested) => RollingBack,
            (from, event) => return Err(TransitionError { from, event }),
        };
        Ok(next)
    }

    /// Whether the orchestrator is done with this migration until an operator acts:
    /// terminal, or waiting for a resolution.
    pub fn is_settled(self) -> bool {
        self.is_terminal() || self == Phase::NeedsAttention
    }

    /// Whether the VM's record still points at the source in this phase. Only `Completed`
    /// moves it: this is the control-plane half of "a VM runs on exactly one host". (In
    /// `PostCopy` the guest already runs on the destination, but its memory is still on
    /// both; the record moves when the source holds nothing any more.)
    pub fn vm_on_source(self) -> bool {
        self != Phase::Completed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_happy_path_reaches_completed() {
        let mut p = Phase::Pending;
        for e in [
            PhaseEvent::Start,
            PhaseEvent::DestinationReady,
            PhaseEvent::SourceCompleted,
            PhaseEvent::DestinationRunning,
        ] {
            p = p.next(e).unwrap();
        }
        assert_eq!(p, Phase::Completed);
    }

    #[test]
    fn with_local_disks_the_copy_comes_before_memory() {
        let mut p = Phase::Pending;
        for e in [
            PhaseEvent::Start,
            PhaseEvent::DestinationReadyWithDisks,
            PhaseEvent::DisksInSync,
            PhaseEvent::SourceCompleted,
            PhaseEvent::DestinationRunning,
        ] {
            p = p.next(e).unwrap();
        }
        assert_eq!(p, Phase::Completed);
        // Memory cannot start before the disks are in sync.
        assert!(Phase::CopyingDisks
            .next(PhaseEvent::SourceCompleted)
            .is_err());
    }

    #[test]
    fn failure_before_the_destination_runs_rolls_back() {
        for p in [
            Phase::Pending,
            Phase::Preparing,
            Phase::CopyingDisks,
            Phase::Transferring,
            Phase::SwitchingOver,
        ] {
            assert_eq!(p.next(PhaseEvent::Failure).unwrap(), Phase::RollingBack);
        }
        assert_eq!(
            Phase::RollingBack
                .next(PhaseEvent::RolledBack { cancelled: false })
                .unwrap(),
            Phase::Failed
        );
        assert_eq!(
            Phase::RollingBack
                .next(PhaseEvent::RolledBack { cancelled: true })
                .unwrap(),
            Phase::Cancelled
        );
    }

    #[test]
    fn post_copy_finishes_or_is_lost_but_never_rolls_back() {
        let p = Phase::Transferring
            .next(PhaseEvent::PostcopyStarted)
            .unwrap();
        assert_eq!(p, Phase::PostCopy);
        assert!(p.next(PhaseEvent::Failure).is_err());
        assert!(p.next(PhaseEvent::CancelRequested).is_err());
        assert_eq!(
            p.next(PhaseEvent::PostcopyFinished).unwrap(),
            Phase::Completed
        );
        assert_eq!(p.next(PhaseEvent::Lost).unwrap(), Phase::Failed);
        // Post-copy starts only from a running pre-copy.
        assert!(Phase::CopyingDisks
            .next(PhaseEvent::PostcopyStarted)
            .is_err());
    }

    #[test]
    fn an_unprovable_situation_waits_for_the_operator() {
        for p in [
            Phase::Preparing,
            Phase::Transferring,
            Phase::SwitchingOver,
            Phase::PostCopy,
            Phase::RollingBack,
        ] {
            let n = p.next(PhaseEvent::Unresolved).unwrap();
            assert_eq!(n, Phase::NeedsAttention);
            assert!(!n.is_terminal() && n.is_settled());
            // Nothing automatic moves it on.
            for e in [
                PhaseEvent::Failure,
                PhaseEvent::CancelRequested,
                PhaseEvent::DestinationRunning,
                PhaseEvent::RolledBack { cancelled: false },
            ] {
                assert!(n.next(e).is_err(), "{e:?}");
            }
            assert_eq!(
                n.next(PhaseEvent::ResolvedKeepSource).unwrap(),
                Phase::Failed
            );
            assert_eq!(
                n.next(PhaseEvent::ResolvedKeepDestination).unwrap(),
                Phase::Completed
            );
        }
        assert!(Phase::Completed.next(PhaseEvent::Unresolved).is_err());
    }

    #[test]
    fn completed_cannot_be_rolled_back() {
        assert!(Phase::Completed.next(PhaseEvent::Failure).is_err());
        assert!(Phase::Completed.next(PhaseEvent::CancelRequested).is_err());
    }

    #[test]
    fn phase_names_round_trip() {
        for p in ALL_PHASES {
            assert_eq!(Phase::parse(p.as_str()), Some(p));
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.as_str()));
        }
    }

    fn any_event() -> impl Strategy<Value = PhaseEvent> {
        prop_oneof![
            Just(PhaseEvent::Dequeued),
            any::<bool>().prop_map(|cancelled| PhaseEvent::Withdrawn { cancelled }),
            Just(PhaseEvent::Start),
            Just(PhaseEvent::DestinationReady),
            Just(PhaseEvent::DestinationReadyWithDisks),
            Just(PhaseEvent::DisksInSync),
            Just(PhaseEvent::SourceCompleted),
            Just(PhaseEvent::DestinationRunning),
            Just(PhaseEvent::PostcopyStarted),
            Just(PhaseEvent::PostcopyFinished),
            Just(PhaseEvent::Lost),
            Just(PhaseEvent::Unresolved),
            Just(PhaseEvent::ResolvedKeepSource),
            Just(PhaseEvent::ResolvedKeepDestination),
            Just(PhaseEvent::Failure),
            Just(PhaseEvent::CancelRequested),
            any::<bool>().prop_map(|cancelled| PhaseEvent::RolledBack { cancelled }),
        ]
    }

    proptest! {
        /// Whatever the orchestrator observes, in any order: terminal phases never change,
        /// `Completed` is only reached through `SwitchingOver` (the destination was seen
        /// running) or the end of post-copy, never from a rollback, and nothing rolls back
        /// once post-copy started.
        #[test]
        fn no_event_sequence_breaks_the_invariants(queued in any::<bool>(), events in proptest::collection::vec(any_event(), 0..40)) {
            let mut p = if queued { Phase::Queued } else { Phase::Pending };
            for e in events {
                match p.next(e) {
                    Ok(n) => {
                        prop_assert!(!p.is_terminal(), "terminal {p} moved to {n}");
                        if n == Phase::Completed {
                            // The destination was seen running, post-copy ended, or an
                            // operator proved the destination holds the VM.
                            prop_assert!(matches!(p, Phase::SwitchingOver | Phase::PostCopy | Phase::NeedsAttention));
                            if p == Phase::NeedsAttention {
                                prop_assert_eq!(e, PhaseEvent::ResolvedKeepDestination);
                            }
                        }
                        if n == Phase::Cancelled {
                            // Rolled back, or withdrawn before anything was touched.
                            let withdrawn = p == Phase::Queued && e == PhaseEvent::Withdrawn { cancelled: true };
                            prop_assert!(p == Phase::RollingBack || withdrawn, "cancelled from {}", p);
                        }
                        if p == Phase::Queued {
                            // A waiting migration touched nothing: it only starts or leaves.
                            prop_assert!(matches!(n, Phase::Pending | Phase::Cancelled | Phase::Failed));
                        }
                        if n == Phase::Failed {
                            // Rolled back, lost, or settled by an operator: never straight
                            // from a running phase for an ordinary failure.
                            prop_assert!(
                                matches!(p, Phase::RollingBack | Phase::NeedsAttention | Phase::Queued)
                                    || e == PhaseEvent::Lost
                            );
                        }
                        if p == Phase::NeedsAttention {
                            // Only an operator (or the proof that the VM is gone) moves it.
                            prop_assert!(matches!(e, PhaseEvent::Unresolved | PhaseEvent::Lost | PhaseEvent::ResolvedKeepSource | PhaseEvent::ResolvedKeepDestination));
                        }
                        if p == Phase::PostCopy {
                            prop_assert!(n != Phase::RollingBack);
                        }
                        p = n;
                    }
                    Err(err) => prop_assert_eq!(err.from, p),
                }
            }
        }
    }
}
