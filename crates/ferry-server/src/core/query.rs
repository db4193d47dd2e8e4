//! Reads, as one enum beside [`super::Action`]: each says who may ask
//! ([`Query::need`]), and [`Server::query`] checks that before reading anything.

use ferry_api::*;
use uuid::Uuid;

use super::{authorize, Caller, Need, Server};

#[derive(Debug, Clone)]
pub enum Query {
    Health,
    /// The CA bundle (what a joining agent fetches and checks against its token).
    CaBundle,
    WhoAmI,
    Hosts,
    Host(String),
    Vms,
    Vm(String),
    /// A VM's console can show what the guest prints (passwords on a login prompt, keys
    /// in a boot log): operators only.
    Console {
        vm: String,
        bytes: u64,
    },
    Migrations,
    Migration(Uuid),
    /// How many migrations may run at once.
    Limits,
    Operations,
    Operation(Uuid),
    Events(EventQuery),
    Cluster,
    Disks {
        host: String,
        pool: String,
    },
    Users,
    /// Where a CA rotation stands.
    CaRotation,
    Rules,
    /// The balancer's settings.
    Balance,
    /// What the balancer would do now (moves nothing).
    BalancePlan(BalancePlanRequest),
    Recommendations,
    /// Every schedule, with its next fire time and latest run.
    Schedules,
    /// A host's load history (the last hour at most).
    HostLoad(String),
    /// A VM's load history.
    VmLoad(String),
    /// Where a VM would go, every candidate scored (`--explain`).
    Placement(PlacementRequest),
    /// The audit trail's signed checkpoints and the key that signs them.
    Checkpoints,
    /// Sign the event log's head now (for `ferry events verify/export`). It adds a
    /// checkpoint but changes no cluster state, so readers may ask for it.
    CheckpointNow,
}

// One per request, moved straight into the JSON answer: boxing the big variants buys
// nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum QueryOutcome {
    CaRotation(CaRotation),
    Rules(Vec<Rule>),
    Placement(PlacementReport),
    Checkpoints(ferry_api::audit::Checkpoints),
    Checkpoint(Option<ferry_api::audit::Checkpoint>),
    Health(serde_json::Value),
    CaBundle(CaBundle),
    WhoAmI(WhoAmI),
    Hosts(Vec<Host>),
    Host(Host),
    Vms(Vec<Vm>),
    Vm(Vm),
    Console(ConsoleTail),
    Migrations(Vec<Migration>),
    Migration(Migration),
    Limits(MigrationLimits),
    Operations(Vec<Operation>),
    Operation(Operation),
    Events(Vec<Event>),
    Cluster(ClusterInfo),
    Disks(Vec<DiskImage>),
    Users(Vec<User>),
    Load(LoadHistory),
    Balance(BalanceSettings),
    BalancePlan(BalancePlanView),
    Recommendations(Vec<Recommendation>),
    Schedules(Vec<Schedule>),
}

impl Query {
    pub fn need(&self) -> Need {
        match self {
            Query::Health | Query::CaBundle | Query::WhoAmI => Need::Public,
            Query::Console { .. } => Need::Role(Role::Operator),
            Query::Users | Query::CaRotation => Need::Role(Role::Admin),
            Query::Hosts
            | Query::Host(_)
            | Query::Vms
            | Query::Vm(_)
            | Query::Migrations
            | Query::Migration(_)
            | Query::Limits
            | Query::Operations
            | Query::Operation(_)
            | Query::Events(_)
            | Query::Cluster
            | Query::Disks { .. }
            | Query::Rules
            | Query::HostLoad(_)
            | Query::Balance
            | Query::BalancePlan(_)
            | Query::Recommendations
            | Query::Schedules
            | Query::VmLoad(_)
            | Query::Placement(_)
            | Query::Checkpoints
            | Query::CheckpointNow => Need::Role(Role::Viewer),
        }
    }
}

impl Server {
    /// Answers a read if `caller` may ask it.
    pub async fn query(&self, caller: &Caller, q: Query) -> Result<QueryOutcome, ApiError> {
        authorize(caller, &q.need())?;
        Ok(match q {
            Query::Health => QueryOutcome::Health(serde_json::json!({
                "status": "ok",
                "version": env!("CARGO_PKG_VERSION"),
                "secure": self.pki.is_some(),
            })),
            Query::CaBundle => QueryOutcome::CaBundle(self.ca_bundle()?),
            Query::WhoAmI => QueryOutcome::WhoAmI(WhoAmI {
                actor: caller.actor(),
                role: caller.role(),
            }),
            Query::Hosts => QueryOutcome::Hosts(self.hosts()?),
            Query::Host(name) => QueryOutcome::Host(self.host(&name)?),
            Query::Vms => QueryOutcome::Vms(self.vms()?),
            Query::Vm(name) => QueryOutcome::Vm(self.vm_live(&name).await?),
            Query::Console { vm, bytes } => {
                let found = self.find_vm(&vm)?;
                let (_, agent) = self.agent(&found.host)?;
                QueryOutcome::Console(
                    agent
                        .console(&vm, bytes)
                        .await
                        .map_err(|e| e.into_api_error(&format!("host {}", found.host)))?,
                )
            }
            Query::Migrations => {
                QueryOutcome::Migrations(self.with_standing(self.store.migrations(200)?)?)
            }
            Query::Limits => QueryOutcome::Limits(self.limits()?),
            Query::Operations => QueryOutcome::Operations(self.operations()?),
            Query::Operation(id) => QueryOutcome::Operation(self.operation(id)?),
            Query::Migration(id) => QueryOutcome::Migration(self.migration(id)?),
            Query::Events(q) => QueryOutcome::Events(self.events(&q)?),
            Query::Cluster => QueryOutcome::Cluster(self.cluster_info()?),
            Query::Disks { host, pool } => {
                let (_, agent) = self.agent(&host)?;
                QueryOutcome::Disks(
                    agent
                        .disks(&pool)
                        .await
                        .map_err(|e| e.into_api_error(&format!("host {host}")))?,
                )
            }
            Query::Users => QueryOutcome::Users(self.store.users()?),
            Query::CaRotation => QueryOutcome::CaRotation(self.ca_rotation()?),
            Query::Rules => QueryOutcome::Rules(self.store.rules()?),
            Query::Balance => QueryOutcome::Balance(self.balance_settings()?),
            Query::BalancePlan(r) => QueryOutcome::BalancePlan(self.balance_plan(r.level)?),
            Query::Recommendations => QueryOutcome::Recommendations(self.recommendations()?),
            Query::Schedules => QueryOutcome::Schedules(self.schedules()?),
            Query::HostLoad(name) => QueryOutcome::Load(self.host_load(&name)?),
            Query::VmLoad(name) => QueryOutcome::Load(self.vm_load(&name)?),
            Query::Placement(req) => QueryOutcome::Placement(self.placement(&req)?),
            Query::Checkpoints => QueryOutcome::Checkpoints(self.checkpoints()?),
            Query::CheckpointNow => QueryOutcome::Checkpoint(self.checkpoint_now()?),
        })
    }
}
