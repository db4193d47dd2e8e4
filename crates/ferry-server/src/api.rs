//! The server's HTTP API: routes turn requests into [`Action`]s or reads. No logic here.
//!
//! ```text
//! GET    /v1/health
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
//! POST   /v1/hosts/{name}/maintenance MaintenanceRequest -> Host
//! GET    /v1/cluster                  ClusterInfo (CPU baseline)
//! POST   /v1/cluster/baseline         BaselineSetting -> ClusterInfo
//! POST   /v1/cluster/migration-defaults MigrationOptions -> ClusterInfo
//! GET    /v1/migrations/{id}          Migration
//! POST   /v1/migrations/{id}/cancel   Migration
//! POST   /v1/migrations/{id}/resolve  ResolveRequest -> Migration (needs_attention only)
//! GET    /v1/events                   [Event] (?vm= &migration= &kind= &after= &limit=;
//!                                      with after=, the oldest `limit` after it)
//! GET    /v1/events/checkpoints       Checkpoints (see api_audit.rs)
//! POST   /v1/events/checkpoints       Checkpoint | null
//! GET    /v1/hosts/{host}/pools/{pool}/disks          [DiskImage]
//! POST   /v1/hosts/{host}/pools/{pool}/disks          CreateDiskRequest -> DiskImage
//! DELETE /v1/hosts/{host}/pools/{pool}/disks/{disk}
//! ```

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use ferry_api::http::{not_found, ApiJson, Failure};
use ferry_api::*;
use serde::Deserialize;
use uuid::Uuid;

use crate::core::{Action, ActionOutcome, Server};

type Shared = State<Arc<Server>>;
type Answer<T> = Result<Json<T>, Failure>;

pub fn router(server: Arc<Server>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/hosts", get(hosts).post(register_host))
        .route("/v1/hosts/{name}", get(host))
        .route("/v1/hosts/{name}/maintenance", post(maintenance))
        .route("/v1/vms", get(vms).post(create_vm))
        .route("/v1/vms/{name}", get(vm).delete(delete_vm))
        .route("/v1/vms/{name}/stop", post(stop_vm))
        .route("/v1/vms/{name}/start", post(start_vm))
        .route("/v1/vms/{name}/console", get(console))
        .route("/v1/migrations", get(migrations).post(migrate))
        .route("/v1/migrations/check", post(check_migration))
        .route("/v1/cluster", get(cluster))
        .route("/v1/cluster/baseline", post(set_baseline))
        .route(
            "/v1/cluster/migration-defaults",
            post(set_migration_defaults),
        )
        .route("/v1/migrations/{id}", get(migration))
        .route("/v1/migrations/{id}/cancel", post(cancel))
        .route("/v1/migrations/{id}/resolve", post(resolve))
        .route("/v1/events", get(events))
        .route(
            "/v1/hosts/{host}/pools/{pool}/disks",
            get(disks).post(create_disk),
        )
        .route(
            "/v1/hosts/{host}/pools/{pool}/disks/{disk}",
            axum::routing::delete(delete_disk),
        )
        .merge(crate::api_audit::routes())
        .fallback(not_found)
        .with_state(server)
}

/// Who asks: the client's header, or "anonymous". Bounded and printable: it goes in the log.
fn actor(headers: &HeaderMap) -> String {
    headers
        .get(ACTOR_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|s| {
            s.chars()
                .filter(|c| !c.is_control())
                .take(128)
                .collect::<String>()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "anonymous".to_string())
}

async fn act(
    s: &Arc<Server>,
    headers: &HeaderMap,
    action: Action,
) -> Result<ActionOutcome, Failure> {
    Ok(s.handle(&actor(headers), action).await?)
}

fn expect<T>(outcome: ActionOutcome, pick: impl FnOnce(ActionOutcome) -> Option<T>) -> Answer<T> {
    pick(outcome)
        .map(Json)
        .ok_or_else(|| Failure(ApiError::internal("action returned an unexpected outcome")))
}

async fn health(State(s): Shared) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "data_dir": s.config.data_dir,
    }))
}

async fn hosts(State(s): Shared) -> Answer<Vec<Host>> {
    Ok(Json(s.hosts()?))
}

async fn host(State(s): Shared, Path(name): Path<String>) -> Answer<Host> {
    Ok(Json(s.host(&name)?))
}

async fn register_host(
    State(s): Shared,
    h: HeaderMap,
    ApiJson(reg): ApiJson<HostRegistration>,
) -> Answer<Host> {
    expect(act(&s, &h, Action::RegisterHost(reg)).await?, |o| match o {
        ActionOutcome::Host(h) => Some(h),
        _ => None,
    })
}

async fn vms(State(s): Shared) -> Answer<Vec<Vm>> {
    Ok(Json(s.vms()?))
}

async fn vm(State(s): Shared, Path(name): Path<String>) -> Answer<Vm> {
    Ok(Json(s.vm_live(&name).await?))
}

fn vm_of(o: ActionOutcome) -> Option<Vm> {
    match o {
        ActionOutcome::Vm(v) => Some(v),
        _ => None,
    }
}

async fn create_vm(
    State(s): Shared,
    h: HeaderMap,
    ApiJson(req): ApiJson<CreateVmRequest>,
) -> Answer<Vm> {
    expect(act(&s, &h, Action::CreateVm(req)).await?, vm_of)
}

async fn stop_vm(State(s): Shared, h: HeaderMap, Path(name): Path<String>) -> Answer<Vm> {
    expect(act(&s, &h, Action::StopVm(name)).await?, vm_of)
}

async fn start_vm(State(s): Shared, h: HeaderMap, Path(name): Path<String>) -> Answer<Vm> {
    expect(act(&s, &h, Action::StartVm(name)).await?, vm_of)
}

async fn delete_vm(
    State(s): Shared,
    h: HeaderMap,
    Path(name): Path<String>,
) -> Answer<serde_json::Value> {
    match act(&s, &h, Action::DeleteVm(name)).await? {
        ActionOutcome::Deleted(n) => Ok(Json(serde_json::json!({"deleted": n}))),
        _ => Err(Failure(ApiError::internal(
            "action returned an unexpected outcome",
        ))),
    }
}

#[derive(Deserialize)]
struct ConsoleParams {
    bytes: Option<u64>,
}

async fn console(
    State(s): Shared,
    Path(name): Path<String>,
    Query(q): Query<ConsoleParams>,
) -> Answer<ConsoleTail> {
    let vm = s.find_vm(&name)?;
    let (_, agent) = s.agent(&vm.host)?;
    let tail = agent
        .console(&name, q.bytes.unwrap_or(64 * 1024))
        .await
        .map_err(|e| e.into_api_error(&format!("host {}", vm.host)))?;
    Ok(Json(tail))
}

async fn migrations(State(s): Shared) -> Answer<Vec<Migration>> {
    Ok(Json(s.store.migrations(200).map_err(ApiError::from)?))
}

async fn migrate(
    State(s): Shared,
    h: HeaderMap,
    ApiJson(req): ApiJson<MigrateRequest>,
) -> Result<(StatusCode, Json<Migration>), Failure> {
    match act(&s, &h, Action::StartMigration(req)).await? {
        ActionOutcome::Migration(m) => Ok((StatusCode::ACCEPTED, Json(m))),
        _ => Err(Failure(ApiError::internal(
            "action returned an unexpected outcome",
        ))),
    }
}

async fn check_migration(
    State(s): Shared,
    h: HeaderMap,
    ApiJson(req): ApiJson<MigrateRequest>,
) -> Answer<CheckReport> {
    match act(&s, &h, Action::CheckMigration(req)).await? {
        ActionOutcome::Checks(r) => Ok(Json(r)),
        _ => Err(Failure(ApiError::internal(
            "action returned an unexpected outcome",
        ))),
    }
}

async fn cluster(State(s): Shared) -> Answer<ClusterInfo> {
    Ok(Json(s.cluster_info()?))
}

async fn set_baseline(
    State(s): Shared,
    h: HeaderMap,
    ApiJson(req): ApiJson<BaselineSetting>,
) -> Answer<ClusterInfo> {
    match act(&s, &h, Action::SetBaseline(req)).await? {
        ActionOutcome::Cluster(c) => Ok(Json(c)),
        _ => Err(Failure(ApiError::internal(
            "action returned an unexpected outcome",
        ))),
    }
}

async fn set_migration_defaults(
    State(s): Shared,
    h: HeaderMap,
    ApiJson(req): ApiJson<MigrationOptions>,
) -> Answer<ClusterInfo> {
    match act(&s, &h, Action::SetMigrationDefaults(req)).await? {
        ActionOutcome::Cluster(c) => Ok(Json(c)),
        _ => Err(Failure(ApiError::internal(
            "action returned an unexpected outcome",
        ))),
    }
}

async fn maintenance(
    State(s): Shared,
    h: HeaderMap,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<MaintenanceRequest>,
) -> Answer<Host> {
    match act(
        &s,
        &h,
        Action::SetMaintenance {
            host: name,
            on: req.on,
        },
    )
    .await?
    {
        ActionOutcome::Host(host) => Ok(Json(host)),
        _ => Err(Failure(ApiError::internal(
            "action returned an unexpected outcome",
        ))),
    }
}

fn parse_id(id: &str) -> Result<Uuid, Failure> {
    Uuid::parse_str(id).map_err(|_| {
        Failure(ApiError::bad_request(format!(
            "'{id}' is not a migration id"
        )))
    })
}

async fn migration(State(s): Shared, Path(id): Path<String>) -> Answer<Migration> {
    Ok(Json(s.migration(parse_id(&id)?)?))
}

async fn cancel(State(s): Shared, h: HeaderMap, Path(id): Path<String>) -> Answer<Migration> {
    let id = parse_id(&id)?;
    expect(
        act(&s, &h, Action::CancelMigration(id)).await?,
        |o| match o {
            ActionOutcome::Migration(m) => Some(m),
            _ => None,
        },
    )
}

async fn resolve(
    State(s): Shared,
    h: HeaderMap,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ResolveRequest>,
) -> Answer<Migration> {
    let id = parse_id(&id)?;
    expect(
        act(&s, &h, Action::ResolveMigration { id, req }).await?,
        |o| match o {
            ActionOutcome::Migration(m) => Some(m),
            _ => None,
        },
    )
}

#[derive(Deserialize)]
struct EventParams {
    vm: Option<String>,
    migration: Option<String>,
    kind: Option<String>,
    after: Option<i64>,
    limit: Option<u32>,
}

async fn events(State(s): Shared, Query(p): Query<EventParams>) -> Answer<Vec<Event>> {
    let migration = p.migration.as_deref().map(parse_id).transpose()?;
    Ok(Json(s.events(&EventQuery {
        vm: p.vm,
        migration,
        kind: p.kind,
        after: p.after,
        limit: p.limit,
    })?))
}

async fn disks(
    State(s): Shared,
    Path((host, pool)): Path<(String, String)>,
) -> Answer<Vec<DiskImage>> {
    let (_, agent) = s.agent(&host)?;
    let list = agent
        .disks(&pool)
        .await
        .map_err(|e| e.into_api_error(&format!("host {host}")))?;
    Ok(Json(list))
}

async fn create_disk(
    State(s): Shared,
    h: HeaderMap,
    Path((host, pool)): Path<(String, String)>,
    ApiJson(req): ApiJson<CreateDiskRequest>,
) -> Answer<DiskImage> {
    expect(
        act(&s, &h, Action::CreateDisk { host, pool, req }).await?,
        |o| match o {
            ActionOutcome::Disk(d) => Some(d),
            _ => None,
        },
    )
}

async fn delete_disk(
    State(s): Shared,
    h: HeaderMap,
    Path((host, pool, disk)): Path<(String, String, String)>,
) -> Answer<serde_json::Value> {
    match act(&s, &h, Action::DeleteDisk { host, pool, disk }).await? {
        ActionOutcome::Deleted(n) => Ok(Json(serde_json::json!({"deleted": n}))),
        _ => Err(Failure(ApiError::internal(
            "action returned an unexpected outcome",
        ))),
    }
}
