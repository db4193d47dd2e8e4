//! The migration queue's rule: which waiting migrations may start now, and what holds
//! each of the others back. A pure function of the unfinished migrations and the limits;
//! the store runs it inside the transaction that records a new request or starts waiting
//! ones, so two requests at once cannot both take the last slot.
//!
//! ```text
//!  request ──checks──▶ decide(limits, unfinished + it) ──▶ start now: Pending ──▶ orchestrator
//!                                      │
//!                                      └─▶ Queued ── a slot frees ─▶ checks again ─▶ Pending
//!                                             │                          └─ fail ─▶ Failed (refused)
//!                                             └─ cancel ─▶ Cancelled (nothing touched)
//! ```
//!
//! Order: higher priority first, then the earlier request. A waiting migration that fits
//! starts even when one ahead of it cannot (it needs other hosts): holding it back would
//! leave links idle for no one's benefit. What a migration occupies is counted from its
//! phase: everything from `Pending` to the end of a rollback sends or receives. A migration
//! that needs an operator holds no stream, so it does not count.

use std::collections::HashMap;

use ferry_api::*;
use uuid::Uuid;

/// Whether a migration in this phase takes a slot (it sends, receives or rolls back).
pub fn occupies(phase: Phase) -> bool {
    matches!(
        phase,
        Phase::Pending
            | Phase::Preparing
            | Phase::CopyingDisks
            | Phase::Transferring
            | Phase::SwitchingOver
            | Phase::PostCopy
            | Phase::RollingBack
    )
}

/// One migration as the queue sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot<'a> {
    pub id: Uuid,
    pub source: &'a str,
    pub destination: &'a str,
}

impl<'a> Slot<'a> {
    pub fn of(m: &'a Migration) -> Slot<'a> {
        Slot {
            id: m.id,
            source: &m.source,
            destination: &m.destination,
        }
    }
    fn links(&self, a: &str, b: &str) -> bool {
        (self.source == a && self.destination == b) || (self.source == b && self.destination == a)
    }
}

/// Every limit that `next` would break if it started next to `running`.
pub fn holds_back(limits: &MigrationLimits, running: &[Slot], next: &Slot) -> Vec<WaitReason> {
    let ids = |f: &dyn Fn(&Slot) -> bool| -> Vec<Uuid> {
        running.iter().filter(|s| f(s)).map(|s| s.id).collect()
    };
    let mut reasons = Vec::new();
    let out = ids(&|s| s.source == next.source);
    if out.len() as u32 >= limits.per_host_outgoing {
        reasons.push(WaitReason::HostOutgoing {
            host: next.source.to_string(),
            limit: limits.per_host_outgoing,
            running: out,
        });
    }
    let inc = ids(&|s| s.destination == next.destination);
    if inc.len() as u32 >= limits.per_host_incoming {
        reasons.push(WaitReason::HostIncoming {
            host: next.destination.to_string(),
            limit: limits.per_host_incoming,
            running: inc,
        });
    }
    let pair = ids(&|s| s.links(next.source, next.destination));
    if pair.len() as u32 >= limits.per_pair {
        reasons.push(WaitReason::Pair {
            a: next.source.to_string(),
            b: next.destination.to_string(),
            limit: limits.per_pair,
            running: pair,
        });
    }
    if running.len() as u32 >= limits.cluster {
        reasons.push(WaitReason::Cluster {
            limit: limits.cluster,
            running: running.iter().map(|s| s.id).collect(),
        });
    }
    reasons
}

/// What the queue does now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Queued migrations to start, in queue order.
    pub start: Vec<Uuid>,
    /// The others, with their standing (position counts only those still waiting).
    pub waiting: HashMap<Uuid, QueueStanding>,
}

/// The queue order: higher priority first, then the earlier request (then the id, so the
/// order is total).
pub fn queue_order(mut queued: Vec<&Migration>) -> Vec<&Migration> {
    queued.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then(a.created_at.cmp(&b.created_at))
            .then(a.id.cmp(&b.id))
    });
    queued
}

/// Which queued migrations start now (see the module doc), given every unfinished one.
pub fn decide(limits: &MigrationLimits, unfinished: &[Migration]) -> Decision {
    let mut running: Vec<Slot> = unfinished
        .iter()
        .filter(|m| occupies(m.phase))
        .map(Slot::of)
        .collect();
    let queued = queue_order(
        unfinished
            .iter()
            .filter(|m| m.phase == Phase::Queued)
            .collect(),
    );
    let mut decision = Decision::default();
    let mut held = Vec::new();
    for m in queued {
        let slot = Slot::of(m);
        if holds_back(limits, &running, &slot).is_empty() {
            decision.start.push(m.id);
            running.push(slot);
        } else {
            held.push(slot);
        }
    }
    // Reasons against everything running once the starts are made (what an operator
    // will see), in queue order.
    for (i, slot) in held.iter().enumerate() {
        decision.waiting.insert(
            slot.id,
            QueueStanding {
                position: i as u32 + 1,
                waits_for: holds_back(limits, &running, slot),
            },
        );
    }
    decision
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone, Utc};
    use proptest::prelude::*;

    fn mig(n: u128, src: &str, dst: &str, phase: Phase, prio: i32) -> Migration {
        let t = Utc.timestamp_opt(1_700_000_000, 0).unwrap() + Duration::seconds(n as i64);
        Migration {
            id: Uuid::from_u128(n),
            vm: format!("vm{n}"),
            source: src.into(),
            destination: dst.into(),
            phase,
            options: Default::default(),
            stream_uri: None,
            addresses: None,
            progress: None,
            report: None,
            error: None,
            created_at: t,
            updated_at: t,
            finished_at: None,
            run: Default::default(),
            attention: None,
            priority: prio,
            operation: None,
            queue: None,
        }
    }

    #[test]
    fn defaults_allow_two_out_two_in_one_per_pair_eight_in_all() {
        let l = MigrationLimits::default();
        let ms = vec![
            mig(1, "a", "b", Phase::Queued, 0),
            mig(2, "a", "b", Phase::Queued, 0),
            mig(3, "a", "c", Phase::Queued, 0),
            mig(4, "a", "d", Phase::Queued, 0),
        ];
        let d = decide(&l, &ms);
        assert_eq!(d.start, vec![Uuid::from_u128(1), Uuid::from_u128(3)]);
        let w2 = &d.waiting[&Uuid::from_u128(2)];
        assert_eq!(w2.position, 1);
        assert!(matches!(
            w2.waits_for[..],
            [WaitReason::HostOutgoing { .. }, WaitReason::Pair { .. }]
        ));
        let w4 = &d.waiting[&Uuid::from_u128(4)];
        assert_eq!(w4.position, 2);
        assert!(w4.waits_for[0].to_string().contains("a already sends 2"));
    }

    #[test]
    fn the_pair_limit_counts_both_directions_and_running_ones_count() {
        let l = MigrationLimits::default();
        let ms = vec![
            mig(1, "b", "a", Phase::Transferring, 0),
            mig(2, "a", "b", Phase::Queued, 0),
        ];
        let d = decide(&l, &ms);
        assert!(d.start.is_empty());
        assert!(matches!(
            d.waiting[&Uuid::from_u128(2)].waits_for[..],
            [WaitReason::Pair { .. }]
        ));
        // Needing attention holds no stream: it does not count.
        let ms = vec![
            mig(1, "b", "a", Phase::NeedsAttention, 0),
            mig(2, "a", "b", Phase::Queued, 0),
        ];
        assert_eq!(decide(&l, &ms).start, vec![Uuid::from_u128(2)]);
    }

    #[test]
    fn priority_then_arrival_order() {
        let l = MigrationLimits {
            cluster: 1,
            ..Default::default()
        };
        let ms = vec![
            mig(1, "a", "b", Phase::Queued, 0),
            mig(2, "c", "d", Phase::Queued, 5),
            mig(3, "e", "f", Phase::Queued, 5),
        ];
        let d = decide(&l, &ms);
        assert_eq!(d.start, vec![Uuid::from_u128(2)]);
        assert_eq!(d.waiting[&Uuid::from_u128(3)].position, 1);
        assert_eq!(d.waiting[&Uuid::from_u128(1)].position, 2);
        assert!(matches!(
            d.waiting[&Uuid::from_u128(1)].waits_for[..],
            [WaitReason::Cluster { .. }]
        ));
    }

    fn any_phase() -> impl Strategy<Value = Phase> {
        prop::sample::select(ferry_migration::phase::ALL_PHASES.to_vec())
    }

    fn any_limits() -> impl Strategy<Value = MigrationLimits> {
        (1u32..4, 1u32..4, 1u32..3, 1u32..10).prop_map(|(o, i, p, c)| MigrationLimits {
            per_host_outgoing: o,
            per_host_incoming: i,
            per_pair: p,
            cluster: c,
        })
    }

    fn any_cluster() -> impl Strategy<Value = Vec<Migration>> {
        prop::collection::vec(
            (
                0usize..5,
                0usize..5,
                prop_oneof![3 => Just(Phase::Queued), 1 => any_phase()],
                -2i32..3,
            ),
            0..30,
        )
        .prop_map(|v| {
            let hosts = ["a", "b", "c", "d", "e"];
            v.into_iter()
                .enumerate()
                .filter(|(_, (s, d, _, _))| s != d)
                .map(|(i, (s, d, ph, pr))| mig(i as u128 + 1, hosts[s], hosts[d], ph, pr))
                .collect()
        })
    }

    proptest! {
        /// Starting what `decide` says never takes a limit past what it was (a limit
        /// already exceeded, say after it was lowered, is never made worse), every waiting
        /// migration names a limit it would truly break, and the queue is work-conserving:
        /// after the starts, nothing still waiting would fit.
        #[test]
        fn limits_hold_and_every_wait_has_a_true_reason(limits in any_limits(), ms in any_cluster()) {
            let d = decide(&limits, &ms);
            let before: Vec<Slot> = ms.iter().filter(|m| occupies(m.phase)).map(Slot::of).collect();
            let mut after = before.clone();
            for id in &d.start {
                let m = ms.iter().find(|m| m.id == *id).unwrap();
                prop_assert_eq!(m.phase, Phase::Queued);
                prop_assert!(holds_back(&limits, &after, &Slot::of(m)).is_empty());
                after.push(Slot::of(m));
            }
            let count = |set: &[Slot], f: &dyn Fn(&Slot) -> bool| set.iter().filter(|s| f(s)).count() as u32;
            for h in ["a", "b", "c", "d", "e"] {
                let out_after = count(&after, &|s| s.source == h);
                prop_assert!(out_after <= limits.per_host_outgoing.max(count(&before, &|s| s.source == h)));
                let in_after = count(&after, &|s| s.destination == h);
                prop_assert!(in_after <= limits.per_host_incoming.max(count(&before, &|s| s.destination == h)));
            }
            prop_assert!(after.len() as u32 <= limits.cluster.max(before.len() as u32));
            let queued = ms.iter().filter(|m| m.phase == Phase::Queued).count();
            prop_assert_eq!(d.start.len() + d.waiting.len(), queued);
            let mut positions: Vec<u32> = d.waiting.values().map(|w| w.position).collect();
            positions.sort();
            prop_assert_eq!(positions, (1..=d.waiting.len() as u32).collect::<Vec<_>>());
            for (id, w) in &d.waiting {
                let m = ms.iter().find(|m| m.id == *id).unwrap();
                prop_assert!(!w.waits_for.is_empty());
                prop_assert!(!holds_back(&limits, &after, &Slot::of(m)).is_empty());
            }
        }

        /// Among migrations that compete for the same slots (one pair of hosts), the one
        /// ahead in the queue starts first.
        #[test]
        fn order_is_respected_within_a_pair(prios in prop::collection::vec(-3i32..3, 1..8)) {
            let ms: Vec<Migration> = prios.iter().enumerate()
                .map(|(i, p)| mig(i as u128 + 1, "a", "b", Phase::Queued, *p)).collect();
            let d = decide(&MigrationLimits::default(), &ms);
            prop_assert_eq!(d.start.len(), 1);
            let first = queue_order(ms.iter().collect())[0].id;
            prop_assert_eq!(d.start[0], first);
        }
    }
}
