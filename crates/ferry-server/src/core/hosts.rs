//! Hosts: registration (every heartbeat), the connected/disconnected view, and bringing
//! the VM records of a host in line with what its agent reports.

use std::time::Duration;

use chrono::Utc;
use ferry_api::client::AgentClient;
use ferry_api::*;

use super::Server;
use crate::store::{NewEvent, StoredHost};

impl Server {
    pub(super) fn host_view(&self, h: StoredHost) -> Host {
        let age = Utc::now().signed_duration_since(h.last_seen);
        let connected = age
            .to_std()
            .map(|a| a <= self.config.host_timeout)
            .unwrap_or(true);
        let health = self.host_health(&h.name);
        Host {
            name: h.name,
            url: h.url,
            migration_address: h.migration_address,
            state: if connected {
                HostState::Connected
            } else {
                HostState::Disconnected
            },
            registered_at: h.registered_at,
            last_seen: h.last_seen,
            inventory: h.inventory,
            vms: h.vms,
            maintenance: h.maintenance,
            health,
            lease: None,
        }
    }

    pub fn hosts(&self) -> Result<Vec<Host>, ApiError> {
        Ok(self
            .store
            .hosts()?
            .into_iter()
            .map(|h| self.host_view(h))
            .collect())
    }

    pub fn host(&self, name: &str) -> Result<Host, ApiError> {
        validate_name("host name", name)?;
        self.store
            .host(name)?
            .map(|h| self.host_view(h))
            .ok_or_else(|| {
                ApiError::not_found(format!("no host named '{name}' (see `ferry host list`)"))
            })
    }

    pub(super) fn register_host(
        &self,
        actor: &str,
        reg: HostRegistration,
    ) -> Result<Host, ApiError> {
        validate_name("host name", &reg.name)?;
        if !(reg.url.starts_with("http://") || reg.url.starts_with("https://")) {
            return Err(ApiError::bad_request(format!(
                "host URL '{}' must be http:// or https://",
                reg.url
            )));
        }
        if reg.migration_address.parse::<std::net::IpAddr>().is_err() {
            return Err(ApiError::bad_request(format!(
                "migration address '{}' is not an IP address",
                reg.migration_address
            )));
        }
        let before = self.store.host(&reg.name)?;
        let models_changed = before
            .as_ref()
            .is_none_or(|h| h.inventory.cpu_models != reg.inventory.cpu_models);
        let was_connected = before.map(|h| self.host_view(h).state == HostState::Connected);
        self.store.upsert_host(&reg, Utc::now())?;
        let message = match was_connected {
            None => Some(format!(
                "host {} registered ({}, migration address {})",
                reg.name, reg.url, reg.migration_address
            )),
            Some(false) => Some(format!("host {} reconnected", reg.name)),
            Some(true) => None,
        };
        self.reconcile_vms(actor, &reg)?;
        self.record_load(&reg);
        self.report_stray_copies(&reg)?;
        if let Some(message) = message {
            self.event(NewEvent {
                actor: actor.to_string(),
                kind: EventKind::HostRegister,
                host: Some(reg.name.clone()),
                outcome: Some(Outcome::Ok),
                message,
                data: serde_json::json!({
                    "qemu": reg.inventory.qemu_version, "accel": reg.inventory.accel,
                    "cpus": reg.inventory.cpus, "memory_mib": reg.inventory.memory_total_mib,
                }),
                vm: None,
                migration: None,
            });
        }
        if models_changed {
            // A host that joins (or now offers other CPU models) may not run the baseline,
            // or may change an automatic one.
            self.review_baseline(actor, &reg.name);
        }
        let mut host = self.host(&reg.name)?;
        host.lease = Some(self.lease_for(&reg)?);
        Ok(host)
    }

    /// Brings the records of the VMs placed on a host in line with what its agent reports.
    /// VMs in a migration belong to the orchestrator, and records touched in the last few
    /// seconds are left alone (a heartbeat may have been taken before that change).
    pub(super) fn reconcile_vms(
        &self,
        actor: &str,
        reg: &HostRegistration,
    ) -> Result<(), ApiError> {
        let settle = chrono::Duration::seconds(5);
        for vm in self.store.vms()? {
            if vm.host != reg.name || vm.migration.is_some() || Utc::now() - vm.updated_at < settle
            {
                continue;
            }
            let reported = reg
                .vms
                .iter()
                .find(|r| r.name == vm.spec.name)
                .map(|r| r.state);
            let now = match reported {
                Some(
                    s @ (VmState::Running | VmState::Paused | VmState::Stopped | VmState::Crashed),
                ) => s,
                Some(_) => continue, // transient (starting, incoming, migrated away)
                // A VM still starting may not be in the agent's list yet (the server is
                // launching it); only one that ran and vanished has crashed.
                None if matches!(vm.state, VmState::Running | VmState::Paused) => VmState::Crashed,
                None => continue,
            };
            if now != vm.state {
                let how = if reported.is_none() {
                    " (its host no longer runs it)"
                } else {
                    ""
                };
                let ev = NewEvent {
                    actor: actor.to_string(),
                    kind: EventKind::VmState,
                    vm: Some(vm.spec.name.clone()),
                    host: Some(reg.name.clone()),
                    outcome: Some(if now == VmState::Crashed {
                        Outcome::Error
                    } else {
                        Outcome::Info
                    }),
                    message: format!(
                        "VM {} is {now} on {} (was {}){how}",
                        vm.spec.name, reg.name, vm.state
                    ),
                    data: serde_json::Value::Null,
                    migration: None,
                };
                // The state and the event reporting it land together.
                self.store
                    .set_vm_state_logged(&vm.spec.name, now, Some(&ev))?;
            }
        }
        Ok(())
    }

    /// A client for a connected host's agent, or a clear refusal.
    pub fn agent(&self, host: &str) -> Result<(Host, AgentClient), ApiError> {
        let h = self.host(host)?;
        if h.state != HostState::Connected {
            return Err(ApiError::unavailable(format!(
                "host {host} is disconnected (last heartbeat {})",
                h.last_seen
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )));
        }
        let client = self.agent_client(&h)?;
        Ok((h, client))
    }

    /// How the server reaches agents: its certificate, and the CA bundle to check theirs.
    pub fn agent_creds(&self) -> ferry_api::client::Credentials {
        match &self.pki {
            Some(p) => ferry_api::client::Credentials::daemon(p.material()),
            None => ferry_api::client::Credentials::default(),
        }
    }

    /// A client for `h`'s agent that accepts only `h`'s certificate.
    pub fn agent_client(&self, h: &Host) -> Result<AgentClient, ApiError> {
        AgentClient::connect(
            &h.url,
            &h.name,
            &self.agent_creds(),
            Duration::from_secs(120),
        )
        .map_err(|e| ApiError::internal(e.to_string()))
    }
}
