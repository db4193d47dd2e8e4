//! Load balancing, DRS-like: how unevenly loaded is the cluster, and which migrations
//! would even it out for less than they cost? A pure function of the hosts' and VMs'
//! measured load, the rules and the settings.
//!
//! ```text
//!   host load  = max(CPU used / CPUs, memory used / memory offered)      (0..1+)
//!   imbalance  = standard deviation of the host loads
//!   level 1..5 → act only above a threshold (0.20, 0.15, 0.10, 0.05, 0.02)
//!                and only for moves that gain at least a minimum per move (the drop
//!                in imbalance times the host count: one move's effect shrinks as 1/N)
//!   repeat (at most max_moves):
//!     candidates: VMs on the most loaded hosts (not moved within the minimum stay, not
//!                 moved by this plan) × the least loaded hosts that placement admits
//!                 (capacity, no `must` rule broken, no new `should` rule broken)
//!     pick the best N × gain − cost weight × cost (cost: seconds of migration, from memory,
//!     dirty rate and the link); stop when nothing gains enough
//! ```
//!
//! Every move strictly lowers the imbalance, so a plan never makes it worse (property
//! test); a VM moves at most once per plan and never within `min_stay` of its last move
//! (no back-and-forth between runs either).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use ferry_api::Rule;

use crate::admission::Demand;
use crate::placement::{judge_one, Ask, HostFacts};

/// One host's capacity and measured load.
#[derive(Debug, Clone, PartialEq)]
pub struct HostLoad {
    pub name: String,
    /// What admission offers (memory after the reserve, vCPUs after overcommit).
    pub capacity: Demand,
    /// What is committed there (as admission counts it).
    pub committed: Demand,
    /// Host CPUs (the CPU load's denominator).
    pub cpus: f64,
    /// CPU in use, in CPUs (e.g. 1.5 of 4).
    pub cpu_used: f64,
    /// Memory in use, MiB.
    pub memory_used_mib: u64,
    /// Its migration link, bytes/s (None: unknown, the default link is assumed).
    pub link_bytes_s: Option<u64>,
    /// Why it takes no VMs (disconnected, maintenance): it may still give some away.
    pub unavailable: Option<String>,
}

/// One VM's measured load.
#[derive(Debug, Clone, PartialEq)]
pub struct VmLoad {
    pub name: String,
    pub host: String,
    pub demand: Demand,
    /// CPU in use, in CPUs.
    pub cpu_used: f64,
    /// Memory it holds on its host, MiB.
    pub memory_mib: u64,
    pub dirty_bytes_s: u64,
    /// When it last moved (migrations, evacuations, balancing).
    pub moved_at: Option<DateTime<Utc>>,
    /// Only running VMs move.
    pub movable: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BalanceConfig {
    /// 1: only a large imbalance, few moves; 5: aggressive.
    pub level: u8,
    /// A VM is not moved again within this long of its last move.
    pub min_stay: chrono::Duration,
    pub max_moves: usize,
    pub now: DateTime<Utc>,
    /// Assumed where a link is unknown, bytes/s.
    pub default_link_bytes_s: u64,
}

impl BalanceConfig {
    /// Imbalance under which nothing is done.
    pub fn threshold(&self) -> f64 {
        match self.level {
            0 | 1 => 0.20,
            2 => 0.15,
            3 => 0.10,
            4 => 0.05,
            _ => 0.02,
        }
    }
    /// Least gain a move must bring before its cost: the drop in imbalance times the
    /// number of hosts (one move's effect on a standard deviation shrinks as 1/N).
    pub fn min_gain(&self) -> f64 {
        match self.level {
            0 | 1 => 0.15,
            2 => 0.10,
            3 => 0.06,
            4 => 0.03,
            _ => 0.015,
        }
    }
    /// What one second of migration costs, in the same units as [`Self::min_gain`]
    /// (lower levels weigh cost more).
    pub fn cost_weight(&self) -> f64 {
        match self.level {
            0 | 1 => 0.006,
            2 => 0.003,
            3 => 0.0015,
            4 => 0.00075,
            _ => 0.0003,
        }
    }
}

/// One recommended migration.
#[derive(Debug, Clone, PartialEq)]
pub struct BalanceMove {
    pub vm: String,
    pub from: String,
    pub to: String,
    /// Drop in imbalance.
    pub gain: f64,
    /// Estimated seconds of migration (memory and dirty rate over the link).
    pub cost_s: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BalancePlan {
    pub imbalance_before: f64,
    pub imbalance_after: f64,
    /// Each host's load before and after the plan.
    pub loads_before: Vec<(String, f64)>,
    pub loads_after: Vec<(String, f64)>,
    pub moves: Vec<BalanceMove>,
    /// Why the plan stops where it does.
    pub reason: String,
}

/// How many of the most and least loaded hosts are considered per step (keeps a step's
/// cost bounded on large clusters; the others get their turn as loads change).
const HOT_HOSTS: usize = 3;
const COLD_HOSTS: usize = 12;

fn host_load(h: &HostLoad, cpu: f64, mem: u64) -> f64 {
    let c = if h.cpus > 0.0 { cpu / h.cpus } else { 0.0 };
    let m = if h.capacity.memory_mib > 0 {
        mem as f64 / h.capacity.memory_mib as f64
    } else {
        0.0
    };
    c.max(m)
}

fn std_dev(loads: &[f64]) -> f64 {
    if loads.is_empty() {
        return 0.0;
    }
    let n = loads.len() as f64;
    let mean = loads.iter().sum::<f64>() / n;
    (loads.iter().map(|l| (l - mean) * (l - mean)).sum::<f64>() / n).sqrt()
}

/// Seconds a migration of `vm` over `link` takes (pre-copy's series; a VM that dirties
/// faster than the link gets a large cost rather than infinity).
pub fn move_cost_s(vm: &VmLoad, link_bytes_s: u64) -> f64 {
    let link = link_bytes_s.max(1) as f64;
    let bytes = (vm.memory_mib << 20) as f64;
    let ratio = (vm.dirty_bytes_s as f64 / link).min(0.95);
    bytes / link / (1.0 - ratio) + 3.0
}

/// The plan (see the module doc).
pub fn plan(
    hosts: &[HostLoad],
    vms: &[VmLoad],
    rules: &[Rule],
    cfg: &BalanceConfig,
) -> BalancePlan {
    let mut cpu: Vec<f64> = hosts.iter().map(|h| h.cpu_used).collect();
    let mut mem: Vec<u64> = hosts.iter().map(|h| h.memory_used_mib).collect();
    let mut committed: Vec<Demand> = hosts.iter().map(|h| h.committed).collect();
    let loads = |cpu: &[f64], mem: &[u64]| -> Vec<f64> {
        hosts
            .iter()
            .enumerate()
            .map(|(i, h)| host_load(h, cpu[i], mem[i]))
            .collect()
    };
    let mut located: HashMap<&str, &str> = vms
        .iter()
        .map(|v| (v.name.as_str(), v.host.as_str()))
        .collect();
    let loads_before = loads(&cpu, &mem);
    let before = std_dev(&loads_before);
    let mut current = before;
    // The standard deviation from running sums, so a candidate costs O(1) to judge.
    let n = hosts.len().max(1) as f64;
    let mut now_loads = loads_before.clone();
    let sigma = |sum: f64, sumsq: f64| (sumsq / n - (sum / n) * (sum / n)).max(0.0).sqrt();
    // Only the rules that name a VM bear on where it may go.
    let mut rules_of: HashMap<&str, Vec<Rule>> = HashMap::new();
    for r in rules {
        for vm in r.vms() {
            rules_of.entry(vm.as_str()).or_default().push(r.clone());
        }
    }
    let mut on_host: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, v) in vms.iter().enumerate() {
        on_host.entry(v.host.as_str()).or_default().push(i);
    }
    let mut moved: HashSet<&str> = HashSet::new();
    let mut moves = Vec::new();
    let mut reason = String::new();
    while moves.len() < cfg.max_moves {
        if current <= cfg.threshold() {
            reason = format!(
                "imbalance {current:.3} is at or under level {}'s threshold {:.2}",
                cfg.level,
                cfg.threshold()
            );
            break;
        }
        let sum: f64 = now_loads.iter().sum();
        let sumsq: f64 = now_loads.iter().map(|l| l * l).sum();
        let mut order: Vec<usize> = (0..hosts.len()).collect();
        order.sort_by(|a, b| now_loads[*b].total_cmp(&now_loads[*a]).then(a.cmp(b)));
        let hot: Vec<usize> = order.iter().copied().take(HOT_HOSTS).collect();
        let cold: Vec<usize> = order
            .iter()
            .rev()
            .copied()
            .filter(|i| hosts[*i].unavailable.is_none())
            .take(COLD_HOSTS)
            .collect();
        // (score, VM, from, to, gain, cost) of the best move so far.
        let mut best: Option<(f64, usize, usize, usize, f64, f64)> = None;
        for &from in &hot {
            let here = on_host
                .get(hosts[from].name.as_str())
                .map(|v| v.as_slice())
                .unwrap_or(&[]);
            for &vi in here {
                let vm = &vms[vi];
                if located.get(vm.name.as_str()) != Some(&hosts[from].name.as_str())
                    || !vm.movable
                    || moved.contains(vm.name.as_str())
                    || vm
                        .moved_at
                        .is_some_and(|t| cfg.now.signed_duration_since(t) < cfg.min_stay)
                {
                    continue;
                }
                for &to in &cold {
                    if to == from {
                        continue;
                    }
                    let facts = HostFacts {
                        name: hosts[to].name.clone(),
                        capacity: hosts[to].capacity,
                        used: committed[to],
                        link_mib_s: None,
                        unavailable: hosts[to].unavailable.clone(),
                    };
                    let verdict = judge_one(
                        &Ask {
                            vm: &vm.name,
                            demand: vm.demand,
                            from: Some(&hosts[from].name),
                        },
                        &facts,
                        &located,
                        rules_of
                            .get(vm.name.as_str())
                            .map(|r| r.as_slice())
                            .unwrap_or(&[]),
                    );
                    if verdict.score.is_none() || !verdict.reasons.is_empty() {
                        continue; // refused, or it would break a should rule
                    }
                    let lf = host_load(
                        &hosts[from],
                        cpu[from] - vm.cpu_used,
                        mem[from].saturating_sub(vm.memory_mib),
                    );
                    let lt = host_load(&hosts[to], cpu[to] + vm.cpu_used, mem[to] + vm.memory_mib);
                    let (of, ot) = (now_loads[from], now_loads[to]);
                    let after = sigma(
                        sum - of - ot + lf + lt,
                        sumsq - of * of - ot * ot + lf * lf + lt * lt,
                    );
                    let gain = current - after;
                    let link = [hosts[from].link_bytes_s, hosts[to].link_bytes_s]
                        .into_iter()
                        .flatten()
                        .min()
                        .unwrap_or(cfg.default_link_bytes_s);
                    let cost = move_cost_s(vm, link);
                    // One move changes the standard deviation by about 1/N of what it
                    // does in a small cluster: the gain is judged per host (times N),
                    // so levels mean the same at 3 hosts and at 1,000.
                    let scaled = gain * hosts.len() as f64;
                    let score = scaled - cfg.cost_weight() * cost;
                    if scaled < cfg.min_gain() || score <= 0.0 {
                        continue;
                    }
                    if best.is_none_or(|b| score > b.0) {
                        best = Some((score, vi, from, to, gain, cost));
                    }
                }
            }
        }
        let Some((_, vi, from, to, gain, cost)) = best else {
            reason = format!(
                "no move gains at least {:.3} (times the host count) more than it costs \
                 (imbalance {current:.3})",
                cfg.min_gain()
            );
            break;
        };
        let vm = &vms[vi];
        cpu[from] -= vm.cpu_used;
        cpu[to] += vm.cpu_used;
        mem[from] = mem[from].saturating_sub(vm.memory_mib);
        mem[to] += vm.memory_mib;
        committed[from] = Demand {
            memory_mib: committed[from]
                .memory_mib
                .saturating_sub(vm.demand.memory_mib),
            vcpus: committed[from].vcpus.saturating_sub(vm.demand.vcpus),
        };
        committed[to] = committed[to] + vm.demand;
        located.insert(vm.name.as_str(), hosts[to].name.as_str());
        moved.insert(vm.name.as_str());
        now_loads[from] = host_load(&hosts[from], cpu[from], mem[from]);
        now_loads[to] = host_load(&hosts[to], cpu[to], mem[to]);
        current = std_dev(&now_loads);
        moves.push(BalanceMove {
            vm: vm.name.clone(),
            from: hosts[from].name.clone(),
            to: hosts[to].name.clone(),
            gain,
            cost_s: cost,
        });
    }
    if reason.is_empty() {
        reason = format!("stopped at {} moves (the most per plan)", cfg.max_moves);
    }
    let loads_after = loads(&cpu, &mem);
    BalancePlan {
        imbalance_before: before,
        imbalance_after: std_dev(&loads_after),
        loads_before: hosts
            .iter()
            .map(|h| h.name.clone())
            .zip(loads_before)
            .collect(),
        loads_after: hosts
            .iter()
            .map(|h| h.name.clone())
            .zip(loads_after)
            .collect(),
        moves,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::{RuleKind, Strength};
    use proptest::prelude::*;

    fn host(name: &str, cpu_used: f64, mem_used: u64) -> HostLoad {
        HostLoad {
            name: name.into(),
            capacity: Demand {
                memory_mib: 16_384,
                vcpus: 32,
            },
            committed: Demand {
                memory_mib: mem_used,
                vcpus: 0,
            },
            cpus: 8.0,
            cpu_used,
            memory_used_mib: mem_used,
            link_bytes_s: Some(125_000_000),
            unavailable: None,
        }
    }

    fn vm(name: &str, host: &str, cpu: f64, mem: u64) -> VmLoad {
        VmLoad {
            name: name.into(),
            host: host.into(),
            demand: Demand {
                memory_mib: mem,
                vcpus: 1,
            },
            cpu_used: cpu,
            memory_mib: mem,
            dirty_bytes_s: 0,
            moved_at: None,
            movable: true,
        }
    }

    fn cfg(level: u8) -> BalanceConfig {
        BalanceConfig {
            level,
            min_stay: chrono::Duration::minutes(10),
            max_moves: 10,
            now: Utc::now(),
            default_link_bytes_s: 125_000_000,
        }
    }

    /// Three hosts, every VM on `a`: hosts' loads follow from the VMs.
    fn loaded(vms: &[VmLoad]) -> Vec<HostLoad> {
        ["a", "b", "c"]
            .iter()
            .map(|h| {
                let on: Vec<&VmLoad> = vms.iter().filter(|v| v.host == *h).collect();
                let mut x = host(
                    h,
                    on.iter().map(|v| v.cpu_used).sum(),
                    on.iter().map(|v| v.memory_mib).sum(),
                );
                x.committed.vcpus = on.len() as u64;
                x
            })
            .collect()
    }

    #[test]
    fn an_overloaded_host_gives_vms_to_the_idle_ones() {
        let vms: Vec<VmLoad> = (0..6)
            .map(|i| vm(&format!("v{i}"), "a", 1.0, 2048))
            .collect();
        let p = plan(&loaded(&vms), &vms, &[], &cfg(3));
        assert!(p.imbalance_after < p.imbalance_before);
        assert!(p.moves.len() >= 2, "{p:?}");
        assert!(p.moves.iter().all(|m| m.from == "a" && m.to != "a"));
        // Level 1 acts only on a large imbalance and with fewer moves.
        let gentle = plan(&loaded(&vms), &vms, &[], &cfg(1));
        assert!(gentle.moves.len() <= p.moves.len());
    }

    #[test]
    fn a_balanced_cluster_is_left_alone_and_recent_moves_stay() {
        let vms = vec![
            vm("x", "a", 2.0, 4096),
            vm("y", "b", 2.0, 4096),
            vm("z", "c", 2.0, 4096),
        ];
        assert!(plan(&loaded(&vms), &vms, &[], &cfg(5)).moves.is_empty());
        let mut vms: Vec<VmLoad> = (0..6)
            .map(|i| vm(&format!("v{i}"), "a", 1.0, 2048))
            .collect();
        for v in &mut vms {
            v.moved_at = Some(Utc::now() - chrono::Duration::minutes(1));
        }
        let p = plan(&loaded(&vms), &vms, &[], &cfg(5));
        assert!(p.moves.is_empty(), "moved within the minimum stay: {p:?}");
    }

    #[test]
    fn must_rules_hold() {
        let vms: Vec<VmLoad> = (0..6)
            .map(|i| vm(&format!("v{i}"), "a", 1.0, 2048))
            .collect();
        let pin = Rule {
            name: "stay".into(),
            strength: Strength::Must,
            kind: RuleKind::VmHost {
                vms: (0..6).map(|i| format!("v{i}")).collect(),
                hosts: vec!["a".into()],
                on: true,
            },
        };
        let p = plan(&loaded(&vms), &vms, &[pin], &cfg(5));
        assert!(p.moves.is_empty(), "{p:?}");
    }

    fn any_cluster() -> impl Strategy<Value = Vec<VmLoad>> {
        prop::collection::vec((0usize..3, 0.0f64..3.0, 256u64..4096, any::<bool>()), 0..18)
            .prop_map(|v| {
                v.into_iter()
                    .enumerate()
                    .map(|(i, (h, cpu, mem, recent))| {
                        let mut x = vm(&format!("v{i}"), ["a", "b", "c"][h], cpu, mem);
                        if recent {
                            x.moved_at = Some(Utc::now() - chrono::Duration::minutes(2));
                        }
                        x
                    })
                    .collect()
            })
    }

    proptest! {
        /// Whatever the loads: a plan never raises the imbalance (each move lowers it),
        /// never breaks a `must` anti-affinity rule, never moves a VM twice or within the
        /// minimum stay, and never overfills a host.
        #[test]
        fn plans_keep_their_promises(vms in any_cluster(), level in 1u8..=5, pair in (0usize..18, 0usize..18)) {
            let mut rules = Vec::new();
            if pair.0 < vms.len() && pair.1 < vms.len() && pair.0 != pair.1 {
                rules.push(Rule {
                    name: "apart".into(),
                    strength: Strength::Must,
                    kind: RuleKind::AntiAffinity { vms: vec![vms[pair.0].name.clone(), vms[pair.1].name.clone()] },
                });
            }
            let hosts = loaded(&vms);
            let p = plan(&hosts, &vms, &rules, &cfg(level));
            prop_assert!(p.imbalance_after <= p.imbalance_before + 1e-9);
            let mut seen = HashSet::new();
            let mut at: HashMap<String, String> = vms.iter().map(|v| (v.name.clone(), v.host.clone())).collect();
            for m in &p.moves {
                prop_assert!(m.gain > 0.0);
                prop_assert!(seen.insert(m.vm.clone()), "moved twice: {}", m.vm);
                let v = vms.iter().find(|v| v.name == m.vm).unwrap();
                prop_assert!(v.moved_at.is_none(), "moved within the minimum stay");
                at.insert(m.vm.clone(), m.to.clone());
            }
            if let Some(r) = rules.first() {
                // A rule already broken before the plan is not the plan's doing; a plan
                // never puts the two together.
                let names = r.vms();
                if vms[pair.0].host != vms[pair.1].host {
                    prop_assert_ne!(at.get(&names[0]), at.get(&names[1]));
                }
            }
            for h in &hosts {
                let mem: u64 = vms.iter().filter(|v| at[&v.name] == h.name).map(|v| v.memory_mib).sum();
                let moved_in = p.moves.iter().any(|m| m.to == h.name);
                if moved_in {
                    prop_assert!(mem <= h.capacity.memory_mib);
                }
            }
        }
    }
}
