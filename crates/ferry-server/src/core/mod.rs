//! The server core: actions in, outcomes out, every change in the event log.
//!
//! [`Action`] is the one enum between the HTTP front and the core; [`Server::handle`]
//! runs it and logs it with its actor and outcome. The work is split by what it is about:
//! [`hosts`] (registration, heartbeats, reconciliation), [`vms`] (create, start, stop,
//! delete, disks — all admitted by [`crate::admission`] inside the store's claim
//! transactions), [`migrations`] (admission of a migration, cancel, resolve; the runs
//! themselves are the [`crate::orchestrator`]'s).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferry_api::*;
use uuid::Uuid;

use crate::orchestrator::{HttpAgents, Orchestrator, OrchestratorConfig};
use crate::store::{load_or_create_audit_key, NewEvent, Store, StoreError};

mod audit;
mod auth;
mod balancing;
mod estimating;
mod evacuation;
mod failover;
mod hosts;
mod identities;
mod loads;
mod lock;
mod migrations;
mod placing;
mod query;
mod queueing;
mod scheduling;
mod vms;

pub use auth::{authorize, Caller, Need};
pub use lock::DataDirLock;
pub use query::{Query, QueryOutcome};

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// A host with no heartbeat for this long is disconnected.
    pub host_timeout: Duration,
    /// How the orchestrator polls, waits and retries (and, for fault tests, holds).
    pub orchestrator: OrchestratorConfig,
    pub ready_file: Option<PathBuf>,
    /// No TLS, no identities, everyone may do everything: development only.
    pub insecure: bool,
    /// How long the host certificates it issues live.
    pub host_cert_validity: Duration,
    /// High availability's timing (lease, margins).
    pub ha: crate::ha::HaConfig,
}

/// Every request that changes state. The HTTP layer builds these; tests can too.
/// [`Action::need`] says who may ask; [`Server::handle`] checks it first.
#[derive(Debug, Clone)]
pub enum Action {
    RegisterHost(Box<HostRegistration>),
    /// A joining agent trades its join token for a certificate.
    Join(JoinRequest),
    CreateJoinToken(JoinTokenRequest),
    RenewCertificate {
        host: String,
        req: RenewRequest,
    },
    /// Forget a host and revoke its certificates.
    RemoveHost(String),
    /// Start or finish replacing the cluster CA.
    RotateCa(RotateRequest),
    AddRule(Rule),
    DeleteRule(String),
    AddUser(CreateUserRequest),
    RemoveUser(String),
    NewUserToken(String),
    CreateVm(CreateVmRequest),
    StopVm(String),
    StartVm(String),
    DeleteVm(String),
    StartMigration(MigrateRequest),
    CheckMigration(MigrateRequest),
    CancelMigration(Uuid),
    /// An operator settles a migration that needs attention.
    ResolveMigration {
        id: Uuid,
        req: ResolveRequest,
    },
    /// Mark a host for maintenance and evacuate it (or only plan, `dry_run`).
    EnterMaintenance {
        host: String,
        req: EnterMaintenanceRequest,
    },
    /// Stop a host's evacuation: drop what waits, roll back what runs.
    CancelMaintenance(String),
    /// The host takes VMs again.
    ExitMaintenance(String),
    SetBaseline(BaselineSetting),
    SetMigrationDefaults(MigrationOptions),
    /// Change how many migrations may run at once.
    SetLimits(LimitsUpdate),
    /// Change the balancer's settings.
    SetBalance(BalanceSettingsUpdate),
    /// Run the balancer once now (in its mode, or the one given).
    RunBalance(Option<BalanceMode>),
    /// Request a recommended migration.
    ApplyRecommendation(Uuid),
    DismissRecommendation(Uuid),
    /// Add a scheduled operation.
    AddSchedule(ScheduleRequest),
    /// Remove a schedule (its runs stay on the record).
    RemoveSchedule(String),
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

impl Action {
    /// Who may ask for this.
    pub fn need(&self) -> Need {
        use Role::*;
        match self {
            Action::RegisterHost(reg) => Need::HostSelf(reg.name.clone()),
            Action::RenewCertificate { host, .. } => Need::HostSelf(host.clone()),
            // The token is the credential; the core checks it.
            Action::Join(_) => Need::Public,
            Action::CreateVm(_)
            | Action::StopVm(_)
            | Action::StartVm(_)
            | Action::DeleteVm(_)
            | Action::StartMigration(_)
            | Action::CheckMigration(_)
            | Action::CancelMigration(_)
            | Action::ResolveMigration { .. }
            | Action::CreateDisk { .. }
            | Action::DeleteDisk { .. }
            | Action::AddRule(_)
            | Action::DeleteRule(_)
            | Action::ApplyRecommendation(_)
            | Action::DismissRecommendation(_) => Need::Role(Operator),
            Action::EnterMaintenance { .. }
            | Action::CancelMaintenance(_)
            | Action::ExitMaintenance(_)
            | Action::SetBaseline(_)
            | Action::SetMigrationDefaults(_)
            | Action::SetLimits(_)
            | Action::SetBalance(_)
            | Action::RunBalance(_)
            | Action::AddSchedule(_)
            | Action::RemoveSchedule(_)
            | Action::CreateJoinToken(_)
            | Action::RemoveHost(_)
            | Action::RotateCa(_)
            | Action::AddUser(_)
            | Action::RemoveUser(_)
            | Action::NewUserToken(_) => Need::Role(Admin),
        }
    }
}

// One per request, moved straight into the JSON answer: boxing the big variants buys
// nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum ActionOutcome {
    Rule(Rule),
    CaRotation(CaRotation),
    UserToken(UserToken),
    JoinToken(JoinTokenResponse),
    Certificate(IssuedCertificate),
    Host(Host),
    Vm(Vm),
    Migration(Migration),
    Deleted(String),
    Disk(DiskImage),
    Checks(CheckReport),
    Cluster(ClusterInfo),
    Limits(MigrationLimits),
    Evacuation(EvacuationPlan),
    Operation(Operation),
    Balance(BalanceSettings),
    BalanceRun(BalanceRun),
    Recommendation(Recommendation),
    Schedule(Schedule),
}

pub struct Server {
    pub config: ServerConfig,
    /// The CA and the server's certificate; None when the server runs with `--insecure`.
    pub pki: Option<Arc<crate::pki::ServerPki>>,
    /// The server's TLS listener settings and certificate, replaced when the CA rotates;
    /// None with `--insecure`.
    pub tls: Option<ServerTls>,
    /// Requests per caller (see [`crate::api::IDENTIFIED_RATE`]).
    pub limiter: ferry_api::rate::RateLimiter,
    pub store: Arc<Store>,
    pub orchestrator: Arc<Orchestrator>,
    /// Serialises what attaches or deletes disk images (claims and deletes), so an image
    /// is never deleted between the ownership check and a launch that attaches it.
    pub(crate) disk_ops: tokio::sync::Mutex<()>,
    /// Wakes the migration queue's dispatcher (see [`queueing`]).
    pub(crate) queue_wake: tokio::sync::Notify,
    /// Wakes the scheduler when a schedule is added or removed (see [`scheduling`]).
    pub(crate) schedule_wake: tokio::sync::Notify,
    /// The best rate a probe measured to or from each host, bytes/s.
    pub(crate) links: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// The last probe of each (source, destination) pair and when it was taken.
    #[allow(clippy::type_complexity)]
    pub(crate) probes: std::sync::Mutex<
        std::collections::HashMap<(String, String), (std::time::Instant, ProbeSendResponse)>,
    >,
    /// The bandwidth cap last given to each running migration by the fair share.
    pub(crate) applied_shares: std::sync::Mutex<std::collections::HashMap<Uuid, u64>>,
    /// The hosts' and VMs' recent load, from the heartbeats (see [`crate::load_book`]).
    pub(crate) load: std::sync::Mutex<crate::load_book::LoadBook>,
    /// Each host's HA judgement and its peers' views (see [`failover`]).
    pub(crate) ha: std::sync::Mutex<failover::HaBook>,
    /// Held for the server's life: a second server on the same data directory refuses.
    _lock: DataDirLock,
}

/// The server's side of TLS: what new connections get (whom to trust, which certificate).
pub struct ServerTls {
    pub slot: Arc<ferry_pki::TlsSlot>,
    pub cert: Arc<ferry_pki::ReloadableCert>,
}

impl ServerTls {
    fn new(m: &ferry_pki::Material) -> Result<ServerTls, ferry_pki::PkiError> {
        let cert = ferry_pki::ReloadableCert::new(m)?;
        let config =
            ferry_pki::server_config(&m.ca_pem, cert.clone(), ferry_pki::ClientCerts::Optional)?;
        Ok(ServerTls {
            slot: ferry_pki::TlsSlot::new(config),
            cert,
        })
    }

    /// New connections trust `m.ca_pem` and are served `m`'s certificate.
    pub fn update(&self, m: &ferry_pki::Material) -> Result<(), ferry_pki::PkiError> {
        self.cert.replace(m)?;
        let config = ferry_pki::server_config(
            &m.ca_pem,
            self.cert.clone(),
            ferry_pki::ClientCerts::Optional,
        )?;
        self.slot.replace(config);
        Ok(())
    }
}

/// Why a server could not open its data directory.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiSetupError),
    #[error("TLS: {0}")]
    Tls(#[from] ferry_pki::PkiError),
}

impl Server {
    /// Locks the data directory (refusing if another server holds it), opens the store
    /// and the orchestrator with the real agents.
    pub fn open(config: ServerConfig) -> Result<Server, OpenError> {
        let lock = DataDirLock::acquire(&config.data_dir, &config.listen.to_string())?;
        let store = Arc::new(
            Store::open(&config.data_dir.join("ferry.db"))?
                .with_audit_key(load_or_create_audit_key(&config.data_dir)?),
        );
        let pki = if config.insecure {
            None
        } else {
            Some(Arc::new(crate::pki::load(
                &config.data_dir,
                config.host_cert_validity,
            )?))
        };
        let tls = match &pki {
            Some(p) => Some(ServerTls::new(&p.material())?),
            None => None,
        };
        let agents = Arc::new(HttpAgents::new(store.clone(), pki.clone()));
        let orchestrator = Arc::new(Orchestrator::new(
            store.clone(),
            agents,
            config.orchestrator.clone(),
        ));
        Ok(Server {
            config,
            pki,
            tls,
            limiter: Default::default(),
            store,
            orchestrator,
            disk_ops: tokio::sync::Mutex::new(()),
            queue_wake: tokio::sync::Notify::new(),
            schedule_wake: tokio::sync::Notify::new(),
            links: Default::default(),
            probes: Default::default(),
            applied_shares: Default::default(),
            load: Default::default(),
            ha: Default::default(),
            _lock: lock,
        })
    }

    pub fn event(&self, e: NewEvent) {
        if let Err(err) = self.store.append_event(&e) {
            tracing::error!("cannot append to the event log: {err}");
        }
    }

    /// Checks that `caller` may ask for `action`, handles it and logs it with the caller
    /// as its actor (heartbeats only when something changed; refusals always).
    pub async fn handle(
        self: &Arc<Self>,
        caller: &Caller,
        action: Action,
    ) -> Result<ActionOutcome, ApiError> {
        let (kind, vm, host, migration) = describe(&action);
        let quiet = matches!(action, Action::RegisterHost(_));
        let actor = caller.actor();
        let actor = actor.as_str();
        if !quiet {
            // No audit record, no action (see core/audit.rs): refusals included, so
            // who tried what they may not do is on the record too.
            self.record_request(actor, &kind, &vm, &host, migration)?;
        }
        let result = match authorize(caller, &action.need()) {
            Ok(()) => self.dispatch(actor, action).await,
            Err(e) => Err(e),
        };
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
                kind,
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
            Action::RegisterHost(reg) => self.register_host(actor, *reg).map(ActionOutcome::Host),
            Action::Join(req) => self.join(&req).map(ActionOutcome::Certificate),
            Action::CreateJoinToken(req) => self
                .create_join_token(actor, &req)
                .map(ActionOutcome::JoinToken),
            Action::RenewCertificate { host, req } => self
                .renew_certificate(&host, &req)
                .map(ActionOutcome::Certificate),
            Action::RemoveHost(name) => self.remove_host(&name).map(ActionOutcome::Deleted),
            Action::RotateCa(req) => self.rotate_ca(&req).map(ActionOutcome::CaRotation),
            Action::AddUser(req) => self.add_user(&req).map(ActionOutcome::UserToken),
            Action::RemoveUser(name) => self.remove_user(&name).map(ActionOutcome::Deleted),
            Action::NewUserToken(name) => self.new_user_token(&name).map(ActionOutcome::UserToken),
            Action::CreateVm(mut req) => {
                if req.host.is_none() {
                    let place = PlacementRequest {
                        vm: None,
                        spec: Some(req.spec.clone()),
                    };
                    req.host = Some(self.place_or_refuse(actor, &place)?);
                }
                self.create_vm(req).await.map(ActionOutcome::Vm)
            }
            Action::AddRule(rule) => self.add_rule(&rule).map(ActionOutcome::Rule),
            Action::DeleteRule(name) => self.delete_rule(&name).map(ActionOutcome::Deleted),
            Action::StopVm(name) => self.stop_vm(&name).await.map(ActionOutcome::Vm),
            Action::StartVm(name) => self.start_vm(&name).await.map(ActionOutcome::Vm),
            Action::DeleteVm(name) => self.delete_vm(&name).await.map(ActionOutcome::Deleted),
            Action::StartMigration(mut req) => {
                self.place_destination(actor, &mut req)?;
                self.start_migration(actor, req, None)
                    .await
                    .map(ActionOutcome::Migration)
            }
            Action::CheckMigration(mut req) => {
                self.place_destination(actor, &mut req)?;
                self.check_migration(&req).await.map(ActionOutcome::Checks)
            }
            Action::SetBaseline(s) => self.set_baseline(s).map(ActionOutcome::Cluster),
            Action::SetMigrationDefaults(o) => {
                self.set_migration_defaults(o).map(ActionOutcome::Cluster)
            }
            Action::SetLimits(u) => self.set_limits(&u).map(ActionOutcome::Limits),
            Action::SetBalance(u) => self.set_balance(&u).map(ActionOutcome::Balance),
            Action::RunBalance(mode) => self
                .balance_run(actor, mode)
                .await
                .map(ActionOutcome::BalanceRun),
            Action::ApplyRecommendation(id) => self
                .apply_recommendation(actor, id)
                .await
                .map(ActionOutcome::Migration),
            Action::DismissRecommendation(id) => self
                .dismiss_recommendation(actor, id)
                .map(ActionOutcome::Recommendation),
            Action::AddSchedule(req) => self.add_schedule(actor, &req).map(ActionOutcome::Schedule),
            Action::RemoveSchedule(name) => self.remove_schedule(&name).map(ActionOutcome::Deleted),
            Action::EnterMaintenance { host, req } => self
                .enter_maintenance(actor, &host, &req)
                .await
                .map(ActionOutcome::Evacuation),
            Action::CancelMaintenance(host) => self
                .cancel_maintenance(actor, &host)
                .map(ActionOutcome::Operation),
            Action::ExitMaintenance(host) => self.exit_maintenance(&host).map(ActionOutcome::Host),
            Action::CancelMigration(id) => self
                .cancel_migration(id, actor)
                .map(ActionOutcome::Migration),
            Action::ResolveMigration { id, req } => self
                .orchestrator
                .resolve(id, &req, actor)
                .await
                .map(ActionOutcome::Migration),
            Action::CreateDisk { host, pool, req } => self
                .create_disk(&host, &pool, &req)
                .await
                .map(ActionOutcome::Disk),
            Action::DeleteDisk { host, pool, disk } => self
                .delete_disk(&host, &pool, &disk)
                .await
                .map(ActionOutcome::Deleted),
        }
    }
}

impl Server {
    /// A migration without a destination gets one from placement (its own host excluded).
    fn place_destination(&self, actor: &str, req: &mut MigrateRequest) -> Result<(), ApiError> {
        if req.to.is_none() {
            validate_name("VM name", &req.vm)?;
            let place = PlacementRequest {
                vm: Some(req.vm.clone()),
                spec: None,
            };
            req.to = Some(self.place_or_refuse(actor, &place)?);
        }
        Ok(())
    }
}

fn describe(action: &Action) -> (EventKind, Option<String>, Option<String>, Option<Uuid>) {
    use EventKind as K;
    match action {
        Action::RegisterHost(r) => (K::HostRegister, None, Some(r.name.clone()), None),
        Action::Join(_) => (K::HostJoin, None, None, None),
        Action::CreateJoinToken(r) => (K::HostJoinToken, None, Some(r.host.clone()), None),
        Action::RenewCertificate { host, .. } => {
            (K::HostCertificate, None, Some(host.clone()), None)
        }
        Action::RemoveHost(h) => (K::HostRemove, None, Some(h.clone()), None),
        Action::RotateCa(_) => (K::CaRotate, None, None, None),
        Action::AddRule(_) => (K::RuleAdd, None, None, None),
        Action::DeleteRule(_) => (K::RuleDelete, None, None, None),
        Action::AddUser(_) => (K::UserAdd, None, None, None),
        Action::RemoveUser(_) => (K::UserRemove, None, None, None),
        Action::NewUserToken(_) => (K::UserToken, None, None, None),
        Action::CreateVm(r) => (K::VmCreate, Some(r.spec.name.clone()), r.host.clone(), None),
        Action::StopVm(n) => (K::VmStop, Some(n.clone()), None, None),
        Action::StartVm(n) => (K::VmStart, Some(n.clone()), None, None),
        Action::DeleteVm(n) => (K::VmDelete, Some(n.clone()), None, None),
        Action::StartMigration(r) => (K::MigrationRequest, Some(r.vm.clone()), r.to.clone(), None),
        Action::CheckMigration(r) => (K::MigrationCheck, Some(r.vm.clone()), r.to.clone(), None),
        Action::CancelMigration(id) => (K::MigrationCancel, None, None, Some(*id)),
        Action::ResolveMigration { id, .. } => (K::MigrationResolve, None, None, Some(*id)),
        Action::SetBaseline(_) => (K::ClusterBaseline, None, None, None),
        Action::SetMigrationDefaults(_) => (K::ClusterMigrationDefaults, None, None, None),
        Action::SetLimits(_) => (K::ClusterLimits, None, None, None),
        Action::SetBalance(_) | Action::RunBalance(_) => (K::ClusterBalance, None, None, None),
        Action::ApplyRecommendation(_) => (K::RecommendationApply, None, None, None),
        Action::DismissRecommendation(_) => (K::RecommendationDismiss, None, None, None),
        Action::AddSchedule(r) => {
            let vm = match &r.task {
                ScheduleTask::Migrate { vm, .. } => Some(vm.clone()),
                _ => None,
            };
            (K::ScheduleAdd, vm, r.task.host().map(str::to_string), None)
        }
        Action::RemoveSchedule(_) => (K::ScheduleRemove, None, None, None),
        Action::EnterMaintenance { host, .. }
        | Action::CancelMaintenance(host)
        | Action::ExitMaintenance(host) => (K::HostMaintenance, None, Some(host.clone()), None),
        Action::CreateDisk { host, .. } => (K::DiskCreate, None, Some(host.clone()), None),
        Action::DeleteDisk { host, .. } => (K::DiskDelete, None, Some(host.clone()), None),
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

/// One line for the event log. Never includes a secret (tokens are shown once, to the
/// caller, and only their hashes are kept).
fn summary(outcome: &ActionOutcome) -> String {
    match outcome {
        ActionOutcome::Rule(r) => format!(
            "rule {} ({:?}) on {}",
            r.name,
            r.strength,
            r.vms().join(", ")
        ),
        ActionOutcome::CaRotation(r) => format!(
            "CA rotation {}: signing CA {}, {} CA(s) trusted, {} host(s) still on the old CA",
            r.state,
            &r.signing[..r.signing.len().min(16)],
            r.trusted.len(),
            r.pending_hosts.len()
        ),
        ActionOutcome::UserToken(t) => format!(
            "user {} ({}) has a new API token; {} in all",
            t.user.name, t.user.role, t.user.tokens
        ),
        ActionOutcome::JoinToken(t) => format!(
            "join token for host {} made, valid until {}",
            t.host,
            t.expires_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        ActionOutcome::Certificate(c) => format!(
            "certificate issued to host {}, valid until {}",
            c.host,
            chrono::DateTime::from_timestamp(c.not_after, 0)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_else(|| c.not_after.to_string())
        ),
        // Registrations are logged by register_host; this is the maintenance switch.
        ActionOutcome::Host(h) if h.maintenance => format!("host {} is in maintenance", h.name),
        ActionOutcome::Host(h) => format!("host {} takes VMs (not in maintenance)", h.name),
        ActionOutcome::Vm(v) => format!("VM {} is {} on {}", v.spec.name, v.state, v.host),
        ActionOutcome::Migration(m) => format!(
            "migration {} of VM {} from {} to {}: {}",
            m.id, m.vm, m.source, m.destination, m.phase
        ),
        ActionOutcome::Deleted(n) => format!("{n} deleted"),
        ActionOutcome::Balance(b) => format!(
            "balancer {} at level {} (minimum stay {} min, every {} s, at most {} moves)",
            b.mode, b.level, b.min_stay_minutes, b.interval_s, b.max_moves
        ),
        ActionOutcome::BalanceRun(r) => format!(
            "balancing run: {} move(s), {} recommendation(s), {} migration(s) requested{}",
            r.plan.moves.len(),
            r.recommendations.len(),
            r.migrations.len(),
            if r.refused.is_empty() {
                String::new()
            } else {
                format!("; refused: {}", r.refused.join("; "))
            }
        ),
        ActionOutcome::Recommendation(r) => format!(
            "recommendation {} ({} from {} to {}) {}",
            r.id, r.planned.vm, r.planned.from, r.planned.to, r.state
        ),
        ActionOutcome::Checks(r) => summary_of_checks(r),
        ActionOutcome::Schedule(s) => format!(
            "schedule {} added: {}, {}; missed runs: {}; next fire {}",
            s.name,
            s.task,
            s.when,
            s.missed,
            s.next_fire
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_else(|| "none".into())
        ),
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
        ActionOutcome::Limits(l) => format!(
            "migration limits: {} out and {} in per host, {} per pair of hosts, {} in the cluster",
            l.per_host_outgoing, l.per_host_incoming, l.per_pair, l.cluster
        ),
        ActionOutcome::Evacuation(p) => match &p.operation {
            Some(op) => format!(
                "host {} in maintenance; evacuation {} of {} VM(s) started (estimate {:.0} s)",
                p.host,
                op.id,
                p.items.len(),
                p.estimate_s
            ),
            None => format!(
                "dry run: evacuating host {} would move {} of {} VM(s) in about {:.0} s",
                p.host,
                p.items.iter().filter(|i| i.destination.is_some()).count(),
                p.items.len(),
                p.estimate_s
            ),
        },
        ActionOutcome::Operation(op) => {
            format!("{} {} of host {}: {}", op.kind, op.id, op.host, op.state)
        }
        ActionOutcome::Disk(d) => format!(
            "disk {} created in pool {} ({} MiB)",
            d.name,
            d.pool,
            d.virtual_size >> 20
        ),
    }
}
