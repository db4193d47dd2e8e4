//! High availability on the server's side: the lease each heartbeat's reply grants, the
//! peers' views each heartbeat brings, the watch that judges every host each second
//! ([`crate::ha::judge`]), and the restart of a failed host's HA VMs on other hosts by
//! placement, in priority order. The timing and why it is safe: [`ferry_api::ha`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry_api::client::ClientError;
use ferry_api::*;

use super::Server;
use crate::admission::{self, Demand};
use crate::ha::{judge, restart_order, restartable, HaConfig, HostFacts, HostHa};
use crate::placement::{plan_evacuation, Move};
use crate::store::NewEvent;

/// How often every host is judged.
const WATCH_TICK: Duration = Duration::from_secs(1);

/// What the server remembers for HA, in memory: a restarted server starts every host
/// afresh (`started`), so nothing is restarted because the server itself was away.
#[derive(Debug)]
pub struct HaBook {
    pub started: DateTime<Utc>,
    pub hosts: HashMap<String, HostHa>,
    pub views: HashMap<String, (DateTime<Utc>, PeerView)>,
    /// (host, VM) copies already reported as running where the VM does not belong.
    pub strays: HashSet<(String, String)>,
}

impl Default for HaBook {
    fn default() -> Self {
        HaBook {
            started: Utc::now(),
            hosts: HashMap::new(),
            views: HashMap::new(),
            strays: HashSet::new(),
        }
    }
}

impl Server {
    fn ha_book(&self) -> std::sync::MutexGuard<'_, HaBook> {
        self.ha.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn host_health(&self, host: &str) -> HostHealth {
        self.ha_book()
            .hosts
            .get(host)
            .map(|h| h.health)
            .unwrap_or_default()
    }

    /// A heartbeat arrived: keep its view of the peers; the lease and the peers for the
    /// reply. The host's judgement is left to the watch (it sees `last_seen` move).
    pub(super) fn lease_for(&self, reg: &HostRegistration) -> Result<HostLease, ApiError> {
        if let Some(v) = &reg.peers {
            if v.reachable.len() + v.unreachable.len() <= 10_000 {
                self.ha_book()
                    .views
                    .insert(reg.name.clone(), (Utc::now(), v.clone()));
            }
        }
        let cfg = &self.config.ha;
        let peers = self
            .store
            .hosts()?
            .into_iter()
            .filter(|h| h.name != reg.name)
            .map(|h| PeerInfo {
                name: h.name,
                url: h.url,
            })
            .collect();
        Ok(HostLease {
            lease_s: cfg.lease.num_milliseconds() as f64 / 1000.0,
            fence_margin_s: cfg.fence_margin.num_milliseconds() as f64 / 1000.0,
            peers,
        })
    }

    /// A host reports a VM running that the cluster places on another host and that is not
    /// migrating: a second copy (a host that came back without having fenced itself, after
    /// its VM was restarted elsewhere). Said once per host and VM, loudly; nothing is
    /// killed, since which copy to keep is an operator's call.
    pub(super) fn report_stray_copies(&self, reg: &HostRegistration) -> Result<(), ApiError> {
        let running: Vec<&ReportedVm> = reg
            .vms
            .iter()
            .filter(|r| r.state == VmState::Running)
            .collect();
        if running.is_empty() {
            return Ok(());
        }
        for r in running {
            let Some(vm) = self.store.vm(&r.name)? else {
                continue;
            };
            if vm.host == reg.name || vm.migration.is_some() {
                self.ha_book()
                    .strays
                    .remove(&(reg.name.clone(), r.name.clone()));
                continue;
            }
            if !self
                .ha_book()
                .strays
                .insert((reg.name.clone(), r.name.clone()))
            {
                continue;
            }
            self.event(NewEvent {
                actor: "server".into(),
                kind: EventKind::VmState,
                vm: Some(r.name.clone()),
                host: Some(reg.name.clone()),
                migration: None,
                outcome: Some(Outcome::Error),
                message: format!(
                    "VM {} runs on {} but belongs on {}: two copies may share its disks; stop                      the one on {} (`ferry vm show {}` names where it belongs)",
                    r.name, reg.name, vm.host, reg.name, r.name
                ),
                data: serde_json::json!({"stray_host": reg.name, "placed_on": vm.host}),
            });
        }
        Ok(())
    }

    /// Judges every host each second; a host that turns `failed` has its HA VMs restarted.
    pub fn spawn_ha_watch(self: &Arc<Self>) {
        let server = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(WATCH_TICK).await;
                match server.ha_round() {
                    Ok(failed) => {
                        for host in failed {
                            server.fail_over(&host).await;
                        }
                    }
                    Err(e) => tracing::warn!("HA watch: {}", e.message),
                }
            }
        });
    }

    /// One judgement of every host; returns the hosts that just failed.
    fn ha_round(&self) -> Result<Vec<String>, ApiError> {
        let hosts = self.store.hosts()?;
        let names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
        let now = Utc::now();
        let cfg = self.config.ha;
        let mut events = Vec::new();
        let mut failed = Vec::new();
        {
            let mut book = self.ha_book();
            for h in &hosts {
                let peers: Vec<String> = names.iter().filter(|n| **n != h.name).cloned().collect();
                let prev = book.hosts.get(&h.name).copied().unwrap_or_default();
                let next = judge(
                    prev,
                    &HostFacts {
                        name: &h.name,
                        last_seen: h.last_seen,
                        started: book.started,
                        now,
                        peers: &peers,
                        views: &book.views,
                    },
                    &cfg,
                );
                if next.health != prev.health {
                    events.push(health_event(&h.name, prev.health, next.health, &cfg));
                    if next.health == HostHealth::Failed {
                        failed.push(h.name.clone());
                    }
                }
                book.hosts.insert(h.name.clone(), next);
            }
        }
        for e in events {
            self.event(e);
        }
        Ok(failed)
    }

    /// Restarts the failed host's HA VMs elsewhere, highest priority first; names every
    /// VM that stays down and why.
    async fn fail_over(self: &Arc<Self>, host: &str) {
        let span = tracing::info_span!("failover", host = %host);
        let _g = span.enter();
        let (restart, refused) = match self.failover_plan(host) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("cannot plan the failover: {}", e.message);
                return;
            }
        };
        for (vm, why) in &refused {
            self.event(restart_event(vm, host, None, Outcome::Error, why.clone()));
        }
        for (vm, to) in restart {
            match self.restart_on(&vm, host, &to).await {
                Ok(()) => self.event(restart_event(
                    &vm.spec.name,
                    host,
                    Some(&to),
                    Outcome::Ok,
                    format!("restarted on {to}"),
                )),
                Err(e) => self.event(restart_event(
                    &vm.spec.name,
                    host,
                    Some(&to),
                    Outcome::Error,
                    format!("restart on {to} failed: {}", e.message),
                )),
            }
        }
    }

    /// Which VMs restart where, and which stay down with the reason.
    #[allow(clippy::type_complexity)]
    fn failover_plan(
        &self,
        host: &str,
    ) -> Result<(Vec<(Vm, String)>, Vec<(String, String)>), ApiError> {
        let view = self.store.view()?;
        let shared: Vec<String> = view
            .hosts
            .iter()
            .find(|h| h.name == host)
            .map(|h| {
                h.inventory
                    .pools
                    .iter()
                    .filter(|p| p.shared)
                    .map(|p| p.name.clone())
                    .collect()
            })
            .unwrap_or_default();
        let mut candidates = Vec::new();
        let mut refused = Vec::new();
        for vm in view.vms.iter().filter(|v| v.host == host) {
            match restartable(vm, &shared) {
                Ok(()) => candidates.push(vm.clone()),
                // Only running VMs are news; a stopped one simply stays stopped.
                Err(why) if vm.state.is_active() => refused.push((vm.spec.name.clone(), why)),
                Err(_) => {}
            }
        }
        restart_order(&mut candidates);
        let moves: Vec<Move> = candidates
            .iter()
            .map(|v| Move {
                vm: v.spec.name.clone(),
                demand: Demand::of(&v.spec),
            })
            .collect();
        let facts = self.host_facts(&view, None, "")?;
        let located: HashMap<&str, &str> = view
            .vms
            .iter()
            .map(|v| (v.spec.name.as_str(), v.host.as_str()))
            .collect();
        let rules = self.store.rules()?;
        let reports = plan_evacuation(host, &moves, &facts, &located, &rules);
        let pools_of: HashMap<&str, HashSet<&str>> = view
            .hosts
            .iter()
            .map(|h| {
                (
                    h.name.as_str(),
                    h.inventory
                        .pools
                        .iter()
                        .filter(|p| p.shared)
                        .map(|p| p.name.as_str())
                        .collect(),
                )
            })
            .collect();
        let mut restart = Vec::new();
        for (vm, report) in candidates.into_iter().zip(reports) {
            match report.chosen {
                Some(to)
                    if vm.spec.disks.iter().all(|d| {
                        pools_of
                            .get(to.as_str())
                            .is_some_and(|p| p.contains(d.pool.as_str()))
                    }) =>
                {
                    restart.push((vm, to))
                }
                Some(to) => refused.push((
                    vm.spec.name.clone(),
                    format!("{to} would take it but does not share all its pools"),
                )),
                None => {
                    let why: Vec<String> = report
                        .candidates
                        .iter()
                        .map(|c| format!("{}: {}", c.host, c.reasons.join("; ")))
                        .collect();
                    refused.push((
                        vm.spec.name.clone(),
                        format!("no host can take it: {}", why.join(" | ")),
                    ));
                }
            }
        }
        Ok((restart, refused))
    }

    /// Moves the VM's record from the failed host to `to` (only if it is still there and
    /// `to` has room), then boots it there from its shared disks.
    async fn restart_on(&self, vm: &Vm, from: &str, to: &str) -> Result<(), ApiError> {
        let (_, agent) = self.agent(to)?;
        let _disks = self.disk_ops.lock().await;
        let spec = &vm.spec;
        self.store.claim_restart(&spec.name, from, to, &|view| {
            admission::admit(view, to, spec)?;
            admission::disks_free(view, to, spec)
        })?;
        match agent.launch(spec).await {
            Ok(rt) => {
                self.store.set_vm_state(&spec.name, rt.state)?;
                Ok(())
            }
            Err(e) => {
                if matches!(e, ClientError::Unreachable { .. }) {
                    let _ = agent.remove(&spec.name).await;
                }
                // It runs nowhere: crashed, on the host that was to take it (an operator
                // can start it there or elsewhere).
                self.store.set_vm_state(&spec.name, VmState::Crashed)?;
                Err(e.into_api_error(&format!("host {to}")))
            }
        }
    }
}

fn health_event(host: &str, from: HostHealth, to: HostHealth, cfg: &HaConfig) -> NewEvent {
    let (outcome, message) = match to {
        HostHealth::Alive => (Outcome::Ok, format!("host {host} is heard from again (was {from})")),
        HostHealth::Suspected => (
            Outcome::Info,
            format!(
                "host {host} is suspected: no heartbeat for {} s; it fails in {} s unless heard from",
                cfg.suspect_after.num_seconds(),
                (cfg.failover_after() - cfg.suspect_after).num_seconds()
            ),
        ),
        HostHealth::Partitioned => (
            Outcome::Error,
            format!(
                "host {host}'s lease ran out but its peers still reach it: it is cut off from \
                 the server only and keeps its VMs; nothing is restarted"
            ),
        ),
        HostHealth::Failed => (
            Outcome::Error,
            format!(
                "host {host} failed: no heartbeat for {} s and most of its peers cannot reach \
                 it (an isolated host has stopped its HA VMs by now); restarting its HA VMs \
                 elsewhere",
                cfg.failover_after().num_seconds()
            ),
        ),
    };
    NewEvent {
        actor: "server".into(),
        kind: EventKind::HostHealth,
        vm: None,
        host: Some(host.to_string()),
        migration: None,
        outcome: Some(outcome),
        message,
        data: serde_json::json!({"from": from, "to": to}),
    }
}

fn restart_event(
    vm: &str,
    from: &str,
    to: Option<&str>,
    outcome: Outcome,
    what: String,
) -> NewEvent {
    NewEvent {
        actor: "server".into(),
        kind: EventKind::VmRestart,
        vm: Some(vm.to_string()),
        host: to.map(str::to_string).or_else(|| Some(from.to_string())),
        migration: None,
        outcome: Some(outcome),
        message: format!("HA: VM {vm} of failed host {from}: {what}"),
        data: serde_json::json!({"failed_host": from, "to": to}),
    }
}
