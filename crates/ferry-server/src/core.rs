//! The server core: actions in, outcomes out, every change in the event log.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ferry_api::client::AgentClient;
use ferry_api::*;
use uuid::Uuid;

use crate::storage_plan::{plan_storage, PlannedCopy, StorageView};
use crate::store::{NewEvent, Store, StoreError, StoredHost};

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// A host with no heartbeat for this long is disconnected.
    pub host_timeout: Duration,
    /// How often a running migration is polled.
    pub poll_interval: Duration,
    pub ready_file: Option<PathBuf>,
}

/// Every request that changes state. The HTTP layer builds these; tests can too.
#[derive(Debug, Clone)]
pub enum Action {
    RegisterHost(HostRegistration),
    CreateVm(CreateVmRequest),
    StopVm(String),
    StartVm(String),
    DeleteVm(String),
    StartMigration(MigrateRequest),
    CheckMigration(MigrateRequest),
    CancelMigration(Uuid),
    SetMaintenance {
        host: String,
        on: bool,
    },
    SetBaseline(BaselineSetting),
    SetMigrationDefaults(MigrationOptions),
    CreateDisk {
        host: String,
        pool: String,
        req: CreateDiskRequest,
    },
    DeleteDisk {
        host: String,
        pool: String,
        disk: String,
    },
}

#[derive(Debug, Clone)]
pub enum ActionOutcome {
    Host(Host),
    Vm(Vm),
    Migration(Migration),
    Deleted(String),
    Disk(DiskImage),
    Checks(CheckReport),
    Cluster(ClusterInfo),
}

pub struct Server {
    pub config: ServerConfig,
    pub store: Store,
    /// Cancel requests for running migrations, read by their orchestrator tasks.
    pub(crate) cancels: std::sync::Mutex<std::collections::HashSet<Uuid>>,
}

impl Server {
    pub fn open(config: ServerConfig) -> Result<Server, StoreError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| StoreError::Open {
            path: config.data_dir.display().to_string(),
            reason: e.to_string(),
        })?;
        let store = Store::open(&config.data_dir.join("ferry.db"))?;
        Ok(Server {
            config,
            store,
            cancels: Default::default(),
        })
    }

    pub fn event(&self, e: NewEvent) {
        if let Err(err) = self.store.append_event(&e) {
            tracing::error!("cannot append to the event log: {err}");
        }
    }

    /// Handles one action and logs it (heartbeats only when something changed).
    pub async fn handle(
        self: &Arc<Self>,
        actor: &str,
        action: Action,
    ) -> Result<ActionOutcome, ApiError> {
        let (kind, vm, host, migration) = describe(&action);
        let quiet = matches!(action, Action::RegisterHost(_));
        let result = self.dispatch(actor, action).await;
        let log = match &result {
            Ok(_) if quiet => None,
            Ok(ActionOutcome::Checks(r)) => Some((
                if r.verdict() == Verdict::Fail {
                    Outcome::Error
                } else {
                    Outcome::Ok
                },
                summary_of_checks(r),
                serde_json::to_value(r).unwrap_or_default(),
            )),
            Ok(outcome) => Some((Outcome::Ok, summary(outcome), serde_json::Value::Null)),
            Err(e) => Some((
                Outcome::Error,
                e.message.clone(),
                e.details.clone().unwrap_or_default(),
            )),
        };
        if let Some((outcome, message, data)) = log {
            let migration = migration.or(match &result {
                Ok(ActionOutcome::Migration(m)) => Some(m.id),
                _ => None,
            });
            self.event(NewEvent {
                actor: actor.to_string(),
                kind: kind.to_string(),
                vm,
                host,
                migration,
                outcome: Some(outcome),
                message,
                data,
            });
        }
        result
    }

    async fn dispatch(
        self: &Arc<Self>,
        actor: &str,
        action: Action,
    ) -> Result<ActionOutcome, ApiError> {
        match action {
            Action::RegisterHost(reg) => self.register_host(actor, reg).map(ActionOutcome::Host),
            Action::CreateVm(req) => self.create_vm(req).await.map(ActionOutcome::Vm),
            Action::StopVm(name) => self.stop_vm(&name).await.map(ActionOutcome::Vm),
            Action::StartVm(name) => self.start_vm(&name).await.map(ActionOutcome::Vm),
            Action::DeleteVm(name) => self.delete_vm(&name).await.map(ActionOutcome::Deleted),
            Action::StartMigration(req) => self
                .start_migration(actor, req)
                .await
                .map(ActionOutcome::Migration),
            Action::CheckMigration(req) => {
                self.check_migration(&req).await.map(ActionOutcome::Checks)
            }
            Action::SetBaseline(s) => self.set_baseline(s).map(ActionOutcome::Cluster),
            Action::SetMigrationDefaults(o) => {
                self.set_migration_defaults(o).map(ActionOutcome::Cluster)
            }
            Action::SetMaintenance { host, on } => {
                validate_name("host name", &host)?;
                if !self.store.set_maintenance(&host, on)? {
                    return Err(ApiError::not_found(format!("no host named '{host}'")));
                }
                self.host(&host).map(ActionOutcome::Host)
            }
            Action::CancelMigration(id) => self.cancel_migration(id).map(ActionOutcome::Migration),
            Action::CreateDisk { host, pool, req } => {
                req.validate()?;
                let (_, agent) = self.agent(&host)?;
                agent
                    .create_disk(&pool, &req)
                    .await
                    .map(ActionOutcome::Disk)
                    .map_err(|e| e.into_api_error(&format!("host {host}")))
            }
            Action::DeleteDisk { host, pool, disk } => {
                validate_name("disk name", &disk)?;
                let (_, agent) = self.agent(&host)?;
                agent
                    .delete_disk(&pool, &disk)
                    .await
                    .map(|_| {
                        ActionOutcome::Deleted(format!("disk {disk} in pool {pool} on {host}"))
                    })
                    .map_err(|e| e.into_api_error(&format!("host {host}")))
            }
        }
    }

    // ---- hosts --------------------------------------------------------------------------

    fn host_view(&self, h: StoredHost) -> Host {
        let age = Utc::now().signed_duration_since(h.last_seen);
        let connected = age
            .to_std()
            .map(|a| a <= self.config.host_timeout)
            .unwrap_or(true);
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

    fn register_host(&self, actor: &str, reg: HostRegistration) -> Result<Host, ApiError> {
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
        if let Some(message) = message {
            self.event(NewEvent {
                actor: actor.to_string(),
                kind: "host.register".into(),
                host: Some(reg.name.clone()),
                outcome: Some(Outcome::Ok),
                message,
                data: serde_json::json!({
                    "qemu": reg.inventory.qemu_version, "accel": reg.inventory.accel,
                    "cpus": reg.inventory.cpus, "memory_mib": reg.inventory.memory_total_mib,
                }),
                ..Default::default()
            });
        }
        if models_changed {
            // A host that joins (or now offers other CPU models) may not run the baseline,
            // or may change an automatic one.
            self.review_baseline(actor, &reg.name);
        }
        self.host(&reg.name)
    }

    /// Brings the records of the VMs placed on a host in line with what its agent reports.
    /// VMs in a migration belong to the orchestrator, and records touched in the last few
    /// seconds are left alone (a heartbeat may have been taken before that change).
    fn reconcile_vms(&self, actor: &str, reg: &HostRegistration) -> Result<(), ApiError> {
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
                None if matches!(
                    vm.state,
                    VmState::Running | VmState::Paused | VmState::Starting
                ) =>
                {
                    VmState::Crashed
                }
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
                    kind: "vm.state".into(),
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
                    ..Default::default()
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
        let client = AgentClient::new(&h.url).map_err(|e| ApiError::internal(e.to_string()))?;
        Ok((h, client))
    }

    // ---- VMs ----------------------------------------------------------------------------

    pub fn find_vm(&self, name: &str) -> Result<Vm, ApiError> {
        validate_name("VM name", name)?;
        self.store.vm(name)?.ok_or_else(|| {
            ApiError::not_found(format!("no VM named '{name}' (see `ferry vm list`)"))
        })
    }

    pub fn vms(&self) -> Result<Vec<Vm>, ApiError> {
        Ok(self.store.vms()?)
    }

    /// A VM with live details from its host's agent (absent if the agent does not answer).
    pub async fn vm_live(&self, name: &str) -> Result<Vm, ApiError> {
        let mut vm = self.find_vm(name)?;
        if let Ok((_, agent)) = self.agent(&vm.host) {
            vm.runtime = agent.vm(name).await.ok();
        }
        Ok(vm)
    }

    async fn create_vm(&self, mut req: CreateVmRequest) -> Result<Vm, ApiError> {
        req.spec.validate()?;
        req.spec.assign_defaults();
        self.resolve_cpu_model(&mut req.spec)?;
        if self.store.vm(&req.spec.name)?.is_some() {
            return Err(ApiError::conflict(format!(
                "a VM named '{}' already exists",
                req.spec.name
            )));
        }
        let (_, agent) = self.agent(&req.host)?;
        let runtime = agent
            .launch(&req.spec)
            .await
            .map_err(|e| e.into_api_error(&format!("host {} could not start the VM", req.host)))?;
        let now = Utc::now();
        let vm = Vm {
            // The agent resolved the machine alias; that concrete type is the VM's for life.
            spec: runtime.spec.clone(),
            host: req.host.clone(),
            state: runtime.state,
            migration: None,
            created_at: now,
            updated_at: now,
            runtime: Some(runtime),
        };
        if !self.store.insert_vm(&vm)? {
            // Lost a race with a concurrent create of the same name: undo ours.
            let _ = agent.remove(&vm.spec.name).await;
            return Err(ApiError::conflict(format!(
                "a VM named '{}' already exists",
                vm.spec.name
            )));
        }
        Ok(vm)
    }

    fn refuse_if_migrating(&self, vm: &Vm) -> Result<(), ApiError> {
        match vm.migration {
            Some(id) => Err(ApiError::conflict(format!(
                "VM '{}' is migrating (migration {id}); wait for it or cancel it",
                vm.spec.name
            ))),
            None => Ok(()),
        }
    }

    async fn stop_vm(&self, name: &str) -> Result<Vm, ApiError> {
        let vm = self.find_vm(name)?;
        self.refuse_if_migrating(&vm)?;
        let (_, agent) = self.agent(&vm.host)?;
        match agent.stop(name).await {
            Ok(_) => {}
            // Already gone on the host (crashed, or host restarted): stopped is the truth.
            Err(ferry_api::client::ClientError::Api(e)) if e.code == ErrorCode::NotFound => {}
            Err(e) => {
                return Err(e.into_api_error(&format!("host {} could not stop the VM", vm.host)))
            }
        }
        self.store.set_vm_state(name, VmState::Stopped)?;
        self.find_vm(name)
    }

    async fn start_vm(&self, name: &str) -> Result<Vm, ApiError> {
        let vm = self.find_vm(name)?;
        self.refuse_if_migrating(&vm)?;
        if vm.state.is_active() {
            return Err(ApiError::conflict(format!(
                "VM '{name}' is already {} on {}",
                vm.state, vm.host
            )));
        }
        let (_, agent) = self.agent(&vm.host)?;
        let rt = agent
            .launch(&vm.spec)
            .await
            .map_err(|e| e.into_api_error(&format!("host {} could not start the VM", vm.host)))?;
        self.store.set_vm_state(name, rt.state)?;
        self.vm_live(name).await
    }

    async fn delete_vm(&self, name: &str) -> Result<String, ApiError> {
        let vm = self.find_vm(name)?;
        self.refuse_if_migrating(&vm)?;
        if vm.state.is_active() {
            return Err(ApiError::conflict(format!(
                "VM '{name}' is {}; stop it first",
                vm.state
            )));
        }
        if let Ok((_, agent)) = self.agent(&vm.host) {
            let _ = agent.remove(name).await;
        }
        self.store.delete_vm(name)?;
        Ok(format!("VM {name}"))
    }

    // ---- migrations ---------------------------------------------------------------------

    pub fn migration(&self, id: Uuid) -> Result<Migration, ApiError> {
        self.store
            .migration(id)?
            .ok_or_else(|| ApiError::not_found(format!("no migration with id {id}")))
    }

    /// Runs the pre-migration checks, refuses on any failure (and on warnings unless
    /// forced) with the report attached, then starts the migration in the background.
    async fn start_migration(
        self: &Arc<Self>,
        actor: &str,
        mut req: MigrateRequest,
    ) -> Result<Migration, ApiError> {
        req.options = req.options.with_defaults(&self.migration_defaults()?);
        req.options.validate()?;
        let vm = self.find_vm(&req.vm)?;
        validate_name("host name", &req.to)?;
        let dest = self.host(&req.to)?;
        if dest.name == vm.host {
            return Err(ApiError::bad_request(format!(
                "VM '{}' already runs on {}; choose another destination",
                vm.spec.name, vm.host
            )));
        }
        self.refuse_if_migrating(&vm)?;
        let report = self.check_migration(&req).await?;
        let details = serde_json::to_value(&report).unwrap_or_default();
        match report.verdict() {
            Verdict::Fail => {
                return Err(ApiError::conflict(format!(
                    "pre-migration checks failed: {}",
                    report.summary(Verdict::Fail)
                ))
                .with_details(details))
            }
            Verdict::Warn if !req.options.force => {
                return Err(ApiError::conflict(format!(
                    "pre-migration checks warn (use --force to go on): {}",
                    report.summary(Verdict::Warn)
                ))
                .with_details(details))
            }
            _ => {}
        }
        let now = Utc::now();
        let m = Migration {
            id: Uuid::new_v4(),
            vm: vm.spec.name.clone(),
            source: vm.host.clone(),
            destination: dest.name.clone(),
            phase: Phase::Pending,
            options: req.options.clone(),
            stream_uri: None,
            addresses: None,
            progress: None,
            report: None,
            error: None,
            created_at: now,
            updated_at: now,
            finished_at: None,
            run: Default::default(),
            attention: None,
        };
        if !self.store.begin_migration(&m)? {
            return Err(ApiError::conflict(format!(
                "VM '{}' is already migrating",
                vm.spec.name
            )));
        }
        self.event(NewEvent {
            actor: actor.to_string(),
            kind: "migration.check".into(),
            vm: Some(m.vm.clone()),
            host: Some(m.destination.clone()),
            migration: Some(m.id),
            outcome: Some(Outcome::Ok),
            message: summary_of_checks(&report),
            data: details,
        });
        crate::orchestrator::spawn(self.clone(), m.clone());
        Ok(m)
    }

    /// What happens to each of the VM's disks (see [`crate::storage_plan`]), from the
    /// hosts' inventories and the image lists of the pools the VM uses.
    pub async fn storage_plan(&self, vm: &Vm, dest: &Host) -> Result<Vec<PlannedCopy>, ApiError> {
        if vm.spec.disks.is_empty() {
            return Ok(Vec::new());
        }
        let source = self.host(&vm.host)?;
        let mut pools: Vec<&str> = vm.spec.disks.iter().map(|d| d.pool.as_str()).collect();
        pools.sort();
        pools.dedup();
        let local: Vec<&str> = pools
            .into_iter()
            .filter(|p| {
                source
                    .inventory
                    .pools
                    .iter()
                    .any(|q| q.name == *p && !q.shared)
            })
            .collect();
        let (mut source_images, mut dest_images) = (Vec::new(), Vec::new());
        let mut dest_pools = dest.inventory.pools.clone();
        if !local.is_empty() {
            let src_agent =
                AgentClient::new(&source.url).map_err(|e| ApiError::internal(e.to_string()))?;
            let dest_agent =
                AgentClient::new(&dest.url).map_err(|e| ApiError::internal(e.to_string()))?;
            // Free space right now, not as of the last heartbeat.
            dest_pools = dest_agent
                .pools()
                .await
                .map_err(|e| e.into_api_error(&format!("destination host {}", dest.name)))?;
            for pool in local {
                source_images.extend(
                    src_agent
                        .disks(pool)
                        .await
                        .map_err(|e| e.into_api_error(&format!("source host {}", source.name)))?,
                );
                if dest_pools.iter().any(|q| q.name == pool) {
                    dest_images.extend(dest_agent.disks(pool).await.map_err(|e| {
                        e.into_api_error(&format!("destination host {}", dest.name))
                    })?);
                }
            }
        }
        plan_storage(
            &vm.spec,
            &StorageView {
                host: &source.name,
                pools: &source.inventory.pools,
                images: &source_images,
            },
            &StorageView {
                host: &dest.name,
                pools: &dest_pools,
                images: &dest_images,
            },
        )
    }

    fn cancel_migration(&self, id: Uuid) -> Result<Migration, ApiError> {
        let m = self.migration(id)?;
        if m.phase.is_terminal() {
            return Err(ApiError::conflict(format!(
                "migration {id} already ended ({})",
                m.phase
            )));
        }
        if matches!(m.phase, Phase::SwitchingOver) {
            return Err(ApiError::conflict(format!(
                "migration {id} is switching over; it can no longer be cancelled"
            )));
        }
        if matches!(m.phase, Phase::PostCopy)
            || m.progress.as_ref().map(|p| p.controller_step) == Some(ControllerStep::Postcopy)
        {
            return Err(ApiError::conflict(format!(
                "migration {id} is in post-copy: the guest runs on {} while part of its memory \
                 is still on {}, so it can only finish, not be cancelled",
                m.destination, m.source
            )));
        }
        self.cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
        Ok(m)
    }

    pub(crate) fn cancel_requested(&self, id: Uuid) -> bool {
        self.cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id)
    }

    pub fn events(&self, q: &EventQuery) -> Result<Vec<Event>, ApiError> {
        Ok(self.store.events(q)?)
    }
}

fn describe(action: &Action) -> (&'static str, Option<String>, Option<String>, Option<Uuid>) {
    match action {
        Action::RegisterHost(r) => ("host.register", None, Some(r.name.clone()), None),
        Action::CreateVm(r) => (
            "vm.create",
            Some(r.spec.name.clone()),
            Some(r.host.clone()),
            None,
        ),
        Action::StopVm(n) => ("vm.stop", Some(n.clone()), None, None),
        Action::StartVm(n) => ("vm.start", Some(n.clone()), None, None),
        Action::DeleteVm(n) => ("vm.delete", Some(n.clone()), None, None),
        Action::StartMigration(r) => (
            "migration.request",
            Some(r.vm.clone()),
            Some(r.to.clone()),
            None,
        ),
        Action::CheckMigration(r) => (
            "migration.check",
            Some(r.vm.clone()),
            Some(r.to.clone()),
            None,
        ),
        Action::CancelMigration(id) => ("migration.cancel", None, None, Some(*id)),
        Action::SetBaseline(_) => ("cluster.baseline", None, None, None),
        Action::SetMigrationDefaults(_) => ("cluster.migration_defaults", None, None, None),
        Action::SetMaintenance { host, .. } => ("host.maintenance", None, Some(host.clone()), None),
        Action::CreateDisk { host, .. } => ("disk.create", None, Some(host.clone()), None),
        Action::DeleteDisk { host, .. } => ("disk.delete", None, Some(host.clone()), None),
    }
}

fn summary_of_checks(r: &CheckReport) -> String {
    let count = |v| r.with(v).len();
    format!(
        "checks for VM {} from {} to {}: {} ({} pass, {} warn, {} fail) in {} ms",
        r.vm,
        r.source,
        r.destination,
        r.verdict(),
        count(Verdict::Pass),
        count(Verdict::Warn),
        count(Verdict::Fail),
        r.elapsed_ms
    )
}

fn summary(outcome: &ActionOutcome) -> String {
    match outcome {
        // Registrations are logged by register_host; this is the maintenance switch.
        ActionOutcome::Host(h) if h.maintenance => format!("host {} is in maintenance", h.name),
        ActionOutcome::Host(h) => format!("host {} takes VMs (not in maintenance)", h.name),
        ActionOutcome::Vm(v) => format!("VM {} is {} on {}", v.spec.name, v.state, v.host),
        ActionOutcome::Migration(m) => format!(
            "migration {} of VM {} from {} to {}: {}",
            m.id, m.vm, m.source, m.destination, m.phase
        ),
        ActionOutcome::Deleted(n) => format!("{n} deleted"),
        ActionOutcome::Checks(r) => summary_of_checks(r),
        ActionOutcome::Cluster(c) => format!(
            "CPU baseline set to {} ({})",
            match &c.baseline_setting {
                BaselineSetting::Auto => "auto".to_string(),
                BaselineSetting::Fixed(m) => m.clone(),
            },
            c.baseline_model
                .as_deref()
                .unwrap_or("no model common to every host")
        ),
        ActionOutcome::Disk(d) => format!(
            "disk {} created in pool {} ({} MiB)",
            d.name,
            d.pool,
            d.virtual_size >> 20
        ),
    }
}
