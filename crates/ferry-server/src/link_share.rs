//! Fair shares of the hosts' migration links among the migrations running at once: the
//! bandwidth cap each one is given (QEMU's `max-bandwidth`, set live through the agent's
//! tune route), recomputed whenever a migration starts or ends.
//!
//! ```text
//!   share = min( source link / migrations leaving the source       (when shared)
//!              , destination link / migrations arriving there      (when shared)
//!              , the operator's --max-bandwidth )
//!   None: nothing to apply (no QEMU cap: lift any earlier one)
//! ```
//!
//! Why capped at all: QEMU sends as fast as TCP lets it, and TCP shares a link per
//! connection, not per migration. A migration with 4 multifd streams has 4 connections and
//! would take 4/5 of a link it shares with a single-stream one, which would then take far
//! longer than its turn in the queue assumed (and might not converge at all). Capping each
//! at its share of every link it shares keeps them even.
//!
//! Why a link used by one migration does not cap it: the link capacity is a probe's
//! reading, which may under-read (a short probe, a busy moment, a TLS peer busy with its
//! own cipher). A migration alone on a link gains nothing from a cap there and would only
//! be slowed by a low reading, so that link's term is left out; with no other term (alone
//! on both its links, or no capacity known for a shared one) and no operator cap, the
//! share is `None`.

use std::collections::HashMap;

use uuid::Uuid;

/// A running migration, as far as its links are concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub id: Uuid,
    pub source: String,
    pub destination: String,
    /// The operator's `--max-bandwidth`, bytes/s (None or 0: none).
    pub cap: Option<u64>,
}

/// The smallest share ever given, bytes/s: below it a migration makes no useful progress,
/// the agent's tune route refuses less, and a share must never be 0 (QEMU reads a
/// `max-bandwidth` of 0 as "no limit").
pub const MIN_SHARE_BYTES_S: u64 = 1 << 20;

/// Each running migration's share, bytes/s (None: apply no cap). `link` gives a host's
/// migration link capacity in bytes/s (None or 0: unknown).
pub fn shares(running: &[Flow], link: &dyn Fn(&str) -> Option<u64>) -> HashMap<Uuid, Option<u64>> {
    let mut leaving: HashMap<&str, u64> = HashMap::new();
    let mut arriving: HashMap<&str, u64> = HashMap::new();
    for f in running {
        *leaving.entry(f.source.as_str()).or_default() += 1;
        *arriving.entry(f.destination.as_str()).or_default() += 1;
    }
    let capacity = |host: &str| link(host).filter(|c| *c > 0);
    running
        .iter()
        .map(|f| {
            let term = |host: &str, users: u64| {
                (users > 1)
                    .then(|| capacity(host))
                    .flatten()
                    .map(|c| c / users)
            };
            let share = [
                term(&f.source, leaving[f.source.as_str()]),
                term(&f.destination, arriving[f.destination.as_str()]),
                f.cap.filter(|c| *c > 0),
            ]
            .into_iter()
            .flatten()
            .min()
            .map(|s| s.max(MIN_SHARE_BYTES_S));
            (f.id, share)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GBIT: u64 = 125_000_000;

    fn flow(n: u128, from: &str, to: &str, cap: Option<u64>) -> Flow {
        Flow {
            id: Uuid::from_u128(n),
            source: from.into(),
            destination: to.into(),
            cap,
        }
    }

    fn links(pairs: &[(&str, u64)]) -> impl Fn(&str) -> Option<u64> {
        let m: HashMap<String, u64> = pairs.iter().map(|(h, c)| (h.to_string(), *c)).collect();
        move |h: &str| m.get(h).copied()
    }

    #[test]
    fn a_lone_migration_is_never_capped_by_the_probe_only_by_the_operator() {
        let l = links(&[("a", GBIT), ("b", GBIT)]);
        let s = shares(&[flow(1, "a", "b", None)], &l);
        assert_eq!(s[&Uuid::from_u128(1)], None);
        let s = shares(&[flow(1, "a", "b", Some(50 << 20))], &l);
        assert_eq!(s[&Uuid::from_u128(1)], Some(50 << 20));
    }

    #[test]
    fn migrations_sharing_a_link_split_it_and_the_smaller_share_wins() {
        // Two leave a (1 Gbit/s each half); c takes two arrivals on a 400 MB/s link.
        let l = links(&[("a", GBIT), ("b", 10 * GBIT), ("c", 400_000_000)]);
        let f = [
            flow(1, "a", "b", None),
            flow(2, "a", "c", None),
            flow(3, "d", "c", Some(100_000_000)),
        ];
        let s = shares(&f, &l);
        assert_eq!(s[&Uuid::from_u128(1)], Some(GBIT / 2));
        assert_eq!(s[&Uuid::from_u128(2)], Some(GBIT / 2));
        assert_eq!(s[&Uuid::from_u128(3)], Some(100_000_000), "its own cap");
    }

    #[test]
    fn a_shared_link_of_unknown_capacity_caps_nothing() {
        let l = links(&[("a", 0)]);
        let s = shares(&[flow(1, "a", "b", None), flow(2, "a", "c", None)], &l);
        assert!(s.values().all(Option::is_none), "{s:?}");
    }

    proptest! {
        /// On every link used by several migrations, their shares add up to at most its
        /// capacity; equal flows get equal shares; no share exceeds its operator cap and
        /// none is 0.
        #[test]
        fn shares_fit_the_links_and_equal_flows_get_equal_shares(
            raw in prop::collection::vec((0..4usize, 1..4usize, prop::option::of(1u64..4000)), 0..12),
            caps in prop::collection::vec(prop_oneof![Just(0u64), 1u64..20_000], 4),
        ) {
            let hosts = ["h0", "h1", "h2", "h3"];
            let flows: Vec<Flow> = raw.iter().enumerate().map(|(i, (s, off, cap))| {
                flow(i as u128, hosts[*s], hosts[(s + off) % 4], cap.map(|c| c << 20))
            }).collect();
            let link = |h: &str| hosts.iter().position(|x| *x == h).map(|i| caps[i] << 20);
            let s = shares(&flows, &link);
            prop_assert_eq!(s.len(), flows.len());
            for (i, h) in hosts.iter().enumerate() {
                for leaving in [true, false] {
                    let on: Vec<&Flow> = flows.iter()
                        .filter(|f| if leaving { f.source == *h } else { f.destination == *h })
                        .collect();
                    if on.len() < 2 || caps[i] == 0 {
                        continue;
                    }
                    let sum: u64 = on.iter().map(|f| s[&f.id].expect("capped on a shared link")).sum();
                    let capacity = (caps[i] << 20).max(on.len() as u64 * MIN_SHARE_BYTES_S);
                    prop_assert!(sum <= capacity, "{h}: {sum} > {capacity}");
                }
            }
            for a in &flows {
                let sa = s[&a.id];
                prop_assert!(sa != Some(0));
                if let (Some(c), Some(v)) = (a.cap, sa) {
                    prop_assert!(v <= c.max(MIN_SHARE_BYTES_S));
                }
                for b in &flows {
                    if (&a.source, &a.destination, a.cap) == (&b.source, &b.destination, b.cap) {
                        prop_assert_eq!(sa, s[&b.id]);
                    }
                }
            }
        }
    }
}
