//! The server's HTTP API: routes turn requests into [`Action`]s or [`Query`]s. No logic
//! here, and no authorization either: the core checks each action's and query's
//! [`Need`](crate::core::Need). This layer only authenticates (an API token, or the TLS
//! client certificate [`ferry_pki::serve`] attached) and refuses callers with no
//! credentials at all before reading their body.
//!
//! [`routes`] is the table the router is built from; each entry states the role it needs,
//! and a test walks the table calling every route as nobody and as each role.
//!
//! ```text
//! GET    /v1/health                   public
//! GET    /v1/ca                       public: CaBundle
//! GET    /v1/ca/rotation              CaRotation (admin)
//! POST   /v1/ca/rotate                RotateRequest -> CaRotation (admin): start / finish
//! GET    /v1/whoami                   public: WhoAmI
//! GET    /v1/rules                    [Rule]
//! POST   /v1/rules                    Rule -> Rule (operator)
//! DELETE /v1/rules/{name}             (operator)
//! POST   /v1/placement                PlacementRequest -> PlacementReport (moves nothing)
//! POST   /v1/join                     JoinRequest -> IssuedCertificate (the token is the credential)
//! POST   /v1/hosts/join-tokens        JoinTokenRequest -> JoinTokenResponse (admin)
//! POST   /v1/hosts/{name}/certificate RenewRequest -> IssuedCertificate (that host)
//! DELETE /v1/hosts/{name}             revokes its certificates (admin)
//! GET    /v1/users                    [User] (admin)
//! POST   /v1/users                    CreateUserRequest -> UserToken (admin)
//! DELETE /v1/users/{name}             (admin)
//! POST   /v1/users/{name}/tokens      UserToken (admin)
//! GET    /v1/hosts                    [Host]
//! POST   /v1/hosts                    HostRegistration -> Host      (agents' heartbeat)
//! GET    /v1/hosts/{name}             Host
//! GET    /v1/vms                      [Vm]
//! POST   /v1/vms                      CreateVmRequest -> Vm
//! GET    /v1/vms/{name}               Vm (with live runtime from its agent)
//! DELETE /v1/vms/{name}               stopped VMs only
//! POST   /v1/vms/{name}/stop          Vm
//! POST   /v1/vms/{name}/start         Vm
//! GET    /v1/vms/{name}/console       ConsoleTail (?bytes=N)
//! GET    /v1/migrations               [Migration] newest first
//! POST   /v1/migrations               MigrateRequest -> Migration (202; runs in background;
//!                                      409 with the check report in `details` if refused)
//! POST   /v1/migrations/check         MigrateRequest -> CheckReport (migrates nothing)
//! POST   /v1/hosts/{name}/maintenance/enter EnterMaintenanceRequest -> EvacuationPlan
//!                                      (marks the host and evacuates it; dry_run: plan only)
//! POST   /v1/hosts/{name}/maintenance/cancel Operation (drop waiting, roll back running)
//! POST   /v1/hosts/{name}/maintenance/exit Host (takes VMs again)
//! GET    /v1/hosts/{name}/load        LoadHistory (the last hour, with 1/15/60 min windows)
//! GET    /v1/vms/{name}/load          LoadHistory
//! GET    /v1/operations               [Operation] newest first
//! GET    /v1/operations/{id}          Operation (with progress per VM and the ETA)
//! GET    /v1/cluster                  ClusterInfo (CPU baseline)
//! POST   /v1/cluster/baseline         BaselineSetting -> ClusterInfo
//! POST   /v1/cluster/migration-defaults MigrationOptions -> ClusterInfo
//! GET    /v1/cluster/balance          BalanceSettings
//! POST   /v1/cluster/balance          BalanceSettingsUpdate -> BalanceSettings (admin)
//! POST   /v1/cluster/balance/plan     BalancePlanRequest -> BalancePlanView (moves nothing)
//! POST   /v1/cluster/balance/run      {mode?} -> BalanceRun (admin): one run now
//! GET    /v1/recommendations          [Recommendation] newest first
//! POST   /v1/recommendations/{id}/apply   Migration (operator)
//! POST   /v1/recommendations/{id}/dismiss Recommendation (operator)
//! GET    /v1/schedules                [Schedule] (next fire time, latest run and outcome)
//! POST   /v1/schedules                ScheduleRequest -> Schedule (admin)
//! DELETE /v1/schedules/{name}         (admin; its runs stay on the record)
//! GET    /v1/cluster/limits           MigrationLimits (how many migrations run at once)
//! POST   /v1/cluster/limits           LimitsUpdate -> MigrationLimits
//! GET    /v1/migrations/{id}          Migration
//! POST   /v1/migrations/{id}/cancel   Migration
//! POST   /v1/migrations/{id}/resolve  ResolveRequest -> Migration (needs_attention only)
//! GET    /v1/events                   [Event] (?vm= &migration= &kind= &after= &limit=;
//!                                      with after=, the oldest `limit` after it)
//! GET    /v1/events/checkpoints       Checkpoints {public_key, checkpoints} oldest first
//! POST   /v1/events/checkpoints       Checkpoint | null: sign the log's head now (verify,
//!                                      export); a query: it changes no cluster state
//! POST   /v1/events/checkpoints       Checkpoint | null
//! GET    /v1/hosts/{host}/pools/{pool}/disks          [DiskImage]
//! POST   /v1/hosts/{host}/pools/{pool}/disks          CreateDiskRequest -> DiskImage
//! DELETE /v1/hosts/{host}/pools/{pool}/disks/{disk}
//! ```

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, Query as QueryParams, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::routing::{delete, get, post, MethodRouter};
use axum::{Json, Router};
use ferry_api::http::{not_found, ApiJson, Failure};
use ferry_api::*;
use serde::Deserialize;
use uuid::Uuid;

use crate::core::{Action, ActionOutcome, Caller, Query, QueryOutcome, Server};

type Shared = State<Arc<Server>>;
type Answer<T> = Result<Json<T>, Failure>;

/// The largest request body the server reads (a VM spec, a certificate request).
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// The longest a request may take (a migration check probes the link for up to ~10 s;
/// starting a VM waits for QEMU).
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Requests per caller: generous for users and hosts (a heartbeat is one every few
/// seconds; a busy script a few per second), tight for callers with no identity.
pub const IDENTIFIED_RATE: ferry_api::rate::Rate = ferry_api::rate::Rate {
    per_second: 50.0,
    burst: 200.0,
};
pub const ANONYMOUS_RATE: ferry_api::rate::Rate = ferry_api::rate::Rate {
    per_second: 5.0,
    burst: 30.0,
};

/// Who a route is for: what the core will demand of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteRole {
    Public,
    /// The host named in the request (its certificate).
    HostSelf,
    Role(Role),
}

#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub method: Method,
    pub path: &'static str,
    pub role: RouteRole,
}

fn r(
    method: Method,
    path: &'static str,
    role: RouteRole,
    handler: MethodRouter<Arc<Server>>,
) -> (RouteSpec, MethodRouter<Arc<Server>>) {
    (RouteSpec { method, path, role }, handler)
}

fn table() -> Vec<(RouteSpec, MethodRouter<Arc<Server>>)> {
    use Method as M;
    use Role::*;
    use RouteRole::{HostSelf, Public, Role as R};
    vec![
        r(M::GET, "/v1/health", Public, get(health)),
        r(M::GET, "/v1/ca", Public, get(ca_bundle)),
        r(M::GET, "/v1/ca/rotation", R(Admin), get(ca_rotation)),
        r(M::POST, "/v1/ca/rotate", R(Admin), post(rotate_ca)),
        r(M::GET, "/v1/whoami", Public, get(whoami)),
        r(M::POST, "/v1/join", Public, post(join)),
        r(M::GET, "/v1/hosts", R(Viewer), get(hosts)),
        r(M::POST, "/v1/hosts", HostSelf, post(register_host)),
        r(M::POST, "/v1/hosts/join-tokens", R(Admin), post(join_token)),
        r(M::GET, "/v1/hosts/{name}", R(Viewer), get(host)),
        r(M::DELETE, "/v1/hosts/{name}", R(Admin), delete(remove_host)),
        r(
            M::POST,
            "/v1/hosts/{name}/certificate",
            HostSelf,
            post(renew),
        ),
        r(
            M::POST,
            "/v1/hosts/{name}/maintenance/enter",
            R(Admin),
            post(enter_maintenance),
        ),
        r(
            M::POST,
            "/v1/hosts/{name}/maintenance/cancel",
            R(Admin),
            post(cancel_maintenance),
        ),
        r(
            M::POST,
            "/v1/hosts/{name}/maintenance/exit",
            R(Admin),
            post(exit_maintenance),
        ),
        r(
            M::GET,
            "/v1/hosts/{name}/load",
            R(Viewer),
            get(automation::host_load),
        ),
        r(
            M::GET,
            "/v1/vms/{name}/load",
            R(Viewer),
            get(automation::vm_load),
        ),
        r(M::GET, "/v1/operations", R(Viewer), get(operations)),
        r(M::GET, "/v1/operations/{id}", R(Viewer), get(operation)),
        r(M::GET, "/v1/users", R(Admin), get(users)),
        r(M::POST, "/v1/users", R(Admin), post(add_user)),
        r(M::DELETE, "/v1/users/{name}", R(Admin), delete(remove_user)),
        r(
            M::POST,
            "/v1/users/{name}/tokens",
            R(Admin),
            post(user_token),
        ),
        r(M::GET, "/v1/vms", R(Viewer), get(vms)),
        r(M::POST, "/v1/vms", R(Operator), post(create_vm)),
        r(M::GET, "/v1/vms/{name}", R(Viewer), get(vm)),
        r(M::DELETE, "/v1/vms/{name}", R(Operator), delete(delete_vm)),
        r(M::POST, "/v1/vms/{name}/stop", R(Operator), post(stop_vm)),
        r(M::POST, "/v1/vms/{name}/start", R(Operator), post(start_vm)),
        r(M::GET, "/v1/vms/{name}/console", R(Operator), get(console)),
        r(M::GET, "/v1/migrations", R(Viewer), get(migrations)),
        r(M::POST, "/v1/migrations", R(Operator), post(migrate)),
        r(
            M::POST,
            "/v1/migrations/check",
            R(Operator),
            post(check_migration),
        ),
        r(M::GET, "/v1/migrations/{id}", R(Viewer), get(migration)),
        r(
            M::POST,
            "/v1/migrations/{id}/cancel",
            R(Operator),
            post(cancel),
        ),
        r(
            M::POST,
            "/v1/migrations/{id}/resolve",
            R(Operator),
            post(resolve),
        ),
        r(M::GET, "/v1/cluster", R(Viewer), get(cluster)),
        r(
            M::POST,
            "/v1/cluster/baseline",
            R(Admin),
            post(set_baseline),
        ),
        r(
            M::POST,
            "/v1/cluster/migration-defaults",
            R(Admin),
            post(set_migration_defaults),
        ),
        r(
            M::GET,
            "/v1/cluster/balance",
            R(Viewer),
            get(automation::balance),
        ),
        r(
            M::POST,
            "/v1/cluster/balance",
            R(Admin),
            post(automation::set_balance),
        ),
        r(
            M::POST,
            "/v1/cluster/balance/plan",
            R(Viewer),
            post(automation::balance_plan),
        ),
        r(
            M::POST,
            "/v1/cluster/balance/run",
            R(Admin),
            post(automation::balance_run),
        ),
        r(
            M::GET,
            "/v1/recommendations",
            R(Viewer),
            get(automation::recommendations),
        ),
        r(
            M::POST,
            "/v1/recommendations/{id}/apply",
            R(Operator),
            post(automation::apply_recommendation),
        ),
        r(
            M::POST,
            "/v1/recommendations/{id}/dismiss",
            R(Operator),
            post(automation::dismiss_recommendation),
        ),
        r(
            M::GET,
            "/v1/schedules",
            R(Viewer),
            get(automation::schedules),
        ),
        r(
            M::POST,
            "/v1/schedules",
            R(Admin),
            post(automation::add_schedule),
        ),
        r(
            M::DELETE,
            "/v1/schedules/{name}",
            R(Admin),
            delete(automation::remove_schedule),
        ),
        r(M::GET, "/v1/cluster/limits", R(Viewer), get(limits)),
        r(M::POST, "/v1/cluster/limits", R(Admin), post(set_limits)),
        r(M::GET, "/v1/events", R(Viewer), get(events)),
        r(M::GET, "/v1/rules", R(Viewer), get(rules)),
        r(M::POST, "/v1/rules", R(Operator), post(add_rule)),
        r(
            M::DELETE,
            "/v1/rules/{name}",
            R(Operator),
            delete(delete_rule),
        ),
        r(M::POST, "/v1/placement", R(Viewer), post(placement)),
        r(
            M::GET,
            "/v1/events/checkpoints",
            R(Viewer),
            get(checkpoints),
        ),
        r(
            M::POST,
            "/v1/events/checkpoints",
            R(Viewer),
            post(checkpoint_now),
        ),
        r(
            M::GET,
            "/v1/hosts/{host}/pools/{pool}/disks",
            R(Viewer),
            get(disks),
        ),
        r(
            M::POST,
            "/v1/hosts/{host}/pools/{pool}/disks",
            R(Operator),
            post(create_disk),
        ),
        r(
            M::DELETE,
            "/v1/hosts/{host}/pools/{pool}/disks/{disk}",
            R(Operator),
            delete(delete_disk),
        ),
    ]
}

/// Every route the server answers, with the role it needs.
pub fn routes() -> Vec<RouteSpec> {
    table().into_iter().map(|(spec, _)| spec).collect()
}

pub fn router(server: Arc<Server>) -> Router {
    let mut router = Router::new();
    for (spec, handler) in table() {
        router = router.route(spec.path, handler);
    }
    router
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(timeout))
        .with_state(server)
}

async fn timeout(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => Failure(ApiError::unavailable(format!(
            "the request took longer than {} s and was abandoned",
            REQUEST_TIMEOUT.as_secs()
        )))
        .into_response(),
    }
}

/// Any caller, authenticated or not (public routes). Credentials that are present but
/// wrong are still refused.
pub struct AnyCaller(pub Caller);

/// A caller that showed credentials: nobody at all is refused (401) before the body is
/// read. What they may do is the core's decision.
pub struct Authenticated(pub Caller);

impl FromRequestParts<Arc<Server>> for AnyCaller {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, s: &Arc<Server>) -> Result<Self, Failure> {
        let peer = parts.extensions.get::<ferry_pki::Peer>();
        let bearer = match parts.headers.get(axum::http::header::AUTHORIZATION) {
            None => None,
            Some(v) => {
                let text = v
                    .to_str()
                    .ok()
                    .and_then(|t| t.strip_prefix("Bearer "))
                    .ok_or_else(|| {
                        Failure(ApiError::unauthorized(
                            "the Authorization header must be `Bearer <API token>`",
                        ))
                    })?;
                Some(text)
            }
        };
        let caller = s.authenticate(peer, bearer);
        // Charged before a failed authentication is answered, so guessing tokens is slowed
        // down too: identified callers by identity, everyone else by address.
        let (key, rate) = match &caller {
            Ok(Caller::Anonymous) | Err(_) => (
                format!(
                    "ip:{}",
                    peer.map(|p| p.addr.ip().to_string()).unwrap_or_default()
                ),
                ANONYMOUS_RATE,
            ),
            Ok(c) => (c.actor(), IDENTIFIED_RATE),
        };
        if let Err(wait) = s.limiter.check(&key, rate) {
            return Err(Failure(ApiError::new(
                ErrorCode::TooManyRequests,
                format!(
                    "too many requests from {key}; try again in {} ms",
                    wait.as_millis().max(1)
                ),
            )));
        }
        Ok(AnyCaller(caller?))
    }
}

impl FromRequestParts<Arc<Server>> for Authenticated {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, s: &Arc<Server>) -> Result<Self, Failure> {
        let AnyCaller(caller) = AnyCaller::from_request_parts(parts, s).await?;
        if caller == Caller::Anonymous {
            // The core would say the same; saying it here spares reading the body.
            return Err(Failure(ApiError::unauthorized(
                "authentication required: give an API token (`ferry user token`, FERRY_TOKEN) \
                 or a host certificate",
            )));
        }
        Ok(Authenticated(caller))
    }
}

fn unexpected<T>() -> Result<T, Failure> {
    Err(Failure(ApiError::internal(
        "the core returned an unexpected outcome",
    )))
}

/// Runs an action; `pick` takes the outcome it must return.
async fn act<T>(
    s: &Arc<Server>,
    caller: &Caller,
    action: Action,
    pick: impl FnOnce(ActionOutcome) -> Option<T>,
) -> Answer<T> {
    match pick(s.handle(caller, action).await?) {
        Some(v) => Ok(Json(v)),
        None => unexpected(),
    }
}

async fn ask<T>(
    s: &Arc<Server>,
    caller: &Caller,
    q: Query,
    pick: impl FnOnce(QueryOutcome) -> Option<T>,
) -> Answer<T> {
    match pick(s.query(caller, q).await?) {
        Some(v) => Ok(Json(v)),
        None => unexpected(),
    }
}

macro_rules! pick {
    ($enum:ident :: $variant:ident) => {
        |o| match o {
            $enum::$variant(v) => Some(v),
            _ => None,
        }
    };
}

mod automation;

fn deleted(o: ActionOutcome) -> Option<serde_json::Value> {
    match o {
        ActionOutcome::Deleted(n) => Some(serde_json::json!({ "deleted": n })),
        _ => None,
    }
}

async fn health(State(s): Shared, AnyCaller(c): AnyCaller) -> Answer<serde_json::Value> {
    ask(&s, &c, Query::Health, pick!(QueryOutcome::Health)).await
}

async fn ca_bundle(State(s): Shared, AnyCaller(c): AnyCaller) -> Answer<CaBundle> {
    ask(&s, &c, Query::CaBundle, pick!(QueryOutcome::CaBundle)).await
}

async fn ca_rotation(State(s): Shared, Authenticated(c): Authenticated) -> Answer<CaRotation> {
    ask(&s, &c, Query::CaRotation, pick!(QueryOutcome::CaRotation)).await
}

async fn rotate_ca(
    State(s): Shared,
    Authenticated(c): Authenticated,
    ApiJson(req): ApiJson<RotateRequest>,
) -> Answer<CaRotation> {
    act(
        &s,
        &c,
        Action::RotateCa(req),
        pick!(ActionOutcome::CaRotation),
    )
    .await
}

async fn whoami(State(s): Shared, AnyCaller(c): AnyCaller) -> Answer<WhoAmI> {
    ask(&s, &c, Query::WhoAmI, pick!(QueryOutcome::WhoAmI)).await
}

async fn join(
    State(s): Shared,
    AnyCaller(c): AnyCaller,
    ApiJson(req): ApiJson<JoinRequest>,
) -> Answer<IssuedCertificate> {
    act(&s, &c, Action::Join(req), pick!(ActionOutcome::Certificate)).await
}

async fn join_token(
    State(s): Shared,
    Authenticated(c): Authenticated,
    ApiJson(req): ApiJson<JoinTokenRequest>,
) -> Answer<JoinTokenResponse> {
    act(
        &s,
        &c,
        Action::CreateJoinToken(req),
        pick!(ActionOutcome::JoinToken),
    )
    .await
}

async fn renew(
    State(s): Shared,
    Authenticated(c): Authenticated,
    Path(host): Path<String>,
    ApiJson(req): ApiJson<RenewRequest>,
) -> Answer<IssuedCertificate> {
    act(
        &s,
        &c,
        Action::RenewCertificate { host, req },
        pick!(ActionOutcome::Certificate),
    )
    .await
}

async fn remove_host(
    State(s): Shared,
    Authenticated(c): Authenticated,
    Path(name): Path<String>,
) -> Answer<serde_json::Value> {
    act(&s, &c, Action::RemoveHost(name), deleted).await
}

async fn users(State(s): Shared, Authenticated(c): Authenticated) -> Answer<Vec<User>> {
    ask(&s, &c, Query::Users, pick!(QueryOutcome::Users)).await
}

async fn add_user(
    State(s): Shared,
    Authenticated(c): Authenticated,
    ApiJson(req): ApiJson<CreateUserRequest>,
) -> Answer<UserToken> {
    act(
        &s,
        &c,
        Action::AddUser(req),
        pick!(ActionOutcome::UserToken),
    )
    .await
}

async fn remove_user(
    State(s): Shared,
    Authenticated(c): Authenticated,
    Path(name): Path<String>,
) -> Answer<serde_json::Value> {
    act(&s, &c, Action::RemoveUser(name), deleted).await
}

async fn user_token(
    State(s): Shared,
    Authenticated(c): Authenticated,
    Path(name): Path<String>,
) -> Answer<UserToken> {
    act(
        &s,
        &c,
        Action::NewUserToken(name),
        pick!(ActionOutcome::UserToken),
    )
    .await
}

async fn hosts(State(s): Shared, Authenticated(c): Authenticated) -> Answer<Vec<Host>> {
    ask(&s, &c, Query::Hosts, pick!(QueryOutcome::Hosts)).await
}

async fn host(
    State(s): Shared,
    Authenticated(c): Authenticated,
    Path(name): Path<String>,
) -> Answer<Host> {
    ask(&s, &c, Query::Host(name), pick!(QueryOutcome::Host)).await
}

async fn register_host(
    State(s): Shared,
    Authenticated(c): Authenticated,
    ApiJson(reg): ApiJson<HostRegistration>,
) -> Answer<Host> {
    act(
        &s,
        &c,
        Action::RegisterHost(Box::new(reg)),
        pick!(ActionOutcome::Host),
    )
    .await
}

async fn vms(State(s): Shared, Authenticated(c): Authenticated) -> Answer<Vec<Vm>> {
    ask(&s, &c, Query::Vms, pick!(QueryOutcome::Vms)).await
}

async fn vm(
    State(s): Shared,
    Authenticated(c): Authenticated,
    Path(name): Path<String>,
) -> Answer<Vm> {
    ask(&s, &c, Query::Vm(name), pick!(QueryOutcome::Vm)).await
}

async fn create_vm(
    State(s): Shared,
    Authenticated(c): Authenticated,
    ApiJson(req): ApiJson<CreateVmRequest>,
) -> Answer<Vm> {
    act(&s, &c, Action::CreateVm(req), pick!(ActionOutcome::Vm)).await
}

async fn stop_vm(
    State(s): Shared,
    Authenticated(c): Authenticated,
    Path(name): Path<String>,
) -> Answer<Vm> {
    act(&s, &c, Action::StopVm(name), pick!(ActionOutcome::Vm)).await
}

async fn start_vm(
    State(s): Shared,
    Authenticated(c): Authenticated,
    Path(name): Path<String>,
) -> Answer<Vm> {
    act(&s, &c, Action::StartVm(name), pick!(ActionOutcome::Vm)).await
}

async fn delete_vm(
    State(s): Shared,
    Authenticated(c): Authenticated,
    Path(name): Path<String>,
) -> Answer<serde_json::Value> {
    act(&s, &c, Action::DeleteVm(name), deleted).await
}

#[derive(Deserialize)]
struct ConsoleParams {
    bytes: Option<u64>,
}

async fn console(
    State(s): Shared,
    Authenticated(c): Authenticated,
    Path(name): Path<String>,
    QueryParams(q): QueryParams<ConsoleParams>,
) -> Answer<ConsoleTail> {
    let q = Query::Console {
        vm: name,
        bytes: q.bytes.unwrap_or(64 * 1024),
    };
    ask(&s, &c, q, pick!(QueryOutcome::Console)).await
}

async fn migrations(State(s): Shared, Authenticated(c): Authenticated) -> Answer<Vec<Migration>> {
    ask(&s, &c, Query::Migrations, pick!(QueryOutcome::Migrations)).await
}

async fn migrate(
    State(s): Shared,
    Authenticated(c): Authenticated,
    ApiJson(req): ApiJson<MigrateRequest>,
) -> Result<(StatusCode, Json<Migration>), Failure> {
    let m = act(
        &s,
        &c,
        Action::StartMigration(req),
        pick!(ActionOutcome::Migration),
    )
    .await?;
    Ok((StatusCode::ACCEPTED, m))
}

async fn check_migration(
    State(s): Shared,
    Authenticated(c): Authenticated,
    ApiJson(req): ApiJson<MigrateRequest>,
) -> Answer<CheckReport> {
    act(
        &s,
        &c,
        Action::CheckMigration(req),
        pick!(ActionOutcome::Checks),
    )
    .await
}

async fn cluster(State(s): Shared, Authenticated(c): Authenticated) -> Answer<ClusterInfo> {
    ask(&s, &c, Query::Cluster, pick!(QueryOutcome::Cluster)).await
}

async fn set_baseline(
    State(s): Shared,
    Authenticated(c): Authenticated,
    ApiJson(req): ApiJson<BaselineSetting>,
) -> Answer<ClusterInfo> {
    act(
        &s,
        &c,
        Action::SetBaseline(req),
        pick!(ActionOutcome::Cluster),
    )
    .await
}

async fn set_migration_defaults(
    State(s): Shared,
    Authenticated(c): Authenticated,
    ApiJson(req): ApiJson<MigrationOptions>,
) -> Answer<ClusterInfo> {
    act(
        &s,
        &c,
        Action::SetMigrationDefaults(req),
        pick!(ActionOutcome::Cluster),
    )
    .await
}

async fn limits(State(s): Shared, Authenticated(c): Authenticated) -> Answer<MigrationLimits> {
    ask(&s, &c, Query::Limits, pick!(QueryOutcome::Limits)).await
}

async fn set_limits(
    State(s): Shared,
    Authenticated(c): Authenticated,
    ApiJson(req): ApiJson<LimitsUpdate>,
) -> Answer<MigrationLimits> {
    act(&s, &c, Action::SetLimits(req), pick!(ActionOutcome::Limits)).await
}

async fn enter_maintenance(
    State(s): Shared,
    Authenticated(c): Authenticated,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<EnterMaintenanceRequest>,
) -> Answer<EvacuationPlan> {
    let action = Action::EnterMaintenance { host: name, req };
    act(&s, &c, action, pick!(ActionOutcome::Evacuation)).await
}

async fn cancel_maintenance(
    State(s): Shared,
    Authenticated(c): Authenticated,
    Path(name): Path<String>,
) -> Answer<Operation> {
    let action = Action::CancelMaintenance(name);
    act(&s, &c, action, pick!(ActionOutcome::Operation)).await
}

async fn exit_maintenance(
    State(s): Shared,
    Authenticated(c): Authenticated,
    Path(name): Path<String>,
) -> Answer<Host> {
    act(
        &s,
        &c,
        Action::ExitMaintenance(name),
        pick!(ActionOutcome::Host),
    )
    .await
}

async fn operations(State(s): Shared, Authenticated(c): Authenticated) -> Answer<Vec<Operation>> {
    ask(&s, &c, Query::Operations, pick!(QueryOutcome::Operations)).await
}

async fn operation(
    State(s): Shared,
    Authenticated(c): Authenticated,
    Path(id): Path<String>,
) -> Answer<Operation> {
    let q = Query::Operation(parse_id(&id)?);
    ask(&s, &c, q, pick!(QueryOutcome::Operation)).await
}

fn parse_id(id: &str) -> Result<Uuid, Failure> {
    Uuid::parse_str(id).map_err(|_| {
        Failure(ApiError::bad_request(format!(
            "'{id}' is not an id (a UUID)"
        )))
    })
}

async fn migration(
    State(s): Shared,
    Authenticated(c): Authenticated,
    Path(id): Path<String>,
) -> Answer<Migration> {
    let q = Query::Migration(parse_id(&id)?);
    ask(&s, &c, q, pick!(QueryOutcome::Migration)).await
}

async fn cancel(
    State(s): Shared,
    Authenticated(c): Authenticated,
    Path(id): Path<String>,
) -> Answer<Migration> {
    let action = Action::CancelMigration(parse_id(&id)?);
    act(&s, &c, action, pick!(ActionOutcome::Migration)).await
}

async fn resolve(
    State(s): Shared,
    Authenticated(c): Authenticated,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ResolveRequest>,
) -> Answer<Migration> {
    let action = Action::ResolveMigration {
        id: parse_id(&id)?,
        req,
    };
    act(&s, &c, action, pick!(ActionOutcome::Migration)).await
}

#[derive(Deserialize)]
struct EventParams {
    vm: Option<String>,
    migration: Option<String>,
    kind: Option<String>,
    operation: Option<String>,
    after: Option<i64>,
    limit: Option<u32>,
}

async fn events(
    State(s): Shared,
    Authenticated(c): Authenticated,
    QueryParams(p): QueryParams<EventParams>,
) -> Answer<Vec<Event>> {
    let migration = p.migration.as_deref().map(parse_id).transpose()?;
    let operation = p.operation.as_deref().map(parse_id).transpose()?;
    let q = Query::Events(EventQuery {
        vm: p.vm,
        migration,
        operation,
        kind: p.kind,
        after: p.after,
        limit: p.limit,
    });
    ask(&s, &c, q, pick!(QueryOutcome::Events)).await
}

async fn disks(
    State(s): Shared,
    Authenticated(c): Authenticated,
    Path((host, pool)): Path<(String, String)>,
) -> Answer<Vec<DiskImage>> {
    ask(
        &s,
        &c,
        Query::Disks { host, pool },
        pick!(QueryOutcome::Disks),
    )
    .await
}

async fn create_disk(
    State(s): Shared,
    Authenticated(c): Authenticated,
    Path((host, pool)): Path<(String, String)>,
    ApiJson(req): ApiJson<CreateDiskRequest>,
) -> Answer<DiskImage> {
    act(
        &s,
        &c,
        Action::CreateDisk { host, pool, req },
        pick!(ActionOutcome::Disk),
    )
    .await
}

async fn delete_disk(
    State(s): Shared,
    Authenticated(c): Authenticated,
    Path((host, pool, disk)): Path<(String, String, String)>,
) -> Answer<serde_json::Value> {
    act(&s, &c, Action::DeleteDisk { host, pool, disk }, deleted).await
}

async fn checkpoints(
    State(s): Shared,
    Authenticated(c): Authenticated,
) -> Answer<ferry_api::audit::Checkpoints> {
    ask(&s, &c, Query::Checkpoints, pick!(QueryOutcome::Checkpoints)).await
}

async fn checkpoint_now(
    State(s): Shared,
    Authenticated(c): Authenticated,
) -> Answer<Option<ferry_api::audit::Checkpoint>> {
    ask(
        &s,
        &c,
        Query::CheckpointNow,
        pick!(QueryOutcome::Checkpoint),
    )
    .await
}

async fn rules(State(s): Shared, Authenticated(c): Authenticated) -> Answer<Vec<Rule>> {
    ask(&s, &c, Query::Rules, pick!(QueryOutcome::Rules)).await
}

async fn add_rule(
    State(s): Shared,
    Authenticated(c): Authenticated,
    ApiJson(rule): ApiJson<Rule>,
) -> Answer<Rule> {
    act(&s, &c, Action::AddRule(rule), pick!(ActionOutcome::Rule)).await
}

async fn delete_rule(
    State(s): Shared,
    Authenticated(c): Authenticated,
    Path(name): Path<String>,
) -> Answer<serde_json::Value> {
    act(&s, &c, Action::DeleteRule(name), deleted).await
}

async fn placement(
    State(s): Shared,
    Authenticated(c): Authenticated,
    ApiJson(req): ApiJson<PlacementRequest>,
) -> Answer<PlacementReport> {
    ask(
        &s,
        &c,
        Query::Placement(req),
        pick!(QueryOutcome::Placement),
    )
    .await
}
