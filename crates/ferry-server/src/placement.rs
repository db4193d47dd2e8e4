//! Placement: which host should a VM go to? A pure function of the hosts (what each has
//! left, whether it may take VMs at all), where the other VMs are, and the rules.
//!
//! ```text
//!   every host ──eligible?──▶ connected, not in maintenance, no failed check, room left
//!        │                    no `must` rule broken
//!        └──score──▶ 0.5 x memory left after the VM + 0.3 x vCPUs left (both 0..1)
//!                    + 0.2 x the link to it (relative to the best link) - 1 per `should` broken
//!   best score wins (ties: the name), the runner-up is reported
//! ```
//!
//! The same function serves a create without `--host`, a migration without `--to` (the
//! VM's own host is excluded), and later evacuation plans (which call it VM after VM,
//! counting what the plan already sends to each host).

use std::collections::HashMap;

use ferry_api::{CandidateReport, PlacementReport, Rule, RuleKind, Strength};

use crate::admission::Demand;

/// One host as placement sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostFacts {
    pub name: String,
    pub capacity: Demand,
    /// Committed already (VMs on it and arriving).
    pub used: Demand,
    /// Measured or configured migration link to it, MiB/s (None: unknown).
    pub link_mib_s: Option<f64>,
    /// Why the host takes no VMs at all (disconnected, maintenance, a failed check).
    pub unavailable: Option<String>,
}

/// The VM to place.
#[derive(Debug, Clone, PartialEq)]
pub struct Ask<'a> {
    pub vm: &'a str,
    pub demand: Demand,
    /// The host it runs on now (a migration): never chosen.
    pub from: Option<&'a str>,
}

/// Places `ask` given `hosts`, where every other VM is (`vm -> host`), and `rules`.
pub fn place(
    ask: &Ask<'_>,
    hosts: &[HostFacts],
    located: &HashMap<&str, &str>,
    rules: &[Rule],
) -> PlacementReport {
    let mine: Vec<&Rule> = rules
        .iter()
        .filter(|r| r.vms().iter().any(|v| v == ask.vm))
        .collect();
    let best_link = hosts
        .iter()
        .filter_map(|h| h.link_mib_s)
        .fold(0.0_f64, f64::max);
    let mut candidates: Vec<CandidateReport> = hosts
        .iter()
        .map(|h| judge(ask, h, located, &mine, best_link))
        .collect();
    // Best first; hosts that cannot take it last; names break ties (deterministic).
    candidates.sort_by(|a, b| {
        b.score
            .unwrap_or(f64::NEG_INFINITY)
            .total_cmp(&a.score.unwrap_or(f64::NEG_INFINITY))
            .then_with(|| a.host.cmp(&b.host))
    });
    let mut eligible = candidates.iter().filter(|c| c.score.is_some());
    let chosen = eligible.next().map(|c| c.host.clone());
    let runner_up = eligible.next().map(|c| c.host.clone());
    PlacementReport {
        vm: ask.vm.to_string(),
        chosen,
        runner_up,
        candidates,
    }
}

/// How one host judges `ask`: refused (no score, the reasons) or scored (with any
/// `should` rule it would break). For callers that consider a single host (the balancer).
pub fn judge_one(
    ask: &Ask<'_>,
    h: &HostFacts,
    located: &HashMap<&str, &str>,
    rules: &[Rule],
) -> CandidateReport {
    let mine: Vec<&Rule> = rules
        .iter()
        .filter(|r| r.vms().iter().any(|v| v == ask.vm))
        .collect();
    judge(ask, h, located, &mine, 0.0)
}

fn judge(
    ask: &Ask<'_>,
    h: &HostFacts,
    located: &HashMap<&str, &str>,
    rules: &[&Rule],
    best_link: f64,
) -> CandidateReport {
    let mut refusals = Vec::new();
    let mut broken_should = Vec::new();
    if ask.from == Some(h.name.as_str()) {
        refusals.push("the VM runs here now".to_string());
    }
    if let Some(why) = &h.unavailable {
        refusals.push(why.clone());
    }
    let free_mem = h.capacity.memory_mib.saturating_sub(h.used.memory_mib);
    let free_cpu = h.capacity.vcpus.saturating_sub(h.used.vcpus);
    if ask.demand.memory_mib > free_mem {
        refusals.push(format!(
            "{} MiB needed, {free_mem} MiB left",
            ask.demand.memory_mib
        ));
    }
    if ask.demand.vcpus > free_cpu {
        refusals.push(format!(
            "{} vCPUs needed, {free_cpu} left",
            ask.demand.vcpus
        ));
    }
    for r in rules {
        if let Some(why) = breaks(r, ask.vm, &h.name, located) {
            match r.strength {
                Strength::Must => refusals.push(format!("must rule {}: {why}", r.name)),
                Strength::Should => broken_should.push(format!("should rule {}: {why}", r.name)),
            }
        }
    }
    if !refusals.is_empty() {
        return CandidateReport {
            host: h.name.clone(),
            score: None,
            reasons: refusals,
        };
    }
    let ratio = |left: u64, cap: u64| {
        if cap == 0 {
            0.0
        } else {
            left as f64 / cap as f64
        }
    };
    let mem_left = ratio(free_mem - ask.demand.memory_mib, h.capacity.memory_mib);
    let cpu_left = ratio(free_cpu - ask.demand.vcpus, h.capacity.vcpus);
    let link = match (h.link_mib_s, best_link > 0.0) {
        (Some(l), true) => l / best_link,
        _ => 0.5,
    };
    let score = 0.5 * mem_left + 0.3 * cpu_left + 0.2 * link - broken_should.len() as f64;
    CandidateReport {
        host: h.name.clone(),
        score: Some(score),
        reasons: broken_should,
    }
}

/// One VM of an evacuation plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Move {
    pub vm: String,
    pub demand: Demand,
}

/// Plans where each of `moves` (the VMs on `from`) goes, one after another, counting what
/// the plan already sends to each host (memory, vCPUs, and where rules see the VM). A VM
/// no host can take gets `None` with the decision that says why; the others still move.
pub fn plan_evacuation(
    from: &str,
    moves: &[Move],
    hosts: &[HostFacts],
    located: &HashMap<&str, &str>,
    rules: &[Rule],
) -> Vec<PlacementReport> {
    let mut state: Vec<HostFacts> = hosts.to_vec();
    let mut located: HashMap<&str, &str> = located.clone();
    let mut out = Vec::with_capacity(moves.len());
    for m in moves {
        let report = place(
            &Ask {
                vm: &m.vm,
                demand: m.demand,
                from: Some(from),
            },
            &state,
            &located,
            rules,
        );
        if let Some(to) = &report.chosen {
            if let Some(i) = hosts.iter().position(|h| &h.name == to) {
                state[i].used = state[i].used + m.demand;
                located.insert(m.vm.as_str(), hosts[i].name.as_str());
            }
        }
        out.push(report);
    }
    out
}

/// Whether putting `vm` on `host` breaks `rule`, and how.
fn breaks(rule: &Rule, vm: &str, host: &str, located: &HashMap<&str, &str>) -> Option<String> {
    let others = || {
        rule.vms()
            .iter()
            .filter(move |v| v.as_str() != vm)
            .filter_map(|v| located.get(v.as_str()).map(|h| (v.as_str(), *h)))
    };
    match &rule.kind {
        RuleKind::Affinity { .. } => {
            let elsewhere: Vec<&str> = others()
                .filter(|(_, h)| *h != host)
                .map(|(v, _)| v)
                .collect();
            (!elsewhere.is_empty()).then(|| {
                format!(
                    "keeps it with {}, which run elsewhere",
                    elsewhere.join(", ")
                )
            })
        }
        RuleKind::AntiAffinity { .. } => {
            let here: Vec<&str> = others()
                .filter(|(_, h)| *h == host)
                .map(|(v, _)| v)
                .collect();
            (!here.is_empty()).then(|| format!("keeps it apart from {}, here", here.join(", ")))
        }
        RuleKind::VmHost { hosts, on, .. } => {
            let listed = hosts.iter().any(|h| h == host);
            match (on, listed) {
                (true, false) => Some(format!("runs it only on {}", hosts.join(", "))),
                (false, true) => Some("never runs it here".to_string()),
                _ => None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn host(name: &str, mem: u64, used: u64) -> HostFacts {
        HostFacts {
            name: name.into(),
            capacity: Demand {
                memory_mib: mem,
                vcpus: 16,
            },
            used: Demand {
                memory_mib: used,
                vcpus: 0,
            },
            link_mib_s: None,
            unavailable: None,
        }
    }

    fn ask(vm: &str) -> Ask<'_> {
        Ask {
            vm,
            demand: Demand {
                memory_mib: 512,
                vcpus: 1,
            },
            from: None,
        }
    }

    fn rule(name: &str, strength: Strength, kind: RuleKind) -> Rule {
        Rule {
            name: name.into(),
            strength,
            kind,
        }
    }

    #[test]
    fn the_host_with_the_most_room_wins_and_the_others_say_why() {
        let hosts = [
            host("a", 4096, 3000),
            host("b", 4096, 0),
            host("c", 1024, 800),
        ];
        let r = place(&ask("web"), &hosts, &HashMap::new(), &[]);
        assert_eq!(r.chosen.as_deref(), Some("b"));
        assert_eq!(r.runner_up.as_deref(), Some("a"));
        let c = r.candidates.iter().find(|c| c.host == "c").unwrap();
        assert_eq!(c.score, None);
        assert!(c.reasons[0].contains("MiB left"), "{:?}", c.reasons);
    }

    #[test]
    fn anti_affinity_must_keeps_them_apart_and_should_only_costs() {
        let hosts = [host("a", 8192, 0), host("b", 8192, 4096)];
        let located: HashMap<&str, &str> = [("db1", "a")].into_iter().collect();
        let apart = rule(
            "dbs",
            Strength::Must,
            RuleKind::AntiAffinity {
                vms: vec!["db1".into(), "db2".into()],
            },
        );
        let r = place(&ask("db2"), &hosts, &located, std::slice::from_ref(&apart));
        assert_eq!(r.chosen.as_deref(), Some("b"));
        let soft = Rule {
            strength: Strength::Should,
            ..apart
        };
        let only_a = [host("a", 8192, 0)];
        let r = place(&ask("db2"), &only_a, &located, &[soft]);
        assert_eq!(
            r.chosen.as_deref(),
            Some("a"),
            "a should rule never refuses"
        );
        assert!(r.candidates[0].reasons[0].contains("should rule dbs"));
    }

    #[test]
    fn a_migration_never_stays_and_maintenance_never_takes() {
        let mut b = host("b", 8192, 0);
        b.unavailable = Some("host b is in maintenance".into());
        let hosts = [host("a", 8192, 0), b];
        let mut a = ask("web");
        a.from = Some("a");
        let r = place(&a, &hosts, &HashMap::new(), &[]);
        assert_eq!(r.chosen, None);
        assert!(r.candidates.iter().all(|c| c.score.is_none()));
    }

    #[test]
    fn an_evacuation_plan_counts_what_it_already_sent() {
        // b and c can each take one 3 GiB VM; the plan must not send both to one host.
        let hosts = [host("a", 8192, 0), host("b", 4096, 0), host("c", 4096, 0)];
        let big = |n: &str| Move {
            vm: n.into(),
            demand: Demand {
                memory_mib: 3072,
                vcpus: 1,
            },
        };
        let located: HashMap<&str, &str> = [("v1", "a"), ("v2", "a"), ("v3", "a")]
            .into_iter()
            .collect();
        let plan = plan_evacuation(
            "a",
            &[big("v1"), big("v2"), big("v3")],
            &hosts,
            &located,
            &[],
        );
        let chosen: Vec<Option<&str>> = plan.iter().map(|r| r.chosen.as_deref()).collect();
        assert_eq!(chosen[..2].iter().filter(|c| c.is_some()).count(), 2);
        assert_ne!(chosen[0], chosen[1]);
        assert_eq!(chosen[2], None, "the third fits nowhere: {plan:?}");
    }

    fn arb_rule() -> impl Strategy<Value = Rule> {
        let vms = prop::collection::vec(
            prop::sample::select(vec!["v0", "v1", "v2", "v3", "v4"]),
            1..4,
        )
        .prop_map(|v| v.into_iter().map(String::from).collect::<Vec<_>>());
        let hosts = prop::collection::vec(prop::sample::select(vec!["h0", "h1", "h2", "h3"]), 1..3)
            .prop_map(|v| v.into_iter().map(String::from).collect::<Vec<_>>());
        let strength = prop_oneof![Just(Strength::Must), Just(Strength::Should)];
        let kind = prop_oneof![
            vms.clone().prop_map(|vms| RuleKind::Affinity { vms }),
            vms.clone().prop_map(|vms| RuleKind::AntiAffinity { vms }),
            (vms, hosts, any::<bool>()).prop_map(|(vms, hosts, on)| RuleKind::VmHost {
                vms,
                hosts,
                on
            }),
        ];
        (strength, kind, 0..1000u32).prop_map(|(strength, kind, n)| Rule {
            name: format!("r{n}"),
            strength,
            kind,
        })
    }

    proptest! {
        /// Never a host that fails a check, is in maintenance, lacks room or would break a
        /// `must` rule; and if any host could take the VM, one is chosen.
        #[test]
        fn the_choice_is_always_allowed(
            caps in prop::collection::vec((512u64..8192, 0u64..8192, any::<bool>(), prop::option::of(1.0f64..1000.0)), 1..5),
            placed in prop::collection::vec(prop::sample::select(vec!["h0", "h1", "h2", "h3"]), 4),
            rules in prop::collection::vec(arb_rule(), 0..6),
            from in prop::option::of(prop::sample::select(vec!["h0", "h1", "h2", "h3"])),
        ) {
            let hosts: Vec<HostFacts> = caps.iter().enumerate().map(|(i, (mem, used, down, link))| HostFacts {
                name: format!("h{i}"),
                capacity: Demand { memory_mib: *mem, vcpus: 8 },
                used: Demand { memory_mib: *used, vcpus: 2 },
                link_mib_s: *link,
                unavailable: down.then(|| "in maintenance".to_string()),
            }).collect();
            let names = ["v1", "v2", "v3", "v4"];
            let located: HashMap<&str, &str> = names.iter().copied().zip(placed.iter().copied()).collect();
            let mut a = ask("v0");
            a.from = from;
            let r = place(&a, &hosts, &located, &rules);
            let allowed = |h: &HostFacts| {
                h.unavailable.is_none()
                    && a.from != Some(h.name.as_str())
                    && h.used.memory_mib + a.demand.memory_mib <= h.capacity.memory_mib
                    && h.used.vcpus + a.demand.vcpus <= h.capacity.vcpus
                    && rules.iter().filter(|r| r.strength == Strength::Must && r.vms().iter().any(|v| v == "v0"))
                        .all(|r| breaks(r, "v0", &h.name, &located).is_none())
            };
            match &r.chosen {
                Some(c) => {
                    let h = hosts.iter().find(|h| &h.name == c).unwrap();
                    prop_assert!(allowed(h), "chose {c}, which is not allowed: {r:?}");
                }
                None => prop_assert!(!hosts.iter().any(allowed), "nothing chosen though a host fits: {r:?}"),
            }
            prop_assert_eq!(r.candidates.len(), hosts.len());
        }
    }
}
