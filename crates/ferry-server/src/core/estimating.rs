//! Time estimates of evacuations and the fair share of migration links: the facts (each
//! VM's memory and dirty rate from its agent, each host's link) gathered here, the
//! arithmetic in [`crate::estimate`] and [`crate::link_share`].
//!
//! A host's link capacity is what its agent was told (`--migration-link-mib-s`), else the
//! best rate a pre-check probe measured to or from it (a probe measures the slower end of
//! a pair, so the best one seen is the closest to the host's own link).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_api::*;

use super::Server;
use crate::estimate::{estimate, eta, Costs, EstimateVm, InFlight};
use crate::link_share::{shares, Flow};
use crate::lock;
use crate::precheck::probe_link;

/// How long the agent may take to measure a VM's dirty rate (it samples for a second).
const FACTS_TIMEOUT: Duration = Duration::from_secs(6);
/// The dry run's probe of a link nobody measured yet.
const PROBE_BYTES: u64 = 64 << 20;
const PROBE_MAX_MS: u64 = 400;
/// A pre-check reuses a probe of the same pair this young.
pub(crate) const PROBE_FRESH: Duration = Duration::from_secs(60);

impl Server {
    /// A host's migration link, bytes/s (configured, else the best probe seen).
    pub fn link_capacity(&self, host: &str) -> Option<u64> {
        let configured = self
            .store
            .host(host)
            .ok()
            .flatten()
            .and_then(|h| h.inventory.migration_link_mib_s)
            .map(|m| m << 20);
        configured.or_else(|| self.links().get(host).copied())
    }

    /// A probe from `a` to `b` younger than [`PROBE_FRESH`], with its age.
    pub(crate) fn fresh_probe(&self, a: &str, b: &str) -> Option<(Duration, ProbeSendResponse)> {
        let probes = lock(&self.probes);
        let (at, probe) = probes.get(&(a.to_string(), b.to_string()))?;
        let age = at.elapsed();
        (age < PROBE_FRESH).then(|| (age, probe.clone()))
    }

    fn links(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        lock(&self.links)
    }

    /// Remembers a probe between two hosts: its rate for both hosts' links, and the whole
    /// answer for the next check of the pair (see [`Server::fresh_probe`]).
    pub(crate) fn record_probe(&self, a: &str, b: &str, probe: &ProbeSendResponse) {
        let bytes_per_s = probe.bytes_per_s;
        if bytes_per_s == 0 {
            return;
        }
        lock(&self.probes).insert(
            (a.to_string(), b.to_string()),
            (std::time::Instant::now(), probe.clone()),
        );
        let mut links = self.links();
        for h in [a, b] {
            let e = links.entry(h.to_string()).or_insert(0);
            *e = (*e).max(bytes_per_s);
        }
    }

    /// The plan with each VM's estimate and the whole evacuation's, from each VM's
    /// memory facts (asked of its agent) and the links (probed now where unknown).
    pub(super) async fn estimate_plan(
        self: &Arc<Self>,
        host: &str,
        mut items: Vec<OperationItem>,
    ) -> EvacuationPlan {
        let placed: Vec<usize> = (0..items.len())
            .filter(|&i| items[i].destination.is_some() && !items[i].state.is_finished())
            .collect();
        let agent = self.agent(host).ok().map(|(_, a)| a);
        // Each VM's agent call samples for a second: ask for all of them at once.
        let mut asks = tokio::task::JoinSet::new();
        for &i in &placed {
            let (vm, agent) = (items[i].vm.clone(), agent.clone());
            asks.spawn(async move {
                let facts = match agent {
                    Some(a) => match tokio::time::timeout(FACTS_TIMEOUT, a.memory_facts(&vm)).await
                    {
                        Ok(Ok(f)) => Ok(f),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("no answer in time".to_string()),
                    },
                    None => Err("its host cannot be reached".to_string()),
                };
                (vm, facts)
            });
        }
        let mut facts: HashMap<String, Result<VmMemoryFacts, String>> = HashMap::new();
        while let Some(done) = asks.join_next().await {
            if let Ok((vm, f)) = done {
                facts.insert(vm, f);
            }
        }
        let mut vms = Vec::new();
        let mut notes: HashMap<String, String> = HashMap::new();
        for &i in &placed {
            let it = &items[i];
            let found = facts
                .remove(&it.vm)
                .unwrap_or_else(|| Err("the request failed".to_string()));
            let (bytes, dirty) = match found {
                Ok(f) => {
                    if f.dirty_rate_mib_s.is_none() {
                        notes.insert(it.vm.clone(), "dirty rate not measured: 0 assumed".into());
                    }
                    (f.bytes_to_send(), f.dirty_bytes_per_s())
                }
                Err(e) => {
                    notes.insert(
                        it.vm.clone(),
                        format!("memory facts unavailable ({e}): all RAM, no dirtying assumed"),
                    );
                    (it.memory_mib << 20, 0)
                }
            };
            vms.push(EstimateVm {
                vm: it.vm.clone(),
                source: host.to_string(),
                destination: it.destination.clone().unwrap_or_default(),
                bytes,
                dirty_bytes_per_s: dirty,
            });
        }
        self.probe_unknown_links(host, &vms).await;
        let limits = self.store.limits().unwrap_or_default();
        let link = |h: &str| self.link_capacity(h);
        let mut plan = EvacuationPlan {
            host: host.to_string(),
            items: Vec::new(),
            estimate_s: 0.0,
            assumptions: Vec::new(),
            operation: None,
        };
        match estimate(&vms, &link, &limits, &Costs::default()) {
            Ok(e) => {
                plan.estimate_s = e.total_s;
                for (vm, est) in vms.iter().zip(&e.per_vm) {
                    let pair_link = match (link(&vm.source), link(&vm.destination)) {
                        (Some(a), Some(b)) => a.min(b),
                        (Some(a), None) | (None, Some(a)) => a,
                        (None, None) => Costs::default().assumed_link_bytes_s,
                    };
                    let note = match (est.note.clone(), notes.remove(&vm.vm)) {
                        (Some(a), Some(b)) => Some(format!("{a}; {b}")),
                        (a, b) => a.or(b),
                    };
                    plan.assumptions.push(EstimateAssumption {
                        vm: vm.vm.clone(),
                        bytes: vm.bytes,
                        dirty_bytes_per_s: vm.dirty_bytes_per_s,
                        link_bytes_per_s: pair_link,
                        start_s: est.start_s,
                        end_s: est.end_s,
                        note,
                    });
                    if let Some(it) = items.iter_mut().find(|i| i.vm == vm.vm) {
                        it.estimate_s = Some(est.end_s - est.start_s);
                    }
                }
            }
            Err(e) => tracing::warn!("no estimate for the evacuation of {host}: {e}"),
        }
        plan.items = items;
        plan
    }

    /// Probes, once, each link of the plan whose capacity nobody knows yet.
    async fn probe_unknown_links(&self, host: &str, vms: &[EstimateVm]) {
        let mut dests: Vec<&str> = vms.iter().map(|v| v.destination.as_str()).collect();
        dests.sort();
        dests.dedup();
        for d in dests {
            if self.link_capacity(host).is_some() && self.link_capacity(d).is_some() {
                continue;
            }
            let (Ok((_, src)), Ok((_, dst))) = (self.agent(host), self.agent(d)) else {
                continue;
            };
            match probe_link((host, &src), (d, &dst), PROBE_BYTES, PROBE_MAX_MS).await {
                Ok(r) => self.record_probe(host, d, &r),
                Err(e) => tracing::info!("probe {host} -> {d} for the estimate: {e}"),
            }
        }
    }

    /// Seconds left of a running operation: what still waits, plus what runs from where
    /// it is, under the limits.
    pub(super) fn eta(&self, op: &Operation) -> f64 {
        let by_vm: HashMap<&str, &EstimateAssumption> =
            op.assumptions.iter().map(|a| (a.vm.as_str(), a)).collect();
        let mut running = Vec::new();
        let mut waiting = Vec::new();
        for it in &op.items {
            let Some(to) = &it.destination else { continue };
            let (bytes, dirty) = by_vm
                .get(it.vm.as_str())
                .map(|a| (a.bytes, a.dirty_bytes_per_s))
                .unwrap_or((it.memory_mib << 20, 0));
            let vm = EstimateVm {
                vm: it.vm.clone(),
                source: op.host.clone(),
                destination: to.clone(),
                bytes,
                dirty_bytes_per_s: dirty,
            };
            match it.state {
                ItemState::Moving => running.push(InFlight {
                    vm,
                    already_sent: it.progress.map_or(0, |p| p.sent_bytes),
                }),
                ItemState::Planned | ItemState::Queued => waiting.push(vm),
                _ => {}
            }
        }
        let limits = self.store.limits().unwrap_or_default();
        let link = |h: &str| self.link_capacity(h);
        eta(&running, &waiting, &link, &limits, &Costs::default())
            .map(|e| e.total_s)
            .unwrap_or(0.0)
    }

    /// Gives every running migration its fair share of the links it uses (see
    /// [`crate::link_share`]), re-divided whenever migrations start or end; a migration
    /// alone on its links gets the operator's cap back, or none.
    pub(super) async fn share_links(&self) {
        let Ok(list) = self.store.unfinished_migrations() else {
            return;
        };
        let flows: Vec<Flow> = list
            .iter()
            // Quick and cold migrations do not use the migration stream's links this way
            // (a state file on shared storage; a disk copy with its own cap).
            .filter(|m| m.options.mode == MigrationMode::Live)
            .filter(|m| matches!(m.phase, Phase::Transferring | Phase::CopyingDisks))
            .map(|m| Flow {
                id: m.id,
                source: m.source.clone(),
                destination: m.destination.clone(),
                cap: m.options.max_bandwidth_mib.map(|c| c << 20),
            })
            .collect();
        let link = |h: &str| self.link_capacity(h);
        let wanted = shares(&flows, &link);
        for m in list
            .iter()
            .filter(|m| m.phase == Phase::Transferring && m.options.mode == MigrationMode::Live)
        {
            let share = wanted.get(&m.id).copied().flatten();
            // 0 lifts the cap (what Ferry sets at start unless the operator capped it).
            let target = share
                .or(m.options.max_bandwidth_mib.map(|c| c << 20))
                .unwrap_or(0);
            let applied = self.applied_shares().get(&m.id).copied();
            if applied == Some(target) || (applied.is_none() && share.is_none()) {
                continue;
            }
            let Ok((_, agent)) = self.agent(&m.source) else {
                continue;
            };
            let req = TuneRequest {
                max_bandwidth_bytes_s: Some(target),
                ..Default::default()
            };
            match agent.tune(&m.vm, &req).await {
                Ok(_) => {
                    self.applied_shares().insert(m.id, target);
                    self.event(
                        crate::store::NewEvent::new(
                            "server",
                            EventKind::MigrationController,
                            format!(
                                "migration {} gets {} of the link{}",
                                m.id,
                                if target == 0 {
                                    "all".to_string()
                                } else {
                                    format!("{} MiB/s", target >> 20)
                                },
                                if share.is_some() {
                                    " (shared fairly with the migrations on the same links)"
                                } else {
                                    ""
                                }
                            ),
                        )
                        .with_data(serde_json::json!({"max_bandwidth_bytes_s": target})),
                    );
                }
                Err(e) => tracing::info!(migration = %m.id, "link share not applied: {e}"),
            }
        }
        let live: Vec<uuid::Uuid> = list.iter().map(|m| m.id).collect();
        self.applied_shares().retain(|id, _| live.contains(id));
    }

    fn applied_shares(&self) -> std::sync::MutexGuard<'_, HashMap<uuid::Uuid, u64>> {
        self.applied_shares
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}
