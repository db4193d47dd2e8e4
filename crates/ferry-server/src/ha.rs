//! High availability's decisions, pure: how a host is judged from its heartbeats and its
//! peers' views ([`judge`]), and which of a failed host's VMs may restart elsewhere
//! ([`restartable`]). The protocol and its timing are drawn in [`ferry_api::ha`].
//!
//! A host is `failed` (its HA VMs restart elsewhere) only when both hold:
//! - its lease ran out on the server's clock, `grace` after the agent's own deadline, so an
//!   isolated host has stopped its VMs by then;
//! - fewer than half of its peers have reached it, continuously, for `confirm` (their views
//!   come with their heartbeats; a host isolated only now fences itself within a probe
//!   round, so `confirm` covers that round).
//!
//! Otherwise a silent host is `suspected` (lease not out) or `partitioned` (peers still
//! reach it: alive, and keeping its VMs; nothing restarts).

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use ferry_api::{is_isolated, HostHealth, IsolationResponse, PeerView, Vm, VmState};

/// The timing (see [`ferry_api::ha`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HaConfig {
    /// L: the lease a heartbeat grants, from when it was sent.
    pub lease: Duration,
    /// F: an isolated host stops its HA VMs this long before its lease ends.
    pub fence_margin: Duration,
    /// G: the server waits this long past the lease (F + G: time to kill QEMU, drift).
    pub grace: Duration,
    /// Silent this long: suspected.
    pub suspect_after: Duration,
    /// Peers' views count while younger than this.
    pub view_fresh: Duration,
    /// Unreached by most peers this long before it counts as failed.
    pub confirm: Duration,
}

impl Default for HaConfig {
    fn default() -> Self {
        HaConfig {
            lease: Duration::seconds(15),
            fence_margin: Duration::seconds(5),
            grace: Duration::seconds(3),
            suspect_after: Duration::seconds(6),
            view_fresh: Duration::seconds(6),
            confirm: Duration::seconds(6),
        }
    }
}

impl HaConfig {
    /// Checks the margins hold: the host acts before the server, with room to spare.
    pub fn validate(&self) -> Result<(), String> {
        if self.fence_margin >= self.lease || self.fence_margin <= Duration::zero() {
            return Err("the fence margin must be positive and shorter than the lease".into());
        }
        if self.grace <= Duration::zero() || self.suspect_after >= self.lease + self.grace {
            return Err("the grace must be positive and suspicion come before failure".into());
        }
        Ok(())
    }

    /// From a host going silent (its last heartbeat received) to its HA VMs restarting,
    /// at the earliest.
    pub fn failover_after(&self) -> Duration {
        self.lease + self.grace
    }
}

/// What the server remembers per host between judgements.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HostHa {
    pub health: HostHealth,
    /// Since when fewer than half of its peers reach it.
    pub unreached_since: Option<DateTime<Utc>>,
}

/// The facts about one host at `now`.
#[derive(Debug, Clone)]
pub struct HostFacts<'a> {
    pub name: &'a str,
    /// When the server last received its heartbeat.
    pub last_seen: DateTime<Utc>,
    /// When this server started (a restarted server gives every host a fresh start).
    pub started: DateTime<Utc>,
    pub now: DateTime<Utc>,
    /// The other hosts (its peers, as its heartbeats' replies named them).
    pub peers: &'a [String],
    /// Each host's latest view of its peers, with when it arrived.
    pub views: &'a HashMap<String, (DateTime<Utc>, PeerView)>,
}

/// The host's health now, from what was remembered and the facts.
pub fn judge(prev: HostHa, f: &HostFacts<'_>, cfg: &HaConfig) -> HostHa {
    let silent = f.now - f.last_seen.max(f.started);
    if silent < cfg.suspect_after {
        return HostHa::default();
    }
    let reached = f
        .peers
        .iter()
        .filter(|p| {
            f.views.get(p.as_str()).is_some_and(|(at, v)| {
                f.now - *at < cfg.view_fresh && v.reachable.iter().any(|r| r == f.name)
            })
        })
        .count();
    let unreached_since = if is_isolated(reached, f.peers.len()) {
        Some(prev.unreached_since.unwrap_or(f.now))
    } else {
        None
    };
    let health = if silent < cfg.failover_after() {
        HostHealth::Suspected
    } else if unreached_since.is_some_and(|t| f.now - t >= cfg.confirm) {
        HostHealth::Failed
    } else {
        HostHealth::Partitioned
    };
    // Once failed, it stays failed until it is heard from again (a peer's stale view
    // does not bring it back).
    let health = if prev.health == HostHealth::Failed {
        HostHealth::Failed
    } else {
        health
    };
    HostHa {
        health,
        unreached_since,
    }
}

/// Whether a VM of a failed host may restart elsewhere, or why not.
pub fn restartable(vm: &Vm, shared_pools: &[String]) -> Result<(), String> {
    let Some(ha) = vm.spec.ha else {
        return Err("HA is off for it: it stays down until its host returns".into());
    };
    if !matches!(
        vm.state,
        VmState::Running | VmState::Paused | VmState::Starting
    ) {
        return Err(format!("it was {}, not running", vm.state));
    }
    if let Some(m) = vm.migration {
        return Err(format!(
            "it was migrating (migration {m}): settle that first (`ferry migration show {m}`)"
        ));
    }
    if ha.isolation_response == IsolationResponse::KeepRunning {
        return Err(
            "its isolation response is keep-running: its host may still run it, so it is \
             never started a second time"
                .into(),
        );
    }
    if let Some(d) = vm
        .spec
        .disks
        .iter()
        .find(|d| !shared_pools.contains(&d.pool))
    {
        return Err(format!(
            "its disk {}/{} is on a pool other hosts do not share",
            d.pool, d.image
        ));
    }
    Ok(())
}

/// Restart order: higher priority first, then by name.
pub fn restart_order(vms: &mut [Vm]) {
    vms.sort_by(|a, b| {
        let p = |v: &Vm| v.spec.ha.map(|h| h.priority).unwrap_or(i32::MIN);
        p(b).cmp(&p(a)).then(a.spec.name.cmp(&b.spec.name))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn views(
        at: DateTime<Utc>,
        list: &[(&str, &[&str])],
    ) -> HashMap<String, (DateTime<Utc>, PeerView)> {
        list.iter()
            .map(|(h, r)| {
                (
                    h.to_string(),
                    (
                        at,
                        PeerView {
                            reachable: r.iter().map(|s| s.to_string()).collect(),
                            unreachable: Vec::new(),
                        },
                    ),
                )
            })
            .collect()
    }

    fn run(
        cfg: &HaConfig,
        seconds: i64,
        peers: &[String],
        view_of: impl Fn(DateTime<Utc>) -> HashMap<String, (DateTime<Utc>, PeerView)>,
    ) -> Vec<HostHealth> {
        let t0 = Utc::now();
        let mut st = HostHa::default();
        let mut out = Vec::new();
        for s in 0..seconds {
            let now = t0 + Duration::seconds(s);
            let v = view_of(now);
            st = judge(
                st,
                &HostFacts {
                    name: "a",
                    last_seen: t0,
                    started: t0 - Duration::hours(1),
                    now,
                    peers,
                    views: &v,
                },
                cfg,
            );
            out.push(st.health);
        }
        out
    }

    #[test]
    fn a_dead_host_fails_at_the_lease_and_grace_a_partitioned_one_never() {
        let cfg = HaConfig::default();
        let peers = vec!["b".to_string(), "c".to_string()];
        // Dead: nobody reaches it.
        let dead = run(&cfg, 30, &peers, |now| {
            views(now, &[("b", &[]), ("c", &[])])
        });
        let first_failed = dead.iter().position(|h| *h == HostHealth::Failed).unwrap();
        assert_eq!(first_failed as i64, cfg.failover_after().num_seconds());
        assert_eq!(
            dead[cfg.suspect_after.num_seconds() as usize],
            HostHealth::Suspected
        );
        assert_eq!(dead[0], HostHealth::Alive);
        // Cut from the server only: b still reaches it (half of its peers).
        let cut = run(&cfg, 60, &peers, |now| {
            views(now, &[("b", &["a"]), ("c", &[])])
        });
        assert!(cut.iter().all(|h| *h != HostHealth::Failed), "{cut:?}");
        assert_eq!(cut[40], HostHealth::Partitioned);
        // Partitioned first, then isolated: failed only `confirm` after the peers lost it.
        let later = run(&cfg, 60, &peers, |now| {
            let lost = now - Utc::now() > Duration::seconds(30);
            if lost {
                views(now, &[("b", &[]), ("c", &[])])
            } else {
                views(now, &[("b", &["a"]), ("c", &["a"])])
            }
        });
        let f = later.iter().position(|h| *h == HostHealth::Failed).unwrap();
        assert!(
            f >= 30 + cfg.confirm.num_seconds() as usize - 1,
            "{later:?}"
        );
        // Stale views count as unreached.
        let stale_at = Utc::now() - Duration::minutes(5);
        let stale = run(&cfg, 30, &peers, |_| {
            views(stale_at, &[("b", &["a"]), ("c", &["a"])])
        });
        assert_eq!(stale[29], HostHealth::Failed);
    }

    #[test]
    fn a_restarted_server_gives_every_host_a_fresh_start() {
        let cfg = HaConfig::default();
        let t0 = Utc::now();
        let v = HashMap::new();
        let st = judge(
            HostHa::default(),
            &HostFacts {
                name: "a",
                last_seen: t0 - Duration::hours(2),
                started: t0 - Duration::seconds(2),
                now: t0,
                peers: &["b".to_string()],
                views: &v,
            },
            &cfg,
        );
        assert_eq!(st.health, HostHealth::Alive);
        assert!(cfg.validate().is_ok());
        assert!(HaConfig {
            fence_margin: Duration::seconds(20),
            ..cfg
        }
        .validate()
        .is_err());
    }

    proptest! {
        /// Never failed before the lease and grace have passed since it was last heard,
        /// nor while at least half of its peers (with fresh views) reach it.
        #[test]
        fn failure_needs_the_lease_out_and_most_peers_lost(
            silent in 0i64..60,
            peers in 0usize..6,
            reaching in proptest::collection::vec(any::<bool>(), 6),
            age in 0i64..20,
            prev_unreached in proptest::option::of(0i64..60),
        ) {
            let cfg = HaConfig::default();
            let now = Utc::now();
            let names: Vec<String> = (0..peers).map(|i| format!("p{i}")).collect();
            let v: HashMap<String, (DateTime<Utc>, PeerView)> = names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let reachable = if reaching[i] { vec!["a".to_string()] } else { vec![] };
                    (n.clone(), (now - Duration::seconds(age), PeerView { reachable, unreachable: vec![] }))
                })
                .collect();
            let prev = HostHa {
                health: HostHealth::Suspected,
                unreached_since: prev_unreached.map(|s| now - Duration::seconds(s)),
            };
            let st = judge(prev, &HostFacts {
                name: "a",
                last_seen: now - Duration::seconds(silent),
                started: now - Duration::hours(1),
                now,
                peers: &names,
                views: &v,
            }, &cfg);
            if st.health == HostHealth::Failed {
                prop_assert!(Duration::seconds(silent) >= cfg.failover_after());
                let fresh_reach = if age < cfg.view_fresh.num_seconds() {
                    (0..peers).filter(|i| reaching[*i]).count()
                } else { 0 };
                prop_assert!(is_isolated(fresh_reach, peers));
            }
        }
    }
}
