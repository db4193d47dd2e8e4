//! What to do next in post-copy, from what both sides report: a pure function, so every
//! path (a stalled link, a side that noticed the break and one that did not, a recovery
//! that never completes, a QEMU that died) is unit-tested without a network.
//!
//! Post-copy cannot be rolled back (the destination runs the guest, the source holds the
//! pages not sent yet), so the only ways out are finishing and losing the VM. A broken
//! link is never a reason to give up: both sides are paused, and the migration is resumed
//! once the link carries traffic again.
//!
//! ```text
//!  source completed ──────────────────────────────────────────▶ Finish
//!  a QEMU exited (destination; or source before it completed) ▶ Lost
//!  either side postcopy-paused ────────────────────────────────▶ Recover
//!  source active, no byte moved for STALL_MS ──────────────────▶ Pause (link stalled)
//!  a side recovering for longer than RECOVER_LIMIT_MS ─────────▶ Pause (start over)
//!  otherwise ──────────────────────────────────────────────────▶ Wait
//! ```

/// A post-copy stream that moves no byte for this long is treated as a broken link. QEMU
/// itself would only notice when TCP gives up, many minutes later.
pub const STALL_MS: u64 = 3_000;
/// A reconnection that has not brought both sides back to `postcopy-active` by then is
/// abandoned and tried again from a clean pause.
pub const RECOVER_LIMIT_MS: u64 = 10_000;

use crate::recovery::SideFacts;
use crate::status::MigrationStatus;

/// One QEMU's migration state as its agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The agent did not answer (the QEMU may well be fine).
    Unknown,
    /// QEMU is gone.
    Exited,
    Active,
    Paused,
    /// `postcopy-recover-setup` or `postcopy-recover`.
    Recovering,
    Completed,
    /// Anything else (`failed`, `none`, ...): QEMU's status string.
    Other,
}

impl Side {
    /// From QEMU's migration status (`query-migrate`).
    pub fn from_status(status: MigrationStatus) -> Side {
        match status {
            MigrationStatus::PostcopyActive | MigrationStatus::PostcopyDevice => Side::Active,
            MigrationStatus::PostcopyPaused => Side::Paused,
            MigrationStatus::PostcopyRecoverSetup | MigrationStatus::PostcopyRecover => {
                Side::Recovering
            }
            MigrationStatus::Completed => Side::Completed,
            _ => Side::Other,
        }
    }

    /// From what the agent reported (see [`crate::recovery`]).
    pub fn from_facts(facts: SideFacts) -> Side {
        match facts {
            SideFacts::Unreachable | SideFacts::Unresponsive => Side::Unknown,
            SideFacts::Absent | SideFacts::Exited => Side::Exited,
            SideFacts::Qemu { migration, .. } => Side::from_status(migration),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    pub source: Side,
    pub destination: Side,
    /// Since the source's sent-bytes counter last moved, ms.
    pub since_progress_ms: u64,
    /// Since the current recovery attempt started, ms (None: none running).
    pub recovering_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Wait,
    Finish,
    Pause { reason: String },
    Recover,
    Lost { reason: String },
}

/// Whether a reconnection took: the source sends again and the destination does not say
/// otherwise (its agent may be slow to answer until the pages it waited for arrived).
pub fn resumed(o: &Observation) -> bool {
    o.source == Side::Active && matches!(o.destination, Side::Active | Side::Unknown)
}

pub fn next(o: &Observation) -> Next {
    use Side::*;
    if o.source == Completed {
        return if o.destination == Exited {
            Next::Lost {
                reason: "the destination QEMU exited as post-copy completed".into(),
            }
        } else {
            Next::Finish
        };
    }
    if o.destination == Exited {
        return Next::Lost {
            reason: "the destination QEMU, which ran the guest, exited during post-copy".into(),
        };
    }
    if o.source == Exited {
        return Next::Lost {
            reason: "the source QEMU exited during post-copy, with guest pages not yet sent".into(),
        };
    }
    if let Some(ms) = o.recovering_ms {
        if ms > RECOVER_LIMIT_MS && !resumed(o) {
            return Next::Pause {
                reason: format!(
                    "the reconnection did not complete within {} s; starting it over",
                    RECOVER_LIMIT_MS / 1000
                ),
            };
        }
        if o.source == Recovering || o.destination == Recovering {
            return Next::Wait;
        }
    }
    if o.source == Paused || o.destination == Paused {
        return Next::Recover;
    }
    if o.source == Active && o.since_progress_ms >= STALL_MS {
        return Next::Pause {
            reason: format!(
                "no page moved for {:.1} s: the migration link is down",
                o.since_progress_ms as f64 / 1000.0
            ),
        };
    }
    Next::Wait
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use Side::*;

    fn obs(source: Side, destination: Side) -> Observation {
        Observation {
            source,
            destination,
            since_progress_ms: 0,
            recovering_ms: None,
        }
    }

    #[test]
    fn a_flowing_stream_waits_and_a_completed_one_finishes() {
        assert_eq!(next(&obs(Active, Active)), Next::Wait);
        assert_eq!(next(&obs(Completed, Active)), Next::Finish);
        assert_eq!(next(&obs(Completed, Completed)), Next::Finish);
        assert_eq!(next(&obs(Completed, Unknown)), Next::Finish);
    }

    #[test]
    fn a_silent_link_is_paused_after_the_stall_limit() {
        let mut o = obs(Active, Active);
        o.since_progress_ms = STALL_MS - 1;
        assert_eq!(next(&o), Next::Wait);
        o.since_progress_ms = STALL_MS;
        assert!(matches!(next(&o), Next::Pause { reason } if reason.contains("link is down")));
    }

    #[test]
    fn a_side_that_noticed_the_break_starts_the_recovery() {
        // QEMU on one side saw the socket fail; the other did not (a silent link).
        assert_eq!(next(&obs(Paused, Active)), Next::Recover);
        assert_eq!(next(&obs(Active, Paused)), Next::Recover);
        assert_eq!(next(&obs(Paused, Paused)), Next::Recover);
        // An unreachable agent is no reason to give up, nor to act.
        assert_eq!(next(&obs(Unknown, Active)), Next::Wait);
        assert_eq!(next(&obs(Paused, Unknown)), Next::Recover);
    }

    #[test]
    fn a_recovery_in_progress_is_waited_for_then_started_over() {
        let mut o = obs(Recovering, Recovering);
        o.recovering_ms = Some(1_000);
        assert_eq!(next(&o), Next::Wait);
        o.recovering_ms = Some(RECOVER_LIMIT_MS + 1);
        assert!(matches!(next(&o), Next::Pause { .. }));
        // Recovered: both active again (or the destination not answering yet).
        let mut ok = obs(Active, Active);
        ok.recovering_ms = Some(RECOVER_LIMIT_MS + 1);
        assert_eq!(next(&ok), Next::Wait);
        ok.destination = Unknown;
        assert!(resumed(&ok));
        assert_eq!(next(&ok), Next::Wait);
        ok.destination = Recovering;
        assert!(!resumed(&ok));
        assert!(matches!(next(&ok), Next::Pause { .. }));
    }

    #[test]
    fn a_dead_qemu_loses_the_vm() {
        assert!(matches!(next(&obs(Active, Exited)), Next::Lost { .. }));
        assert!(matches!(next(&obs(Paused, Exited)), Next::Lost { .. }));
        assert!(matches!(next(&obs(Exited, Active)), Next::Lost { .. }));
        assert!(matches!(next(&obs(Completed, Exited)), Next::Lost { .. }));
    }

    fn any_side() -> impl Strategy<Value = Side> {
        prop_oneof![
            Just(Unknown),
            Just(Exited),
            Just(Active),
            Just(Paused),
            Just(Recovering),
            Just(Completed),
            Just(Other)
        ]
    }

    proptest! {
        /// Never finishes before the source completed, never gives up while both QEMUs
        /// live, and never leaves a paused side alone unless a recovery is under way.
        #[test]
        fn the_decision_respects_the_post_copy_rules(
            source in any_side(),
            destination in any_side(),
            since in 0u64..20_000,
            recovering in proptest::option::of(0u64..30_000),
        ) {
            let o = Observation { source, destination, since_progress_ms: since, recovering_ms: recovering };
            let n = next(&o);
            if n == Next::Finish {
                prop_assert_eq!(source, Completed);
            }
            if matches!(n, Next::Lost { .. }) {
                prop_assert!(source == Exited || destination == Exited);
            }
            if (source == Paused || destination == Paused) && recovering.is_none()
                && source != Completed && source != Exited && destination != Exited
            {
                prop_assert_eq!(n, Next::Recover);
            }
        }
    }
}
