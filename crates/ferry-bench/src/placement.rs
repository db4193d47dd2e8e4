//! `ferry bench placement`: the pure placement function on a synthetic cluster (1,000
//! hosts, 20,000 VMs, 1,000 rules by default): placing one new VM, and planning the
//! evacuation of the busiest host. Prints the figures, writes bench/results/placement.json.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use ferry_api::{Rule, RuleKind, Strength};
use ferry_server::admission::Demand;
use ferry_server::balance::{self, BalanceConfig, HostLoad, VmLoad};
use ferry_server::placement::{place, plan_evacuation, Ask, HostFacts, Move};

use crate::error::{BenchError, BenchResult};
use crate::results::{machine_json, write_result};

/// The options of `ferry bench placement`; the binary gives them from its flags.
#[derive(Debug, Clone)]
pub struct PlacementConfig {
    /// Hosts in the synthetic cluster.
    pub hosts: usize,
    /// VMs in it.
    pub vms: usize,
    /// Placement rules in it.
    pub rules: usize,
    /// Placement decisions to time.
    pub placements: usize,
    /// Seed of the synthetic inventory.
    pub seed: u64,
    /// Where to write the result file.
    pub out: PathBuf,
}

/// SplitMix64: a seeded, reproducible stream for the synthetic inventory (not crypto).
struct Seq(u64);

impl Seq {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(i).copied().unwrap_or(f64::NAN)
}

pub async fn placement(a: PlacementConfig) -> BenchResult {
    if a.hosts == 0 || a.vms == 0 {
        return Err(BenchError::refused("--hosts and --vms must be at least 1"));
    }
    let mut rng = Seq(a.seed);
    let vm_names: Vec<String> = (0..a.vms).map(|i| format!("vm{i}")).collect();
    let host_names: Vec<String> = (0..a.hosts).map(|i| format!("host{i}")).collect();
    let mut hosts: Vec<HostFacts> = host_names
        .iter()
        .map(|n| HostFacts {
            name: n.clone(),
            capacity: Demand {
                memory_mib: 512 * 1024,
                vcpus: 256,
            },
            used: Demand::default(),
            link_mib_s: Some(100.0 + rng.below(1100) as f64),
            unavailable: (rng.below(50) == 0).then(|| "in maintenance".to_string()),
        })
        .collect();
    let mut located: HashMap<&str, &str> = HashMap::new();
    let mut on_host: Vec<Vec<Move>> = vec![Vec::new(); hosts.len()];
    for name in &vm_names {
        let demand = Demand {
            memory_mib: 1024 * (1 + rng.below(16)),
            vcpus: 1 + rng.below(8),
        };
        let h = rng.below(hosts.len() as u64) as usize;
        hosts[h].used = hosts[h].used + demand;
        located.insert(name.as_str(), host_names[h].as_str());
        on_host[h].push(Move {
            vm: name.clone(),
            demand,
        });
    }
    let pick = |rng: &mut Seq, n: usize| -> Vec<String> {
        (0..n)
            .map(|_| vm_names[rng.below(vm_names.len() as u64) as usize].clone())
            .collect()
    };
    let rules: Vec<Rule> = (0..a.rules)
        .map(|i| {
            let strength = if rng.below(2) == 0 {
                Strength::Must
            } else {
                Strength::Should
            };
            let kind = match rng.below(3) {
                0 => {
                    let n = 2 + rng.below(4) as usize;
                    RuleKind::AntiAffinity {
                        vms: pick(&mut rng, n),
                    }
                }
                1 => RuleKind::Affinity {
                    vms: pick(&mut rng, 2),
                },
                _ => RuleKind::VmHost {
                    vms: {
                        let n = 1 + rng.below(5) as usize;
                        pick(&mut rng, n)
                    },
                    hosts: (0..1 + rng.below(20))
                        .map(|_| host_names[rng.below(host_names.len() as u64) as usize].clone())
                        .collect(),
                    on: rng.below(2) == 0,
                },
            };
            Rule {
                name: format!("rule{i}"),
                strength,
                kind,
            }
        })
        .collect();

    // Placing one new VM (named by a rule now and then, so rules are in play).
    let mut ms = Vec::new();
    let mut placed = 0;
    for i in 0..a.placements {
        let vm = if i % 2 == 0 {
            vm_names[rng.below(vm_names.len() as u64) as usize].clone()
        } else {
            format!("new{i}")
        };
        let ask = Ask {
            vm: &vm,
            demand: Demand {
                memory_mib: 4096,
                vcpus: 2,
            },
            from: located.get(vm.as_str()).copied(),
        };
        let t0 = Instant::now();
        let r = place(&ask, &hosts, &located, &rules);
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
        placed += usize::from(r.chosen.is_some());
    }
    ms.sort_by(f64::total_cmp);

    // Planning the evacuation of the busiest host.
    let busiest = (0..hosts.len())
        .max_by_key(|&i| on_host[i].len())
        .unwrap_or(0);
    let t0 = Instant::now();
    let plan = plan_evacuation(
        &host_names[busiest],
        &on_host[busiest],
        &hosts,
        &located,
        &rules,
    );
    let plan_ms = t0.elapsed().as_secs_f64() * 1e3;
    let unplaced = plan.iter().filter(|r| r.chosen.is_none()).count();

    // A balancing plan over the whole inventory, with synthetic measured load (hot hosts
    // every tenth host, so there is something to even out).
    let mut loads: Vec<HostLoad> = hosts
        .iter()
        .map(|h| HostLoad {
            name: h.name.clone(),
            capacity: h.capacity,
            committed: h.used,
            cpus: 64.0,
            cpu_used: 0.0,
            memory_used_mib: 0,
            link_bytes_s: h.link_mib_s.map(|m| (m as u64) << 20),
            unavailable: h.unavailable.clone(),
        })
        .collect();
    let mut vm_loads = Vec::with_capacity(vm_names.len());
    for (hi, moves) in on_host.iter().enumerate() {
        for mv in moves {
            let hot = if hi % 10 == 0 { 8.0 } else { 1.0 };
            let cpu = hot * (rng.below(80) as f64 / 100.0) * mv.demand.vcpus as f64 / 4.0;
            let mem = mv.demand.memory_mib * (30 + rng.below(70)) / 100;
            loads[hi].cpu_used += cpu;
            loads[hi].memory_used_mib += mem;
            vm_loads.push(VmLoad {
                name: mv.vm.clone(),
                host: host_names[hi].clone(),
                demand: mv.demand,
                cpu_used: cpu,
                memory_mib: mem,
                dirty_bytes_s: rng.below(64) << 20,
                moved_at: None,
                movable: true,
            });
        }
    }
    let cfg = BalanceConfig {
        level: 3,
        min_stay: chrono::Duration::minutes(30),
        max_moves: 20,
        now: chrono::Utc::now(),
        default_link_bytes_s: 125_000_000,
    };
    let t0 = Instant::now();
    let bplan = balance::plan(&loads, &vm_loads, &rules, &cfg);
    let balance_ms = t0.elapsed().as_secs_f64() * 1e3;

    println!(
        "inventory: {} hosts, {} VMs, {} rules (seed {})",
        a.hosts, a.vms, a.rules, a.seed
    );
    println!(
        "placement: {} decisions, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({placed} placed)",
        ms.len(),
        percentile(&ms, 0.5),
        percentile(&ms, 0.99),
        ms.last().copied().unwrap_or(0.0)
    );
    println!(
        "evacuation plan of {} ({} VMs): {:.1} ms, {} could not be placed",
        host_names[busiest],
        plan.len(),
        plan_ms,
        unplaced
    );
    println!(
        "balancing plan (level 3, at most 20 moves): {:.1} ms, {} moves, imbalance {:.3} -> {:.3}",
        balance_ms,
        bplan.moves.len(),
        bplan.imbalance_before,
        bplan.imbalance_after
    );
    let doc = serde_json::json!({
        "bench": "placement",
        "when": chrono::Utc::now().to_rfc3339(),
        "machine": machine_json("n/a"),
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "hosts": a.hosts, "vms": a.vms, "rules": a.rules, "seed": a.seed,
        "placement_ms": {
            "samples": ms.len(),
            "p50": percentile(&ms, 0.5),
            "p99": percentile(&ms, 0.99),
            "max": ms.last().copied().unwrap_or(0.0),
        },
        "evacuation_plan": {
            "host": host_names[busiest],
            "vms": plan.len(),
            "ms": plan_ms,
            "unplaced": unplaced,
        },
        "balancing_plan": {
            "ms": balance_ms,
            "moves": bplan.moves.len(),
            "imbalance_before": bplan.imbalance_before,
            "imbalance_after": bplan.imbalance_after,
        },
        "goals": {"placement_ms": 10, "plan_ms": 1000, "balancing_plan_ms": 1000},
    });
    let file = write_result(&a.out, "placement", &doc)?;
    eprintln!("bench: wrote {}", file.display());
    Ok(())
}
