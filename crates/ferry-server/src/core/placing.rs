//! Placing VMs: the facts [`crate::placement::place`] decides on, gathered from the store,
//! and the rules' own actions.

use std::collections::HashMap;

use chrono::Utc;
use ferry_api::*;

use super::Server;
use crate::admission::{capacity, committed, Demand};
use crate::placement::{place, Ask, HostFacts};
use crate::store::{ClusterView, NewEvent};

impl Server {
    /// Where `req` would go, with every candidate's score and reasons.
    pub fn placement(&self, req: &PlacementRequest) -> Result<PlacementReport, ApiError> {
        let (name, mut spec, from) = match (&req.vm, &req.spec) {
            (Some(vm), None) => {
                let found = self.find_vm(vm)?;
                (found.spec.name.clone(), found.spec, Some(found.host))
            }
            (None, Some(spec)) => {
                spec.validate()?;
                (spec.name.clone(), spec.clone(), None)
            }
            _ => {
                return Err(ApiError::bad_request(
                    "name either an existing VM (`vm`) or a new VM's spec (`spec`)",
                ))
            }
        };
        spec.assign_defaults();
        let view = self.store.view()?;
        let facts = self.host_facts(&view, Some(&spec), &name)?;
        let located: HashMap<&str, &str> = view
            .vms
            .iter()
            .filter(|v| v.spec.name != name)
            .map(|v| (v.spec.name.as_str(), v.host.as_str()))
            .collect();
        let rules = self.store.rules()?;
        Ok(place(
            &Ask {
                vm: &name,
                demand: Demand::of(&spec),
                from: from.as_deref(),
            },
            &facts,
            &located,
            &rules,
        ))
    }

    /// What placement knows of every host: capacity, what is committed there (leaving out
    /// `except`, the VM being placed), and why a host takes nothing (not connected, in
    /// maintenance, or it cannot run `spec`'s CPU model).
    pub(super) fn host_facts(
        &self,
        view: &ClusterView,
        spec: Option<&VmSpec>,
        except: &str,
    ) -> Result<Vec<HostFacts>, ApiError> {
        let hosts = self.hosts()?;
        let live_by_name: HashMap<&str, &Host> =
            hosts.iter().map(|x| (x.name.as_str(), x)).collect();
        Ok(view
            .hosts
            .iter()
            .map(|h| {
                let live = live_by_name.get(h.name.as_str()).copied();
                let unavailable = match live {
                    Some(x) if x.state != HostState::Connected => {
                        Some(format!("host {} is {}", h.name, x.state))
                    }
                    Some(x) if x.maintenance => Some(format!("host {} is in maintenance", h.name)),
                    None => Some(format!("host {} is unknown", h.name)),
                    _ => spec.and_then(|s| cpu_refusal(s, &h.inventory, &h.name)),
                };
                HostFacts {
                    name: h.name.clone(),
                    capacity: capacity(h),
                    used: committed(view, &h.name, except).0,
                    link_mib_s: None,
                    unavailable,
                }
            })
            .collect())
    }

    /// Picks a host for `req` or says why none fits; records the decision as an event.
    pub(super) fn place_or_refuse(
        &self,
        actor: &str,
        req: &PlacementRequest,
    ) -> Result<String, ApiError> {
        let report = self.placement(req)?;
        let data = serde_json::to_value(&report).unwrap_or_default();
        match &report.chosen {
            Some(host) => {
                self.event(NewEvent {
                    actor: actor.to_string(),
                    kind: EventKind::VmPlaced,
                    vm: Some(report.vm.clone()),
                    host: Some(host.clone()),
                    migration: None,
                    outcome: Some(Outcome::Info),
                    message: format!(
                        "VM {} placed on {} (runner-up: {})",
                        report.vm,
                        host,
                        report.runner_up.as_deref().unwrap_or("none")
                    ),
                    data,
                });
                Ok(host.clone())
            }
            None => {
                let why: Vec<String> = report
                    .candidates
                    .iter()
                    .map(|c| format!("{}: {}", c.host, c.reasons.join("; ")))
                    .collect();
                Err(ApiError::conflict(format!(
                    "no host can take VM {}: {}",
                    report.vm,
                    if why.is_empty() {
                        "there are no hosts".to_string()
                    } else {
                        why.join(" | ")
                    }
                ))
                .with_details(data))
            }
        }
    }

    pub(super) fn add_rule(&self, rule: &Rule) -> Result<Rule, ApiError> {
        rule.validate()?;
        if !self.store.add_rule(rule, Utc::now())? {
            return Err(ApiError::conflict(format!(
                "a rule named '{}' exists",
                rule.name
            )));
        }
        Ok(rule.clone())
    }

    pub(super) fn delete_rule(&self, name: &str) -> Result<String, ApiError> {
        validate_name("rule name", name)?;
        if !self.store.delete_rule(name)? {
            return Err(ApiError::not_found(format!("no rule named '{name}'")));
        }
        Ok(format!("rule {name}"))
    }
}

/// A host that cannot run the VM's CPU model takes it nowhere (the pre-check would refuse).
fn cpu_refusal(spec: &VmSpec, inv: &HostInventory, host: &str) -> Option<String> {
    if spec.cpu_model == "baseline" || inv.cpu_models.is_empty() {
        return None;
    }
    let usable = inv
        .cpu_models
        .iter()
        .any(|m| m.name == spec.cpu_model && m.unavailable_features.is_empty());
    (!usable).then(|| format!("host {host} cannot run CPU model {}", spec.cpu_model))
}
