//! The agent's HTTP API. Each route parses, calls [`Agent`], and serializes: no logic here.
//!
//! ```text
//! GET    /v1/health                         liveness + host name
//! GET    /v1/inventory                      HostInventory
//! GET    /v1/vms                            [VmRuntime]
//! POST   /v1/vms                            LaunchRequest -> VmRuntime
//! GET    /v1/vms/{name}                     VmRuntime
//! POST   /v1/vms/{name}/stop                VmRuntime (QEMU ended, VM forgotten here)
//! DELETE /v1/vms/{name}                     kill if running, forget (idempotent)
//! GET    /v1/vms/{name}/console?bytes=N     ConsoleTail
//! GET    /v1/vms/{name}/memory              VmMemoryFacts (RAM, resident, dirty rate; ~1 s)
//! POST   /v1/vms/{name}/incoming            IncomingRequest -> IncomingResponse (destination)
//! POST   /v1/vms/{name}/migration           OutgoingRequest -> AgentMigrationStatus (source)
//! GET    /v1/vms/{name}/migration           AgentMigrationStatus
//! POST   /v1/vms/{name}/migration/tune      TuneRequest -> AgentMigrationStatus (source:
//!                                           throttle, post-copy, bandwidth cap)
//! POST   /v1/vms/{name}/migration/cancel    VmRuntime (source resumes; refused once the
//!                                           switch-over started, completed or post-copy)
//! POST   /v1/vms/{name}/migration/reclaim   VmRuntime (source whose migration completed
//!                                           resumes: the destination is proven not to hold it)
//! POST   /v1/vms/{name}/migration/pause     AgentMigrationStatus (post-copy, either side)
//! POST   /v1/vms/{name}/migration/recover   RecoverRequest -> IncomingResponse (destination,
//!                                           post-copy paused)
//! POST   /v1/vms/{name}/migration/resume    ResumeRequest -> AgentMigrationStatus (source)
//! POST   /v1/vms/{name}/migration/handover  source QEMU shut down after completion
//! POST   /v1/vms/{name}/announce            QEMU self-announce (RARP from every NIC)
//! GET    /v1/vms/{name}/migration/checkpoints -> [Checkpoint] of QEMU's last switch-over pause
//! POST   /v1/vms/{name}/frames              FrameBatch -> FrameBatchAnswer (destination; the
//!                                           one route a peer host may call: the VM's source)
//! GET    /v1/vms/{name}/frames?wait_ms=N    FrameReport (either side, after the switch-over)
//! POST   /v1/vms/{name}/quick/incoming      QuickIncomingRequest -> VmRuntime (destination:
//!                                           QEMU waits, vCPUs held, for a state file)
//! POST   /v1/vms/{name}/quick/save          QuickTransferRequest -> AgentMigrationStatus
//!                                           (source: pause, save to the shared pool)
//! POST   /v1/vms/{name}/quick/restore       QuickTransferRequest -> AgentMigrationStatus
//!                                           (destination: load the state file)
//! POST   /v1/vms/{name}/quick/resume        VmRuntime (destination: start the loaded guest)
//! POST   /v1/quick/discard                  QuickStateFile -> QuickDiscardResponse
//! GET    /v1/cold/{migration}               ColdStatus (jobs of a cold migration here)
//! POST   /v1/cold/{migration}/receive       ColdReceiveRequest -> ColdReceiveResponse
//!                                           (destination: empty target, exported)
//! POST   /v1/cold/{migration}/send          ColdSendRequest -> ColdStatus (source: copy)
//! POST   /v1/cold/{migration}/checksum      ColdDiskRequest -> ColdStatus (either side)
//! POST   /v1/cold/{migration}/discard       ColdCleanup (stop; delete targets made here)
//! POST   /v1/cold/{migration}/finish        ColdCleanup (stop; targets stay: the VM's)
//! POST   /v1/probe/listen                   ProbeListenResponse (destination; body ignored)
//! POST   /v1/probe/send                     ProbeSendRequest -> ProbeSendResponse (source)
//! GET    /v1/pools                          [PoolInfo]
//! GET    /v1/pools/{pool}/disks             [DiskImage]
//! POST   /v1/pools/{pool}/disks             CreateDiskRequest -> DiskImage
//! DELETE /v1/pools/{pool}/disks/{disk}
//! ```

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use ferry_api::http::{not_found, ApiJson, Failure};
use ferry_api::{
    AgentMigrationStatus, ApiError, ConsoleTail, HostInventory, IncomingRequest, IncomingResponse,
    LaunchRequest, OutgoingRequest, ProbeListenResponse, ProbeSendRequest, ProbeSendResponse,
    VmMemoryFacts, VmRuntime,
};
use serde::Deserialize;

use crate::error::AgentError;
use crate::host::Agent;

/// The HTTP edge: the code by kind, the message as is.
impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> Self {
        ApiError::new(e.code(), e.to_string())
    }
}

impl From<AgentError> for Failure {
    fn from(e: AgentError) -> Self {
        Failure(e.into())
    }
}

type Shared = State<Arc<Agent>>;
type Answer<T> = Result<Json<T>, Failure>;

pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/inventory", get(inventory))
        .route("/v1/vms", get(list).post(launch))
        .route("/v1/vms/{name}", get(show).delete(remove))
        .route("/v1/vms/{name}/stop", post(stop))
        .route("/v1/vms/{name}/console", get(console))
        .route("/v1/vms/{name}/memory", get(memory))
        .route("/v1/vms/{name}/incoming", post(incoming))
        .route(
            "/v1/vms/{name}/migration",
            get(migration_status).post(outgoing),
        )
        .route("/v1/vms/{name}/migration/disks", post(disk_copy))
        .route("/v1/vms/{name}/migration/tune", post(tune))
        .route("/v1/vms/{name}/migration/cancel", post(cancel))
        .route("/v1/vms/{name}/migration/reclaim", post(reclaim))
        .route("/v1/vms/{name}/migration/pause", post(pause_postcopy))
        .route("/v1/vms/{name}/migration/recover", post(recover_incoming))
        .route("/v1/vms/{name}/migration/resume", post(resume_outgoing))
        .route("/v1/vms/{name}/migration/handover", post(handover))
        .route("/v1/vms/{name}/announce", post(announce))
        .route(
            "/v1/vms/{name}/migration/checkpoints",
            get(pause_checkpoints),
        )
        .route("/v1/vms/{name}/frames", get(frame_report).post(frames))
        .route("/v1/vms/{name}/quick/incoming", post(quick_incoming))
        .route("/v1/vms/{name}/quick/save", post(quick_save))
        .route("/v1/vms/{name}/quick/restore", post(quick_restore))
        .route("/v1/vms/{name}/quick/resume", post(quick_resume))
        .route("/v1/quick/discard", post(quick_discard))
        .route("/v1/cold/{migration}", get(cold_status))
        .route("/v1/cold/{migration}/receive", post(cold_receive))
        .route("/v1/cold/{migration}/send", post(cold_send))
        .route("/v1/cold/{migration}/checksum", post(cold_checksum))
        .route("/v1/cold/{migration}/discard", post(cold_discard))
        .route("/v1/cold/{migration}/finish", post(cold_finish))
        .route("/v1/probe/listen", post(probe_listen))
        .route("/v1/probe/send", post(probe_send))
        .route("/v1/pools", get(pools))
        .route("/v1/pools/{pool}/disks", get(disks).post(create_disk))
        .route(
            "/v1/pools/{pool}/disks/{disk}",
            axum::routing::delete(delete_disk),
        )
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(only_the_server))
        .with_state(agent)
}

/// The largest request body the agent reads (a VM spec).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Agents take orders from the server only: a caller must present the server's
/// certificate (the TLS layer already required a certificate from the cluster CA; a
/// peer host's, or a revoked host's, is refused here). With `--insecure` there are no
/// identities and this lets everything through.
async fn only_the_server(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use ferry_pki::{Identity, Transport};
    let peer = req.extensions().get::<ferry_pki::Peer>();
    // Peer hosts may ask whether this agent is alive (HA's isolation probes) and, as a
    // migration's source, send the frames its paused guest missed (the handler checks
    // that the caller is that VM's source).
    let health_probe = req.method() == axum::http::Method::GET && req.uri().path() == "/v1/health";
    let peer_route = health_probe
        || (req.method() == axum::http::Method::POST && is_frames_path(req.uri().path()));
    let allowed = match peer.map(|p| &p.transport) {
        Some(Transport::Insecure) => true,
        Some(Transport::Certificate {
            identity: Some(Identity::Server),
            ..
        }) => true,
        Some(Transport::Certificate {
            identity: Some(Identity::Host(_)),
            ..
        }) => peer_route,
        _ => false,
    };
    if allowed {
        // The server polls agents during migrations; this only stops a runaway.
        static LIMITER: std::sync::OnceLock<ferry_api::rate::RateLimiter> =
            std::sync::OnceLock::new();
        const RATE: ferry_api::rate::Rate = ferry_api::rate::Rate {
            per_second: 200.0,
            burst: 400.0,
        };
        let key = match peer.and_then(|p| p.identity()) {
            Some(id) => id.dns_name(),
            None => peer.map(|p| p.addr.ip().to_string()).unwrap_or_default(),
        };
        if let Err(wait) = LIMITER.get_or_init(Default::default).check(&key, RATE) {
            return Failure(ApiError::new(
                ferry_api::ErrorCode::TooManyRequests,
                format!(
                    "too many requests; try again in {} ms",
                    wait.as_millis().max(1)
                ),
            ))
            .into_response();
        }
        return next.run(req).await;
    }
    let who = match peer.and_then(|p| p.identity()) {
        Some(id) => id.to_string(),
        None => "a caller without a cluster certificate".to_string(),
    };
    Failure(ApiError::forbidden(format!(
        "this agent takes requests from the server only, not from {who}"
    )))
    .into_response()
}

/// `/v1/vms/{name}/frames` with one path segment for the name.
fn is_frames_path(path: &str) -> bool {
    path.strip_prefix("/v1/vms/")
        .and_then(|rest| rest.strip_suffix("/frames"))
        .is_some_and(|name| !name.is_empty() && !name.contains('/'))
}

/// The caller as [`only_the_server`] let it in.
fn caller(peer: Option<&ferry_pki::Peer>) -> crate::frames_flow::Caller {
    use crate::frames_flow::Caller;
    use ferry_pki::{Identity, Transport};
    match peer.map(|p| &p.transport) {
        Some(Transport::Certificate {
            identity: Some(Identity::Host(h)),
            ..
        }) => Caller::Host(h.to_string()),
        Some(Transport::Certificate {
            identity: Some(Identity::Server),
            ..
        }) => Caller::Server,
        _ => Caller::Anyone,
    }
}

async fn frames(
    State(a): Shared,
    Path(name): Path<String>,
    peer: Option<axum::Extension<ferry_pki::Peer>>,
    ApiJson(batch): ApiJson<ferry_api::FrameBatch>,
) -> Answer<ferry_api::FrameBatchAnswer> {
    let who = caller(peer.as_ref().map(|p| &p.0));
    Ok(Json(a.accept_frames(&name, &who, &batch).await?))
}

#[derive(Deserialize)]
struct FrameReportParams {
    #[serde(default)]
    wait_ms: u64,
}

async fn frame_report(
    State(a): Shared,
    Path(name): Path<String>,
    Query(q): Query<FrameReportParams>,
) -> Answer<ferry_api::FrameReport> {
    Ok(Json(a.frame_report(&name, q.wait_ms).await?))
}

async fn health(State(a): Shared) -> Json<serde_json::Value> {
    Json(
        serde_json::json!({"status": "ok", "host": a.config.name, "version": env!("CARGO_PKG_VERSION")}),
    )
}

async fn inventory(State(a): Shared) -> Json<HostInventory> {
    Json(a.inventory().await)
}

async fn list(State(a): Shared) -> Json<Vec<VmRuntime>> {
    Json(a.list().await)
}

async fn launch(State(a): Shared, ApiJson(req): ApiJson<LaunchRequest>) -> Answer<VmRuntime> {
    Ok(Json(a.launch(&req.spec).await?))
}

async fn show(State(a): Shared, Path(name): Path<String>) -> Answer<VmRuntime> {
    Ok(Json(a.get(&name).await?))
}

async fn stop(State(a): Shared, Path(name): Path<String>) -> Answer<VmRuntime> {
    Ok(Json(a.stop(&name).await?))
}

async fn remove(State(a): Shared, Path(name): Path<String>) -> Answer<serde_json::Value> {
    a.remove(&name).await?;
    Ok(Json(serde_json::json!({"removed": name})))
}

#[derive(Deserialize)]
struct ConsoleParams {
    bytes: Option<u64>,
}

async fn console(
    State(a): Shared,
    Path(name): Path<String>,
    Query(q): Query<ConsoleParams>,
) -> Answer<ConsoleTail> {
    Ok(Json(a.console(&name, q.bytes.unwrap_or(64 * 1024)).await?))
}

async fn memory(State(a): Shared, Path(name): Path<String>) -> Answer<VmMemoryFacts> {
    Ok(Json(a.memory_facts(&name).await?))
}

async fn incoming(
    State(a): Shared,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<IncomingRequest>,
) -> Answer<IncomingResponse> {
    if req.spec.name != name {
        return Err(ApiError::bad_request(format!(
            "URL names VM '{name}' but the spec names '{}'",
            req.spec.name
        ))
        .into());
    }
    Ok(Json(a.prepare_incoming(&req).await?))
}

async fn outgoing(
    State(a): Shared,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<OutgoingRequest>,
) -> Answer<AgentMigrationStatus> {
    Ok(Json(a.start_outgoing(&name, &req).await?))
}

async fn disk_copy(
    State(a): Shared,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<ferry_api::DiskCopyRequest>,
) -> Answer<AgentMigrationStatus> {
    Ok(Json(a.start_disk_copy(&name, &req).await?))
}

async fn tune(
    State(a): Shared,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<ferry_api::TuneRequest>,
) -> Answer<AgentMigrationStatus> {
    Ok(Json(a.tune(&name, &req).await?))
}

#[derive(Deserialize)]
struct StatusParams {
    /// Wait up to this long (ms, at most 1000) for QEMU to report a change.
    #[serde(default)]
    wait_ms: u64,
}

async fn migration_status(
    State(a): Shared,
    Path(name): Path<String>,
    Query(q): Query<StatusParams>,
) -> Answer<AgentMigrationStatus> {
    Ok(Json(a.migration_status_after(&name, q.wait_ms).await?))
}

async fn cancel(State(a): Shared, Path(name): Path<String>) -> Answer<VmRuntime> {
    Ok(Json(a.cancel_outgoing(&name).await?))
}

async fn reclaim(State(a): Shared, Path(name): Path<String>) -> Answer<VmRuntime> {
    Ok(Json(a.reclaim(&name).await?))
}

async fn pause_postcopy(
    State(a): Shared,
    Path(name): Path<String>,
) -> Answer<AgentMigrationStatus> {
    Ok(Json(a.pause_postcopy(&name).await?))
}

async fn recover_incoming(
    State(a): Shared,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<ferry_api::RecoverRequest>,
) -> Answer<IncomingResponse> {
    Ok(Json(a.recover_incoming(&name, &req).await?))
}

async fn resume_outgoing(
    State(a): Shared,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<ferry_api::ResumeRequest>,
) -> Answer<AgentMigrationStatus> {
    Ok(Json(a.resume_outgoing(&name, &req).await?))
}

async fn handover(State(a): Shared, Path(name): Path<String>) -> Answer<serde_json::Value> {
    a.hand_over(&name).await?;
    Ok(Json(serde_json::json!({"handed_over": name})))
}

async fn pause_checkpoints(
    State(a): Shared,
    Path(name): Path<String>,
) -> Answer<Vec<ferry_migration::pause::Checkpoint>> {
    Ok(Json(a.pause_checkpoints(&name).await?))
}

async fn announce(State(a): Shared, Path(name): Path<String>) -> Answer<serde_json::Value> {
    a.announce(&name).await?;
    Ok(Json(serde_json::json!({"announced": name})))
}

async fn quick_incoming(
    State(a): Shared,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<ferry_api::QuickIncomingRequest>,
) -> Answer<VmRuntime> {
    if req.spec.name != name {
        return Err(ApiError::bad_request(format!(
            "URL names VM '{name}' but the spec names '{}'",
            req.spec.name
        ))
        .into());
    }
    Ok(Json(a.quick_incoming(&req).await?))
}

async fn quick_save(
    State(a): Shared,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<ferry_api::QuickTransferRequest>,
) -> Answer<AgentMigrationStatus> {
    Ok(Json(a.quick_save(&name, &req).await?))
}

async fn quick_restore(
    State(a): Shared,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<ferry_api::QuickTransferRequest>,
) -> Answer<AgentMigrationStatus> {
    Ok(Json(a.quick_restore(&name, &req).await?))
}

async fn quick_resume(State(a): Shared, Path(name): Path<String>) -> Answer<VmRuntime> {
    Ok(Json(a.quick_resume(&name).await?))
}

async fn quick_discard(
    State(a): Shared,
    ApiJson(file): ApiJson<ferry_api::QuickStateFile>,
) -> Answer<ferry_api::QuickDiscardResponse> {
    Ok(Json(a.quick_discard(&file)?))
}

/// A migration id from the URL.
fn migration_id(text: &str) -> Result<uuid::Uuid, Failure> {
    uuid::Uuid::parse_str(text).map_err(|_| {
        Failure(ApiError::bad_request(format!(
            "'{text}' is not a migration id"
        )))
    })
}

async fn cold_status(State(a): Shared, Path(id): Path<String>) -> Answer<ferry_api::ColdStatus> {
    Ok(Json(a.cold_status(migration_id(&id)?).await?))
}

async fn cold_receive(
    State(a): Shared,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ferry_api::ColdReceiveRequest>,
) -> Answer<ferry_api::ColdReceiveResponse> {
    Ok(Json(a.cold_receive(migration_id(&id)?, &req).await?))
}

async fn cold_send(
    State(a): Shared,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ferry_api::ColdSendRequest>,
) -> Answer<ferry_api::ColdStatus> {
    Ok(Json(a.cold_send(migration_id(&id)?, &req).await?))
}

async fn cold_checksum(
    State(a): Shared,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ferry_api::ColdDiskRequest>,
) -> Answer<ferry_api::ColdStatus> {
    Ok(Json(a.cold_checksum(migration_id(&id)?, &req).await?))
}

async fn cold_discard(State(a): Shared, Path(id): Path<String>) -> Answer<ferry_api::ColdCleanup> {
    Ok(Json(a.cold_discard(migration_id(&id)?).await?))
}

async fn cold_finish(State(a): Shared, Path(id): Path<String>) -> Answer<ferry_api::ColdCleanup> {
    Ok(Json(a.cold_finish(migration_id(&id)?).await?))
}

// No body extractor: the request carries nothing (the client posts JSON `null`), and
// ignoring the body accepts `null`, `{}` and an empty body alike.
async fn probe_listen(
    State(a): Shared,
    ApiJson(req): ApiJson<ferry_api::ProbeListenRequest>,
) -> Answer<ProbeListenResponse> {
    Ok(Json(a.probe_listen(&req).await?))
}

async fn probe_send(
    State(a): Shared,
    ApiJson(req): ApiJson<ProbeSendRequest>,
) -> Answer<ProbeSendResponse> {
    Ok(Json(a.probe_send(&req).await?))
}

async fn pools(State(a): Shared) -> Json<Vec<ferry_api::PoolInfo>> {
    Json(a.pools())
}

async fn disks(State(a): Shared, Path(pool): Path<String>) -> Answer<Vec<ferry_api::DiskImage>> {
    Ok(Json(a.disks(&pool).await?))
}

async fn create_disk(
    State(a): Shared,
    Path(pool): Path<String>,
    ApiJson(req): ApiJson<ferry_api::CreateDiskRequest>,
) -> Answer<ferry_api::DiskImage> {
    Ok(Json(a.create_disk(&pool, &req)?))
}

async fn delete_disk(
    State(a): Shared,
    Path((pool, disk)): Path<(String, String)>,
) -> Answer<serde_json::Value> {
    a.delete_disk(&pool, &disk).await?;
    Ok(Json(serde_json::json!({"deleted": disk, "pool": pool})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_maps_to_its_http_code_with_its_reason() {
        let cases = [
            (AgentError::bad_request("disk index 7 is wrong"), 400),
            (AgentError::not_found("no VM named 'web1'"), 404),
            (AgentError::refused("VM 'web1' is already migrating"), 409),
            (
                AgentError::QemuGone {
                    command: "cont".into(),
                    reason: "closed".into(),
                },
                409,
            ),
            (AgentError::upstream("cannot reach 10.0.0.2:4000"), 502),
            (
                AgentError::Qmp {
                    command: "cont".into(),
                    reason: "boom".into(),
                },
                500,
            ),
            (AgentError::process("QEMU did not come up"), 500),
            (AgentError::storage("qemu-img failed"), 500),
            (AgentError::net("cannot create tap fy1n0"), 500),
            (AgentError::Persist("cannot write vm.json".into()), 500),
            (AgentError::internal("bug"), 500),
        ];
        for (e, status) in cases {
            let text = e.to_string();
            let api = ApiError::from(e);
            assert_eq!(api.http_status(), status, "{text}");
            assert_eq!(api.message, text);
        }
    }
}
